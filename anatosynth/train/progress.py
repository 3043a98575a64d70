"""``progress.png`` of a training run (pre-training and fine-tuning share it), nnU-Net style.

Top panel: training loss against step, with the mean validation Dice on a second axis when the run
validates; bottom panel: the learning rate. Each panel's legend sits above its axes, outside the plot
area, so it never covers a curve; curves with few points get markers, so a short run (one logged point)
still shows its values instead of empty axes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from anatosynth.io.volume import atomic_write_bytes

__all__ = ["progress_figure", "write_progress_png", "estimate_line", "CPU_WARN_HOURS"]

CPU_WARN_HOURS = 1.0  # a run estimated longer than this on the CPU gets a warning with the way to a short one

_MARKERS_BELOW = 30  # points per curve under which each point gets a marker


def _style(n: int) -> dict:
    return {"marker": "o", "markersize": 6 if n < 5 else 3} if n < _MARKERS_BELOW else {}


def progress_figure(history, title: str, validation=None):
    """The figure (caller closes it): ``history`` rows are (step, loss, lr, ...); ``validation`` rows (step, Dice)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = np.asarray(history, dtype=np.float64).reshape(-1, np.shape(history)[-1] if np.size(history) else 3)
    v = np.asarray(validation if validation is not None else np.zeros((0, 2)), dtype=np.float64).reshape(-1, 2)
    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(7, 5.2), dpi=100, sharex=True,
                                    gridspec_kw={"height_ratios": [3, 1]})
    handles = ax.plot(h[:, 0], h[:, 1], color="tab:blue", label="train loss (DiceCE)", **_style(len(h)))
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if len(v):
        ax_d = ax.twinx()
        handles += ax_d.plot(v[:, 0], v[:, 1], color="tab:green", label="validation Dice (mean)", **_style(len(v)))
        ax_d.set_ylabel("Dice")
        ax_d.set_ylim(0, 1)
    ax.legend(handles, [ln.get_label() for ln in handles], loc="lower left", bbox_to_anchor=(0, 1.01), ncol=2,
              frameon=False, borderaxespad=0)
    ax_lr.plot(h[:, 0], h[:, 2], color="tab:orange", **_style(len(h)))
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("step")
    ax_lr.grid(alpha=0.3)
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def write_progress_png(path: str | Path, history, title: str, validation=None) -> Path | None:
    """Write :func:`progress_figure` as a PNG atomically; None (nothing written) when nothing was logged."""
    if np.size(history) == 0:
        return None
    import matplotlib.pyplot as plt

    fig = progress_figure(history, title, validation)
    try:
        atomic_write_bytes(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
    return Path(path)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def estimate_line(done: int, total: int, seconds: float, device_type: str,
                  limit_s: float | None = None) -> tuple[str, bool]:
    """The estimated time left of a run from its first ``done`` steps in ``seconds``, and whether to warn
    (CPU, more than :data:`CPU_WARN_HOURS`): ``"about 2 h 05 min left for 2,400 more steps (…)"`` (the caller
    names the verb where it prints it). With ``limit_s`` (a ``--minutes`` cap: seconds left until it), a run
    the cap will stop first says so, with the steps it will reach, and is not warned about."""
    per_step = seconds / max(done, 1)
    left = per_step * max(total - done, 0)
    line = f"about {_duration(left)} left for {total - done:,} more steps ({per_step:.2f} s per step so far)"
    if limit_s is not None and left > limit_s:
        reach = int(max(limit_s, 0) / max(per_step, 1e-9))
        return (f"{line}; the time limit stops it in {_duration(max(limit_s, 0))}, after about {reach:,} more "
                "steps (run it again to continue)"), False
    warn = device_type == "cpu" and left > CPU_WARN_HOURS * 3600
    if warn:
        line = (f"{line}; warning: over {CPU_WARN_HOURS:g} h on the CPU — the README's CPU quick start gives sizes "
                "that finish in minutes, or run it on a GPU")
    return line, warn
