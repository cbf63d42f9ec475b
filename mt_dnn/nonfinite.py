"""Stop a diverging run at its first non-finite loss, gradient or weight, before anything non-finite is saved.

Checking ``loss.item()`` every step would stall the GPU queue once per step, so :class:`NonFiniteGuard` keeps
its record on the device (a few element-wise ops per step, no host sync) and :meth:`NonFiniteGuard.check`
reads it once: at log steps, and before every checkpoint and evaluation. The first bad step is still the one
named, with its task and the last finite loss before it.
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch

from mt_dnn import distributed as dist_utils


class NonFiniteError(ValueError):
    """Training produced a non-finite loss, gradient norm or weight (one line; nothing of it was saved)."""

    origin = 0  # the same message on every rank: train.py prints it once


def _local(p: torch.Tensor) -> torch.Tensor:
    return p.to_local() if hasattr(p, "to_local") else p  # FSDP2 DTensor -> this rank's shard


def weights_finite(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """A device bool: the norm of every weight tensor is finite (no host sync).

    One multi-tensor norm is ~20x cheaper on CPU than an elementwise isfinite pass; a NaN or inf weight makes its
    tensor's norm non-finite, and so do finite weights beyond ~1e19, which have diverged as surely.
    """
    tensors = [t for t in (_local(p).detach() for p in params) if t.is_floating_point() and t.numel()]
    if not tensors:
        return torch.tensor(True)
    return torch.isfinite(torch.stack([n.float() for n in torch._foreach_norm(tensors)])).all()


class NonFiniteGuard:
    """Device-side record of the first micro-batch whose loss (or step whose gradient norm) is not finite.

    ``check_grads`` is False under --fp16: there the GradScaler itself skips steps whose gradients overflowed.
    """

    def __init__(self, device: torch.device, check_grads: bool = True):
        self.check_grads = check_grads
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)  # index into self.pending
        self.bad_loss = torch.zeros((), device=device)
        self.bad_norm = torch.zeros((), device=device)
        self.last_finite = torch.full((), float("nan"), device=device)
        self.pending: list[tuple[int, str]] = []  # (step, task) of each micro-batch since the last check

    def _mark(self, bad: torch.Tensor, loss: torch.Tensor, norm: Optional[torch.Tensor]) -> None:
        new = bad & (self.first_bad < 0)
        self.first_bad = torch.where(new, len(self.pending) - 1, self.first_bad)
        self.bad_loss = torch.where(new, loss, self.bad_loss)
        if norm is not None:
            self.bad_norm = torch.where(new, norm, self.bad_norm)

    def observe_loss(self, step: int, task: str, loss: torch.Tensor) -> None:
        loss = loss.detach().float()
        self.pending.append((step, task))
        self._mark(~torch.isfinite(loss), loss, None)
        self.last_finite = torch.where(self.first_bad < 0, loss, self.last_finite)

    def observe_grad_norm(self, norm: Optional[torch.Tensor]) -> None:
        """The step's total gradient norm (clip_grad_norm_ computes it anyway), after that step's losses."""
        if norm is None or not self.check_grads or not self.pending:
            return
        if hasattr(norm, "full_tensor"):  # FSDP2: clip_grad_norm_ returns a replicated DTensor (no communication)
            norm = norm.full_tensor()
        norm = norm.detach().float()
        self._mark(~torch.isfinite(norm), torch.zeros_like(norm), norm)

    def _describe(self, step: int) -> str:
        last = float(self.last_finite)
        last_text = "none" if last != last else f"{last:.6g}"
        index = int(self.first_bad)
        if index < 0:
            return (f"non-finite (or overflowing) weights after step {step}, with finite losses and gradient norms; "
                    f"last finite loss {last_text}; stopped before saving them")
        bad_step, task = self.pending[index]
        loss = float(self.bad_loss)
        what = f"loss {loss}" if loss != loss or abs(loss) == float("inf") else f"gradient norm {float(self.bad_norm)}"
        return (f"training diverged: non-finite {what} at step {bad_step}, task {task}; last finite loss "
                f"{last_text}; stopped before saving anything from it (lower --learning_rate, or check "
                "the data)")

    def check(self, params: Iterable[torch.Tensor], step: int) -> None:
        """Raise NonFiniteError (on every rank) if any rank saw a non-finite loss, gradient norm or weight."""
        weights_ok = weights_finite(params)
        flag = ((self.first_bad >= 0) | ~weights_ok.to(self.first_bad.device)).float()
        if dist_utils.active():
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if not flag.item():
            self.pending.clear()
            return
        mine = self._describe(step) if (self.first_bad >= 0 or not weights_ok) else None
        messages = [m for m in dist_utils.all_gather_objects(mine) if m is not None]
        raise NonFiniteError(messages[0])
