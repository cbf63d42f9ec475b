#!/usr/bin/env bash
# The full-size study (docs/study.md), task by task and pair by pair, so each finished (task, pair) is a block of
# results to commit: the pair's selection sweep on the task (2 seeds over each optimizer's grid), then its final
# spec (the settings chosen on dev, 5 fresh seeds) and runs; at the end the combined report (per-task and
# average paired t-tests, best and last epoch, plot). Every step skips finished runs and resumes killed ones, so the
# script can be stopped and started again at will. Runs whose folders are gone but whose results the committed
# docs/results/*_runs.csv hold are not trained again (--skip_recorded), so a fresh clone continues where the
# committed results end; SKIP_RECORDED=0 trains everything again (to reproduce the study from scratch).
#   experiments/sweep/run_glue4_study.sh                      # all four tasks
#   TASKS="rte mrpc" PAIRS=adamax PARALLEL=2 experiments/sweep/run_glue4_study.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
PARALLEL=${PARALLEL:-2}
SKIP=()
[ "${SKIP_RECORDED:-1}" = 0 ] || SKIP=(--skip_recorded)
for task in ${TASKS:-rte mrpc stsb cola}; do
  for fam in ${PAIRS:-adamax adamw}; do
    "$PY" sweep.py run "experiments/sweep/minilm_glue4_${fam}_select.yml" --tasks "$task" --parallel "$PARALLEL" \
      "${SKIP[@]}"
    "$PY" -m experiments.sweep.final_specs "experiments/sweep/minilm_glue4_${fam}_select.yml" --tasks "$task"
    "$PY" sweep.py run "docs/results/minilm_glue4_${fam}_final_${task}.yml" --parallel "$PARALLEL" "${SKIP[@]}"
  done
done
"$PY" -m experiments.sweep.study
