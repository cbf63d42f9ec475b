"""Evaluation: run a model over a split, compute metrics, write score files and GLUE submission TSVs.

Span and SequenceLabeling splits are decoded first (windows -> one answer per question, first sub-tokens -> one
tag per word) and also written in their own formats: SQuAD's predictions JSON, CoNLL columns.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from data_utils import jsonsafe
from data_utils.atomic import atomic_write
from data_utils.metrics import SPLIT_METRICS, compute_metrics
from data_utils.score_file import flat_scores
from data_utils.task_def import TaskType
from mt_dnn.batcher import TaskData, collate, eval_batches, to_device


@dataclass
class SplitResult:
    dataset: str                  # "{task}_{split}"
    uids: list[str]
    predictions: list
    scores: list
    metrics: Optional[dict[str, float]]  # None for unlabelled (test) splits
    official: Optional[tuple[str, str]] = None  # (file suffix, text): predictions in the task's own format


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
    decode = DECODERS.get(data.task_def.task_type)
    if decode is not None:
        return decode(data, preds, scores)
    metrics = None
    if data.task_def.has_labels(data.split):
        metrics = compute_metrics(data.task_def, data.labels, preds, scores)
    return SplitResult(data.name, list(data.uids), preds, scores, metrics)


def _split_metrics(data: TaskData, golds, predictions) -> Optional[dict[str, float]]:
    if not data.task_def.has_labels(data.split):
        return None
    out: dict[str, float] = {}
    for name in data.task_def.metric_meta:
        out.update(SPLIT_METRICS[name](golds, predictions, data.task_def))
    return out


def decode_span(data: TaskData, preds: list, scores: list) -> SplitResult:
    """Windows -> one answer per question (uids: question ids in first-seen order; scores: null score minus
    best span score), EM/F1 against the gold texts, and SQuAD's predictions JSON {question id: answer}."""
    from data_utils.squad import DECODE_KEYS, best_span
    if data.extras and any(k not in data.extras[0] for k in DECODE_KEYS):
        raise ValueError(f"{data.name}: the shard has no {', '.join(DECODE_KEYS)} (training shards leave them out); "
                         "predict a dev or test split")
    windows: dict[str, list] = {}
    for row, (pos, val) in enumerate(zip(preds, scores)):
        extra = data.extras[row]
        windows.setdefault(extra["qid"], []).append(
            {"offsets": extra["offsets"], "context": extra["context"], "starts": pos[0], "ends": pos[1],
             "start_logits": val[0][1:], "end_logits": val[1][1:], "null": val[0][0] + val[1][0]})
    first = {}
    for row, extra in enumerate(data.extras):
        first.setdefault(extra["qid"], row)
    answers, diffs = {}, []
    for qid, ws in windows.items():
        answers[qid], diff = best_span(ws, data.task_def.span)
        diffs.append(diff if diff != float("inf") else None)
    golds = {qid: data.extras[row]["answers"] for qid, row in first.items()}
    metrics = _split_metrics(data, golds, answers)
    return SplitResult(data.name, list(answers), list(answers.values()), diffs, metrics,
                       (".json", jsonsafe.dumps(answers, indent=2, ensure_ascii=False) + "\n"))


def decode_tags(data: TaskData, preds: list, scores: list) -> SplitResult:
    """First sub-token tags -> one tag per word (O for words cut off at --max_seq_len), entity-level scores,
    and the sentences as columns (``word gold predicted``; ``word predicted`` for unlabelled splits)."""
    from data_utils.conll import entity_tag, format_columns
    names = data.task_def.labels
    words, tags, golds, confidence = [], [], [], []
    for row, (p, s) in enumerate(zip(preds, scores)):
        extra = data.extras[row]
        words.append(extra["words"])
        tags.append([entity_tag(names[p[k]]) if k >= 0 else "O" for k in extra["word_start"]])
        confidence.append([s[k] if k >= 0 else None for k in extra["word_start"]])
        golds.append([names[t] for t in extra["tags"]])
    labelled = data.task_def.has_labels(data.split)
    metrics = _split_metrics(data, golds, tags)
    return SplitResult(data.name, list(data.uids), tags, confidence, metrics,
                       (".conll", format_columns(words, tags, golds if labelled else None)))


#: Task types whose per-window / per-token outputs are decoded into per-question / per-word predictions.
DECODERS = {TaskType.Span: decode_span, TaskType.SequenceLabeling: decode_tags}


def predict_split(model, data: TaskData, batch_size: int, device: torch.device, pad_id: int,
                  amp_dtype: Optional[torch.dtype] = None) -> SplitResult:
    """Predictions and scores in the shard's order; metrics when the split has labels."""
    preds, scores = predict_indices(model, data, range(len(data)), batch_size, device, pad_id, amp_dtype)
    return split_result(data, preds, scores)


def write_scores(result: SplitResult, output_dir: Path, epoch: int | str) -> Path:
    """``{dataset}_scores_{epoch}.json`` (``epoch``: the evaluation's tag, ``updates_N`` inside an epoch): metrics,
    predictions, uids and scores, in MT-DNN's layout (one flat list of scores: data_utils/score_file.py)."""
    return write_score_file(result, Path(output_dir) / f"{result.dataset}_scores_{epoch}.json", epoch)


def write_score_file(result: SplitResult, path: Path, tag=None, metrics: Optional[dict] = None) -> Path:
    """The score file at ``path`` (``metrics`` replaces the result's); with a ``tag``, the task's own prediction
    format too, next to it."""
    path = Path(path)
    payload = {"metrics": result.metrics if metrics is None else metrics, "predictions": result.predictions,
               "uids": result.uids, "scores": flat_scores(result.scores)}
    with atomic_write(path) as handle:
        jsonsafe.dump(payload, handle)
    if result.official is not None and tag is not None:
        write_official(result, path.parent / f"{result.dataset}_predictions_{tag}")
    return path


def write_official(result: SplitResult, stem: Path) -> Path:
    """The task's own prediction format (SQuAD JSON, CoNLL columns) at ``stem`` plus its suffix."""
    suffix, text = result.official
    path = stem.with_name(stem.name + suffix)
    with atomic_write(path) as handle:
        handle.write(text)
    return path


def write_submission(result: SplitResult, task_def, path: Path) -> Path:
    """GLUE submission format: header ``index<TAB>prediction``, label names (or floats for regression);
    Span / SequenceLabeling tasks write their own format instead (the suffix of ``path`` follows it)."""
    if result.official is not None:
        return write_official(result, Path(path).with_suffix(""))
    with atomic_write(path) as handle:
        handle.write("index\tprediction\n")
        for uid, pred in zip(result.uids, result.predictions):
            value = f"{float(pred):.6g}" if task_def.is_regression else task_def.label_name(int(pred))
            handle.write(f"{uid}\t{value}\n")
    return path
