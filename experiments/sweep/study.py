#!/usr/bin/env python
"""The full-size study's answer: each optimizer pair's final runs, combined over the tasks.

Each selection spec (the Adamax pair's and the AdamW pair's) chose one setting per task and optimizer on dev;
``final_specs.py`` wrote one spec per task with fresh seeds at those settings, because a sweep spec holds one
grid for all its tasks. This reads every task's finished final runs and reports, per pair: each task's dev
score at the best and at the last epoch (mean ± std over the fresh seeds), the paired t-test of SAGE − base
per task and on the GLUE-style average over the tasks (seeds finished on every task), and a plot of the
per-seed differences. A task whose final runs are not all finished is listed as pending and left out of the
average, which is only given once every task is in: an average over some tasks would not be the study's.

    python -m experiments.sweep.study [--select SPEC.yml ...] [--name minilm_glue4_study] [--out_dir DIR]

Writes ``<out_dir>/<name>.md``, ``.json`` and ``.png`` (atomically).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if not __package__:  # run by its file path, where the project's packages do not import
    print("study.py: error: run it from the repository root as: python -m experiments.sweep.study [flags]",
          file=sys.stderr)
    raise SystemExit(2)

from data_utils.atomic import atomic_write  # noqa: E402
from data_utils.safe_paths import plain_name  # noqa: E402
from experiments.sweep.final_specs import final_base_name, final_spec_name  # noqa: E402
from experiments.sweep.report import PAPER_NAMES, _delta, _no_nan, _num, metric_title  # noqa: E402
from experiments.sweep.results import collect  # noqa: E402
from experiments.sweep.spec import SpecError, fmt, load_spec  # noqa: E402
from experiments.sweep.stats import (ConfigSummary, TTest, compare, mean_metrics, mean_std,  # noqa: E402
                                     seed_averages, summarize)

SELECT_SPECS = (ROOT / "experiments" / "sweep" / "minilm_glue4_adamax_select.yml",
                ROOT / "experiments" / "sweep" / "minilm_glue4_adamw_select.yml")
EPOCHS = ("best", "last")


@dataclass
class PairStudy:
    """One optimizer pair's final runs over the selection spec's tasks."""
    name: str
    baseline: str
    candidate: str
    tasks: tuple[str, ...]
    uses_sage: dict[str, bool]
    final: dict[tuple[str, str], ConfigSummary] = field(default_factory=dict)  # (task, optimizer) -> summary
    finished: list[str] = field(default_factory=list)
    pending: dict[str, str] = field(default_factory=dict)  # task -> why it is not in
    tests: dict[str, dict[str, TTest]] = field(default_factory=dict)  # epoch -> task or "average" -> test

    @property
    def complete(self) -> bool:
        return list(self.finished) == list(self.tasks)

    def average_seeds(self) -> list[int]:
        if not self.complete:
            return []
        sets = [set(self.final[(t, o)].best_by_seed) for t in self.tasks for o in (self.baseline, self.candidate)]
        return sorted(set.intersection(*sets))


def load_pair(select_path: Path) -> PairStudy:
    """The finished final runs of every task of one selection spec (its final specs sit in its results_dir)."""
    spec = load_spec(select_path)
    if not spec.compare:
        raise ValueError(f"{select_path}: no 'compare' pair; the study compares a base optimizer with its SAGE")
    base, cand = spec.compare
    pair = PairStudy(final_base_name(spec.name), base, cand, tuple(spec.tasks),
                     {o.name: o.uses_sage for o in spec.optimizers})
    for task in spec.tasks:
        path = spec.results_dir / f"{final_spec_name(spec.name, task)}.yml"
        if not path.is_file():
            pair.pending[task] = f"no final spec yet ({path.name})"
            continue
        final = load_spec(path)
        results = collect(final)
        if len(results) < len(final.runs()):
            pair.pending[task] = f"{len(results)} of {len(final.runs())} final runs finished"
            continue
        for summary in summarize(results):
            key = (task, summary.optimizer)
            if key in pair.final:
                raise ValueError(f"{path}: more than one setting of {summary.optimizer}; a final spec has one")
            pair.final[key] = summary
        pair.finished.append(task)
    # over all the spec's tasks: unfinished ones are skipped, and the average waits for every task
    pair.tests = {epoch: compare(pair.final, pair.tasks, base, cand, epoch) for epoch in EPOCHS}
    return pair


# ---------------------------------------------------------------------------------------------- tables
def _cell(summary: ConfigSummary, epoch: str) -> str:
    stat = summary.best if epoch == "best" else summary.last
    means = mean_metrics(summary.metrics(epoch).values())
    values = "/".join(_num(v) for metrics in means.values() for v in metrics.values())
    return values if math.isnan(stat.std) else f"{values} ± {_num(stat.std)}"


def _average_cell(pair: PairStudy, optimizer: str, epoch: str) -> str:
    seeds = pair.average_seeds()
    per_seed = seed_averages(pair.final, pair.tasks, optimizer, seeds, epoch)
    stat = mean_std(per_seed)
    return _num(stat.mean) if math.isnan(stat.std) else f"{_num(stat.mean)} ± {_num(stat.std)}"


def settings_table(pair: PairStudy) -> str:
    lines = [f"| task | {pair.baseline} | {pair.candidate} |", "|---|---|---|"]
    for task in pair.finished:
        cells = []
        for opt in (pair.baseline, pair.candidate):
            s = pair.final[(task, opt)]
            cells.append(f"lr {fmt(s.learning_rate)}" + (f", β3 {fmt(s.beta3)}" if pair.uses_sage[opt] else ""))
        lines.append(f"| {PAPER_NAMES.get(task, task)} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def results_table(pair: PairStudy) -> str:
    b, c = pair.baseline, pair.candidate
    lines = [f"| task | seeds | {b}, best epoch | {c}, best epoch | {c} − {b}, best (p) | {b}, last epoch | "
             f"{c}, last epoch | {c} − {b}, last (p) |", "|---|---|---|---|---|---|---|---|"]
    for task in pair.finished:
        sb, sc = pair.final[(task, b)], pair.final[(task, c)]
        title = f"{PAPER_NAMES.get(task, task)} ({metric_title(sb)})"
        row = [title, str(pair.tests["best"][task].n)]
        for epoch in EPOCHS:
            row += [_cell(sb, epoch), _cell(sc, epoch), _delta(pair.tests[epoch][task])]
        lines.append("| " + " | ".join(row) + " |")
    if pair.complete:
        row = ["**Avg**", str(len(pair.average_seeds()))]
        for epoch in EPOCHS:
            row += [_average_cell(pair, b, epoch), _average_cell(pair, c, epoch),
                    _delta(pair.tests[epoch].get("average"))]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def pair_markdown(pair: PairStudy) -> str:
    head = f"### {pair.baseline} vs {pair.candidate} ({pair.name})"
    if not pair.finished:
        return "\n\n".join([head, f"No task finished yet. Pending: {_pending(pair)}."])
    parts = [head, "Settings chosen on dev with the selection seeds:", settings_table(pair),
             "Final runs (fresh seeds): dev metrics, mean over seeds ± std of the task score; "
             "difference = mean paired difference of the task scores, two-sided paired t-test over seeds.",
             results_table(pair)]
    if pair.pending:
        parts.append(f"Pending: {_pending(pair)}. The average over tasks waits for every task.")
    return "\n\n".join(parts)


def _pending(pair: PairStudy) -> str:
    return "; ".join(f"{PAPER_NAMES.get(t, t)} ({why})" for t, why in pair.pending.items())


def markdown(pairs: Sequence[PairStudy], name: str) -> str:
    head = (f"## {name}: the full-size study\n\nScore of a run = the mean of its task's dev metrics (×100) at "
            "its best epoch or at its last; each task's setting per optimizer was chosen on dev with other seeds "
            "than the ones reported here. Avg: the GLUE-style average over the tasks (metrics within a task, "
            "then tasks) per seed, ± its std over seeds.")
    return "\n\n".join([head] + [pair_markdown(p) for p in pairs]) + "\n"


# ---------------------------------------------------------------------------------------------- plot
def differences(pair: PairStudy, key: str, epoch: str) -> list[float]:
    """Per-seed candidate − baseline of one task (or of the average over tasks, key "average")."""
    b, c = pair.baseline, pair.candidate
    if key == "average":
        seeds = pair.average_seeds()
        return list(np.subtract(seed_averages(pair.final, pair.tasks, c, seeds, epoch),
                                seed_averages(pair.final, pair.tasks, b, seeds, epoch)))
    sb, sc = pair.final[(key, b)].by_seed(epoch), pair.final[(key, c)].by_seed(epoch)
    return [sc[s] - sb[s] for s in sorted(set(sb) & set(sc))]


def _ci95(values: Sequence[float]) -> float:
    from scipy import stats as scipy_stats
    if len(values) < 2:
        return math.nan
    return float(scipy_stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values)))


def plot(pairs: Sequence[PairStudy], out: Path) -> Path:
    """Per pair, per task and for the average: each seed's difference (dots), their mean ± 95% CI (bar)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [p for p in pairs if p.finished]
    fig, axes = plt.subplots(1, len(shown), figsize=(5.2 * len(shown), 3.8), dpi=120, squeeze=False)
    for ax, pair in zip(axes[0], shown):
        keys = pair.finished + (["average"] if pair.complete else [])
        for epoch, offset, color in (("best", -0.14, "tab:blue"), ("last", 0.14, "tab:orange")):
            for i, key in enumerate(keys):
                d = differences(pair, key, epoch)
                ax.scatter([i + offset] * len(d), d, s=12, color=color, alpha=0.5, zorder=2)
                ax.errorbar(i + offset, np.mean(d), yerr=_ci95(d), fmt="o", color=color, capsize=4, zorder=3,
                            label=f"{epoch} epoch: mean ± 95% CI" if i == 0 else None)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlim(-0.6, len(keys) - 0.4)
        ax.set_xticks(range(len(keys)), [PAPER_NAMES.get(k, "Avg" if k == "average" else k) for k in keys])
        ax.set_ylabel(f"{pair.candidate} − {pair.baseline} (dev points)")
        ax.set_title(f"{pair.candidate} − {pair.baseline}, per seed", fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(out, mode="wb") as handle:
        fig.savefig(handle, format="png")
    plt.close(fig)
    return out


# ---------------------------------------------------------------------------------------------- files
def to_json(pairs: Sequence[PairStudy]) -> dict:
    out = []
    for p in pairs:
        out.append({
            "name": p.name, "baseline": p.baseline, "candidate": p.candidate, "tasks": list(p.tasks),
            "finished": p.finished, "pending": p.pending,
            "final": [asdict(s) for s in p.final.values()],
            "ttests": {e: {k: asdict(v) for k, v in tests.items()} for e, tests in p.tests.items()},
            "differences": {e: {k: differences(p, k, e) for k in p.tests[e]} for e in EPOCHS},
        })
    return _no_nan({"pairs": out})


def write_study(select_paths: Sequence[Path], name: str, out_dir: Path) -> list[Path]:
    plain_name(name, "--name")  # it names the three output files
    pairs = [load_pair(Path(p)) for p in select_paths]
    if not any(p.finished for p in pairs):
        raise ValueError("no task has all its final runs finished yet ("
                         + "; ".join(f"{p.name}: {_pending(p)}" for p in pairs) + ")")
    paths = [out_dir / f"{name}.md", out_dir / f"{name}.json", out_dir / f"{name}.png"]
    with atomic_write(paths[0]) as handle:
        handle.write(markdown(pairs, name))
    with atomic_write(paths[1]) as handle:
        handle.write(json.dumps(to_json(pairs), indent=2, allow_nan=False) + "\n")
    plot(pairs, paths[2])
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--select", action="append", type=Path,
                   help="a selection spec whose final specs to combine; repeat (default: the two glue4 specs)")
    p.add_argument("--name", default="minilm_glue4_study")
    p.add_argument("--out_dir", type=Path, default=None, help="default: the first selection spec's results_dir")
    args = p.parse_args(argv)
    select = args.select or list(SELECT_SPECS)
    try:
        out_dir = args.out_dir or load_spec(select[0]).results_dir
        paths = write_study(select, args.name, out_dir)
    except (SpecError, ValueError, FileNotFoundError) as exc:
        print(f"study.py: error: {exc}", file=sys.stderr)
        return 2
    print(Path(paths[0]).read_text(encoding="utf-8"))
    print("written: " + ", ".join(str(x) for x in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
