"""SAGE optimizers (Adamax-, AdamW-, Adam-, SGD-SAGE), their plain bases, param groups and schedules
(:mod:`module.schedules`, re-exported here).

One optimizer object serves a whole model: each param group carries a ``sage`` flag, so the authors' "mask"
groups (SAGE-scaled) and "common" groups (plain base update) live side by side. As in ``torch.optim.Adam``, the
classes only validate, gather each group's tensors into lists and call one functional entry per algorithm
(:mod:`module.sage.functional`), which picks the for-loop, foreach or fused implementation.

Unlike ``torch.optim``: state of float16/bfloat16 parameters is float32
(:func:`module.sage.updates.state_dtype`), step counts stay CPU tensors whatever the implementation (every
implementation reads them on the host), and ``load_state_dict`` keeps both, and this optimizer's own
``foreach``/``fused`` choice, over the saved ones.
"""
from __future__ import annotations

from itertools import chain
from typing import Any, Callable, Iterable, Optional, Union

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import _get_scalar_dtype

from module.plain_optim import RAdam
from module.sage.dispatch import Backend
from module.sage.functional import sage_adam, sage_adamax, sage_adamw, sage_sgd
from module.sage.updates import FORMULAS, state_dtype
from module.schedules import SCHEDULES, build_schedule, warmup_cosine, warmup_linear

