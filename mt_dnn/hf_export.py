"""Export a trained checkpoint as a plain Hugging Face folder (used by export.py).

Without a task: the encoder (as trained, its own pooler included) and its tokenizer, for
``AutoModel.from_pretrained``. With a Classification or Regression task: ``AutoModelForSequenceClassification``
with the task's labels. This project's heads read ``dropout -> linear`` over a pooler: the encoder's own under the
``encoder`` head layout, the shared pooler under ``sage``, the task's own under ``mtdnn`` (mt_dnn/head_layout.py).
Each HF architecture below places that pooler's dense layer and the linear layer where its own head computes
exactly the same function in eval mode (dropout differs only while training); HF's heads apply tanh there, so a
pooler with another activation (``--pooler_actf``, the mtdnn layout's default linear) is refused, as is any
architecture or head with no exact counterpart, with the reason. Every export is reloaded from its temp folder and
compared with the trained model on a probe batch before it is renamed into place, so a folder that would give other
logits is never written.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from data_utils.atomic import atomic_folder, clean_stale_temps
from data_utils.safe_paths import check_output_root
from data_utils.task_def import TaskType
from module import encoders
from module.heads import ClassificationHead, ScoreHead
from mt_dnn import checkpoint as ckpt
from mt_dnn import model_card
from mt_dnn.model import MTDNNModel
from mt_dnn.warm_start import checkpoint_kind

TOLERANCE = 1e-5


class ExportError(ValueError):
    """The checkpoint cannot be exported exactly; the message says why."""


@dataclass(frozen=True)
class ClassifierLayout:
    """Where HF's sequence-classification model keeps this project's pooler dense layer and head linear layer."""
    pooler_dense: Optional[str]      # None: the encoder's own pooler, kept inside the base model (BERT)
    out: str
    config: tuple[tuple[str, object], ...] = ()   # settings that make HF's head apply tanh, as the pooler does


_ROBERTA = ClassifierLayout("classifier.dense", "classifier.out_proj")
_DEBERTA = ClassifierLayout("pooler.dense", "classifier", (("pooler_hidden_act", "tanh"),))
LAYOUTS: dict[str, ClassifierLayout] = {
    "bert": ClassifierLayout(None, "classifier"),
    "roberta": _ROBERTA, "xlm-roberta": _ROBERTA,
    "deberta": _DEBERTA, "deberta-v2": _DEBERTA,
}
REFUSED: dict[str, str] = {
    "electra": "HF's ELECTRA classification head applies GELU between its two linear layers where this "
               "project's pooler applies tanh, so no ElectraForSequenceClassification gives the same logits",
}


# ---------------------------------------------------------------------------------------------- tokenizer
def tokenizer_source(folder: Path, depth: int = 0) -> Optional[str]:
    """The encoder name or folder a run's tokenizer came from, following runs that continued other runs."""
    from mt_dnn.config import load_config
    cfg = load_config(Path(folder) / ckpt.CONFIG)
    if cfg.resume and cfg.model_ckpt:  # it continued an MT-DNN/SAGE .pt
        return None
    origin = cfg.init_checkpoint
    kind = checkpoint_kind(origin)
    if kind == "encoder":
        return origin
    if kind == "run" and depth < 20:
        return tokenizer_source(Path(origin), depth + 1)
    return None  # an MT-DNN .pt carries no tokenizer


def load_export_tokenizer(folder: Path, tokenizer: Optional[str], vocab_size: int):
    source = tokenizer or tokenizer_source(folder)
    if source is None:
        raise ExportError(f"{folder}: no tokenizer is known for this run (it started from an MT-DNN .pt "
                          "checkpoint); pass --tokenizer NAME_OR_FOLDER")
    tok = encoders.load_tokenizer(source)
    if len(tok) > vocab_size:
        raise ExportError(f"--tokenizer {source}: {len(tok)} tokens, but the encoder's vocabulary has {vocab_size}")
    return tok


