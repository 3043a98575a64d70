"""Count the aten ops (≈ kernel launches on a GPU) and host reads that ``SyntheticStream.apply`` issues.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_ops.py [--bank builtin:phantom] [--patch 96] [--mode anatomy]
        [--render shell] [--batch 2 8]

Records every aten op of one ``apply`` per batch size with a ``TorchDispatchMode`` (CPU), for the CPU
path (``apply``'s default on the CPU: sample by sample, on each organ's window) and for the batched
program (``batched=True``, what CUDA runs), and prints, per batch size, the ops per batch and per patch,
how many of them are kernels (ops that are not views,
reshapes or metadata), and the host reads (``aten._local_scalar_dense``: ``.item()``, ``int()``...).
On a GPU each kernel is a launch and each host read a synchronisation. Prints JSON.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.utils._python_dispatch import TorchDispatchMode

VIEWS = ("view", "slice", "select", "unsqueeze", "squeeze", "permute", "expand", "transpose", "narrow",
         "alias", "as_strided", "_unsafe_view", "t.default", "unbind", "split", "detach", "lift_fresh",
         "reshape", "flatten", "unflatten", "_reshape_alias")


class Counter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def count(stream, batch: int, batched: bool | None = None) -> dict:
    params = [stream.draw(i) for i in range(batch)]
    stream.apply(params[:1], batched=batched)  # per-device caches outside the count
    with Counter() as c:
        out = stream.apply(params, batched=batched)
        logs = out.logs  # the logs' one read back counted too (the old code built them inside apply)
    kernels = [op for op in c.ops if not any(op.split(".")[1].startswith(v) or op.endswith(v) for v in VIEWS)]
    reads = sum(op.startswith("aten._local_scalar_dense") for op in c.ops)
    return {"batch": batch, "ops": len(c.ops), "ops_per_patch": len(c.ops) / batch, "kernels": len(kernels),
            "kernels_per_patch": len(kernels) / batch, "host_reads": reads, "organs_in_patch":
            sum(log["organs_in_patch"] for log in logs) / batch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bank", default="builtin:phantom")
    parser.add_argument("--patch", type=int, default=96)
    parser.add_argument("--mode", default="anatomy")
    parser.add_argument("--render", default="shell")
    parser.add_argument("--batch", type=int, nargs="+", default=[2, 8])
    args = parser.parse_args()
    from anatosynth.bank import load_bank
    from anatosynth.synth import SynthConfig, SyntheticStream

    torch.set_num_threads(1)
    bank = None if args.mode == "primitives" else load_bank(args.bank)
    stream = SyntheticStream(bank, SynthConfig(mode=args.mode, render=args.render, patch=(args.patch,) * 3))
    rows = {name: [count(stream, b, batched) for b in args.batch]
            for name, batched in (("cpu_path", None), ("batched_program", True))}
    print(json.dumps({"bank": args.bank, "mode": args.mode, "render": args.render, "patch": args.patch,
                      "organs": 0 if bank is None else len(bank.organs), "counts": rows}, indent=1))


if __name__ == "__main__":
    main()
