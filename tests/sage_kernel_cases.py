"""Shared by the tests of the hand-written fused kernels (Triton: test_sage_triton.py, C: test_sage_cpu.py).

Both kernels are checked the same way against module.sage.updates' single-tensor math: the same optimizer cases,
the same model (parameters of odd sizes in two groups, SAGE with decay and plain without), the same schedule and
gradients; each test file supplies the sizes and the context that routes ``fused=True`` to its kernel.
"""
from __future__ import annotations

import contextlib
from typing import Callable, ContextManager
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from module import bert_optim

HYPER = dict(beta1=0.9, beta2=0.999, beta3=0.75, eps=1e-6, weight_decay=0.0, formula="paper", sage=True)
SCALARS = dict(lr=1e-3, ipt_correction=1.0)

CASES = [
    (bert_optim.AdamaxSAGE, dict(formula="reference")),
    (bert_optim.AdamaxSAGE, dict(formula="paper")),
    (bert_optim.AdamWSAGE, dict(formula="reference")),
    (bert_optim.AdamWSAGE, dict(formula="reference", correct_bias=False, decay_lr="scheduled")),
    (bert_optim.AdamSAGE, dict(formula="paper")),
    (bert_optim.AdamSAGE, dict(formula="ablation2")),
    (bert_optim.SGDSAGE, dict(formula="paper")),
    (bert_optim.SGDSAGE, dict(formula="paper", momentum=0.9, dampening=0.1)),
    (bert_optim.SGDSAGE, dict(formula="ablation4", momentum=0.9, nesterov=True)),
]


def case_id(x) -> str:
    """pytest id of a CASES entry's class or keyword arguments."""
    return x.__name__ if isinstance(x, type) else "-".join(f"{k}={v}" for k, v in x.items())


def make_params(sizes, dtype, seed=0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=dtype) for s in sizes]


def groups(ps: list[torch.Tensor]) -> list[dict]:
    """Two groups, as sage_param_groups builds them: SAGE on (with decay) and off (without)."""
    return [{"params": ps[:3], "sage": True, "weight_decay": 0.01},
            {"params": ps[3:], "sage": False, "weight_decay": 0.0}]


class Counting:
    """A fused backend that records the algorithm of every ``fused_step`` call (self-check probes included) in
    ``calls`` and otherwise is ``backend``."""

    def __init__(self, backend, calls: list):
        self._backend, self._calls = backend, calls

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def fused_step(self, *args, **kwargs):
        self._calls.append(args[0])
        return self._backend.fused_step(*args, **kwargs)


def counting(fn: Callable, calls: list) -> Callable:
    """``fn`` recording its first argument on every call."""
    def wrapped(*args, **kwargs):
        calls.append(args[0])
        return fn(*args, **kwargs)
    return wrapped


def run_pair(cls, kwargs, sizes, fused_context: Callable[[], ContextManager] = contextlib.nullcontext,
             dtype=torch.float64, steps=4, grad_fn=None, fused_backend=None):
    """Same model, same grads: the for-loop path (updates.single_*) vs ``fused=True`` on ``fused_backend``,
    stepped inside ``fused_context()``; returns (ref optimizer, fused optimizer, ref params, fused params)."""
    ref_params, fused_params = make_params(sizes, dtype), make_params(sizes, dtype)
    ref = cls(groups(ref_params), foreach=False, **kwargs)
    fused = cls(groups(fused_params), fused=True, **kwargs)
    fused.fused_backend = fused_backend
    gen = torch.Generator().manual_seed(1)
    for step in range(steps):
        for opt in (ref, fused):  # a schedule: lr changes every step, so no scalar may be cached
            for group in opt.param_groups:
                group["lr"] = kwargs.get("lr", 1e-2) * (1.0 - 0.2 * step)
        for rp, fp in zip(ref_params, fused_params):
            g = torch.randn(rp.shape, generator=gen, dtype=dtype) if grad_fn is None else grad_fn(rp, step)
            rp.grad, fp.grad = (None, None) if g is None else (g.clone(), g.clone())  # new addresses each step
        ref.step()
        with fused_context():
            fused.step()
    return ref, fused, ref_params, fused_params