__all__ = [
    "AdamaxSAGE", "AdamWSAGE", "AdamSAGE", "SGDSAGE", "OPTIMIZERS", "build_optimizer", "sage_param_groups",
    "DEFAULT_SAGE_PATTERNS", "DEFAULT_NO_DECAY", "warmup_linear", "warmup_cosine", "SCHEDULES", "build_schedule",
    "FORMULAS",
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
    if group.get("foreach") and group.get("fused"):
        raise ValueError("foreach and fused cannot both be True")


# ----------------------------------------------------------------------------------------------------------
# Shared optimizer plumbing
# ----------------------------------------------------------------------------------------------------------
class _SageOptimizer(Optimizer):
    """State creation, gathering and the step shared by the four optimizers; a subclass names its functional
    ``entry``, its state ``buffer_names`` and the keywords it takes from a group (``_group_kwargs``)."""

    #: state buffers besides Ī, created zero on a parameter's first step
    buffer_names: tuple[str, ...] = ()
    default_formula = "reference"
    #: offset added to the scheduler's step count by :func:`build_schedule`, reproducing where the authors'
    #: optimizer evaluated its internal schedule (0: before its step counter moves, 1: after).
    schedule_step_offset = 0

    def __init__(self, params, defaults: dict):
        if defaults["formula"] is None:
            defaults["formula"] = self.default_formula
        _validate_group(defaults)
        super().__init__(params, defaults)
        # GradScaler hands fused steps grad_scale/found_inf instead of unscaling the gradients itself.
        self._step_supports_amp_scaling = bool(defaults["fused"])
        #: Which backend runs fused steps: None ($SAGE_FUSED_BACKEND, else the default route), a name of
        #: :data:`module.sage.dispatch.BACKENDS` or a backend object. Not a group key: state dicts stay plain.
        self.fused_backend: Union[str, Backend, None] = None

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        _validate_group(self.param_groups[-1])

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)

    #: Group keys that say how a step is computed, not what it computes: a loaded state dict keeps this
    #: optimizer's values (a checkpoint saved with fused=True must not override --optim_impl foreach).
    IMPLEMENTATION_KEYS = ("foreach", "fused")

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's load, except that the implementation choice stays this optimizer's, step counts stay on the
        CPU (torch moves them to the parameter's device for fused groups: a host sync per tensor and step) and
        the state of half-precision parameters stays float32 (torch casts it to the parameter's dtype)."""
        saved_groups = state_dict["param_groups"]
        groups = [dict(saved, **{k: own[k] for k in self.IMPLEMENTATION_KEYS if k in own})
                  for saved, own in zip(saved_groups, self.param_groups)] + list(saved_groups[len(self.param_groups):])
        super().load_state_dict(dict(state_dict, param_groups=groups))
        ids = chain.from_iterable(g["params"] for g in saved_groups)
        for saved_id, p in zip(ids, chain.from_iterable(g["params"] for g in self.param_groups)):
            state, saved = self.state.get(p), state_dict["state"].get(saved_id)
            if not state or saved is None:
                continue
            for key, value in saved.items():
                if not isinstance(value, Tensor):
                    continue
                if key == "step":
                    state[key] = value if value.device.type == "cpu" else value.detach().to("cpu")
                elif value.is_floating_point() and state[key].dtype != state_dtype(p.dtype):
                    state[key] = value.to(device=p.device, dtype=state_dtype(p.dtype))

    def _init_group(self, group: dict, params: list, grads: list, buffers: list[list], ipt_avgs: list,
                    steps: list) -> None:
        """Append the group's parameters that have a gradient (others are skipped) and their state."""
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            if torch.is_complex(p):
                raise RuntimeError(f"{type(self).__name__} does not support complex parameters")
            state = self.state[p]
            if not state:
                state["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype())
                for name in self.buffer_names:
                    state[name] = self._zero_state(p)
            if group["sage"] and "exp_avg_ipt" not in state:
                state["exp_avg_ipt"] = self._zero_state(p)
            params.append(p)
            grads.append(p.grad)
            for name, column in zip(self.buffer_names, buffers):
                column.append(state[name])
            if group["sage"]:
                ipt_avgs.append(state["exp_avg_ipt"])
            steps.append(state["step"])

    @staticmethod
    def _zero_state(p: Tensor) -> Tensor:
        """A zero state buffer for ``p``: its layout, dtype ``state_dtype(p.dtype)`` (float32 for half precision)."""
        return torch.zeros_like(p, dtype=state_dtype(p.dtype), memory_format=torch.preserve_format)

    def _gathered(self, group: dict, n_buffers: int) -> tuple:
        params, grads, ipt_avgs, steps = [], [], [], []
        buffers = [[] for _ in range(n_buffers)]
        self._init_group(group, params, grads, buffers, ipt_avgs, steps)
        return params, grads, buffers, (ipt_avgs if group["sage"] else None), steps

    @staticmethod
    def entry(*args, **kwargs) -> None:
        """The algorithm's functional entry (:mod:`module.sage.functional`); set by each subclass."""
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None):
        """One update of every group: gather its tensors, then call the algorithm's functional entry."""
        loss = self._closure_loss(closure)
        for group in self.param_groups:
            params, grads, buffers, ipt_avgs, steps = self._gathered(group, len(self.buffer_names))
            self.entry(params, grads, *self._buffers(group, params, buffers), ipt_avgs, steps,
                       **self._group_kwargs(group), **self._common(group))
        return loss

    def _buffers(self, group: dict, params: list[Tensor], buffers: list[list[Tensor]]) -> list:
        """The state columns the entry takes after the gradients (default: ``buffer_names``' columns)."""
        return buffers

    def _group_kwargs(self, group: dict) -> dict:
        """The entry's algorithm-specific keywords from a group (default: the two betas)."""
        beta1, beta2 = group["betas"]
        return dict(beta1=beta1, beta2=beta2)

    def _common(self, group: dict) -> dict:
        """Keyword arguments every functional entry takes from a group."""
        return dict(foreach=group["foreach"], fused=group["fused"], grad_scale=getattr(self, "grad_scale", None),
                    found_inf=getattr(self, "found_inf", None), lr=group["lr"], beta3=group["beta3"],
                    eps=group["eps"], weight_decay=group["weight_decay"], formula=group["formula"],
                    maximize=group["maximize"], fused_backend=getattr(self, "fused_backend", None))

    @staticmethod
    def _closure_loss(closure: Optional[Callable[[], Any]]):
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()

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
    The rule, step by step: ``docs/sage_update_rule.md`` (the authors' Adamax-SAGE).
    """

    buffer_names = ("exp_avg", "exp_inf")
    schedule_step_offset = 0
    entry = staticmethod(sage_adamax)

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), beta3: float = 0.75,
                 eps: float = 1e-6, weight_decay: float = 0.0, *, sage: bool = True, formula: Optional[str] = None,
                 maximize: bool = False, foreach: Optional[bool] = None, fused: Optional[bool] = None):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), beta3=beta3, eps=eps, weight_decay=weight_decay,
                                      sage=sage, formula=formula, maximize=maximize, foreach=foreach, fused=fused))


# ----------------------------------------------------------------------------------------------------------
# AdamW-SAGE
# ----------------------------------------------------------------------------------------------------------
class AdamWSAGE(_SageOptimizer):
    """AdamW with SAGE, as the authors' ``UnstructAwareAdamW`` (``--optimizer usadamw``).

    With ``correct_bias`` the step size carries √(1−β2^t)/(1−β1^t) and SAGE uses Î = Ī/(1−β3^t) (so SAGE
    parameters do not move on step 1: Î₁ = I₁). Decoupled decay θ −= lr·wd·θ comes after the update;
    ``decay_lr='base'`` (default, the authors') uses the unscheduled base lr, ``'scheduled'`` the current one.
    The rule, step by step: ``docs/sage_update_rule.md`` (the authors' AdamW-SAGE).
    """

    buffer_names = ("exp_avg", "exp_avg_sq")
    schedule_step_offset = 1
    entry = staticmethod(sage_adamw)

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), beta3: float = 0.75,
                 eps: float = 1e-6, weight_decay: float = 0.0, *, correct_bias: bool = True,
                 decay_lr: str = "base", sage: bool = True, formula: Optional[str] = None, maximize: bool = False,
                 foreach: Optional[bool] = None, fused: Optional[bool] = None):
        if decay_lr not in ("base", "scheduled"):
            raise ValueError(f"invalid decay_lr {decay_lr!r}: expected 'base' or 'scheduled'")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), beta3=beta3, eps=eps, weight_decay=weight_decay,
                                      correct_bias=correct_bias, decay_lr=decay_lr, sage=sage, formula=formula,
                                      maximize=maximize, foreach=foreach, fused=fused))

    def _group_kwargs(self, group: dict) -> dict:
        decay_lr = group.get("initial_lr", group["lr"]) if group["decay_lr"] == "base" else group["lr"]
        return dict(super()._group_kwargs(group), decay_lr=decay_lr, correct_bias=bool(group["correct_bias"]))


# ----------------------------------------------------------------------------------------------------------
# Adam-SAGE
# ----------------------------------------------------------------------------------------------------------
class AdamSAGE(_SageOptimizer):
    """Adam with SAGE, the paper's Algorithm 2 (``--optimizer usadam``): bias-corrected moments and Î.

    ``weight_decay`` is L2 folded into the moments (as ``torch.optim.Adam``); the sensitivity uses the loss
    gradient alone. Default formula: the paper's (U+ε)/(Î+ε). The rule: ``docs/sage_update_rule.md``.
    """

    buffer_names = ("exp_avg", "exp_avg_sq")
    default_formula = "paper"
    entry = staticmethod(sage_adam)

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), beta3: float = 0.75,
                 eps: float = 1e-6, weight_decay: float = 0.0, *, sage: bool = True, formula: Optional[str] = None,
                 maximize: bool = False, foreach: Optional[bool] = None, fused: Optional[bool] = None):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), beta3=beta3, eps=eps, weight_decay=weight_decay,
                                      sage=sage, formula=formula, maximize=maximize, foreach=foreach, fused=fused))


# ----------------------------------------------------------------------------------------------------------
# SGD-SAGE
# ----------------------------------------------------------------------------------------------------------
class SGDSAGE(_SageOptimizer):
    """SGD with SAGE, the paper's Algorithm 1 (``--optimizer ussgd``), with torch.optim.SGD's momentum options.

    Algorithm 1 uses the uncorrected EMA Ī; default formula: the paper's (U+ε)/(Ī+ε). The rule:
    ``docs/sage_update_rule.md``.
    """

    default_formula = "paper"
    entry = staticmethod(sage_sgd)

    def __init__(self, params, lr: float = 1e-2, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, beta3: float = 0.75, eps: float = 1e-6, *,
                 sage: bool = True, formula: Optional[str] = None, maximize: bool = False,
                 foreach: Optional[bool] = None, fused: Optional[bool] = None):
        if momentum < 0.0:
            raise ValueError(f"invalid momentum: {momentum} (must be >= 0)")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires momentum > 0 and dampening = 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, beta3=beta3, eps=eps, sage=sage, formula=formula,
                                      maximize=maximize, foreach=foreach, fused=fused))

    def _buffers(self, group: dict, params: list[Tensor], buffers: list[list[Tensor]]) -> list:
        return [[self._momentum_buffer(p) for p in params] if group["momentum"] != 0 else None]

    def _group_kwargs(self, group: dict) -> dict:
        return dict(momentum=group["momentum"], dampening=group["dampening"], nesterov=group["nesterov"])

    def _momentum_buffer(self, p: Tensor) -> Tensor:
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = self._zero_state(p)
        return state["momentum_buffer"]


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
