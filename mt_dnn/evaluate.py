"""Evaluation: run a model over a split, compute metrics, write score files and GLUE submission TSVs."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from data_utils import jsonsafe
from data_utils.atomic import atomic_write
from data_utils.metrics import compute_metrics
from mt_dnn.batcher import TaskData, collate, eval_batches, to_device


@dataclass
class SplitResult:
    dataset: str                  # "{task}_{split}"
    uids: list[str]
    predictions: list
    scores: list
    metrics: Optional[dict[str, float]]  # None for unlabelled (test) splits


def autocast_context(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def predict_indices(model, data: TaskData, indices: Sequence[int], batch_size: int, device: torch.device,
                    pad_id: int, amp_dtype: Optional[torch.dtype] = None) -> tuple[list, list]:
    """Predictions and scores for ``indices`` of the split, in that order (batched by length)."""
    was_training = model.training
    model.eval()
    task = data.task_def.name
    indices = list(indices)
    preds: list = [None] * len(indices)
    scores: list = [None] * len(indices)
    for positions in eval_batches([data.lengths[i] for i in indices], batch_size):
        batch = to_device(collate(data, [indices[k] for k in positions], pad_id, with_labels=False), device)
        with autocast_context(device, amp_dtype):
            out = model(task, **batch)
        p, s = model.predict(task, out.float())
        for k, pk, sk in zip(positions, p.cpu().tolist(), s.cpu().tolist()):
            preds[k], scores[k] = pk, sk
    model.train(was_training)
    return preds, scores


def split_result(data: TaskData, preds: list, scores: list) -> SplitResult:
    """Bundle a whole split's predictions with its metrics (None when the split has no labels)."""
    metrics = None
    if data.task_def.has_labels(data.split):
        metrics = compute_metrics(data.task_def, data.labels, preds, scores)
    return SplitResult(data.name, list(data.uids), preds, scores, metrics)


def predict_split(model, data: TaskData, batch_size: int, device: torch.device, pad_id: int,
                  amp_dtype: Optional[torch.dtype] = None) -> SplitResult:
    """Predictions and scores in the shard's order; metrics when the split has labels."""
    preds, scores = predict_indices(model, data, range(len(data)), batch_size, device, pad_id, amp_dtype)
    return split_result(data, preds, scores)


def write_scores(result: SplitResult, output_dir: Path, epoch: int) -> Path:
    """``{dataset}_scores_{epoch}.json``: metrics, predictions, uids, scores."""
    path = Path(output_dir) / f"{result.dataset}_scores_{epoch}.json"
    payload = {"metrics": result.metrics, "predictions": result.predictions, "uids": result.uids,
               "scores": result.scores}
    with atomic_write(path) as handle:
        jsonsafe.dump(payload, handle)
    return path


def write_submission(result: SplitResult, task_def, path: Path) -> Path:
    """GLUE submission format: header ``index<TAB>prediction``, label names (or floats for regression)."""
    with atomic_write(path) as handle:
        handle.write("index\tprediction\n")
        for uid, pred in zip(result.uids, result.predictions):
            value = f"{float(pred):.6g}" if task_def.is_regression else task_def.label_name(int(pred))
            handle.write(f"{uid}\t{value}\n")
    return path