def assert_same(ref, fused, ref_params, fused_params, tol=1e-12) -> None:
    for i, (rp, fp) in enumerate(zip(ref_params, fused_params)):
        torch.testing.assert_close(fp, rp, rtol=tol, atol=tol, msg=lambda m: f"param {i}: {m}")
        for name, value in ref.state[rp].items():
            if name != "step":
                torch.testing.assert_close(fused.state[fp][name], value, rtol=tol, atol=tol,
                                           msg=lambda m: f"param {i} state {name}: {m}")
    assert all(rp.abs().sum() > 0 for rp in ref_params if rp.numel())  # the comparison saw real values


def nan_first_grad(p: torch.Tensor, step: int) -> torch.Tensor:
    """Gradients of ones with a NaN first element (Adamax's max must propagate it, as torch.maximum does)."""
    g = torch.ones_like(p)
    if p.numel():
        g.view(-1)[0] = float("nan")
    return g


def assert_nan_propagated(ref, fused, ref_params, fused_params) -> None:
    for rp, fp in zip(ref_params, fused_params):
        torch.testing.assert_close(fused.state[fp]["exp_inf"], ref.state[rp]["exp_inf"], equal_nan=True)
        assert fused.state[fp]["exp_inf"].isnan().sum() == min(1, rp.numel())


def run_scaled_pair(maximize: bool, sizes, fused_context: Callable[[], ContextManager], scale=2.0 ** 12,
                    fused_backend=None):
    """AMP's fused protocol: the fused optimizer (on ``fused_backend``) gets grads × scale plus
    grad_scale/found_inf, the reference the unscaled grads; the fused step must leave its gradients as they were
    (no unscale pass)."""
    ref_params, fused_params = make_params(sizes, torch.float64), make_params(sizes, torch.float64)
    ref = bert_optim.AdamWSAGE(groups(ref_params), foreach=False, maximize=maximize)
    fused = bert_optim.AdamWSAGE(groups(fused_params), fused=True, maximize=maximize)
    fused.fused_backend = fused_backend
    gen = torch.Generator().manual_seed(3)
    with fused_context():
        for _ in range(3):
            for rp, fp in zip(ref_params, fused_params):
                g = torch.randn(rp.shape, generator=gen, dtype=torch.float64)
                rp.grad, fp.grad = g.clone(), g * scale
            fused.grad_scale, fused.found_inf = torch.tensor(scale), torch.tensor(0.0)
            ref.step()
            fused.step()
            assert torch.equal(fused_params[0].grad, ref_params[0].grad * scale)  # gradients left as they were
    return ref, fused, ref_params, fused_params


