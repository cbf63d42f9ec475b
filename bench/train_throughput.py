"""Training throughput (samples/s): this project's Trainer (Adamax-SAGE) vs transformers.Trainer (AdamW), one run.

Same encoder, same data (GLUE MRPC train), same batch size, same torch thread count, same number of optimizer
steps and examples per row. Rows:

- ``hf-defaults``: transformers.Trainer as run_glue runs it: every example padded to max_length, random order.
- ``hf-best``: transformers.Trainer with dynamic padding (DataCollatorWithPadding, multiple of 8) and length
  grouping (``train_sampling_strategy="group_by_length"``, transformers 5's name for ``group_by_length=True``).
- ``project``: mt_dnn.trainer.Trainer with ``--optimizer usadamax``, ``optim_impl="auto"`` (CPU: the
  torch.compile-fused update; CUDA: Triton), eager forward, and no evaluation (``test_datasets=[]``, stopped by
  ``fit(stop_after_steps=...)`` before the epoch ends). On CUDA its input pipeline runs in 2 worker processes
  (``--num_workers`` auto) with pinned memory.
- ``project-compile``: the same with ``--compile`` (static length buckets of 32 and a fixed batch; CUDA graphs on
  CUDA). Every bucket the epoch uses is compiled (and, on CUDA, graph-recorded) before the clock starts, by a
  few forward/backward passes without optimizer steps; that time is in the "first step" column. Default row on
  CUDA; on CPU (minutes of compiling) ask for it with ``--only``.

On CUDA every row's step end is a ``torch.cuda.synchronize()``; hf-best and both project rows run under bf16
autocast (``--no-bf16`` for fp32), hf-defaults stays fp32 as run_glue runs it; both HF rows use fused AdamW
(``adamw_torch_fused``).

Steady state is the time between the end of warm-up step W and the end of step W+N, read from timestamps taken
after every optimizer step (a TrainerCallback for transformers, a ``StepHook`` for this project's Trainer). Model
loading, data preparation and the first W steps (which carry the one-time compile of the fused optimizer) are
outside it and reported in their own columns. The default N is one mega-batch of transformers' length grouping
(it sorts each mega-batch longest first, so a shorter window would hand hf-best only long batches); the table
gives each row's mean padded length over the timed window and over a whole epoch, so the mixes can be compared,
and the process CPU seconds per timed step (all threads; on a quiet machine about threads × the wall time per step,
on a loaded one the wall-time columns drift while this one stays close to the work done).
Prints one markdown table; per-row step-time spread and the load average go to stderr.

    python -m bench.train_throughput [--device cpu|cuda] [--steps N] [--warmup_steps N] [--batch_size N]
                                     [--model minilm-l6] [--threads N]
                                     [--only hf-defaults,hf-best,project,project-compile] [--bf16|--no-bf16]
                                     [--random_bert_base]

    python -m bench.train_throughput --device cuda --random_bert_base   # BERT-base shapes on a GPU
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
if not __package__:  # run by its file path, where the project's packages do not import
    print("train_throughput.py: error: run it from the repository root as: python -m bench.train_throughput [flags]",
          file=sys.stderr)
    raise SystemExit(2)

import pretrained_models  # noqa: E402
from module import encoders  # noqa: E402
from data_utils import shards  # noqa: E402
import prepro_std  # noqa: E402
from data_utils.task_def import load_task_defs  # noqa: E402
from data_utils.tsv import read_canonical  # noqa: E402
from experiments.glue.glue_prepro import convert  # noqa: E402
from mt_dnn.batcher import PAD_MULTIPLE, epoch_plan  # noqa: E402

TASK = "mrpc"
TASK_DEF = ROOT / "experiments" / "glue" / "glue_task_def.yml"
ROWS = ("hf-defaults", "hf-best", "project", "project-compile")
DEFAULT_ROWS = {"cpu": ("hf-defaults", "hf-best", "project"), "cuda": ROWS}
WARM_CALLS = 3  # forward/backward calls per length bucket before timing (CUDA graph trees record on a later call)
BASELINES = ("hf-defaults", "hf-best")
LEARNING_RATE = 5e-5  # transformers' default and TrainConfig's: the schedules differ, the step cost does not


@dataclass
class BenchConfig:
    device: str
    steps: int  # 0: chosen from the data by default_steps()
    warmup_steps: int
    batch_size: int
    model: str
    threads: int
    glue_dir: Path
    max_seq_len: int = 128
    only: tuple[str, ...] = ROWS
    bf16: bool = False
    random_bert_base: bool = False

    @property
    def total_steps(self) -> int:
        return self.warmup_steps + self.steps


@dataclass
class Result:
    row: str
    optimizer: str
    padding: str
    step_ends: list[float]          # perf_counter after each optimizer step
    start: float                    # perf_counter when the training loop started
    padded_lengths: list[int] = field(default_factory=list)  # sequence length of each batch, in step order
    cpu_ends: list[float] = field(default_factory=list)  # process CPU time (all threads) after each step
    threads: int = 0
    epoch_length: Optional[float] = None  # mean padded length over a whole epoch (project rows: from the epoch plan)

    def steady_seconds(self, warmup: int, steps: int) -> float:
        return self.step_ends[warmup + steps - 1] - self.step_ends[warmup - 1]

    def samples_per_s(self, cfg: BenchConfig) -> float:
        return cfg.steps * cfg.batch_size / self.steady_seconds(cfg.warmup_steps, cfg.steps)

    def cpu_per_step(self, warmup: int, steps: int) -> float:
        """Process CPU seconds per timed step: the work done, much less sensitive than wall time to other load."""
        return (self.cpu_ends[warmup + steps - 1] - self.cpu_ends[warmup - 1]) / steps

    def mark_step(self, device_type: str) -> None:
        if device_type == "cuda":
            torch.cuda.synchronize()
        self.step_ends.append(time.perf_counter())
        self.cpu_ends.append(time.process_time())

    def first_seconds(self, warmup: int) -> float:
        return self.step_ends[warmup - 1] - self.start

    def mean_length(self, warmup: int, steps: int) -> float:
        timed = self.padded_lengths[warmup:warmup + steps]
        return sum(timed) / len(timed) if timed else float("nan")


# ----------------------------------------------------------------------------------------------------------
# Data and model: one canonical TSV and one shard folder shared by every row
# ----------------------------------------------------------------------------------------------------------
def _quiet(_msg: str) -> None:
    """Conversion and tokenization report every file; the table is what this script prints."""


def prepare_data(glue_dir: Path, work: Path, model: str, max_seq_len: int) -> tuple[Path, Path]:
    """GLUE MRPC -> canonical TSVs (glue_prepro) -> token shards (prepro_std): (train TSV, shard folder)."""
    convert(glue_dir, work, TASK_DEF, tasks=[TASK], log=_quiet)
    prepro_std.run(prepro_std.PreproConfig(model=model, root_dir=str(work), task_def=str(TASK_DEF),
                                           tasks=(TASK,), max_seq_len=max_seq_len, workers=1), log=_quiet)
    return work / f"{TASK}_train.tsv", work / shards.model_short_name(model)


def random_bert_base(model: str, folder: Path) -> str:
    """A randomly initialised BERT-base (BertConfig()) saved with ``model``'s tokenizer, loaded by both sides."""
    from transformers import AutoModel, BertConfig
    tokenizer = encoders.load_tokenizer(model)
    config = BertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def count_rows(tsv: Path) -> int:
    with tsv.open(encoding="utf-8") as handle:
        return sum(1 for _ in handle)


