"""Fused SAGE updates: no parameter-sized temporaries, parameters and state written in place.

- CUDA: a Triton multi-tensor kernel, one launch per bucket (:mod:`module.sage.triton_kernel`), when Triton is
  importable and the kernel passed its self-check in this process (else foreach, with one warning).
- CPU, float32/float64: a C kernel, one call per bucket (:mod:`module.sage.cpu_kernel`), when it builds and passed its
  self-check (else the ``torch.compile`` path below, with one warning).
- Elsewhere (CPU bfloat16/float16, CUDA without Triton): the readable single-tensor math compiled with
  ``torch.compile`` (:mod:`module.sage.compiled`).

Called by :func:`module.sage.functional._update` with tensor lists and scalars, never with an optimizer.
Half-precision parameters have float32 state (:func:`module.sage.updates.state_dtype`) on every path.

Public entry points for checks on new hardware: :func:`kernel_variants` lists the kernel variants a step can
take, :func:`check_variants` runs the self-check probe of each on a device and returns the verdicts.
"""
from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Iterable, Optional

import torch
from torch import Tensor

from module.sage import compiled
from module.sage.algorithms import ALGORITHMS, Algorithm, Columns, buckets, multi_step, row, single_step
from module.sage.updates import FORMULAS, state_dtype


def triton_available() -> bool:
    try:
        from module.sage import triton_kernel  # noqa: F401
    except ImportError:
        return False
    return True


def _triton_module():
    """The Triton backend for CUDA tensors, or None (tests swap in an interpreted copy)."""
    if not triton_available():
        return None
    from module.sage import triton_kernel
    return triton_kernel


#: Device types whose tensors go to the Triton kernel (tests add "cpu" for the interpreter).
TRITON_DEVICE_TYPES: tuple[str, ...] = ("cuda",)
#: Whether CPU float32/float64 buckets go to the C kernel (tests turn it off to reach the torch.compile path).
CPU_KERNEL = True


def _backend(p: Tensor, g: Tensor) -> tuple[Optional[ModuleType], str]:
    """The hand-written kernel for a bucket (None: none applies) and what runs if it is absent or fails its
    self-check: ``"foreach"`` after Triton, ``"compiled"`` (torch.compile) otherwise."""
    if p.device.type in TRITON_DEVICE_TYPES:
        triton = _triton_module()
        return (triton, "foreach") if triton is not None else (None, "compiled")
    if CPU_KERNEL:
        from module.sage import cpu_kernel
        if cpu_kernel.supports(p, g):
            return cpu_kernel, "compiled"
    return None, "compiled"


def fused_update(algo: Algorithm, params: list[Tensor], grads: list[Tensor], buffers: Columns,
                 ipt_avgs: Optional[list[Tensor]], steps: list[float], scalars: Callable[[float], dict],
                 hyper: dict, grad_factor: float) -> None:
    """One fused update of every tensor; ``grad_factor`` multiplies the gradient first (AMP unscale, maximize).

    Tensors the fused code cannot take (non-contiguous) run the single-tensor math eagerly.
    """
    fusable = [i for i, p in enumerate(params) if all(t is None or t.is_contiguous()
                                                      for t in (p, grads[i], *row(buffers, i)))]
    if len(fusable) < len(params):
        _eager_rest(algo, params, grads, buffers, ipt_avgs, steps, scalars, hyper, grad_factor, set(fusable))
        pick = lambda col: None if col is None else [col[i] for i in fusable]  # noqa: E731
        params, grads, buffers = pick(params), pick(grads), [pick(c) for c in buffers]
        ipt_avgs, steps = pick(ipt_avgs), [steps[i] for i in fusable]
        if not params:
            return
    for step, (p, g, *cols) in buckets(params, grads, buffers, ipt_avgs, steps):
        states, ipt, step_scalars = cols[:-1], cols[-1], scalars(step)
        kernel, fallback = _backend(p[0], g[0])
        if kernel is not None and kernel_verified(kernel, algo, p[0], g[0], step_scalars, hyper, fallback):
            kernel.fused_step(algo.name, p, g, [c for c in states if c is not None], ipt, step_scalars, hyper,
                              grad_factor=grad_factor)
        elif fallback == "compiled":
            compiled.compiled_bucket(algo, p, g, states, ipt, step_scalars, hyper, grad_factor)
        else:
            multi_step(algo, p, g, states, ipt, step_scalars, hyper, grad_factor)


