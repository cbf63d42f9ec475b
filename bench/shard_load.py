"""What the load-time shard checks (labels, token ids, type ids, lengths) add to loading a shard.

Writes a synthetic QQP-sized train shard (400k pairs, ~60 tokens each, MiniLM-L6 vocabulary), then loads it
with ``mt_dnn.batcher.load_split`` without and with the encoder checks, interleaved, best of --repeat, and
prints the checks' own time beside the whole load. This is the in-memory JSONL path (``cache=False``); the
memory-mapped shard cache has its own bench, bench/shard_cache.py.

    .venv/bin/python -m bench.shard_load [--rows 400000] [--repeat 3]
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

if not __package__:  # run by its file path, where the project's packages do not import
    print("shard_load.py: error: run it from the repository root as: python -m bench.shard_load [flags]",
          file=sys.stderr)
    raise SystemExit(2)

from data_utils.shard_checks import EncoderLimits  # noqa: E402
from data_utils.shards import format_line  # noqa: E402
from data_utils.task_def import parse_task_defs  # noqa: E402
from mt_dnn.batcher import load_split  # noqa: E402

TASK = parse_task_defs("qqp:\n  task_type: Classification\n  data_format: PremiseAndOneHypothesis\n"
                       "  n_class: 2\n  metric_meta: [ACC]\n", "bench")["qqp"]
LIMITS = EncoderLimits("minilm-l6", 30522, 2, 512)


def write_shard(folder: Path, rows: int) -> None:
    rng = random.Random(0)
    with open(folder / "qqp_train.jsonl", "w", encoding="utf-8") as handle:
        for i in range(rows):
            a, b = rng.randint(8, 40), rng.randint(8, 40)
            ids = [101] + [rng.randint(1000, 30000) for _ in range(a + b)] + [102]
            handle.write(format_line(str(i), rng.randint(0, 1), ids, [0] * (a + 1) + [1] * (b + 1)) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=400_000)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        write_shard(Path(tmp), args.rows)
        best = {"load, no encoder checks": float("inf"), "load with encoder checks": float("inf")}
        for _ in range(args.repeat):
            for name, limits in (("load, no encoder checks", None), ("load with encoder checks", LIMITS)):
                start = time.perf_counter()
                load_split(tmp, TASK, "train", 512, encoder=limits, cache=False)
                best[name] = min(best[name], time.perf_counter() - start)
    base = best["load, no encoder checks"]
    print(f"{args.rows:,} rows, best of {args.repeat}\n")
    print(f"| {'method':<26} | {'seconds':>8} | {'ratio':>6} |")
    print(f"|{'-' * 28}|{'-' * 10}|{'-' * 8}|")
    for name, seconds in best.items():
        print(f"| {name:<26} | {seconds:8.2f} | {seconds / base:6.2f} |")


if __name__ == "__main__":
    main()
