"""Start a run from a trained model instead of a bare encoder (``--init_checkpoint``).

Three kinds of ``--init_checkpoint``:
- an encoder (registry name, HF folder or hub id): the encoder loads, every head starts fresh;
- a checkpoint folder of this project (``<run>/best``, ``<run>/step-N``): the encoder, the poolers and each head of a
  task this run shares with that run, by task name; the run's head layout comes along (its train_config.json);
- a ``.pt`` written by MT-DNN's or the SAGE repository's train.py (a dict with ``state`` and ``config``), read with
  ``torch.load(weights_only=True)`` (the classes they pickle into their options load as inert stand-ins):
  ``bert.*`` is the encoder (pytorch-pretrained-bert's LayerNorm ``gamma``/``beta`` renamed), the head layout is
  what its tensor names say (mt_dnn/upstream_checkpoint.py), and ``scoring_list.N`` is the head of the N-th task
  of that run's ``--train_datasets`` (their order: names up to the first ``_``, first appearance wins), taken
  from its saved ``config``; a config without ``train_datasets`` falls back to this run's ``--train_datasets``
  order. Each loaded head's saved label order must be this run's.

Heads whose shapes differ (another ``n_class``, another task type) are an error naming the task: rename the task
to train a fresh head. So is a loaded head whose task this run defines otherwise than the run that trained it
(a run's ``task_labels.json``, the label vocabulary of an MT-DNN/SAGE file: labels reordered or renamed,
another task type): the head's outputs keep the trained meaning, so continuing it under other labels would train
and name them crosswise; the YAML is refused rather than followed. Heads that are not loaded (fresh ones) are not
compared. A trained tensor that belongs to a task this run trains or evaluates (its head, the pooler it reads), or
to no task at all, and cannot be loaded is an error too, unless ``--allow_unused_weights``. One log line says which
heads loaded (and from where), which are fresh, and which the checkpoint had that this run does not use.
"""
from __future__ import annotations

import codecs
import pickle
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch

import pretrained_models
from module import encoders
from mt_dnn import checkpoint as ckpt
from mt_dnn import head_layout as layouts
from mt_dnn import run_config
from mt_dnn import task_labels
from mt_dnn import upstream_checkpoint as upstream
from mt_dnn.model import MTDNNModel, build_model
from mt_dnn.settings import ModelSettings, WarmStartSettings


@dataclass
class Source:
    """A checkpoint's weights already in MTDNNModel's key layout (``encoder.*``, ``pooler.*``, ``heads.<task>.*``)."""
    where: str
    encoder_config: Any
    weights: dict[str, torch.Tensor]
    found: layouts.Found                                        # the head layout it was trained with
    head_origin: dict[str, str] = field(default_factory=dict)   # task -> the checkpoint's name for its head
    unused: list[str] = field(default_factory=list)             # other parts of the checkpoint, for the log
    mapping: str = ""                                           # how checkpoint heads were named, for the log
    labels: dict[str, dict] = field(default_factory=dict)       # task -> trained signature (mt_dnn/task_labels.py)
    labels_where: str = ""                                      # the file those came from, for the error line
    key_map: dict[str, str] = field(default_factory=dict)       # checkpoint tensor name -> the model's, for ``weights``
    left_out: dict[str, tuple[str, ...]] = field(default_factory=dict)  # tensors not in ``weights``: their tasks
    blob: Optional[dict] = None                                 # a .pt file's whole content (optimizer state)


def checkpoint_kind(path: str) -> str:
    """'run' (this project's checkpoint folder), 'mtdnn' (a .pt file) or 'encoder' (what from_pretrained reads)."""
    p = Path(path)
    if p.is_file():
        return "mtdnn"
    if p.is_dir() and (p / ckpt.WEIGHTS).is_file() and (p / ckpt.CONFIG).is_file():
        return "run"
    encoder_config = p / run_config.NAME  # an encoder's config.json, or a run folder's options
    if p.is_dir() and (not encoder_config.exists() or run_config.is_run_config(encoder_config)) \
            and ((p / "best").is_dir() or (p / ckpt.LATEST).is_file()):
        raise ValueError(f"--init_checkpoint {p}: this is a run's output folder; pass {p / 'best'} or one of "
                         "its step-N (or epoch-N) folders")
    return "encoder"


