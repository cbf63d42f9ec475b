"""One-shot unstructured pruning: zero the lowest-sensitivity weights, then score the model without retraining.

The ranking is global over all eligible tensors (embeddings excluded, see :func:`mt_dnn.blocks.prunable`),
and ties are broken by position so that the pruned set at fraction p is exactly ``round(p·N)`` weights and the
sets are nested as p grows.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from mt_dnn.blocks import is_embedding


def prune_order(sensitivity: dict[str, Tensor]) -> Tensor:
    """Indices into the concatenation of the flattened tensors (dict order), lowest sensitivity first."""
    flat = torch.cat([s.detach().flatten().float().cpu() for s in sensitivity.values()])
    return torch.argsort(flat, stable=True)


def pruned_count(fraction: float, total: int) -> int:
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"pruning fraction must be in [0, 1], got {fraction}")
    return int(round(fraction * total))


@torch.no_grad()
def apply_pruning(params: dict[str, Tensor], order: Tensor, count: int) -> None:
    """Zero (in place) the weights at the first ``count`` positions of ``order``."""
    for name in params:
        if is_embedding(name):
            raise ValueError(f"refusing to prune embedding parameter '{name}'")
    total = sum(p.numel() for p in params.values())
    if order.numel() != total:
        raise ValueError(f"pruning order covers {order.numel()} weights, the parameters have {total}")
    mask = torch.zeros(total, dtype=torch.bool)
    mask[order[:count]] = True
    offset = 0
    for p in params.values():
        n = p.numel()
        p.masked_fill_(mask[offset:offset + n].view_as(p).to(p.device), 0)
        offset += n


@torch.no_grad()
def pruning_curve(params: dict[str, Tensor], sensitivity: dict[str, Tensor], fractions: Sequence[float],
                  score: Callable[[], float]) -> list[tuple[float, float]]:
    """[(fraction pruned, score())] for each fraction, each pruned from the original weights, which are restored."""
    if list(params) != list(sensitivity):
        raise ValueError("params and sensitivity must name the same tensors in the same order")
    order = prune_order(sensitivity)
    total = order.numel()
    original = [p.detach().clone() for p in params.values()]
    curve = []
    try:
        for fraction in fractions:
            apply_pruning(params, order, pruned_count(fraction, total))
            curve.append((float(fraction), float(score())))
            torch._foreach_copy_(list(params.values()), original)
    finally:
        torch._foreach_copy_(list(params.values()), original)
    return curve
