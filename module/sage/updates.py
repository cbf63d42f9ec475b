"""The SAGE update math, as plain functions over tensors (no optimizer bookkeeping).

Two implementations of the same formulas live here, with the same keyword arguments:
- ``single_*``: one parameter at a time, the readable reference (and, under ``torch.compile``, the fused path
  for half precision on CPU);
- ``multi_*``: the same op sequence with ``torch._foreach_*`` over lists of same-device/dtype tensors that are
  all at the same step (so every scalar is one number for the whole list).

Scalars that change every step (``lr``, bias corrections) may be Python floats or 0-d tensors, so that the
single-tensor functions compile once and never re-specialise on the learning rate. Everything else is a float,
bool or string. The exact formulas are stated in ``docs/sage_update_rule.md``; notation below:
I = |θ⊙g| (sensitivity), Ī its EMA, Î = Ī·c (c = bias correction or 1), U = |I − Î|.
"""
from __future__ import annotations

from typing import Union

import torch
from torch import Tensor

Scalar = Union[float, Tensor]

FORMULAS = ("reference", "paper", "ablation1", "ablation2", "ablation3", "ablation4", "ablation5")

#: Parameter dtypes whose optimizer state is kept, and whose update is computed, in float32.
HALF_PRECISION = (torch.float16, torch.bfloat16)


def state_dtype(param_dtype: torch.dtype) -> torch.dtype:
    """The dtype of a parameter's optimizer state: float32 for half precision, else the parameter's own.

    Why: in float16 (1−β2)·g² underflows to zero for gradients below ~1e-2, so steps grow by up to 1/ε; in
    bfloat16 an EMA with β ≥ 0.996 rounds back to its old value and stops moving. Every implementation (for-loop,
    foreach, fused) then computes the update in float32 from the half-precision θ and g, as a fused kernel does,
    and rounds θ once.
    """
    return torch.float32 if param_dtype in HALF_PRECISION else param_dtype


# ----------------------------------------------------------------------------------------------------------
# The modulating term
# ----------------------------------------------------------------------------------------------------------
def single_sage_factor(ipt: Tensor, ipt_avg: Tensor, correction: Scalar, formula: str, eps: float) -> Tensor:
    """Elementwise modulating term; consumes ``ipt`` (its buffer holds the result).

    reference: U/(Î+ε²) (authors' code: no ε in the numerator); paper: (U+ε)/(Î+ε); ablation1..5 are the
    paper's Table 12 variants (Î+ε)(U+ε), (Î+ε)/(U+ε), Î+ε, 1/(Î+ε), U+ε.
    """
    ihat = ipt_avg * correction
    u = ipt.sub_(ihat).abs_()
    if formula == "reference":
        return u.div_(ihat.add_(eps * eps))
    if formula == "paper":
        return u.add_(eps).div_(ihat.add_(eps))
    if formula == "ablation1":
        return u.add_(eps).mul_(ihat.add_(eps))
    if formula == "ablation2":
        return ihat.add_(eps).div_(u.add_(eps))
    if formula == "ablation3":
        return ihat.add_(eps)
    if formula == "ablation4":
        return ihat.add_(eps).reciprocal_()
    if formula == "ablation5":
        return u.add_(eps)
    raise ValueError(f"unknown SAGE formula {formula!r}; expected one of {FORMULAS}")


