"""End-to-end tokenization throughput: canonical TSV read -> tokenize -> shard written.

Compares, in one run on the same files and machine:
  per-example   MT-DNN's approach: per row, one HF tokenizer call and one json.dumps (the baseline);
  hf-batched    one process, HF fast tokenizer called on batches of 1,000 rows, json.dumps per row;
  prepro_std    this project's prepro_std.run with --workers 1 and --workers 2 (tokenizer load and
                process start-up included, as a user sees them).
Every method's output is checked byte for byte against the baseline's. Times are the best of --repeat runs,
interleaved, so background load hurts every method alike; CPU seconds (this process plus its workers) show the
work done whatever the load. A stage breakdown (one process) shows where prepro_std's time goes.

    .venv/bin/python -m bench.prepro [--glue_dir ../shared/glue] [--repeat 3] [--profile]
"""
from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if not __package__:  # run by its file path, where the project's packages do not import
    print("prepro.py: error: run it from the repository root as: python -m bench.prepro [flags]",
          file=sys.stderr)
    raise SystemExit(2)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import prepro_std as ps  # noqa: E402
from module import encoders  # noqa: E402
from data_utils.encoding import build_backend  # noqa: E402
from data_utils.shards import format_line, format_line_zero_types, shard_path  # noqa: E402
from data_utils.task_def import load_task_defs  # noqa: E402
from data_utils.tsv import parse_rows, read_lines  # noqa: E402

TASK_DEF = ROOT / "experiments" / "glue" / "glue_task_def.yml"
MODEL = "minilm-l6"
MAX_LEN = 512
TASKS = ("sst", "mrpc")


def per_example(tsv: Path, out: Path, td) -> None:
    """The baseline: MT-DNN's prepro loop, one tokenizer call and one json.dumps per row."""
    tok = encoders.load_tokenizer(MODEL)
    with open(tsv, encoding="utf-8") as src, open(out, "w", encoding="utf-8") as dst:
        for line in src:
            cols = line.rstrip("\n").split("\t")
            enc = tok(cols[2], cols[3] if len(cols) > 3 else None, truncation=True, max_length=MAX_LEN)
            ids = enc["input_ids"]
            rec = {"uid": cols[0], "label": td.parse_label(cols[1]), "token_id": ids,
                   "type_id": enc.get("token_type_ids", [0] * len(ids))}
            dst.write("{}\n".format(json.dumps(rec)))


def hf_batched(tsv: Path, out: Path, td, batch: int = 1000) -> None:
    """A straightforward batched version: HF fast tokenizer on 1,000 rows at a time, json.dumps per row."""
    tok = encoders.load_tokenizer(MODEL)
    rows = [line.rstrip("\n").split("\t") for line in open(tsv, encoding="utf-8")]
    with open(out, "w", encoding="utf-8") as dst:
        for i in range(0, len(rows), batch):
            part = rows[i:i + batch]
            pairs = [r[3] for r in part] if len(part[0]) > 3 else None
            enc = tok([r[2] for r in part], pairs, truncation=True, max_length=MAX_LEN)
            for r, ids, types in zip(part, enc["input_ids"], enc["token_type_ids"]):
                dst.write(json.dumps({"uid": r[0], "label": td.parse_label(r[1]), "token_id": ids,
                                      "type_id": types}) + "\n")


def prepro_std_run(root: Path, task: str, workers: int) -> None:
    """This project's prepro_std.run on one task (what the bench times against the baseline)."""
    cfg = ps.PreproConfig(model=MODEL, root_dir=str(root), task_def=str(TASK_DEF), tasks=(task,),
                          max_seq_len=MAX_LEN, workers=workers, force=True)
    ps.run(cfg, log=lambda msg: None)


def make_canonical(glue_dir: Path, root: Path) -> None:
    from experiments.glue.glue_prepro import convert
    convert(glue_dir, root, TASK_DEF, tasks=list(TASKS), log=lambda msg: None)
    for path in root.glob("*.tsv"):  # the bench times train splits only
        if not path.name.endswith("_train.tsv"):
            path.unlink()


