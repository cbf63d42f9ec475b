"""What every reporter of mt_dnn/reporting.py shares: the run it starts from and the calls it receives."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from data_utils.atomic import atomic_write
from data_utils.safe_load import read_json

STATE_FILE = "reporting.json"


@dataclass(frozen=True)
class RunInfo:
    """What a reporter starts from: the run folder, its flattened settings, whether the run resumes, and the
    ids recorded by an earlier attempt of this run (``reporting.json``)."""
    output_dir: Path
    params: dict
    resume: bool
    saved: dict

    def record(self, name: str, value: dict) -> None:
        """Keep ``value`` (a run id) for ``--resume``; written atomically next to the run's other files."""
        state = read_state(self.output_dir)
        state[name] = value
        with atomic_write(self.output_dir / STATE_FILE) as handle:
            handle.write(json.dumps(state, indent=2, sort_keys=True) + "\n")


class Reporter:
    """One destination. Scalars come with the optimizer step they belong to."""

    def scalars(self, values: dict, step: int) -> None:
        pass

    def evaluated(self, record: dict, best: Optional[Path]) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self, status: str) -> None:
        """``status``: FINISHED, KILLED (a stop signal) or FAILED (an error ended the run)."""


def read_state(output_dir: Path) -> dict:
    path = Path(output_dir) / STATE_FILE
    if not path.exists():
        return {}
    state = read_json(path)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a JSON object of reporter ids")
    return state
