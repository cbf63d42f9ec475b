"""The training configuration: one typed dataclass, and the command line derived from it.

Each field carries its help text and its MT-DNN / SAGE-repo aliases in ``dataclasses.field(metadata=...)``, so
names, defaults and help live in one place; :func:`build_parser` turns the fields into flags (never at import).
MT-DNN's and the SAGE repository's flags without a field here parse too: :mod:`mt_dnn.upstream_flags` says for
each one what its values get (a one-line notice where they change nothing, a one-line refusal otherwise). The
config is saved as JSON next to every checkpoint so a run can be resumed or inspected without the original command
line.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import pretrained_models
from data_utils.safe_load import loads_json
from module.bert_optim import FORMULAS, OPTIMIZERS, SCHEDULES
from module.pooler import ACTIVATIONS
from module.sage.dispatch import IMPLEMENTATIONS
from mt_dnn import head_layout as layouts
from mt_dnn import reporting, settings, upstream_flags
from mt_dnn.upstream_flags import NO_EFFECT_FLAGS, VALUE_FLAGS  # noqa: F401 (the table, re-exported)


def cli_field(default: Any = dataclasses.MISSING, help: str = "", *, aliases: Sequence[str] = (),
              factory: Any = dataclasses.MISSING, **cli: Any) -> Any:
    """A config field with its command-line help, MT-DNN aliases (``aliases``) and argparse overrides (``cli``)."""
    meta = {"help": help, "aliases": tuple(aliases), "cli": cli}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Everything a training run depends on. Field names are MT-DNN's flag names where those exist."""
    train_datasets: list[str] = cli_field(
        factory=list, help="comma-separated task names to train on, e.g. rte,mrpc (required unless --train_file or "
        "--dataset_name gives a one-task run)")
    test_datasets: list[str] = cli_field(
        factory=list, help="comma-separated datasets to evaluate after each epoch: a task (all its dev/test "
        "splits) or MT-DNN's task_prefix name such as mnli_matched (splits matched_dev, matched_test); "
        "default: the training tasks")
    task_def: str = cli_field("experiments/glue/glue_task_def.yml", "YAML task-definition file")
    data_dir: str = cli_field(
        "data/canonical_data/bert-base-uncased",
        "folder with the tokenized {task}_{split}.jsonl (or MT-DNN's .json) shards")
    init_checkpoint: str = cli_field(
        pretrained_models.DEFAULT_ENCODER,
        "encoder: a registry name (see pretrained_models.py), a local folder or a hub name; or a trained model to "
        "continue from: a best/ or step-N/ folder of a run, or an MT-DNN .pt checkpoint")
    encoder_type: Optional[int] = cli_field(
        None, f"MT-DNN encoder type, checked against the encoder: {pretrained_models.encoder_types_text()}")
    output_dir: str = cli_field("checkpoints/run")
    # HF run_glue.py's data flags: a one-task run on these, its shards built in {output_dir}-data/
    train_file: Optional[str] = cli_field(None, "run_glue.py's training file (.csv, .json, .jsonl, .parquet): a "
                                          "one-task run; texts, labels and task type follow run_glue.py's rules")
    validation_file: Optional[str] = cli_field(None, "run_glue.py's dev file (the --train_file's suffix)")
    test_file: Optional[str] = cli_field(None, "run_glue.py's test file (labels not read; predictions are written)")
    dataset_name: Optional[str] = cli_field(None, "a datasets.load_dataset name (its train/validation/test splits) "
                                            "for a one-task run, instead of --train_file")
    dataset_config_name: Optional[str] = cli_field(None, "the --dataset_name's configuration")
    # optimisation
    optimizer: str = cli_field("usadamax", f"one of {', '.join(OPTIMIZERS)}", aliases=("--optim",))
    learning_rate: float = cli_field(5e-5)
    beta3: float = cli_field(0.75, "SAGE sensitivity EMA coefficient")
    betas: tuple[float, float] = cli_field((0.9, 0.999))
    adam_eps: float = cli_field(1e-6)
    weight_decay: float = cli_field(0.01, "decay of the decay groups (reference: 0.01)")
    momentum: float = cli_field(0.0, "momentum of sgd/ussgd (MT-DNN's --momentum)")
    sage_formula: Optional[str] = cli_field(None, f"one of {', '.join(FORMULAS)} (default: the optimizer's own)")
    optim_impl: str = cli_field("auto", choices=IMPLEMENTATIONS)
    warmup: float = cli_field(0.1, "warmup ratio of the total steps")
    warmup_schedule: str = cli_field(
        "warmup_linear", f"one of {', '.join(SCHEDULES)} (the SAGE repository's warmup_constant and "
        "warmup_linear_xdl are constant and linear; MT-DNN's --scheduler_type 0/1/2 sets linear/cosine/constant)")
    global_grad_clipping: float = cli_field(1.0, "clip the norm of all gradients together to this (0: off)")
    grad_clipping: float = cli_field(
        0.0, "then clip each parameter's gradient to this norm on its own, as the authors' optimizers did with "
        "max_grad_norm (0: off)")
    grad_accumulation_step: int = cli_field(1)
    # model
    update_bert_opt: int = cli_field(
        0, "MT-DNN's switch: > 0 freezes the encoder (embeddings and layers); the pooler and heads train")
    num_hidden_layers: int = cli_field(-1, "keep only the encoder's first N layers (-1: all)")
    bert_dropout_p: Optional[float] = cli_field(None, "the encoder's hidden dropout (default: its own config's)")
    dropout_p: float = cli_field(0.1, "classifier dropout of tasks whose YAML entry gives no dropout_p")
    head_layout: Optional[str] = cli_field(
        None, "which [CLS] pooler the heads read: encoder (the encoder's own pretrained pooler), sage (the SAGE "
        "repository's network: one fresh dense + activation shared by all tasks) or mtdnn (MT-DNN's: a fresh "
        "pooler per task); default: the --init_checkpoint's layout when it is a trained model, else encoder",
        choices=layouts.LAYOUTS)
    pooler_actf: Optional[str] = cli_field(
        None, "activation of the sage/mtdnn poolers (default: tanh for sage, linear for mtdnn, which is what "
        "MT-DNN's code computes); the encoder layout's pooler is tanh", choices=tuple(ACTIVATIONS))
    answer_opt: int = cli_field(1, "1: tasks with enable_san: true get the SAN answer head; 0: linear heads only")
    answer_num_turn: int = cli_field(5, "SAN: reasoning steps")
    answer_mem_drop_p: float = cli_field(0.1, "SAN: probability of dropping a step's prediction while training")
    answer_att_hidden_size: int = cli_field(128, "SAN: width of the hypothesis self-attention")
    answer_dropout_p: float = cli_field(0.1, "SAN: dropout on the state between steps")
    # data
    batch_size: int = cli_field(32)
    batch_size_eval: int = cli_field(128)
    max_seq_len: int = cli_field(512, "truncate longer shard sequences to this length")
    epochs: int = cli_field(3)
    max_steps: int = cli_field(0, "stop after this many optimizer steps (0: no limit)")
    mix_opt: int = cli_field(0, "0: mix all tasks' batches; 1: auxiliary tasks first")
    ratio: float = cli_field(
        0.0, "if > 0, use at most ratio × (first task's batches) batches of the auxiliary tasks each epoch")
    shard_cache: bool = cli_field(
        True, "serve Classification/Regression/Ranking shards from a memory-mapped cache built next to them "
        "(.shard_cache/) on first use and shared by the ranks of a node (--no_shard_cache: read each shard into "
        "memory)")
    max_train_samples: int = cli_field(0, "use only the first N examples of each training set")
    max_eval_samples: int = cli_field(0, "evaluate on only the first N examples of each split")
    num_workers: Optional[int] = cli_field(
        None, "processes that build training micro-batches ahead of the training thread (default: 2 on CUDA, "
        "0 on CPU; 0 builds them on the training thread); the batches, hence the run, are the same for any N",
        aliases=("--dataloader_num_workers",))
    # extra objectives (mt_dnn/objectives.py); MT-DNN's names and defaults
    adv_train: bool = cli_field(
        False, "SMART: add adv_alpha × the divergence (task field adv_loss) between the outputs on clean and on "
        "adversarially perturbed word embeddings")
    adv_opt: int = cli_field(0, "MT-DNN's SMART variant switch; this project has one variant, so it is recorded "
                                "and changes nothing")
    adv_norm_level: int = cli_field(0, "SMART: rescale the perturbation per token (0) or per sequence (1)")
    adv_p_norm: str = cli_field("inf", "SMART: the norm the perturbation is rescaled to unit size in",
                                choices=("inf", "l2", "l1"))
    adv_alpha: float = cli_field(1.0, "SMART: weight of the adversarial divergence")
    adv_k: int = cli_field(1, "SMART: ascent steps per micro-batch")
    adv_step_size: float = cli_field(1e-5, "SMART: ascent step size")
    adv_noise_var: float = cli_field(1e-5, "SMART: scale (standard deviation) of the initial Gaussian noise")
    adv_epsilon: float = cli_field(1e-6, "SMART: added to the norm when rescaling (keeps a zero step finite)")
    mkd_opt: int = cli_field(
        0, "> 0: multi-task knowledge distillation on the training shards' soft_label (written by "
        "prepare_distillation_data.py)", aliases=("--mkd-opt",))
    kd_loss: Optional[str] = cli_field(
        None, "distillation loss of tasks whose task definition gives no kd_loss: KlCriterion or MseCriterion "
        "(default: KlCriterion, and MseCriterion for Regression)")
    kd_alpha: float = cli_field(0.5, "weight of the distillation loss; the hard-label loss gets 1 - kd_alpha")
    # precision, reproducibility, output
    fp16: bool = cli_field(False, "float16 autocast with a GradScaler (V100 and newer)")
    bf16: bool = cli_field(False, "bfloat16 autocast (Ampere and newer, and CPU; refused on V100/T4, which emulate "
                                  "it: use --fp16 there)")
    tf32: bool = cli_field(True, "TF32 tensor-core matmuls for float32 work on Ampere (A100) and newer GPUs "
                                 "(--no_tf32: full float32 matmuls); no effect elsewhere")
    compile: bool = cli_field(
        False, "torch.compile the training forward's encoder (CUDA graphs on GPU), with batches padded to "
        "length buckets of 32 and a fixed batch size so the encoder compiles once per bucket, shared by the "
        "tasks; falls back to eager with a warning if compiling fails")
    seed: int = cli_field(2018)
    resume: bool = cli_field(False, "continue from the last checkpoint in --output_dir")
    overwrite: bool = cli_field(
        False, "remove the run already in --output_dir (train.py's own files: checkpoints, best/, metrics, scores, "
        "logs; other files are kept) before starting; without it or --resume, a folder holding a run is refused")
    model_ckpt: Optional[str] = cli_field(
        None, "with --resume and no checkpoint in --output_dir yet: continue a model_N.pt written by the SAGE "
        "repository's (or MT-DNN's) train.py, as their --resume --model_ckpt does: its weights, optimizer state "
        "and step count (its saved options must match this run's flags); read only under --resume")
    save_every_steps: int = cli_field(0, "also checkpoint every N optimizer steps (for --resume)")
    keep_last: int = cli_field(1, "step checkpoints to keep")
    save_per_epoch: bool = cli_field(
        False, "after each epoch's evaluation, also save the model as OUTPUT_DIR/epoch-N/ (MT-DNN's model_N.pt), "
        "a checkpoint folder that predict.py, export.py and --init_checkpoint read")
    keep_epochs: int = cli_field(0, "epoch-N/ folders of --save_per_epoch to keep, newest first (0: all)")
    save_per_updates_on: bool = cli_field(
        False, "also evaluate the dev and test sets, and write a step-N/ checkpoint, every --save_per_updates "
        "optimizer updates inside an epoch (MT-DNN's model_{epoch}_{updates}.pt)")
    save_per_updates: int = cli_field(10000, "updates between the evaluations of --save_per_updates_on")
    log_every: int = cli_field(
        25, "every N optimizer updates (and after the first), log MT-DNN's 'Task [ 0] updates[ N] train loss[...] "
        "remaining[...]' line; 0: never", aliases=("--log_per_updates",))
    log_file: Optional[str] = cli_field(
        None, "also write the training log to this file (it always goes to OUTPUT_DIR/train.log)")
    num_threads: int = cli_field(0, "torch CPU threads (0: torch's default)")
    tensorboard: bool = cli_field(True, "write TensorBoard scalars (--no_tensorboard: don't)")
    report_to: Optional[list[str]] = cli_field(
        None, "where the run reports: tensorboard, mlflow, wandb (several allowed), all (every installed one) or "
        "none (default: tensorboard, unless --no_tensorboard)", type=str, nargs="+", metavar="REPORTER")
    device: str = cli_field("auto", "auto, cpu, cuda, cuda:N (under torchrun: each rank's LOCAL_RANK GPU)")
    log_sensitivity_every: int = cli_field(
        0, "every N steps, append per-block sensitivity and local variation U to sensitivity.jsonl (0: off)")
    # distributed (torchrun)
    fsdp: bool = cli_field(
        False, "under torchrun, shard parameters, gradients and optimizer state with FSDP2 instead of DDP")
    dist_timeout: float = cli_field(30.0, "minutes a collective may wait before failing")
    # reliability
    allow_config_change: bool = cli_field(
        False, "--resume even when the checkpoint's config differs in fields that change the run (listed in the log)")
    allow_unused_weights: bool = cli_field(
        False, "start from an --init_checkpoint even when some of its trained tensors for this run's tasks cannot be "
        "loaded (they are listed in the log)")

    def validate(self) -> "TrainConfig":
        """Reject inconsistent settings with one line naming the flag."""
        def bad(flag: str, why: str):
            raise ValueError(f"--{flag}: {why}")

        if not self.train_datasets and not (self.train_file or self.dataset_name):
            bad("train_datasets", "at least one training dataset is required (or --train_file / --dataset_name)")
        for name in ("validation_file", "test_file", "dataset_config_name"):
            source = "dataset_name" if name == "dataset_config_name" else "train_file"
            if getattr(self, name) and not getattr(self, source):
                bad(name, f"needs --{source} (run_glue.py's one-task run)")
        if self.dataset_name and (self.train_file or self.validation_file or self.test_file):
            bad("dataset_name", "and --train_file/--validation_file/--test_file name two sources; give one")
        for name in ("train_datasets", "test_datasets"):
            names = getattr(self, name)
            repeated = sorted({t for t in names if names.count(t) > 1})
            if repeated:
                bad(name, f"task(s) {', '.join(repeated)} given more than once")
        for f in dataclasses.fields(self):  # nan/inf pass every range check below, so refuse them first
            value = getattr(self, f.name)
            values = value if isinstance(value, tuple) else (value,)
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                bad(f.name, f"must be a finite number, got {value}")
        if self.optimizer.lower() not in OPTIMIZERS:
            bad("optimizer", f"unknown optimizer '{self.optimizer}'; known: {', '.join(OPTIMIZERS)}")
        if self.warmup_schedule not in SCHEDULES:
            bad("warmup_schedule", f"unknown schedule '{self.warmup_schedule}'; known: {', '.join(SCHEDULES)}")
        if self.sage_formula is not None and self.sage_formula not in FORMULAS:
            bad("sage_formula", f"unknown formula '{self.sage_formula}'; known: {', '.join(FORMULAS)}")
        if self.optim_impl not in IMPLEMENTATIONS:
            bad("optim_impl", f"expected one of {', '.join(IMPLEMENTATIONS)}")
        for name in ("batch_size", "batch_size_eval", "grad_accumulation_step", "max_seq_len"):
            if getattr(self, name) < 1:
                bad(name, f"must be >= 1, got {getattr(self, name)}")
        if self.epochs < 1 and self.max_steps < 1:
            bad("epochs", "must be >= 1 (or give --max_steps)")
        if self.learning_rate < 0:
            bad("learning_rate", f"must be >= 0, got {self.learning_rate}")
        for name in ("save_every_steps", "max_steps", "log_every", "num_threads", "max_train_samples",
                     "max_eval_samples", "global_grad_clipping", "adam_eps", "weight_decay"):
            if getattr(self, name) < 0:
                bad(name, f"must be >= 0, got {getattr(self, name)}")
        if self.save_per_updates < 1:
            bad("save_per_updates", f"must be >= 1, got {self.save_per_updates}")
        if self.keep_epochs < 0:
            bad("keep_epochs", f"must be >= 0 (0: keep every epoch-N folder), got {self.keep_epochs}")
        if self.keep_epochs and not self.save_per_epoch:
            bad("keep_epochs", "applies to the epoch-N folders of --save_per_epoch; add --save_per_epoch or leave "
                               "the flag out")
        if self.keep_last < 1:
            bad("keep_last", f"must be >= 1 (the newest step checkpoint is what --resume reads), got {self.keep_last}")
        if not 0.0 <= self.beta3 < 1.0:
            bad("beta3", f"must be in [0, 1), got {self.beta3}")
        if not 0.0 <= self.warmup < 1.0:
            bad("warmup", f"must be a ratio in [0, 1), got {self.warmup}")
        if self.fp16 and self.bf16:
            bad("fp16", "choose one of --fp16 and --bf16")
        if self.resume and self.overwrite:
            bad("overwrite", "choose one of --resume (continue the run in --output_dir) and --overwrite (remove it)")
        if self.ratio < 0:
            bad("ratio", f"must be >= 0, got {self.ratio}")
        if self.mix_opt not in (0, 1):
            bad("mix_opt", f"must be 0 (mix all tasks) or 1 (auxiliary tasks first), got {self.mix_opt}")
        if self.log_sensitivity_every < 0:
            bad("log_sensitivity_every", f"must be >= 0, got {self.log_sensitivity_every}")
        if self.fsdp and self.log_sensitivity_every:
            bad("log_sensitivity_every", "not available with --fsdp (the tracker needs whole parameter tensors)")
        if self.fsdp and self.optim_impl == "fused":
            bad("optim_impl", "fused is not available on FSDP-sharded parameters; use auto or foreach")
        if self.num_workers is not None and self.num_workers < 0:
            bad("num_workers", f"must be >= 0, got {self.num_workers}")
        if self.compile and self.fsdp:
            bad("compile", "not available with --fsdp (use DDP: the default under torchrun)")
        if self.dist_timeout <= 0:
            bad("dist_timeout", f"must be > 0 minutes, got {self.dist_timeout}")
        if self.encoder_type is not None and self.encoder_type not in pretrained_models.ENCODER_TYPES:
            bad("encoder_type", f"unknown type {self.encoder_type}; known: {sorted(pretrained_models.ENCODER_TYPES)}")
        if self.grad_clipping < 0:
            bad("grad_clipping", f"must be >= 0 (0: off), got {self.grad_clipping}")
        if self.momentum < 0:
            bad("momentum", f"must be >= 0, got {self.momentum}")
        for name in ("dropout_p", "answer_mem_drop_p", "answer_dropout_p"):
            if not 0.0 <= getattr(self, name) < 1.0:
                bad(name, f"must be in [0, 1), got {getattr(self, name)}")
        if self.bert_dropout_p is not None and not 0.0 <= self.bert_dropout_p < 1.0:
            bad("bert_dropout_p", f"must be in [0, 1), got {self.bert_dropout_p}")
        problem = layouts.check(self.head_layout, self.pooler_actf)
        if problem and (self.head_layout is not None or self.pooler_actf not in ACTIVATIONS):
            raise ValueError(problem)  # an activation for an undecided layout is checked once the layout is known
        if self.model_ckpt is not None and self.fsdp:
            bad("model_ckpt", "not available with --fsdp (use DDP: the default under torchrun)")
        if self.answer_opt not in (0, 1):
            bad("answer_opt", f"must be 0 (linear heads) or 1 (SAN where the task def enables it), "
                              f"got {self.answer_opt}")
        if self.num_hidden_layers == 0 or self.num_hidden_layers < -1:
            bad("num_hidden_layers", f"must be >= 1, or -1 for all layers, got {self.num_hidden_layers}")
        for name in ("answer_num_turn", "answer_att_hidden_size"):
            if getattr(self, name) < 1:
                bad(name, f"must be >= 1, got {getattr(self, name)}")
        self._validate_objectives(bad)
        reporting.names(self.report_to, self.tensorboard)  # unknown names and contradictions
        return self

    def _validate_objectives(self, bad) -> None:
        if self.adv_norm_level not in (0, 1):
            bad("adv_norm_level", f"must be 0 (per token) or 1 (per sequence), got {self.adv_norm_level}")
        if self.adv_p_norm not in ("inf", "l2", "l1"):
            bad("adv_p_norm", f"must be inf, l2 or l1, got {self.adv_p_norm!r}")
        if self.adv_k < 1:
            bad("adv_k", f"must be >= 1, got {self.adv_k}")
        for name in ("adv_alpha", "adv_step_size", "adv_noise_var", "adv_epsilon"):
            if getattr(self, name) < 0:
                bad(name, f"must be >= 0, got {getattr(self, name)}")
        if self.adv_train and self.fsdp:
            bad("adv_train", "not available with --fsdp (use DDP: the default under torchrun)")
        if self.mkd_opt < 0:
            bad("mkd_opt", f"must be >= 0 (0: off), got {self.mkd_opt}")
        if self.kd_loss is not None and self.kd_loss not in ("KlCriterion", "MseCriterion"):
            bad("kd_loss", f"unknown loss {self.kd_loss!r}; known: KlCriterion, MseCriterion")
        if not 0.0 <= self.kd_alpha <= 1.0:
            bad("kd_alpha", f"must be in [0, 1], got {self.kd_alpha}")

    def model_settings(self) -> settings.ModelSettings:
        return settings.pick(settings.ModelSettings, self)

    def warm_start_settings(self) -> settings.WarmStartSettings:
        return settings.pick(settings.WarmStartSettings, self, train_datasets=tuple(self.train_datasets),
                             model=self.model_settings())

    def smart_settings(self) -> settings.SmartSettings:
        return settings.pick(settings.SmartSettings, self)

    def distill_settings(self) -> settings.DistillSettings:
        return settings.pick(settings.DistillSettings, self)

    def objective_settings(self) -> settings.ObjectiveSettings:
        return settings.pick(settings.ObjectiveSettings, self, smart=self.smart_settings(),
                             distill=self.distill_settings())

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "config") -> "TrainConfig":
        raw = loads_json(text, source)
        if not isinstance(raw, dict):
            raise ValueError(f"{source}: expected a JSON object of config fields, got {type(raw).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{source}: unknown config field(s) {', '.join(unknown)}")
        if "betas" in raw:
            raw["betas"] = tuple(raw["betas"])
        return cls(**raw).validate()


