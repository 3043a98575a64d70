"""Steps/s of the real pre-training loop on a data-bound configuration, for the code on ``PYTHONPATH``.

Used to compare the DataLoader route (issue 13) with the home-made prefetcher it replaced: run it
alternately on both checkouts, e.g.::

    git worktree add /tmp/base ece4fa9     # the prefetcher
    for w in 0 1; do
      PYTHONPATH=/tmp/base python benchmarks/bench_pretrain_route.py --workers $w
      PYTHONPATH=.         python benchmarks/bench_pretrain_route.py --workers $w
    done

A tiny UNet (f4) on 64³ anatomy patches, batch 2, one thread, CPU: the synthesis dominates the step.
The rate is the loop's own, from its log, over the second half of the steps (the first half warms up).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, default=0, help="draw workers (default 0)")
    p.add_argument("--steps", type=int, default=16, help="steps in all; the second half is timed (default 16)")
    args = p.parse_args()
    import anatosynth
    from anatosynth.train.config import PretrainConfig
    from anatosynth.train.pretrain import pretrain

    steps = max(2, args.steps // 2 * 2)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = PretrainConfig.from_dict(dict(
            bank="builtin:phantom", mode="anatomy", render="shell", model="unet", feature_size=4, patch=[64, 64, 64],
            batch=2, steps=steps, warmup=1, device="cpu", threads=1, seed=0, workers=args.workers, image_every=0,
            log_every=steps // 2, checkpoint_every=10 ** 6, out=str(Path(tmp) / "run")))
        t0 = time.perf_counter()
        pretrain(cfg, echo=False)
        wall = time.perf_counter() - t0
        log = (Path(tmp) / "run" / "train.log").read_text()
    line = [line for line in log.splitlines() if f"step {steps}/{steps}" in line][0]
    print(json.dumps({"code": str(Path(anatosynth.__file__).parent.parent), "workers": args.workers, "steps": steps,
                      "second_half_steps_per_s": float(line.split()[-2]), "wall_s": round(wall, 2),
                      "load_1min": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
