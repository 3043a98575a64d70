"""Time rendering of 96^3 label patches per render mode and PrimGeoSeg primitives; optionally save preview PNGs.

Usage:
    .venv/bin/python benchmarks/bench_render.py [--threads 2] [--batch 4] [--repeats 5] [--device cpu]
    .venv/bin/python benchmarks/bench_render.py --figures docs/figures   # one PNG per mode + primitives

Prints milliseconds per patch (median over repeats) for ``apply_render`` with the default artefact ranges,
the parameter draw (numpy), and for primitives the draw (placement with overlap test), the torch painting
and the contour image. The label patch is a fixed set of ellipsoids (13 classes), not real anatomy.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from anatosynth.options import RENDERS
from anatosynth.synth.primitives import apply_primitives, draw_primitive_params, primitive_contours
from anatosynth.synth.render import apply_render, draw_render_params

PATCH = (96, 96, 96)


def ellipsoid_labels(patch=PATCH, n=12, seed=0) -> np.ndarray:
    """A simple test label map: n random ellipsoids (labels 1..n) painted in order, later wins."""
    rng = np.random.default_rng(seed)
    g = np.mgrid[: patch[0], : patch[1], : patch[2]].astype(np.float32)
    lab = np.zeros(patch, np.int64)
    for k in range(1, n + 1):
        c = rng.uniform(0.25, 0.75, 3) * np.array(patch)
        r = rng.uniform(0.08, 0.25, 3) * np.array(patch)
        lab[sum(((g[i] - c[i]) / r[i]) ** 2 for i in range(3)) <= 1.0] = k
    return lab


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


CPU_TIMES: list[float] = []


def _time(fn, repeats: int, device: str) -> float:
    """Median wall time of fn; its median process CPU time goes to CPU_TIMES (robust to other load)."""
    fn()
    _sync(device)
    times, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    CPU_TIMES.append(statistics.median(cpu))
    return statistics.median(times)


def bench(args) -> None:
    torch.set_num_threads(args.threads)
    dev = args.device
    lab = torch.from_numpy(ellipsoid_labels()).to(dev)[None].repeat(args.batch, 1, 1, 1)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, threads {args.threads}, "
          f"device {dev}, batch {args.batch}, patch {PATCH}")
    print(f"{'mode':<12} {'draw ms/patch':>14} {'apply ms/patch':>15} {'apply cpu-ms':>13} {'patches/s':>10}")
    for mode in RENDERS:
        seeds = iter(range(10**6))

        def draw():
            return [draw_render_params(np.random.default_rng(next(seeds)), 13, mode, PATCH) for _ in range(args.batch)]

        t_draw = _time(draw, args.repeats, "cpu") / args.batch
        ps = draw()
        t_apply = _time(lambda: apply_render(lab, ps), args.repeats, dev) / args.batch
        c_apply = CPU_TIMES[-1] / args.batch
        print(f"{mode:<12} {t_draw * 1e3:14.2f} {t_apply * 1e3:15.2f} {c_apply * 1e3:13.2f} "
              f"{1.0 / (t_draw + t_apply):10.1f}")
    seeds = iter(range(10**6))

    def pdraw():
        return [draw_primitive_params(np.random.default_rng(next(seeds)), PATCH) for _ in range(args.batch)]

    t_draw = _time(pdraw, args.repeats, "cpu") / args.batch
    pp = pdraw()
    t_paint = _time(lambda: apply_primitives(pp, PATCH, dev), args.repeats, dev) / args.batch
    plab = apply_primitives(pp, PATCH, dev)
    rp = [draw_render_params(np.random.default_rng(i), 33, "contour", PATCH) for i in range(args.batch)]
    t_img = _time(lambda: apply_render(plab, rp), args.repeats, dev) / args.batch
    t_obj = _time(lambda: primitive_contours(pp, PATCH, dev), args.repeats, dev) / args.batch
    total = t_draw + t_paint + t_img
    print(f"primitives: draw {t_draw * 1e3:.2f} + paint {t_paint * 1e3:.2f} + contour render {t_img * 1e3:.2f} "
          f"= {total * 1e3:.2f} ms/patch ({1.0 / total:.1f} patches/s); "
          f"per-object contours {t_obj * 1e3:.2f} ms/patch instead of the contour render")


def _overlay(ax, img2d, lab2d, title, show_labels):
    import matplotlib.colors as mcolors

    ax.imshow(img2d.T, cmap="gray", origin="lower", vmin=0, vmax=1, interpolation="nearest")
    if show_labels:
        masked = np.ma.masked_where(lab2d.T == 0, lab2d.T)
        ax.imshow(masked, cmap="tab20", origin="lower", alpha=0.45, interpolation="nearest",
                  norm=mcolors.Normalize(vmin=1, vmax=max(20, int(lab2d.max()))))
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def save_figure(img: np.ndarray, lab: np.ndarray, title: str, path: Path) -> None:
    """Orthogonal mid-slices (axial, coronal, sagittal) of the image, and the same with the label overlay."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y, z = (s // 2 for s in img.shape)
    views = [("axial z=%d" % z, img[:, :, z], lab[:, :, z]), ("coronal y=%d" % y, img[:, y, :], lab[:, y, :]),
             ("sagittal x=%d" % x, img[x, :, :], lab[x, :, :])]
    fig, axes = plt.subplots(2, 3, figsize=(7.5, 5.2))
    for j, (name, i2, l2) in enumerate(views):
        _overlay(axes[0, j], i2, l2, name, False)
        _overlay(axes[1, j], i2, l2, name + " + label", True)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def figures(out: Path) -> None:
    lab = torch.from_numpy(ellipsoid_labels())[None]
    for i, mode in enumerate(RENDERS):
        p = draw_render_params(np.random.default_rng(2026 + i), 13, mode, PATCH)
        img = apply_render(lab, [p])[0, 0].numpy()
        name = mode.replace("+", "_")
        title = f"render='{mode}' (12 ellipsoids, seed {2026 + i})"
        save_figure(img, lab[0].numpy(), title, out / f"render_{name}.png")
        print(out / f"render_{name}.png")
    pp = draw_primitive_params(np.random.default_rng(2026), PATCH)
    plab = apply_primitives([pp], PATCH)
    img = primitive_contours([pp], PATCH)[0, 0].numpy()
    save_figure(img, plab[0].numpy(), f"PrimGeoSeg primitives: {len(pp.objects)} objects, per-object contours",
                out / "render_primitives.png")
    print(out / "render_primitives.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--figures", type=Path, default=None, help="write PNGs to this folder instead of timing")
    args = ap.parse_args()
    if args.figures is not None:
        figures(args.figures)
    else:
        bench(args)


if __name__ == "__main__":
    main()
