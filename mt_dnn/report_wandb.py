"""Weights & Biases (``--report_to wandb``): the run's settings as its config, its scalars, the ``best/`` path.

Files go to ``OUTPUT_DIR/wandb`` (unless ``WANDB_DIR`` is set); W&B's own variables apply as usual
(``WANDB_PROJECT``, default ``sage-mtdnn``; ``WANDB_MODE=offline`` keeps the run on disk for ``wandb sync``).
``--resume`` continues the same W&B run (its id is kept in ``reporting.json``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from mt_dnn.reporter_base import Reporter, RunInfo

PROJECT = "sage-mtdnn"


class WandbReporter(Reporter):
    def __init__(self, run: RunInfo):
        import wandb
        saved = run.saved.get("wandb") if run.resume else None
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or PROJECT,
                              id=saved["run_id"] if saved else None, resume="allow" if saved else None,
                              name=os.environ.get("WANDB_NAME") or run.output_dir.name, config=run.params,
                              dir=os.environ.get("WANDB_DIR") or str(run.output_dir), reinit="create_new")
        if not saved:
            run.record("wandb", {"run_id": self.run.id})

    def scalars(self, values: dict, step: int) -> None:
        self.run.log(dict(values), step=step)

    def evaluated(self, record: dict, best: Optional[Path]) -> None:
        self.run.log({"epoch": record["epoch"]}, step=record["step"])
        if best is not None:
            self.run.summary["best_checkpoint"] = str(Path(best).resolve())
            self.run.summary["best_epoch"] = record["epoch"]

    def close(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)
