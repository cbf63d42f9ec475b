"""The model card (``README.md``) export.py writes into a Hugging Face folder, in the Hub's conventions: YAML front
matter (``library_name``, ``pipeline_tag``, ``tags``, ``model-index`` with the dev metrics) and a body that says
what the model was trained on and how (tasks, labels, shards and row counts, encoder, schedule, optimizer and SAGE
settings), its dev metrics and how to load it.

Everything comes from the checkpoint folder itself: ``train_config.json``, ``task_labels.json``, ``data.json``
(shards and rows as read) and, in a ``best/`` folder, ``metrics.json`` (the evaluation that made it the best).
Metric values are written as recorded, unrounded, so the card names exactly what ``metrics.json`` holds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import yaml

from data_utils.safe_load import read_json
from mt_dnn import checkpoint as ckpt
from mt_dnn import data_record, task_labels
from mt_dnn.config import load_config

FILE = "README.md"
METRICS = "metrics.json"
SAGE_OPTIMIZERS = ("usadamax", "usadamw", "ussgd")
#: The Hub's metric ids (model-index ``type``) for this project's metric names; others are lower-cased.
HUB_METRICS = {"ACC": "accuracy", "F1": "f1", "MCC": "matthews_correlation", "Pearson": "pearsonr",
               "Spearman": "spearmanr", "AUC": "roc_auc"}


def _metrics(folder: Path) -> Optional[dict]:
    path = folder / METRICS
    return read_json(path) if path.is_file() else None


def _front_matter(name: str, task: Optional[str], signatures: dict, metrics: Optional[dict]) -> str:
    regression = task is not None and signatures.get(task, {}).get("task_type") == "Regression"
    pipeline = "feature-extraction" if task is None else "text-classification"
    meta: dict = {"library_name": "transformers", "pipeline_tag": pipeline,
                  "tags": ["mt-dnn", "sage", pipeline] + (["regression"] if regression else [])}
    results = []
    for dataset, values in (metrics or {}).get("dev", {}).items():
        owner = next((t for t in signatures if dataset.startswith(f"{t}_")), dataset.rsplit("_", 1)[0])
        if task is not None and owner != task:
            continue
        results.append({"task": {"type": pipeline, "name": owner},
                        "dataset": {"name": dataset, "type": owner, "split": dataset[len(owner) + 1:]},
                        "metrics": [{"type": HUB_METRICS.get(m, m.lower()), "name": m, "value": v}
                                    for m, v in values.items()]})
    if results:
        meta["model-index"] = [{"name": name, "results": results}]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def _data_lines(record: Optional[dict]) -> list[str]:
    if record is None:
        return ["This checkpoint predates the project's record of its shards (`data.json`): the row counts are "
                "not known."]
    lines = ["| task | split | rows | shard | bytes | CRC-32 |", "|---|---|---|---|---|---|"]
    for part in ("train", "eval"):
        for e in record.get(part, []):
            crc = f"{e['crc32']:08x}" if isinstance(e.get("crc32"), int) else ""
            shard = Path(str(e.get('file'))).name  # the file's name: a card goes public, the local path need not
            lines.append(f"| {e['task']} | {e['split']} | {e['rows']} | `{shard}` | {e.get('size', '')} "
                         f"| {crc} |")
    return lines


def _settings(cfg) -> list[str]:
    rows = [("encoder (`--init_checkpoint`)", cfg.init_checkpoint),
            ("learning rate", cfg.learning_rate), ("epochs", cfg.epochs), ("max steps", cfg.max_steps or "-"),
            ("batch size", cfg.batch_size), ("gradient accumulation", cfg.grad_accumulation_step),
            ("max sequence length", cfg.max_seq_len), ("warmup", f"{cfg.warmup} ({cfg.warmup_schedule})"),
            ("seed", cfg.seed), ("precision", "fp16" if cfg.fp16 else "bf16" if cfg.bf16 else "fp32"),
            ("optimizer", cfg.optimizer), ("betas", ", ".join(map(str, cfg.betas))), ("eps", cfg.adam_eps),
            ("weight decay", cfg.weight_decay),
            ("gradient clipping (global norm)", cfg.global_grad_clipping or "off")]
    if cfg.optimizer.lower() in SAGE_OPTIMIZERS:
        rows += [("SAGE beta3 (sensitivity EMA)", cfg.beta3),
                 ("SAGE formula", cfg.sage_formula or "the optimizer's own")]
    if cfg.adv_train:
        rows += [("SMART adversarial training", f"alpha {cfg.adv_alpha}, k {cfg.adv_k}, step {cfg.adv_step_size}, "
                                                f"noise {cfg.adv_noise_var}, norm {cfg.adv_p_norm}")]
    if cfg.mkd_opt:
        rows += [("distillation (`--mkd_opt`)", f"{cfg.kd_loss or 'default loss'}, kd_alpha {cfg.kd_alpha}")]
    return ["| setting | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]


def _metric_lines(metrics: Optional[dict], folder: str) -> list[str]:
    if not metrics or not metrics.get("dev"):
        return ["No dev metrics are recorded in this checkpoint (only `best/` and `epoch-N/` folders hold "
                "`metrics.json`)."]
    lines = [f"From `{folder}/metrics.json`: epoch {metrics.get('epoch')}, step {metrics.get('step')}; values as "
             "train.py records them, in percent (MT-DNN's scale), unrounded.", "",
             "| dataset | metric | value |", "|---|---|---|"]
    for dataset, values in metrics["dev"].items():
        lines += [f"| {dataset} | {m} | {v!r} |" for m, v in values.items()]
    if "glue_average" in metrics:
        lines.append(f"| (average) | glue_average | {metrics['glue_average']!r} |")
    return lines


def _usage(task: Optional[str], repo: str, regression: bool) -> list[str]:
    auto = "AutoModel" if task is None else "AutoModelForSequenceClassification"
    lines = ["```python", f"from transformers import AutoTokenizer, {auto}", "",
             f'tokenizer = AutoTokenizer.from_pretrained("{repo}")', f'model = {auto}.from_pretrained("{repo}")']
    if task is None:
        lines += ['hidden = model(**tokenizer(["A sentence."], return_tensors="pt")).last_hidden_state']
    else:
        lines += ['logits = model(**tokenizer(["A premise."], ["A hypothesis."], return_tensors="pt")).logits',
                  "score = float(logits[0, 0])" if regression else
                  "label = model.config.id2label[int(logits.argmax(-1))]"]
    return lines + ["```"]


def render(checkpoint: Path, task: Optional[str], repo: str) -> str:
    """The card's text for an export of ``checkpoint`` (``task``: the exported head, None for the encoder);
    ``repo``: what the loading snippet passes to ``from_pretrained``."""
    checkpoint = Path(checkpoint)
    cfg = load_config(checkpoint / ckpt.CONFIG)
    signatures = task_labels.read(checkpoint) or {}
    metrics = _metrics(checkpoint)
    name = repo.rsplit("/", 1)[-1]
    tasks = [t for t in dict.fromkeys(cfg.train_datasets) if task is None or t == task]
    label_lines = []
    for t in tasks:
        sig = signatures.get(t, {})
        labels = ", ".join(f"`{label}`" for label in sig.get("labels") or []) or "-"
        label_lines.append(f"| {t} | {sig.get('task_type', '?')} | {labels} |")
    regression = task is not None and signatures.get(task, {}).get("task_type") == "Regression"
    what = "the encoder alone" if task is None else f"the `{task}` head on its encoder"
    body = [f"# {name}", "",
            f"Fine-tuned with SAGE multi-task training (MT-DNN style) from `{cfg.init_checkpoint}`; this export holds "
            f"{what}. Trained on: {', '.join(cfg.train_datasets)}.", "",
            "## Tasks and labels", "", "| task | type | labels (id order) |", "|---|---|---|", *label_lines, "",
            "## Training data", "", *_data_lines(data_record.read(checkpoint)), "",
            "## Training settings", "", *_settings(cfg), "",
            "## Dev metrics", "", *_metric_lines(metrics, checkpoint.name), "",
            "## How to load it", "", *_usage(task, repo, regression), ""]
    return _front_matter(name, task, signatures, metrics) + "\n" + "\n".join(body)


def write(folder: Path, checkpoint: Path, task: Optional[str], repo: str) -> Path:
    path = Path(folder) / FILE
    path.write_text(render(checkpoint, task, repo), encoding="utf-8")
    return path