def _eager_rest(algo, params, grads, buffers, ipt_avgs, steps, scalars, hyper, grad_factor, fusable: set) -> None:
    """The single-tensor math, eagerly, for the tensors not in ``fusable``."""
    for i, (p, g) in enumerate(zip(params, grads)):
        if i not in fusable:
            single_step(algo, p, g, row(buffers, i), None if ipt_avgs is None else ipt_avgs[i], scalars(steps[i]),
                        hyper, grad_factor)


# ----------------------------------------------------------------------------------------------------------
# Kernel self-check: on first use per process, device and kernel variant, a hand-written kernel (Triton, C)
# must agree with the foreach math on a probe that takes every path a step of that variant can take; a build
# failure or a mismatch warns once and that variant runs the fallback (foreach after Triton, torch.compile after
# C). Under torch.distributed every rank gets the same verdict.
# ----------------------------------------------------------------------------------------------------------
_VERIFIED: dict[tuple, bool] = {}
_WARNED: set[tuple] = set()
#: relative tolerance of the probe per tensor dtype (the kernel computes in fp32, fp64 for fp64)
_PROBE_RTOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}
#: The probe's tensors, all in one bucket: a full block and a tail (2051), a tensor smaller than a block (5), a
#: misaligned view over two full blocks and a tail (4103), and one-block tensors up to a bucket of many rows.
_PROBE_SIZES = (2051, 5, 4103) + tuple(1 + (7 * i) % 29 for i in range(24))
#: Tensors placed one element past an aligned start: no 16-byte vector access may be assumed for them.
_PROBE_MISALIGNED = frozenset({2, *range(3, len(_PROBE_SIZES), 3)})
#: (tensor, element, value) of non-finite gradients: NaN in a full block, +inf in a tail, -inf misaligned.
_PROBE_NONFINITE = ((0, 3, float("nan")), (0, 2050, float("inf")), (2, 7, float("-inf")))
#: The factor the kernel applies to gradients as it loads them (AMP's 1/scale, maximize's sign): not 1, so a
#: kernel that skipped or inverted it fails.
_PROBE_GRAD_FACTOR = -0.125


def reset_self_checks() -> None:
    """Forget every verdict (tests; a new process starts empty anyway)."""
    _VERIFIED.clear()
    _WARNED.clear()


_FALLBACK_NAMES = {"foreach": "the foreach implementation", "compiled": "the torch.compile implementation"}


def kernel_verified(kernel, algo: Algorithm, p: Tensor, g: Tensor, scalars: dict, hyper: dict,
                    fallback: str = "foreach") -> bool:
    """Whether the kernel variant for these tensors and hyperparameters passed its self-check (run once).

    Under torch.distributed the verdict is all-reduced, so every rank runs the same implementation: ranks that
    step the same parameters meet the same variants in the same order, one collective each.
    """
    flavour = tuple(sorted((k, v) for k, v in hyper.items())) + (bool(scalars.get("first_step", False)),)
    name = kernel.KERNEL
    key = (name, str(p.device), algo.name, p.dtype, g.dtype, flavour)
    if algo.name not in kernel.ALGORITHMS:  # a programming error, not a kernel failure: say so
        raise ValueError(f"unknown algorithm {algo.name!r}; expected one of {', '.join(kernel.ALGORITHMS)}")
    if key not in _VERIFIED:
        problem = _self_check(kernel, algo, p.device, p.dtype, g.dtype, scalars, hyper)
        _VERIFIED[key] = _agreed(problem is None, p.device)
        if not _VERIFIED[key] and key[:3] not in _WARNED:
            _WARNED.add(key[:3])
            where = "" if problem is not None else " on another rank (it passed on this one)"
            why = f" ({problem})" if problem is not None else ""
            warnings.warn(f"fused SAGE step: the {name} for {algo.name} on {p.device} failed its self-check"
                          f"{where}{why}; using {_FALLBACK_NAMES[fallback]} instead", RuntimeWarning,
                          stacklevel=4)
    return _VERIFIED[key]


