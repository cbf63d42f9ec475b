"""The fused SAGE step through ``torch.compile``: what runs where no hand-written kernel applies (CPU
bfloat16/float16, CUDA without Triton) or where the C kernel failed its self-check.

The readable single-tensor math of :mod:`module.sage.updates` is compiled over lists of tensors: inductor fuses the
update of CHUNK tensors into one kernel of in-place loops; small tensors share one call through flat copies.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import torch

from torch import Tensor

from module.sage.algorithms import ALGORITHMS, Columns
from module.sage.updates import HALF_PRECISION

__all__ = ["KERNEL", "ALGORITHMS", "CHUNK", "SMALL_NUMEL", "supports", "fused_step"]

KERNEL = "torch.compile implementation"

#: dynamo's default of 8 graphs per function is too few: hyperparameters are specialised (one graph per group
#: flavour: sage/decay/formula/dtype).
_RECOMPILE_LIMIT = 64

#: Large tensors go through a compiled function of CHUNK tensors at a time (one kernel, one parallel region per
#: call); sizes are independent dynamic symbols, so one graph serves every chunk of any sizes.
CHUNK = 8
#: Tensors with fewer elements than this (biases, LayerNorm) are updated together through one flat copy: one
#: call for all of them costs less than a call each (BERT-base: 124 of its 199 tensors).
SMALL_NUMEL = 1 << 16


def supports(p: Tensor, g: Tensor) -> bool:
    """Every bucket: the compiled math takes any device and dtype torch.compile does."""
    return True


def fused_step(algorithm: str, params: list[Tensor], grads: list[Tensor], states: list[list[Tensor]],
               ipt_avgs: Optional[list[Tensor]], scalars: dict, hyper: dict, grad_factor: Optional[float] = None,
               *, small_numel: int = SMALL_NUMEL, single: Optional[Callable[..., None]] = None) -> None:
    """The kernels' contract (:func:`module.sage.cpu_kernel.fused_step`) on the compiled single-tensor math of
    ``algorithm`` (or ``single``, a function with its signature); ``small_numel``: see SMALL_NUMEL."""
    if not params:
        return
    n_states = 1 if algorithm == "sgd" else 2  # sgd without momentum has no buffer: its column is None
    columns = list(states) + [None] * (n_states - len(states))
    factor = scalars.get("grad_factor", 1.0) if grad_factor is None else grad_factor
    scalars = {k: v for k, v in scalars.items() if k != "grad_factor"}
    compiled_bucket(single or ALGORITHMS[algorithm].single, params, grads, columns, ipt_avgs if hyper["sage"] else None,
                    scalars, hyper, factor, small_numel)


@functools.lru_cache(maxsize=None)
def _compiled(single: Callable[..., None], n: int) -> Callable[..., None]:
    """``single`` over ``n`` tensors given as lists, compiled into one kernel (half-precision θ and g are
    computed in float32 and θ rounded once, as in the other implementations)."""
    def step(params, grads, *columns, grad_factor, **kwargs):
        for i in range(n):
            p = params[i]
            work = p.float() if p.dtype in HALF_PRECISION else p
            single(work, grads[i].to(work.dtype) * grad_factor,
                   *(None if col is None else col[i] for col in columns), **kwargs)
            if work is not p:
                p.copy_(work)
    return torch.compile(step, dynamic=True, fullgraph=True)


def compiled_bucket(single: Callable[..., None], params, grads, states: Columns, ipt_avgs, scalars: dict,
                    hyper: dict, grad_factor: float, small_numel: int = SMALL_NUMEL) -> None:
    """Compiled calls over flat views: CHUNK large tensors at a time, the rest one by one, small ones together.

    Step scalars travel as 0-d float64 tensors built once per bucket (the compiled code does not re-specialise
    when the learning rate changes); hyperparameters, fixed per group, are compiled in as constants.
    """
    kwargs = {k: v if isinstance(v, bool) else torch.tensor(float(v), dtype=torch.float64) for k, v in scalars.items()}
    kwargs.update(hyper, grad_factor=torch.tensor(grad_factor, dtype=torch.float64))
    columns = [None if col is None else [t.view(-1) for t in col] for col in [params, grads, *states, ipt_avgs]]
    large = [i for i, p in enumerate(params) if p.numel() >= max(small_numel, 1)]
    small = [i for i, p in enumerate(params) if 0 < p.numel() < small_numel]
    if len(small) == 1:
        large, small = sorted(large + small), []
    pick = lambda idx: [None if col is None else [col[i] for i in idx] for col in columns]  # noqa: E731
    with torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT, specialize_float=True), \
            torch.fx.experimental._config.patch(use_duck_shape=False):
        for start in range(0, len(large), CHUNK):
            idx = large[start:start + CHUNK]
            n = CHUNK if len(idx) == CHUNK else 1
            for first in range(0, len(idx), n):
                _compiled(single, n)(*pick(idx[first:first + n]), **kwargs)
        if small:
            _flat_call(_compiled(single, 1), pick(small), kwargs)


def _flat_call(fn, columns: Columns, kwargs: dict) -> None:
    """``fn`` once over the concatenation of each column; results copied back (gradients are inputs only)."""
    sizes = [t.numel() for t in columns[0]]
    flats = [None if col is None else [torch.cat(col)] for col in columns]
    fn(*flats, **kwargs)
    for c, (col, flat) in enumerate(zip(columns, flats)):
        if col is not None and c != 1:
            torch._foreach_copy_(col, list(flat[0].split(sizes)))
