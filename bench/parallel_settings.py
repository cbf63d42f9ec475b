"""Data-parallel settings side by side, on 2 gloo ranks (CPU) or 2+ GPUs (NCCL): what mt_dnn/parallel.py picks
against what the trainer used before.

Rows (each a median over ``--steps`` interleaved steps, rank 0's clock, after ``--warmup`` steps):

- one task under DDP, a training step (forward, backward with the gradient all-reduce, optimizer step):
  ``find_unused_parameters=True`` + ``broadcast_buffers=True`` (before) against ``static_graph=True`` without
  buffer broadcasts (now);
- one task under DDP with a SAN-style layout where the encoder's pooler gets no gradient: the same comparison
  (the case where the search for unused parameters finds some);
- the FSDP optimizer step (AdamW-SAGE, foreach) on the DTensors (before) against the same step on each rank's
  local shards (now): host time, no forward or backward.

The encoder is a random BERT from a config (``--hidden``, ``--layers``; BERT-base is 768 and 12), so no model
download is needed; one batch of ``--batch`` x ``--seq_len`` tokens per rank.

    python -m bench.parallel_settings [--nproc 2] [--steps 8] [--warmup 2] [--hidden 256] [--layers 4]
                                      [--batch 8] [--seq_len 64] [--device cpu|cuda] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

if not __package__:  # run by its file path, where the project's packages do not import
    print("parallel_settings.py: error: run it from the repository root as: python -m bench.parallel_settings [flags]",
          file=sys.stderr)
    raise SystemExit(2)

from data_utils.task_def import parse_task_defs  # noqa: E402
from module.bert_optim import build_optimizer, sage_param_groups  # noqa: E402
from mt_dnn import parallel  # noqa: E402
from mt_dnn.model import MTDNNModel  # noqa: E402

TASKS = """
pair:
  task_type: Classification
  data_format: PremiseAndOneHypothesis
  n_class: 2
  metric_meta: [ACC]
tags:
  task_type: SequenceLabeling
  data_format: Seqence
  n_class: 5
  labels: [O, B-X, I-X, B-Y, I-Y]
  metric_meta: [SeqEval]
"""


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq_len", type=int, default=64)
    p.add_argument("--json", default="", help="also write the table as JSON here")
    return p.parse_args(argv)


def _model(args, task: str, device: torch.device) -> MTDNNModel:
    from transformers import AutoModel, BertConfig
    torch.manual_seed(0)
    config = BertConfig(hidden_size=args.hidden, num_hidden_layers=args.layers,
                        num_attention_heads=max(1, args.hidden // 64), intermediate_size=4 * args.hidden,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    defs = parse_task_defs(TASKS)
    return MTDNNModel(AutoModel.from_config(config), {task: defs[task]}).to(device)


def _batch(args, device):
    gen = torch.Generator().manual_seed(dist.get_rank())
    ids = torch.randint(5, 1000, (args.batch, args.seq_len), generator=gen)
    return ids.to(device), torch.ones_like(ids).to(device)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _ddp_rows(args, device) -> list[dict]:
    from torch.nn.parallel import DistributedDataParallel
    rows = []
    for task, label in (("pair", "DDP step, one task (pooled head)"),
                        ("tags", "DDP step, one task (token head: pooler idle)")):
        old = parallel.DDPSettings(find_unused_parameters=True, static_graph=False, broadcast_buffers=True)
        model = _model(args, task, device)
        new = parallel.ddp_settings(model, [task], compiled=False)
        nets = {}
        for name, settings in (("before", old), ("now", new)):
            m = _model(args, task, device)
            nets[name] = (DistributedDataParallel(m, device_ids=[device.index] if device.type == "cuda" else None,
                                                  **settings.kwargs()),
                          build_optimizer("usadamw", sage_param_groups(m.named_parameters()), lr=1e-5,
                                          foreach=True))
        ids, mask = _batch(args, device)
        times = {name: [] for name in nets}
        for step in range(args.warmup + args.steps):
            for name, (net, opt) in nets.items():  # interleaved: load changes hit both alike
                _sync(device)
                start = time.perf_counter()
                out = net(task, ids, mask, torch.zeros_like(ids))
                out.float().square().mean().backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                _sync(device)
                if step >= args.warmup:
                    times[name].append(time.perf_counter() - start)
        rows.append(_row(label, times, f"{old.describe()} -> {new.describe()}"))
    return rows


def _fsdp_row(args, device) -> dict:
    from torch.distributed.fsdp import fully_shard
    opts = {}
    for name in ("before", "now"):
        model = _model(args, "pair", device)
        for block in model.encoder.encoder.layer:
            fully_shard(block)
        fully_shard(model)
        opt = build_optimizer("usadamw", sage_param_groups(model.named_parameters()), lr=1e-5, foreach=True)
        ids, mask = _batch(args, device)
        model("pair", ids, mask, torch.zeros_like(ids)).float().square().mean().backward()
        opts[name] = opt
    times = {name: [] for name in opts}
    for step in range(args.warmup + args.steps):
        for name, opt in opts.items():
            _sync(device)
            start = time.perf_counter()
            if name == "now":
                with parallel.local_shards(opt):
                    opt.step()
            else:
                opt.step()
            _sync(device)
            if step >= args.warmup:
                times[name].append(time.perf_counter() - start)
    return _row("FSDP optimizer step (AdamW-SAGE foreach)", times, "on DTensors -> on local shards")


def _row(label: str, times: dict, settings: str) -> dict:
    before, now = statistics.median(times["before"]), statistics.median(times["now"])
    return {"row": label, "before_ms": 1e3 * before, "now_ms": 1e3 * now, "now_over_before": now / before,
            "settings": settings}


def _worker(rank: int, args, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=args.nproc)
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    try:
        rows = _ddp_rows(args, device) + [_fsdp_row(args, device)]
        if rank == 0:
            queue.put(rows)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def table(rows: list[dict], args) -> str:
    lines = [f"{args.nproc} ranks, {args.device}, random BERT hidden {args.hidden} x {args.layers} layers, "
             f"batch {args.batch} x {args.seq_len} per rank, median of {args.steps} interleaved steps",
             "", "| what | before (ms) | now (ms) | now / before | settings |", "|---|---:|---:|---:|---|"]
    lines += [f"| {r['row']} | {r['before_ms']:.1f} | {r['now_ms']:.1f} | {r['now_over_before']:.2f} | "
              f"{r['settings']} |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse(argv)
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(_worker, args=(args, _free_port(), queue), nprocs=args.nproc, start_method="spawn")
    rows = queue.get()
    print(table(rows, args))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "args": vars(args)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