def check_window(tsv: Path, cfg: BenchConfig) -> None:
    """All timed steps must fall in epoch 0: the project's Trainer would otherwise stop to evaluate and checkpoint."""
    per_epoch = math.ceil(count_rows(tsv) / cfg.batch_size)
    if cfg.total_steps > per_epoch:
        raise SystemExit(f"train_throughput.py: error: --warmup_steps + --steps = {cfg.total_steps} is more than "
                         f"one {TASK} epoch ({per_epoch} steps at batch {cfg.batch_size}); lower them")


def default_steps(tsv: Path, cfg: BenchConfig) -> int:
    """Whole mega-batches of transformers' length grouping, which orders each mega-batch longest batch first:
    a window of one full cycle has the epoch's length mix, a shorter one would be biased (longer batches)."""
    mega = max(1, min(count_rows(tsv) // (cfg.batch_size * 4), 50))  # transformers' get_length_grouped_indices rule
    return mega * (3 if cfg.device == "cuda" else 1)


def set_threads(cfg: BenchConfig) -> None:
    torch.set_num_threads(cfg.threads)


# ----------------------------------------------------------------------------------------------------------
# transformers.Trainer rows
# ----------------------------------------------------------------------------------------------------------
def hf_dataset(tsv: Path, tokenizer, max_seq_len: int, pad_to_max: bool):
    """The canonical TSV tokenized by the HF tokenizer directly (pairs, truncated to max_seq_len)."""
    import datasets
    td = load_task_defs(TASK_DEF)[TASK]
    data = read_canonical(tsv, td, "train")
    enc = tokenizer(data.premises, data.hypotheses, truncation=True, max_length=max_seq_len,
                    padding="max_length" if pad_to_max else False)
    columns = {k: enc[k] for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc}
    columns["labels"] = data.labels
    columns["length"] = [len(ids) for ids in enc["input_ids"]]
    return datasets.Dataset.from_dict(columns)


class LengthRecorder:
    """Wraps a data collator and notes each batch's padded sequence length (in the order batches are made)."""

    def __init__(self, collator: Callable):
        self.collator, self.lengths = collator, []

    def __call__(self, features):
        batch = self.collator(features)
        self.lengths.append(int(batch["input_ids"].shape[1]))
        return batch


def hf_callback(result: Result):
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        """Timestamps the start of training and the end of every optimizer step."""

        def on_train_begin(self, args, state, control, **kwargs):
            result.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            result.mark_step(args.device.type)

    return StepClock()


def run_hf(cfg: BenchConfig, model_path: str, tsv: Path, work: Path, best: bool) -> Result:
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                              Trainer, TrainingArguments, default_data_collator)
    set_threads(cfg)
    tokenizer = AutoTokenizer.from_pretrained(model_path, use_fast=True)
    dataset = hf_dataset(tsv, tokenizer, cfg.max_seq_len, pad_to_max=not best)
    collator = LengthRecorder(DataCollatorWithPadding(tokenizer, pad_to_multiple_of=PAD_MULTIPLE) if best
                              else default_data_collator)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)
    cuda = cfg.device == "cuda"
    args = TrainingArguments(
        output_dir=str(work / ("hf-best" if best else "hf-defaults")), per_device_train_batch_size=cfg.batch_size,
        max_steps=cfg.total_steps, learning_rate=LEARNING_RATE, report_to=[], save_strategy="no",
        use_cpu=not cuda, disable_tqdm=True, seed=42, optim="adamw_torch_fused",
        train_sampling_strategy="group_by_length" if best else "random", bf16=cfg.bf16 and best,
        dataloader_num_workers=2 if cuda and best else 0, dataloader_pin_memory=cuda)
    result = Result("hf-best" if best else "hf-defaults", f"AdamW ({args.optim.value})",
                    "dynamic ×8, length-grouped" if best else f"max_length {cfg.max_seq_len}", [], 0.0)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                      processing_class=tokenizer, callbacks=[hf_callback(result)])
    trainer.train()
    result.padded_lengths, result.threads = collator.lengths, torch.get_num_threads()
    result.epoch_length = grouped_epoch_length(dataset["length"], cfg.batch_size) if best else cfg.max_seq_len
    return result


