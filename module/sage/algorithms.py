"""The SAGE update rules as data: each algorithm's single- and multi-tensor math, and the half-precision
wrappers every implementation shares.

The functional entries, the fused dispatcher and the torch.compile backend import from here, so none of them
imports another to reach these; the math itself is :mod:`module.sage.updates` (stated in
``docs/sage_update_rule.md``).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

from module.sage import updates
from module.sage.updates import HALF_PRECISION

__all__ = ["Algorithm", "ALGORITHMS", "Columns", "check_half_state", "single_step", "multi_step"]


class Algorithm(NamedTuple):
    """An update rule: its name (the fused kernels' key) and its single- and multi-tensor math."""
    name: str
    single: Callable[..., None]
    multi: Callable[..., None]


ALGORITHMS: dict[str, Algorithm] = {
    "adamax": Algorithm("adamax", updates.single_adamax, updates.multi_adamax),
    "adamw": Algorithm("adamw", updates.single_adamw, updates.multi_adamw),
    "adam": Algorithm("adam", updates.single_adam, updates.multi_adam),
    "sgd": Algorithm("sgd", updates.single_sgd, updates.multi_sgd),
}

#: Columns of optional tensors (an absent state list) are passed as None.
Columns = list[Optional[list[Tensor]]]


def check_half_state(param_dtype: torch.dtype, states) -> None:
    """One line refusing half-precision state for half-precision parameters (it underflows; see state_dtype)."""
    for t in states:
        if t is not None and t.dtype != torch.float32:
            raise ValueError(f"SAGE optimizer state of {param_dtype} parameters must be float32 "
                             f"(module.sage.updates.state_dtype); got a {t.dtype} state tensor")


def single_step(algo: Algorithm, p: Tensor, g: Tensor, states: tuple, ipt_avg: Optional[Tensor], scalars: dict,
                hyper: dict, grad_factor: float = 1.0) -> None:
    """``algo.single`` on one tensor, the gradient times ``grad_factor``; half-precision θ and g go through
    float32 copies (state is float32), so θ is rounded once, as in the fused kernel."""
    wide = p.dtype in HALF_PRECISION
    work_p, work_g = (p.float(), g.float()) if wide else (p, g)
    if grad_factor != 1.0:
        work_g = work_g * grad_factor
    algo.single(work_p, work_g, *states, ipt_avg, **scalars, **hyper)
    if wide:
        p.copy_(work_p)


def multi_step(algo: Algorithm, p: list[Tensor], g: list[Tensor], states: Columns,
               ipt_avgs: Optional[list[Tensor]], scalars: dict, hyper: dict, grad_factor: float = 1.0) -> None:
    """``algo.multi`` on one same-device/dtype/step bucket, the gradients times ``grad_factor``; half-precision
    θ and g go through float32 copies (state is float32), so θ is rounded once, as in the fused kernel."""
    wide = p[0].dtype in HALF_PRECISION
    work_p, work_g = ([t.float() for t in p], [t.float() for t in g]) if wide else (p, g)
    if grad_factor != 1.0:
        work_g = torch._foreach_mul(work_g, grad_factor)
    algo.multi(work_p, work_g, *states, ipt_avgs, **scalars, **hyper)
    if wide:
        torch._foreach_copy_(p, work_p)
