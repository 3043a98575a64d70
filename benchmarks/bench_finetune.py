"""Fine-tuning step speed on real scans (CHAOS T2): the crop/augmentation path alone and the whole step.

Two training cases are preprocessed (not timed), then the fine-tuning loop's own step
(``_Loop._one_step``: draw a case, crop, augment, forward, DiceCE, backward, AdamW, schedule) runs
``--steps`` times; the data path (``_batch``) is also timed alone. CPU seconds of this process are
reported beside wall time: on a machine shared with other jobs they are the steadier figure.

    OMP_NUM_THREADS=1 python benchmarks/bench_finetune.py --threads 1 --spacing 1.5,1.5,2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "chaos-t2"


def _timed(fn, n: int) -> tuple[float, float]:
    """Wall and CPU seconds per call of ``fn`` over ``n`` calls."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        fn()
    return (time.perf_counter() - wall) / n, (time.process_time() - cpu) / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--model", default="unet")
    p.add_argument("--feature-size", type=int, default=8)
    p.add_argument("--patch", type=int, default=48)
    p.add_argument("--crops", type=int, default=2)
    p.add_argument("--spacing", default="1.5,1.5,2", help="target spacing in mm (default: fine-tuning's)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    import numpy as np
    import torch

    from anatosynth.io import read_dataset
    from anatosynth.train.finetune import FinetuneConfig, FinetunePaths
    from anatosynth.train.finetune_data import _batch
    from anatosynth.train.finetune_loop import _Loop
    from anatosynth.train.models import ModelSpec, build_model
    from anatosynth.transforms.preprocess import ClassMap, PreprocessConfig, prepare_cases

    torch.set_num_threads(args.threads)
    spacing = tuple(float(v) for v in args.spacing.split(","))
    dataset = read_dataset(args.data)
    classes = ClassMap.from_labels(dataset.labels)
    cases = prepare_cases(dataset.cases[:2], PreprocessConfig(dataset.modality, spacing), classes, "", False)
    cfg = FinetuneConfig(data=args.data, out="unused", model=args.model, feature_size=args.feature_size,
                         patch=(args.patch,) * 3, crops=args.crops, steps=args.steps + 1, spacing=spacing)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(ModelSpec(cfg.model, 1, classes.num_classes, cfg.feature_size, cfg.patch)).to(device)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.process_time()
        loop = _Loop(cfg, model, cases, [], classes, FinetunePaths(Path(tmp)), device)
        setup = time.process_time() - start
        rng = np.random.default_rng(0)
        data_wall, data_cpu = _timed(lambda: _batch(loop.pipeline, loop.sources[int(rng.integers(2))]), args.steps)
        loop._one_step()  # warm-up

        def steps():
            for _ in range(args.steps):
                loop._one_step()
            float(loop.loss_sum)  # on a GPU: wait for the queued work before reading the clock

        step_wall, step_cpu = (t / args.steps for t in _timed(steps, 1))
    print(f"{cfg.model} f{cfg.feature_size} patch {args.patch}^3, {cfg.crops} crops, {spacing} mm "
          f"(volume {'x'.join(map(str, cases[0].image.shape))}), {args.threads} thread(s), {device}: "
          f"setup {setup:.2f} CPU-s; data path {1000 * data_cpu:.1f} CPU-ms ({1000 * data_wall:.1f} ms wall) per step; "
          f"whole step {1 / step_cpu:.2f} steps per CPU-s ({1 / step_wall:.2f} steps/s wall)")


if __name__ == "__main__":
    main()