# ------------------------------------------------------------------------------------------ MT-DNN flags
#: MT-DNN's and the SAGE repository's --warmup_schedule names for schedules this project has under another name
#: (same formula at every step: see module.bert_optim)
SCHEDULE_ALIASES = {"warmup_constant": "constant", "warmup_linear_xdl": "linear"}
_UPSTREAM = "_upstream_flags_given"


class _Upstream(argparse.Action):
    """Records an upstream flag without a TrainConfig field (with or without a value) for the judging."""

    def __call__(self, parser, namespace, values, option_string=None):
        getattr(namespace, _UPSTREAM).append((option_string, values))


# ------------------------------------------------------------------------------------------ the parser
def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _argument(f: dataclasses.Field, hints: dict) -> tuple[list[str], dict]:
    """argparse's (option strings, keyword arguments) for one config field, from its type and metadata."""
    meta = f.metadata
    kind = hints[f.name]
    names = [f"--{f.name}", *meta.get("aliases", ())]
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    kw: dict = {"dest": f.name, "help": meta.get("help") or None}
    if kind is bool:
        kw.update(action="store_true", default=default)
    elif kind == list[str]:
        kw.update(type=_csv, default=default)
    elif kind == tuple[float, float]:
        kw.update(type=float, nargs=2, default=list(default))
    else:
        args = typing.get_args(kind)
        base = next(a for a in args if a is not type(None)) if args else kind  # Optional[X] -> X
        kw.update(type=base, default=default)
    if default is dataclasses.MISSING:
        kw.pop("default")
        kw["required"] = True
    kw.update(meta.get("cli", {}))
    if kw.get("help") and "default" in kw and kw["default"] not in (None, False, []) and kind is not bool:
        kw["help"] += f" (default: {kw['default']})"
    return names, kw


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Multi-task fine-tuning with SAGE optimizers (MT-DNN flag names).")
    p.set_defaults(**{_UPSTREAM: []})
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        names, kw = _argument(f, hints)
        if f.default is True:  # switches on by default (--tensorboard, --shard_cache): --no_X turns one off
            p.add_argument(f"--no_{f.name}", dest=f.name, action="store_false", help=kw["help"])
            p.add_argument(f"--{f.name}", dest=f.name, action="store_true", help=argparse.SUPPRESS)
            continue
        if f.name in ("test_datasets", "warmup_schedule", "save_per_updates"):
            kw["default"] = None  # parse_args fills in the training tasks, and tells a given value from none
        p.add_argument(*names, **kw)
    group = p.add_argument_group("MT-DNN and SAGE-repository flags without a field here (mt_dnn/upstream_flags.py)")
    for flag, decision in upstream_flags.all_flags().items():
        group.add_argument(flag, *upstream_flags.SPELLINGS.get(flag, ()), nargs="?", action=_Upstream,
                           default=argparse.SUPPRESS, help=decision.replace("%", "%%"))
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> TrainConfig:
    ns = build_parser().parse_args(argv)
    values = vars(ns)
    given = values.pop(_UPSTREAM)
    values["betas"] = tuple(values["betas"])
    typed = values["warmup_schedule"]  # None unless given: --scheduler_type may set it, and must agree with it
    values["warmup_schedule"] = SCHEDULE_ALIASES.get(typed, typed)
    if values["test_datasets"] is None:
        values["test_datasets"] = list(values["train_datasets"])
    per_updates = values["save_per_updates"]  # None unless given
    if per_updates is None:
        values["save_per_updates"] = TrainConfig.save_per_updates
    settings = dict(values, **({"--warmup_schedule": typed} if typed is not None else {}))
    notices = upstream_flags.judge(given, settings)
    values["warmup_schedule"] = settings["warmup_schedule"] or TrainConfig.warmup_schedule
    cfg = TrainConfig(**values).validate()
    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank parses; one copy of the warnings
        for line in notices:
            print(line, file=sys.stderr)
        if cfg.model_ckpt is not None and not cfg.resume:  # MT-DNN and the SAGE repository read it only then
            print(f"train.py: warning: --model_ckpt {cfg.model_ckpt} has no effect without --resume (MT-DNN reads it "
                  "only under --resume; to start from a trained model use --init_checkpoint)", file=sys.stderr)
        if per_updates is not None and not cfg.save_per_updates_on:  # MT-DNN reads it only then
            print(f"train.py: warning: --save_per_updates {per_updates} has no effect without "
                  "--save_per_updates_on (MT-DNN reads it only then)", file=sys.stderr)
    return cfg


def load_config(path: str | Path) -> TrainConfig:
    try:
        text = Path(path).read_text(encoding="utf-8")
        return TrainConfig.from_json(text, source=str(path))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no training config there (not a checkpoint folder written by train.py?)") \
            from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except TypeError as exc:  # a JSON object whose values have the wrong shape for the dataclass
        raise ValueError(f"{path}: not a training config ({exc})") from None
    except ValueError as exc:  # a saved value that validate() refuses: say which file holds it
        raise ValueError(str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}") from None
