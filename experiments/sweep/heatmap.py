"""Dev score over learning rate × β3 as an annotated heatmap (the paper's Fig. 7/8).

Each cell is the mean over seeds of one configuration's dev score; a grid cell with no finished run stays grey
and says so, so a partly finished sweep still gives an honest picture.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from data_utils.atomic import atomic_write
from experiments.sweep.report import PAPER_NAMES, metric_title
from experiments.sweep.results import collect
from experiments.sweep.spec import SweepSpec, fmt
from experiments.sweep.stats import ConfigSummary, summarize


def score_grid(summaries: Sequence[ConfigSummary], task: str, optimizer: str, score: str = "best"):
    """(learning rates, β3 values, mean scores [lr × β3], seeds per cell) of one task and optimizer."""
    rows = [s for s in summaries if s.task == task and s.optimizer == optimizer]
    if not rows:
        raise ValueError(f"heatmap: no finished runs of task '{task}' with optimizer '{optimizer}'")
    lrs = sorted({s.learning_rate for s in rows})
    betas = sorted({s.beta3 for s in rows})
    values = np.full((len(lrs), len(betas)), np.nan)
    counts = np.zeros((len(lrs), len(betas)), dtype=int)
    for s in rows:
        i, j = lrs.index(s.learning_rate), betas.index(s.beta3)
        stat = s.best if score == "best" else s.last
        values[i, j], counts[i, j] = stat.mean, stat.n
    return lrs, betas, values, counts


def plot_heatmap(lrs, betas, values, counts, title: str, out: Path, score: str = "best") -> Path:
    """Write the PNG atomically: rows are learning rates (largest on top), columns β3, cells annotated."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 + 1.25 * len(betas), 1.4 + 0.8 * len(lrs)), dpi=120)
    shown = values[::-1]  # largest learning rate on top, as in the paper
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#d0d0d0")
    finite = values[np.isfinite(values)]
    image = ax.imshow(np.ma.masked_invalid(shown), cmap=cmap, aspect="auto",
                      vmin=finite.min() if finite.size else 0, vmax=finite.max() if finite.size else 1)
    ax.set_xticks(range(len(betas)), [fmt(b) for b in betas])
    ax.set_yticks(range(len(lrs)), [f"{lr:.0e}" for lr in lrs[::-1]])
    ax.set_xlabel("β3 (sensitivity EMA coefficient)")
    ax.set_ylabel("learning rate")
    ax.set_title(title, fontsize=10)
    mid = (finite.min() + finite.max()) / 2 if finite.size else 0
    for i, row in enumerate(shown):
        for j, value in enumerate(row):
            n = counts[::-1][i, j]
            text = "no run" if math.isnan(value) else f"{value:.1f}" + (f"\n(n={n})" if n > 1 else "")
            dark = math.isnan(value) or value > mid
            ax.text(j, i, text, ha="center", va="center", fontsize=9, color="black" if dark else "white")
    bar = fig.colorbar(image, ax=ax)
    bar.set_label(f"{'best' if score == 'best' else 'last'}-epoch dev score (%)")
    fig.tight_layout()
    with atomic_write(out, mode="wb") as handle:
        fig.savefig(handle, format="png")
    plt.close(fig)
    return out


def heatmap_for_spec(spec: SweepSpec, task: str, optimizer: str, out: Path, score: str = "best") -> Path:
    if task not in spec.tasks:
        raise ValueError(f"heatmap: task '{task}' is not in {spec.source} (tasks: {', '.join(spec.tasks)})")
    if optimizer not in spec.optimizer_names():
        raise ValueError(f"heatmap: optimizer '{optimizer}' is not in {spec.source} "
                         f"(optimizers: {', '.join(spec.optimizer_names())})")
    summaries = summarize(collect(spec))
    lrs, betas, values, counts = score_grid(summaries, task, optimizer, score)
    low, high = counts[counts > 0].min(), counts.max()
    seeds = f"{high} seed{'s' if high > 1 else ''}" if low == high else f"{low}-{high} seeds"
    metrics = metric_title(next(s for s in summaries if s.task == task))
    title = (f"{spec.name}: {PAPER_NAMES.get(task, task)} dev, {optimizer}\n"
             f"score = mean of {metrics}; {seeds} per cell, {score} epoch")
    return plot_heatmap(lrs, betas, values, counts, title, out, score)
