"""The sweep's report: a markdown table in the style of the paper's Table 2, plus CSV and JSON for tools.

Files (under ``results_dir``, each written atomically): ``<name>.md`` (the tables), ``<name>_runs.csv`` (one
row per run), ``<name>_configs.csv`` (one row per configuration, mean ± std over seeds) and ``<name>.json``
(everything, including the t-tests).
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from data_utils.atomic import atomic_write
from data_utils.metrics import glue_average
from experiments.sweep.results import RunResult, collect, ledger_path
from experiments.sweep.spec import SweepSpec, fmt
from experiments.sweep.stats import ConfigSummary, TTest, best_configs, compare, mean_std, seed_averages, summarize

#: column titles in the paper's spelling; other tasks keep their own name
PAPER_NAMES = {"rte": "RTE", "mrpc": "MRPC", "cola": "CoLA", "sst": "SST-2", "stsb": "STS-B", "qnli": "QNLI",
               "qqp": "QQP", "mnli": "MNLI-m/mm", "wnli": "WNLI"}
METRIC_NAMES = {"ACC": "Acc", "F1": "F1", "MCC": "Mcc", "Pearson": "P", "Spearman": "S", "AUC": "AUC"}


@dataclass
class Report:
    markdown: str
    paths: list[Path]


def _num(value: float, digits: int = 1) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _pm(ms) -> str:
    return _num(ms.mean) if math.isnan(ms.std) else f"{_num(ms.mean)} ± {_num(ms.std)}"


def _p(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3g}"


def _metric_values(summary: ConfigSummary) -> str:
    """'84.1/89.0': every metric of every dev split of the task, the paper's way of writing a cell."""
    return "/".join(_num(v) for metrics in summary.mean_metrics.values() for v in metrics.values())


def metric_title(summary: ConfigSummary) -> str:
    names = [METRIC_NAMES.get(m, m) for metrics in summary.mean_metrics.values() for m in metrics]
    return "/".join(dict.fromkeys(names))


def _setting(s: ConfigSummary, uses_sage: bool) -> str:
    return f"lr {fmt(s.learning_rate)}, β3 {fmt(s.beta3)}" if uses_sage else f"lr {fmt(s.learning_rate)}"


def paper_table(spec: SweepSpec, best: dict, tests: dict[str, TTest]) -> str:
    """Each optimizer's best configuration: mean over seeds (± std of the task score), average, and p-values."""
    tasks = [t for t in spec.tasks if any((t, o) in best for o in spec.optimizer_names())]
    titles = []
    for t in tasks:
        some = next(best[(t, o)] for o in spec.optimizer_names() if (t, o) in best)
        titles.append(f"{PAPER_NAMES.get(t, t)} ({metric_title(some)})")
    lines = ["| optimizer | setting (chosen on dev) | seeds | " + " | ".join(titles) + " | Avg |",
             "|---|---|---|" + "---|" * (len(tasks) + 1)]
    for opt in spec.optimizers:
        rows = [best.get((t, opt.name)) for t in tasks]
        if not any(rows):
            continue
        per_task = {t: _setting(r, opt.uses_sage) for t, r in zip(tasks, rows) if r}
        settings = (next(iter(per_task.values())) if len(set(per_task.values())) == 1 else
                    "; ".join(f"{PAPER_NAMES.get(t, t)} {v}" for t, v in per_task.items()))
        seeds = min(r.best.n for r in rows if r)
        cells = [_cell(r) for r in rows]
        lines.append(f"| {opt.name} | {settings} | {seeds} | " + " | ".join(cells)
                     + f" | {_average(best, tasks, opt.name)} |")
    if spec.compare and tests:
        base, cand = spec.compare
        cells = [_delta(tests.get(t)) for t in tasks]
        lines.append(f"| {cand} − {base} | paired t-test over seeds | | " + " | ".join(cells)
                     + f" | {_delta(tests.get('average'))} |")
    return "\n".join(lines)


def _cell(summary: ConfigSummary | None) -> str:
    if summary is None:
        return "—"
    std = summary.best.std
    return _metric_values(summary) if math.isnan(std) else f"{_metric_values(summary)} ± {_num(std)}"


def _average(best: dict, tasks: list[str], optimizer: str) -> str:
    rows = [best.get((t, optimizer)) for t in tasks]
    if not all(rows):
        return "—"
    mean = glue_average({ds: m for r in rows for ds, m in r.mean_metrics.items()})
    seeds = sorted(set.intersection(*(set(r.best_by_seed) for r in rows)))
    if len(seeds) < 2:
        return _num(mean)
    return f"{_num(mean)} ± {_num(mean_std(seed_averages(best, tasks, optimizer, seeds)).std)}"


def _delta(test: TTest | None) -> str:
    if test is None:
        return "—"
    sign = "+" if test.mean_diff >= 0 else "−"
    return f"{sign}{_num(abs(test.mean_diff))} (p = {_p(test.p)}, n = {test.n})"


