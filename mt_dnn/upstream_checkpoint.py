"""Checkpoints written by the SAGE repository's and MT-DNN's ``train.py`` (``model_N.pt``), in this project's terms.

Such a file is a dict: ``state`` (their network's state dict), ``optimizer`` (its ``state_dict()``) and
``config`` (their options, with the encoder's config and the pickled task definitions merged in). This module
reads it (through warm_start's weights-only loader), says which head layout its network had, names each of its
tensors as this project's model names them, checks its label order against this run's task definitions, and maps
its optimizer state, by parameter name, onto this project's optimizer.

Their network, ``SANBertNetwork``, registers ``bert`` (the encoder), ``scoring_list`` (one head per task) and,
in the SAGE repository, ``pooler`` (one pooler shared by all tasks), in that order; ``named_parameters()`` follows
it, and so do the indices of the optimizer state. Their heads:

- SAGE repository: ``scoring_list.N`` a linear layer, top-level ``pooler.dense`` -> the ``sage`` layout;
- today's MT-DNN: ``scoring_list.N = Sequential(Pooler, Linear)`` (``N.0.dense``, ``N.1``) -> ``mtdnn``; its
  span and tagging heads are ``Sequential(Dropout, Linear)`` (``N.1``) or a bare linear layer;
- older MT-DNN: bare linear ``scoring_list.N`` over the encoder's own pooler -> ``encoder``;
- their stochastic answer network (``module/san.py``: ``alpha``, ``query_wsum``, ``attn``, ``rnn``,
  ``classifier``) has no counterpart here (this project's SAN head is another network) and is refused.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import torch
from torch.optim.optimizer import _get_scalar_dtype

from data_utils.task_def import TaskDef, TaskType
from mt_dnn.config import TrainConfig

# pytorch-pretrained-bert (MT-DNN's first encoder library) named LayerNorm parameters gamma and beta
_OLD_NAMES = {".LayerNorm.gamma": ".LayerNorm.weight", ".LayerNorm.beta": ".LayerNorm.bias"}
# buffers some transformers versions saved and newer ones rebuild (never trained)
REBUILT_BUFFERS = ("embeddings.position_ids",)
#: the first names of the parameters of MT-DNN's and the SAGE repository's SANClassifier (module/san.py)
SAN_PARTS = ("alpha", "query_wsum.", "attn.", "rnn.", "classifier.")
POOLED_TYPES = (TaskType.Classification, TaskType.Regression, TaskType.Ranking)


def plain(value: Any) -> Any:
    """An enum they pickled (read as a stand-in holding its value) -> that value."""
    args = getattr(value, "args", None)
    return args[0] if isinstance(args, tuple) and len(args) == 1 and hasattr(value, "name") else value


def encoder_key(key: str) -> str:
    """``bert.X`` -> ``encoder.X``, with pytorch-pretrained-bert's LayerNorm names renamed."""
    name = key[len("bert."):]
    for old, new in _OLD_NAMES.items():
        if name.endswith(old):
            name = name[:-len(old)] + new
    return "encoder." + name


# ---------------------------------------------------------------------------------------------- heads and layout
def head_parts(state: Mapping[str, torch.Tensor]) -> dict[int, dict[str, torch.Tensor]]:
    """``scoring_list.N.<rest>`` tensors grouped by N."""
    heads: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        bits = key.split(".", 2)
        if bits[0] == "scoring_list" and len(bits) == 3 and bits[1].isdigit():
            heads.setdefault(int(bits[1]), {})[bits[2]] = tensor
    return heads


def task_types(conf: Mapping) -> list[Optional[TaskType]]:
    """Each saved task definition's task type (None where the file does not say), in scoring_list order."""
    out = []
    for td in conf.get("task_def_list") or []:
        value = plain(getattr(td, "task_type", None))
        out.append(TaskType(value) if isinstance(value, int) and value in {t.value for t in TaskType} else None)
    return out


def detect_layout(state: Mapping[str, torch.Tensor], conf: Mapping) -> Optional[str]:
    """The head layout their network had, from its tensor names; None when no head of it read a pooler."""
    if any(key.startswith("pooler.") for key in state):
        return "sage"
    heads = head_parts(state)
    if any(name.startswith("0.dense.") for parts in heads.values() for name in parts):
        return "mtdnn"
    types = task_types(conf)
    pooled = [i for i, parts in heads.items() if set(parts) == {"weight", "bias"}
              and (i >= len(types) or types[i] is None or types[i] in POOLED_TYPES)]
    return "encoder" if pooled else None


