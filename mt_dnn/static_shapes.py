"""Static batch shapes for ``--compile``: every micro-batch padded to one of a few lengths and a fixed row count.

A compiled graph (and a CUDA graph) is specialised to its input shapes. Dynamic padding would give one compile
per distinct length; here lengths go up to the next multiple of BUCKET (capped at the run's longest allowed
sequence) and a short last batch gets extra rows, so a run compiles at most len(lengths) × tasks graphs.
Extra rows are copies of the batch's first row (well-formed, so every activation stays finite); their outputs
are cut off before the loss (``real_rows``), which gives them loss weight 0 and leaves the gradients those of the
real rows alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from data_utils.task_def import TaskDef, TaskType

BUCKET = 32
INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
IGNORED_TAG = -1  # SequenceLabeling label of positions without a tag (batcher._tag_labels)


@dataclass(frozen=True)
class StaticShapes:
    lengths: tuple[int, ...]  # ascending sequence lengths a batch is padded to
    rows: int                 # examples per micro-batch every compiled call sees
    pad_id: int

    @classmethod
    def for_run(cls, max_len: int, rows: int, pad_id: int, bucket: int = BUCKET) -> "StaticShapes":
        """Multiples of ``bucket`` up to ``max_len`` (which is always the last length)."""
        lengths = sorted({min(k, max_len) for k in range(bucket, max_len + bucket, bucket)})
        return cls(tuple(lengths), rows, pad_id)

    def length_for(self, longest: int) -> int:
        for length in self.lengths:
            if length >= longest:
                return length
        raise ValueError(f"--compile: a sequence of {longest} tokens is longer than the longest bucket "
                         f"{self.lengths[-1]}")


def _fit_length(x: torch.Tensor, length: int, value: int) -> torch.Tensor:
    """Cut or right-pad the last dimension to ``length``."""
    have = x.shape[-1]
    if have >= length:
        return x[..., :length].contiguous()
    pad = torch.full((*x.shape[:-1], length - have), value, dtype=x.dtype)
    return torch.cat([x, pad], dim=-1)


def _fill_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    n = x.shape[0]
    if n >= rows:
        return x
    return torch.cat([x, x[:1].expand(rows - n, *x.shape[1:])], dim=0)


def pad_batch(batch: dict, shapes: StaticShapes, task_def: TaskDef) -> dict:
    """A collated batch at a static shape; labels keep their rows (the loss reads only the real ones)."""
    longest = int(batch["attention_mask"].sum(dim=-1).max())
    length = shapes.length_for(longest)
    out = dict(batch)
    for key, value in zip(INPUT_KEYS, (shapes.pad_id, 0, 0)):
        out[key] = _fill_rows(_fit_length(batch[key], length, value), shapes.rows)
    if task_def.task_type is TaskType.SequenceLabeling and "labels" in batch:
        out["labels"] = _fit_length(batch["labels"], length, IGNORED_TAG)
    return out


def real_rows(labels: Optional[torch.Tensor], outputs: torch.Tensor) -> torch.Tensor:
    """The outputs of the batch's real examples (one per label row); padding rows are dropped."""
    return outputs if labels is None else outputs[: labels.shape[0]]
