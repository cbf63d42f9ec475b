"""Cost of a SMART training step relative to a plain one, side by side in one process.

One MTDNNModel (default: the embedded MiniLM-L6) with a 2-class head, one batch of ``--batch_size`` sequences of
``--seq_len`` real tokens, Adamax-SAGE (foreach). A plain step is forward, cross-entropy, backward, optimizer
step; a SMART step adds the objective term exactly as the trainer applies it (mt_dnn/objectives.Smart: one
noise draw, ``adv_k`` ascent forward+gradient passes, one adversarial forward, then the joint backward). The
rows' steps are interleaved (plain, SMART k=1, ..., plain, ...) so that load on a shared machine hits all rows
alike; the table gives the median seconds per step and the ratio to the plain row, and the spread goes to
stderr.

    python -m bench.smart_step [--device cpu|cuda] [--batch_size 32] [--seq_len 128] [--steps 5]
                               [--warmup_steps 1] [--adv_k 1[,2,...]] [--model minilm-l6] [--threads N]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

if not __package__:  # run by its file path, where the project's packages do not import
    print("smart_step.py: error: run it from the repository root as: python -m bench.smart_step [flags]",
          file=sys.stderr)
    raise SystemExit(2)

from module import encoders  # noqa: E402
from data_utils.task_def import parse_task_defs  # noqa: E402
from module.bert_optim import build_optimizer, sage_param_groups  # noqa: E402
from mt_dnn import objectives  # noqa: E402
from mt_dnn.model import MTDNNModel  # noqa: E402
from mt_dnn.settings import SmartSettings  # noqa: E402

TASK_YAML = """
pair:
  task_type: Classification
  data_format: PremiseAndOneHypothesis
  n_class: 2
  metric_meta: [ACC]
  split_names: [train, dev]
"""


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="minilm-l6")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--steps", type=int, default=5, help="timed steps per row")
    p.add_argument("--warmup_steps", type=int, default=1)
    p.add_argument("--adv_k", default="1", help="comma-separated SMART rows, e.g. 1,2")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return p.parse_args(argv)


def smart_cfg(k: int):
    """MT-DNN's defaults (TrainConfig's) with adv_k = k."""
    return SmartSettings(seed=1, adv_noise_var=1e-5, adv_k=k, adv_step_size=1e-5, adv_p_norm="inf",
                         adv_norm_level=0, adv_epsilon=1e-6, adv_alpha=1.0)


def main(argv=None) -> int:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    td = parse_task_defs(TASK_YAML)["pair"]
    model = MTDNNModel(encoders.load_encoder(args.model), {"pair": td}).to(device).train()
    opt = build_optimizer("usadamax", sage_param_groups(list(model.named_parameters()), weight_decay=0.01),
                          lr=1e-5, foreach=True)
    vocab = model.encoder.config.vocab_size
    ids = torch.randint(1000, vocab, (args.batch_size, args.seq_len), device=device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "token_type_ids": (torch.arange(args.seq_len, device=device) >= args.seq_len // 2).long()
             .expand_as(ids).contiguous()}
    labels = torch.randint(0, 2, (args.batch_size,), device=device)
    rows = {"plain": None, **{f"SMART adv_k {k}": objectives.Smart(smart_cfg(int(k)), device)
                              for k in args.adv_k.split(",")}}

    def step(term, n: int) -> float:
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        sync()
        start = time.perf_counter()
        out = model("pair", **batch).float()
        loss = model.loss("pair", out, labels)
        if term is not None:
            mb = objectives.MicroBatch(td, out, labels, None, batch["attention_mask"],
                                       list(range(n * args.batch_size, (n + 1) * args.batch_size)),
                                       lambda e: model("pair", **batch, inputs_embeds=e).float(),
                                       lambda: model.embed(batch["input_ids"]), lambda v: v)
            loss = term(mb, loss)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - start

    times = {name: [] for name in rows}
    for n in range(args.warmup_steps + args.steps):
        for name, term in rows.items():
            elapsed = step(term, n)
            if n >= args.warmup_steps:
                times[name].append(elapsed)
    base = statistics.median(times["plain"])
    print(f"SMART step cost: {args.model}, batch {args.batch_size} × {args.seq_len} tokens, {device}, "
          f"{torch.get_num_threads()} threads, median of {args.steps} interleaved steps per row\n")
    print("| step | s/step (median) | relative to plain |")
    print("|---|---|---|")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.3f} | {med / base:.2f}× |")
        print(f"{name}: min {min(values):.3f} s, max {max(values):.3f} s", file=sys.stderr)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average (1 min) at the end: {load:.1f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
