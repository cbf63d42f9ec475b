#!/usr/bin/env python
"""Run the demo: MiniLM-L6 fine-tuned multi-task (vaderpol + vaderval) with Adamax and with Adamax-SAGE, each
at every learning rate of one small grid, then print the runs and the comparisons (``make demo`` calls this
after the data steps).

Like with like: both optimizers get the same grid, and the comparison is shown both at equal learning rate and
with each optimizer at its own best. A run's score is its last-epoch dev ``glue_average``; an optimizer's best
learning rate is the one with the highest score (the smaller lr on a tie). The same dev set chooses the lr and
reports it, and there is one seed: the table shows what happened on this slice, not a significance test
(``sweep.py`` does that: seeds, paired t-tests).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[2]
if not __package__:  # run by its file path, where the project's packages do not import
    print("run_demo.py: error: run it from the repository root as: python -m experiments.demo.run_demo [flags]",
          file=sys.stderr)
    raise SystemExit(2)

from data_utils.atomic import atomic_write  # noqa: E402
from data_utils import jsonsafe  # noqa: E402
from data_utils.jsonsafe import none_to_nan  # noqa: E402
from data_utils.safe_load import loads_json, read_json  # noqa: E402

OPTIMIZERS = (  # (label, optimizer flags without the lr): Table 7-style settings, scaled to the demo
    ("Adamax", ["--optimizer", "adamax"]),
    ("Adamax-SAGE", ["--optimizer", "usadamax", "--beta3", "0.75"]),
)
LEARNING_RATES = ("1e-4", "3e-4")
DEFAULT_EPOCHS = 2
DEFAULT_DATA = "data/demo/canonical/minilm-l6"
SEED = 2018
RUN_INFO = "demo_run.json"  # wall time and load average of one run, next to train.py's metrics.jsonl
#: What runs the optimizer step: train.py's default --optim_impl, stated in the table's caption because the
#: digits depend on it (the C kernel is built for the CPU it runs on, -march=native).
IMPLEMENTATION = "--optim_impl auto, the fused step (on a CPU: the C kernel, built with -march=native)"
EXPECTED = ROOT / "experiments" / "demo" / "expected"  # the committed runs behind README.md's demo table


@dataclass(frozen=True)
class Run:
    """One finished run: its last-epoch dev record and, when it was timed here, its wall time."""
    optimizer: str
    lr: str
    record: dict
    seconds: Optional[float]

    @property
    def score(self) -> float:
        return float(self.record["glue_average"])


def run_name(label: str, lr: str) -> str:
    return f"{label.lower()}_lr{lr}"


def train_argv(out_dir: Path, flags: list[str], lr: str, args) -> list[str]:
    """train.py's flags for one run (recorded in its demo_run.json, to tell a finished run of the same command)."""
    return ["--task_def", args.task_def, "--data_dir", args.data_dir, "--init_checkpoint", "minilm-l6",
            "--train_datasets", "vaderpol,vaderval", "--test_datasets", "vaderpol,vaderval", "--batch_size", "32",
            "--epochs", str(args.epochs), "--warmup", "0.1", "--global_grad_clipping", "1.0", "--max_seq_len", "128",
            "--seed", str(SEED), "--output_dir", str(out_dir), *flags, "--learning_rate", lr]


def finished(out_dir: Path, argv: list[str]) -> bool:
    """A run this demo finished with the same train.py flags (its demo_run.json is written after train.py)."""
    try:
        return read_json(out_dir / RUN_INFO).get("train_argv") == argv
    except (OSError, ValueError, AttributeError):
        return False


def train(out_dir: Path, argv: list[str]) -> float:
    """One run from scratch. --overwrite: whatever train.py left in the folder before (a killed or older run)
    is replaced on purpose, never continued or mixed with this one."""
    (out_dir / RUN_INFO).unlink(missing_ok=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "train.py"), *argv, "--overwrite"], check=True, cwd=ROOT)
    return time.perf_counter() - start


def write_json(path: Path, value: dict) -> None:
    """Temp file + rename: an interrupted demo never leaves a half-written file."""
    with atomic_write(path) as handle:
        json.dump(value, handle)


