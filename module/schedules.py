"""Learning-rate schedules: transformers' standard ones, plus pytorch-pretrained-bert 0.6's, which the authors'
optimizers used (``--warmup_schedule``; the first-step details are in ``docs/sage_update_rule.md``).

transformers is imported only when one of its schedules is built, so the optimizers import without it.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["warmup_linear", "warmup_cosine", "SCHEDULES", "build_schedule"]


def warmup_linear(x: float, warmup: float = 0.002) -> float:
    """The authors' schedule (pytorch-pretrained-bert 0.6): x/warmup while x < warmup, else 1 − x.

    Discontinuous at x = warmup (it jumps from ~1 to 1 − warmup) and negative past x = 1; kept as is so that
    ``--warmup_schedule warmup_linear`` reproduces the reference runs.
    """
    return x / warmup if x < warmup else 1.0 - x


def warmup_cosine(x: float, warmup: float = 0.002) -> float:
    """pytorch-pretrained-bert 0.6's cosine: x/warmup while x < warmup, else 0.5·(1 + cos(π·x)).

    The cosine runs over the whole progress x = step/total, warmup included (transformers' ``cosine`` starts it
    after the warmup), so at x = warmup the multiplier jumps from ~1 down to 0.5·(1 + cos(π·warmup)) (0.9755 for
    warmup 0.1) and reaches 0 at x = 1. That version evaluates the cosine with ``torch.cos`` on a Python float,
    which raises a TypeError at the first step past warmup in the SAGE repository's optimizers (their step count
    is an int); the formula it states is what ``--warmup_schedule warmup_cosine`` trains here.
    """
    return x / warmup if x < warmup else 0.5 * (1.0 + math.cos(math.pi * x))


def _progress_multiplier(step: int, *, formula: Callable[[float, float], float], total_steps: int,
                         warmup: float) -> float:
    return formula(step / total_steps, warmup)


def _progress_schedule(formula: Callable[[float, float], float]) -> Callable[..., LambdaLR]:
    """A LambdaLR factory with transformers' ``get_*_schedule_with_warmup`` signature for a 0.6-style schedule
    ``formula(x, warmup)`` of the training progress x = step/total."""
    def build(optimizer: Optimizer, num_warmup_steps: float, num_training_steps: int,
              last_epoch: int = -1) -> LambdaLR:
        multiplier = functools.partial(_progress_multiplier, formula=formula, total_steps=num_training_steps,
                                       warmup=num_warmup_steps / num_training_steps)
        return LambdaLR(optimizer, multiplier, last_epoch)
    build.__doc__ = f":func:`{formula.__name__}` as a LambdaLR."
    return build


get_warmup_linear_schedule = _progress_schedule(warmup_linear)
get_warmup_cosine_schedule = _progress_schedule(warmup_cosine)


def _linear_schedule(optimizer: Optimizer, num_warmup_steps: float, num_training_steps: int,
                     last_epoch: int = -1) -> LambdaLR:
    """transformers' linear-with-warmup (transformers is imported here, when the schedule is built)."""
    from transformers import get_linear_schedule_with_warmup
    return get_linear_schedule_with_warmup(optimizer, num_warmup_steps, num_training_steps, last_epoch)


def _constant_schedule(optimizer: Optimizer, num_warmup_steps: float, num_training_steps: int,
                       last_epoch: int = -1) -> LambdaLR:
    """transformers' constant-with-warmup: step/W while step < W, else 1 (W = warmup·total). That is 0.6's
    ``warmup_constant`` (x/warmup while x < warmup, else 1) at every step, so both names select it."""
    from transformers import get_constant_schedule_with_warmup
    return get_constant_schedule_with_warmup(optimizer, num_warmup_steps, last_epoch)


def _cosine_schedule(optimizer: Optimizer, num_warmup_steps: float, num_training_steps: int,
                     last_epoch: int = -1) -> LambdaLR:
    """transformers' cosine-with-warmup (one half cosine after the warmup)."""
    from transformers import get_cosine_schedule_with_warmup
    return get_cosine_schedule_with_warmup(optimizer, num_warmup_steps, num_training_steps, last_epoch=last_epoch)


#: --warmup_schedule name -> (optimizer, num_warmup_steps, num_training_steps, last_epoch) -> LambdaLR
SCHEDULES: dict[str, Callable[..., LambdaLR]] = {
    "warmup_linear": get_warmup_linear_schedule,
    "warmup_cosine": get_warmup_cosine_schedule,
    "linear": _linear_schedule,
    "constant": _constant_schedule,
    "cosine": _cosine_schedule,
}


def build_schedule(optimizer: Optimizer, name: str, total_steps: int, warmup: float = 0.1,
                   start_step: int = 0) -> LambdaLR:
    """The LambdaLR for ``name`` with ``warmup`` as a fraction of ``total_steps``; call ``scheduler.step()``
    after each optimizer step.

    The authors' optimizers evaluated their schedule at different points of their step counter (Adamax before
    incrementing it, so its very first step has lr 0; AdamW after); ``optimizer.schedule_step_offset`` keeps
    that by starting the scheduler's count at the offset. ``start_step``: optimizer steps already taken (a run
    continuing another's optimizer state), so the first step's lr is the schedule's at that position; the
    schedule still reaches its end at ``total_steps`` and goes on past it as its formula says.
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; known: {', '.join(SCHEDULES)}")
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if not 0.0 <= warmup < 1.0:
        raise ValueError(f"invalid warmup ratio {warmup} (must be in [0, 1))")
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    last = getattr(optimizer, "schedule_step_offset", 0) + start_step - 1
    if last >= 0:
        for group in optimizer.param_groups:  # what LRScheduler does itself when it starts from -1
            group.setdefault("initial_lr", group["lr"])
    return SCHEDULES[name](optimizer, warmup * total_steps, total_steps, last_epoch=last)
