#!/bin/bash
# Run the pre-registered confirm grid (protocols/confirm.yaml, issue 32) on one core, primary questions first:
#   nohup benchmarks/run_confirm.sh >> runs/confirm/chain.log 2>&1 &
# The other core pre-trains cpu-long-budget's primitives-30k (issue 31): benchmarks/run_cpu_long.sh a.
# Each step reuses finished jobs (results/confirm/, run folders) and resumes interrupted ones (checkpoints, or the
# committed archives in resume/ on a new machine), so re-running it after a stop continues where it was.
# Before a session ends: SIGTERM the `anatosynth experiment` process (running jobs checkpoint and stop), then
#   anatosynth experiment protocols/confirm.yaml --out runs/confirm --save-resumable   # archives unfinished pre-trainings
# and commit results/confirm/ and resume/.
set -u
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-runs/confirm}
ANATOSYNTH=${ANATOSYNTH:-anatosynth}
command -v "$ANATOSYNTH" >/dev/null || ANATOSYNTH=.venv/bin/anatosynth
export OMP_NUM_THREADS=1
mkdir -p "$OUT"
run() { nice -n 5 "$ANATOSYNTH" experiment protocols/confirm.yaml --out "$OUT" --jobs 1 --threads 1 --quiet "$@" || exit 1; }
# primary (a): released weights, no pre-training; seed by seed, so that every finished pair is an answer so far
for seed in $(seq 100 129); do run --arms anatomy,primitives --datasets chaos-t2:1 --seeds "$seed"; done
run --arms anatomy,primitives --datasets openkbp:1      # primary (b): the head-and-neck anatomy pre-training first
run --datasets chaos-t2:1,openkbp:1                     # secondary arms, one labelled case
run                                                     # four labelled cases
