"""Fused SAGE updates: no parameter-sized temporaries, parameters and state written in place.

- CUDA: a Triton multi-tensor kernel, one launch per bucket (:mod:`module.sage_triton`), when Triton is
  importable.
- Elsewhere (CPU): the readable single-tensor math of :mod:`module.sage_math` compiled with ``torch.compile``
  (inductor fuses the whole update into one loop that writes parameters and state in place).

Called by :func:`module.sage_functional._update` with tensor lists and scalars, never with an optimizer.
"""
from __future__ import annotations

import functools
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
        states, ipt = cols[:-1], cols[-1]
        triton = _triton_module() if p[0].device.type in TRITON_DEVICE_TYPES else None
        if triton is not None:
            if grad_factor != 1.0:
                g = torch._foreach_mul(g, grad_factor)
            triton.fused_step(algo.name, p, g, [c for c in states if c is not None], ipt, scalars(step), hyper)
        else:
            _compiled_bucket(algo, p, g, states, ipt, scalars(step), hyper, grad_factor)


def _eager_rest(algo, params, grads, buffers, ipt_avgs, steps, scalars, hyper, grad_factor, skip: set) -> None:
    for i, (p, g) in enumerate(zip(params, grads)):
        if i not in skip:
            g = g * grad_factor if grad_factor != 1.0 else g
            algo.single(p, g, *row(buffers, i), None if ipt_avgs is None else ipt_avgs[i], **scalars(steps[i]),
                        **hyper)


# ----------------------------------------------------------------------------------------------------------
# CPU (and CUDA without Triton): torch.compile of the single-tensor math
# ----------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _compiled(single: Callable[..., None]) -> Callable[..., None]:
    def step(p, g, *state, grad_factor, **kwargs):
        single(p, g * grad_factor, *state, **kwargs)
    return torch.compile(step, dynamic=True, fullgraph=True)


def _flat(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.view(-1)


def _compiled_bucket(algo: Algorithm, params, grads, states: Columns, ipt_avgs, scalars: dict, hyper: dict,
                     grad_factor: float) -> None:
    """One compiled call per tensor. Step scalars travel as 0-d float64 tensors (built once per bucket) so the
    compiled code does not re-specialise when the learning rate changes."""
    fn = _compiled(algo.single)
    tensor_scalars = {k: v if isinstance(v, bool) else torch.tensor(float(v), dtype=torch.float64)
                      for k, v in scalars.items()}
    factor = torch.tensor(grad_factor, dtype=torch.float64)
    with torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT):
        for i, (p, g) in enumerate(zip(params, grads)):
            if p.numel():
                fn(_flat(p), _flat(g), *map(_flat, row(states, i)), _flat(None if ipt_avgs is None else ipt_avgs[i]),
                   grad_factor=factor, **tensor_scalars, **hyper)
