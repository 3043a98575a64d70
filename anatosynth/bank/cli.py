"""CLI verbs of the bank stage: ``anatosynth check`` and ``anatosynth bank build|merge|inspect|audit``."""

from __future__ import annotations

import json
import sys

from anatosynth.bank import check_cli
from anatosynth.errors import ConfigError
from anatosynth.options import counted

__all__ = ["register"]


def _spacing(text: str):
    from anatosynth.io.canonical import parse_spacing

    return parse_spacing(text)


def _output(path: str) -> str:
    """A bank path that can be written (checked before any work)."""
    from anatosynth.io.volume import check_output_file

    if not path.endswith(".bank"):
        raise ConfigError(f"--out {path!r}: a bank file should end in .bank")
    check_output_file(path)
    return path


def _policy(args) -> str:
    """``--fix-orientation`` / ``--ignore-orientation`` → the orientation policy (default ``check``)."""
    if args.fix_orientation and args.ignore_orientation:
        raise ConfigError("--fix-orientation and --ignore-orientation exclude each other")
    return "fix" if args.fix_orientation else "ignore" if args.ignore_orientation else "check"


def _orientation_flags(p) -> None:
    p.add_argument("--fix-orientation", action="store_true",
                   help="re-orient subjects whose organs look flipped or swapped (recorded in the bank)")
    p.add_argument("--ignore-orientation", action="store_true",
                   help="keep such subjects as they are (the warning is recorded in the bank)")


def _build(args) -> int:
    from anatosynth.bank.build import build_bank
    from anatosynth.bank.store import save_bank

    out = _output(args.out)
    cases = [c for c in (args.cases or "").split(",") if c] or None
    bank = build_bank(args.src, labels=args.labels, subjects=args.subjects, spacing=_spacing(args.spacing),
                      seed=args.seed, cases=cases, salt=args.salt, progress=not args.quiet,
                      orientation=_policy(args))
    save_bank(bank, out)
    print(f"wrote {out}: {counted(len(bank.subjects), 'subject')}, {counted(len(bank.organs), 'organ')}, "
          f"{counted(len(bank.edges), 'edge')}")
    return 0


def _merge(args) -> int:
    from anatosynth.bank import load_bank
    from anatosynth.bank.build import merge_banks
    from anatosynth.bank.store import save_bank

    out = _output(args.out)
    bank = merge_banks([load_bank(p) for p in args.banks], progress=not args.quiet, orientation=_policy(args),
                       names=args.banks, allow_disjoint=args.allow_disjoint)
    save_bank(bank, out)
    print(f"wrote {out}: {counted(len(bank.subjects), 'subject')}, {counted(len(bank.organs), 'organ')} "
          f"({', '.join(o.name for o in bank.organs)})")
    return 0


def _inspect(args) -> int:
    from anatosynth.bank import load_bank
    from anatosynth.bank.report import draw_bank, draw_subject, orientation_lines, summary
    from anatosynth.io.volume import check_output_file

    for png in (args.png, args.slices):
        if png:
            check_output_file(png)
    bank = load_bank(args.bank)
    info = summary(bank)
    if args.png:
        draw_bank(bank, args.png)
    if args.slices:
        draw_subject(bank, args.slices)
    if args.json:
        json.dump(info, sys.stdout, indent=1)
        print()
        return 0
    print(f"bank {args.bank}: format v{info['version']}, spacing {tuple(info['spacing'])} mm, "
          f"{counted(len(info['subjects']), 'subject')}")
    print(f"{'label':>5}  {'organ':<22} {'subj':>4} {'volume ml':>14}  anchor mean (R, A, S) mm")
    for o in info["organs"]:
        vol = f"{o['volume_ml']['mean']:.1f}±{o['volume_ml']['std']:.1f}"
        anchor = ", ".join(f"{v:+.0f}" for v in o["anchor"]["mean_mm"])
        print(f"{o['label']:>5}  {o['name']:<22} {len(o['subjects']):>4} {vol:>14}  ({anchor})")
    touching = [e for e in info["edges"] if e["contact"] > 0]
    print(f"{len(touching)} of {len(info['edges'])} organ pairs touch in some subject:")
    for e in sorted(touching, key=lambda e: -e["contact"]):
        print(f"  {e['a']} - {e['b']}: contact {e['contact']:.2f}, b is {e['direction']} of a "
              f"(consistency {e['consistency']:.2f}), overlap {e['overlap']}")
    for line in orientation_lines(info["orientation"]):
        print(line)
    for png in (args.png, args.slices):
        if png:
            print(f"wrote {png}")
    return 0


