"""Stopping a training loop cleanly: the first SIGINT/SIGTERM asks it to stop at the next step boundary.

Pre-training and fine-tuning share this, so both answer Ctrl-C and a scheduler's SIGTERM the same way:
finish the step, write a checkpoint, say how to continue, exit ``128 + signum``. A second signal stops at
once (``KeyboardInterrupt``), as the default handler would.
"""

from __future__ import annotations

import signal
import sys
import threading

from anatosynth.errors import Interrupted

__all__ = ["StopOnSignal"]


class StopOnSignal:
    """Context manager: while inside, SIGINT/SIGTERM set :attr:`signum` instead of killing the process.

    Only the main thread can install handlers; elsewhere (a loop run from a thread) it does nothing.
    ``name`` starts the one line printed to stderr when a signal arrives (``announce`` False: silent, for
    ranks other than 0).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, name: str, announce: bool = True):
        self.name, self.announce = name, announce
        self.signum: int | None = None
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "signal"

    def interrupted(self, message: str) -> Interrupted:
        """The error that ends the loop: it carries the signal received (SIGINT when none was, as for a
        ``KeyboardInterrupt`` raised in a thread without handlers), so the CLI exits ``128 + signum``."""
        return Interrupted(message, self.signum if self.signum is not None else signal.SIGINT)

    def _handler(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        if self.announce:
            print(f"\n{self.name}: {signal.Signals(signum).name} received: saving a checkpoint after this step "
                  "(send it again to stop at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> StopOnSignal:
        self.signum = None
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.getsignal(s) for s in self.SIGNALS}
            for s in self.SIGNALS:
                signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}