def _agreed(ok: bool, device: torch.device) -> bool:
    """``ok`` on every rank of the default process group, else ``ok`` (no group, or one rank)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return ok
    on = device if device.type == "cuda" and "nccl" in str(dist.get_backend()) else torch.device("cpu")
    flag = torch.tensor([int(ok)], dtype=torch.int32, device=on)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _probe(device, dtype, g_dtype, algo: Algorithm, hyper: dict) -> list[Optional[list[Tensor]]]:
    """Columns θ, g, state buffers, Ī of the probe bucket (positive second moments and Ī; state in
    ``state_dtype(dtype)``; non-finite gradients at ``_PROBE_NONFINITE``)."""
    gen = torch.Generator().manual_seed(0)

    def rand(dt, positive: bool = False) -> list[Tensor]:
        out = []
        for i, n in enumerate(_PROBE_SIZES):
            t = torch.randn(n, generator=gen, dtype=torch.float64)
            shift = int(i in _PROBE_MISALIGNED)
            view = torch.empty(n + shift, device=device, dtype=dt)[shift:]
            out.append(view.copy_(t.abs() + 0.1 if positive else t))
        return out

    s_dtype = state_dtype(dtype)
    n_states = 1 if algo.name == "sgd" else 2
    states = [rand(s_dtype), rand(s_dtype, positive=True)][:n_states]
    if algo.name == "sgd" and not hyper["momentum"]:
        states = [None]
    grads = rand(g_dtype)
    for tensor, element, value in _PROBE_NONFINITE:
        grads[tensor][element] = value
    return [rand(dtype), grads, *states, rand(s_dtype, positive=True) if hyper["sage"] else None]


def _self_check(kernel, algo: Algorithm, device, dtype, g_dtype, scalars: dict, hyper: dict) -> Optional[str]:
    """None if the kernel matches the foreach math (in float64) on the probe, else what went wrong."""
    scalars = dict(scalars, lr=0.5, **({"decay_lr": 0.5} if "decay_lr" in scalars else {}))  # visible moves
    try:
        columns = _probe(device, dtype, g_dtype, algo, hyper)
        wide = [None if col is None else [t.to(torch.float64, copy=True) for t in col] for col in columns]
        torch._foreach_mul_(wide[1], _PROBE_GRAD_FACTOR)
        algo.multi(*wide, **scalars, **hyper)
        p, g, *states, ipt = columns
        with warnings.catch_warnings():  # NaN/inf on purpose: an interpreted kernel's numpy would warn
            warnings.simplefilter("ignore", RuntimeWarning)
            kernel.fused_step(algo.name, p, g, [c for c in states if c is not None], ipt,
                              dict(scalars, grad_factor=_PROBE_GRAD_FACTOR), hyper)
    except Exception as exc:  # noqa: BLE001 - any compile or launch failure means: do not use the kernel
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    for c, (got, want) in enumerate(zip(columns, wide)):
        if c == 1 or got is None:
            continue  # gradients are inputs only
        problem = _disagreement(torch.cat(got), torch.cat(want))
        if problem is not None:
            return f"column {c} {problem}"
    return None


def _disagreement(got: Tensor, want: Tensor) -> Optional[str]:
    """How a column ``got`` differs from the float64 ``want`` beyond its dtype's tolerance, relative to each
    value plus the column's largest (rounding errors scale with the inputs); NaN/inf must match exactly."""
    rtol = _PROBE_RTOL.get(got.dtype, 1e-4)
    got = got.double()
    finite = torch.isfinite(want)
    if not bool(((got == want) | (got.isnan() & want.isnan()))[~finite].all()):
        return "differs from foreach in its non-finite elements (NaN/inf gradients)"
    err, scale = (got - want)[finite].abs(), want[finite].abs()
    bound = rtol * (scale + (scale.max() if scale.numel() else 0.0))
    if not bool((err <= bound).all()):  # a NaN where foreach is finite fails here too
        return f"differs from foreach by up to {float(err.max()):.3g}"
    return None