def multi_sage_factor(ipt: list[Tensor], ipt_avg: list[Tensor], correction: float, formula: str,
                      eps: float) -> list[Tensor]:
    """List version of :func:`single_sage_factor`; consumes the ``ipt`` buffers."""
    ihat = torch._foreach_mul(ipt_avg, correction)
    torch._foreach_sub_(ipt, ihat)
    u = ipt
    torch._foreach_abs_(u)
    if formula == "reference":
        torch._foreach_add_(ihat, eps * eps)
        torch._foreach_div_(u, ihat)
        return u
    torch._foreach_add_(ihat, eps)
    if formula in ("paper", "ablation1", "ablation2", "ablation5"):
        torch._foreach_add_(u, eps)
    if formula == "paper":
        torch._foreach_div_(u, ihat)
        return u
    if formula == "ablation1":
        torch._foreach_mul_(u, ihat)
        return u
    if formula == "ablation2":
        torch._foreach_div_(ihat, u)
        return ihat
    if formula == "ablation3":
        return ihat
    if formula == "ablation4":
        torch._foreach_reciprocal_(ihat)
        return ihat
    if formula == "ablation5":
        return u
    raise ValueError(f"unknown SAGE formula {formula!r}; expected one of {FORMULAS}")


def single_sensitivity_ema(p: Tensor, g: Tensor, ipt_avg: Tensor, beta3: float) -> Tensor:
    """I = |θ⊙g| with θ before this step's update; Ī ← β3·Ī + (1−β3)·I (EMA before U, as the authors do)."""
    ipt = (p * g).abs_()
    ipt_avg.mul_(beta3).add_(ipt, alpha=1 - beta3)
    return ipt


def multi_sensitivity_ema(p: list[Tensor], g: list[Tensor], ipt_avg: list[Tensor], beta3: float) -> list[Tensor]:
    ipt = torch._foreach_mul(p, g)
    torch._foreach_abs_(ipt)
    torch._foreach_mul_(ipt_avg, beta3)
    torch._foreach_add_(ipt_avg, ipt, alpha=1 - beta3)
    return ipt


# ----------------------------------------------------------------------------------------------------------
# Adamax (the authors' Adamax and Adamax-SAGE): no bias correction of the moments, ε used twice
# ----------------------------------------------------------------------------------------------------------
def single_adamax(p: Tensor, g: Tensor, exp_avg: Tensor, exp_inf: Tensor, ipt_avg: Tensor | None, *,
                  lr: Scalar, ipt_correction: Scalar, beta1: float, beta2: float, beta3: float, eps: float,
                  weight_decay: float, formula: str, sage: bool) -> None:
    """u = max(β2·u, |g|+ε); step = m/(u+ε) + wd·θ (decay inside the SAGE scaling); θ −= lr·s·step."""
    exp_avg.mul_(beta1).add_(g, alpha=1 - beta1)
    torch.maximum(exp_inf.mul_(beta2), g.abs().add_(eps), out=exp_inf)
    update = exp_avg / exp_inf.add(eps)
    if weight_decay != 0:
        update.add_(p, alpha=weight_decay)
    if sage:
        ipt = single_sensitivity_ema(p, g, ipt_avg, beta3)
        update.mul_(single_sage_factor(ipt, ipt_avg, ipt_correction, formula, eps))
    p.sub_(update.mul_(lr))


def multi_adamax(p: list[Tensor], g: list[Tensor], exp_avg: list[Tensor], exp_inf: list[Tensor],
                 ipt_avg: list[Tensor] | None, *, lr: float, ipt_correction: float, beta1: float,
                 beta2: float, beta3: float, eps: float, weight_decay: float, formula: str, sage: bool) -> None:
    torch._foreach_mul_(exp_avg, beta1)
    torch._foreach_add_(exp_avg, g, alpha=1 - beta1)
    torch._foreach_mul_(exp_inf, beta2)
    abs_g = torch._foreach_abs(g)
    torch._foreach_add_(abs_g, eps)
    torch._foreach_maximum_(exp_inf, abs_g)
    del abs_g
    denom = torch._foreach_add(exp_inf, eps)
    update = torch._foreach_div(exp_avg, denom)
    del denom
    if weight_decay != 0:
        torch._foreach_add_(update, p, alpha=weight_decay)
    if sage:
        ipt = multi_sensitivity_ema(p, g, ipt_avg, beta3)
        torch._foreach_mul_(update, multi_sage_factor(ipt, ipt_avg, ipt_correction, formula, eps))
    torch._foreach_mul_(update, lr)
    torch._foreach_sub_(p, update)


