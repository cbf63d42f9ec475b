"""``data.json`` in every checkpoint: the shards the run trained and evaluated on, with their row counts as read
(after ``--max_train_samples``/``--max_eval_samples``) and their bytes' fingerprints, so a model card written
later says what the model saw even when the data has moved or changed since."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from data_utils.safe_load import loads_json

FILE = "data.json"


def dumps(train_sets: Sequence, eval_sets: Sequence) -> str:
    def entry(d) -> dict:
        fp = d.fingerprint or {}
        return {"task": d.task_def.name, "split": d.split, "rows": len(d), "file": fp.get("file"),
                "size": fp.get("size"), "crc32": fp.get("crc32")}
    return json.dumps({"version": 1, "train": [entry(d) for d in train_sets],
                       "eval": [entry(d) for d in eval_sets]}, indent=2) + "\n"


def read(folder: Path) -> Optional[dict]:
    """The record, or None for checkpoints written before it existed."""
    path = Path(folder) / FILE
    if not path.is_file():
        return None
    record = loads_json(path.read_text(encoding="utf-8"), str(path))
    if not isinstance(record, dict) or not isinstance(record.get("train"), list):
        raise ValueError(f"{path}: not a data record (expected an object with a 'train' list)")
    return record
