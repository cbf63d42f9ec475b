#!/usr/bin/env bash
# The full-size study of issue 16, task by task, so each finished task is a block of results to commit:
# for each task, both selection sweeps (2 seeds over each optimizer's grid), then each pair's final spec (the
# settings chosen on dev, 5 fresh seeds) and its runs; at the end the combined report (per-task and average
# paired t-tests, best and last epoch, plot). Every step skips finished runs and resumes killed ones, so the
# script can be stopped and started again at will.
#   experiments/sweep/run_glue4_study.sh                      # all four tasks
#   TASKS="rte mrpc" PARALLEL=2 experiments/sweep/run_glue4_study.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
PARALLEL=${PARALLEL:-2}
for task in ${TASKS:-rte mrpc stsb cola}; do
  for fam in adamax adamw; do
    "$PY" sweep.py run "experiments/sweep/minilm_glue4_${fam}_select.yml" --tasks "$task" --parallel "$PARALLEL"
  done
  for fam in adamax adamw; do
    "$PY" experiments/sweep/final_specs.py "experiments/sweep/minilm_glue4_${fam}_select.yml" --tasks "$task"
    "$PY" sweep.py run "docs/results/minilm_glue4_${fam}_final_${task}.yml" --parallel "$PARALLEL"
  done
done
"$PY" experiments/sweep/study.py