def _is_san(parts: Mapping[str, torch.Tensor]) -> bool:
    return any(name.startswith(SAN_PARTS) for name in parts)


def head_names(task: str, index: int, parts: Mapping[str, torch.Tensor], layout: Optional[str],
               where: str) -> dict[str, str]:
    """Their ``scoring_list.<index>`` part names -> this project's names for ``task``'s head; a head that has no
    counterpart here is refused with what it is."""
    ours = f"heads.{task}"
    names = set(parts)
    if names == {"weight", "bias"}:
        return {"weight": f"{ours}.proj.weight", "bias": f"{ours}.proj.bias"}
    if names == {"1.weight", "1.bias"}:  # MT-DNN's span/tagging head: Sequential(Dropout, Linear)
        return {"1.weight": f"{ours}.proj.weight", "1.bias": f"{ours}.proj.bias"}
    if layout == "mtdnn" and names == {"0.dense.weight", "0.dense.bias", "1.weight", "1.bias"}:
        return {"0.dense.weight": f"{ours}.pooler.dense.weight", "0.dense.bias": f"{ours}.pooler.dense.bias",
                "1.weight": f"{ours}.proj.weight", "1.bias": f"{ours}.proj.bias"}
    shown = sorted(parts)[:4]
    inner = {n[2:] for n in names if n.startswith("1.")}
    if _is_san(parts) or _is_san(dict.fromkeys(inner)):
        behind = " behind its own pooler (scoring_list.N.0)" if inner else ""
        raise ValueError(f"{where}: task {task}: scoring_list.{index} has parameters {shown}, not one linear layer: "
                         f"it is MT-DNN's stochastic answer network (SAN: alpha, query_wsum, attn, rnn, classifier)"
                         f"{behind}, which this project does not implement (its --answer_opt 1 head is another "
                         "network, with other parameters), so it cannot be loaded into this task's head; rename "
                         "the task here to train a fresh head")
    raise ValueError(f"{where}: task {task}: scoring_list.{index} has parameters {shown}, not one linear layer "
                     f"(or MT-DNN's pooler and linear layer), so it cannot be loaded into this task's head")


# ---------------------------------------------------------------------------------------------- labels
def saved_labels(conf: Mapping, index: int) -> Optional[list[str]]:
    """The label order of the ``index``-th saved task definition (its label Vocabulary), or None."""
    tds = conf.get("task_def_list") or []
    vocab = getattr(tds[index], "label_vocab", None) if index < len(tds) else None
    state = getattr(vocab, "state", None)
    if not isinstance(state, dict):
        return None
    if isinstance(state.get("ind2tok"), dict):
        return [str(state["ind2tok"][i]) for i in sorted(state["ind2tok"])]
    if isinstance(state.get("tok2ind"), dict):
        return [str(t) for t, _ in sorted(state["tok2ind"].items(), key=lambda item: item[1])]
    return None


def comparable_labels(task: TaskDef, saved: Optional[Sequence[str]],
                      saved_type: Optional[TaskType] = None) -> Optional[dict]:
    """The saved label order (with the saved task type, when known) as a partial signature for
    mt_dnn/task_labels.check, when it says something about this run's order: the same labels, in any order.
    Labels named otherwise, such as MT-DNN's class ids "0", "1" against names here, say nothing about the order
    and are taken position by position."""
    if saved is None or task.labels is None or sorted(saved) != sorted(task.labels):
        return None
    return {**({"task_type": saved_type.name} if saved_type is not None else {}), "labels": list(saved)}


# ---------------------------------------------------------------------------------------------- optimizer
#: their --optimizer -> (this project's --optimizer, per-parameter buffers besides exp_avg_ipt, groups split by SAGE)
OPTIMIZER_KINDS = {
    "usadamax": ("usadamax", ("exp_avg", "exp_inf"), True),
    "adamax": ("adamax", ("exp_avg", "exp_inf"), False),
    "usadamw": ("usadamw", ("exp_avg", "exp_avg_sq"), True),
    "adamw": ("adamw", ("exp_avg", "exp_avg_sq"), False),
}
_SAGE_PATTERNS = ("attention.self", "attention.output.dense", "output.dense", "intermediate.dense")
_NO_DECAY = ("bias", "gamma", "beta", "LayerNorm.bias", "LayerNorm.weight")
#: their schedule names -> this project's --warmup_schedule (the same formula; the SAGE repository's own names
#: for the rest)
SCHEDULE_NAMES = {"warmup_constant": "constant", "warmup_linear_xdl": "linear"}
#: this project's schedules that stop at 0 past the horizon where theirs goes on (warmup_linear_xdl turns negative)
_CLAMPED = {"warmup_linear_xdl"}


