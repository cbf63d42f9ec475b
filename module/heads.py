"""Task heads: dropout with the task's ``dropout_p``, then one linear layer over the pooled representation.

A registry keyed by ``TaskType`` builds the right head, so a new task needs only its YAML entry. Layer names
(``dropout``, ``proj``) stay out of the SAGE name patterns: heads are trained with the plain optimizer groups,
as in the authors' code.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from data_utils.task_def import TaskDef, TaskType


def _init_linear(layer: nn.Linear, init_std: float) -> nn.Linear:
    """Normal(0, init_std) weights, zero bias: the encoder's own init, so fresh heads start with small logits."""
    nn.init.normal_(layer.weight, mean=0.0, std=init_std)
    nn.init.zeros_(layer.bias)
    return layer


class ClassificationHead(nn.Module):
    """(..., H) -> (..., n_class) logits."""

    def __init__(self, hidden_size: int, n_class: int, dropout_p: float, init_std: float = 0.02):
        super().__init__()
        self.dropout = nn.Dropout(dropout_p)
        self.proj = _init_linear(nn.Linear(hidden_size, n_class), init_std)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.proj(self.dropout(pooled))


class ScoreHead(nn.Module):
    """(..., H) -> (...) one float per input: a regression value, or a ranking score per (premise, hypothesis)."""

    def __init__(self, hidden_size: int, dropout_p: float, init_std: float = 0.02):
        super().__init__()
        self.dropout = nn.Dropout(dropout_p)
        self.proj = _init_linear(nn.Linear(hidden_size, 1), init_std)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.proj(self.dropout(pooled)).squeeze(-1)


def _classification(task_def: TaskDef, hidden_size: int, init_std: float) -> nn.Module:
    if task_def.n_class < 2:
        raise ValueError(f"task {task_def.name}: a Classification head needs n_class >= 2, got {task_def.n_class}")
    return ClassificationHead(hidden_size, task_def.n_class, task_def.dropout_p, init_std)


def _score(task_def: TaskDef, hidden_size: int, init_std: float) -> nn.Module:
    return ScoreHead(hidden_size, task_def.dropout_p, init_std)


HeadBuilder = Callable[[TaskDef, int, float], nn.Module]

HEADS: dict[TaskType, HeadBuilder] = {
    TaskType.Classification: _classification,
    TaskType.Regression: _score,
    TaskType.Ranking: _score,
}


def build_head(task_def: TaskDef, hidden_size: int, init_std: float = 0.02) -> nn.Module:
    """The head for ``task_def.task_type``; a task type without a registered head fails with the known ones."""
    if task_def.task_type not in HEADS:
        known = ", ".join(t.name for t in HEADS)
        raise ValueError(f"task {task_def.name}: no head for task type {task_def.task_type!r}; known: {known}")
    if task_def.enable_san:
        raise ValueError(f"task {task_def.name}: enable_san (the SAN answer module) is not supported; "
                         "set enable_san: false")
    return HEADS[task_def.task_type](task_def, hidden_size, init_std)
