#!/bin/bash
# Run the pre-registered confirm grid (protocols/confirm.yaml, issue 32) on one core, primary questions first:
#   nohup benchmarks/run_confirm.sh >> runs/confirm/chain.log 2>&1 &
# The other core pre-trains cpu-long-budget's primitives-30k (issue 31): benchmarks/run_cpu_long.sh a.
# Each step reuses finished jobs (results/confirm/, run folders) and resumes interrupted ones (checkpoints, or the
# committed archives in resume/ on a new machine), so re-running it after a stop continues where it was.
# Before a session ends: benchmarks/stop_background.sh (stops the chains, lets running jobs checkpoint, archives
# unfinished pre-trainings into resume/); then commit results/confirm/ and resume/.
# Order (the protocol fixes the jobs, not their order): CHAOS-T2's primary pairs for seeds 100-109 (one per
# labelled case of its pool of 10: every case once), then OpenKBP's head-and-neck anatomy pre-training (about
# 2,500 steps of one core) and OpenKBP's seed 100 pair, then both primary questions seed by seed (seeds 110-129
# of CHAOS-T2 repeat its ten labelled cases), so that each finished pair is an answer so far to both questions.
set -u
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-runs/confirm}
ANATOSYNTH=${ANATOSYNTH:-anatosynth}
command -v "$ANATOSYNTH" >/dev/null || ANATOSYNTH=.venv/bin/anatosynth
export OMP_NUM_THREADS=1
mkdir -p "$OUT"
run() { nice -n 5 "$ANATOSYNTH" experiment protocols/confirm.yaml --out "$OUT" --jobs 1 --threads 1 --quiet "$@" || exit 1; }
primary() { run --arms anatomy,primitives --datasets "$1:1" --seeds "$2"; }
for seed in $(seq 100 109); do primary chaos-t2 "$seed"; done    # primary (a): released weights, no pre-training
primary openkbp 100                                               # primary (b): the head-and-neck pre-training first
for seed in $(seq 101 129); do
  [ "$seed" -ge 110 ] && primary chaos-t2 "$seed"
  primary openkbp "$seed"
done
run --datasets chaos-t2:1,openkbp:1                     # secondary arms, one labelled case
run                                                     # four labelled cases