class Unmappable(ValueError):
    """Their optimizer state cannot be placed exactly on this run's optimizer; the message says why."""


@dataclass
class OptimizerState:
    """Their optimizer state in this project's terms."""
    step: int                                   # optimizer steps taken (the largest per-parameter step)
    t_total: int                                # their schedule's horizon
    per_parameter: dict[str, dict[str, Any]]    # this run's parameter name -> its state
    differences: list[str] = field(default_factory=list)   # saved option vs this run's flag, one entry each
    steps: tuple[int, int] = (0, 0)             # smallest and largest per-parameter step


def _their_groups(names: Sequence[str], sage_split: bool) -> list[list[str]]:
    """Their optimizer's parameter groups, in their order: ``_get_usadam_param_groups`` (common decay, mask decay,
    common no-decay, mask no-decay) for the SAGE optimizers, ``_get_param_groups`` (decay, no-decay) otherwise."""
    def mask(n):
        return any(p in n for p in _SAGE_PATTERNS)

    def decays(n):
        return not any(p in n for p in _NO_DECAY)
    if not sage_split:
        return [[n for n in names if decays(n)], [n for n in names if not decays(n)]]
    return [[n for n in names if not mask(n) and decays(n)], [n for n in names if mask(n) and decays(n)],
            [n for n in names if not mask(n) and not decays(n)], [n for n in names if mask(n) and not decays(n)]]


def parameter_names(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Their ``named_parameters()`` order: the state dict's order without the buffers (integer tensors here:
    ``position_ids``); a module writes its own parameters before its buffers and children in both."""
    return [k for k, v in state.items() if v.is_floating_point()]


def _one(groups: Sequence[dict], key: str, where: str) -> Any:
    values = {repr(g.get(key)) for g in groups}
    if len(values) != 1:
        raise Unmappable(f"{where}: its parameter groups disagree on {key} ({', '.join(sorted(values))})")
    return groups[0].get(key)


def _differences(saved: dict, here: dict) -> list[str]:
    return [f"{name} (saved {saved[name]}, here {here[name]})" for name in saved
            if saved[name] is not None and not _same(saved[name], here[name])]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def read_optimizer(blob: Mapping, conf: Mapping, key_map: Mapping[str, str], cfg: TrainConfig, total_steps: int,
                   optimizer: torch.optim.Optimizer, named: Mapping[int, str], where: str) -> OptimizerState:
    """Their optimizer state for this run's ``optimizer`` (whose parameters are named by ``named``: id -> name).

    ``key_map`` names their parameters as this model does. Raises :class:`Unmappable` where the mapping is not
    exact: another optimizer kind, a state of MT-DNN's optimizers (whose schedule lives outside the file), group
    sizes that differ from their network's, parameters without a counterpart on either side."""
    saved = blob.get("optimizer")
    if not isinstance(saved, dict) or not isinstance(saved.get("param_groups"), list) \
            or not isinstance(saved.get("state"), dict):
        raise Unmappable(f"{where}: it holds no optimizer state")
    groups = saved["param_groups"]
    kind = str(plain(conf.get("optimizer", "")))
    if not groups or any("t_total" not in g or "schedule" not in g for g in groups):
        raise Unmappable(f"{where}: its optimizer state ({kind or 'unnamed optimizer'}) is a torch-style optimizer's "
                         "(today's MT-DNN's optimizers, SGD), whose learning-rate scheduler lives outside it and is not "
                         "saved in the file, so the step's learning rate cannot be restored")
    if kind not in OPTIMIZER_KINDS:
        raise Unmappable(f"{where}: its optimizer {kind!r} has no exact counterpart here (this project continues "
                         f"{', '.join(OPTIMIZER_KINDS)})")
    ours_kind, buffers, sage_split = OPTIMIZER_KINDS[kind]
    if cfg.optimizer.lower() != ours_kind:
        raise Unmappable(f"{where}: its optimizer state is {kind}'s, this run's --optimizer is {cfg.optimizer}")
    names = parameter_names(blob["state"])
    theirs = _their_groups(names, sage_split)
    sizes = [len(g.get("params", [])) for g in groups]
    if sizes != [len(g) for g in theirs]:
        raise Unmappable(f"{where}: its optimizer groups hold {sizes} parameters, its network's parameters make "
                         f"{[len(g) for g in theirs]} ({kind}'s grouping): they do not correspond")
    index_to_name = {idx: name for group, ours in zip(groups, theirs) for idx, name in zip(group["params"], ours)}
    if any(g.get("correct_bias", True) is not True for g in groups):
        raise Unmappable(f"{where}: its AdamW has correct_bias off, which this project's AdamW does not offer")
    per_parameter, steps = _states(saved["state"], index_to_name, key_map, buffers, where)
    _check_correspondence(key_map, named, theirs, per_parameter, optimizer, sage_split, where)
    differences = _option_differences(groups, conf, cfg, total_steps, sage_split, where)
    t_total = int(_one(groups, "t_total", where))
    if t_total <= 0:
        raise Unmappable(f"{where}: its schedule is off (t_total {t_total}), which this project's schedules do not "
                         "express")
    step = max(steps) if steps else 0
    schedule = str(_one(groups, "schedule", where))
    if schedule in _CLAMPED and step + total_steps > t_total:
        raise Unmappable(f"{where}: its {schedule} schedule turns negative past t_total {t_total}, where this "
                         f"project's {SCHEDULE_NAMES[schedule]} stays at 0, and this run ends at step "
                         f"{step + total_steps}")
    return OptimizerState(step, t_total, per_parameter, differences, (min(steps, default=0), step))