def carve(sizes, seed, sentinel, start_after: Callable[[int, int], int], first: int = 0):
    """Views into one float64 buffer, each followed by sentinel elements; ``start_after(pos, n)`` places the
    view after one of ``n`` elements at ``pos`` (aligned or not, as the kernel under test needs)."""
    starts, pos = [], first
    for n in sizes:
        starts.append(pos)
        pos = start_after(pos, n)
    buffer = torch.full((pos,), sentinel, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    views = [buffer[a:a + n] for a, n in zip(starts, sizes)]
    for v in views:
        v.copy_(torch.rand(v.shape, generator=gen, dtype=torch.float64) + 0.5)
    return views, buffer


def assert_inside(carved, expected, sentinel) -> None:
    """Each view equals its expected values and every element outside the views still holds the sentinel."""
    for (views, buffer), exp in zip(carved, expected):
        for v, e in zip(views, exp):
            torch.testing.assert_close(v, e, rtol=1e-12, atol=1e-12)
        outside = torch.ones_like(buffer, dtype=torch.bool)
        for v in views:
            outside[v.storage_offset():v.storage_offset() + v.numel()] = False
        assert (buffer[outside] == sentinel).all()


def bucket(dtype=torch.float64):
    """A one-tensor bucket: θ, g, [exp_avg, exp_avg_sq or exp_inf] and Ī columns."""
    p = [torch.zeros(4, dtype=dtype)]
    return p, [torch.zeros_like(p[0])], [[torch.zeros_like(p[0])], [torch.zeros_like(p[0])]], [torch.zeros_like(p[0])]


# ----------------------------------------------------------------------------------------------------------
# Half-precision parameters against the float64 math
# ----------------------------------------------------------------------------------------------------------
HALF_SIZES = [(3, 5), (7,), (2049,), (33, 65)]


def run_half_pair(dtype, step_kwargs: dict, fused_context: Callable[[], ContextManager] = contextlib.nullcontext,
                  steps: int = 3, fused_backend=None):
    """AdamW-SAGE on ``dtype`` parameters (``step_kwargs``: the implementation) and, from the same start values
    and gradients, on float64 parameters with the for-loop math. Gradients are ~1e-3, parameters ~0.05 (BERT's
    scale): in float16 state (1−β2)·g² would underflow. Returns (reference, optimizer, float64 params, half
    params, start values)."""
    gen = torch.Generator().manual_seed(0)
    start = [(torch.randn(s, generator=gen) * 0.05).to(dtype) for s in HALF_SIZES]
    half = [t.clone() for t in start]
    wide = [t.double() for t in start]
    ref = bert_optim.AdamWSAGE(groups(wide), lr=1e-2, formula="paper", foreach=False)
    opt = bert_optim.AdamWSAGE(groups(half), lr=1e-2, formula="paper", **step_kwargs)
    opt.fused_backend = fused_backend
    for _ in range(steps):
        for w, h in zip(wide, half):
            h.grad = (torch.randn(h.shape, generator=gen) * 1e-3).to(dtype)
            w.grad = h.grad.double()
        ref.step()
        with fused_context():
            opt.step()
    return ref, opt, wide, half, start


def assert_half_follows_float64(ref, opt, wide, half, start) -> None:
    """Float32 state equal to the float64 state to float32 rounding (Ī, which sees θ, to θ's rounding), and
    each parameter's movement equal to the float64 one to within θ's rounding per step."""
    eps = torch.finfo(half[0].dtype).eps
    for i, (w, h, h0) in enumerate(zip(wide, half, start)):
        state = opt.state[h]
        assert {k: v.dtype for k, v in state.items() if k != "step"} == dict.fromkeys(
            [k for k in ref.state[w] if k != "step"], torch.float32)
        for name, value in ref.state[w].items():
            if name != "step":
                rtol = 2 * eps if name == "exp_avg_ipt" else 1e-5
                err = (state[name].double() - value).abs()
                bound = rtol * (value.abs() + value.abs().max())  # relative to the tensor's scale (cancellation)
                assert bool((err <= bound).all()), f"param {i} {name}: off by up to {float(err.max()):.3g}"
        moved_ref, moved = w - h0.double(), h.double() - h0.double()
        assert moved_ref.abs().max() > 4 * eps * h0.double().abs().max()  # the steps are resolvable in θ's dtype
        err = (moved - moved_ref).abs()
        bound = 3 * eps * w.abs() + 0.02 * moved_ref.abs().max()
        assert bool((err <= bound).all()), f"param {i}: movement off by up to {float(err.max()):.3g}"


class HostReads(TorchDispatchMode):
    """Records the device of every tensor value read on the host (``item()``, ``float()``, ``bool()``,
    ``tolist()``) while active: a read of a device tensor is a host sync."""

    def __init__(self):
        super().__init__()
        self.devices: list[torch.device] = []
        self._tolist = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.devices.append(args[0].device)
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        real, devices = torch.Tensor.tolist, self.devices

        def tolist(t):
            devices.append(t.device)
            return real(t)
        self._tolist = mock.patch.object(torch.Tensor, "tolist", tolist)
        self._tolist.start()
        return super().__enter__()

    def __exit__(self, *exc):
        self._tolist.stop()
        return super().__exit__(*exc)
