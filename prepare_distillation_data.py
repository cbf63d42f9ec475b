#!/usr/bin/env python
"""Soft targets for multi-task knowledge distillation (``train.py --mkd_opt 1``), from one or more trained runs.

    python prepare_distillation_data.py --runs RUN_A RUN_B --tasks rte,mrpc --data_dir SHARDS --output_dir OUT

For each task, every teacher (a run folder with best/, or a checkpoint folder) predicts the training split; the
average of their class probabilities (Classification, Ranking) or values (Regression) becomes each row's extra
``soft_label`` in ``OUT/{task}_{split}.jsonl``. The task's other shards are copied unchanged, so OUT is a complete
``--data_dir`` for the student. Files are written to a temp name and renamed: a failure leaves no half shard.
A teacher whose run's YAML now defines a task otherwise than it was trained (labels, their order, the task type)
is refused, as by predict.py (mt_dnn/restore.py).

MT-DNN's command line works as written: ``--task_def --task --std_input TSV --score SCORES --std_output TSV
[--add_soft_label]`` reads a score file in MT-DNN's layout (predict.py's or MT-DNN's) and writes the canonical TSV
with each row's label replaced by (or, with ``--add_soft_label``, followed by) the probability of class 1, as
MT-DNN does; since that is one class's probability, only 2-class Classification tasks are accepted.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", help="teacher runs: run folders (their best/) or "
                                             "checkpoint folders written by train.py")
    p.add_argument("--tasks", help="comma-separated tasks to write soft targets for")
    p.add_argument("--data_dir", help="folder with the tokenized shards")
    p.add_argument("--output_dir", help="where the student's shards go")
    p.add_argument("--split", default="train", help="split to label (default: train)")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--max_seq_len", type=int, default=None, help="default: the first teacher's")
    p.add_argument("--device", default="auto")
    mt = p.add_argument_group("MT-DNN's prepare_distillation_data.py options (instead of the four above)")
    mt.add_argument("--task_def", default="experiments/glue/glue_task_def.yml", help="task-definition YAML")
    mt.add_argument("--task", help="a 2-class Classification task")
    mt.add_argument("--std_input", help="the task's canonical TSV")
    mt.add_argument("--score", help="a score file of the same rows (MT-DNN's layout)")
    mt.add_argument("--std_output", help="the TSV to write")
    mt.add_argument("--add_soft_label", action="store_true",
                    help="insert the probability as a third column instead of replacing the label")
    return p


OWN = ("--runs", "--tasks", "--data_dir", "--output_dir")
UPSTREAM = ("--task", "--std_input", "--score", "--std_output")


def _mode(args) -> str:
    """'upstream' (MT-DNN's four flags) or 'runs' (this project's); a mix, or either half incomplete, is refused."""
    given = lambda flags: [f for f in flags if getattr(args, f[2:]) is not None]  # noqa: E731
    own, upstream = given(OWN), given(UPSTREAM)
    if own and upstream:
        raise ValueError(f"{upstream[0]}: MT-DNN's flags ({', '.join(UPSTREAM)}) and {', '.join(OWN)} are two ways "
                         "to run; give one")
    mode, flags, present = ("upstream", UPSTREAM, upstream) if upstream else ("runs", OWN, own)
    missing = [f for f in flags if f not in present]
    if missing:
        raise ValueError(f"the following arguments are required: {', '.join(missing)}")
    return mode


def upstream_rows(args) -> list[list[str]]:
    """MT-DNN's output rows: the TSV's fields with the label replaced by, or followed by, P(class 1)."""
    from data_utils.score_file import check_same_rows, read_score_file
    from data_utils.task_def import TaskType, load_task_defs, select_tasks
    from data_utils.tsv import iter_tsv
    td = select_tasks(load_task_defs(args.task_def), [args.task], source=args.task_def)[args.task]
    if td.task_type is not TaskType.Classification or td.n_class != 2:
        raise ValueError(f"--task {args.task}: MT-DNN's prepare_distillation_data.py writes the probability of "
                         f"class 1 only, a soft target for 2-class Classification; this is a {td.n_class}-class "
                         f"{td.task_type.name} task (--runs writes every class's soft targets)")
    scored = read_score_file(args.score, td.n_class)
    rows = []
    for line, fields in iter_tsv(args.std_input):
        if fields[0] not in scored:
            raise ValueError(f"{args.std_input}:{line}: uid {fields[0]!r} is not in {args.score}")
        if len(fields) < 2:
            raise ValueError(f"{args.std_input}:{line}: expected uid, label, text columns")
        value = scored[fields[0]][1][1]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{args.score}: the score of uid {fields[0]!r} is {value!r}, not a probability")
        score = str(float(value))
        rows.append(fields[:2] + [score] + fields[2:] if args.add_soft_label else [fields[0], score, *fields[2:]])
    check_same_rows(scored, [row[0] for row in rows], args.score, args.std_input)
    return rows


def run_upstream(args) -> Path:
    from data_utils.atomic import atomic_write
    out = Path(args.std_output)
    if out.resolve() in (Path(args.std_input).resolve(), Path(args.score).resolve()):
        raise ValueError(f"--std_output {out}: that is an input file")
    rows = upstream_rows(args)
    with atomic_write(out) as handle:
        for fields in rows:
            handle.write("\t".join(fields) + "\n")
    return out


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
        written = [run_upstream(args)] if _mode(args) == "upstream" else run(args)
    except (ValueError, OSError) as exc:
        print(f"prepare_distillation_data.py: error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