def _states(states: Mapping, index_to_name: Mapping[int, str], key_map: Mapping[str, str],
            buffers: Sequence[str], where: str) -> tuple[dict, list[int]]:
    out, steps = {}, []
    for idx, state in states.items():
        if idx not in index_to_name:
            raise Unmappable(f"{where}: optimizer state for parameter index {idx}, which none of its groups holds")
        theirs = index_to_name[idx]
        if theirs not in key_map:
            raise Unmappable(f"{where}: optimizer state of {theirs}, which has no counterpart in this run's model")
        missing = [b for b in ("step", *buffers) if b not in state]
        if missing:
            raise Unmappable(f"{where}: the optimizer state of {theirs} has no {', '.join(missing)} (another "
                             "optimizer's state?)")
        step = plain(state["step"])
        step = int(step.item()) if isinstance(step, torch.Tensor) else int(step)
        steps.append(step)
        out[key_map[theirs]] = {"step": step, **{k: v for k, v in state.items() if k != "step"}}
    return out, steps


def _check_correspondence(key_map, named, their_groups, per_parameter, optimizer, sage_split, where) -> None:
    """Every parameter this run trains is one of theirs, in the same kind of group (SAGE or not, decayed or not),
    with state of its shape; every parameter they stepped is trained here."""
    ours_to_theirs = {ours: theirs for theirs, ours in key_map.items()}
    kinds = {name: (gi % 2 == 1 if sage_split else False, gi < (2 if sage_split else 1))
             for gi, names in enumerate(their_groups) for name in names}  # name -> (SAGE group, decayed)
    trained = set()
    for group in optimizer.param_groups:
        for p in group["params"]:
            name = named[id(p)]
            trained.add(name)
            theirs = ours_to_theirs.get(name)
            if theirs is None or theirs not in kinds:
                raise Unmappable(f"{where}: this run trains {name}, which its network does not have (a task or "
                                 "pooler it was not trained with?)")
            here = (bool(group.get("sage")) if sage_split else False, not str(group.get("name")).endswith("no_decay"))
            if kinds[theirs] != here:
                def kind(k):
                    return f"{'SAGE' if k[0] else 'plain'} {'decay' if k[1] else 'no-decay'} group"
                raise Unmappable(f"{where}: {theirs} is in a {kind(kinds[theirs])} there, {name} in a {kind(here)} "
                                 "here")
            state = per_parameter.get(name, {})
            for key, value in state.items():
                if key != "step" and (not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(p.shape)):
                    raise Unmappable(f"{where}: optimizer state {key} of {theirs} has shape "
                                     f"{tuple(getattr(value, 'shape', ()))}, the parameter {tuple(p.shape)}")
            if state and group.get("sage") and "exp_avg_ipt" not in state:
                raise Unmappable(f"{where}: the optimizer state of {theirs} has no exp_avg_ipt (SAGE's sensitivity)")
    lost = [ours_to_theirs[n] for n in per_parameter if n not in trained]
    if lost:
        raise Unmappable(f"{where}: it trained {', '.join(lost[:3])}, which this run does not train (frozen with "
                         "--update_bert_opt?)")