# ------------------------------------------------------------------------------------- this project's runs
def run_encoder_config(folder: Path):
    """The encoder architecture of a checkpoint of this project (older ones: that of the run's own init_checkpoint)."""
    from mt_dnn.config import load_config
    saved = Path(folder) / ckpt.ENCODER_CONFIG
    if saved.is_file():
        return encoders.config_from_file(saved)
    origin = load_config(Path(folder) / ckpt.CONFIG).init_checkpoint
    if checkpoint_kind(origin) != "encoder":
        raise FileNotFoundError(f"{saved}: missing, and the run started from {origin}, not from an encoder")
    return encoders.load_config(origin)


def read_run(folder: Path) -> Source:
    from mt_dnn.config import load_config
    weights = ckpt.read_weights(folder)
    saved = load_config(Path(folder) / ckpt.CONFIG)
    found = layouts.Found(layouts.layout_of(saved.head_layout), saved.pooler_actf, str(folder))
    tasks = sorted({k.split(".")[1] for k in weights if k.startswith("heads.")})
    return Source(str(folder), run_encoder_config(folder), weights, found, {t: f"heads.{t}" for t in tasks},
                  key_map={k: k for k in weights}, labels=task_labels.read(folder) or {},
                  labels_where=str(Path(folder) / task_labels.FILE))


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


# torch.save's two layouts: a zip archive holding <name>/data.pkl, or (legacy) pickles that start with this
# protocol-2 pickle of torch's magic number.
_LEGACY_TORCH_START = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def check_torch_file(path: Path) -> None:
    """Refuse a file torch.save did not write (a text file, random bytes) before the unpickler meets it."""
    import zipfile
    with open(path, "rb") as handle:
        start = handle.read(4096)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any(n.endswith("data.pkl") for n in archive.namelist()):
                return
        raise ValueError(f"--init_checkpoint {path}: a zip archive, but not one torch.save wrote (no data.pkl)")
    if start.startswith(_LEGACY_TORCH_START):
        return
    try:
        text = bool(start) and b"\0" not in start and codecs.getincrementaldecoder("utf-8")().decode(start) != ""
    except UnicodeDecodeError:
        text = False
    raise ValueError(f"--init_checkpoint {path}: expected an MT-DNN .pt checkpoint (a file torch.save wrote); this "
                     f"is {'a text file' if text else 'neither a torch zip archive nor a torch pickle'}")


