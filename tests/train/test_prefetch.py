"""Draw workers: one task per body, the same bytes as drawing in-process, and a dead worker is an error."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from anatosynth.bank import load_bank
from anatosynth.synth import SynthConfig, SyntheticStream
from anatosynth.train.prefetch import ParamPrefetcher, WorkerError, by_body


@pytest.fixture(scope="module")
def stream():
    return SyntheticStream(load_bank("builtin:phantom", spacing=(4.0, 4.0, 4.0)),
                           SynthConfig(patch=(64, 64, 64), patches_per_body=4), seed=5)


def test_indices_are_grouped_by_body():
    assert by_body([4, 5, 9, 6, 8, 1], 4) == [[4, 5, 6], [9, 8], [1]]


def test_workers_give_the_same_samples_one_task_per_body(stream):
    pre = ParamPrefetcher(stream, workers=2)
    try:
        idx = [8, 9, 10, 11, 12, 13]
        pre.schedule(idx)
        assert len(pre.pending[0][1]) == 2  # two bodies, two tasks
        got = pre.params(idx)
    finally:
        pre.close()
    assert [p.index for p in got] == idx
    assert got[0].placed is got[3].placed  # a body's samples arrive sharing one layout
    local = [stream.draw(i) for i in idx]
    assert all(np.array_equal(g.origin_mm, h.origin_mm) for g, h in zip(got, local))
    a, b = stream.apply(got), stream.apply(local)
    assert a.image.numpy().tobytes() == b.image.numpy().tobytes()


def test_a_dead_worker_raises_instead_of_hanging(stream):
    pre = ParamPrefetcher(stream, workers=1, timeout=60)
    try:
        # a task that kills its worker: the pool replaces the process, the task's result never comes
        pre.pending.append(((0,), [([0], pre.pool.apply_async(os._exit, (3,)))]))
        t0 = time.perf_counter()
        with pytest.raises(WorkerError, match="died"):
            pre.params([0])
        assert time.perf_counter() - t0 < 30
    finally:
        pre.close()


def test_a_silent_worker_times_out(stream):
    pre = ParamPrefetcher(stream, workers=1, timeout=1.0)
    try:
        pre.pending.append(((0,), [([0], pre.pool.apply_async(time.sleep, (20,)))]))
        with pytest.raises(WorkerError, match="no answer"):
            pre.params([0])
    finally:
        pre.close()


def test_next_batch_on_cpu_is_the_inline_batch(stream):
    pre = ParamPrefetcher(stream, workers=0)
    out = pre.next_batch([0, 1], "cpu", upcoming=[2, 3])
    assert pre._ahead is None  # no render-ahead thread on the CPU
    assert out.image.numpy().tobytes() == stream.batch([0, 1]).image.numpy().tobytes()
