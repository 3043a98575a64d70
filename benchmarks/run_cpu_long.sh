#!/bin/bash
# Run the cpu-long grid (issue 12) on a 2-core machine as two chains, one per core, each one process with
# one torch thread: `benchmarks/run_cpu_long.sh a` on one core, `benchmarks/run_cpu_long.sh b` beside it.
# Each step reuses finished jobs (results/cpu-long/, run folders) and resumes interrupted ones from their
# checkpoints, so re-running a chain after a stop, or on a fresh machine, continues where it was; a job
# the other chain is running waits on its lock and is then reused, never run twice.
#   nohup benchmarks/run_cpu_long.sh a >> runs/cpu-long/chain-a.log 2>&1 &
#   nohup benchmarks/run_cpu_long.sh b >> runs/cpu-long/chain-b.log 2>&1 &
# Stop: SIGTERM the two `anatosynth experiment` processes; their running jobs write checkpoints and stop.
# Order: a pre-training leaves nothing that survives a machine change until it ends (its checkpoints are not
# committed), while every fine-tune commits its metrics when it ends; so a chain starts a session with the
# pre-training it still needs (the 2.5k budget point on a, random on b, each 1-2 hours of a core) and fills
# the rest with fine-tunes. Done first (2026-11-30): scratch and anatomy everywhere, the 30k budget point
# (pre-trained on a GPU, shipped in weights/), primitives on CHAOS-T2 with one case; the first lines of each
# chain re-read them. The screen comes last.
set -u
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-runs/cpu-long}
ANATOSYNTH=${ANATOSYNTH:-anatosynth}
command -v "$ANATOSYNTH" >/dev/null || ANATOSYNTH=.venv/bin/anatosynth
export OMP_NUM_THREADS=1
run() { nice -n 5 "$ANATOSYNTH" experiment "protocols/$1.yaml" --out "$OUT" --jobs 1 --threads 1 "${@:2}" || exit 1; }
case "${1:-}" in
  a)
    run cpu-long --arms primitives --seeds 0                      # done: these three are reused from results/
    run cpu-long-budget --arms anatomy-30k
    run cpu-long --arms primitives --datasets chaos-t2:1
    run cpu-long --arms primitives --datasets chaos-t2:4
    run cpu-long-budget --arms anatomy-2.5k
    run cpu-long --arms random --datasets chaos-t2:1
    run cpu-long --arms random --datasets chaos-t2:4
    run cpu-long --arms primitives --datasets openkbp
    ;;
  b)
    run cpu-long --arms scratch,anatomy --datasets chaos-t2:4     # done: these two are reused from results/
    run cpu-long --arms scratch,anatomy --datasets openkbp
    run cpu-long --arms random --seeds 0
    run cpu-long --arms primitives --datasets openkbp
    run cpu-long --arms random --datasets openkbp
    run cpu-long-screen
    ;;
  *) echo "usage: benchmarks/run_cpu_long.sh a|b   (one chain per core; OUT=runs/cpu-long by default)" >&2; exit 2 ;;
esac