def _torch_load(path: Path) -> Any:
    check_torch_file(path)
    try:
        with torch.serialization.safe_globals(_stand_ins(path)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        why = next((ln for ln in lines if ln.startswith(("Unsupported", "Can only", "Trying"))),
                   lines[0] if lines else "")
        raise ValueError(f"{path}: not a checkpoint torch.load(weights_only=True) can read ({why})") from None
    except (RuntimeError, EOFError, AttributeError, TypeError, KeyError, IndexError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0]  # a damaged file that looked like one
        why = f"{type(exc).__name__}: {first[:120]}" if first else type(exc).__name__
        raise ValueError(f"{path}: not a readable torch checkpoint ({why})") from None


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


def read_mtdnn(path: Path, encoder_type: Optional[int], task_defs: Mapping, fallback_order: Sequence[str]) -> Source:
    blob = _torch_load(path)
    if not isinstance(blob, dict) or not isinstance(blob.get("state"), dict):
        raise ValueError(f"{path}: not an MT-DNN checkpoint (expected a dict with 'state' and 'config')")
    conf = blob.get("config") or {}
    if not isinstance(conf, dict):
        raise ValueError(f"{path}: 'config' is a {getattr(conf, 'name', type(conf).__name__)}, expected MT-DNN's "
                         "options dict")
    where, state = str(path), blob["state"]
    layout = upstream.detect_layout(state, conf)
    actf = {"sage": conf.get("pooler_actf", "tanh"), "mtdnn": "linear"}.get(layout)  # MT-DNN's: see head_layout.py
    order, order_from = mtdnn_task_order(conf, fallback_order)
    types = upstream.task_types(conf)
    pooled = tuple(t for i, t in enumerate(order) if i >= len(types) or types[i] in upstream.POOLED_TYPES)
    key_map, left_out = {}, {}
    for key in state:
        if key.startswith("bert."):
            if not key.endswith(upstream.REBUILT_BUFFERS):
                key_map[key] = upstream.encoder_key(key)
        elif key.startswith("pooler.") and layout == "sage":
            key_map[key] = key
        elif not key.startswith("scoring_list."):
            left_out[key] = pooled if key.startswith("pooler.") else ()
    unused, origin, labels = [], {}, {}
    for index, parts in sorted(upstream.head_parts(state).items()):
        task = order[index] if index < len(order) else None
        if task is None or task not in task_defs:
            left_out.update({f"scoring_list.{index}.{name}": (task,) if task else ("?",) for name in parts})
            unused.append(f"scoring_list.{index}" + (f" ({task})" if task else " (no task at that position)"))
            continue
        names = upstream.head_names(task, index, parts, layout, where)
        trained = upstream.comparable_labels(task_defs[task], upstream.saved_labels(conf, index),
                                             types[index] if index < len(types) else None)
        if trained is not None:
            labels[task] = trained
        key_map.update({f"scoring_list.{index}.{part}": ours for part, ours in names.items()})
        origin[task] = f"scoring_list.{index}"
    weights = {ours: state[theirs] for theirs, ours in key_map.items()}
    top_level = [f"'{k}'" for k in blob if k not in ("state", "config")]
    mapping = f"scoring_list order from {order_from}: " + ", ".join(f"{i}={t}" for i, t in enumerate(order))
    return Source(where, mtdnn_encoder_config(conf, encoder_type, where), weights, layouts.Found(layout, actf, where),
                  origin, unused + top_level, mapping, labels, f"{where} (its task_def_list)", key_map, left_out,
                  blob)


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


@dataclass
class Loaded:
    """What load_source copied, for the log line."""
    where: str
    mapping: str
    notes: list[str]
    loaded: list[str]
    fresh: list[str]
    unused: list[str]
    warm: list[str]        # tasks whose heads came from the checkpoint

    def line(self, prefix: str = "init from", used: Sequence[str] = ()) -> str:
        """The log line; ``used``: top-level entries of the checkpoint that were used after all (its optimizer)."""
        unused = [u for u in self.unused if u not in used]
        mapping = f" ({self.mapping})" if self.mapping else ""
        notes = "; " + ", ".join(self.notes) if self.notes else ""
        return (f"{prefix} {self.where}{mapping}: encoder loaded{notes}; heads loaded: "
                f"{', '.join(self.loaded) or 'none'}; fresh heads: {', '.join(self.fresh) or 'none'}; in the checkpoint, not used: "
                f"{', '.join(unused) or 'nothing'}")


def _tasks_of(ours: str, src: Source) -> tuple[str, ...]:
    """The tasks a model tensor belongs to: its head's, or for the shared pooler every task whose head reads it."""
    if ours.startswith("heads."):
        return (ours.split(".")[1],)
    if ours.startswith("pooler."):
        return tuple(src.head_origin)
    return ()


def _left_behind(model: MTDNNModel, src: Source, placed: set[str], allow: bool) -> list[str]:
    """Checkpoint tensors not copied into ``model``: an error when one belongs to a task of this run (or to no task),
    unless ``allow``; returns their log entries."""
    left = dict(src.left_out)
    left.update({theirs: _tasks_of(ours, src) for theirs, ours in src.key_map.items() if ours not in placed})
    ours = set(model.task_names)
    trained = {k: tasks for k, tasks in left.items() if not tasks or set(tasks) & ours}
    if not trained:
        return []
    shown = [f"{k} ({'read by ' + ', '.join(t for t in tasks if t in ours) if tasks else 'no task'})"
             for k, tasks in list(trained.items())[:6]]
    more = f" and {len(trained) - 6} more" if len(trained) > 6 else ""
    if not allow:
        raise ValueError(f"{src.where}: trained tensors would not be loaded into this run's model: "
                         f"{', '.join(shown)}{more}; pass --allow_unused_weights to start without them")
    return [f"{k} (trained, left out: --allow_unused_weights)" for k in trained]


def load_source(model: MTDNNModel, src: Source, allow_unused: bool = False,
                task_def_file: str = "this run's task definition") -> Loaded:
    """Copy the encoder, poolers and matching heads into ``model``; says what loaded. ``task_def_file`` names the
    YAML in errors."""
    own = model.state_dict()
    _check_shapes(_part(own, "encoder."), _part(src.weights, "encoder."), "encoder", src.where)
    merged = dict(own)
    merged.update(_part(src.weights, "encoder."))
    placed = set(_part(src.weights, "encoder."))
    notes = []
    if _part(own, "pooler."):
        if _part(src.weights, "pooler."):
            _check_shapes(_part(own, "pooler."), _part(src.weights, "pooler."), "pooler", src.where)
            merged.update(_part(src.weights, "pooler."))
            placed |= set(_part(src.weights, "pooler."))
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
        placed |= set(theirs)
        loaded.append(f"{task} ({origin})")
        warm.append(task)
    task_labels.check(src.labels, model.task_defs, src.labels_where or src.where, warm, source=task_def_file,
                      hint="the loaded head's outputs follow the trained definition: put it back in the YAML, or "
                           "rename the task to train a fresh head")
    left = _left_behind(model, src, placed, allow_unused)
    model.load_state_dict(merged, strict=True)
    unused = [f"{t} ({o})" for t, o in src.head_origin.items() if t not in model.task_names] + src.unused + left
    return Loaded(src.where, src.mapping, notes, loaded, fresh, unused, warm)


@dataclass
class Start:
    """The model a run starts from, its model settings with the head layout decided, and where the weights came
    from."""
    model: MTDNNModel
    settings: ModelSettings
    warm: list[str] = field(default_factory=list)   # tasks whose heads were loaded (trained), not fresh
    source: Optional[Source] = None
    loaded: Optional[Loaded] = None


def start_model(settings: WarmStartSettings, task_defs: Mapping, origin: Optional[str] = None) -> Start:
    """The model a run starts from: a bare encoder with fresh heads, or a trained model (see the module doc;
    ``origin`` replaces --init_checkpoint, for --resume --model_ckpt), shaped by the run's model flags (depth,
    dropout, SAN heads, head layout, encoder freezing; see ``model.build_model``). The head layout is the trained
    model's; an explicit other one is an error (mt_dnn/head_layout.py)."""
    origin = origin or settings.init_checkpoint
    kind = checkpoint_kind(origin)
    if kind == "encoder":
        shape = layouts.resolve(settings.model, None)
        return Start(build_model(encoders.load_encoder(origin, settings.encoder_type), task_defs, shape),
                     shape)
    if kind == "run":
        src = read_run(Path(origin))
        pretrained_models.check_encoder_type(src.encoder_config, settings.encoder_type)
    else:
        src = read_mtdnn(Path(origin), settings.encoder_type, task_defs, settings.train_datasets)
    shape = layouts.resolve(settings.model, src.found)
    encoder = encoders.load_encoder(origin, config=src.encoder_config)
    model = build_model(encoder, task_defs, shape)
    loaded = load_source(model, src, settings.allow_unused_weights, settings.task_def)
    return Start(model, shape, loaded.warm, src, loaded)
