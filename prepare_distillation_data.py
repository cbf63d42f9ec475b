#!/usr/bin/env python
"""Soft targets for multi-task knowledge distillation (``train.py --mkd_opt 1``), from one or more trained runs.

    python prepare_distillation_data.py --runs RUN_A RUN_B --tasks rte,mrpc --data_dir SHARDS --output_dir OUT

For each task, every teacher (a run folder with best/, or a checkpoint folder) predicts the training split; the
average of their class probabilities (Classification, Ranking) or values (Regression) becomes each row's extra
``soft_label`` in ``OUT/{task}_{split}.jsonl``. The task's other shards are copied unchanged, so OUT is a complete
``--data_dir`` for the student. Files are written to a temp name and renamed: a failure leaves no half shard.
A teacher whose run's YAML now defines a task otherwise than it was trained (labels, their order, the task type)
is refused, as by predict.py (mt_dnn/restore.py).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", required=True, help="teacher runs: run folders (their best/) or "
                                                          "checkpoint folders written by train.py")
    p.add_argument("--tasks", required=True, help="comma-separated tasks to write soft targets for")
    p.add_argument("--data_dir", required=True, help="folder with the tokenized shards")
    p.add_argument("--output_dir", required=True, help="where the student's shards go")
    p.add_argument("--split", default="train", help="split to label (default: train)")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--max_seq_len", type=int, default=None, help="default: the first teacher's")
    p.add_argument("--device", default="auto")
    return p


def _checkpoint(path: Path) -> Path:
    from mt_dnn import checkpoint as ckpt
    for folder in (path, path / "best"):
        if (folder / ckpt.WEIGHTS).is_file():
            return folder
    raise FileNotFoundError(f"{path}: neither a checkpoint folder ({ckpt.WEIGHTS}) nor a run with best/")


def teacher_scores(teachers, task: str, data_dir: Path, split: str, max_seq_len: int, batch_size: int,
                   device) -> tuple[list, list]:
    """(the shard's records, the teachers' mean scores per row, in shard order)."""
    from data_utils.shards import find_shard, read_shard
    from mt_dnn.batcher import load_split
    from mt_dnn.evaluate import predict_split

    total, records = None, None
    for restored in teachers:
        if task not in restored.task_defs:
            raise ValueError(f"--runs: {restored.folder} was not trained on task '{task}' "
                             f"(it has {', '.join(restored.task_defs)})")
        data = load_split(data_dir, restored.task_defs[task], split, max_seq_len, cache=restored.cfg.shard_cache)
        records = records or read_shard(find_shard(data_dir, task, split))
        restored.model.to(device)
        scores = predict_split(restored.model, data, batch_size, device, restored.pad_id).scores
        restored.model.cpu()
        values = [list(map(float, s)) if isinstance(s, list) else float(s) for s in scores]
        total = values if total is None else [_add(a, b) for a, b in zip(total, values)]
    n = len(teachers)
    return records, [[x / n for x in v] if isinstance(v, list) else v / n for v in total]


def _add(a, b):
    return [x + y for x, y in zip(a, b)] if isinstance(a, list) else a + b


def write_soft_shard(path: Path, records: list[dict], soft: list) -> None:
    from data_utils.atomic import atomic_write
    with atomic_write(path) as handle:
        for rec, value in zip(records, soft):
            row = {k: rec[k] for k in ("uid", "label", "token_id", "type_id")}
            row["soft_label"] = value
            handle.write(json.dumps(row) + "\n")


def run(args) -> list[Path]:
    from data_utils.safe_paths import check_output_root, plain_name
    from data_utils.shards import find_shard
    from mt_dnn.restore import restore
    from mt_dnn.runtime import pick_device

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise ValueError("--tasks: give at least one task")
    data_dir, out = Path(args.data_dir), Path(args.output_dir)
    if out.resolve() == data_dir.resolve():
        raise ValueError("--output_dir: must differ from --data_dir (the shards there are the input)")
    check_output_root(out, "--output_dir", (data_dir, *args.runs))
    for task in tasks:  # each names an output shard
        plain_name(task, "--tasks")
    plain_name(args.split, "--split")
    teachers = [restore(_checkpoint(Path(r))) for r in args.runs]
    for t in teachers:
        t.model.eval()
    max_len = args.max_seq_len or teachers[0].cfg.max_seq_len
    device = pick_device(args.device)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for task in tasks:
        source = find_shard(data_dir, task, args.split)
        records, soft = teacher_scores(teachers, task, data_dir, args.split, max_len, args.batch_size, device)
        target = out / f"{task}_{args.split}.jsonl"
        write_soft_shard(target, records, soft)
        written.append(target)
        for other in sorted(data_dir.glob(f"{task}_*.json*")):
            if other != source and other.suffix in (".json", ".jsonl") and not (out / other.name).exists():
                shutil.copyfile(other, out / other.name)
    return written


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        written = run(args)
    except (ValueError, OSError) as exc:
        print(f"prepare_distillation_data.py: error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
