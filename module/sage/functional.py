"""Functional SAGE optimizers, one entry per algorithm, in the shape of ``torch/optim/adam.py``.

``sage_adamax``, ``sage_adamw``, ``sage_adam`` and ``sage_sgd`` take the parameters, gradients and state as
tensor lists plus plain hyperparameters, and update them in place. :func:`_update` runs the implementation that
:func:`module.sage.dispatch.select` picks from the ``foreach``/``fused`` flags, as torch does:

- single-tensor (``foreach=False``; torch's default on CPU): :mod:`module.sage.updates`' ``single_*``, the readable
  reference;
- multi-tensor (``foreach=True``; torch's default on CUDA): ``updates.multi_*`` over same-device/dtype lists;
- fused (``fused=True``): :mod:`module.sage.dispatch` (a Triton multi-tensor kernel on CUDA, a C kernel on CPU,
  ``torch.compile`` for what neither takes; ``fused_backend`` names or gives another), with no parameter-sized
  temporaries.

AMP: ``grad_scale``/``found_inf`` follow torch's fused-optimizer protocol (``GradScaler`` sets them on the
optimizer): gradients are unscaled inside the update, so the sensitivity sees the unscaled gradient, and a step
with ``found_inf`` set leaves parameters, state and step counts untouched.

Half precision (float16/bfloat16 parameters): the state is float32 (:func:`module.sage.updates.state_dtype`) and
every implementation computes the update in float32 from θ and g, rounding θ once, as the fused kernel does.
Step counts are CPU tensors, read on the host once per tensor and step (no device sync).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch
from torch import Tensor

from module.sage import dispatch
from module.sage.algorithms import ALGORITHMS, Algorithm, Columns, check_half_state, multi_step, single_step
from module.sage.dispatch import buckets, row
from module.sage.updates import HALF_PRECISION

__all__ = ["sage_adamax", "sage_adamw", "sage_adam", "sage_sgd", "ALGORITHMS", "Algorithm", "single_step",
           "multi_step"]


# ----------------------------------------------------------------------------------------------------------
# The entries, one per algorithm
# ----------------------------------------------------------------------------------------------------------
def sage_adamax(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_infs: list[Tensor],
                exp_avg_ipts: Optional[list[Tensor]], state_steps: list[Tensor], *, foreach: Optional[bool] = None,
                fused: Optional[bool] = None, grad_scale: Optional[Tensor] = None,
                found_inf: Optional[Tensor] = None, lr: float, beta1: float, beta2: float, beta3: float,
                eps: float, weight_decay: float, formula: str, maximize: bool = False,
                fused_backend: Union[str, dispatch.Backend, None] = None) -> None:
    """Adamax(-SAGE), the authors' form: no moment bias correction; the authors' ``formula='reference'`` uses
    Ī uncorrected, the others Î = Ī/(1−β3^t). SAGE is on when ``exp_avg_ipts`` is given."""
    def scalars(step: float) -> dict:
        return dict(lr=lr, ipt_correction=1.0 if formula == "reference" else 1.0 / (1.0 - beta3 ** step))

    hyper = dict(beta1=beta1, beta2=beta2, beta3=beta3, eps=eps, weight_decay=weight_decay, formula=formula,
                 sage=exp_avg_ipts is not None)
    _update(ALGORITHMS["adamax"], params, grads, [exp_avgs, exp_infs], exp_avg_ipts, state_steps, scalars, hyper,
            foreach=foreach, fused=fused, grad_scale=grad_scale, found_inf=found_inf, maximize=maximize,
            fused_backend=fused_backend)


def sage_adamw(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
               exp_avg_ipts: Optional[list[Tensor]], state_steps: list[Tensor], *, foreach: Optional[bool] = None,
               fused: Optional[bool] = None, grad_scale: Optional[Tensor] = None,
               found_inf: Optional[Tensor] = None, lr: float, decay_lr: float, beta1: float, beta2: float,
               beta3: float, eps: float, weight_decay: float, formula: str, correct_bias: bool,
               maximize: bool = False, fused_backend: Union[str, dispatch.Backend, None] = None) -> None:
    """AdamW(-SAGE), the authors' form: step size lr·√(1−β2^t)/(1−β1^t) and Î = Ī/(1−β3^t) when
    ``correct_bias``; decoupled decay with ``decay_lr`` after the update."""
    def scalars(step: float) -> dict:
        if not correct_bias:
            return dict(lr=lr, decay_lr=decay_lr, step_correction=1.0, ipt_correction=1.0)
        return dict(lr=lr, decay_lr=decay_lr, step_correction=math.sqrt(1.0 - beta2 ** step) / (1.0 - beta1 ** step),
                    ipt_correction=1.0 / (1.0 - beta3 ** step))

    hyper = dict(beta1=beta1, beta2=beta2, beta3=beta3, eps=eps, weight_decay=weight_decay, formula=formula,
                 sage=exp_avg_ipts is not None)
    _update(ALGORITHMS["adamw"], params, grads, [exp_avgs, exp_avg_sqs], exp_avg_ipts, state_steps, scalars,
            hyper, foreach=foreach, fused=fused, grad_scale=grad_scale, found_inf=found_inf, maximize=maximize,
            fused_backend=fused_backend)


def sage_adam(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
              exp_avg_ipts: Optional[list[Tensor]], state_steps: list[Tensor], *, foreach: Optional[bool] = None,
              fused: Optional[bool] = None, grad_scale: Optional[Tensor] = None, found_inf: Optional[Tensor] = None,
              lr: float, beta1: float, beta2: float, beta3: float, eps: float, weight_decay: float, formula: str,
              maximize: bool = False, fused_backend: Union[str, dispatch.Backend, None] = None) -> None:
    """Adam(-SAGE), the paper's Algorithm 2: bias-corrected moments and Î; L2 decay folded into the moments."""
    def scalars(step: float) -> dict:
        return dict(lr=lr, bias_correction1=1.0 - beta1 ** step, bias_correction2_sqrt=math.sqrt(1.0 - beta2 ** step),
                    ipt_correction=1.0 / (1.0 - beta3 ** step))

    hyper = dict(beta1=beta1, beta2=beta2, beta3=beta3, eps=eps, weight_decay=weight_decay, formula=formula,
                 sage=exp_avg_ipts is not None)
    _update(ALGORITHMS["adam"], params, grads, [exp_avgs, exp_avg_sqs], exp_avg_ipts, state_steps, scalars, hyper,
            foreach=foreach, fused=fused, grad_scale=grad_scale, found_inf=found_inf, maximize=maximize,
            fused_backend=fused_backend)


