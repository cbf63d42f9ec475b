"""MLflow (``--report_to mlflow``): the run's settings as params, its scalars as metrics, its ``best/`` folder.

Where: ``MLFLOW_TRACKING_URI`` when set; otherwise a file store in ``OUTPUT_DIR/mlruns`` (``file:`` URI), kept with
the run (MLflow 3 asks ``MLFLOW_ALLOW_FILE_STORE=true`` for that store; it is set for this process unless already
set). ``MLFLOW_EXPERIMENT_NAME`` picks the experiment (default: MLflow's Default), ``MLFLOW_RUN_NAME`` the run name
(default: the run folder's name). The ``best/`` folder's path is the tag ``best_checkpoint``, updated at each new
best; ``HF_MLFLOW_LOG_ARTIFACTS=1`` also copies that folder into the run's artifacts (under ``best/``) when the run
finishes. ``--resume`` continues the same MLflow run (its id and store are kept in ``reporting.json``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from mt_dnn.reporter_base import Reporter, RunInfo

BATCH = 100  # MLflow takes at most 100 params per log_batch call
TRUE = {"1", "true", "yes", "on"}


def tracking_uri(output_dir: Path) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return (Path(output_dir).resolve() / "mlruns").as_uri()


class MlflowReporter(Reporter):
    def __init__(self, run: RunInfo):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient
        self.output_dir = run.output_dir
        saved = run.saved.get("mlflow") if run.resume else None
        uri = saved["tracking_uri"] if saved else tracking_uri(run.output_dir)
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        self.best: Optional[Path] = None
        if saved:
            self.run_id = saved["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            logged = self.client.get_run(self.run_id).data.params
            changed = {k: v for k, v in run.params.items() if k in logged and logged[k] != v}
            for key, value in changed.items():  # params are immutable in MLflow: a resumed change is a tag
                self.client.set_tag(self.run_id, f"resumed.{key}", value)
            new = [Param(k, v) for k, v in run.params.items() if k not in logged]
        else:
            self.run_id = self.client.create_run(self._experiment(),
                                                 run_name=os.environ.get("MLFLOW_RUN_NAME") or run.output_dir.name,
                                                 tags={"output_dir": str(run.output_dir.resolve())}).info.run_id
            run.record("mlflow", {"run_id": self.run_id, "tracking_uri": uri})
            new = [Param(k, v) for k, v in run.params.items()]
        for i in range(0, len(new), BATCH):
            self.client.log_batch(self.run_id, params=new[i:i + BATCH])

    def _experiment(self) -> str:
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME")
        if not name:
            return "0"
        found = self.client.get_experiment_by_name(name)
        return found.experiment_id if found is not None else self.client.create_experiment(name)

    def scalars(self, values: dict, step: int) -> None:
        from mlflow.entities import Metric
        import time
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])

    def evaluated(self, record: dict, best: Optional[Path]) -> None:
        self.client.log_metric(self.run_id, "epoch", record["epoch"], step=record["step"])
        if best is not None:
            self.best = Path(best).resolve()
            self.client.set_tag(self.run_id, "best_checkpoint", str(self.best))
            self.client.set_tag(self.run_id, "best_epoch", str(record["epoch"]))

    def close(self, status: str) -> None:
        if status == "FINISHED" and self.best is not None and \
                os.environ.get("HF_MLFLOW_LOG_ARTIFACTS", "").lower() in TRUE:
            self.client.log_artifacts(self.run_id, str(self.best), "best")
        self.client.set_terminated(self.run_id, status)
