"""Preview PNG: n samples x three orthogonal slices, each shown twice (the image alone, then with its labels
in colour, so a person sees what the network sees and what it must answer), and a legend. Each view takes the
slice with the most labelled voxels (the middle one when the patch holds no label): a patch whose organs sit
off-centre would show empty mid-slices.

Slices are shown the radiological way: axial with the patient's right on the left and anterior at
the top, coronal with superior at the top, sagittal with anterior on the left; pixel aspect follows
the voxel spacing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from anatosynth.io.volume import atomic_write_bytes

__all__ = ["orthogonal_slices", "busiest_slices", "preview_figure", "save_preview", "label_colours"]


def label_colours(n: int) -> np.ndarray:
    """(n, 4) RGBA colours for labels 0..n-1 (0 transparent), distinct for up to 40 classes."""
    import matplotlib

    base = [matplotlib.colormaps[name](np.linspace(0, 1, 20, endpoint=False)) for name in ("tab20", "tab20b")]
    table = np.concatenate(base)
    out = np.zeros((n, 4))
    for i in range(1, n):
        out[i] = table[(i - 1) % len(table)]
    return out


def busiest_slices(label: np.ndarray) -> tuple[int, int, int]:
    """Per axis of an [X, Y, Z] label map, the slice index with the most labelled voxels (the middle if none)."""
    if not label.any():
        return (label.shape[0] // 2, label.shape[1] // 2, label.shape[2] // 2)
    fg = label > 0
    x, y, z = (int(np.argmax(fg.sum(axis=tuple(a for a in range(3) if a != axis)))) for axis in range(3))
    return (x, y, z)


def orthogonal_slices(volume: np.ndarray, spacing: Sequence[float],
                      at: Sequence[int] | None = None) -> list[tuple[str, np.ndarray, float]]:
    """Slices of an [X, Y, Z] RAS volume through voxel ``at`` (default: the middle) as (name, 2D array in display
    orientation, pixel aspect)."""
    x, y, z = (int(v) for v in at) if at is not None else (s // 2 for s in volume.shape)
    sx, sy, sz = (float(v) for v in spacing)
    return [("axial", volume[::-1, ::-1, z].T, sy / sx),
            ("coronal", volume[::-1, y, ::-1].T, sz / sx),
            ("sagittal", volume[x, ::-1, ::-1].T, sz / sy)]


def preview_figure(images: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                   spacing: Sequence[float], title: str = ""):
    """A matplotlib figure: one row per sample ([B, X, Y, Z] image and label arrays)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    n = len(images)
    colours = label_colours(len(class_names))
    cmap = ListedColormap(colours)
    fig, axes = plt.subplots(n, 6, figsize=(14, 2.4 * n + 0.9), squeeze=False)
    for b in range(n):
        at = busiest_slices(labels[b])
        for c, ((name, img, aspect), (_, lab, _)) in enumerate(zip(orthogonal_slices(images[b], spacing, at),
                                                                    orthogonal_slices(labels[b], spacing, at))):
            for k, overlay in enumerate((False, True)):
                ax = axes[b, 2 * c + k]
                ax.imshow(img, cmap="gray", vmin=0, vmax=1, aspect=aspect, interpolation="nearest")
                if overlay:
                    ax.imshow(np.ma.masked_equal(lab, 0), cmap=cmap, vmin=-0.5, vmax=len(class_names) - 0.5,
                              alpha=0.5, aspect=aspect, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if b == 0:
                    ax.set_title(f"{name} + labels" if overlay else name, fontsize=9)
        axes[b, 0].set_ylabel(f"#{b}", fontsize=8)
    present = sorted(set(np.unique(labels).tolist()) - {0})
    handles = [Patch(color=colours[i], label=class_names[i]) for i in present]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(7, len(handles)), fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    rows = (len(handles) + 6) // 7
    height = fig.get_size_inches()[1]
    fig.tight_layout(rect=(0, min(0.4, (0.18 * rows + 0.1) / height), 1, 1 - 0.35 / height if title else 1))
    return fig


def save_preview(images: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                 spacing: Sequence[float], out: str | Path, title: str = "") -> Path:
    """Write the preview PNG atomically."""
    import matplotlib.pyplot as plt

    fig = preview_figure(images, labels, class_names, spacing, title)
    try:
        return atomic_write_bytes(out, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)
