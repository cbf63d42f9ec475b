"""Peak RSS and time to the first optimizer step of a real ``train.py`` run on an MNLI-sized shard: today's
in-memory JSONL loader (``--no_shard_cache``) against the memory-mapped shard cache, built in that run (cold) and
already present (warm).

The 393k-row train shard repeats real rows: MNLI matched dev (../shared/glue, the Arrow stand-in) converted by
experiments/glue/glue_prepro.py and tokenized for ``minilm-l6`` by prepro_std.py, its lines repeated (uids made
unique) to --rows; the dev split is matched dev itself. Each variant runs in its own process, which records its
VmHWM (peak resident set, file-backed pages of the mapping included) and the clock at the first optimizer step
and exits there. A "floor" row runs the same command on a 1,000-row shard: what torch, the encoder and the
optimizer cost whatever the loader.

    .venv/bin/python -m bench.shard_cache [--rows 393000] [--glue_dir ../shared/glue]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if not __package__:  # run by its file path, where the project's packages do not import
    print("shard_cache.py: error: run it from the repository root as: python -m bench.shard_cache [flags]",
          file=sys.stderr)
    raise SystemExit(2)
MODEL = "minilm-l6"
TASK_YAML = ("mnli:\n  task_type: Classification\n  data_format: PremiseAndOneHypothesis\n  n_class: 3\n"
             "  labels: [contradiction, neutral, entailment]\n  metric_meta: [ACC]\n  split_names: [train, dev]\n")
CHILD_FLAG = "--child"


def child(argv: list[str]) -> None:
    """Run train.py's main in this process; at the first optimizer step print the clock and VmHWM, then exit."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    def first_step(optimizer, args, kwargs) -> None:
        status = Path("/proc/self/status").read_text()
        hwm_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
        print("BENCH " + json.dumps({"t": time.time(), "hwm_mb": hwm_kb / 1024}), flush=True)
        os._exit(0)
    register_optimizer_step_post_hook(first_step)
    import train
    sys.exit(train.main(argv))


def child_load(argv: list[str]) -> None:
    """The loader alone: load_split of the train shard and the first epoch's plan, after the imports; prints the
    seconds it took and the peak RSS it added over the process as it stood after the imports."""
    from data_utils.shard_checks import EncoderLimits
    from data_utils.task_def import parse_task_defs
    from mt_dnn.batcher import epoch_plan, load_split

    def status(key: str) -> float:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(key + ":"))
        return int(line.split()[1]) / 1024
    data_dir, cache = argv[0], argv[1] == "cache"
    task = parse_task_defs(TASK_YAML, "bench")["mnli"]
    before = status("VmRSS")
    start = time.perf_counter()
    data = load_split(data_dir, task, "train", 128, encoder=EncoderLimits(MODEL, 30522, 2, 512), cache=cache)
    epoch_plan([data], 8, 2018, 0)
    seconds = time.perf_counter() - start
    print("BENCH " + json.dumps({"seconds": seconds, "added_mb": status("VmHWM") - before}), flush=True)


