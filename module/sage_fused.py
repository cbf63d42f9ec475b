"""Fused SAGE updates: no parameter-sized temporaries, parameters and state written in place.

- CUDA: a Triton multi-tensor kernel, one launch per bucket (:mod:`module.sage_triton`), when Triton is
  importable and the kernel passed its self-check in this process (else foreach, with one warning).
- CPU, float32/float64: a C kernel, one call per bucket (:mod:`module.sage_cpu`), when it builds and passed its
  self-check (else the ``torch.compile`` path below, with one warning).
- Elsewhere (CPU bfloat16/float16, CUDA without Triton): the readable single-tensor math of
  :mod:`module.sage_math` compiled with ``torch.compile`` over lists of tensors (inductor fuses the update of
  CHUNK tensors into one kernel of in-place loops; small tensors share one call through flat copies).

Called by :func:`module.sage_functional._update` with tensor lists and scalars, never with an optimizer.
"""
from __future__ import annotations

import functools
import warnings
from types import ModuleType
from typing import Callable, Optional

import torch
from torch import Tensor

from module.sage_functional import Algorithm, Columns, buckets, row

#: dynamo's default of 8 graphs per function is too few: hyperparameters are specialised (one graph per group
#: flavour: sage/decay/formula/dtype).
_RECOMPILE_LIMIT = 64


def triton_available() -> bool:
    try:
        from module import sage_triton  # noqa: F401
    except ImportError:
        return False
    return True


def _triton_module():
    """The Triton backend for CUDA tensors, or None (tests swap in an interpreted copy)."""
    if not triton_available():
        return None
    from module import sage_triton
    return sage_triton


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
        from module import sage_cpu
        if sage_cpu.supports(p, g):
            return sage_cpu, "compiled"
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
            _compiled_bucket(algo, p, g, states, ipt, step_scalars, hyper, grad_factor)
        else:
            g = torch._foreach_mul(g, grad_factor) if grad_factor != 1.0 else g
            algo.multi(p, g, *states, ipt, **step_scalars, **hyper)


def _eager_rest(algo, params, grads, buffers, ipt_avgs, steps, scalars, hyper, grad_factor, fusable: set) -> None:
    """The single-tensor math, eagerly, for the tensors not in ``fusable``."""
    for i, (p, g) in enumerate(zip(params, grads)):
        if i not in fusable:
            g = g * grad_factor if grad_factor != 1.0 else g
            algo.single(p, g, *row(buffers, i), None if ipt_avgs is None else ipt_avgs[i], **scalars(steps[i]),
                        **hyper)


# ----------------------------------------------------------------------------------------------------------
# Kernel self-check: on first use per process, device and kernel variant, a hand-written kernel (Triton, C)
# must agree with the foreach math on a small probe; a build failure or a mismatch warns once and that variant
# runs the fallback (foreach after Triton, torch.compile after C).
# ----------------------------------------------------------------------------------------------------------
_VERIFIED: dict[tuple, bool] = {}
_WARNED: set[tuple] = set()
#: relative tolerance of the probe per parameter dtype (the kernel computes in fp32, fp64 for fp64)
_PROBE_RTOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}
_PROBE_SIZES = (2051, 5)  # a full block, a tail, and a tensor smaller than one block


def reset_self_checks() -> None:
    """Forget every verdict (tests; a new process starts empty anyway)."""
    _VERIFIED.clear()
    _WARNED.clear()


_FALLBACK_NAMES = {"foreach": "the foreach implementation", "compiled": "the torch.compile implementation"}


def kernel_verified(kernel, algo: Algorithm, p: Tensor, g: Tensor, scalars: dict, hyper: dict,
                    fallback: str = "foreach") -> bool:
    """Whether the kernel variant for these tensors and hyperparameters passed its self-check (run once)."""
    flavour = tuple(sorted((k, v) for k, v in hyper.items())) + (bool(scalars.get("first_step", False)),)
    name = kernel.KERNEL
    key = (name, str(p.device), algo.name, p.dtype, g.dtype, flavour)
    if algo.name not in kernel.ALGORITHMS:  # a programming error, not a kernel failure: say so
        raise ValueError(f"unknown algorithm {algo.name!r}; expected one of {', '.join(kernel.ALGORITHMS)}")
    if key not in _VERIFIED:
        problem = _self_check(kernel, algo, p.device, p.dtype, g.dtype, scalars, hyper)
        _VERIFIED[key] = problem is None
        if problem is not None and key[:3] not in _WARNED:
            _WARNED.add(key[:3])
            warnings.warn(f"fused SAGE step: the {name} for {algo.name} on {p.device} failed its self-check "
                          f"({problem}); using {_FALLBACK_NAMES[fallback]} instead", RuntimeWarning, stacklevel=4)
    return _VERIFIED[key]


