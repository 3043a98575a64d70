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
# pre-training it still needs (about 80 min of a core for 10,000 patches at 0.55 steps/s) and fills the rest
# with fine-tunes. Done by 2026-12-01 01:45 UTC: the whole cpu-long grid (72 jobs), the budget protocol (24),
# the screen's shell and 20-subject arms; the first lines of each chain re-read them. Left: the screen's
# fill arm (its pre-training stopped at step 246), and issue 31's 30k controls (2026-12-07 on): chain a
# pre-trains cpu-long-budget's primitives-30k (7,500 steps at 0.134 steps/s on this machine: about 15.5 hours of
# a core, so several sessions; before a session ends archive it with
#   anatosynth experiment protocols/cpu-long-budget.yaml --out runs/cpu-long --save-resumable
# and commit resume/), then its 18 fine-tunes; chain b runs anatomy-30k's fine-tunes in the two new settings.
# The other core belongs to the confirm grid (benchmarks/run_confirm.sh) while that runs.
set -u
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-runs/cpu-long}
ANATOSYNTH=${ANATOSYNTH:-anatosynth}
command -v "$ANATOSYNTH" >/dev/null || ANATOSYNTH=.venv/bin/anatosynth
export OMP_NUM_THREADS=1
run() { nice -n 5 "$ANATOSYNTH" experiment "protocols/$1.yaml" --out "$OUT" --jobs 1 --threads 1 "${@:2}" || exit 1; }
case "${1:-}" in
  a)
    run cpu-long-budget --arms primitives-30k                     # issue 31: pre-training, then its fine-tunes
    run cpu-long --arms primitives --seeds 0                      # done: these four are reused from results/
    run cpu-long-budget
    run cpu-long --arms primitives --datasets chaos-t2:1
    run cpu-long --arms primitives --datasets chaos-t2:4
    run cpu-long --arms primitives --datasets openkbp
    run cpu-long --arms random --datasets chaos-t2:4 --seeds 0,1,2,3,4
    run cpu-long-screen --arms anatomy-shell
    run cpu-long-screen
    ;;
  b)
    run cpu-long-budget --arms anatomy-30k                        # issue 31: 30k anatomy in CHAOS-T2 x4, OpenKBP
    run cpu-long --arms scratch,anatomy                           # done: reused from results/
    run cpu-long --arms random --datasets chaos-t2:1             # done
    run cpu-long --arms random --datasets openkbp
    run cpu-long --arms random --datasets chaos-t2:4 --seeds 5
    run cpu-long-screen --arms anatomy                          # its 20-subject bank point
    run cpu-long-screen
    ;;
  *) echo "usage: benchmarks/run_cpu_long.sh a|b   (one chain per core; OUT=runs/cpu-long by default)" >&2; exit 2 ;;
esac
