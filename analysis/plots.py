"""The figures, drawn with matplotlib's object API (no pyplot global state) and written atomically as PNG.

Every function takes already-computed numbers, so the figures can be redrawn without recomputing them.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
from matplotlib.figure import Figure

from mt_dnn.blocks import ATTENTION, FFN
from mt_dnn.sensitivity_log import TrackerLog
from data_utils.atomic import atomic_write

DPI = 110
RUN_COLORS = ("tab:red", "tab:blue", "tab:green", "tab:purple")
RUN_STYLES = ("-", "--", ":", "-.")
SENSITIVITY_UNIT = "|θ·∂L/∂θ| (nats)"


def save_figure(fig: Figure, path: Path, dpi: int = DPI) -> Path:
    """PNG at ``path`` via a temp file in the same folder, so a failed draw leaves no partial image.

    The image is stored with a 256-colour palette: line plots look the same and the files are ~3x smaller
    (they are committed under docs/figures).
    """
    from PIL import Image
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    buffer.seek(0)
    image = Image.open(buffer).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    with atomic_write(path, "wb") as handle:
        image.save(handle, format="PNG", optimize=True)
    return path


# ------------------------------------------------------------------------------------------------ Fig. 2
def sensitivity_figure(samples: Mapping[str, Mapping[int, np.ndarray]], title: str) -> Figure:
    """Left: per-layer violins of log10 sensitivity, runs side by side; right: pooled histograms."""
    fig = Figure(figsize=(11, 4.4), layout="constrained")
    ax_v, ax_h = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2.2, 1]})
    labels = list(samples)
    width = 0.8 / len(labels)
    floor = _log_floor(samples)
    logs = {label: [np.log10(np.maximum(samples[label][k], 10.0 ** floor)) for k in sorted(samples[label])]
            for label in labels}
    bins = np.linspace(min(np.concatenate(d).min() for d in logs.values()),
                       max(np.concatenate(d).max() for d in logs.values()), 61)
    for r, label in enumerate(labels):
        layers = sorted(samples[label])
        data = logs[label]
        pos = np.arange(len(layers)) + (r - (len(labels) - 1) / 2) * width
        parts = ax_v.violinplot(data, positions=pos, widths=width * 0.95, showmedians=True, showextrema=False)
        for body in parts["bodies"]:
            body.set_facecolor(RUN_COLORS[r])
            body.set_alpha(0.55)
        parts["cmedians"].set_color(RUN_COLORS[r])
        pooled = np.concatenate(data)
        ax_h.hist(pooled, bins=bins, histtype="stepfilled", alpha=0.45, color=RUN_COLORS[r],
                  label=f"{label} (median {10 ** np.median(pooled):.2g})")
        ax_v.plot([], [], color=RUN_COLORS[r], linewidth=6, alpha=0.55, label=label)
    ax_v.set_xticks(range(len(layers)), [f"{k}" for k in layers])
    ax_v.set_xlabel("encoder layer")
    ax_v.set_ylabel(f"log10 sensitivity {SENSITIVITY_UNIT}")
    ax_v.set_title("per layer (equal-size random sample of each layer's weights)")
    ax_v.legend(loc="lower right")
    ax_h.set_xlabel(f"log10 sensitivity {SENSITIVITY_UNIT}")
    ax_h.set_ylabel("number of sampled weights")
    ax_h.set_title("all layers pooled")
    ax_h.legend(loc="upper left", fontsize="small")
    zeros = any((v == 0).any() for s in samples.values() for v in s.values())
    note = f"; exact zeros drawn at {floor:.0f}" if zeros else ""
    fig.suptitle(f"{title}\nI = |θ·∂L/∂θ| per weight, averaged over the batches{note}")
    return fig


def _log_floor(samples: Mapping[str, Mapping[int, np.ndarray]]) -> float:
    """A log10 floor below the smallest positive value, so exact zeros stay visible instead of becoming -inf."""
    positive = [v[v > 0].min() for s in samples.values() for v in s.values() if (v > 0).any()]
    return float(np.floor(np.log10(min(positive)))) - 1.0 if positive else -12.0


# ------------------------------------------------------------------------------------------------ Fig. 3
def pruning_figure(curves: Mapping[str, Sequence[tuple[float, float]]], metric: str, title: str,
                   bands: Optional[Mapping[str, tuple[Sequence[float], int]]] = None) -> Figure:
    """One line per label; a label in ``bands`` (std per point, number of runs) is a mean with a ±1 std band."""
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.subplots()
    bands = bands or {}
    for r, (label, curve) in enumerate(curves.items()):
        kept = [100.0 * (1.0 - f) for f, _ in curve]
        mean = [s for _, s in curve]
        text = label
        if label in bands:
            std, n = bands[label]
            ax.fill_between(kept, [m - d for m, d in zip(mean, std)], [m + d for m, d in zip(mean, std)],
                            color=RUN_COLORS[r], alpha=0.15, linewidth=0)
            text = f"{label} (mean of {n} runs ± 1 std)"
        ax.plot(kept, mean, marker="o", color=RUN_COLORS[r], linestyle=RUN_STYLES[r], label=text)
    ax.invert_xaxis()
    ax.set_xlabel("weights kept (% of eligible encoder weights; embeddings never pruned)")
    ax.set_ylabel(f"dev {metric} (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


# ------------------------------------------------------------------------------------------------ Fig. 4 / 6
def temporal_variation_figure(logs: Mapping[str, TrackerLog], title: str) -> Figure:
    """Top: element-weighted mean U over the attention / FFN blocks of all layers, per run, against the step.
    Bottom: the same U divided by the mean sensitivity, since U grows with I itself."""
    fig = Figure(figsize=(10, 6.8), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True, sharey="row")
    for col, kind in enumerate((ATTENTION, FFN)):
        for r, (label, log) in enumerate(logs.items()):
            u = log.weighted("u_mean", kind)
            style = dict(color=RUN_COLORS[r], linestyle=RUN_STYLES[r], label=label)
            axes[0, col].plot(log.steps, u, **style)
            axes[1, col].plot(log.steps, u / log.weighted("ipt_mean", kind), **style)
        axes[0, col].set_yscale("log")
        axes[0, col].set_title(f"{kind} blocks (all layers)")
        axes[1, col].set_xlabel("optimizer step")
        for ax in axes[:, col]:
            ax.grid(alpha=0.3, which="both")
    axes[0, 0].set_ylabel(f"mean U {SENSITIVITY_UNIT}")
    axes[1, 0].set_ylabel("mean U / mean I (dimensionless)")
    axes[0, 0].legend()
    fig.suptitle(f"{title}\nU = |I − Ī|, I = |θ·∂L/∂θ| of the step's batch, Ī its moving average")
    return fig


def structured_sensitivity_figure(logs: Mapping[str, TrackerLog], title: str) -> Figure:
    """Rows: mean and variance of I per block; columns: attention, FFN; colour = layer, line style = run."""
    import matplotlib
    fig = Figure(figsize=(12, 7.5), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True)
    first = next(iter(logs.values()))
    cmap = matplotlib.colormaps["viridis"]
    n_layers = max(len(first.layers), 2)
    for row, (stat, what) in enumerate((("ipt_mean", "mean"), ("ipt_var", "variance"))):
        for col, kind in enumerate((ATTENTION, FFN)):
            ax = axes[row, col]
            for r, (label, log) in enumerate(logs.items()):
                for key in log.blocks_of(kind):
                    layer = int(key.split(".")[0][5:])
                    ax.plot(log.steps, log.stats[key][stat], color=cmap(layer / (n_layers - 1)),
                            linestyle=RUN_STYLES[r], linewidth=1.2)
            ax.set_yscale("log")
            ax.grid(alpha=0.3, which="both")
            ax.set_title(f"{kind} blocks: {what} of sensitivity over the block")
            ax.set_ylabel(f"{what} of I {'(nats)' if stat == 'ipt_mean' else '(nats²)'}")
            if row == 1:
                ax.set_xlabel("optimizer step")
    handles = [axes[0, 0].plot([], [], color="black", linestyle=RUN_STYLES[r], label=label)[0]
               for r, label in enumerate(logs)]
    handles += [axes[0, 0].plot([], [], color=cmap(k / (n_layers - 1)), linewidth=3, label=f"layer {k}")[0]
                for k in first.layers]
    fig.legend(handles=handles, loc="outside right center")
    fig.suptitle(title)
    return fig


# ------------------------------------------------------------------------------------------------ Fig. 5
def spiral_figure(x: np.ndarray, y: np.ndarray, panels: Sequence[tuple[str, tuple, str]], title: str) -> Figure:
    """One panel per optimizer: P(class 1) over the plane, the 0.5 contour, and the training points.

    ``panels``: (label, (grid_x, grid_y, prob), subtitle with the accuracies).
    """
    fig = Figure(figsize=(4.8 * len(panels) + 1.2, 5.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
    mesh = None
    for ax, (label, (gx, gy, prob), note) in zip(axes, panels):
        mesh = ax.contourf(gx, gy, prob, levels=np.linspace(0, 1, 21), cmap="RdBu_r", alpha=0.75)
        ax.contour(gx, gy, prob, levels=[0.5], colors="black", linewidths=1.5)
        for cls, marker, color in ((0, "o", "tab:blue"), (1, "^", "tab:red")):
            pts = x[y == cls]
            ax.scatter(pts[:, 0], pts[:, 1], s=9, marker=marker, c=color, edgecolors="white", linewidths=0.3,
                       label=f"class {cls} (train)")
        ax.set_title(f"{label}\n{note}", fontsize="medium")
        ax.set_xlabel("x₁ (normalised units)")
        ax.set_aspect("equal")
    axes[0].set_ylabel("x₂ (normalised units)")
    axes[0].legend(loc="lower left", fontsize="small")
    fig.colorbar(mesh, ax=list(axes), shrink=0.85, label="P(class 1); black line: decision boundary (0.5)")
    fig.suptitle(title, fontweight="bold")
    fig.get_layout_engine().set(h_pad=0.12)  # room between the title and the three-line panel titles
    return fig