def last_record(out_dir: Path) -> dict:
    """The last evaluation of a run (the end of its last epoch)."""
    path = out_dir / "metrics.jsonl"
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except FileNotFoundError:
        raise SystemExit(f"run_demo.py: {path}: missing (run the demo without --report_only first)") from None
    if not lines:
        raise SystemExit(f"run_demo.py: {path}: no evaluation records")
    try:
        # train.py writes a NaN metric (Pearson of constant predictions) as null; read it back as nan
        record = none_to_nan(loads_json(lines[-1], path, len(lines)))
        float(record["glue_average"]), record["dev"]["vaderpol_dev"], record["dev"]["vaderval_dev"]
    except (ValueError, KeyError, TypeError):
        raise SystemExit(f"run_demo.py: {path}:{len(lines)}: not a dev record with glue_average, "
                         "vaderpol_dev and vaderval_dev") from None
    return record


def read_run(out_root: Path, label: str, lr: str) -> Run:
    folder = out_root / run_name(label, lr)
    info = folder / RUN_INFO
    seconds = read_json(info)["seconds"] if info.is_file() else None
    return Run(label, lr, last_record(folder), seconds)


def best_lr(runs: list[Run], optimizer: str) -> Run:
    """The optimizer's run with the highest score; on a tie the smaller learning rate."""
    own = sorted((r for r in runs if r.optimizer == optimizer), key=lambda r: float(r.lr))
    return max(own, key=lambda r: r.score)  # max keeps the first of equal scores


def runs_table(runs: list[Run], chosen: set[tuple[str, str]]) -> list[str]:
    lines = ["| optimizer | lr | vaderpol ACC | vaderpol F1 | vaderpol MCC | vaderval Pearson | vaderval Spearman "
             "| average | best lr on dev | wall time |",
             "|---|---:|---:|---:|---:|---:|---:|---:|:---:|---:|"]
    for r in runs:
        pol, val = r.record["dev"]["vaderpol_dev"], r.record["dev"]["vaderval_dev"]
        wall = "n/a" if r.seconds is None else f"{r.seconds / 60:.1f} min"
        mark = "yes" if (r.optimizer, r.lr) in chosen else ""
        lines.append(f"| {r.optimizer} | {r.lr} | {pol['ACC']:.1f} | {pol['F1']:.1f} | {pol['MCC']:.1f} "
                     f"| {val['Pearson']:.1f} | {val['Spearman']:.1f} | {r.score:.2f} | {mark} | {wall} |")
    return lines


def comparison_table(runs: list[Run], base: str, cand: str, lrs: tuple[str, ...]) -> list[str]:
    """Candidate − baseline average: at each equal lr, then each at its own best lr."""
    lines = [f"| comparison | {base} average | {cand} average | {cand} − {base} |", "|---|---:|---:|---:|"]
    by_key = {(r.optimizer, r.lr): r for r in runs}
    for lr in lrs:
        b, c = by_key[(base, lr)], by_key[(cand, lr)]
        lines.append(f"| both at lr {lr} | {b.score:.2f} | {c.score:.2f} | {c.score - b.score:+.2f} |")
    b, c = best_lr(runs, base), best_lr(runs, cand)
    lines.append(f"| each at its best lr on dev ({base} {b.lr}, {cand} {c.lr}) | {b.score:.2f} | {c.score:.2f} "
                 f"| {c.score - b.score:+.2f} |")
    return lines


def report(out_root: Path, lrs: tuple[str, ...], epochs: int) -> str:
    labels = [label for label, _ in OPTIMIZERS]
    runs = [read_run(out_root, label, lr) for label in labels for lr in lrs]
    chosen = {(best_lr(runs, label).optimizer, best_lr(runs, label).lr) for label in labels}
    caption = (f"Dev set, one seed ({SEED}), {epochs} epochs, last-epoch scores; the same dev set picks each "
               "optimizer's best lr and reports it. Average: the mean of each task's metrics, then of the two "
               f"tasks (glue_average). Optimizer step: {IMPLEMENTATION}.")
    return "\n".join([caption, "", *runs_table(runs, chosen), "",
                      *comparison_table(runs, labels[0], labels[1], lrs)])


def without_wall_time(table: str) -> list[list[str]]:
    """The report as rows of cells (text lines as one cell), the runs table's wall-time cell dropped: everything
    a rerun on the same CPU must repeat."""
    rows = []
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else [line]
        rows.append(cells[:-1] if len(cells) == 10 else cells)
    return rows


