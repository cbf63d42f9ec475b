"""Functional SAGE optimizers, one entry per algorithm, in the shape of ``torch/optim/adam.py``.

``sage_adamax``, ``sage_adamw``, ``sage_adam`` and ``sage_sgd`` take the parameters, gradients and state as
tensor lists plus plain hyperparameters, and update them in place. :func:`_update` is the one place that picks
the implementation, as torch does:

- single-tensor (``foreach=False``; torch's default on CPU): :mod:`module.sage_math`'s ``single_*``, the readable
  reference;
- multi-tensor (``foreach=True``; torch's default on CUDA): ``sage_math.multi_*`` over same-device/dtype lists;
- fused (``fused=True``): :mod:`module.sage_fused` (a Triton multi-tensor kernel on CUDA, a C kernel on CPU,
  ``torch.compile`` for what neither takes), with no parameter-sized temporaries.

AMP: ``grad_scale``/``found_inf`` follow torch's fused-optimizer protocol (``GradScaler`` sets them on the
optimizer): gradients are unscaled inside the update, so the sensitivity sees the unscaled gradient, and a step
with ``found_inf`` set leaves parameters, state and step counts untouched.

Half precision (float16/bfloat16 parameters): the state is float32 (:func:`module.sage_math.state_dtype`) and
every implementation computes the update in float32 from θ and g, rounding θ once, as the fused kernel does.
Step counts are CPU tensors, read on the host once per tensor and step (no device sync).
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, _default_to_fused_or_foreach

from module import sage_math
from module.sage_math import HALF_PRECISION

__all__ = ["sage_adamax", "sage_adamw", "sage_adam", "sage_sgd", "ALGORITHMS", "Algorithm",
           "implementation_kwargs", "IMPLEMENTATIONS", "TRITON_MIN_CAPABILITY", "single_step", "multi_step"]


class Algorithm(NamedTuple):
    """An update rule: its name (the fused kernels' key) and its single- and multi-tensor math."""
    name: str
    single: Callable[..., None]
    multi: Callable[..., None]


ALGORITHMS: dict[str, Algorithm] = {
    "adamax": Algorithm("adamax", sage_math.single_adamax, sage_math.multi_adamax),
    "adamw": Algorithm("adamw", sage_math.single_adamw, sage_math.multi_adamw),
    "adam": Algorithm("adam", sage_math.single_adam, sage_math.multi_adam),
    "sgd": Algorithm("sgd", sage_math.single_sgd, sage_math.multi_sgd),
}

#: Columns of optional tensors (an absent state list) are passed as None.
Columns = list[Optional[list[Tensor]]]


# ----------------------------------------------------------------------------------------------------------
# The entries, one per algorithm
# ----------------------------------------------------------------------------------------------------------
def sage_adamax(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_infs: list[Tensor],
                exp_avg_ipts: Optional[list[Tensor]], state_steps: list[Tensor], *, foreach: Optional[bool] = None,
                fused: Optional[bool] = None, grad_scale: Optional[Tensor] = None,
                found_inf: Optional[Tensor] = None, lr: float, beta1: float, beta2: float, beta3: float,
                eps: float, weight_decay: float, formula: str, maximize: bool = False) -> None:
    """Adamax(-SAGE), the authors' form: no moment bias correction; the authors' ``formula='reference'`` uses
    Ī uncorrected, the others Î = Ī/(1−β3^t). SAGE is on when ``exp_avg_ipts`` is given."""
    def scalars(step: float) -> dict:
        return dict(lr=lr, ipt_correction=1.0 if formula == "reference" else 1.0 / (1.0 - beta3 ** step))

    hyper = dict(beta1=beta1, beta2=beta2, beta3=beta3, eps=eps, weight_decay=weight_decay, formula=formula,
                 sage=exp_avg_ipts is not None)
    _update(ALGORITHMS["adamax"], params, grads, [exp_avgs, exp_infs], exp_avg_ipts, state_steps, scalars, hyper,
            foreach=foreach, fused=fused, grad_scale=grad_scale, found_inf=found_inf, maximize=maximize)


def sage_adamw(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
               exp_avg_ipts: Optional[list[Tensor]], state_steps: list[Tensor], *, foreach: Optional[bool] = None,
               fused: Optional[bool] = None, grad_scale: Optional[Tensor] = None,
               found_inf: Optional[Tensor] = None, lr: float, decay_lr: float, beta1: float, beta2: float,
               beta3: float, eps: float, weight_decay: float, formula: str, correct_bias: bool,
               maximize: bool = False) -> None:
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
            hyper, foreach=foreach, fused=fused, grad_scale=grad_scale, found_inf=found_inf, maximize=maximize)


