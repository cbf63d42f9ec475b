"""Reads finished runs back: each run's ``metrics.jsonl`` -> its best-epoch and last-epoch dev results.

The score of an epoch is train.py's own ``glue_average`` of that evaluation (for a single-task run: the mean of
the task's metrics, e.g. MRPC (Acc + F1) / 2). The best epoch is the one with the highest score, the earliest on
ties; the metrics reported for it are that epoch's, so Acc and F1 always come from the same model.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from data_utils.jsonsafe import none_to_nan
from experiments.sweep.runner import DONE, run_dir
from experiments.sweep.spec import RunSpec, SweepSpec

Metrics = dict[str, dict[str, float]]  # dev dataset -> metric -> value (×100), as in metrics.jsonl


@dataclass(frozen=True)
class RunResult:
    run: RunSpec
    run_dir: Path
    epochs: int
    best_epoch: int
    best_score: float
    best_metrics: Metrics
    last_score: float
    last_metrics: Metrics
    seconds: Optional[float]


def read_metrics(path: Path) -> list[dict]:
    """The evaluation records, one per epoch; a resumed run may repeat an epoch, and its last record wins."""
    by_epoch: dict[int, dict] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            # train.py writes a NaN metric (Pearson of constant predictions) as null: read it back as NaN
            dev, score = none_to_nan(record["dev"]), float(none_to_nan(record["glue_average"]))
            epoch = int(record["epoch"])
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{path}:{number}: not an evaluation record with epoch, dev and glue_average") from None
        if not dev:
            raise ValueError(f"{path}:{number}: the record has no dev results")
        by_epoch[epoch] = {"epoch": epoch, "dev": dev, "score": score}
    if not by_epoch:
        raise ValueError(f"{path}: no evaluation records")
    return [by_epoch[e] for e in sorted(by_epoch)]


def _rank(score: float) -> float:
    return -math.inf if math.isnan(score) else score


def read_run(spec: SweepSpec, run: RunSpec) -> Optional[RunResult]:
    """The run's results, or None while it is not finished."""
    folder = run_dir(spec, run)
    done = folder / DONE
    if not done.is_file():
        return None
    records = read_metrics(folder / "metrics.jsonl")
    best = max(records, key=lambda r: _rank(r["score"]))  # max keeps the first of equal scores
    last = records[-1]
    try:
        seconds = float(json.loads(done.read_text(encoding="utf-8"))["seconds"])
    except (ValueError, KeyError, TypeError):
        seconds = None
    return RunResult(run, folder, len(records), best["epoch"], best["score"], best["dev"], last["score"],
                     last["dev"], seconds)


def collect(spec: SweepSpec) -> list[RunResult]:
    """Every finished run of the spec, in the spec's order."""
    return [r for r in (read_run(spec, run) for run in spec.runs()) if r is not None]
