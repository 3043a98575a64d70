"""RenderAhead: the thread renders the same batches, in order; failures and hangs reach the loop."""

from __future__ import annotations

import itertools
import threading
import time

import pytest
import torch

from anatosynth.bank import load_bank
from anatosynth.synth import SynthConfig, SyntheticStream
from anatosynth.synth.ahead import RenderAhead

CONFIG = SynthConfig(patch=(32, 32, 32), patches_per_body=2)


@pytest.fixture(scope="module")
def stream():
    return SyntheticStream(load_bank("builtin:phantom", spacing=(4.0, 4.0, 4.0)), CONFIG, 5)


def _params(stream, batches):
    return [[stream.draw(i) for i in b] for b in batches]


@pytest.mark.parametrize("threaded", [False, True])
def test_render_ahead_gives_the_inline_bytes_in_order(stream, threaded):
    batches = [[0, 1], [2, 3], [4]]
    reference = [stream.apply(p, "cpu") for p in _params(stream, batches)]
    with RenderAhead(_params(stream, batches), lambda p: stream.apply(p, "cpu"), "cpu", threaded=threaded) as ahead:
        got = list(ahead)
    assert [[p.index for p in params] for params, _ in got] == batches
    for (_, out), ref in zip(got, reference, strict=True):
        assert out.image.numpy().tobytes() == ref.image.numpy().tobytes()
        assert torch.equal(out.label, ref.label)
    with pytest.raises(StopIteration):
        next(ahead)


@pytest.mark.parametrize("blocked", [False, True])
def test_the_thread_renders_the_next_batch_while_the_loop_holds_this_one(stream, blocked):
    rendered: list[int] = []
    finished: list[int] = []

    def render(params):
        rendered.append(params[0].index)
        out = stream.apply(params, "cpu")
        finished.append(params[0].index)
        return out

    ahead = RenderAhead(_params(stream, [[0], [1], [2], [3]]), render, "cpu", depth=1, threaded=True)
    next(ahead)
    deadline = time.monotonic() + 60
    while len(rendered) < 3 and time.monotonic() < deadline:  # batch 1 queued, batch 2 rendered, blocked
        time.sleep(0.01)
    assert rendered == [0, 1, 2]
    if blocked:  # close while the thread waits to queue batch 2 (not while it renders it): draining the
        while len(finished) < 3 and time.monotonic() < deadline:  # queue lets that put through, and the
            time.sleep(0.01)  # thread must still stop there
        time.sleep(0.3)
    ahead.close()
    assert not ahead._thread.is_alive()
    assert rendered == [0, 1, 2]  # closed: batch 3 never rendered


def test_a_failing_render_raises_in_the_loop(stream):
    def render(params):
        if params[0].index == 1:
            raise ValueError("bad batch 1")
        return stream.apply(params, "cpu")

    ahead = RenderAhead(_params(stream, [[0], [1], [2]]), render, "cpu", threaded=True)
    assert next(ahead)[0][0].index == 0
    with pytest.raises(ValueError, match="bad batch 1"):
        next(ahead)
    with pytest.raises(StopIteration):
        next(ahead)


def test_a_hanging_draw_is_an_error_after_the_timeout():
    release = threading.Event()

    def endless():
        release.wait(30)
        yield from itertools.repeat([])

    ahead = RenderAhead(endless(), lambda p: None, "cpu", threaded=True, timeout=0.5)
    with pytest.raises(RuntimeError, match="no synthetic batch was rendered in 0.5 s"):
        next(ahead)
    release.set()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_side_stream_batches_equal_the_inline_ones(stream):
    batches = [[0, 1], [2, 3], [4, 5]]
    reference = [stream.apply(p, "cuda") for p in _params(stream, batches)]
    with RenderAhead(_params(stream, batches), lambda p: stream.apply(p, "cuda"), "cuda") as ahead:
        assert ahead.threaded
        for (_, out), ref in zip(ahead, reference, strict=True):
            torch.cuda._sleep(10_000_000)  # a slow "step" on the default stream while the next batch renders
            assert torch.equal(out.label, ref.label)
            assert torch.allclose(out.image, ref.image, atol=1e-5)
