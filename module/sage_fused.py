"""Fused implementations: no parameter-sized temporaries, parameters and state written in place.

- CUDA: a Triton multi-tensor kernel, one launch per param group (:mod:`module.sage_triton`), when Triton
  is importable.
- Elsewhere (CPU): the readable single-tensor math of :mod:`module.sage_math` compiled with ``torch.compile``
  (inductor fuses the whole update into one loop that writes parameters and state in place). Step-dependent
  scalars travel as 0-d tensors and tensors as flat views with dynamic sizes, so each (algorithm, dtype, flags)
  combination compiles once.
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor


_RECOMPILE_LIMIT = 64


@functools.lru_cache(maxsize=None)
def _compiled(fn):
    return torch.compile(fn, dynamic=True, fullgraph=True)


def triton_available() -> bool:
    try:
        from module import sage_triton  # noqa: F401
    except ImportError:
        return False
    return True


def _as_tensor_scalars(scalars: dict) -> dict:
    """Floats that change between steps become 0-d float64 tensors so compiled code does not re-specialise."""
    return {k: (v if isinstance(v, bool) else torch.tensor(float(v), dtype=torch.float64))
            for k, v in scalars.items()}


def _flat(t):
    return None if t is None else t.view(-1)


def compiled_group_step(opt, group: dict, params: list[Tensor], grads: list[Tensor], states: list[dict],
                        steps: list[float]) -> None:
    """Run ``opt.single_fn`` compiled, one call per tensor (contiguous tensors; others run eagerly)."""
    hyper = opt._hyper(group)
    fn = _compiled(opt.single_fn)
    # Hyperparameters are specialised (one graph per group flavour: sage/decay/formula/dtype), so allow more
    # variants than dynamo's default of 8 per function.
    with torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT):
        _run_compiled(opt, fn, group, hyper, params, grads, states, steps)


def _run_compiled(opt, fn, group, hyper, params, grads, states, steps) -> None:
    for p, g, s, t in zip(params, grads, states, steps):
        if p.numel() == 0:
            continue
        buffers = opt._state_args(s)
        scalars = opt._scalars(group, t)
        tensors = (p, g) + tuple(b for b in buffers if b is not None)
        if all(x.is_contiguous() for x in tensors) and g.dtype == p.dtype:
            fn(_flat(p), _flat(g), *(_flat(b) for b in buffers), **_as_tensor_scalars(scalars), **hyper)
        else:
            opt.single_fn(p, g, *buffers, **scalars, **hyper)


def fused_group_step(opt, group: dict, params: list[Tensor], grads: list[Tensor], states: list[dict],
                     steps: list[float]) -> None:
    on_cuda = all(p.is_cuda for p in params)
    if on_cuda and triton_available():
        from module import sage_triton
        sage_triton.group_step(opt, group, params, grads, states, steps)
    else:
        compiled_group_step(opt, group, params, grads, states, steps)
