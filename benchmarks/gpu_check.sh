#!/usr/bin/env bash
# One GPU lease's checks, as a single prepared script (the device tool lends a GPU for ~15 minutes in all,
# at most 10 minutes a call). Run from the project root on the GPU machine, with these ignored folders
# (made here by benchmarks/gpu_prepare.sh) carried beside the checkout:
#   .whl      wheels the machine lacks: monai, nibabel, edt, connected-components-3d (python 3.12, x86-64)
#   .gpudata  the cpu-long bank (bank-5subj-f2589d10/), three CHAOS-T2 cases (chaos-t2/) for the fine-tune
#             step, and the 30k-patch anatomy pre-training config (pre-anatomy-30k.yaml, job pre-anatomy-30k-4523f5cd)
# Device tool call: command `OUT=$OUT bash benchmarks/gpu_check.sh`, carry [".whl", ".gpudata"], timeout_s 560.
# Steps: (1) the CUDA-only tests; (2) only with PRETRAIN=1: the 30k-patch pre-training (about 5 minutes on an
# H200; released 2026-11-30 as weights/cpu-long-anatomy-30k, so not needed again), stopped with SIGTERM at
# DEADLINE seconds (checkpoint; it then comes back in 15 MB parts); (3) the benchmarks on the idle GPU, each
# under its own limit (starting 12 draw workers took ~45 s on the H200). Without PRETRAIN: at most 9 minutes.
# What comes back in $OUT: log.txt (the timeline and every benchmark's output, written as it goes, so a call
# cut short still returns what finished), logs.tar.gz (all logs), and with PRETRAIN=1 release.tar (the
# released weights) or ckpt.part-* (unfinished). First run: BENCHMARKS.md "GPU: one H200 lease".
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}
DEADLINE=${DEADLINE:-400}
L=/tmp/gpu-logs
RUN=/tmp/pre-anatomy-30k-4523f5cd
BANK=.gpudata/bank-5subj-f2589d10/bank.bank
LOG="$OUT/log.txt"
mkdir -p "$L" "$OUT"
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a "$L/timeline.txt" "$LOG"; }
# one benchmark: its command and output into log.txt, SIGKILL 5 s after its limit if SIGTERM did not end it
bench() { local t=$1; shift; echo "\$ python3 $*" >> "$LOG"; timeout -k 5 "$t" python3 "$@" >> "$LOG" 2>&1; stamp "$1 rc=$?"; }

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed" | tee -a "$LOG"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi > "$L/nvidia-smi.txt" 2>&1
python3 -c "import torch, monai, nibabel, edt, cc3d, anatosynth; print('torch', torch.__version__, 'monai', monai.__version__,
'cuda', torch.version.cuda, torch.cuda.get_device_name())" 2>&1 | tee -a "$L/versions.txt" "$LOG"
echo "cpus $(nproc)" >> "$L/versions.txt"

stamp "1. CUDA-only tests"
timeout -k 5 150 python3 -m pytest -q -rs -p no:cacheprovider -k cuda tests/synth tests/train/test_finetune.py \
    tests/test_options.py > "$L/pytest_cuda.txt" 2>&1; rc=$?
tail -n 4 "$L/pytest_cuda.txt" >> "$LOG"; stamp "pytest rc=$rc"

if [ -n "${PRETRAIN:-}" ]; then
    stamp "2. pre-training, 30k patches (SIGTERM at ${DEADLINE} s)"
    python3 -m anatosynth pretrain --config .gpudata/pre-anatomy-30k.yaml --out "$RUN" > "$L/pretrain.out" 2>&1 &
    PID=$!
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 > "$L/gpu_util.csv" 2>&1 &
    SMI=$!
    while kill -0 $PID 2>/dev/null && [ $(( $(date +%s) - t0 )) -lt "$DEADLINE" ]; do sleep 3; done
    if kill -0 $PID 2>/dev/null; then stamp "deadline: SIGTERM to the pre-training"; kill -TERM $PID; fi
    wait $PID; stamp "pretrain rc=$?"; kill $SMI 2>/dev/null
    cp "$RUN"/train.log "$RUN"/config.yaml "$RUN"/metadata.json "$RUN"/progress.png "$L/" 2>/dev/null
    tail -n 2 "$RUN/train.log" >> "$LOG" 2>/dev/null
    if python3 -c "import json,sys; m=json.load(open('$RUN/metadata.json')); sys.exit(m['steps_done'] != m['steps'])"; then
        python3 -m anatosynth release "$RUN" --out /tmp/rel/cpu-long-anatomy-30k --job-key pre-anatomy-30k-4523f5cd \
            --command "anatosynth experiment protocols/cpu-long-budget.yaml --out OUT --arms anatomy-30k (pre-training job pre-anatomy-30k-4523f5cd)" \
            > "$L/release.txt" 2>&1; stamp "release rc=$?"
        tar -cf "$OUT/release.tar" -C /tmp/rel cpu-long-anatomy-30k
    elif [ -f "$RUN/checkpoint.pt" ]; then
        split -b 15M "$RUN/checkpoint.pt" "$OUT/ckpt.part-"  # resume: cat ckpt.part-* > RUN/checkpoint.pt
    fi
fi
tar -czf "$OUT/logs.tar.gz" -C /tmp gpu-logs  # again at the end; this one survives a kill

stamp "3. benchmarks (idle GPU)"
bench 150 benchmarks/bench_synth.py --device cuda --n 256 --batch 32 --workers 12 --modes anatomy,random,primitives \
    --bank "$BANK" --patch 96
bench 90 benchmarks/bench_pretrain.py --device cuda --model unet --feature-size 12 --patch 96 96 32 --batch 4 \
    --bank "$BANK" --render shell+fill --steps 20 --workers 12 --no-amp
bench 60 benchmarks/bench_pretrain.py --device cuda --steps 20
bench 45 benchmarks/bench_finetune.py --device cuda --data .gpudata/chaos-t2 --spacing 1.5,1.5,2 --steps 20
stamp "done"
tar -czf "$OUT/logs.tar.gz" -C /tmp gpu-logs
