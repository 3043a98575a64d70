"""progress.png: short runs still show their points, legends never cover a curve (shared by both verbs)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from anatosynth.train.progress import progress_figure, write_progress_png


def _visible(line) -> bool:
    """A line a reader sees: two points or more, or a marker."""
    return len(line.get_xdata()) > 1 or line.get_marker() not in ("None", "", None, " ")


def test_one_logged_point_is_drawn_not_empty_axes():
    fig = progress_figure([[5, 1.25, 3e-4]], "synthetic pre-training")  # a 5-step run logs once
    try:
        lines = [ln for ax in fig.axes for ln in ax.get_lines()]
        assert len(lines) == 2 and all(_visible(ln) for ln in lines)
    finally:
        plt.close(fig)


def test_legend_covers_no_curve_point():
    steps = np.arange(1, 201)
    lr = np.minimum(steps / 20, 1) * 1e-3  # flat at the top right, where a legend inside the axes would sit
    history = np.stack([steps, 2 - steps / 150, lr], 1)
    fig = progress_figure(history, "fine-tuning", validation=[[50, 0.2], [100, 0.5], [200, 0.7]])
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
        assert legends
        for legend in legends:
            box = legend.get_window_extent(renderer)
            for ax in fig.axes:
                for line in ax.get_lines():
                    xy = ax.transData.transform(np.c_[line.get_xdata(), line.get_ydata()])
                    inside = ((xy[:, 0] > box.x0) & (xy[:, 0] < box.x1) & (xy[:, 1] > box.y0) & (xy[:, 1] < box.y1))
                    assert not inside.any(), line.get_label()
    finally:
        plt.close(fig)


def test_nothing_logged_writes_nothing(tmp_path):
    assert write_progress_png(tmp_path / "p.png", np.zeros((0, 3)), "x") is None
    assert not (tmp_path / "p.png").exists()
    assert write_progress_png(tmp_path / "p.png", [[1, 1.0, 1e-4]], "x").read_bytes()[:4] == b"\x89PNG"


def test_the_estimate_says_the_time_left_and_warns_for_a_long_cpu_run():
    from anatosynth.train.progress import estimate_line

    line, warn = estimate_line(10, 1000, 20.0, "cpu")  # 2 s a step, 990 left: 33 min
    assert line.startswith("about 33 min left for 990 more steps") and not warn
    assert estimate_line(10, 20, 4.0, "cpu")[0].startswith("about 4 s left for 10 more steps")
    line, warn = estimate_line(10, 20000, 20.0, "cpu")  # 11 h
    assert "about 11 h 06 min left" in line and warn and "CPU quick start" in line
    assert not estimate_line(10, 20000, 20.0, "cuda")[1]  # no warning on a GPU
    # a --minutes cap that stops the run first: said, with the steps it reaches, and no warning
    line, warn = estimate_line(10, 20000, 20.0, "cpu", limit_s=220.0)
    assert not warn and "the time limit stops it in 4 min, after about 110 more steps" in line


def test_pretrain_and_finetune_print_their_estimate_after_the_first_logged_steps(tmp_path, capsys):
    from anatosynth.cli import main

    assert main(["pretrain", "--bank", "builtin:phantom", "--model", "unet", "--feature-size", "4", "--patch", "32",
                 "--batch", "1", "--steps", "3", "--log-every", "1", "--image-every", "0", "--device", "cpu",
                 "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "pretrain: about" in err and "left for 2 more steps" in err and "pretrain: pretrain:" not in err
    assert "about" in (tmp_path / "run" / "train.log").read_text()