def sage_sgd(params: list[Tensor], grads: list[Tensor], momentum_buffers: Optional[list[Tensor]],
             exp_avg_ipts: Optional[list[Tensor]], state_steps: list[Tensor], *, foreach: Optional[bool] = None,
             fused: Optional[bool] = None, grad_scale: Optional[Tensor] = None, found_inf: Optional[Tensor] = None,
             lr: float, momentum: float, dampening: float, nesterov: bool, beta3: float, eps: float,
             weight_decay: float, formula: str, maximize: bool = False,
             fused_backend: Union[str, dispatch.Backend, None] = None) -> None:
    """SGD(-SAGE), the paper's Algorithm 1 (uncorrected Ī) with torch.optim.SGD's momentum options;
    ``momentum_buffers`` is None without momentum."""
    def scalars(step: float) -> dict:
        return dict(lr=lr, first_step=step == 1.0, ipt_correction=1.0)

    hyper = dict(momentum=momentum, dampening=dampening, nesterov=nesterov, beta3=beta3, eps=eps,
                 weight_decay=weight_decay, formula=formula, sage=exp_avg_ipts is not None)
    _update(ALGORITHMS["sgd"], params, grads, [momentum_buffers], exp_avg_ipts, state_steps, scalars, hyper,
            foreach=foreach, fused=fused, grad_scale=grad_scale, found_inf=found_inf, maximize=maximize,
            fused_backend=fused_backend)


# ----------------------------------------------------------------------------------------------------------
# One step: the implementation dispatch.select picks
# ----------------------------------------------------------------------------------------------------------
def _update(algo: Algorithm, params: list[Tensor], grads: list[Tensor], buffers: Columns,
            ipt_avgs: Optional[list[Tensor]], state_steps: list[Tensor], scalars: Callable[[float], dict],
            hyper: dict, *, foreach: Optional[bool], fused: Optional[bool], grad_scale: Optional[Tensor],
            found_inf: Optional[Tensor], maximize: bool, fused_backend: Union[str, dispatch.Backend, None] = None
            ) -> None:
    requested = dispatch.requested_from_flags(foreach, fused)
    if not params:
        return
    if found_inf is not None and bool(found_inf.item()):
        return  # GradScaler found inf/NaN gradients: skip the step, leaving every tensor and step count as is
    impl = dispatch.select(requested, params[0].device, params=params, algorithm=algo.name).impl
    for i, p in enumerate(params):  # before anything moves, step counts included
        if p.dtype in HALF_PRECISION:
            check_half_state(p.dtype, (*row(buffers, i), None if ipt_avgs is None else ipt_avgs[i]))
    # One factor turns the raw gradient into the one the math sees: unscaled (AMP), negated (maximize).
    factor = -1.0 if maximize else 1.0
    if grad_scale is not None:
        factor *= float(grad_scale.double().reciprocal().float())  # GradScaler.unscale_'s inv_scale
    torch._foreach_add_(state_steps, 1.0)
    steps = [float(s) for s in state_steps]
    if impl == "fused":
        dispatch.fused_update(algo, params, grads, buffers, ipt_avgs, steps, scalars, hyper, factor, fused_backend)
    elif impl == "foreach":
        _multi_tensor(algo, params, grads, buffers, ipt_avgs, steps, scalars, hyper, factor)
    else:
        _single_tensor(algo, params, grads, buffers, ipt_avgs, steps, scalars, hyper, factor)


def _single_tensor(algo: Algorithm, params, grads, buffers: Columns, ipt_avgs, steps, scalars, hyper,
                   grad_factor: float) -> None:
    for i, (p, g) in enumerate(zip(params, grads)):
        single_step(algo, p, g, row(buffers, i), None if ipt_avgs is None else ipt_avgs[i], scalars(steps[i]),
                    hyper, grad_factor)


def _multi_tensor(algo: Algorithm, params, grads, buffers: Columns, ipt_avgs, steps, scalars, hyper,
                  grad_factor: float) -> None:
    for step, (p, g, *cols) in buckets(params, grads, buffers, ipt_avgs, steps):
        multi_step(algo, p, g, cols[:-1], cols[-1], scalars(step), hyper, grad_factor)
