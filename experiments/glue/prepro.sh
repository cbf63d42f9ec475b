#!/usr/bin/env bash
# The whole GLUE data chain for one encoder:
#   raw GLUE files (glue_data/<TASK>/)  --glue_prepro.py-->  canonical TSVs  --prepro_std.py-->  JSONL shards
# Usage: experiments/glue/prepro.sh [MODEL [extra prepro_std.py flags...]]
#   MODEL: a pretrained_models.py registry name (default minilm-l6), a hub name or a local folder.
# Environment overrides: GLUE_DIR (data/glue_data), DATA_DIR (data/canonical_data), TASK_DEF, MAX_SEQ_LEN (512),
#   WORKERS (min(2, CPUs)), PYTHON (.venv/bin/python if present, else python).
# Shards land in $DATA_DIR/<model short name>/{task}_{split}.jsonl; a re-run skips up-to-date shards.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
MODEL="${1:-minilm-l6}"
if [[ $# -gt 0 ]]; then shift; fi
GLUE_DIR="${GLUE_DIR:-$ROOT/data/glue_data}"
DATA_DIR="${DATA_DIR:-$ROOT/data/canonical_data}"
TASK_DEF="${TASK_DEF:-$ROOT/experiments/glue/glue_task_def.yml}"
MAX_SEQ_LEN="${MAX_SEQ_LEN:-512}"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi
workers_flag=()
if [[ -n "${WORKERS:-}" ]]; then workers_flag=(--workers "$WORKERS"); fi

PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m experiments.glue.glue_prepro --glue_dir "$GLUE_DIR" --out_dir "$DATA_DIR" --task_def "$TASK_DEF"
"$PYTHON" "$ROOT/prepro_std.py" --model "$MODEL" --root_dir "$DATA_DIR" --task_def "$TASK_DEF" \
  --max_seq_len "$MAX_SEQ_LEN" ${workers_flag[@]+"${workers_flag[@]}"} "$@"
