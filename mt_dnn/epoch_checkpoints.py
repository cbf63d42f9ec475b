"""MT-DNN's evaluation and model outputs beyond ``best/`` and the step checkpoints.

- ``--save_per_epoch``: after each epoch's evaluation, ``epoch-N/`` (N from 0, as MT-DNN's ``model_{epoch}.pt``):
  the weights and configs of a ``best/`` folder with that epoch's record as ``metrics.json``, so predict.py,
  export.py and ``--init_checkpoint`` read it like any checkpoint. ``--keep_epochs K`` keeps the newest K
  (0: all, as MT-DNN keeps every file).
- ``--save_per_updates_on --save_per_updates N``: every N optimizer updates (``global_step``, which counts the
  updates of a continued MT-DNN/SAGE optimizer state as MT-DNN's ``model.updates`` does) the dev and test sets are
  evaluated inside the epoch and a ``step-N/`` checkpoint is written (MT-DNN's ``model_{epoch}_{updates}.pt``;
  the newest ``--keep_last`` are kept). An update that ends its epoch or the run is evaluated once, by the
  epoch's own evaluation.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

from data_utils import jsonsafe
from mt_dnn import distributed as dist_utils
from mt_dnn import checkpoint, run_folder


def evaluation_tag(epoch: int, updates: Optional[int] = None) -> int | str:
    """What names an evaluation's score and submission files: the epoch, or ``updates_N`` inside an epoch."""
    return epoch if updates is None else f"updates_{updates}"


def label(epoch: int, updates: Optional[int] = None) -> str:
    """How the log names an evaluation: ``epoch 2``, or ``epoch 2 updates 600`` inside the epoch."""
    return f"epoch {epoch}" if updates is None else f"epoch {epoch} updates {updates}"


def prune(output_dir: Path, keep: int) -> None:
    """Remove all but the newest ``keep`` epoch-N folders (0: keep all)."""
    if keep > 0:
        for old in checkpoint.numbered_folders(output_dir, run_folder.EPOCH_NAME)[keep:]:
            shutil.rmtree(old, ignore_errors=True)


def save_epoch(trainer, record: dict) -> Optional[Path]:
    """``epoch-N/`` for the epoch just evaluated (every rank calls this: FSDP gathers the weights)."""
    cfg = trainer.cfg
    if not cfg.save_per_epoch:
        return None
    folder = trainer.state.save(trainer.output_dir / f"epoch-{record['epoch']}",
                                {"metrics.json": jsonsafe.dumps(record, indent=2)})
    if trainer.is_main:
        prune(trainer.output_dir, cfg.keep_epochs)
    dist_utils.barrier()
    return folder


def mid_epoch_due(trainer, plan_length: int) -> bool:
    """Whether the update just taken is evaluated inside its epoch (the same answer on every rank)."""
    cfg = trainer.cfg
    return (cfg.save_per_updates_on and trainer.global_step % cfg.save_per_updates == 0
            and trainer.position < plan_length and trainer.global_step < trainer.last_step)
