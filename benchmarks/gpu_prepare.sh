#!/usr/bin/env bash
# Make, on the CPU machine, the two ignored folders that benchmarks/gpu_check.sh needs on a lent GPU machine
# (python 3.12 with torch but without monai; nothing can be downloaded there):
#   .whl      monai, nibabel, edt and connected-components-3d wheels for python 3.12 on x86-64
#   .gpudata  the cpu-long bank, three CHAOS-T2 cases with their own dataset.json, and the 30k-patch anatomy
#             pre-training config of protocols/cpu-long-budget.yaml (the runner's job, bank path made local)
# Run from anywhere; about a minute (the bank build). Then call the device tool with
# command `OUT=$OUT bash benchmarks/gpu_check.sh` and carry [".whl", ".gpudata"].
set -eu
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=../shared/data
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    $(grep -E '^(monai|nibabel|edt|connected-components-3d)==' requirements.txt)  # the pins of requirements.txt
mkdir -p .gpudata/chaos-t2/imagesTr .gpudata/chaos-t2/labelsTr
BANK=.gpudata/bank-5subj-f2589d10
mkdir -p "$BANK"; [ -f "$BANK/bank.bank" ] || "$PY" -m anatosynth bank build "$DATA/labels/flare22" --subjects 5 --spacing 2.5,2.5,5.0 \
    --seed 0 --out "$BANK/bank.bank"
# the bank the cpu-long weights were made from (their cards' bank_sha256): a build here gives the same bytes
echo "4a9ef866ce02bcf5ba0abc7f4fd53e79cfc7df5cd8ffc6119be63510a357da6d  $BANK/bank.bank" | sha256sum -c --quiet \
    || { echo "gpu_prepare.sh: $BANK/bank.bank is not the cpu-long bank; delete it and run again" >&2; exit 2; }
"$PY" - <<'EOF'
import json
import shutil
from pathlib import Path

import yaml

from anatosynth.experiment.protocol import expand, load_protocol

data, out = Path("../shared/data/chaos-t2"), Path(".gpudata/chaos-t2")
meta = json.loads((data / "dataset.json").read_text())
meta["training"] = meta["training"][:3]
meta["numTraining"] = len(meta["training"])
for case in meta["training"]:
    for key in ("image", "label"):
        shutil.copy(data / case[key], out / case[key])
(out / "dataset.json").write_text(json.dumps(meta, indent=1))
protocol = expand(load_protocol("protocols/cpu-long-budget.yaml"))
job = next(j for j in protocol.pretrains if j.arm == "anatomy-30k")
assert job.key == "pre-anatomy-30k-4523f5cd", f"the 30k job is now {job.key}: update gpu_check.sh"
cfg = {**job.config, "bank": ".gpudata/bank-5subj-f2589d10/bank.bank"}
Path(".gpudata/pre-anatomy-30k.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
print("ready:", *sorted(str(p) for p in Path(".gpudata").rglob("*") if p.is_file()), sep="\n  ")
EOF
du -sh .whl .gpudata
