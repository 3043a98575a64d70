"""Errors that the command line reports as one line and exit code 2 (never a traceback)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["AnatosynthError", "InputError", "ConfigError", "Interrupted"]


class AnatosynthError(Exception):
    """Base class: a problem the user can fix. The CLI prints ``str(err)`` and exits with code 2."""

    exit_code = 2


class InputError(AnatosynthError):
    """A file or folder given to anatosynth cannot be used; the message names it and the problem."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")


class ConfigError(AnatosynthError):
    """An option or configuration value is invalid."""


class Interrupted(KeyboardInterrupt):
    """Stopped by SIGINT/SIGTERM after saving what could be saved; ``str()`` says what that was.

    A ``KeyboardInterrupt`` so that no ``except Exception`` swallows it; the CLI prints the message and
    exits with ``128 + signum`` (130 for Ctrl-C, 143 for SIGTERM), as a shell does.
    """

    def __init__(self, message: str, signum: int = 2):
        super().__init__(message)
        self.signum = int(signum)
