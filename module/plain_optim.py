"""Plain torch optimizers under the SAGE optimizers' registry (``--optimizer radam``, as the authors' repo had).

The trainer builds every optimizer with the same keywords; an adapter accepts them and drops the SAGE-only ones
(``sage``, ``beta3``, ``formula``); the ``fused`` choice torch's RAdam does not offer leaves the implementation to
torch (:func:`module.sage.dispatch.select` says so).
"""
from __future__ import annotations

from typing import Optional

import torch

from module.sage import dispatch


class RAdam(torch.optim.RAdam):
    """torch.optim.RAdam (L2 weight decay per param group, as torch defines it); no SAGE term."""

    schedule_step_offset = 0

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 sage: bool = False, beta3: Optional[float] = None, formula: Optional[str] = None,
                 foreach: Optional[bool] = None, fused: Optional[bool] = None):
        if sage:
            raise ValueError("radam has no SAGE variant")
        requested = "fused" if fused else None if foreach is None else "foreach" if foreach else "forloop"
        impl = dispatch.select(requested, fused_supported=False, algorithm="radam").impl
        super().__init__(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                         foreach={"forloop": False, "foreach": True}.get(impl))