# ----------------------------------------------------------------------------------------------------------
# Every variant, for checks on new hardware (bench/ scripts): list them, probe them, return the verdicts
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KernelVariant:
    """One compiled flavour of the hand-written kernels: what the self-check keys its verdict on."""
    algorithm: str
    dtype: torch.dtype  # parameters and gradients; the state is state_dtype(dtype)
    sage: bool = True
    formula: str = "reference"
    decay: bool = False
    momentum: bool = False  # sgd only, as nesterov and first_step
    nesterov: bool = False
    first_step: bool = False

    def arguments(self) -> tuple[dict, dict]:
        """(step scalars, hyperparameters) of a step that takes this variant (plausible third-step values)."""
        hyper = dict(beta3=0.75, eps=1e-6, weight_decay=0.01 if self.decay else 0.0, formula=self.formula,
                     sage=self.sage)
        if self.algorithm == "sgd":
            hyper.update(momentum=0.9 if self.momentum else 0.0, dampening=0.0, nesterov=self.nesterov)
            return dict(lr=1e-3, first_step=self.first_step, ipt_correction=1.0), hyper
        hyper.update(beta1=0.9, beta2=0.999)
        scalars = {"adamax": dict(lr=1e-3, ipt_correction=1.0),
                   "adamw": dict(lr=1e-3, decay_lr=1e-3, step_correction=0.2, ipt_correction=1.7),
                   "adam": dict(lr=1e-3, bias_correction1=0.27, bias_correction2_sqrt=0.055, ipt_correction=1.7)}
        return scalars[self.algorithm], hyper


def kernel_variants(dtypes: Iterable[torch.dtype] = (torch.float32, torch.bfloat16, torch.float16, torch.float64),
                    algorithms: Iterable[str] = tuple(ALGORITHMS), formulas: Iterable[str] = FORMULAS
                    ) -> list[KernelVariant]:
    """Every kernel variant a step can take for these dtypes, algorithms and SAGE formulas."""
    formulas = tuple(formulas)
    out = []
    for dtype, algorithm in itertools.product(dtypes, algorithms):
        for (sage, formula), decay in itertools.product([(False, "reference")] + [(True, f) for f in formulas],
                                                        (False, True)):
            if algorithm != "sgd":
                out.append(KernelVariant(algorithm, dtype, sage, formula, decay))
                continue
            for (momentum, nesterov), first in itertools.product(((False, False), (True, False), (True, True)),
                                                                 (False, True)):
                out.append(KernelVariant(algorithm, dtype, sage, formula, decay, momentum, nesterov, first))
    return out


def check_variants(device: torch.device | str, variants: Optional[Iterable[KernelVariant]] = None
                   ) -> list[tuple[KernelVariant, Optional[str]]]:
    """Run the self-check probe of each variant (default: :func:`kernel_variants`) with the hand-written kernel
    that would take it on ``device``: (variant, None if it passed, else what failed). Local to this process:
    no verdict is cached, no warning issued, no rank consulted."""
    device = torch.device(device)
    results = []
    for variant in kernel_variants() if variants is None else variants:
        probe = torch.empty(0, device=device, dtype=variant.dtype)
        kernel, _ = _backend(probe, probe)
        if kernel is None:
            results.append((variant, f"no hand-written kernel takes {variant.dtype} on {device}"))
            continue
        scalars, hyper = variant.arguments()
        results.append((variant, _self_check(kernel, ALGORITHMS[variant.algorithm], device, variant.dtype,
                                             variant.dtype, scalars, hyper)))
    return results