def grouped_epoch_length(lengths: list[int], batch_size: int) -> float:
    """Mean padded length over one epoch of transformers' length-grouped order (one draw of its shuffle)."""
    from transformers.trainer_pt_utils import get_length_grouped_indices
    order = get_length_grouped_indices(lengths, batch_size, generator=torch.Generator().manual_seed(0))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return sum(_padded(max(lengths[i] for i in b)) for b in batches) / len(batches)


def _padded(length: int) -> int:
    return math.ceil(length / PAD_MULTIPLE) * PAD_MULTIPLE


# ----------------------------------------------------------------------------------------------------------
# This project's Trainer row
# ----------------------------------------------------------------------------------------------------------
def planned_lengths(trainer) -> list[int]:
    """Padded length of every batch of epoch 0, in training order (the batcher pads to ×PAD_MULTIPLE; --compile
    to its length buckets)."""
    cfg = trainer.cfg
    plan = epoch_plan(trainer.train_sets, cfg.batch_size, cfg.seed, 0, cfg.mix_opt, cfg.ratio)
    pad = trainer.shapes.length_for if trainer.shapes is not None else _padded
    return [pad(max(trainer.train_sets[task_idx].lengths[i] for i in indices)) for task_idx, indices in plan]


def run_project(cfg: BenchConfig, model_path: str, shard_dir: Path, work: Path, compile_model: bool = False) -> Result:
    import logging
    from mt_dnn.config import TrainConfig
    from mt_dnn.trainer import StepHook, Trainer
    set_threads(cfg)
    row = "project-compile" if compile_model else "project"
    train_cfg = TrainConfig(train_datasets=[TASK], test_datasets=[], task_def=str(TASK_DEF), data_dir=str(shard_dir),
                            init_checkpoint=model_path, output_dir=str(work / row), optimizer="usadamax",
                            learning_rate=LEARNING_RATE, batch_size=cfg.batch_size, optim_impl="auto",
                            max_seq_len=cfg.max_seq_len, max_steps=cfg.total_steps, tensorboard=False,
                            num_threads=cfg.threads, device=cfg.device, bf16=cfg.bf16, compile=compile_model)
    trainer = Trainer(train_cfg)
    logging.getLogger("sage.train").setLevel(logging.WARNING)
    impl = f"{type(trainer.optimizer).__name__} ({_impl_name(trainer)})"
    padding = "dynamic ×8, length-bucketed"
    if compile_model:
        from mt_dnn.compiled import compile_mode
        impl += f" + compile ({compile_mode(trainer.device) or 'default'})"
        padding = f"buckets {'/'.join(map(str, trainer.shapes.lengths))}, {trainer.shapes.rows} rows"
    epoch = planned_lengths(trainer)
    result = Result(row, impl, padding, [], 0.0, epoch[:cfg.total_steps], epoch_length=sum(epoch) / len(epoch))

    class Timed(StepHook):
        def after_step(self, trainer) -> None:
            result.mark_step(trainer.device.type)

    trainer.hooks.append(Timed())
    result.start = time.perf_counter()
    if compile_model:
        warm_buckets(trainer)
        if not trainer.train_forward.active:
            raise SystemExit("train_throughput.py: error: --compile fell back to eager (see the warning above)")
    trainer.fit(stop_after_steps=cfg.total_steps)
    result.threads = torch.get_num_threads()
    return result


