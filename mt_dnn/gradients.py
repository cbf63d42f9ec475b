"""Gradient clipping before the optimizer step, as the SAGE authors' training does: all gradients together to
``--global_grad_clipping``, then each parameter's on its own to ``--grad_clipping`` (docs/sage_update_rule.md,
Adamax-SAGE step 1).
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch


def clip(params: Iterable[torch.nn.Parameter], max_total_norm: float, max_norm_each: float,
         sharded: bool = False) -> Optional[torch.Tensor]:
    """Clip in place (each bound off at 0); returns the total norm before clipping, None when the global clip is
    off. One multi-tensor norm and scale (FSDP: DTensor shards, torch's choice of kernels)."""
    params = list(params)
    norm = None
    if max_total_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, max_total_norm, foreach=None if sharded else True)
    if max_norm_each > 0:
        clip_each_parameter(params, max_norm_each)
    return norm


def clip_each_parameter(params, max_norm: float) -> None:
    """The authors' ``max_grad_norm``: each parameter's gradient scaled down to norm ``max_norm`` on its own
    (after the global clip; docs/sage_update_rule.md, Adamax-SAGE step 1). Non-finite norms are left to the
    GradScaler.

    Same coefficient as ``clip_grad_norm_([p], max_norm)`` per parameter, max_norm / (norm + 1e-6) capped at 1,
    computed with multi-tensor kernels instead of a few small launches per parameter."""
    params = [p for p in params if p.grad is not None]
    grads = [p.grad for p in params]
    if any(type(g) is not torch.Tensor for g in grads):  # FSDP2 DTensor shards: each norm needs a collective
        for p in params:
            torch.nn.utils.clip_grad_norm_([p], max_norm)
        return
    for group in _by_device_and_dtype(grads):
        norms = torch.stack(torch._foreach_norm(group)).float()
        coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        torch._foreach_mul_(group, [c.to(g.dtype) for c, g in zip(coef.unbind(), group)])


def _by_device_and_dtype(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    groups: dict = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    return list(groups.values())


def all_finite(norm: Optional[torch.Tensor], params: Iterable[torch.nn.Parameter]) -> bool:
    """Whether the step's gradients are finite, from their total norm (computed here when clipping did not):
    fp16 steps whose gradients overflowed are skipped by the GradScaler, and the sensitivity log leaves them out."""
    if norm is None:
        grads = [p.grad for p in params if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
    return bool(torch.isfinite(norm))
