"""Render batch t+1 while training step t runs: a background thread and, on CUDA, a side stream.

The batched ``apply`` reads nothing back from the device, so on CUDA its ~1,600 kernels can be queued on
a side stream by a background thread while the training loop queues the step's kernels on the default
stream; the GPU runs both. :class:`RenderAhead` does that: the thread takes the next list of sample
parameters from the draw loader, renders it on its own CUDA stream and records an event; the loop's
``next()`` makes its current stream wait on that event (a device-side wait, no host sync) and marks the
batch's tensors as used by that stream (``record_stream``), so the caching allocator never lends their
memory back to the side stream while the step still reads them.

On the CPU the render runs inline, when asked: the cores belong to the training step, and a thread
would only take them from it (measured on 2 cores, BENCHMARKS.md). ``threaded=True`` forces the thread
on the CPU too (tests; a machine with spare cores).

The bytes do not change: all randomness is in the parameters, drawn before, so which thread renders a
batch, and when, makes no difference.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from anatosynth.synth.dataset import WORKER_TIMEOUT_S
from anatosynth.synth.generator import SampleParams, SynthBatch

__all__ = ["RenderAhead"]

Render = Callable[[list[SampleParams]], SynthBatch]


class _End:
    """The draw loader is exhausted."""


class _Failure:
    """The thread's render (or draw) raised: re-raised in the training loop."""

    def __init__(self, error: BaseException):
        self.error = error


class RenderAhead(Iterator[tuple[list[SampleParams], SynthBatch]]):
    """Iterator of ``(params, SynthBatch)``: each list of ``batches`` rendered by ``render``, ``depth`` ahead.

    Args:
        batches: lists of :class:`~anatosynth.synth.generator.SampleParams` (a draw loader).
        render: params → :class:`~anatosynth.synth.generator.SynthBatch` on ``device`` (the stream's ``apply``).
        device: where ``render`` puts the batch.
        depth: batches rendered ahead of the one in use (the side stream's memory: ``depth`` + 1 batches).
        threaded: render in a background thread (default: on CUDA only, see the module docstring).
        timeout: seconds to wait for one batch before it is an error rather than a hang.

    Call :meth:`close` (or use it as a context manager) when the loop stops early: it stops the thread,
    which stops the draw loader's workers.
    """

    def __init__(self, batches: Iterable[list[SampleParams]], render: Render, device: torch.device | str,
                 depth: int = 1, threaded: bool | None = None, timeout: float = WORKER_TIMEOUT_S):
        self.device = torch.device(device)
        self.render = render
        self.timeout = float(timeout)
        self.threaded = self.device.type == "cuda" if threaded is None else bool(threaded)
        self._batches = iter(batches)
        self._done = False
        if not self.threaded:
            return
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, int(depth)))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="anatosynth-render-ahead", daemon=True)
        self._thread.start()

    # -- the background thread
    def _work(self) -> None:
        cuda = self.device.type == "cuda"
        try:
            side = torch.cuda.Stream(self.device) if cuda else None
            place = torch.cuda.device(self.device) if cuda else contextlib.nullcontext()
            with place, torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
                for params in self._batches:
                    if self._stop.is_set():  # closed while this batch's params were drawn
                        return
                    out = self.render(params)
                    event = None
                    if side is not None:
                        event = torch.cuda.Event()
                        event.record(side)
                    if not self._put((params, out, event)):
                        return
            self._put(_End())
        except BaseException as err:  # noqa: BLE001 - handed to the training loop, which re-raises it
            self._put(_Failure(err))
        finally:
            self._batches = iter(())  # drops the draw loader's iterator: its workers stop

    def _put(self, item: Any) -> bool:
        """Queue ``item`` unless :meth:`close` was called meanwhile; False once closed (a put that close's
        draining of the queue let through counts as closed too: the thread renders nothing more)."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return not self._stop.is_set()
            except queue.Full:
                continue
        return False

    # -- the training loop's side
    def __next__(self) -> tuple[list[SampleParams], SynthBatch]:
        if self._done:
            raise StopIteration
        if not self.threaded:
            try:
                params = next(self._batches)
            except StopIteration:
                self._done = True
                raise
            return params, self.render(params)
        try:
            item = self._queue.get(timeout=self.timeout)
        except queue.Empty:
            self.close()
            raise RuntimeError(f"no synthetic batch was rendered in {self.timeout:g} s: the render thread "
                               "or the draw workers hang") from None
        if isinstance(item, _End):
            self._done = True
            raise StopIteration
        if isinstance(item, _Failure):
            self.close()
            raise item.error
        params, out, event = item
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            out.image.record_stream(current)
            out.label.record_stream(current)
        return params, out

    def close(self) -> None:
        """Stop rendering ahead (the thread ends within ~0.1 s of its current render)."""
        self._done = True
        if not self.threaded:
            self._batches = iter(())
            return
        self._stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=self.timeout)

    def __enter__(self) -> RenderAhead:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
