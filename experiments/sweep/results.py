"""Reads finished runs back: each run's ``metrics.jsonl`` -> its best-epoch and last-epoch dev results.

A run's folder holds checkpoints and is never committed; the report's ``<name>_runs.csv`` (one row per finished
run, every number at full precision) is. A run whose folder is gone is read from that CSV instead, so the report,
the final specs and the study can be rebuilt after ``runs/`` is deleted or on a fresh clone (and ``sweep.py run
--skip_recorded`` can continue a sweep there without re-running it). A finished folder wins over its row. Each
row carries a fingerprint of the run's train.py flags (``flags``): a row whose flags are not the ones the spec
gives the run now is an error, as a folder's are (rows written before fingerprints were recorded have none and
are taken as they are).

The score of an epoch is train.py's own ``glue_average`` of that evaluation (for a single-task run: the mean of
the task's metrics, e.g. MRPC (Acc + F1) / 2). The best epoch is the one with the highest score, the earliest on
ties; the metrics reported for it are that epoch's, so Acc and F1 always come from the same model.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from data_utils.jsonsafe import none_to_nan
from data_utils.safe_load import loads_json, read_json
from experiments.sweep.runner import DONE, flags_digest, folder_flags, run_dir
from experiments.sweep.spec import RunSpec, SweepSpec, train_argv

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
    recorded: bool = False  # read back from the runs CSV: the run's folder is gone
    flags: str = ""  # flags_digest of the run's train.py flags; empty if unknown (a row from before they were kept)


def read_metrics(path: Path) -> list[dict]:
    """The evaluation records, one per epoch; a resumed run may repeat an epoch, and its last record wins."""
    by_epoch: dict[int, dict] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = loads_json(line, path, number)
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
        seconds = float(read_json(done)["seconds"])
    except (ValueError, KeyError, TypeError):
        seconds = None
    return RunResult(run, folder, len(records), best["epoch"], best["score"], best["dev"], last["score"],
                     last["dev"], seconds, flags=folder_flags(folder))


def ledger_path(spec: SweepSpec) -> Path:
    """The runs CSV the spec's report writes, and reads back."""
    return spec.results_dir / f"{spec.name}_runs.csv"


_SCALARS = {"best_epoch", "best_score", "last_score"}


def _row_metrics(row: dict, prefix: str, where: str) -> Metrics:
    """``best_rte_dev_ACC`` -> {"rte_dev": {"ACC": …}}: a dev set's name ends in ``dev`` (``mnli_matched_dev``)."""
    metrics: Metrics = {}
    for column, value in row.items():
        if not column.startswith(prefix + "_") or column in _SCALARS or value in ("", None):
            continue
        dev, sep, metric = column[len(prefix) + 1:].partition("dev_")
        if not sep or not metric:
            raise ValueError(f"{where}: column {column!r} is not {prefix}_<dev set>_<metric>")
        metrics.setdefault(dev + "dev", {})[metric] = _number(value, column, where)
    return metrics


def _number(value: str, column: str, where: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {column} {value!r} is not a number") from None


def _row_result(spec: SweepSpec, run: RunSpec, row: dict, where: str) -> RunResult:
    recorded = (row.get("task"), row.get("optimizer"), _number(row.get("learning_rate"), "learning_rate", where),
                _number(row.get("beta3"), "beta3", where), _number(row.get("seed"), "seed", where))
    if recorded != (run.task, run.optimizer, run.learning_rate, run.beta3, run.seed):
        raise ValueError(f"{where}: run {run.run_id} is recorded with other settings {recorded}; "
                         "delete the row or fix the spec")
    flags = row.get("flags") or ""
    if flags and flags != flags_digest(train_argv(spec, run, run_dir(spec, run))):
        raise ValueError(f"{where}: run {run.run_id} was recorded with other train.py flags than the spec gives "
                         "it now; delete the row or use another runs_dir")
    number = lambda column: _number(row.get(column), column, where)
    seconds = row.get("seconds")
    best_metrics = _row_metrics(row, "best", where)
    if not best_metrics:
        raise ValueError(f"{where}: run {run.run_id} has no best_<dev set>_<metric> values")
    return RunResult(run, Path(row.get("run_dir") or ""), int(number("epochs")), int(number("best_epoch")),
                     number("best_score"), best_metrics, number("last_score"), _row_metrics(row, "last", where),
                     number("seconds") if seconds not in ("", None) else None, recorded=True, flags=flags)


def read_ledger(spec: SweepSpec) -> dict[str, RunResult]:
    """The spec's runs recorded in its committed runs CSV, by run_id. Rows of runs no longer in the spec, or
    recorded under another runs_dir (another sweep of the same name), are ignored; a row recorded with other
    train.py flags is an error (changed train_args need a new runs_dir, as for folders). Empty when the CSV does
    not exist yet."""
    path = ledger_path(spec)
    if not path.is_file():
        return {}
    runs = {run.run_id: run for run in spec.runs()}
    recorded: dict[str, RunResult] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        for line, row in enumerate(csv.DictReader(handle), 2):
            run = runs.get(row.get("run_id"))
            if run is not None and row.get("run_dir") == str(run_dir(spec, run)):
                recorded[run.run_id] = _row_result(spec, run, row, f"{path}:{line}")
    return recorded


def collect(spec: SweepSpec) -> list[RunResult]:
    """Every finished run of the spec, in the spec's order: from its folder, else from the runs CSV."""
    recorded = read_ledger(spec)
    results = ((read_run(spec, run) or recorded.get(run.run_id)) for run in spec.runs())
    return [r for r in results if r is not None]
