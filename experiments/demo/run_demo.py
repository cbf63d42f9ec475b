#!/usr/bin/env python
"""Run the demo: MiniLM-L6 fine-tuned multi-task (vaderpol + vaderval) with Adamax and with Adamax-SAGE,
then print one side-by-side table of dev metrics and wall time (``make demo`` calls this after the data steps).
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNS = (  # (label, optimizer flags): Table 7-style settings, scaled to the demo
    ("Adamax", ["--optimizer", "adamax", "--learning_rate", "1e-4"]),
    ("Adamax-SAGE", ["--optimizer", "usadamax", "--learning_rate", "3e-4", "--beta3", "0.75"]),
)


def train(out_dir: Path, flags: list[str], args) -> float:
    cmd = [sys.executable, str(ROOT / "train.py"), "--task_def", args.task_def, "--data_dir", args.data_dir,
           "--init_checkpoint", "minilm-l6", "--train_datasets", "vaderpol,vaderval",
           "--test_datasets", "vaderpol,vaderval", "--batch_size", "32", "--epochs", str(args.epochs),
           "--warmup", "0.1", "--global_grad_clipping", "1.0", "--max_seq_len", "128", "--seed", "2018",
           "--output_dir", str(out_dir), *flags]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return time.perf_counter() - start


def last_record(out_dir: Path) -> dict:
    lines = (out_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    # train.py writes a NaN metric (Pearson of constant predictions) as null; print it as nan
    return json.loads(lines[-1], object_hook=lambda d: {k: math.nan if v is None else v for k, v in d.items()})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out_dir", default="demo_out")
    p.add_argument("--data_dir", default="data/demo/canonical/minilm-l6")
    p.add_argument("--task_def", default="experiments/demo/demo_task_def.yml")
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args(argv)
    rows = []
    for label, flags in RUNS:
        out = Path(args.out_dir) / label.lower()
        shutil.rmtree(out, ignore_errors=True)  # a fresh run each time, not a resume
        seconds = train(out, flags, args)
        rows.append((label, seconds, last_record(out)))
    print("\n| optimizer | vaderpol ACC | vaderpol F1 | vaderpol MCC | vaderval Pearson | vaderval Spearman "
          "| average | wall time |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, seconds, rec in rows:
        pol, val = rec["dev"]["vaderpol_dev"], rec["dev"]["vaderval_dev"]
        print(f"| {label} | {pol['ACC']:.1f} | {pol['F1']:.1f} | {pol['MCC']:.1f} | {val['Pearson']:.1f} "
              f"| {val['Spearman']:.1f} | {rec['glue_average']:.1f} | {seconds / 60:.1f} min |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
