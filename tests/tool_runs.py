"""A trained run for the tests of the tools around train.py (predict.py, calc_metrics.py, score files, soft
targets): tests/workspace.py's tiny BERT and tasks plus ``tri``, a 3-class Classification task, trained one epoch.
Also each dev shard as the canonical TSV its uids and labels came from (texts are placeholders: the tools that
read it use the uid and label columns)."""
from __future__ import annotations

import random
from pathlib import Path

from data_utils.shards import format_line, read_shard
from data_utils.task_def import load_task_defs
from mt_dnn.trainer import Trainer
from workspace import config, make_workspace

TRI_YAML = """
tri:
  task_type: Classification
  data_format: PremiseOnly
  n_class: 3
  labels: [low, mid, high]
  metric_meta: [ACC, MCC]
  split_names: [train, dev, test]
"""
TASKS = ["pairs", "score", "pick", "tri"]


def _write_tri(folder: Path) -> None:
    rng = random.Random(5)
    for split, count in (("train", 48), ("dev", 24), ("test", 6)):
        lines = []
        for i in range(count):
            y = rng.randint(0, 2) if split != "test" else 0
            ids = [2, 10 + y] + [rng.randint(20, 120) for _ in range(rng.randint(3, 12))] + [3]
            lines.append(format_line(f"t{i}", y, ids, [0] * len(ids)))
        (folder / f"tri_{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_canonical(ws: Path, task: str, split: str = "dev") -> Path:
    """``{task}_{split}.tsv`` with the shard's uids and label names (values for Regression)."""
    td = load_task_defs(ws / "tasks.yml")[task]
    rows = []
    for rec in read_shard(ws / "shards" / f"{task}_{split}.jsonl"):
        label = f"{rec['label']}" if td.is_regression else td.label_name(rec["label"])
        texts = ["premise"] + (["hyp"] * td.n_class if task == "pick" else ["hypothesis"] if task == "pairs" else [])
        rows.append("\t".join([rec["uid"], label, *texts]))
    path = ws / "canonical" / f"{task}_{split}.tsv"
    path.parent.mkdir(exist_ok=True)
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def trained_run(tmp_path_factory, name: str) -> Path:
    """The workspace; its run is ``ws / "run"`` (one epoch, so ``best`` is epoch 0)."""
    ws = make_workspace(tmp_path_factory, name)
    with open(ws / "tasks.yml", "a", encoding="utf-8") as handle:
        handle.write(TRI_YAML)
    _write_tri(ws / "shards")
    Trainer(config(ws, "run", train_datasets=TASKS, test_datasets=TASKS, epochs=1)).fit()
    return ws
