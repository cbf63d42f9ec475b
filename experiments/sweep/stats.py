"""Statistics over seeds: mean ± std per configuration, each optimizer's best configuration, paired t-tests.

The paper's protocol (Table 2): pick each optimizer's hyperparameters on dev, report the mean over seeds, and
call a gain significant when a paired Student t-test over the seeds gives p < 0.05. Runs are paired by seed:
both optimizers' runs with seed s share the data order and the classifier's initialisation.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
from scipy import stats as scipy_stats

from data_utils.metrics import glue_average
from experiments.sweep.results import Metrics, RunResult


@dataclass(frozen=True)
class MeanStd:
    mean: float
    std: float  # sample standard deviation (n − 1); NaN for a single value
    n: int


@dataclass(frozen=True)
class TTest:
    """Paired two-sided t-test of candidate − baseline over ``n`` seeds."""
    n: int
    mean_diff: float
    t: float
    p: float


@dataclass(frozen=True)
class ConfigSummary:
    task: str
    optimizer: str
    learning_rate: float
    beta3: float
    best: MeanStd  # best-epoch dev score over seeds
    last: MeanStd  # last-epoch dev score over seeds
    best_by_seed: dict[int, float]
    metrics_by_seed: dict[int, Metrics]  # the best epoch's metrics of each seed
    mean_metrics: Metrics  # their mean over seeds
    mean_best_epoch: float
    last_by_seed: dict[int, float] = field(default_factory=dict)  # last-epoch dev score of each seed
    last_metrics_by_seed: dict[int, Metrics] = field(default_factory=dict)  # the last epoch's metrics

    def by_seed(self, epoch: str = "best") -> dict[int, float]:
        """Each seed's dev score at its best epoch (``"best"``) or at the last one (``"last"``)."""
        return _pick(epoch, self.best_by_seed, self.last_by_seed)

    def metrics(self, epoch: str = "best") -> dict[int, Metrics]:
        return _pick(epoch, self.metrics_by_seed, self.last_metrics_by_seed)


def _pick(epoch: str, best, last):
    if epoch not in ("best", "last"):
        raise ValueError(f"epoch: expected 'best' or 'last', got {epoch!r}")
    return best if epoch == "best" else last


def mean_std(values: Iterable[float]) -> MeanStd:
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        raise ValueError("mean_std: no values")
    std = float(arr.std(ddof=1)) if arr.size > 1 else math.nan
    return MeanStd(float(arr.mean()), std, int(arr.size))


def paired_ttest(baseline: Sequence[float], candidate: Sequence[float]) -> TTest:
    """scipy's ttest_rel. Fewer than two pairs: NaN. Identical differences (no variance): scipy's limits,
    t = ±inf and p = 0 for a non-zero difference, NaN for none."""
    if len(baseline) != len(candidate):
        raise ValueError(f"paired t-test: {len(baseline)} baseline values but {len(candidate)} candidate values")
    n = len(baseline)
    diff = float(np.mean(np.asarray(candidate, float) - np.asarray(baseline, float))) if n else math.nan
    if n < 2:
        return TTest(n, diff, math.nan, math.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # zero variance: division by zero inside scipy
        result = scipy_stats.ttest_rel(candidate, baseline)
    return TTest(n, diff, float(result.statistic), float(result.pvalue))


def mean_metrics(per_seed: Iterable[Metrics]) -> Metrics:
    """Each dev split's metrics averaged over seeds."""
    per_seed = list(per_seed)
    return {ds: {m: float(np.mean([s[ds][m] for s in per_seed])) for m in per_seed[0][ds]} for ds in per_seed[0]}


def summarize(results: Iterable[RunResult]) -> list[ConfigSummary]:
    """One summary per configuration (task, optimizer, lr, β3), in the order the runs came."""
    groups: dict[tuple, list[RunResult]] = {}
    for result in results:
        groups.setdefault(result.run.config_key, []).append(result)
    out = []
    for (task, optimizer, lr, beta3), runs in groups.items():
        out.append(ConfigSummary(
            task, optimizer, lr, beta3, best=mean_std(r.best_score for r in runs),
            last=mean_std(r.last_score for r in runs), best_by_seed={r.run.seed: r.best_score for r in runs},
            metrics_by_seed={r.run.seed: r.best_metrics for r in runs},
            mean_metrics=mean_metrics(r.best_metrics for r in runs),
            mean_best_epoch=float(np.mean([r.best_epoch for r in runs])),
            last_by_seed={r.run.seed: r.last_score for r in runs},
            last_metrics_by_seed={r.run.seed: r.last_metrics for r in runs}))
    return out


def best_configs(summaries: Iterable[ConfigSummary]) -> dict[tuple[str, str], ConfigSummary]:
    """Each (task, optimizer)'s configuration with the highest mean best-epoch dev score (first on ties)."""
    best: dict[tuple[str, str], ConfigSummary] = {}
    for s in summaries:
        key = (s.task, s.optimizer)
        rank = -math.inf if math.isnan(s.best.mean) else s.best.mean
        if key not in best or rank > (-math.inf if math.isnan(best[key].best.mean) else best[key].best.mean):
            best[key] = s
    return best


def seed_averages(best: dict[tuple[str, str], ConfigSummary], tasks: Sequence[str], optimizer: str,
                  seeds: Sequence[int], epoch: str = "best") -> list[float]:
    """Per seed, the GLUE-style average over tasks of the optimizer's best configurations (paper A.1.3), from
    each run's best epoch or from its last one."""
    return [glue_average({ds: m for t in tasks for ds, m in best[(t, optimizer)].metrics(epoch)[s].items()})
            for s in seeds]


def compare(best: dict[tuple[str, str], ConfigSummary], tasks: Sequence[str], baseline: str,
            candidate: str, epoch: str = "best") -> dict[str, TTest]:
    """Paired t-tests of candidate vs baseline (best configurations), per task and on the average over tasks,
    of the best-epoch (default) or last-epoch dev scores.

    Pairs are the seeds both sides finished; the average uses the seeds finished on every task.
    """
    tests: dict[str, TTest] = {}
    common_all = None
    for task in tasks:
        a, b = best.get((task, baseline)), best.get((task, candidate))
        if a is None or b is None:
            continue
        sa, sb = a.by_seed(epoch), b.by_seed(epoch)
        seeds = sorted(set(sa) & set(sb))
        tests[task] = paired_ttest([sa[s] for s in seeds], [sb[s] for s in seeds])
        common_all = set(seeds) if common_all is None else common_all & set(seeds)
    if len(tests) == len(tasks) and len(tasks) > 1 and common_all:
        seeds = sorted(common_all)
        tests["average"] = paired_ttest(seed_averages(best, tasks, baseline, seeds, epoch),
                                        seed_averages(best, tasks, candidate, seeds, epoch))
    return tests
