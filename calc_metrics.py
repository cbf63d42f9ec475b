#!/usr/bin/env python
"""Metrics of a score file against the labels of its input, as MT-DNN's ``calc_metrics.py``:

    python calc_metrics.py --task_def experiments/glue/glue_task_def.yml --task rte \\
        --std_input data/canonical_data/rte_dev.tsv --score rte_dev_scores.json

``--std_input`` is the task's canonical TSV (``uid, label, premise[, hypothesis]``, what glue_prepro.py writes),
``--score`` a score file in MT-DNN's layout (predict.py's, train.py's or MT-DNN's own). Rows are matched by uid,
taken in the TSV's order; the two files must hold the same uids. Prints the metrics dict, as MT-DNN prints it.
"""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task_def", default="experiments/glue/glue_task_def.yml", help="task-definition YAML")
    p.add_argument("--task", required=True, help="the task whose metric_meta is computed")
    p.add_argument("--std_input", required=True, help="the task's canonical TSV, with labels")
    p.add_argument("--score", required=True, help="the score file (MT-DNN's layout)")
    return p


def golds_predictions_scores(task_def, std_input: str, score: str) -> tuple[list, list, list]:
    """(golds, predictions, each row's scores), in the TSV's row order."""
    from data_utils.score_file import check_same_rows, read_score_file
    from data_utils.tsv import read_canonical
    rows = read_canonical(std_input, task_def, "dev")
    scored = read_score_file(score, task_def.n_class)
    missing = [u for u in rows.uids if u not in scored]
    if missing:
        raise ValueError(f"--std_input {std_input}: {len(missing)} of its uids are not in {score} (first: "
                         f"{missing[0]}); the two files must hold the same rows")
    check_same_rows(scored, rows.uids, score, std_input)
    preds = [scored[u][0] for u in rows.uids]
    return list(rows.labels), preds, [scored[u][1] for u in rows.uids]


def check_labelled(std_input: str, task: str) -> None:
    """A ``{task}_{split}.tsv`` of a test split holds placeholder labels (GLUE's test sets have none): refused,
    as predict.py refuses ``--with_label`` on a test shard, rather than scored against them."""
    import re
    from pathlib import Path

    from data_utils.task_def import split_role
    m = re.fullmatch(re.escape(task) + r"_(.+)\.tsv", Path(std_input).name)
    try:
        role = split_role(m.group(1)) if m else None
    except ValueError:
        role = None
    if role == "test":
        raise ValueError(f"--std_input {std_input}: a test split (its labels are placeholders); score a dev split")


def run(args) -> dict[str, float]:
    import numpy as np

    from data_utils.metrics import compute_metrics
    from data_utils.task_def import load_task_defs, select_tasks
    td = select_tasks(load_task_defs(args.task_def), [args.task], source=args.task_def)[args.task]
    if td.token_level:
        raise ValueError(f"--task {args.task}: a {td.task_type.name} task's metrics come from its decoded "
                         "predictions; predict.py prints and writes them")
    check_labelled(args.std_input, args.task)
    golds, preds, scores = golds_predictions_scores(td, args.std_input, args.score)
    table = np.asarray(scores, dtype=np.float64)
    return compute_metrics(td, np.asarray(golds), np.asarray(preds), table[:, 0] if td.n_class == 1 else table)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        metrics = run(args)
    except (ValueError, OSError) as exc:
        print(f"calc_metrics.py: error: {exc}", file=sys.stderr)
        return 2
    print(metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