def warm_buckets(trainer) -> None:
    """Compile (and on CUDA record) every length bucket epoch 0 uses, before the timed steps: a few forward and
    backward passes on a real batch of each bucket, gradients dropped, no optimizer step."""
    shapes, first = trainer.shapes, {}
    for task_idx, indices in trainer.epoch_plan(0):
        longest = max(trainer.train_sets[task_idx].lengths[i] for i in indices)
        first.setdefault((task_idx, shapes.length_for(longest)), (task_idx, indices))
    trainer.model.train()
    for task_idx, indices in first.values():
        for _ in range(WARM_CALLS):
            trainer.micro_batch_loss(task_idx, indices).backward()
            trainer.optimizer.zero_grad(set_to_none=True)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()


def _impl_name(trainer) -> str:
    from mt_dnn.trainer import optimizer_impl_kwargs
    kwargs = optimizer_impl_kwargs(trainer.cfg.optim_impl, trainer.device)
    return "fused" if kwargs.get("fused") else "foreach" if kwargs.get("foreach") else "for-loop"


# ----------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------
def table(results: list[Result], cfg: BenchConfig) -> str:
    w, n = cfg.warmup_steps, cfg.steps
    rate = {r.row: r.samples_per_s(cfg) for r in results}
    bases = [b for b in BASELINES if b in rate]
    head = ["row", "optimizer", "padding", "padded length: timed / epoch", "samples/s", "padded tokens/s",
            *(f"× {b}" for b in bases), "CPU s/step", "first step (s)", f"first {w} steps (s)"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|---|" + "---:|" * (len(head) - 3)]
    for r in results:
        length = r.mean_length(w, n)
        cells = [r.row, r.optimizer, r.padding, f"{length:.1f} / {r.epoch_length:.1f}", f"{rate[r.row]:.1f}",
                 f"{rate[r.row] * length:,.0f}", *(f"{rate[r.row] / rate[b]:.2f}" for b in bases),
                 f"{r.cpu_per_step(w, n):.2f}", f"{r.step_ends[0] - r.start:.1f}", f"{r.first_seconds(w):.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def step_summary(r: Result, cfg: BenchConfig) -> str:
    """One stderr line per row: rate and the spread of the timed steps (a loaded machine shows up here)."""
    ends = r.step_ends[cfg.warmup_steps - 1:cfg.total_steps]
    times = sorted(b - a for a, b in zip(ends, ends[1:]))
    return (f"  {r.row}: {r.samples_per_s(cfg):.1f} samples/s; timed steps min/median/max "
            f"{times[0]:.2f}/{times[len(times) // 2]:.2f}/{times[-1]:.2f} s; "
            f"CPU {r.cpu_per_step(cfg.warmup_steps, cfg.steps):.2f} s/step; load avg {os.getloadavg()[0]:.2f}")


def header(cfg: BenchConfig, results: list[Result], load_before: float) -> str:
    import transformers
    threads = sorted({r.threads for r in results})
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    parts = [f"device={cfg.device}", f"torch={torch.__version__}", f"transformers={transformers.__version__}",
             f"model={'random BERT-base' if cfg.random_bert_base else cfg.model}", f"task={TASK} train",
             f"batch={cfg.batch_size}", f"max_seq_len={cfg.max_seq_len}", f"warmup_steps={cfg.warmup_steps}",
             f"steps={cfg.steps}", f"threads={'/'.join(map(str, threads))}", f"bf16={cfg.bf16}",
             f"1-min load avg before={load_before:.2f}, after={load}"]
    if cfg.device == "cuda":
        parts.append(torch.cuda.get_device_name())
    return "; ".join(parts)


# ----------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------
def parse_args(argv=None) -> BenchConfig:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a = parser.add_argument
    a("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    a("--steps", type=int, default=None,
      help="timed optimizer steps per row (default: one length-grouped mega-batch, 28 for MRPC at batch 32 "
           "on cpu; three on cuda)")
    a("--warmup_steps", type=int, default=None, help="untimed steps first (default: cpu 3, cuda 10)")
    a("--batch_size", type=int, default=32)
    a("--model", default=pretrained_models.DEFAULT_ENCODER, help="registry name or local folder")
    a("--threads", type=int, default=torch.get_num_threads(), help="torch threads for every row")
    a("--glue_dir", type=Path, default=ROOT.parent / "shared" / "glue", help="folder holding MRPC/train.tsv")
    a("--only", default=None, help=f"comma-separated rows, of {', '.join(ROWS)} (default: "
      f"{', '.join(DEFAULT_ROWS['cpu'])} on cpu, all on cuda)")
    a("--bf16", action=argparse.BooleanOptionalAction, default=None,
      help="bf16 autocast for hf-best and the project rows; hf-defaults stays fp32 (default: on for cuda, off for cpu)")
    a("--random_bert_base", action="store_true",
      help="randomly initialised BERT-base (BertConfig()) on both sides instead of --model's weights")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    warmup = args.warmup_steps if args.warmup_steps is not None else (10 if args.device == "cuda" else 3)
    for flag, value in (("--steps", 1 if args.steps is None else args.steps), ("--warmup_steps", warmup),
                        ("--batch_size", args.batch_size), ("--threads", args.threads)):
        if value < 1:
            parser.error(f"{flag} must be >= 1, got {value}")
    if args.only is None:
        args.only = ",".join(DEFAULT_ROWS[args.device])
    if args.bf16 is None:
        args.bf16 = args.device == "cuda"
    only = tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = [s for s in only if s not in ROWS]
    if unknown or not only:
        parser.error(f"--only: unknown row(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(ROWS)}")
    missing = [name for name in ("accelerate", "datasets") if importlib.util.find_spec(name) is None]
    if missing and any(row.startswith("hf-") for row in only):
        parser.error(f"--only: the transformers.Trainer rows need {' and '.join(missing)} (pip install -r "
                     "requirements-dev.txt); --only project runs without them")
    if not (args.glue_dir / "MRPC" / "train.tsv").is_file():
        parser.error(f"--glue_dir {args.glue_dir}: MRPC/train.tsv not found")
    return BenchConfig(args.device, args.steps or 0, warmup, args.batch_size, args.model, args.threads, args.glue_dir,
                       only=tuple(r for r in ROWS if r in only), bf16=args.bf16,
                       random_bert_base=args.random_bert_base)


def main(argv=None) -> None:
    cfg = parse_args(argv)
    load_before = os.getloadavg()[0]
    set_threads(cfg)
    with tempfile.TemporaryDirectory(prefix="train_throughput_") as tmp:
        work = Path(tmp)
        model_path = pretrained_models.resolve(cfg.model)
        if cfg.random_bert_base:
            model_path = random_bert_base(cfg.model, work / "random-bert-base")
        with contextlib.redirect_stdout(sys.stderr):
            tsv, shard_dir = prepare_data(cfg.glue_dir, work, model_path, cfg.max_seq_len)
        if not cfg.steps:
            cfg = dataclasses.replace(cfg, steps=default_steps(tsv, cfg))
        check_window(tsv, cfg)
        runners = {"hf-defaults": lambda: run_hf(cfg, model_path, tsv, work, best=False),
                   "hf-best": lambda: run_hf(cfg, model_path, tsv, work, best=True),
                   "project": lambda: run_project(cfg, model_path, shard_dir, work),
                   "project-compile": lambda: run_project(cfg, model_path, shard_dir, work, compile_model=True)}
        results = []
        for row in cfg.only:
            with contextlib.redirect_stdout(sys.stderr):
                results.append(runners[row]())
            print(step_summary(results[-1], cfg), file=sys.stderr, flush=True)
    print(header(cfg, results, load_before))
    print(table(results, cfg))


if __name__ == "__main__":
    main()