def sage_adam(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
              exp_avg_ipts: Optional[list[Tensor]], state_steps: list[Tensor], *, foreach: Optional[bool] = None,
              fused: Optional[bool] = None, grad_scale: Optional[Tensor] = None, found_inf: Optional[Tensor] = None,
              lr: float, beta1: float, beta2: float, beta3: float, eps: float, weight_decay: float, formula: str,
              maximize: bool = False) -> None:
    """Adam(-SAGE), the paper's Algorithm 2: bias-corrected moments and Î; L2 decay folded into the moments."""
    def scalars(step: float) -> dict:
        return dict(lr=lr, bias_correction1=1.0 - beta1 ** step, bias_correction2_sqrt=math.sqrt(1.0 - beta2 ** step),
                    ipt_correction=1.0 / (1.0 - beta3 ** step))

    hyper = dict(beta1=beta1, beta2=beta2, beta3=beta3, eps=eps, weight_decay=weight_decay, formula=formula,
                 sage=exp_avg_ipts is not None)
    _update(ALGORITHMS["adam"], params, grads, [exp_avgs, exp_avg_sqs], exp_avg_ipts, state_steps, scalars, hyper,
            foreach=foreach, fused=fused, grad_scale=grad_scale, found_inf=found_inf, maximize=maximize)


def sage_sgd(params: list[Tensor], grads: list[Tensor], momentum_buffers: Optional[list[Tensor]],
             exp_avg_ipts: Optional[list[Tensor]], state_steps: list[Tensor], *, foreach: Optional[bool] = None,
             fused: Optional[bool] = None, grad_scale: Optional[Tensor] = None, found_inf: Optional[Tensor] = None,
             lr: float, momentum: float, dampening: float, nesterov: bool, beta3: float, eps: float,
             weight_decay: float, formula: str, maximize: bool = False) -> None:
    """SGD(-SAGE), the paper's Algorithm 1 (uncorrected Ī) with torch.optim.SGD's momentum options;
    ``momentum_buffers`` is None without momentum."""
    def scalars(step: float) -> dict:
        return dict(lr=lr, first_step=step == 1.0, ipt_correction=1.0)

    hyper = dict(momentum=momentum, dampening=dampening, nesterov=nesterov, beta3=beta3, eps=eps,
                 weight_decay=weight_decay, formula=formula, sage=exp_avg_ipts is not None)
    _update(ALGORITHMS["sgd"], params, grads, [momentum_buffers], exp_avg_ipts, state_steps, scalars, hyper,
            foreach=foreach, fused=fused, grad_scale=grad_scale, found_inf=found_inf, maximize=maximize)


# ----------------------------------------------------------------------------------------------------------
# The one place an implementation is picked
# ----------------------------------------------------------------------------------------------------------
def _update(algo: Algorithm, params: list[Tensor], grads: list[Tensor], buffers: Columns,
            ipt_avgs: Optional[list[Tensor]], state_steps: list[Tensor], scalars: Callable[[float], dict],
            hyper: dict, *, foreach: Optional[bool], fused: Optional[bool], grad_scale: Optional[Tensor],
            found_inf: Optional[Tensor], maximize: bool) -> None:
    if foreach and fused:
        raise ValueError("foreach and fused cannot both be True")
    if not params:
        return
    if found_inf is not None and bool(found_inf.item()):
        return  # GradScaler found inf/NaN gradients: skip the step, leaving every tensor and step count as is
    if foreach is None and fused is None:
        fused, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)
    for i, p in enumerate(params):  # before anything moves, step counts included
        if p.dtype in HALF_PRECISION:
            check_half_state(p.dtype, (*row(buffers, i), None if ipt_avgs is None else ipt_avgs[i]))
    # One factor turns the raw gradient into the one the math sees: unscaled (AMP), negated (maximize).
    factor = -1.0 if maximize else 1.0
    if grad_scale is not None:
        factor *= float(grad_scale.double().reciprocal().float())  # GradScaler.unscale_'s inv_scale
    torch._foreach_add_(state_steps, 1.0)
    steps = [float(s) for s in state_steps]
    if fused:
        from module import sage_fused
        sage_fused.fused_update(algo, params, grads, buffers, ipt_avgs, steps, scalars, hyper, factor)
    elif foreach:
        _multi_tensor(algo, params, grads, buffers, ipt_avgs, steps, scalars, hyper, factor)
    else:
        _single_tensor(algo, params, grads, buffers, ipt_avgs, steps, scalars, hyper, factor)