# ----------------------------------------------------------------------------------------------------------
# AdamW (the authors' AdamW / AdamW-SAGE): decoupled decay after the update, with the base learning rate
# ----------------------------------------------------------------------------------------------------------
def single_adamw(p: Tensor, g: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, ipt_avg: Tensor | None, *,
                 lr: Scalar, decay_lr: Scalar, step_correction: Scalar, ipt_correction: Scalar, beta1: float,
                 beta2: float, beta3: float, eps: float, weight_decay: float, formula: str, sage: bool) -> None:
    """θ −= lr·bc·s·m/(√v+ε), bc = √(1−β2^t)/(1−β1^t) (or 1); then θ −= decay_lr·wd·θ."""
    exp_avg.mul_(beta1).add_(g, alpha=1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    update = exp_avg / exp_avg_sq.sqrt().add_(eps)
    if sage:
        ipt = single_sensitivity_ema(p, g, ipt_avg, beta3)
        update.mul_(single_sage_factor(ipt, ipt_avg, ipt_correction, formula, eps))
    p.sub_(update.mul_(lr * step_correction))
    if weight_decay != 0:
        p.sub_(p * (decay_lr * weight_decay))


def multi_adamw(p: list[Tensor], g: list[Tensor], exp_avg: list[Tensor], exp_avg_sq: list[Tensor],
                ipt_avg: list[Tensor] | None, *, lr: float, decay_lr: float, step_correction: float,
                ipt_correction: float, beta1: float, beta2: float, beta3: float, eps: float,
                weight_decay: float, formula: str, sage: bool) -> None:
    torch._foreach_mul_(exp_avg, beta1)
    torch._foreach_add_(exp_avg, g, alpha=1 - beta1)
    torch._foreach_mul_(exp_avg_sq, beta2)
    torch._foreach_addcmul_(exp_avg_sq, g, g, value=1 - beta2)
    denom = torch._foreach_sqrt(exp_avg_sq)
    torch._foreach_add_(denom, eps)
    update = torch._foreach_div(exp_avg, denom)
    del denom
    if sage:
        ipt = multi_sensitivity_ema(p, g, ipt_avg, beta3)
        torch._foreach_mul_(update, multi_sage_factor(ipt, ipt_avg, ipt_correction, formula, eps))
    torch._foreach_mul_(update, lr * step_correction)
    torch._foreach_sub_(p, update)
    if weight_decay != 0:
        decay = torch._foreach_mul(p, decay_lr * weight_decay)
        torch._foreach_sub_(p, decay)


# ----------------------------------------------------------------------------------------------------------
# Adam (paper Algorithm 2): bias-corrected moments, L2 weight decay folded into the gradient (torch.optim.Adam)
# ----------------------------------------------------------------------------------------------------------
def single_adam(p: Tensor, g: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, ipt_avg: Tensor | None, *,
                lr: Scalar, bias_correction1: Scalar, bias_correction2_sqrt: Scalar, ipt_correction: Scalar,
                beta1: float, beta2: float, beta3: float, eps: float, weight_decay: float, formula: str,
                sage: bool) -> None:
    """θ −= lr·s·m̂/(√v̂+ε); the sensitivity uses the loss gradient, the moments see g + wd·θ."""
    d = g.add(p, alpha=weight_decay) if weight_decay != 0 else g
    exp_avg.mul_(beta1).add_(d, alpha=1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(d, d, value=1 - beta2)
    update = (exp_avg / bias_correction1).div_(exp_avg_sq.sqrt().div_(bias_correction2_sqrt).add_(eps))
    if sage:
        ipt = single_sensitivity_ema(p, g, ipt_avg, beta3)
        update.mul_(single_sage_factor(ipt, ipt_avg, ipt_correction, formula, eps))
    p.sub_(update.mul_(lr))


def multi_adam(p: list[Tensor], g: list[Tensor], exp_avg: list[Tensor], exp_avg_sq: list[Tensor],
               ipt_avg: list[Tensor] | None, *, lr: float, bias_correction1: float,
               bias_correction2_sqrt: float, ipt_correction: float, beta1: float, beta2: float,
               beta3: float, eps: float, weight_decay: float, formula: str, sage: bool) -> None:
    d = torch._foreach_add(g, p, alpha=weight_decay) if weight_decay != 0 else g
    torch._foreach_mul_(exp_avg, beta1)
    torch._foreach_add_(exp_avg, d, alpha=1 - beta1)
    torch._foreach_mul_(exp_avg_sq, beta2)
    torch._foreach_addcmul_(exp_avg_sq, d, d, value=1 - beta2)
    del d
    update = torch._foreach_div(exp_avg, bias_correction1)
    denom = torch._foreach_sqrt(exp_avg_sq)
    torch._foreach_div_(denom, bias_correction2_sqrt)
    torch._foreach_add_(denom, eps)
    torch._foreach_div_(update, denom)
    del denom
    if sage:
        ipt = multi_sensitivity_ema(p, g, ipt_avg, beta3)
        torch._foreach_mul_(update, multi_sage_factor(ipt, ipt_avg, ipt_correction, formula, eps))
    torch._foreach_mul_(update, lr)
    torch._foreach_sub_(p, update)


# ----------------------------------------------------------------------------------------------------------
# SGD (paper Algorithm 1) with momentum/dampening/Nesterov as in torch.optim.SGD
# ----------------------------------------------------------------------------------------------------------
def single_sgd(p: Tensor, g: Tensor, momentum_buffer: Tensor | None, ipt_avg: Tensor | None, *, lr: Scalar,
               first_step: bool, ipt_correction: Scalar, momentum: float, dampening: float, nesterov: bool,
               beta3: float, eps: float, weight_decay: float, formula: str, sage: bool) -> None:
    """θ −= lr·s·d with d the (Nesterov) momentum direction of g + wd·θ; the first step's buffer is d itself."""
    d = g.add(p, alpha=weight_decay) if weight_decay != 0 else g.clone()
    if momentum != 0:
        if first_step:
            momentum_buffer.copy_(d)
        else:
            momentum_buffer.mul_(momentum).add_(d, alpha=1 - dampening)
        d = d.add_(momentum_buffer, alpha=momentum) if nesterov else momentum_buffer.clone()
    if sage:
        ipt = single_sensitivity_ema(p, g, ipt_avg, beta3)
        d.mul_(single_sage_factor(ipt, ipt_avg, ipt_correction, formula, eps))
    p.sub_(d.mul_(lr))


def multi_sgd(p: list[Tensor], g: list[Tensor], momentum_buffers: list[Tensor] | None,
              ipt_avg: list[Tensor] | None, *, lr: float, first_step: bool, ipt_correction: float,
              momentum: float, dampening: float, nesterov: bool, beta3: float, eps: float, weight_decay: float,
              formula: str, sage: bool) -> None:
    d = torch._foreach_add(g, p, alpha=weight_decay) if weight_decay != 0 else torch._foreach_mul(g, 1.0)
    if momentum != 0:
        if first_step:
            torch._foreach_copy_(momentum_buffers, d)
        else:
            torch._foreach_mul_(momentum_buffers, momentum)
            torch._foreach_add_(momentum_buffers, d, alpha=1 - dampening)
        if nesterov:
            torch._foreach_add_(d, momentum_buffers, alpha=momentum)
        else:
            d = torch._foreach_mul(momentum_buffers, 1.0)
    if sage:
        ipt = multi_sensitivity_ema(p, g, ipt_avg, beta3)
        torch._foreach_mul_(d, multi_sage_factor(ipt, ipt_avg, ipt_correction, formula, eps))
    torch._foreach_mul_(d, lr)
    torch._foreach_sub_(p, d)