def config_table(spec: SweepSpec, summaries: list[ConfigSummary], best: dict) -> str:
    sage = {o.name: o.uses_sage for o in spec.optimizers}
    lines = ["| task | optimizer | lr | β3 | seeds | best-epoch dev | last-epoch dev | best epoch (mean) | chosen |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        chosen = "✓" if best.get((s.task, s.optimizer)) is s else ""
        lines.append(f"| {PAPER_NAMES.get(s.task, s.task)} | {s.optimizer} | {fmt(s.learning_rate)} | "
                     f"{fmt(s.beta3) if sage.get(s.optimizer) else '—'} | {s.best.n} | {_pm(s.best)} | "
                     f"{_pm(s.last)} | {s.mean_best_epoch:.1f} | {chosen} |")
    return "\n".join(lines)


def markdown(spec: SweepSpec, results: list[RunResult], summaries, best, tests) -> str:
    total, kept = len(spec.runs()), sum(r.recorded for r in results)
    from_csv = f" ({kept} read back from {ledger_path(spec).name}: their run folders are gone)" if kept else ""
    head = (f"## {spec.name}: dev results, mean over seeds\n\n"
            f"{len(results)} of {total} runs finished{from_csv}. Score of a run = the mean of its task's dev "
            "metrics at its best epoch (×100); each optimizer's setting is the one with the best mean on dev, as in "
            "the paper's Table 2. Cells: mean metrics over seeds ± std of the task score; Avg: the GLUE-style average "
            "(metrics within a task, then tasks) ± its std over seeds. Last row: mean paired difference and the "
            "two-sided paired t-test over seeds.")
    return "\n\n".join([head, paper_table(spec, best, tests), "### Every configuration",
                        config_table(spec, summaries, best)]) + "\n"


def _flat(prefix: str, metrics) -> dict[str, float]:
    return {f"{prefix}_{ds}_{m}": v for ds, ms in metrics.items() for m, v in ms.items()}


def _write_runs_csv(path: Path, results: list[RunResult]) -> None:
    rows = [{"run_id": r.run.run_id, "task": r.run.task, "optimizer": r.run.optimizer,
             "learning_rate": r.run.learning_rate, "beta3": r.run.beta3, "seed": r.run.seed, "epochs": r.epochs,
             "best_epoch": r.best_epoch, "best_score": r.best_score, "last_score": r.last_score,
             "seconds": r.seconds, **_flat("best", r.best_metrics), **_flat("last", r.last_metrics),
             "flags": r.flags, "run_dir": str(r.run_dir)} for r in results]
    _write_csv(path, rows)


def _write_configs_csv(path: Path, summaries: list[ConfigSummary], best: dict) -> None:
    rows = [{"task": s.task, "optimizer": s.optimizer, "learning_rate": s.learning_rate, "beta3": s.beta3,
             "seeds": s.best.n, "best_mean": s.best.mean, "best_std": s.best.std, "last_mean": s.last.mean,
             "last_std": s.last.std, "mean_best_epoch": s.mean_best_epoch,
             "chosen": best.get((s.task, s.optimizer)) is s} for s in summaries]
    _write_csv(path, rows)


def _write_csv(path: Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    last = [c for c in ("flags", "run_dir") if c in columns]  # after the metric columns, which differ by task
    columns = [c for c in columns if c not in last] + last
    with atomic_write(path) as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _no_nan(value):
    """Strict JSON has no NaN or infinity: an undefined std or p-value becomes null, an infinite t "inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_no_nan(v) for v in value]
    return value


def _json(spec, results, summaries, best, tests) -> str:
    return json.dumps(_no_nan({
        "name": spec.name, "spec": spec.source, "runs_finished": len(results), "runs_total": len(spec.runs()),
        "compare": list(spec.compare) if spec.compare else None,
        "configs": [asdict(s) | {"chosen": best.get((s.task, s.optimizer)) is s} for s in summaries],
        "ttests": {k: asdict(v) for k, v in tests.items()},
        "runs": [{"run_id": r.run.run_id, "run_dir": str(r.run_dir), "best_epoch": r.best_epoch,
                  "best_score": r.best_score, "last_score": r.last_score, "seconds": r.seconds} for r in results],
    }), indent=2, allow_nan=False)


def write_report(spec: SweepSpec) -> Report:
    """Collect the finished runs and write the tables; at least one finished run is needed."""
    results = collect(spec)
    if not results:
        raise ValueError(f"{spec.source}: no finished runs under {spec.runs_dir} yet (python sweep.py status)")
    summaries = summarize(results)
    best = best_configs(summaries)
    tests = compare(best, spec.tasks, *spec.compare) if spec.compare else {}
    text = markdown(spec, results, summaries, best, tests)
    out = spec.results_dir
    paths = [out / f"{spec.name}.md", ledger_path(spec), out / f"{spec.name}_configs.csv",
             out / f"{spec.name}.json"]
    with atomic_write(paths[0]) as handle:
        handle.write(text)
    _write_runs_csv(paths[1], results)
    _write_configs_csv(paths[2], summaries, best)
    with atomic_write(paths[3]) as handle:
        handle.write(_json(spec, results, summaries, best, tests) + "\n")
    return Report(text, paths)