def row(columns: Columns, i: int) -> tuple:
    """The i-th tensor of every column (None for an absent column)."""
    return tuple(None if col is None else col[i] for col in columns)


def check_half_state(param_dtype: torch.dtype, states) -> None:
    """One line refusing half-precision state for half-precision parameters (it underflows; see state_dtype)."""
    for t in states:
        if t is not None and t.dtype != torch.float32:
            raise ValueError(f"SAGE optimizer state of {param_dtype} parameters must be float32 "
                             f"(module.sage_math.state_dtype); got a {t.dtype} state tensor")


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


def _single_tensor(algo: Algorithm, params, grads, buffers: Columns, ipt_avgs, steps, scalars, hyper,
                   grad_factor: float) -> None:
    for i, (p, g) in enumerate(zip(params, grads)):
        single_step(algo, p, g, row(buffers, i), None if ipt_avgs is None else ipt_avgs[i], scalars(steps[i]),
                    hyper, grad_factor)


def buckets(params: list[Tensor], grads: list[Tensor], buffers: Columns, ipt_avgs: Optional[list[Tensor]],
            steps: list[float]) -> list[tuple[float, Columns]]:
    """Same-device, same-dtype, same-step buckets as (step, [params, grads, *buffers, ipt_avgs]) columns."""
    n = len(params)
    columns = [params, grads, *buffers, ipt_avgs]
    padded = [[None] * n if col is None else col for col in columns]
    out = []
    for _, (_, idx) in Optimizer._group_tensors_by_device_and_dtype(padded, with_indices=True).items():
        by_step: dict[float, list[int]] = {}
        for i in idx:
            by_step.setdefault(steps[i], []).append(i)
        for step, picked in by_step.items():
            out.append((step, [None if col is None else [col[i] for i in picked] for col in columns]))
    return out


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


def _multi_tensor(algo: Algorithm, params, grads, buffers: Columns, ipt_avgs, steps, scalars, hyper,
                  grad_factor: float) -> None:
    for step, (p, g, *cols) in buckets(params, grads, buffers, ipt_avgs, steps):
        multi_step(algo, p, g, cols[:-1], cols[-1], scalars(step), hyper, grad_factor)


# ----------------------------------------------------------------------------------------------------------
# Choosing an implementation from a config string (trainer, benchmarks)
# ----------------------------------------------------------------------------------------------------------
IMPLEMENTATIONS = ("auto", "forloop", "foreach", "fused")
#: The oldest CUDA compute capability given the Triton kernel by ``auto``: Volta (V100). The kernel is
#: elementwise (no tensor-core instructions), the kind of kernel Triton still builds for sm_70/sm_75; every
#: variant checks itself on first use and falls back to foreach if it fails to build or disagrees.
TRITON_MIN_CAPABILITY = (7, 0)


def implementation_kwargs(impl: str, device: torch.device) -> dict:
    """``foreach``/``fused`` flags for a configured implementation.

    auto: fused on CPU (the C kernel) and on CUDA from compute capability 7.0 (V100, T4, A100, H100, ...) when
    Triton is importable (the Triton kernel, behind its self-check); foreach otherwise (pre-Volta GPUs, no
    Triton, other device types).
    """
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown optimizer implementation {impl!r}; expected one of {', '.join(IMPLEMENTATIONS)}")
    if impl == "auto":
        from module import sage_fused
        if device.type == "cpu":
            impl = "fused"
        else:
            capable = (device.type == "cuda"
                       and tuple(torch.cuda.get_device_capability(device)) >= TRITON_MIN_CAPABILITY)
            impl = "fused" if capable and sage_fused.triton_available() else "foreach"
    return {"forloop": dict(foreach=False, fused=None), "foreach": dict(foreach=True, fused=None),
            "fused": dict(foreach=None, fused=True)}[impl]
