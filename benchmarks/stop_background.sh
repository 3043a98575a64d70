#!/bin/bash
# Stop the background grids (benchmarks/run_cpu_long.sh, benchmarks/run_confirm.sh) before a session ends, so
# that nothing is lost when the machine goes: the chain loops are stopped first (they would start the next
# job), then each `anatosynth experiment` process gets SIGTERM (its running job writes a checkpoint and
# stops), then every unfinished pre-training is archived into resume/ for a new machine. Finally it lists
# what to commit (results/, resume/). Restart next session with the two nohup lines of those scripts.
#   benchmarks/stop_background.sh
set -u
cd "$(dirname "$0")/.." || exit 1
ANATOSYNTH=${ANATOSYNTH:-anatosynth}
command -v "$ANATOSYNTH" >/dev/null || ANATOSYNTH=.venv/bin/anatosynth

chains=$(pgrep -f 'benchmarks/run_(cpu_long|confirm)\.sh' || true)
[ -n "$chains" ] && kill $chains && echo "stopped chain loops: $(echo $chains)"
experiments=$(pgrep -f 'anatosynth experiment protocols/' || true)
if [ -n "$experiments" ]; then
  kill -TERM $experiments
  echo "SIGTERM to experiment processes: $(echo $experiments); waiting for their jobs to checkpoint"
  for _ in $(seq 300); do
    pgrep -f 'anatosynth (experiment|pretrain|finetune|evaluate) ' >/dev/null || break
    sleep 1
  done
  if pgrep -f 'anatosynth (experiment|pretrain|finetune|evaluate) ' >/dev/null; then
    echo "still running after 5 min:"; pgrep -af 'anatosynth (experiment|pretrain|finetune|evaluate) '; exit 1
  fi
fi
for protocol in cpu-long-budget:runs/cpu-long confirm:runs/confirm; do
  "$ANATOSYNTH" experiment "protocols/${protocol%%:*}.yaml" --out "${protocol#*:}" --save-resumable || exit 1
done
git status --short results resume