def _option_differences(groups, conf, cfg: TrainConfig, total_steps, sage_split, where) -> list[str]:
    """Saved options that change the continued run, against this run's flags (their option names where the
    two differ, with this project's flag)."""
    decay = [g["weight_decay"] for g in groups if g.get("weight_decay", 0) > 0]
    betas = tuple(_one(groups, "betas", where))
    schedule = str(_one(groups, "schedule", where))
    saved = {"optimizer": plain(conf.get("optimizer")),
             "learning_rate": _one(groups, "lr", where),
             "betas": betas[:2],
             "beta3": betas[2] if sage_split and len(betas) > 2 else None,
             "adam_eps": _one(groups, "eps", where),
             "weight_decay": decay[0] if decay else None,
             "warmup": _one(groups, "warmup", where),
             "warmup_schedule": SCHEDULE_NAMES.get(schedule, schedule),
             "grad_clipping": max(0.0, float(_one(groups, "max_grad_norm", where))),
             "global_grad_clipping": conf.get("global_grad_clipping"),
             "grad_accumulation_step": conf.get("grad_accumulation_step"),
             "epochs": conf.get("epochs"),
             "total steps (t_total)": _one(groups, "t_total", where),
             "sage_formula": "reference"}
    here = {"optimizer": cfg.optimizer, "learning_rate": cfg.learning_rate, "betas": tuple(cfg.betas),
            "beta3": cfg.beta3, "adam_eps": cfg.adam_eps, "weight_decay": cfg.weight_decay, "warmup": cfg.warmup,
            "warmup_schedule": cfg.warmup_schedule, "grad_clipping": cfg.grad_clipping,
            "global_grad_clipping": cfg.global_grad_clipping, "grad_accumulation_step": cfg.grad_accumulation_step,
            "epochs": cfg.epochs, "total steps (t_total)": total_steps,
            "sage_formula": cfg.sage_formula or "reference"}
    # what else their update() reads from the options after loading them: precision, SMART, distillation
    extra = ["fp16", "adv_train", "mkd_opt"]
    if conf.get("adv_train"):
        extra += ["adv_alpha", "adv_k", "adv_step_size", "adv_noise_var", "adv_epsilon", "adv_p_norm",
                  "adv_norm_level"]
    for name in extra:
        saved[name], here[name] = plain(conf.get(name)), getattr(cfg, name)
    saved["bf16"], here["bf16"] = (False if conf else None), cfg.bf16  # their code has no bfloat16
    return _differences(saved, here)


def clamps_past_horizon(groups: Sequence[dict]) -> bool:
    """Whether their schedule goes on past t_total where this project's counterpart stops at 0."""
    return any(str(g.get("schedule")) in _CLAMPED for g in groups)


def apply(optimizer: torch.optim.Optimizer, named: Mapping[int, str], state: OptimizerState) -> int:
    """Place the mapped per-parameter state on ``optimizer`` (this project's key names, which are the authors':
    ``exp_avg``, ``exp_inf``/``exp_avg_sq``, ``exp_avg_ipt``; ``step`` as a tensor). Returns how many parameters
    got state (the others start fresh at their first step, as in their optimizer)."""
    placed = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            theirs = state.per_parameter.get(named[id(p)])
            if theirs is None:
                continue
            new = {"step": torch.tensor(float(theirs["step"]), dtype=_get_scalar_dtype())}
            for key, value in theirs.items():
                if key != "step" and (key != "exp_avg_ipt" or group.get("sage")):
                    new[key] = value.detach().to(device=p.device, dtype=p.dtype).clone()
            optimizer.state[p] = new
            placed += 1
    return placed