def make_data(glue_dir: Path, work: Path, rows: int) -> Path:
    canon = work / "canonical"
    py = sys.executable
    subprocess.run([py, "-m", "experiments.glue.glue_prepro", "--glue_dir", str(glue_dir),
                    "--out_dir", str(canon), "--tasks", "mnli"], check=True, capture_output=True)
    subprocess.run([py, str(ROOT / "prepro_std.py"), "--model", MODEL, "--root_dir", str(canon), "--task_def",
                    str(ROOT / "experiments" / "glue" / "glue_task_def.yml"), "--tasks", "mnli", "--max_seq_len",
                    "512"], check=True, capture_output=True)
    dev = (canon / MODEL / "mnli_matched_dev.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    data = work / "data"
    data.mkdir()
    (data / "mnli_dev.jsonl").write_text("".join(dev), encoding="utf-8")
    for name, n in (("mnli_train.jsonl", rows), ("floor/mnli_train.jsonl", 1000)):
        (data / name).parent.mkdir(exist_ok=True)
        with open(data / name, "w", encoding="utf-8") as out:
            for i in range(n):
                rep, line = divmod(i, len(dev))
                out.write(dev[line].replace('{"uid": "', f'{{"uid": "r{rep}-', 1))
    shutil.copy(data / "mnli_dev.jsonl", data / "floor" / "mnli_dev.jsonl")
    (work / "tasks.yml").write_text(TASK_YAML, encoding="utf-8")
    return data


def run_variant(work: Path, data: Path, name: str, extra: list[str]) -> dict:
    argv = ["--train_datasets", "mnli", "--task_def", str(work / "tasks.yml"), "--data_dir", str(data),
            "--init_checkpoint", MODEL, "--output_dir", str(work / "out" / name), "--batch_size", "8",
            "--max_seq_len", "128", "--max_steps", "1", "--epochs", "1", "--no_tensorboard",
            "--optim_impl", "foreach", "--device", "cpu", *extra]
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "bench.shard_cache", CHILD_FLAG, *argv], capture_output=True,
                          text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH ")]
    if not lines:
        raise SystemExit(f"{name}: no optimizer step (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    got = json.loads(lines[-1][len("BENCH "):])
    return {"seconds": got["t"] - start, "rss_mb": got["hwm_mb"]}


def _run_load(data: Path, mode: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "bench.shard_cache", CHILD_FLAG + "_load", str(data), mode],
                          capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH ")]
    if not lines:
        raise SystemExit(f"loader alone ({mode}): failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("BENCH "):])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == CHILD_FLAG:
        return child(sys.argv[2:])
    if len(sys.argv) > 1 and sys.argv[1] == CHILD_FLAG + "_load":
        return child_load(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=393_000)
    p.add_argument("--glue_dir", default=str(ROOT.parent / "shared" / "glue"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        data = make_data(Path(args.glue_dir), work, args.rows)
        size = (data / "mnli_train.jsonl").stat().st_size
        print(f"train shard: {args.rows:,} rows, {size / 2**20:.0f} MiB (made in {time.perf_counter() - t0:.0f} s); "
              f"train.py --max_steps 1 --batch_size 8 --max_seq_len 128, encoder {MODEL}, CPU\n")
        run_variant(work, data / "floor", "warm-up", [])  # first imports read the libraries from disk: not timed
        results = {
            "today: JSONL into lists": run_variant(work, data, "jsonl", ["--no_shard_cache"]),
            "mmap cache, cold (built)": run_variant(work, data, "cold", []),
            "mmap cache, warm": run_variant(work, data, "warm", []),
            "floor: 1,000-row shard": run_variant(work, data / "floor", "floor", []),
        }
        cache = data / ".shard_cache" / "mnli_train.jsonl.cache"
        print(f"cache file: {cache.stat().st_size / 2**20:.0f} MiB\n")
        shutil.rmtree(data / ".shard_cache")
        alone = {name: _run_load(data, mode) for name, mode in (("today: JSONL into lists", "jsonl"),
                                                                ("mmap cache, cold (built)", "cache"),
                                                                ("mmap cache, warm", "cache"))}
    base, floor = results["today: JSONL into lists"], results["floor: 1,000-row shard"]
    print("peak RSS (VmHWM) and seconds from process start to the first optimizer step; 'data' = above the floor "
          "row, i.e. what the loader adds to torch, the encoder and the optimizer\n")
    print(f"| {'loader':<26} | {'peak RSS MiB':>12} | {'vs today':>8} | {'data MiB':>8} | {'vs today':>8} "
          f"| {'s to 1st step':>13} | {'vs today':>8} |")
    print(f"|{'-' * 28}|{'-' * 14}|{'-' * 10}|{'-' * 10}|{'-' * 10}|{'-' * 15}|{'-' * 10}|")
    base_data = max(base["rss_mb"] - floor["rss_mb"], 1e-9)
    for name, r in results.items():
        data_mb = r["rss_mb"] - floor["rss_mb"]
        print(f"| {name:<26} | {r['rss_mb']:12.0f} | {r['rss_mb'] / base['rss_mb']:8.2f} | {data_mb:8.0f} | "
              f"{data_mb / base_data:8.2f} | {r['seconds']:13.1f} | {r['seconds'] / base['seconds']:8.2f} |")

    base = alone["today: JSONL into lists"]
    print("\nthe loader alone, each in its own process: load_split(train, encoder checks) + the first epoch plan; "
          "seconds after the imports, and the peak RSS it adds to the process\n")
    print(f"| {'loader':<26} | {'added peak RSS MiB':>18} | {'vs today':>8} | {'seconds':>7} | {'vs today':>8} |")
    print(f"|{'-' * 28}|{'-' * 20}|{'-' * 10}|{'-' * 9}|{'-' * 10}|")
    for name, r in alone.items():
        print(f"| {name:<26} | {r['added_mb']:18.0f} | {r['added_mb'] / base['added_mb']:8.2f} | "
              f"{r['seconds']:7.2f} | {r['seconds'] / base['seconds']:8.2f} |")


if __name__ == "__main__":
    main()
