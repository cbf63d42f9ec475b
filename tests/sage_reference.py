"""An independent, deliberately plain re-implementation of ``docs/sage_update_rule.md`` for tests.

It does not import the project's optimizer code. One Python object per parameter, written line by line from the
spec (the authors' per-parameter loop, with its temporaries), so that a disagreement points at a real difference.

Deviation from the authors' code that the project documents: their schedule multiplier used each parameter's own
step counter; torch schedulers (and the project) use the global optimizer step. The two agree whenever every
parameter gets a gradient each step; with skipped steps the spec below uses the global step for the schedule and
the per-parameter step for bias corrections.
"""
from __future__ import annotations

import math

import torch


def warmup_linear(x, warmup):
    if x < warmup:
        return x / warmup
    return 1.0 - x


def linear_decay(x, warmup):
    if x < warmup:
        return x / warmup
    return max(0.0, (1.0 - x) / (1.0 - warmup))


def modulate(ipt, ipt_hat, formula, eps):
    """The modulating term for one tensor: reference U/(Î+ε²); paper (U+ε)/(Î+ε); Table 12 variants."""
    u = (ipt - ipt_hat).abs()
    if formula == "reference":
        return u / (ipt_hat + eps ** 2)
    table = {
        "paper": lambda: (u + eps) / (ipt_hat + eps),
        "ablation1": lambda: (ipt_hat + eps) * (u + eps),
        "ablation2": lambda: (ipt_hat + eps) / (u + eps),
        "ablation3": lambda: ipt_hat + eps,
        "ablation4": lambda: 1.0 / (ipt_hat + eps),
        "ablation5": lambda: u + eps,
    }
    return table[formula]()


class RefParam:
    """State of one parameter in the reference loop."""

    def __init__(self, p):
        self.step = 0
        self.m = torch.zeros_like(p)
        self.v = torch.zeros_like(p)
        self.ipt = torch.zeros_like(p)
        self.buf = None


class ReferenceOptimizer:
    """algo in {adamax, adamw, adam, sgd}; groups: list of (params, sage: bool, weight_decay)."""

    def __init__(self, algo, groups, lr, schedule, t_total, warmup, beta1=0.9, beta2=0.999, beta3=0.75,
                 eps=1e-6, formula="reference", momentum=0.0, nesterov=False):
        self.algo, self.groups, self.lr = algo, groups, lr
        self.schedule, self.t_total, self.warmup = schedule, t_total, warmup
        self.b1, self.b2, self.b3, self.eps, self.formula = beta1, beta2, beta3, eps, formula
        self.momentum, self.nesterov = momentum, nesterov
        self.state = {}
        self.global_step = 0  # optimizer steps taken so far

    def sched(self, offset):
        return self.schedule((self.global_step + offset) / self.t_total, self.warmup)

    def zero_grad(self, set_to_none=True):
        for params, _, _ in self.groups:
            for p in params:
                p.grad = None

    @torch.no_grad()
    def step(self):
        for params, sage, wd in self.groups:
            for p in params:
                if p.grad is None:
                    continue
                st = self.state.setdefault(p, RefParam(p))
                getattr(self, "_" + self.algo)(p, p.grad.clone(), st, sage, wd)
        self.global_step += 1

    # --- the authors' UnstructAwareAdamax / Adamax (docs/sage_update_rule.md, Adamax-SAGE steps 2-10) ---
    def _adamax(self, p, g, st, sage, wd):
        eps = self.eps
        st.m = self.b1 * st.m + (1 - self.b1) * g
        st.v = torch.maximum(self.b2 * st.v, g.abs() + eps)
        update = st.m / (st.v + eps)
        lr_t = self.lr * self.sched(0)  # the authors' step counter before increment
        update = update + wd * p
        if sage:
            ipt = (p * g).abs()
            st.ipt = self.b3 * st.ipt + (1 - self.b3) * ipt
            t = st.step + 1
            ipt_hat = st.ipt if self.formula == "reference" else st.ipt / (1 - self.b3 ** t)
            lr_t = lr_t * modulate(ipt, ipt_hat, self.formula, eps)
        p -= lr_t * update
        st.step += 1

    # --- the authors' UnstructAwareAdamW / BertAdam-style AdamW ---
    def _adamw(self, p, g, st, sage, wd):
        eps = self.eps
        st.step += 1
        st.m = self.b1 * st.m + (1 - self.b1) * g
        st.v = self.b2 * st.v + (1 - self.b2) * g * g
        denom = st.v.sqrt() + eps
        step_size = self.lr * self.sched(1)  # evaluated after the step counter moved
        if sage:
            ipt = (p * g).abs()
            st.ipt = self.b3 * st.ipt + (1 - self.b3) * ipt
            ipt_hat = st.ipt / (1 - self.b3 ** st.step)
            step_size = step_size * modulate(ipt, ipt_hat, self.formula, eps)
        step_size = step_size * math.sqrt(1 - self.b2 ** st.step) / (1 - self.b1 ** st.step)
        p -= st.m / denom * step_size
        p -= self.lr * wd * p  # decoupled decay with the base (unscheduled) lr

    # --- paper Algorithm 2 (Adam-SAGE); L2 decay into the moments as torch.optim.Adam ---
    def _adam(self, p, g, st, sage, wd):
        eps = self.eps
        st.step += 1
        t = st.step
        d = g + wd * p
        st.m = self.b1 * st.m + (1 - self.b1) * d
        st.v = self.b2 * st.v + (1 - self.b2) * d * d
        m_hat = st.m / (1 - self.b1 ** t)
        v_hat = st.v / (1 - self.b2 ** t)
        lr_t = self.lr * self.sched(0)
        factor = 1.0
        if sage:
            ipt = (p * g).abs()
            st.ipt = self.b3 * st.ipt + (1 - self.b3) * ipt
            factor = modulate(ipt, st.ipt / (1 - self.b3 ** t), self.formula, eps)
        p -= lr_t * factor * m_hat / (v_hat.sqrt() + eps)

    # --- paper Algorithm 1 (SGD-SAGE) with torch.optim.SGD momentum ---
    def _sgd(self, p, g, st, sage, wd):
        eps = self.eps
        st.step += 1
        d = g + wd * p
        if self.momentum:
            st.buf = d.clone() if st.buf is None else self.momentum * st.buf + d
            d = d + self.momentum * st.buf if self.nesterov else st.buf
        lr_t = self.lr * self.sched(0)
        factor = 1.0
        if sage:
            ipt = (p * g).abs()
            st.ipt = self.b3 * st.ipt + (1 - self.b3) * ipt
            factor = modulate(ipt, st.ipt, self.formula, eps)  # Algorithm 1: uncorrected Ī
        p -= lr_t * factor * d
