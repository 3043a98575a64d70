"""``bank inspect``: a bank's summary as JSON, and a picture of its anchors and graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from anatosynth.bank.model import ShapeBank

__all__ = ["summary", "orientation_lines", "draw_bank", "subject_label_map", "draw_subject"]


def _r(a, nd: int = 2):
    return np.round(np.asarray(a, dtype=np.float64), nd).tolist()


def summary(bank: ShapeBank) -> dict:
    """JSON-ready description: version, spacing, subjects, organs (anchor, volume) and edges."""
    organs = []
    for o in bank.organs:
        vols = np.array([s.volume_ml for s in o.shapes])
        organs.append({
            "name": o.name, "label": o.label, "subjects": o.subjects,
            "anchor": {"mean_mm": _r(o.anchor_mean_mm), "cov_mm2": _r(o.anchor_cov_mm),
                       "std_mm": _r(np.sqrt(np.clip(np.diag(o.anchor_cov_mm), 0, None)))},
            "volume_ml": {"mean": round(float(vols.mean()), 2),
                          "std": round(float(vols.std(ddof=1)) if len(vols) > 1 else 0.0, 2)},
            "extent_mm": {"mean": _r(np.mean([s.extent_mm for s in o.shapes], axis=0))},
        })
    edges = [{"a": e.a, "b": e.b, "n_subjects": e.n_subjects, "contact": round(e.contact, 3),
              "direction": e.direction_words, "direction_vector": _r(e.direction, 3),
              "consistency": round(e.consistency, 3), "offset_mean_mm": _r(e.offset_mean_mm),
              "min_gap_mm": round(e.min_gap_mm, 2), "overlap": e.overlap} for e in bank.edges]
    from anatosynth.bank.orientation import bank_report

    return {"version": bank.version, "spacing": list(bank.spacing), "frame": bank.frame,
            "subjects": list(bank.subjects), "organs": organs, "edges": edges, "orientation": bank_report(bank)}


def orientation_lines(report: dict[str, dict], verbose: bool = False) -> list[str]:
    """Text for ``bank inspect`` / ``bank audit``: a summary, then the subjects with a finding or fix.

    Args:
        report: subject id → :func:`~anatosynth.bank.orientation.subject_report`.
        verbose: one line per subject even when it is clean.
    """
    checked = [len(r["checked"]) for r in report.values()]
    bad = {sid: r for sid, r in report.items() if r["violated"] or r["fix"] or r["ignored"]}
    lo, hi = min(checked, default=0), max(checked, default=0)
    violated = sum(1 for r in report.values() if r["violated"])
    fixed = sum(1 for r in report.values() if r["fix"])
    lines = [f"orientation: {len(report)} subjects, {lo if lo == hi else f'{lo}-{hi}'} anatomical invariants "
             f"checked each, {violated} with violations, {fixed} re-oriented"]
    for sid, r in report.items():
        if sid not in bad and not verbose:
            continue
        text = f"  subject {sid}: {len(r['checked'])} checked, {len(r['violated'])} violated"
        if r["violated"]:
            text += f" ({'; '.join(r['violated'][:4])}{'; ...' if len(r['violated']) > 4 else ''}: {r['diagnosis']})"
        if r["fix"]:
            text += f"; fixed at build: {r['fix']}"
        if r["ignored"]:
            text += f"; ignored at build: {r['ignored']}"
        lines.append(text)
    return lines


_VIEWS = [("coronal (front view)", 0, 2, "R  ←  x (mm)  →  L", "inferior  ←  z (mm)  →  superior"),
          ("axial (from the feet)", 0, 1, "R  ←  x (mm)  →  L", "posterior  ←  y (mm)  →  anterior"),
          ("sagittal (from the right)", 1, 2, "posterior  ←  y (mm)  →  anterior", "z (mm)")]


def _ellipse(ax, mean2, cov2, color) -> None:
    from matplotlib.patches import Ellipse

    vals, vecs = np.linalg.eigh(cov2)
    vals = np.sqrt(np.clip(vals, 0, None))
    angle = float(np.degrees(np.arctan2(vecs[1, 1], vecs[0, 1])))
    ax.add_patch(Ellipse(mean2, 2 * vals[1], 2 * vals[0], angle=angle, fill=False, color=color, lw=0.8))


def draw_bank(bank: ShapeBank, path: str | Path, title: str | None = None) -> Path:
    """PNG of the anchors (mean ± 1 SD ellipse) and contact edges in three body-frame projections.

    Patient right is drawn on the viewer's left (radiological convention). Line width grows with the
    contact frequency; dashed orange lines mark pairs whose overlap is allowed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from anatosynth.io.volume import atomic_write_bytes

    cmap = plt.get_cmap("tab20")
    anchors = {o.name: np.asarray(o.anchor_mean_mm) for o in bank.organs}
    fig, axes = plt.subplots(1, 3, figsize=(17, 6.2))
    for ax, (name, i, j, xl, yl) in zip(axes, _VIEWS):
        for e in bank.edges:
            if e.contact <= 0 and e.overlap != "allowed":
                continue
            p, q = anchors[e.a], anchors[e.b]
            ax.plot([p[i], q[i]], [p[j], q[j]], color="tab:orange" if e.overlap == "allowed" else "0.45",
                    ls="--" if e.overlap == "allowed" else "-", lw=0.5 + 3.0 * e.contact, alpha=0.6, zorder=1)
        for k, o in enumerate(bank.organs):
            c = cmap(k % 20)
            m, cov = anchors[o.name], np.asarray(o.anchor_cov_mm)
            _ellipse(ax, (m[i], m[j]), cov[np.ix_([i, j], [i, j])], c)
            ax.scatter([m[i]], [m[j]], s=16 + 40 * np.cbrt(np.mean([s.volume_ml for s in o.shapes])) / 5,
                       color=c, edgecolor="k", lw=0.5, zorder=3)
            ax.annotate(o.name, (m[i], m[j]), fontsize=7, xytext=(3, 3), textcoords="offset points", zorder=4)
        if i == 0:
            ax.invert_xaxis()
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(xl, fontsize=8)
        ax.set_ylabel(yl, fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title or f"shape bank: {len(bank.organs)} organs, {len(bank.subjects)} subjects — anchors "
                          "(mean ± 1 SD) and contacts (line width = contact frequency)", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    atomic_write_bytes(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def subject_label_map(bank: ShapeBank, subject: str) -> tuple[np.ndarray, np.ndarray]:
    """Rebuild one subject's label map (bank labels, RAS, bank spacing) from its stored shapes.

    Returns:
        the int16 label map and the body-frame position (mm) of its voxel ``[0, 0, 0]``.
    """
    sp = np.asarray(bank.spacing)
    shapes = [(o.label, s) for o in bank.organs for s in o.shapes if s.subject == subject]
    if not shapes:
        raise KeyError(subject)
    ref = shapes[0][1].origin_mm
    los = {lab: np.rint((s.origin_mm - ref) / sp).astype(int) for lab, s in shapes}
    lo = np.min(list(los.values()), axis=0)
    hi = np.max([los[lab] + s.mask.shape for lab, s in shapes], axis=0)
    out = np.zeros(tuple(hi - lo), np.int16)
    for lab, s in shapes:
        a = los[lab] - lo
        region = out[tuple(slice(x, x + n) for x, n in zip(a, s.mask.shape))]
        region[s.mask] = lab
    return out, ref + lo * sp


def draw_subject(bank: ShapeBank, path: str | Path, subject: str | None = None) -> Path:
    """PNG of one subject's organs in three orthogonal slices through the body-frame origin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from anatosynth.io.volume import atomic_write_bytes

    subject = subject or bank.subjects[0]
    lab, origin = subject_label_map(bank, subject)
    sp = np.asarray(bank.spacing)
    centre = np.clip(np.rint(-origin / sp).astype(int), 0, np.array(lab.shape) - 1)
    colours = ListedColormap([(1, 1, 1, 1)] + [plt.get_cmap("tab20")(k % 20) for k in range(len(bank.organs))])
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.4))
    views = [("coronal", lab[:, centre[1], :], sp[0], sp[2]), ("axial", lab[:, :, centre[2]], sp[0], sp[1]),
             ("sagittal", lab[centre[0], :, :], sp[1], sp[2])]
    for ax, (name, sl, dx, dy) in zip(axes, views):
        ax.imshow(sl.T, origin="lower", cmap=colours, vmin=0, vmax=len(bank.organs), interpolation="nearest",
                  aspect=dy / dx)
        if name != "sagittal":
            ax.invert_xaxis()  # patient right on the viewer's left
        ax.set_title(f"{name} slice through the body-frame origin", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours(o.label)) for o in bank.organs]
    fig.legend(handles, [o.name for o in bank.organs], loc="lower center", ncol=7, fontsize=8, frameon=False)
    fig.suptitle(f"subject {subject}: {len(bank.shapes_of(subject))} organs", fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    path = Path(path)
    atomic_write_bytes(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return path
