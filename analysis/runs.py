"""A trained run, rebuilt from its checkpoint folder, with the data splits the analyses read.

Accepts a run's ``output_dir`` (its ``best/`` checkpoint is used) or a checkpoint folder itself (``best/``,
``step-N/``); the architecture comes from the saved encoder config, so no hub access is needed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch

from data_utils.task_def import TaskDef
from mt_dnn import checkpoint as ckpt
from mt_dnn.batcher import TaskData, collate, eval_batches, load_split
from mt_dnn.config import TrainConfig
from mt_dnn.evaluate import predict_split
from mt_dnn.model import MTDNNModel
from mt_dnn.restore import restore


@dataclass
class LoadedRun:
    folder: Path          # the checkpoint folder the weights came from
    cfg: TrainConfig
    model: MTDNNModel
    task_defs: dict[str, TaskDef]
    pad_id: int

    def task(self, name: Optional[str]) -> TaskDef:
        """``name``, or the run's first training task when None."""
        name = name or self.cfg.train_datasets[0]
        if name not in self.task_defs:
            raise ValueError(f"{self.folder}: task '{name}' is not one of this run's tasks "
                             f"({', '.join(self.task_defs)})")
        return self.task_defs[name]

    def split(self, task: TaskDef, split: str, limit: int = 0, data_dir: Optional[str] = None) -> TaskData:
        return load_split(data_dir or self.cfg.data_dir, task, split, self.cfg.max_seq_len, limit,
                          cache=self.cfg.shard_cache)


def checkpoint_folder(path: Path) -> Path:
    path = Path(path)
    if (path / ckpt.WEIGHTS).is_file():
        return path
    if (path / "best" / ckpt.WEIGHTS).is_file():
        return path / "best"
    raise FileNotFoundError(f"{path}: neither a checkpoint folder ({ckpt.WEIGHTS}) nor a run with best/")


def load_run(path: Path, device: torch.device = torch.device("cpu"), task_def: Optional[str] = None) -> LoadedRun:
    """The trained MTDNNModel of a run folder, in eval mode on ``device``."""
    r = restore(checkpoint_folder(path), task_def)
    r.model.to(device).eval()
    return LoadedRun(r.folder, r.cfg, r.model, r.task_defs, r.pad_id)


def labelled_batches(data: TaskData, batch_size: int, pad_id: int,
                     device: torch.device = torch.device("cpu")) -> Iterator[dict]:
    """Deterministic length-sorted batches with labels (the order does not matter for averages)."""
    for idx in eval_batches(data.lengths, batch_size):
        yield {k: v.to(device) for k, v in collate(data, idx, pad_id).items()}


def batch_loss(model: MTDNNModel, task: str):
    """``loss_fn(batch)`` for :func:`analysis.sensitivity.accumulate_sensitivity`: the task's training loss."""
    def loss_fn(batch: dict) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return model.loss(task, model(task, **inputs).float(), batch["labels"])
    return loss_fn


def dev_score(model: MTDNNModel, data: TaskData, pad_id: int, batch_size: int = 64,
              device: torch.device = torch.device("cpu")) -> tuple[float, dict[str, float]]:
    """(mean of the task's metrics, the metrics): one number per model, as the GLUE score averages a task."""
    metrics = predict_split(model, data, batch_size, device, pad_id).metrics
    if not metrics:
        raise ValueError(f"{data.name}: split has no labels, so it cannot be scored")
    return sum(metrics.values()) / len(metrics), metrics
