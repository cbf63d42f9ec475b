"""SAGE optimizers (Adamax-, AdamW-, Adam-, SGD-SAGE), their plain bases, param groups and schedules.

One optimizer object serves a whole model: each param group carries a ``sage`` flag, so the authors' "mask"
groups (SAGE-scaled) and "common" groups (plain base update) live side by side. The update math is in
:mod:`module.sage_math`; this module does the torch.optim bookkeeping (state, validation, implementation choice).

Implementations, chosen per step like torch does:
- for-loop (``foreach=False``): the readable reference, one tensor at a time;
- foreach (``foreach=True``; default on CUDA): ``torch._foreach_*`` over same-device/dtype lists;
- fused (``fused=True``): no parameter-sized temporaries — one Triton multi-tensor launch per param group on
  CUDA (:mod:`module.sage_triton`), ``torch.compile`` of the for-loop math (one fused loop per tensor) on CPU.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Optional

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from module import sage_math
from module.plain_optim import RAdam
from module.sage_math import FORMULAS

__all__ = [
    "AdamaxSAGE", "AdamWSAGE", "AdamSAGE", "SGDSAGE", "OPTIMIZERS", "build_optimizer", "sage_param_groups",
    "DEFAULT_SAGE_PATTERNS", "DEFAULT_NO_DECAY", "warmup_linear", "SCHEDULES", "build_schedule", "FORMULAS",
]


# ----------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------
def _check_unit_interval(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"invalid {name}: {value} (must be in [0, 1))")


def _validate_group(group: dict) -> None:
    """Every group, including ones added later with overrides, gets the same checks."""
    if isinstance(group["lr"], Tensor) or group["lr"] < 0.0:
        raise ValueError(f"invalid learning rate: {group['lr']} (must be a float >= 0)")
    if group["eps"] < 0.0:
        raise ValueError(f"invalid eps: {group['eps']} (must be >= 0)")
    if group["weight_decay"] < 0.0:
        raise ValueError(f"invalid weight_decay: {group['weight_decay']} (must be >= 0)")
    if "betas" in group:
        b1, b2 = group["betas"]
        _check_unit_interval("beta1 (betas[0])", b1)
        _check_unit_interval("beta2 (betas[1])", b2)
    _check_unit_interval("beta3", group["beta3"])
    if group["formula"] not in FORMULAS:
        raise ValueError(f"invalid SAGE formula {group['formula']!r}: expected one of {', '.join(FORMULAS)}")
    if not isinstance(group["sage"], bool):
        raise ValueError(f"invalid sage flag {group['sage']!r}: expected True or False")


# ----------------------------------------------------------------------------------------------------------
# Shared optimizer plumbing
# ----------------------------------------------------------------------------------------------------------
class _SageOptimizer(Optimizer):
    """Common state handling and implementation dispatch; subclasses supply the math for one group."""

    buffer_names: tuple[str, ...] = ()
    single_fn: Callable[..., None]
    default_formula = "reference"
    #: offset added to ``last_epoch`` by :func:`build_schedule`, reproducing where the authors' optimizer
    #: evaluated its internal schedule (0: before its step counter moves, 1: after).
    schedule_step_offset = 0

    def __init__(self, params, defaults: dict, foreach: Optional[bool], fused: Optional[bool]):
        if foreach and fused:
            raise ValueError("foreach and fused cannot both be True")
        if defaults["formula"] is None:
            defaults["formula"] = self.default_formula
        _validate_group(defaults)
        self._foreach_choice = foreach
        self._fused_choice = fused
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        _validate_group(self.param_groups[-1])

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)

    # -- state --------------------------------------------------------------------------------------------
    def _state_for(self, p: Tensor, group: dict) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            for name in self.buffer_names:
                state[name] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if group["sage"] and "exp_avg_ipt" not in state:
            state["exp_avg_ipt"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def _collect(self, group: dict) -> tuple[list[Tensor], list[Tensor], list[dict]]:
        """Parameters that have a gradient this step (None grads and frozen params are skipped)."""
        params, grads, states = [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            if torch.is_complex(p):
                raise RuntimeError(f"{type(self).__name__} does not support complex parameters")
            params.append(p)
            grads.append(p.grad)
            states.append(self._state_for(p, group))
        if group["maximize"] and grads:
            grads = torch._foreach_neg(grads)
        return params, grads, states

    # -- implementation choice -----------------------------------------------------------------------------
    def _implementation(self, params: list[Tensor]) -> str:
        if self._fused_choice:
            return "fused"
        if self._foreach_choice is None:
            # torch's rule: multi-tensor by default when every tensor is on a GPU-like device.
            on_accel = all(p.device.type not in ("cpu", "meta") for p in params)
            return "foreach" if on_accel else "forloop"
        return "foreach" if self._foreach_choice else "forloop"

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, states = self._collect(group)
            if not params:
                continue
            torch._foreach_add_([state["step"] for state in states], 1.0)
            steps = [float(state["step"]) for state in states]
            impl = self._implementation(params)
            if impl == "forloop":
                self._forloop(group, params, grads, states, steps)
            elif impl == "foreach":
                self._foreach(group, params, grads, states, steps)
            else:
                self._fused(group, params, grads, states, steps)
        return loss

    def _buffers(self, states: list[dict], name: str) -> list[Tensor]:
        return [s[name] for s in states]

    def _ipt_avgs(self, group: dict, states: list[dict]) -> Optional[list[Tensor]]:
        return [s["exp_avg_ipt"] for s in states] if group["sage"] else None

    def _forloop(self, group, params, grads, states, steps) -> None:
        hyper = self._hyper(group)
        for p, g, s, t in zip(params, grads, states, steps):
            self.single_fn(p, g, *self._state_args(s), **self._scalars(group, t), **hyper)

    def _state_args(self, state: dict) -> tuple:
        """Positional state tensors of ``single_fn`` after (param, grad)."""
        return tuple(state[name] for name in self.buffer_names) + (state.get("exp_avg_ipt"),)

    def _foreach(self, group, params, grads, states, steps) -> None:
        """Split into same-device/dtype (and same-step) buckets and run the list math on each."""
        buckets: dict[tuple, list[int]] = {}
        for i, p in enumerate(params):
            buckets.setdefault((p.device, p.dtype, steps[i]), []).append(i)
        for (_, _, step), idx in buckets.items():
            pick = lambda xs: None if xs is None else [xs[i] for i in idx]  # noqa: E731
            bucket_states = [states[i] for i in idx]
            self._multi(group, pick(params), pick(grads), bucket_states, step)

    def _fused(self, group, params, grads, states, steps) -> None:
        from module import sage_fused
        sage_fused.fused_group_step(self, group, params, grads, states, steps)

    # -- per-algorithm hooks ---------------------------------------------------------------------------------
    def _hyper(self, group: dict) -> dict:
        """Step-independent keyword arguments of the update."""
        b1, b2 = group["betas"]
        return dict(beta1=b1, beta2=b2, **self._common(group))

    def _scalars(self, group: dict, step: float) -> dict:
        """Step-dependent scalars of the update (learning rates, bias corrections) for one tensor."""
        raise NotImplementedError

    def _common(self, group: dict) -> dict:
        return dict(beta3=group["beta3"], eps=group["eps"], weight_decay=group["weight_decay"],
                    formula=group["formula"], sage=group["sage"])

    def _ipt_correction(self, group: dict, step: float) -> float:
        """Bias correction of Ī: 1/(1-β3^t) where the algorithm uses Î, else 1."""
        return 1.0 / (1.0 - group["beta3"] ** step) if self._corrects_ipt(group) else 1.0

    def _corrects_ipt(self, group: dict) -> bool:
        raise NotImplementedError

    # -- introspection ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def sage_stats(self) -> dict[str, float]:
        """Mean sensitivity EMA Ī and its mean over SAGE parameters (for logging; costs one pass)."""
        total, count = 0.0, 0
        for group in self.param_groups:
            if not group["sage"]:
                continue
            for p in group["params"]:
                ipt = self.state.get(p, {}).get("exp_avg_ipt")
                if ipt is not None and ipt.numel():
                    total += float(ipt.double().sum())
                    count += ipt.numel()
        return {"sage/mean_sensitivity_ema": total / count} if count else {}


# ----------------------------------------------------------------------------------------------------------
# Adamax-SAGE
# ----------------------------------------------------------------------------------------------------------
class AdamaxSAGE(_SageOptimizer):
    """Adamax with SAGE, as the authors' ``UnstructAwareAdamax`` (``--optimizer usadamax``).

    Base update m/(max(β2·u, |g|+ε) + ε) + wd·θ with no bias correction; in SAGE groups it is scaled
    elementwise by the modulating term. With ``sage=False`` everywhere this is the authors' plain Adamax.
    ``formula='reference'`` (default) uses Ī uncorrected, as the authors do; other formulas use Î = Ī/(1−β3^t).
    """

    buffer_names = ("exp_avg", "exp_inf")
    single_fn = staticmethod(sage_math.single_adamax)
    schedule_step_offset = 0

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), beta3: float = 0.75,
                 eps: float = 1e-6, weight_decay: float = 0.0, *, sage: bool = True, formula: Optional[str] = None,
                 maximize: bool = False, foreach: Optional[bool] = None, fused: Optional[bool] = None):
        defaults = dict(lr=lr, betas=tuple(betas), beta3=beta3, eps=eps, weight_decay=weight_decay, sage=sage,
                        formula=formula, maximize=maximize)
        super().__init__(params, defaults, foreach, fused)

    def _corrects_ipt(self, group: dict) -> bool:
        return group["formula"] != "reference"

    def _scalars(self, group: dict, step: float) -> dict:
        return dict(lr=group["lr"], ipt_correction=self._ipt_correction(group, step))

    def _multi(self, group, params, grads, states, step) -> None:
        sage_math.multi_adamax(params, grads, self._buffers(states, "exp_avg"), self._buffers(states, "exp_inf"),
                               self._ipt_avgs(group, states), lr=group["lr"],
                               ipt_corrections=[self._ipt_correction(group, step)] * len(params),
                               **self._hyper(group))


# ----------------------------------------------------------------------------------------------------------
# AdamW-SAGE
# ----------------------------------------------------------------------------------------------------------
class AdamWSAGE(_SageOptimizer):
    """AdamW with SAGE, as the authors' ``UnstructAwareAdamW`` (``--optimizer usadamw``).

    With ``correct_bias`` the step size carries √(1−β2^t)/(1−β1^t) and SAGE uses Î = Ī/(1−β3^t) (so SAGE
    parameters do not move on step 1: Î₁ = I₁). Decoupled decay θ −= lr·wd·θ comes after the update;
    ``decay_lr='base'`` (default, the authors') uses the unscheduled base lr, ``'scheduled'`` the current one.
    """

    buffer_names = ("exp_avg", "exp_avg_sq")
    single_fn = staticmethod(sage_math.single_adamw)
    schedule_step_offset = 1

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), beta3: float = 0.75,
                 eps: float = 1e-6, weight_decay: float = 0.0, *, correct_bias: bool = True,
                 decay_lr: str = "base", sage: bool = True, formula: Optional[str] = None, maximize: bool = False,
                 foreach: Optional[bool] = None, fused: Optional[bool] = None):
        if decay_lr not in ("base", "scheduled"):
            raise ValueError(f"invalid decay_lr {decay_lr!r}: expected 'base' or 'scheduled'")
        defaults = dict(lr=lr, betas=tuple(betas), beta3=beta3, eps=eps, weight_decay=weight_decay,
                        correct_bias=correct_bias, decay_lr=decay_lr, sage=sage, formula=formula, maximize=maximize)
        super().__init__(params, defaults, foreach, fused)

    def _corrects_ipt(self, group: dict) -> bool:
        return bool(group["correct_bias"])

    def _step_correction(self, group: dict, step: float) -> float:
        if not group["correct_bias"]:
            return 1.0
        b1, b2 = group["betas"]
        return math.sqrt(1.0 - b2 ** step) / (1.0 - b1 ** step)

    @staticmethod
    def _decay_lr(group: dict) -> float:
        return group.get("initial_lr", group["lr"]) if group["decay_lr"] == "base" else group["lr"]

    def _scalars(self, group: dict, step: float) -> dict:
        return dict(lr=group["lr"], decay_lr=self._decay_lr(group),
                    step_correction=self._step_correction(group, step),
                    ipt_correction=self._ipt_correction(group, step))

    def _multi(self, group, params, grads, states, step) -> None:
        n = len(params)
        sage_math.multi_adamw(params, grads, self._buffers(states, "exp_avg"), self._buffers(states, "exp_avg_sq"),
                              self._ipt_avgs(group, states), lr=group["lr"], decay_lr=self._decay_lr(group),
                              step_corrections=[self._step_correction(group, step)] * n,
                              ipt_corrections=[self._ipt_correction(group, step)] * n, **self._hyper(group))


# ----------------------------------------------------------------------------------------------------------
# Adam-SAGE
# ----------------------------------------------------------------------------------------------------------
class AdamSAGE(_SageOptimizer):
    """Adam with SAGE, the paper's Algorithm 2 (``--optimizer usadam``): bias-corrected moments and Î.

    ``weight_decay`` is L2 folded into the moments (as ``torch.optim.Adam``); the sensitivity uses the loss
    gradient alone. Default formula: the paper's (U+ε)/(Î+ε).
    """

    buffer_names = ("exp_avg", "exp_avg_sq")
    single_fn = staticmethod(sage_math.single_adam)
    default_formula = "paper"

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), beta3: float = 0.75,
                 eps: float = 1e-6, weight_decay: float = 0.0, *, sage: bool = True, formula: Optional[str] = None,
                 maximize: bool = False, foreach: Optional[bool] = None, fused: Optional[bool] = None):
        defaults = dict(lr=lr, betas=tuple(betas), beta3=beta3, eps=eps, weight_decay=weight_decay, sage=sage,
                        formula=formula, maximize=maximize)
        super().__init__(params, defaults, foreach, fused)

    def _corrects_ipt(self, group: dict) -> bool:
        return True

    def _scalars(self, group: dict, step: float) -> dict:
        b1, b2 = group["betas"]
        return dict(lr=group["lr"], bias_correction1=1.0 - b1 ** step,
                    bias_correction2_sqrt=math.sqrt(1.0 - b2 ** step),
                    ipt_correction=self._ipt_correction(group, step))

    def _multi(self, group, params, grads, states, step) -> None:
        n, sc = len(params), self._scalars(group, step)
        sage_math.multi_adam(params, grads, self._buffers(states, "exp_avg"), self._buffers(states, "exp_avg_sq"),
                             self._ipt_avgs(group, states), lr=group["lr"],
                             bias_corrections1=[sc["bias_correction1"]] * n,
                             bias_corrections2_sqrt=[sc["bias_correction2_sqrt"]] * n,
                             ipt_corrections=[sc["ipt_correction"]] * n, **self._hyper(group))


# ----------------------------------------------------------------------------------------------------------
# SGD-SAGE
# ----------------------------------------------------------------------------------------------------------
class SGDSAGE(_SageOptimizer):
    """SGD with SAGE, the paper's Algorithm 1 (``--optimizer ussgd``), with torch.optim.SGD's momentum options.

    Algorithm 1 uses the uncorrected EMA Ī; default formula: the paper's (U+ε)/(Ī+ε).
    """

    single_fn = staticmethod(sage_math.single_sgd)
    default_formula = "paper"

    def __init__(self, params, lr: float = 1e-2, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, beta3: float = 0.75, eps: float = 1e-6, *,
                 sage: bool = True, formula: Optional[str] = None, maximize: bool = False,
                 foreach: Optional[bool] = None, fused: Optional[bool] = None):
        if momentum < 0.0:
            raise ValueError(f"invalid momentum: {momentum} (must be >= 0)")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires momentum > 0 and dampening = 0")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, beta3=beta3, eps=eps, sage=sage, formula=formula, maximize=maximize)
        super().__init__(params, defaults, foreach, fused)

    def _state_for(self, p: Tensor, group: dict) -> dict:
        state = super()._state_for(p, group)
        if group["momentum"] != 0 and "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def _corrects_ipt(self, group: dict) -> bool:
        return False

    def _state_args(self, state: dict) -> tuple:
        return state.get("momentum_buffer"), state.get("exp_avg_ipt")

    def _scalars(self, group: dict, step: float) -> dict:
        return dict(lr=group["lr"], first_step=step == 1.0, ipt_correction=self._ipt_correction(group, step))

    def _hyper(self, group: dict) -> dict:
        return dict(momentum=group["momentum"], dampening=group["dampening"], nesterov=group["nesterov"],
                    **self._common(group))

    def _multi(self, group, params, grads, states, step) -> None:
        bufs = self._buffers(states, "momentum_buffer") if group["momentum"] != 0 else None
        sage_math.multi_sgd(params, grads, bufs, self._ipt_avgs(group, states), lr=group["lr"],
                            first_step=step == 1.0,
                            ipt_corrections=[self._ipt_correction(group, step)] * len(params), **self._hyper(group))


# ----------------------------------------------------------------------------------------------------------
# Registry and parameter groups
# ----------------------------------------------------------------------------------------------------------
#: CLI name -> (class, whether SAGE is on). The plain names reuse the same classes with SAGE off everywhere, so
#: a baseline and its SAGE variant differ only in the modulating term.
OPTIMIZERS: dict[str, tuple[type[_SageOptimizer], bool]] = {
    "usadamax": (AdamaxSAGE, True),
    "usadamw": (AdamWSAGE, True),
    "usadam": (AdamSAGE, True),
    "ussgd": (SGDSAGE, True),
    "adamax": (AdamaxSAGE, False),
    "adamw": (AdamWSAGE, False),
    "adam": (AdamSAGE, False),
    "sgd": (SGDSAGE, False),
    "radam": (RAdam, False),  # torch.optim.RAdam, as in the authors' repo
}

DEFAULT_SAGE_PATTERNS = ("attention.self", "attention.output.dense", "output.dense", "intermediate.dense")
DEFAULT_NO_DECAY = ("bias", "gamma", "beta", "LayerNorm.bias", "LayerNorm.weight")


def sage_param_groups(named_params: Iterable[tuple[str, Tensor]] | torch.nn.Module, weight_decay: float = 0.01,
                      sage_patterns: Iterable[str] = DEFAULT_SAGE_PATTERNS,
                      no_decay: Iterable[str] = DEFAULT_NO_DECAY) -> list[dict]:
    """The authors' grouping: SAGE on names containing a ``sage_patterns`` entry, no decay on ``no_decay``.

    Returns up to four groups (sage × decay), each tagged with ``sage``, ``weight_decay`` and a ``name``; empty
    groups are dropped. Patterns are plain substrings of the parameter name, as in the reference.
    """
    if isinstance(named_params, torch.nn.Module):
        named_params = named_params.named_parameters()
    sage_patterns, no_decay = tuple(sage_patterns), tuple(no_decay)
    buckets: dict[tuple[bool, bool], list[Tensor]] = {}
    for name, p in named_params:
        is_sage = any(pat in name for pat in sage_patterns)
        decays = not any(nd in name for nd in no_decay)
        buckets.setdefault((is_sage, decays), []).append(p)
    groups = []
    for (is_sage, decays) in ((True, True), (True, False), (False, True), (False, False)):
        params = buckets.get((is_sage, decays))
        if params:
            groups.append({"params": params, "sage": is_sage, "weight_decay": weight_decay if decays else 0.0,
                           "name": f"{'sage' if is_sage else 'common'}_{'decay' if decays else 'no_decay'}"})
    return groups


def build_optimizer(name: str, params, **kwargs) -> _SageOptimizer:
    """Create the optimizer registered as ``name`` (``--optimizer``); plain names switch SAGE off in every group."""
    key = name.lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
    cls, use_sage = OPTIMIZERS[key]
    params = list(params)
    if not use_sage:
        params = [dict(g, sage=False) if isinstance(g, dict) else g for g in params]
    return cls(params, sage=use_sage, **kwargs)


# ----------------------------------------------------------------------------------------------------------
# Schedules (torch LambdaLR multipliers of the base lr)
# ----------------------------------------------------------------------------------------------------------
def warmup_linear(x: float, warmup: float = 0.002) -> float:
    """The authors' schedule (pytorch-pretrained-bert 0.6): x/warmup while x < warmup, else 1 − x.

    Discontinuous at x = warmup (it jumps from ~1 to 1 − warmup) and negative past x = 1; kept as is so that
    ``--warmup_schedule warmup_linear`` reproduces the reference runs.
    """
    return x / warmup if x < warmup else 1.0 - x


def warmup_linear_decay(x: float, warmup: float = 0.1) -> float:
    """Linear warmup to 1, then linear decay to 0 at x = 1 (continuous; the usual BERT schedule)."""
    if x < warmup:
        return x / warmup
    return max(0.0, (1.0 - x) / max(1e-12, 1.0 - warmup))


def warmup_constant(x: float, warmup: float = 0.1) -> float:
    return x / warmup if x < warmup else 1.0


def warmup_cosine(x: float, warmup: float = 0.1) -> float:
    if x < warmup:
        return x / warmup
    progress = min(1.0, (x - warmup) / max(1e-12, 1.0 - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


SCHEDULES: dict[str, Callable[[float, float], float]] = {
    "warmup_linear": warmup_linear,
    "linear": warmup_linear_decay,
    "constant": warmup_constant,
    "cosine": warmup_cosine,
}


class ScheduleMultiplier:
    """Picklable LambdaLR multiplier: ``SCHEDULES[name]((step + offset) / total_steps, warmup)``."""

    def __init__(self, name: str, total_steps: int, warmup: float, offset: int = 0):
        if name not in SCHEDULES:
            raise ValueError(f"unknown schedule {name!r}; known: {', '.join(SCHEDULES)}")
        if total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        if not 0.0 <= warmup < 1.0:
            raise ValueError(f"invalid warmup ratio {warmup} (must be in [0, 1))")
        self.name, self.total_steps, self.warmup, self.offset = name, total_steps, warmup, offset

    def __call__(self, step: int) -> float:
        # x >= 0, so warmup = 0 never takes the (dividing) warmup branch.
        return SCHEDULES[self.name]((step + self.offset) / self.total_steps, self.warmup)


def build_schedule(optimizer: Optimizer, name: str, total_steps: int, warmup: float = 0.1) -> LambdaLR:
    """A ``torch.optim.lr_scheduler.LambdaLR`` for ``name``; call ``scheduler.step()`` after each optimizer step.

    The authors' optimizers evaluated their schedule at different points of their step counter (Adamax before
    incrementing it, so its very first step has lr 0; AdamW after); ``optimizer.schedule_step_offset`` keeps that.
    """
    offset = getattr(optimizer, "schedule_step_offset", 0)
    return LambdaLR(optimizer, ScheduleMultiplier(name, total_steps, warmup, offset))
