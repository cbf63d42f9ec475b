"""Step and evaluation time of the full-size study's runs on this machine: the inputs of the compute estimate in
experiments/sweep/README.md ("The full-size study").

Real runs of this project's Trainer with the study's settings (MiniLM-L6, batch 32, max_seq_len 128, foreach
optimizer step, one torch thread as the sweep's ``threads_per_run: 1``) on real GLUE data. For every task: its
epoch's batches (the batcher pads each batch to its longest example, rounded up to ×8, and buckets by length)
and its dev set, in padded positions (batch rows × padded length summed). For the timed tasks (default RTE, the
longest): a few warm-up steps, then a timed window of optimizer steps for the base optimizer and its SAGE
version side by side (ratio against the base in the same process), and one dev evaluation. Wall time and
process CPU time are both given: with one thread, CPU time is close to what a step costs on an idle core, while
wall time grows with the machine's load. The window's cost per unit of padded length scales to a whole epoch
(cost taken as proportional to padded length). Prints markdown tables with the load average before and after.

    python -m bench.sweep_step_time [--tasks rte,mrpc,stsb,cola] [--time_tasks rte] [--steps 8]
                                    [--optimizers adamax,usadamax] [--warmup_steps 3] [--threads 1]
                                    [--precisions fp32,bf16]
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if not __package__:  # run by its file path, where the project's packages do not import
    print("sweep_step_time.py: error: run it from the repository root as: python -m bench.sweep_step_time [flags]",
          file=sys.stderr)
    raise SystemExit(2)

import prepro_std  # noqa: E402
from experiments.glue.glue_prepro import convert  # noqa: E402
from mt_dnn.batcher import PAD_MULTIPLE, epoch_plan  # noqa: E402

TASK_DEF = ROOT / "experiments" / "glue" / "glue_task_def.yml"
MODEL = "minilm-l6"


def padded_lengths(trainer, epoch: int = 0) -> list[int]:
    """Padded length of every batch of one epoch, in training order."""
    cfg = trainer.cfg
    plan = epoch_plan(trainer.train_sets, cfg.batch_size, cfg.seed, epoch, cfg.mix_opt, cfg.ratio)
    return [-(-max(trainer.train_sets[t].lengths[i] for i in idx) // PAD_MULTIPLE) * PAD_MULTIPLE
            for t, idx in plan]


def make_trainer(task: str, optimizer: str, shards: Path, work: Path, max_steps: int, threads: int, evaluate: bool,
                 bf16: bool = False):
    from mt_dnn.config import TrainConfig
    from mt_dnn.trainer import Trainer
    cfg = TrainConfig(train_datasets=[task], test_datasets=[task] if evaluate else [], task_def=str(TASK_DEF),
                      data_dir=str(shards), init_checkpoint=MODEL, output_dir=str(work / f"{task}_{optimizer}"),
                      optimizer=optimizer, learning_rate=1e-4, batch_size=32, max_seq_len=128,
                      optim_impl="foreach", max_steps=max_steps, tensorboard=False, num_threads=threads,
                      warmup=0.1, bf16=bf16, overwrite=True)  # each measurement replaces the last on purpose
    return Trainer(cfg)


def time_steps(trainer, total: int) -> tuple[list[float], list[float]]:
    """Wall time and process CPU time of each optimizer step (end to end: forward, backward, clip, update). With
    one thread the CPU time is what the step costs on an idle core; the wall time grows with the machine's load."""
    from mt_dnn.trainer import StepHook
    ends: list[tuple[float, float]] = []

    class Timed(StepHook):
        def after_step(self, trainer) -> None:
            ends.append((time.perf_counter(), time.process_time()))

    trainer.hooks.append(Timed())
    marks = [(time.perf_counter(), time.process_time())]
    trainer.fit(stop_after_steps=total)
    marks += ends
    return ([b[0] - a[0] for a, b in zip(marks, marks[1:])], [b[1] - a[1] for a, b in zip(marks, marks[1:])])


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def dev_tokens(trainer) -> int:
    """Padded positions of one dev evaluation, taking each example at its own length rounded up to ×8 (the
    evaluation batches are length-sorted, so this is close)."""
    return sum(-(-n // PAD_MULTIPLE) * PAD_MULTIPLE for d in trainer.eval_sets for n in d.lengths)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="rte,mrpc,stsb,cola", help="tasks whose epochs are measured (lengths)")
    p.add_argument("--time_tasks", default="rte", help="tasks whose steps and dev evaluation are timed")
    p.add_argument("--optimizers", default="adamax,usadamax", help="baseline first")
    p.add_argument("--precisions", default="fp32", help="fp32 and/or bf16 (autocast), comma-separated; the "
                                                        "first precision's base optimizer is every row's base")
    p.add_argument("--steps", type=int, default=8, help="timed optimizer steps per row")
    p.add_argument("--warmup_steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--glue_dir", type=Path, default=ROOT.parent / "shared" / "glue")
    args = p.parse_args(argv)
    tasks, timed_tasks = args.tasks.split(","), args.time_tasks.split(",")
    optimizers = args.optimizers.split(",")
    precisions = args.precisions.split(",")
    if not set(precisions) <= {"fp32", "bf16"}:
        p.error(f"--precisions: expected fp32 and/or bf16, got {args.precisions!r}")
    torch.set_num_threads(args.threads)
    logging.getLogger("sage.train").setLevel(logging.WARNING)
    print(f"load average before: {load()}  (torch threads {args.threads}, {os.cpu_count()} CPUs)", flush=True)
    step_rows, eval_rows, shape_rows = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        names = sorted(set(tasks) | set(timed_tasks))
        convert(args.glue_dir, work, TASK_DEF, tasks=names, log=lambda _m: None)
        prepro_std.run(prepro_std.PreproConfig(model=MODEL, root_dir=str(work), task_def=str(TASK_DEF),
                                               tasks=tuple(names), max_seq_len=128, workers=1), log=lambda _m: None)
        shards = work / MODEL
        for test_shard in shards.glob("*_test*"):  # as the sweep's traindev folder: no epoch predicts test sets
            test_shard.unlink()
        total = args.warmup_steps + args.steps
        for task in tasks:
            trainer = make_trainer(task, optimizers[0], shards, work, total, args.threads, evaluate=True)
            lengths = padded_lengths(trainer)
            shape_rows.append(f"| {task} | {len(trainer.train_sets[0].lengths)} | {len(lengths)} | "
                              f"{sum(lengths) / len(lengths):.1f} | {sum(lengths)} | "
                              f"{sum(len(d.lengths) for d in trainer.eval_sets)} | {dev_tokens(trainer)} |")
            print(shape_rows[-1], flush=True)
            trainer.release()  # never trained: let go of its run folder for the timed run below
        for task in timed_tasks:
            base = None
            for precision, optimizer in ((pr, o) for pr in precisions for o in optimizers):
                evaluate = optimizer == optimizers[0]
                trainer = make_trainer(task, optimizer, shards, work, total, args.threads, evaluate,
                                       bf16=precision == "bf16")
                lengths = padded_lengths(trainer)
                wall, cpu = time_steps(trainer, total)
                seconds, cpu = wall[args.warmup_steps:], cpu[args.warmup_steps:]
                window = lengths[args.warmup_steps:total]
                median = statistics.median(seconds)
                base = base or sum(cpu)
                step_rows.append(f"| {task} | {optimizer} | {precision} | {median:.2f} | "
                                 f"{min(seconds):.2f}–{max(seconds):.2f} | "
                                 f"{sum(cpu) / len(cpu):.2f} | {sum(cpu) / base:.2f} | "
                                 f"{sum(window) / len(window):.0f} | {1e3 * sum(seconds) / sum(window):.2f} | "
                                 f"{1e3 * sum(cpu) / sum(window):.2f} |")
                print(step_rows[-1], flush=True)
                if evaluate:
                    start, cpu_start = time.perf_counter(), time.process_time()
                    trainer.evaluate(0)
                    took, cpu_took = time.perf_counter() - start, time.process_time() - cpu_start
                    eval_rows.append(f"| {task} | {precision} | {took:.1f} | {cpu_took:.1f} | "
                                     f"{1e3 * cpu_took / dev_tokens(trainer):.3f} |")
                    print(eval_rows[-1], flush=True)
    print(f"\nload average after: {load()}\n")
    print("| task | train examples | steps/epoch (batch 32) | mean padded length | Σ padded length of the batches "
          "| dev examples | Σ padded length of the dev examples |\n|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(shape_rows))
    print(f"\n| task | optimizer | precision | wall s/step (median of {args.steps}) | min–max "
          "| CPU s/step (mean) | CPU × base | mean padded length | wall ms per unit of batch padded length "
          "| CPU ms per unit |\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(step_rows))
    print("\n| task | precision | one dev evaluation: wall s | CPU s | CPU ms per unit of example padded length |"
          "\n|---|---|---:|---:|---:|")
    print("\n".join(eval_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