def _probe(device, dtype, g_dtype, algo: Algorithm, hyper: dict) -> list[Optional[list[Tensor]]]:
    """Columns θ, g, state buffers, Ī of a small random problem (positive second moments and Ī)."""
    gen = torch.Generator().manual_seed(0)

    def rand(positive: bool = False, dt=dtype) -> list[Tensor]:
        out = []
        for n in _PROBE_SIZES:
            t = torch.randn(n, generator=gen, dtype=torch.float64)
            out.append((t.abs() + 0.1 if positive else t).to(device=device, dtype=dt))
        return out

    n_states = 1 if algo.name == "sgd" else 2
    states = [rand(), rand(positive=True)][:n_states]
    if algo.name == "sgd" and not hyper["momentum"]:
        states = [None]
    return [rand(), rand(dt=g_dtype), *states, rand(positive=True) if hyper["sage"] else None]


def _self_check(kernel, algo: Algorithm, device, dtype, g_dtype, scalars: dict, hyper: dict) -> Optional[str]:
    """None if the kernel matches the foreach math on a probe, else what went wrong."""
    scalars = dict(scalars, lr=0.5, **({"decay_lr": 0.5} if "decay_lr" in scalars else {}))  # visible moves
    try:
        columns = _probe(device, dtype, g_dtype, algo, hyper)
        wide = [None if col is None else [t.to(torch.float64, copy=True) for t in col] for col in columns]
        algo.multi(*wide, **scalars, **hyper)
        p, g, *states, ipt = columns
        kernel.fused_step(algo.name, p, g, [c for c in states if c is not None], ipt, scalars, hyper)
    except Exception as exc:  # noqa: BLE001 - any compile or launch failure means: do not use the kernel
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    rtol = _PROBE_RTOL.get(dtype, 1e-4)
    for c, (got, want) in enumerate(zip(columns, wide)):
        if c == 1 or got is None:
            continue  # gradients are inputs only
        for t, w in zip(got, want):
            err = (t.double() - w).abs()
            bound = rtol * (w.abs() + w.abs().max())
            if not bool((err <= bound).all()):
                return f"column {c} differs from foreach by up to {float(err.max()):.3g}"
    return None


# ----------------------------------------------------------------------------------------------------------
# CPU bfloat16/float16 (and CUDA without Triton): torch.compile of the single-tensor math
# ----------------------------------------------------------------------------------------------------------
#: Large tensors go through a compiled function of CHUNK tensors at a time (one kernel, one parallel region per
#: call); sizes are independent dynamic symbols, so one graph serves every chunk of any sizes.
CHUNK = 8
#: Tensors with fewer elements than this (biases, LayerNorm) are updated together through one flat copy: one
#: call for all of them costs less than a call each (BERT-base: 124 of its 199 tensors).
SMALL_NUMEL = 1 << 16


@functools.lru_cache(maxsize=None)
def _compiled(single: Callable[..., None], n: int) -> Callable[..., None]:
    """``single`` over ``n`` tensors given as lists, compiled into one kernel."""
    def step(params, grads, *columns, grad_factor, **kwargs):
        for i in range(n):
            single(params[i], grads[i] * grad_factor, *(None if col is None else col[i] for col in columns),
                   **kwargs)
    return torch.compile(step, dynamic=True, fullgraph=True)


def _compiled_bucket(algo: Algorithm, params, grads, states: Columns, ipt_avgs, scalars: dict, hyper: dict,
                     grad_factor: float) -> None:
    """Compiled calls over flat views: CHUNK large tensors at a time, the rest one by one, small ones together.

    Step scalars travel as 0-d float64 tensors built once per bucket (the compiled code does not re-specialise
    when the learning rate changes); hyperparameters, fixed per group, are compiled in as constants.
    """
    kwargs = {k: v if isinstance(v, bool) else torch.tensor(float(v), dtype=torch.float64) for k, v in scalars.items()}
    kwargs.update(hyper, grad_factor=torch.tensor(grad_factor, dtype=torch.float64))
    columns = [None if col is None else [t.view(-1) for t in col] for col in [params, grads, *states, ipt_avgs]]
    large = [i for i, p in enumerate(params) if p.numel() >= max(SMALL_NUMEL, 1)]
    small = [i for i, p in enumerate(params) if 0 < p.numel() < SMALL_NUMEL]
    if len(small) == 1:
        large, small = sorted(large + small), []
    pick = lambda idx: [None if col is None else [col[i] for i in idx] for col in columns]  # noqa: E731
    with torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT, specialize_float=True), \
            torch.fx.experimental._config.patch(use_duck_shape=False):
        for start in range(0, len(large), CHUNK):
            idx = large[start:start + CHUNK]
            n = CHUNK if len(idx) == CHUNK else 1
            for first in range(0, len(idx), n):
                _compiled(algo.single, n)(*pick(idx[first:first + n]), **kwargs)
        if small:
            _flat_call(_compiled(algo.single, 1), pick(small), kwargs)


def _flat_call(fn, columns: Columns, kwargs: dict) -> None:
    """``fn`` once over the concatenation of each column; results copied back (gradients are inputs only)."""
    sizes = [t.numel() for t in columns[0]]
    flats = [None if col is None else [torch.cat(col)] for col in columns]
    fn(*flats, **kwargs)
    for c, (col, flat) in enumerate(zip(columns, flats)):
        if col is not None and c != 1:
            torch._foreach_copy_(col, list(flat[0].split(sizes)))
