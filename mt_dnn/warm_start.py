"""Start a run from a trained model instead of a bare encoder (``--init_checkpoint``).

Three kinds of ``--init_checkpoint``:
- an encoder (registry name, HF folder or hub id): the encoder loads, every head starts fresh (as before);
- one of our checkpoint folders (``<run>/best``, ``<run>/step-N``): the encoder (and our own pooler) load, and
  each head of a task this run shares with that run, by task name;
- an MT-DNN ``.pt`` file (a dict with ``state`` and ``config``), read with ``torch.load(weights_only=True)``
  (the classes MT-DNN pickles into its options load as inert stand-ins): ``bert.*`` is the encoder
  (pytorch-pretrained-bert's LayerNorm ``gamma``/``beta`` renamed), and ``scoring_list.N`` is the head of the N-th
  task of that MT-DNN run's ``--train_datasets`` (MT-DNN's order: names up to the first ``_``, first appearance
  wins), taken from its saved ``config``; a config without ``train_datasets`` falls back to this run's
  ``--train_datasets`` order.

Heads whose shapes differ (another ``n_class``, another task type) are an error naming the task: rename the task
to train a fresh head. So is a loaded head whose task this run defines otherwise than the run that trained it
(``task_labels.json`` of our checkpoints: labels reordered or renamed, another task type): the head's outputs
keep the trained meaning, so continuing it under other labels would train and name them crosswise; the YAML is
refused rather than followed. Heads that are not loaded (fresh ones) are not compared. One log line says which heads loaded (and from where), which are fresh, and which the
checkpoint had that this run does not use.
"""
from __future__ import annotations

import pickle
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

import pretrained_models
from mt_dnn import checkpoint as ckpt
from mt_dnn import task_labels
from mt_dnn.model import MTDNNModel, build_model

# buffers some transformers versions saved and newer ones rebuild (never trained)
_REBUILT_BUFFERS = ("embeddings.position_ids",)
# pytorch-pretrained-bert (MT-DNN's first encoder library) named LayerNorm parameters gamma and beta
_OLD_NAMES = {".LayerNorm.gamma": ".LayerNorm.weight", ".LayerNorm.beta": ".LayerNorm.bias"}


@dataclass
class Source:
    """A checkpoint's weights already in MTDNNModel's key layout (``encoder.*``, ``pooler.*``, ``heads.<task>.*``)."""
    where: str
    encoder_config: Any
    weights: dict[str, torch.Tensor]
    head_origin: dict[str, str] = field(default_factory=dict)   # task -> the checkpoint's name for its head
    unused: list[str] = field(default_factory=list)             # other parts of the checkpoint, for the log
    mapping: str = ""                                           # how checkpoint heads were named, for the log
    labels: dict[str, dict] = field(default_factory=dict)       # task -> trained signature (mt_dnn/task_labels.py)
    labels_where: str = ""                                      # the file those came from, for the error line


def checkpoint_kind(path: str) -> str:
    """'run' (our checkpoint folder), 'mtdnn' (a .pt file) or 'encoder' (anything from_pretrained reads)."""
    p = Path(path)
    if p.is_file():
        return "mtdnn"
    if p.is_dir() and (p / ckpt.WEIGHTS).is_file() and (p / ckpt.CONFIG).is_file():
        return "run"
    if p.is_dir() and not (p / "config.json").exists() and ((p / "best").is_dir() or (p / ckpt.LATEST).is_file()):
        raise ValueError(f"--init_checkpoint {p}: this is a run's output folder; pass {p / 'best'} or one of "
                         "its step-N folders")
    return "encoder"


# ---------------------------------------------------------------------------------------------- our runs
def run_encoder_config(folder: Path):
    """The encoder architecture of one of our checkpoints (older ones: that of the run's own init_checkpoint)."""
    from transformers import AutoConfig
    from mt_dnn.config import load_config
    saved = Path(folder) / ckpt.ENCODER_CONFIG
    if saved.is_file():
        return AutoConfig.from_pretrained(str(saved))
    origin = load_config(Path(folder) / ckpt.CONFIG).init_checkpoint
    if checkpoint_kind(origin) != "encoder":
        raise FileNotFoundError(f"{saved}: missing, and the run started from {origin}, not from an encoder")
    return pretrained_models.load_config(origin)


