"""Losses keyed by the task-def YAML ``loss`` names (MT-DNN's criterion names).

Each checks its input shapes first: a (B, 1) vs (B,) mismatch would otherwise broadcast silently in MSE, and a
wrong label layout would give a loss that trains nothing. Losses are computed in float32 so a bf16/fp16 forward
pass still gets a full-precision loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _check_class_targets(name: str, logits: torch.Tensor, labels: torch.Tensor, what: str) -> None:
    if logits.ndim != 2:
        raise ValueError(f"{name}: expects {what} of shape (B, {'C' if what == 'logits' else 'K'}), "
                         f"got {tuple(logits.shape)}")
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"{name}: expects labels of shape ({logits.shape[0]},), got {tuple(labels.shape)}")
    if labels.is_floating_point():
        raise ValueError(f"{name}: labels must be integer class indices, got {labels.dtype}")


class CeCriterion(nn.Module):
    """Cross-entropy over class logits (B, C) with integer labels (B,)."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check_class_targets("CeCriterion", logits, labels, "logits")
        return F.cross_entropy(logits.float(), labels)


class MseCriterion(nn.Module):
    """Mean squared error between float predictions (B,) and float targets (B,)."""

    def forward(self, preds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if preds.shape != labels.shape:
            raise ValueError(f"MseCriterion: predictions {tuple(preds.shape)} and labels {tuple(labels.shape)} "
                             "must have the same shape")
        return F.mse_loss(preds.float(), labels.float())


class RankCeCriterion(nn.Module):
    """Cross-entropy over the K hypothesis scores (B, K); the label is the index of the positive hypothesis."""

    def forward(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check_class_targets("RankCeCriterion", scores, labels, "scores")
        return F.cross_entropy(scores.float(), labels)


class SpanCeCriterion(nn.Module):
    """Mean of the start and end cross-entropies over a window's tokens: logits (B, L, 2), labels (B, 2) holding
    the start and end token positions."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if logits.ndim != 3 or logits.shape[-1] != 2:
            raise ValueError(f"SpanCeCriterion: expects logits of shape (B, L, 2), got {tuple(logits.shape)}")
        if labels.shape != (logits.shape[0], 2) or labels.is_floating_point():
            raise ValueError(f"SpanCeCriterion: expects integer labels of shape ({logits.shape[0]}, 2), got "
                             f"{tuple(labels.shape)} {labels.dtype}")
        logits = logits.float()
        return (F.cross_entropy(logits[..., 0], labels[:, 0]) + F.cross_entropy(logits[..., 1], labels[:, 1])) / 2


class SeqCeCriterion(nn.Module):
    """Cross-entropy over tag logits (B, L, C) at the tokens whose label (B, L) is not -1 (first sub-tokens)."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if logits.ndim != 3 or labels.shape != logits.shape[:2] or labels.is_floating_point():
            raise ValueError(f"SeqCeCriterion: expects logits (B, L, C) and integer labels (B, L), got "
                             f"{tuple(logits.shape)} and {tuple(labels.shape)} {labels.dtype}")
        # sum / count instead of the mean: no host sync to test for a batch with no tagged token (all words cut
        # off), which gives 0 / 1 = 0 here instead of the mean's 0 / 0
        total = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-1, reduction="sum")
        return total / (labels != -1).sum().clamp_min(1)


LOSSES: dict[str, type[nn.Module]] = {
    "CeCriterion": CeCriterion,
    "MseCriterion": MseCriterion,
    "RankCeCriterion": RankCeCriterion,
    "SpanCeCriterion": SpanCeCriterion,
    "SeqCeCriterion": SeqCeCriterion,
}


def build_loss(name: str) -> nn.Module:
    """A fresh criterion for a YAML ``loss`` name; unknown names fail with the known ones."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss '{name}'; known: {', '.join(LOSSES)}")
    return LOSSES[name]()
