"""The training configuration: one typed dataclass, built from MT-DNN-compatible command-line flags.

The parser is created inside :func:`build_parser` (never at import), and the config is saved as JSON next to
every checkpoint so a run can be resumed or inspected without the original command line.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import pretrained_models
from module.bert_optim import FORMULAS, OPTIMIZERS, SCHEDULES
from module.sage_functional import IMPLEMENTATIONS


@dataclass
class TrainConfig:
    """Everything a training run depends on. Field names are MT-DNN's flag names where those exist."""
    train_datasets: list[str]
    test_datasets: list[str] = field(default_factory=list)
    task_def: str = "experiments/glue/glue_task_def.yml"
    data_dir: str = "data/canonical_data/bert-base-uncased"
    init_checkpoint: str = pretrained_models.DEFAULT_ENCODER
    encoder_type: Optional[int] = None
    output_dir: str = "checkpoints/run"
    # optimisation
    optimizer: str = "usadamax"
    learning_rate: float = 5e-5
    beta3: float = 0.75
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-6
    weight_decay: float = 0.01
    sage_formula: Optional[str] = None
    optim_impl: str = "auto"
    warmup: float = 0.1
    warmup_schedule: str = "warmup_linear"
    global_grad_clipping: float = 1.0
    grad_accumulation_step: int = 1
    # data
    batch_size: int = 32
    batch_size_eval: int = 128
    max_seq_len: int = 512
    epochs: int = 3
    max_steps: int = 0
    mix_opt: int = 0
    ratio: float = 0.0
    max_train_samples: int = 0
    max_eval_samples: int = 0
    # precision, reproducibility, output
    fp16: bool = False
    bf16: bool = False
    seed: int = 2018
    resume: bool = False
    save_every_steps: int = 0
    keep_last: int = 1
    log_every: int = 25
    num_threads: int = 0
    tensorboard: bool = True
    device: str = "auto"
    log_sensitivity_every: int = 0
    # distributed (torchrun)
    fsdp: bool = False
    dist_timeout: float = 30.0

    def validate(self) -> "TrainConfig":
        """Reject inconsistent settings with one line naming the flag."""
        def bad(flag: str, why: str):
            raise ValueError(f"--{flag}: {why}")

        if not self.train_datasets:
            bad("train_datasets", "at least one training dataset is required")
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
        if not 0.0 <= self.beta3 < 1.0:
            bad("beta3", f"must be in [0, 1), got {self.beta3}")
        if not 0.0 <= self.warmup < 1.0:
            bad("warmup", f"must be a ratio in [0, 1), got {self.warmup}")
        if self.fp16 and self.bf16:
            bad("fp16", "choose one of --fp16 and --bf16")
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
        if self.dist_timeout <= 0:
            bad("dist_timeout", f"must be > 0 minutes, got {self.dist_timeout}")
        if self.encoder_type is not None and self.encoder_type not in pretrained_models.ENCODER_TYPES:
            bad("encoder_type", f"unknown type {self.encoder_type}; known: {sorted(pretrained_models.ENCODER_TYPES)}")
        return self

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "config") -> "TrainConfig":
        raw = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{source}: unknown config field(s) {', '.join(unknown)}")
        if "betas" in raw:
            raw["betas"] = tuple(raw["betas"])
        return cls(**raw).validate()


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig(train_datasets=["x"])
    p = argparse.ArgumentParser(description="Multi-task fine-tuning with SAGE optimizers (MT-DNN flag names).")
    a = p.add_argument
    a("--train_datasets", type=_csv, required=True, help="comma-separated task names to train on, e.g. rte,mrpc")
    a("--test_datasets", type=_csv, default=None,
      help="comma-separated tasks to evaluate after each epoch on every dev/test split of their task def "
           "(default: the training tasks)")
    a("--task_def", default=d.task_def, help="YAML task-definition file")
    a("--data_dir", default=d.data_dir, help="folder with the tokenized {task}_{split}.jsonl shards")
    a("--init_checkpoint", default=d.init_checkpoint,
      help="encoder: a registry name (see pretrained_models.py), a local folder or a hub name")
    a("--encoder_type", type=int, default=None, help="MT-DNN encoder type: 1 BERT, 2 RoBERTa, 6 DeBERTa, 7 ELECTRA")
    a("--output_dir", default=d.output_dir)
    a("--optimizer", "--optim", dest="optimizer", default=d.optimizer, help=f"one of {', '.join(OPTIMIZERS)}")
    a("--learning_rate", type=float, default=d.learning_rate)
    a("--beta3", type=float, default=d.beta3, help="SAGE sensitivity EMA coefficient")
    a("--betas", type=float, nargs=2, default=list(d.betas))
    a("--adam_eps", type=float, default=d.adam_eps)
    a("--weight_decay", type=float, default=d.weight_decay, help="decay of the decay groups (reference: 0.01)")
    a("--sage_formula", default=None, help=f"one of {', '.join(FORMULAS)} (default: the optimizer's own)")
    a("--optim_impl", default=d.optim_impl, choices=IMPLEMENTATIONS)
    a("--warmup", type=float, default=d.warmup, help="warmup ratio of the total steps")
    a("--warmup_schedule", default=d.warmup_schedule, help=f"one of {', '.join(SCHEDULES)}")
    a("--global_grad_clipping", type=float, default=d.global_grad_clipping, help="0 disables clipping")
    a("--grad_accumulation_step", type=int, default=d.grad_accumulation_step)
    a("--batch_size", type=int, default=d.batch_size)
    a("--batch_size_eval", type=int, default=d.batch_size_eval)
    a("--max_seq_len", type=int, default=d.max_seq_len, help="truncate longer shard sequences to this length")
    a("--epochs", type=int, default=d.epochs)
    a("--max_steps", type=int, default=d.max_steps, help="stop after this many optimizer steps (0: no limit)")
    a("--mix_opt", type=int, default=d.mix_opt, help="0: mix all tasks' batches; 1: auxiliary tasks first")
    a("--ratio", type=float, default=d.ratio,
      help="if > 0, use at most ratio × (first task's batches) batches of the auxiliary tasks each epoch")
    a("--max_train_samples", type=int, default=0, help="use only the first N examples of each training set")
    a("--max_eval_samples", type=int, default=0, help="evaluate on only the first N examples of each split")
    a("--fp16", action="store_true", help="float16 autocast with a GradScaler (V100 and newer)")
    a("--bf16", action="store_true", help="bfloat16 autocast (Ampere and newer, and CPU)")
    a("--seed", type=int, default=d.seed)
    a("--resume", action="store_true", help="continue from the last checkpoint in --output_dir")
    a("--save_every_steps", type=int, default=0, help="also checkpoint every N optimizer steps (for --resume)")
    a("--keep_last", type=int, default=d.keep_last, help="step checkpoints to keep")
    a("--log_every", type=int, default=d.log_every)
    a("--num_threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    a("--no_tensorboard", dest="tensorboard", action="store_false")
    a("--device", default="auto", help="auto, cpu, cuda, cuda:N (under torchrun: each rank's LOCAL_RANK GPU)")
    a("--log_sensitivity_every", type=int, default=0,
      help="every N steps, append per-block sensitivity and local variation U to sensitivity.jsonl (0: off)")
    a("--fsdp", action="store_true",
      help="under torchrun, shard parameters, gradients and optimizer state with FSDP2 instead of DDP")
    a("--dist_timeout", type=float, default=d.dist_timeout, help="minutes a collective may wait before failing")
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> TrainConfig:
    ns = build_parser().parse_args(argv)
    values = vars(ns)
    values["betas"] = tuple(values["betas"])
    if values["test_datasets"] is None:
        values["test_datasets"] = list(values["train_datasets"])
    return TrainConfig(**values).validate()


def load_config(path: str | Path) -> TrainConfig:
    return TrainConfig.from_json(Path(path).read_text(encoding="utf-8"), source=str(path))
