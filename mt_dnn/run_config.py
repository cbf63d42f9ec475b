"""``config.json`` at the root of a run folder: every option of the run, where MT-DNN's tooling looks for it.

MT-DNN's train.py writes its option dict there as one line of JSON (followed by the network's printout). Here the
file holds one line of JSON: exactly the run's :class:`~mt_dnn.config.TrainConfig`, the data of every checkpoint's
``train_config.json`` (field names are MT-DNN's option names, except ``log_every`` for ``log_per_updates``), so
a whole-file JSON reader and MT-DNN's reader of the first line both read it, and ``mt_dnn.config.load_config`` does too. The
network's printout is left out (it would make the file something a JSON reader refuses). Written atomically when
training starts, and again by each resumed run (its reporting flags may differ).
"""
from __future__ import annotations

import json
from pathlib import Path

from data_utils.atomic import atomic_write
from data_utils.safe_load import loads_json, read_json

NAME = "config.json"


def write(output_dir: Path, config_json: str) -> Path:
    """``config_json`` (the TrainConfig's JSON) as one line at ``output_dir/config.json``."""
    path = Path(output_dir) / NAME
    with atomic_write(path) as handle:
        handle.write(json.dumps(loads_json(config_json, NAME), sort_keys=True) + "\n")
    return path


def is_run_config(path: Path) -> bool:
    """Whether ``path`` is a run folder's config.json (not an encoder's config.json of the same name)."""
    try:
        raw = read_json(path)
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and "train_datasets" in raw and "output_dir" in raw