def _cpu() -> float:
    """CPU seconds of this process plus its reaped children (the worker processes)."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def timed(fn, *args) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), _cpu()
    fn(*args)
    return time.perf_counter() - wall, _cpu() - cpu


def measure(root: Path, repeat: int) -> list[tuple]:
    defs = load_task_defs(TASK_DEF)
    encoders.load_tokenizer(MODEL)  # warm-up: the first load imports transformers (seconds)
    rows_out = []
    for task in TASKS:
        tsv, shard = root / f"{task}_train.tsv", shard_path(root, MODEL, task, "train")
        base_out, batched_out = root / f"{task}.per_example.jsonl", root / f"{task}.hf_batched.jsonl"
        methods = {"per-example (MT-DNN)": lambda: per_example(tsv, base_out, defs[task]),
                   "hf-batched, 1 process": lambda: hf_batched(tsv, batched_out, defs[task]),
                   "prepro_std --workers 1": lambda: prepro_std_run(root, task, 1),
                   "prepro_std --workers 2": lambda: prepro_std_run(root, task, 2)}
        wall = {name: float("inf") for name in methods}
        cpu = dict(wall)
        for _ in range(repeat):
            for name, fn in methods.items():
                w, c = timed(fn)
                wall[name], cpu[name] = min(wall[name], w), min(cpu[name], c)
                if name.startswith("prepro_std"):
                    assert shard.read_bytes() == base_out.read_bytes(), f"{name} output differs from the baseline"
        assert batched_out.read_bytes() == base_out.read_bytes()
        n = len(read_lines(tsv))
        base = wall["per-example (MT-DNN)"]
        rows_out += [(task, n, name, wall[name], cpu[name], n / wall[name], base / wall[name]) for name in methods]
    return rows_out


def stages(root: Path, task: str) -> list[tuple[str, float]]:
    """prepro_std's work on one train split, stage by stage in one process (as encode_rows does it)."""
    td = load_task_defs(TASK_DEF)[task]
    tsv = root / f"{task}_train.tsv"
    out = []
    t = time.perf_counter()
    spec = ps.load_spec(ps.PreproConfig(model=MODEL, max_seq_len=MAX_LEN))
    tok = build_backend(spec)
    out.append(("tokenizer load + set-up", time.perf_counter() - t))
    t = time.perf_counter()
    data = parse_rows(tsv, read_lines(tsv), 1, td, "train")
    out.append(("read, split, validate rows", time.perf_counter() - t))
    t = time.perf_counter()
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    inputs = data.premises if data.hypotheses is None else list(zip(data.premises, data.hypotheses))
    encs = [enc for i in range(0, len(inputs), ps.CHUNK_ROWS) for enc in encode(inputs[i:i + ps.CHUNK_ROWS])]
    out.append(("Rust tokenizer (encode_batch_fast)", time.perf_counter() - t))
    t = time.perf_counter()
    ids = [e.ids for e in encs]
    types = None if data.hypotheses is None else [e.type_ids for e in encs]  # single sentences: all type 0
    out.append(("token ids to Python lists", time.perf_counter() - t))
    t = time.perf_counter()
    if types is None:
        lines = map(format_line_zero_types, data.uids, data.labels, ids)
    else:
        lines = map(format_line, data.uids, data.labels, ids, types)
    text = "".join([line + "\n" for line in lines])
    out.append(("JSON text (format_line)", time.perf_counter() - t))
    t = time.perf_counter()
    with tempfile.TemporaryFile("w", encoding="utf-8") as f:
        f.write(text)
    out.append(("write", time.perf_counter() - t))
    return out


def tokenizer_alone(root: Path) -> list[tuple[str, float]]:
    rows = [line.split("\t")[2] for line in read_lines(root / "sst_train.tsv")]
    tok = encoders.load_tokenizer(MODEL)
    backend = build_backend(ps.load_spec(ps.PreproConfig(model=MODEL, max_seq_len=MAX_LEN)))
    out = []
    t = time.perf_counter()
    for s in rows:
        tok(s, truncation=True, max_length=MAX_LEN)
    out.append(("HF call per sentence", len(rows) / (time.perf_counter() - t)))
    t = time.perf_counter()
    for i in range(0, len(rows), 1000):
        tok(rows[i:i + 1000], truncation=True, max_length=MAX_LEN)
    out.append(("HF call per 1,000 sentences", len(rows) / (time.perf_counter() - t)))
    t = time.perf_counter()
    for i in range(0, len(rows), 2048):
        backend.encode_batch_fast(rows[i:i + 2048])
    out.append(("Rust encode_batch_fast per 2,048", len(rows) / (time.perf_counter() - t)))
    return out


def _spin(seconds: float) -> None:
    start = time.process_time()
    while time.process_time() - start < seconds:
        pass


def free_cores() -> float:
    """How many cores this run really gets: 2 processes each burning 0.5 CPU-s; 2.0 means two idle cores."""
    import multiprocessing
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(_spin, [0.01, 0.01])
        start = time.perf_counter()
        pool.map(_spin, [0.5, 0.5])
        return 1.0 / (time.perf_counter() - start)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="prepro_std.py vs a per-example loop, end to end")
    p.add_argument("--glue_dir", default=str(ROOT.parent / "shared" / "glue"))
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--profile", action="store_true", help="also cProfile prepro_std --workers 1 on SST-2")
    args = p.parse_args(argv)
    if not (Path(args.glue_dir) / "SST-2" / "train.tsv").is_file():
        print(f"bench/prepro.py: error: {args.glue_dir}/SST-2/train.tsv not found (--glue_dir)", file=sys.stderr)
        return 1
    print(f"CPUs: {os.cpu_count()}, free cores measured before: {free_cores():.1f}, model {MODEL}, "
          f"max_seq_len {MAX_LEN}, best of {args.repeat}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_canonical(Path(args.glue_dir), root)
        results = measure(root, args.repeat)
        print("\n| task (train) | rows | method | wall s | CPU s | rows/s | speed-up (wall) |")
        print("|---|---:|---|---:|---:|---:|---:|")
        for task, n, name, secs, cpu, rate, ratio in results:
            print(f"| {task} | {n:,} | {name} | {secs:.2f} | {cpu:.2f} | {rate:,.0f} | {ratio:.2f}x |")
        print("\nWhere prepro_std's time goes (train splits, one process, stage by stage):")
        parts = {task: stages(root, task) for task in TASKS}
        totals = {task: sum(secs for _, secs in p) for task, p in parts.items()}
        print("| stage | " + " | ".join(f"{t} s | {t} share" for t in TASKS) + " |")
        print("|---|" + "---:|---:|" * len(TASKS))
        for i, (name, _) in enumerate(parts[TASKS[0]]):
            cells = [f"{parts[t][i][1]:.3f} | {100 * parts[t][i][1] / totals[t]:.0f}%" for t in TASKS]
            print(f"| {name} | " + " | ".join(cells) + " |")
        print("\nThe tokenizer alone (SST-2 train sentences/s, one process):")
        print("| call | sentences/s |\n|---|---:|")
        for name, rate in tokenizer_alone(root):
            print(f"| {name} | {rate:,.0f} |")
        if args.profile:
            prof = cProfile.Profile()
            prof.runcall(prepro_std_run, root, "sst", 1)
            pstats.Stats(prof).sort_stats("tottime").print_stats(12)
    print(f"\nfree cores measured after: {free_cores():.1f} (below 2, other processes shared the CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