# ---------------------------------------------------------------------------------------------- classifier
def _layout(model: MTDNNModel, task: str) -> ClassifierLayout:
    model_type = model.encoder.config.model_type
    if model_type in REFUSED:
        raise ExportError(f"cannot export task {task} as {model_type}: {REFUSED[model_type]}")
    if model_type not in LAYOUTS:
        raise ExportError(f"cannot export task {task}: no exact sequence-classification layout is known for "
                          f"model_type '{model_type}' (known: {', '.join(LAYOUTS)}); export the encoder alone")
    layout = LAYOUTS[model_type]
    if layout.pooler_dense is None and getattr(model.encoder, "pooler", None) is None:
        raise ExportError(f"cannot export task {task}: this {model_type} encoder has no pooler of its own")
    if model.pooler_actf != "tanh":
        raise ExportError(f"cannot export task {task}: its pooler applies {model.pooler_actf} (--pooler_actf, "
                          f"{model.head_layout} head layout) where HF's {model_type} classification head applies "
                          "tanh, so no AutoModelForSequenceClassification gives the same logits")
    return layout


def _check_head(model: MTDNNModel, task: str) -> None:
    if task not in model.task_defs:
        raise ExportError(f"--task: '{task}' is not a task of this checkpoint ({', '.join(model.task_defs)})")
    td, head = model.task_defs[task], model.heads[task]
    if td.task_type is TaskType.Ranking:
        raise ExportError(f"cannot export task {task}: it is a Ranking task (one score per hypothesis, softmax "
                          "across them), which AutoModelForSequenceClassification does not compute; export the "
                          "encoder alone")
    if type(head) not in (ClassificationHead, ScoreHead):
        raise ExportError(f"cannot export task {task}: its head is a {type(head).__name__}, which has no Hugging "
                          "Face sequence-classification equivalent")


def _classifier_config(model: MTDNNModel, task: str, layout: ClassifierLayout):
    """The HF config; id2label/label2id are the trained order, since restore() refuses a task definition that
    differs from the checkpoint's task_labels.json (an export is of the trained model, so it is never relabelled)."""
    td = model.task_defs[task]
    config = model.encoder.config.__class__.from_dict(model.encoder.config.to_dict())
    if td.is_regression:
        config.num_labels, config.problem_type = 1, "regression"
    else:
        config.num_labels, config.problem_type = td.n_class, "single_label_classification"
        config.id2label = dict(enumerate(td.labels))
        config.label2id = {name: i for i, name in enumerate(td.labels)}
    if hasattr(config, "classifier_dropout"):
        config.classifier_dropout = td.dropout_p
    for name, value in layout.config:
        setattr(config, name, value)
    return config