def read_run(folder: Path) -> Source:
    weights = ckpt.read_weights(folder)
    tasks = sorted({k.split(".")[1] for k in weights if k.startswith("heads.")})
    return Source(str(folder), run_encoder_config(folder), weights, {t: f"heads.{t}" for t in tasks},
                  labels=task_labels.read(folder) or {}, labels_where=str(Path(folder) / task_labels.FILE))


# ---------------------------------------------------------------------------------------------- MT-DNN files
# MT-DNN pickles its task definitions into the saved options (TaskDef, a dict subclass, plus enums and label
# vocabularies from its own modules). weights_only refuses unknown classes, so each one the file names is mapped
# to an inert stand-in that only records its arguments: nothing from the file runs, and the weights still load.
_TORCH_READS = ("torch", "collections", "builtins", "copyreg", "_codecs", "numpy")
_DICT_LIKE = ("experiments.exp_def.TaskDef",)


class StandIn:
    """An object the checkpoint names but this project does not import: its arguments and state, nothing else."""
    name = "?"

    def __init__(self, *args):
        self.args = args

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.name}{self.args!r}>"


def pickle_globals(path: Path) -> list[str]:
    """``module.name`` of each class or function a torch checkpoint's pickle refers to, read without loading it."""
    import io
    import pickletools
    import zipfile
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            pickled = [n for n in archive.namelist() if n.endswith("data.pkl")]
            stream = io.BytesIO(archive.read(pickled[0]) if pickled else b"")
    else:  # the legacy format: a few pickles in a row, then raw storages
        stream = io.BytesIO(Path(path).read_bytes())
    found, strings = [], []
    for _ in range(4):
        try:
            for op, arg, _pos in pickletools.genops(stream):
                if op.name == "GLOBAL":
                    found.append(arg.replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(".".join(strings[-2:]))
                elif isinstance(arg, str):
                    strings.append(arg)
        except Exception:  # noqa: BLE001 - past the pickles (raw storage bytes) or not a pickle at all
            break
    return list(dict.fromkeys(found))


def _stand_ins(path: Path) -> list[tuple[type, str]]:
    out = []
    for name in pickle_globals(path):
        if name.split(".")[0] in _TORCH_READS:
            continue
        if name in _DICT_LIKE:  # pickled as new object + dict items + attributes: OrderedDict takes all three
            out.append((OrderedDict, name))
        else:
            out.append((type(name.rsplit(".", 1)[-1], (StandIn,), {"name": name}), name))
    return out


def _torch_load(path: Path) -> Any:
    try:
        with torch.serialization.safe_globals(_stand_ins(path)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        why = next((ln for ln in lines if ln.startswith(("Unsupported", "Can only", "Trying"))),
                   lines[0] if lines else "")
        raise ValueError(f"{path}: not a checkpoint torch.load(weights_only=True) can read ({why})") from None
    except (RuntimeError, EOFError, AttributeError, TypeError) as exc:
        raise ValueError(f"{path}: not a readable torch checkpoint ({str(exc).splitlines()[0]})") from None


def _plain(value: Any) -> Any:
    """An enum MT-DNN pickled (a StandIn holding its value) -> that value."""
    return value.args[0] if isinstance(value, StandIn) and len(value.args) == 1 else value


def mtdnn_encoder_config(conf: Mapping, encoder_type: Optional[int], where: str):
    """The HF encoder config inside MT-DNN's saved options (MT-DNN merges the encoder's config into them)."""
    from transformers import CONFIG_MAPPING
    saved_type = _plain(conf.get("encoder_type"))
    if encoder_type is not None and saved_type is not None and saved_type != encoder_type:
        raise ValueError(f"--encoder_type {encoder_type}: {where} was trained with encoder_type {saved_type}")
    etype = encoder_type if encoder_type is not None else saved_type
    model_type = conf.get("model_type")
    if etype is not None:
        if etype not in pretrained_models.ENCODER_TYPES:
            raise ValueError(f"{where}: unknown encoder_type {etype}; known: {sorted(pretrained_models.ENCODER_TYPES)}")
        model_type = model_type or pretrained_models.ENCODER_TYPES[etype][0]
    if model_type is None:
        raise ValueError(f"{where}: its config names no encoder_type or model_type; pass --encoder_type "
                         f"({pretrained_models.encoder_types_text()})")
    config_class = CONFIG_MAPPING[model_type]
    accepted = set(config_class().to_dict()) - {"model_type", "transformers_version", "architectures"}
    config = config_class(**{k: v for k, v in conf.items() if k in accepted})
    pretrained_models.check_encoder_type(config, etype, where="--encoder_type")
    return config


def mtdnn_task_order(conf: Mapping, fallback: Sequence[str]) -> tuple[list[str], str]:
    """Task names in scoring_list order, and where that order came from (for the log)."""
    names = conf.get("train_datasets")
    if isinstance(names, str):
        names = names.split(",")
    if not names:
        return list(dict.fromkeys(fallback)), "this run's --train_datasets (the checkpoint's config has none)"
    return list(dict.fromkeys(str(n).strip().split("_")[0] for n in names)), "the checkpoint's train_datasets"


def _mtdnn_head(task: str, index: int, parts: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    if set(parts) != {"weight", "bias"}:
        raise ValueError(f"{where}: task {task}: scoring_list.{index} has parameters {sorted(parts)[:4]}, not one "
                         "linear layer (weight, bias) — a SAN answer module? — so it cannot be loaded into this "
                         "task's head")
    return {f"heads.{task}.proj.{name}": t for name, t in parts.items()}


def _new_name(key: str) -> str:
    for old, new in _OLD_NAMES.items():
        if key.endswith(old):
            return key[:-len(old)] + new
    return key


def read_mtdnn(path: Path, encoder_type: Optional[int], used_tasks: Sequence[str],
               fallback_order: Sequence[str]) -> Source:
    blob = _torch_load(path)
    if not isinstance(blob, dict) or not isinstance(blob.get("state"), dict):
        raise ValueError(f"{path}: not an MT-DNN checkpoint (expected a dict with 'state' and 'config')")
    conf = blob.get("config") or {}
    if not isinstance(conf, dict):
        raise ValueError(f"{path}: 'config' is a {getattr(conf, 'name', type(conf).__name__)}, expected MT-DNN's "
                         "options dict")
    order, order_from = mtdnn_task_order(conf, fallback_order)
    weights: dict[str, torch.Tensor] = {}
    heads: dict[int, dict[str, torch.Tensor]] = {}
    unused, top_level = [], [f"'{k}'" for k in blob if k not in ("state", "config")]
    for key, tensor in blob["state"].items():
        if key.startswith("bert."):
            if not key.endswith(_REBUILT_BUFFERS):
                weights["encoder." + _new_name(key[len("bert."):])] = tensor
        elif key.startswith("scoring_list.") and key.split(".")[1].isdigit():
            heads.setdefault(int(key.split(".")[1]), {})[key.split(".", 2)[2]] = tensor
        else:
            unused.append(key)
    origin = {}
    for index, parts in sorted(heads.items()):
        task = order[index] if index < len(order) else None
        if task is None or task not in used_tasks:
            unused.append(f"scoring_list.{index}" + (f" ({task})" if task else " (no task at that position)"))
            continue
        weights.update(_mtdnn_head(task, index, parts, str(path)))
        origin[task] = f"scoring_list.{index}"
    mapping = f"scoring_list order from {order_from}: " + ", ".join(f"{i}={t}" for i, t in enumerate(order))
    return Source(str(path), mtdnn_encoder_config(conf, encoder_type, str(path)), weights, origin,
                  unused + top_level, mapping)


# ---------------------------------------------------------------------------------------------- loading
def _check_shapes(own: Mapping[str, torch.Tensor], theirs: Mapping[str, torch.Tensor], what: str,
                  where: str) -> None:
    if set(own) != set(theirs):
        raise ValueError(f"{where}: {what}: the checkpoint's parameters differ from this run's (missing "
                         f"{sorted(set(own) - set(theirs))[:3]}, extra {sorted(set(theirs) - set(own))[:3]})")
    for key, tensor in own.items():
        if tuple(theirs[key].shape) != tuple(tensor.shape):
            raise ValueError(f"{where}: {what}: {key} has shape {tuple(theirs[key].shape)} in the checkpoint, "
                             f"{tuple(tensor.shape)} here (another n_class or task type? rename the task for a "
                             "fresh head)")


def _part(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith(prefix)}


def load_source(model: MTDNNModel, src: Source, task_def_file: str = "this run's task definition"
                ) -> tuple[str, list[str]]:
    """Copy the encoder, pooler and matching heads into ``model``; returns the log line saying what loaded and
    the tasks whose heads came from the checkpoint. ``task_def_file`` names the YAML in errors."""
    own = model.state_dict()
    _check_shapes(_part(own, "encoder."), _part(src.weights, "encoder."), "encoder", src.where)
    merged = dict(own)
    merged.update(_part(src.weights, "encoder."))
    notes = []
    if _part(own, "pooler."):
        if _part(src.weights, "pooler."):
            _check_shapes(_part(own, "pooler."), _part(src.weights, "pooler."), "pooler", src.where)
            merged.update(_part(src.weights, "pooler."))
        else:
            notes.append("pooler fresh")
    loaded, fresh, warm = [], [], []
    for task in model.task_names:
        theirs = _part(src.weights, f"heads.{task}.")
        if not theirs:
            fresh.append(task)
            continue
        origin = src.head_origin.get(task, f"heads.{task}")
        _check_shapes(_part(own, f"heads.{task}."), theirs, f"task {task}: head {origin}", src.where)
        merged.update(theirs)
        loaded.append(f"{task} ({origin})")
        warm.append(task)
    task_labels.check(src.labels, model.task_defs, src.labels_where or src.where, warm, source=task_def_file,
                      hint="the loaded head's outputs follow the trained definition: put it back in the YAML, or "
                           "rename the task to train a fresh head")
    model.load_state_dict(merged, strict=True)
    unused = [f"{t} ({o})" for t, o in src.head_origin.items() if t not in model.task_names] + src.unused
    mapping = f" ({src.mapping})" if src.mapping else ""
    return (f"init from {src.where}{mapping}: encoder loaded{'; ' + ', '.join(notes) if notes else ''}; heads loaded: "
            f"{', '.join(loaded) or 'none'}; fresh heads: {', '.join(fresh) or 'none'}; in the checkpoint, not "
            f"used: {', '.join(unused) or 'nothing'}"), warm


def start_model(cfg, task_defs: Mapping, log: Callable[[str], None] = print) -> tuple[MTDNNModel, list[str]]:
    """The model a run starts from: a bare encoder with fresh heads, or a trained model (see the module doc),
    shaped by the run's model flags (depth, dropout, SAN heads, encoder freezing; see ``model.build_model``).
    Also returns the tasks whose heads were loaded (trained) rather than freshly initialised."""
    kind = checkpoint_kind(cfg.init_checkpoint)
    if kind == "encoder":
        return build_model(pretrained_models.load_encoder(cfg.init_checkpoint, cfg.encoder_type), task_defs, cfg), []
    if kind == "run":
        src = read_run(Path(cfg.init_checkpoint))
        pretrained_models.check_encoder_type(src.encoder_config, cfg.encoder_type)
    else:
        src = read_mtdnn(Path(cfg.init_checkpoint), cfg.encoder_type, list(task_defs), cfg.train_datasets)
    encoder = pretrained_models.load_encoder(cfg.init_checkpoint, config=src.encoder_config)
    model = build_model(encoder, task_defs, cfg)
    line, warm = load_source(model, src, cfg.task_def)
    log(line)
    return model, warm