def differences(out_root: Path, expected_root: Path, lrs: tuple[str, ...], epochs: int) -> list[str]:
    """One line per table row where the runs in ``out_root`` print something else than the committed records."""
    got, want = (without_wall_time(report(root, lrs, epochs)) for root in (out_root, expected_root))
    if len(got) != len(want):
        return [f"the report has {len(got)} lines, the committed one {len(want)}"]
    header = got[2] if len(got) > 2 else []
    found = []
    for number, (mine, theirs) in enumerate(zip(got, want), 1):
        if mine == theirs:
            continue
        if len(mine) != len(theirs) or len(mine) == 1:
            found.append(f"line {number}: {' | '.join(mine)!r} (committed {' | '.join(theirs)!r})")
            continue
        names = header if len(header) == len(mine) else [f"cell {i + 1}" for i in range(len(mine))]
        cells = [f"{names[i]} {a} (committed {b})" for i, (a, b) in enumerate(zip(mine, theirs)) if a != b]
        found.append(f"line {number}, {' '.join(mine[:2]) if len(mine) == 9 else mine[0]}: " + "; ".join(cells))
    return found


def save_expected(out_root: Path, expected_root: Path, lrs: tuple[str, ...]) -> None:
    """Each run's last dev record, the only thing the table is made from, as ``<run>/metrics.jsonl``."""
    for label, _ in OPTIMIZERS:
        for lr in lrs:
            name = run_name(label, lr)
            folder = expected_root / name
            folder.mkdir(parents=True, exist_ok=True)
            with atomic_write(folder / "metrics.jsonl") as handle:
                handle.write(jsonsafe.dumps(last_record(out_root / name)) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out_dir", default="demo_out")
    p.add_argument("--data_dir", default=DEFAULT_DATA)
    p.add_argument("--task_def", default="experiments/demo/demo_task_def.yml")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    p.add_argument("--learning_rates", default=",".join(LEARNING_RATES),
                   help="comma-separated grid, the same for both optimizers (default %(default)s)")
    p.add_argument("--report_only", action="store_true", help="print the tables from the runs in --out_dir")
    p.add_argument("--rerun", action="store_true",
                   help="train every run again (default: a run finished by this demo with the same flags is reused)")
    p.add_argument("--check", metavar="DIR", nargs="?", const=str(EXPECTED),
                   help="exit 1 when the tables differ (wall time aside) from the ones made of the runs' records in "
                        "DIR (default: the committed %(const)s, behind README.md's demo table)")
    p.add_argument("--save_expected", metavar="DIR", help="write each run's last dev record to DIR/<run>/")
    args = p.parse_args(argv)
    lrs = tuple(s.strip() for s in args.learning_rates.split(",") if s.strip())
    for lr in lrs:
        try:
            if float(lr) <= 0:
                raise ValueError
        except ValueError:
            p.error(f"--learning_rates: {lr!r} is not a positive number")
    out_root = Path(args.out_dir)
    if not args.report_only:
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
        for label, flags in OPTIMIZERS:
            for lr in lrs:
                out = out_root / run_name(label, lr)
                argv = train_argv(out, flags, lr, args)
                if not args.rerun and finished(out, argv):
                    print(f"{out}: finished before with the same flags, reused (--rerun trains it again)", flush=True)
                    continue
                seconds = train(out, argv)
                write_json(out / RUN_INFO, {"seconds": seconds, "loadavg_after": list(os.getloadavg()),
                                            "train_argv": argv})
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("\n" + report(out_root, lrs, args.epochs))
    if args.save_expected:
        save_expected(out_root, Path(args.save_expected), lrs)
    if args.check:
        found = differences(out_root, Path(args.check), lrs, args.epochs)
        for line in found:
            print(f"run_demo.py: {out_root} differs from {args.check}: {line}", file=sys.stderr)
        if found:
            return 1
        print(f"\nThe scores are the committed ones ({args.check}).")
    elif (lrs, args.epochs, args.data_dir) == (LEARNING_RATES, DEFAULT_EPOCHS, DEFAULT_DATA) and EXPECTED.is_dir():
        found = differences(out_root, EXPECTED, lrs, args.epochs)
        print("\nThe scores are README.md's demo table." if not found else
              f"\n{len(found)} lines differ from README.md's demo table, made by `make demo` (get_data.py "
              "--max_train 1000) on a 2-core x86 CPU; the C kernel is built for the CPU it runs on, so another "
              "CPU can move the last digits. --check lists the cells.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