def _prefixed(module: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


def sequence_classifier(model: MTDNNModel, task: str):
    """An AutoModelForSequenceClassification holding this model's encoder, pooler and ``task`` head."""
    from transformers import AutoModelForSequenceClassification
    _check_head(model, task)
    layout = _layout(model, task)
    hf = AutoModelForSequenceClassification.from_config(_classifier_config(model, task, layout))
    encoder_state = model.encoder.state_dict()
    pooler = model.encoder.pooler.dense if model.uses_encoder_pooler else model.pooler_of(task).dense
    if layout.pooler_dense is not None:
        encoder_state = {k: v for k, v in encoder_state.items() if not k.startswith("pooler.")}
    elif not model.uses_encoder_pooler:  # BERT's head applies the base model's pooler: the layout's goes there
        encoder_state.update(_prefixed(pooler, "pooler.dense"))
    state = {f"{hf.base_model_prefix}.{k}": v for k, v in encoder_state.items()}
    if layout.pooler_dense is not None:
        state.update(_prefixed(pooler, layout.pooler_dense))
    state.update(_prefixed(model.heads[task].proj, layout.out))
    missing, unexpected = hf.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ExportError(f"cannot export task {task}: the {type(hf).__name__} layout does not match (missing "
                          f"{sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    return hf


# ---------------------------------------------------------------------------------------------- self-check
def probe_batch(config, n: int = 4, length: int = 12) -> dict[str, torch.Tensor]:
    """Deterministic random inputs with padding and two segments, to compare two implementations on."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[1, length // 2:] = 0
    types = torch.zeros(n, length, dtype=torch.long)
    if getattr(config, "type_vocab_size", 1) > 1:
        types[:, length // 2:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


@torch.no_grad()
def _ours(model: MTDNNModel, task: Optional[str], batch: dict) -> torch.Tensor:
    model.eval()
    if task is None:
        return model.encoder(**batch, return_dict=True).last_hidden_state
    out = model(task, **batch)
    return out if out.ndim == 2 else out.unsqueeze(-1)


@torch.no_grad()
def _theirs(folder: Path, task: Optional[str], batch: dict) -> torch.Tensor:
    from transformers import AutoModel, AutoModelForSequenceClassification
    auto = AutoModel if task is None else AutoModelForSequenceClassification
    hf, info = auto.from_pretrained(str(folder), output_loading_info=True)
    if info.get("missing_keys") or info.get("mismatched_keys"):
        raise ExportError(f"export self-check: {auto.__name__} left weights uninitialised "
                          f"({sorted(info.get('missing_keys') or info.get('mismatched_keys'))[:3]})")
    out = hf.eval()(**batch, return_dict=True)
    return out.last_hidden_state if task is None else out.logits


def self_check(model: MTDNNModel, folder: Path, task: Optional[str]) -> float:
    """Largest |difference| between the model's outputs and the reloaded export's; above TOLERANCE is an error."""
    batch = probe_batch(model.encoder.config)
    ours, theirs = _ours(model, task, batch), _theirs(folder, task, batch)
    keep = batch["attention_mask"].bool() if task is None else torch.ones(len(ours), dtype=torch.bool)
    diff = (ours[keep] - theirs[keep]).abs().max().item()
    if diff > TOLERANCE:
        raise ExportError(f"export self-check: the exported model's outputs differ from the checkpoint's by "
                          f"{diff:.3g} (> {TOLERANCE}); nothing was written")
    return diff


# ---------------------------------------------------------------------------------------------- export
def export(checkpoint: Path, out: Path, task: Optional[str] = None, tokenizer: Optional[str] = None,
           overwrite: bool = False, report: Callable[[str], None] = lambda line: None,
           repo: Optional[str] = None) -> dict:
    """Write the HF folder ``out`` (temp folder beside it, checked, then renamed); returns a summary.

    What a killed export left beside ``out`` goes first, as train.py does in its run folder: a previous ``out``
    parked during a replace comes back, dead writers' temp folders are removed (each step is ``report``ed).
    The folder carries a model card (mt_dnn/model_card.py) whose loading snippet names ``repo`` (default: ``out``)."""
    from mt_dnn.restore import restore
    checkpoint, out = Path(checkpoint), Path(out)
    check_output_root(out, "--out", (checkpoint,))  # --overwrite replaces the folder: never /, ~, the run
    for what in clean_stale_temps(out.parent):
        report(f"{out.parent}: {what} (left by an interrupted run)")
    if out.exists() and not overwrite:
        raise ExportError(f"--out {out}: already exists (pass --overwrite to replace it)")
    model = restore(checkpoint).model.eval()
    hf = model.encoder if task is None else sequence_classifier(model, task)
    tok = load_export_tokenizer(checkpoint, tokenizer, model.encoder.config.vocab_size)
    with atomic_folder(out, overwrite=True) as tmp:
        hf.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        diff = self_check(model, tmp, task)
        model_card.write(tmp, checkpoint, task, repo or str(out))
    return {"out": str(out), "task": task, "architecture": type(hf).__name__, "max_abs_diff": diff,
            "model_card": str(out / model_card.FILE)}
