"""Per-parameter sensitivity I = |θ⊙∇L| of a trained model, averaged over the batches of a data split.

Each batch contributes |θ⊙g_b| with g_b the gradient of that batch's mean loss: the same quantity the SAGE
optimizer sees at every step, so the figure shows what the optimizer balanced. Dropout is off (eval mode) so
the measurement is deterministic.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import numpy as np
import torch
from torch import Tensor

from mt_dnn.blocks import layer_index, prunable

#: (parameter name, ndim) -> whether to measure it
Selector = Callable[[str, int], bool]


def select_params(model: torch.nn.Module, selector: Selector = prunable) -> dict[str, Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad and selector(n, p.ndim)}


def accumulate_sensitivity(model: torch.nn.Module, loss_fn: Callable[[object], Tensor], batches: Iterable,
                           params: dict[str, Tensor]) -> dict[str, Tensor]:
    """Mean over ``batches`` of |θ⊙∇_θ loss_fn(batch)| for every tensor in ``params`` (float32, on CPU/device).

    ``loss_fn(batch)`` runs the forward pass and returns the batch's scalar loss. Parameters without a gradient
    on a batch (another task's head) count as zero for that batch.
    """
    names, tensors = list(params), list(params.values())
    totals = [torch.zeros_like(p, dtype=torch.float32) for p in tensors]
    was_training = model.training
    model.eval()
    count = 0
    try:
        for batch in batches:
            model.zero_grad(set_to_none=True)
            loss_fn(batch).backward()
            with torch.no_grad():
                pairs = [(t, p, p.grad) for t, p in zip(totals, tensors) if p.grad is not None]
                if pairs:
                    acc, ps, gs = zip(*pairs)
                    ipt = torch._foreach_mul([p.float() for p in ps], [g.float() for g in gs])
                    torch._foreach_abs_(ipt)
                    torch._foreach_add_(list(acc), ipt)
            count += 1
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if count == 0:
        raise ValueError("accumulate_sensitivity: no batches given")
    torch._foreach_div_(totals, float(count))
    return dict(zip(names, totals))


def sample_per_layer(sensitivity: dict[str, Tensor], per_layer: int, seed: int = 0) -> dict[int, np.ndarray]:
    """A uniform random sample of ``per_layer`` values from each encoder layer's tensors (all, if fewer).

    Layers are compared on equal footing (every layer has the same number of points, as in the paper's figure);
    parameters outside the layers (pooler) are left out.
    """
    by_layer: dict[int, list[Tensor]] = {}
    for name, values in sensitivity.items():
        layer = layer_index(name)
        if layer is not None:
            by_layer.setdefault(layer, []).append(values.detach().flatten().float().cpu())
    gen = torch.Generator().manual_seed(seed)
    samples = {}
    for layer in sorted(by_layer):
        flat = torch.cat(by_layer[layer])
        if per_layer < flat.numel():
            flat = flat[torch.randperm(flat.numel(), generator=gen)[:per_layer]]
        samples[layer] = flat.numpy()
    return samples


@dataclass
class Summary:
    """Statistics of one model's sensitivities (all measured values, not the sample)."""
    count: int
    median: float
    mean: float
    std: float
    log10_std: float     # spread on the log scale the figure uses (zeros left out)
    frac_below_1e_8: float

    @classmethod
    def of(cls, sensitivity: dict[str, Tensor], only: Optional[Selector] = None) -> "Summary":
        flat = torch.cat([v.detach().flatten().double().cpu() for n, v in sensitivity.items()
                          if only is None or only(n, v.ndim)])
        positive = flat[flat > 0]
        return cls(count=flat.numel(), median=float(flat.median()), mean=float(flat.mean()),
                   std=float(flat.std()), log10_std=float(positive.log10().std()) if positive.numel() > 1 else 0.0,
                   frac_below_1e_8=float((flat < 1e-8).double().mean()))