def _audit(args) -> int:
    from anatosynth.bank import load_bank
    from anatosynth.bank.audit import audit_bank
    from anatosynth.bank.orientation import bank_report
    from anatosynth.bank.report import orientation_lines

    problems = audit_bank(args.bank)
    for p in problems:
        print(f"VIOLATION: {p}")
    if problems:
        print(f"{args.bank}: {len(problems)} de-identification violation(s)", file=sys.stderr)
        return 1
    print(f"{args.bank}: OK (label-only masks, no header text, hashed subject ids)")
    for line in orientation_lines(bank_report(load_bank(args.bank)), verbose=True):
        print(line)
    return 0


def register(sub) -> None:
    check_cli.register(sub)
    p = sub.add_parser("bank", help="build, merge, inspect and audit shape banks",
                       description="Shape banks: de-identified organ masks, spatial anchors, topological graph.")
    verbs = p.add_subparsers(dest="bank_verb", metavar="ACTION")
    verbs.required = True

    b = verbs.add_parser("build", help="build a bank from label maps or a dataset")
    b.add_argument("src", nargs="+", metavar="SRC",
                   help="label map(s), folder(s) of them, or dataset folder / dataset.json / datalist")
    b.add_argument("--labels", help="labels.json (id→name) overriding the dataset's own names")
    b.add_argument("--subjects", type=int, default=5, metavar="K", help="subjects to pick by seed (default 5)")
    b.add_argument("--cases", help="comma-separated case names to use instead of a seeded pick")
    b.add_argument("--spacing", default="1.5,1.5,2.0", help="bank voxel size in mm (default 1.5,1.5,2.0)")
    b.add_argument("--seed", type=int, default=0, help="seed of the subject pick (default 0)")
    b.add_argument("--salt", help="secret salt for the subject-id hashes (default: derived from the label content)")
    b.add_argument("--out", required=True, metavar="BANK", help="output bank file (.bank)")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    _orientation_flags(b)
    b.set_defaults(func=_build)

    m = verbs.add_parser("merge", help="merge banks by organ name (same spacing)")
    m.add_argument("banks", nargs="+", metavar="BANK")
    m.add_argument("--out", required=True, metavar="BANK")
    m.add_argument("--quiet", action="store_true", help="no progress bars")
    m.add_argument("--allow-disjoint", action="store_true",
                   help="merge banks that share no organ name (refused by default: usually a label scheme whose "
                        "names did not map to canonical organs)")
    _orientation_flags(m)
    m.set_defaults(func=_merge)

    i = verbs.add_parser("inspect", help="summarise a bank (text or JSON) and draw its anchors and graph")
    i.add_argument("bank", metavar="BANK", help="bank file or builtin:phantom")
    i.add_argument("--json", action="store_true", help="print the summary as JSON")
    i.add_argument("--png", metavar="FILE", help="write a figure of anchors and contact graph")
    i.add_argument("--slices", metavar="FILE", help="write orthogonal slices of the first subject's organs")
    i.set_defaults(func=_inspect)

    a = verbs.add_parser("audit", help="check that a bank is label-only and de-identified (exit 1 if not); "
                                            "list each subject's anatomical invariants")
    a.add_argument("bank", metavar="BANK")
    a.set_defaults(func=_audit)
    p.set_defaults(func=lambda args: p.print_help() or 2)
