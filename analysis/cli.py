"""``python -m analysis <command>``: each command computes one analysis, writes its PNG and a JSON of the numbers.

Commands: sensitivity (Fig. 2), prune (Fig. 3), trajectory (Fig. 4 and 6, from the ``sensitivity.jsonl`` that
``train.py --log_sensitivity_every N`` writes), spiral (Fig. 5).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

OPTIMIZER_LABELS = {"usadamax": "Adamax-SAGE", "adamax": "Adamax", "usadamw": "AdamW-SAGE", "adamw": "AdamW",
                    "usadam": "Adam-SAGE", "adam": "Adam", "ussgd": "SGD-SAGE", "sgd": "SGD"}


# ---------------------------------------------------------------------------------------------------- parser
def _fractions(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text}'") from None
    if not values or any(not 0.0 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"fractions must be in [0, 1], got '{text}'")
    return values


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", action="append", required=True, type=Path,
                   help="a run folder (its best/ is used) or a checkpoint folder; repeat to compare runs")
    p.add_argument("--label", action="append", default=None,
                   help="legend label per --run (default: optimizer); prune: runs sharing a label are averaged")
    p.add_argument("--task", default=None, help="task to measure (default: the run's first training task)")
    p.add_argument("--data_dir", default=None, help="shard folder (default: the run's --data_dir)")
    p.add_argument("--sens_split", default="train", help="split the sensitivity is measured on")
    p.add_argument("--sens_max_examples", type=int, default=0, help="use only the first N examples (0: all)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--cache_dir", type=Path, default=None,
                   help="reuse/save measured sensitivities here (keyed by run, task, split, N, batch size)")
    p.add_argument("--num_threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--title", default=None)


def build_parser() -> argparse.ArgumentParser:
    from analysis.spiral import SpiralConfig
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sensitivity", help="Fig. 2: distribution of per-parameter sensitivity")
    _add_run_args(p)
    p.add_argument("--per_layer", type=int, default=5000, help="weights sampled per encoder layer for the plot")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="PNG to write (numbers go to the same name .json)")

    p = sub.add_parser("prune", help="Fig. 3: dev score vs fraction of weights kept after one-shot pruning")
    _add_run_args(p)
    p.add_argument("--split", default="dev", help="split the pruned model is scored on")
    p.add_argument("--fractions", type=_fractions, default=_fractions("0,0.05,0.1,0.15,0.2,0.25,0.3,0.35,0.4"),
                   help="fractions of eligible weights to prune, comma-separated")
    p.add_argument("--out", type=Path, required=True)

    p = sub.add_parser("trajectory", help="Fig. 4 and 6: U and per-block sensitivity over training steps")
    p.add_argument("--log", action="append", required=True, type=Path, help="a tracker JSONL log; repeat")
    p.add_argument("--label", action="append", default=None)
    p.add_argument("--out_u", type=Path, required=True, help="PNG for U over steps (Fig. 4)")
    p.add_argument("--out_blocks", type=Path, required=True, help="PNG for per-block mean/variance (Fig. 6)")
    p.add_argument("--title", default=None)
    p.add_argument("--num_threads", type=int, default=0, help="torch CPU threads (0: torch's default)")

    p = sub.add_parser("spiral", help="Fig. 5: two-spiral decision boundaries, Adam vs Adam-SAGE")
    for f in dataclasses.fields(SpiralConfig):
        p.add_argument(f"--{f.name}", type=type(f.default), default=f.default)
    p.add_argument("--optimizers", default="adam,usadam", help="optimizer registry names, comma-separated")
    p.add_argument("--num_threads", type=int, default=1, help="torch CPU threads (tiny model: 1 is fastest)")
    p.add_argument("--out", type=Path, required=True)
    return parser


# ---------------------------------------------------------------------------------------------------- helpers
def _labels(given: Optional[list[str]], n: int, default) -> list[str]:
    if given is None:
        return [default(i) for i in range(n)]
    if len(given) != n:
        raise ValueError(f"--label: given {len(given)} labels for {n} runs/logs; give one per run or none")
    return given


def _write_json(path: Path, payload: dict) -> None:
    from data_utils.atomic import atomic_write
    with atomic_write(path) as handle:
        json.dump(payload, handle, indent=2)
        handle.write("\n")


def _set_threads(n: int) -> None:
    import torch
    if n:
        torch.set_num_threads(n)


def _measure(run, args, task) -> dict:
    """The run's sensitivity on --sens_split, from --cache_dir when it was measured before with these settings."""
    from safetensors.torch import load_file, save
    from data_utils.atomic import atomic_write
    from analysis.runs import batch_loss, labelled_batches
    from analysis.sensitivity import accumulate_sensitivity, select_params
    params = select_params(run.model)
    cache = None
    if args.cache_dir:
        key = f"{run.folder.resolve()}|{task.name}|{args.sens_split}|{args.sens_max_examples}|{args.batch_size}"
        cache = args.cache_dir / f"sens-{hashlib.sha1(key.encode()).hexdigest()[:16]}.safetensors"
        if cache.is_file():
            saved = load_file(str(cache))
            if set(saved) == set(params):
                return {n: saved[n] for n in params}
    data = run.split(task, args.sens_split, args.sens_max_examples, args.data_dir)
    sens = accumulate_sensitivity(run.model, batch_loss(run.model, task.name),
                                  labelled_batches(data, args.batch_size, run.pad_id), params)
    if cache is not None:
        with atomic_write(cache, "wb") as handle:
            handle.write(save({n: t.contiguous() for n, t in sens.items()}))
    return sens


def _loaded_runs(args):
    from analysis.runs import load_run
    runs = [load_run(path) for path in args.run]
    labels = _labels(args.label, len(runs),
                     lambda i: OPTIMIZER_LABELS.get(runs[i].cfg.optimizer.lower(), runs[i].cfg.optimizer))
    return runs, labels


# ---------------------------------------------------------------------------------------------------- commands
def cmd_sensitivity(args) -> dict:
    import numpy as np
    from analysis.plots import save_figure, sensitivity_figure
    from analysis.sensitivity import Summary, sample_per_layer
    runs, labels = _loaded_runs(args)
    samples, summaries = {}, {}
    for run, label in zip(runs, labels):
        task = run.task(args.task)
        sens = _measure(run, args, task)
        samples[label] = sample_per_layer(sens, args.per_layer, args.seed)
        summaries[label] = dataclasses.asdict(Summary.of(sens))
    task_name = runs[0].task(args.task).name
    title = args.title or (f"Sensitivity of the fine-tuned encoder weights ({task_name} {args.sens_split} set, "
                           f"{', '.join(labels)})")
    save_figure(sensitivity_figure(samples, title), args.out)
    payload = {"figure": str(args.out), "task": task_name, "split": args.sens_split, "summary": summaries,
               "per_layer_median": {lab: {str(k): float(np.median(v)) for k, v in s.items()}
                                    for lab, s in samples.items()}}
    _write_json(args.out.with_suffix(".json"), payload)
    return payload


def cmd_prune(args) -> dict:
    """Runs that share a label are seeds of one curve: their mean is drawn, with a ±1 std band."""
    import numpy as np
    from analysis.plots import pruning_figure, save_figure
    from analysis.pruning import pruning_curve
    from analysis.runs import dev_score
    from analysis.sensitivity import select_params
    runs, labels = _loaded_runs(args)
    per_run: dict[str, list[list[tuple[float, float]]]] = {}
    folders: dict[str, list[str]] = {}
    metric_names = None
    for run, label in zip(runs, labels):
        task = run.task(args.task)
        sens = _measure(run, args, task)
        data = run.split(task, args.split, 0, args.data_dir)
        metric_names = task.metric_meta[0] if len(task.metric_meta) == 1 else f"mean of {', '.join(task.metric_meta)}"
        per_run.setdefault(label, []).append(pruning_curve(select_params(run.model), sens, args.fractions,
                                                           lambda: dev_score(run.model, data, run.pad_id, 64)[0]))
        folders.setdefault(label, []).append(str(run.folder))
    curves, bands = {}, {}
    for label, group in per_run.items():
        scores = np.array([[s for _, s in curve] for curve in group])
        curves[label] = list(zip(args.fractions, scores.mean(axis=0).tolist()))
        if len(group) > 1:
            bands[label] = (scores.std(axis=0, ddof=1).tolist(), len(group))
    task_name = runs[0].task(args.task).name
    title = args.title or f"One-shot pruning of the lowest-sensitivity weights ({task_name}, no retraining)"
    save_figure(pruning_figure(curves, metric_names, title, bands), args.out)
    payload = {"figure": str(args.out), "task": task_name, "split": args.split, "metric": metric_names,
               "runs": folders,
               "curves": {lab: [{"pruned": f, "kept": round(1 - f, 6), "score": s}
                                | ({"std": bands[lab][0][i], "scores": [c[i][1] for c in per_run[lab]]}
                                   if lab in bands else {})
                                for i, (f, s) in enumerate(c)]
                          for lab, c in curves.items()}}
    _write_json(args.out.with_suffix(".json"), payload)
    return payload


def cmd_trajectory(args) -> dict:
    from analysis.plots import save_figure, structured_sensitivity_figure, temporal_variation_figure
    from mt_dnn.sensitivity_log import read_log
    logs = [read_log(path) for path in args.log]
    labels = _labels(args.label, len(logs), lambda i: logs[i].path.parent.name or str(logs[i].path))
    named = dict(zip(labels, logs))
    if len(named) != len(logs):
        raise ValueError("--label: labels must be distinct")
    suffix = f" — {args.title}" if args.title else ""
    save_figure(temporal_variation_figure(named, f"Local temporal variation of sensitivity{suffix}"), args.out_u)
    save_figure(structured_sensitivity_figure(named, f"Structured sensitivity per block{suffix}"),
                args.out_blocks)
    summary = {lab: {"steps": [int(log.steps[0]), int(log.steps[-1])],
                     "u_mean_first": float(log.weighted("u_mean")[0]),
                     "u_mean_last": float(log.weighted("u_mean")[-1]),
                     "ipt_mean_last": float(log.weighted("ipt_mean")[-1])} for lab, log in named.items()}
    payload = {"figures": [str(args.out_u), str(args.out_blocks)], "summary": summary}
    _write_json(args.out_u.with_suffix(".json"), payload)
    return payload


def cmd_spiral(args) -> dict:
    import torch
    from analysis import spiral
    from analysis.plots import save_figure, spiral_figure
    from module.bert_optim import OPTIMIZERS
    fields = [f.name for f in dataclasses.fields(spiral.SpiralConfig)]
    cfg = spiral.SpiralConfig(**{k: getattr(args, k) for k in fields}).validate()
    names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
    unknown = [n for n in names if n not in OPTIMIZERS]
    if unknown or not names:
        raise ValueError(f"--optimizers: unknown {', '.join(unknown)}; known: {', '.join(OPTIMIZERS)}")
    x, y = spiral.two_spirals(cfg.points_per_class, cfg.turns, cfg.noise, cfg.seed)
    xh, yh = spiral.two_spirals(1000, cfg.turns, cfg.noise, cfg.seed + 1)  # held-out points, same distribution
    tx, ty, txh, tyh = map(torch.from_numpy, (x, y, xh, yh))
    panels, results = [], {}
    for name in names:
        model, losses = spiral.train(cfg, name, tx, ty)
        label = OPTIMIZER_LABELS.get(name, name)
        acc, held = spiral.accuracy(model, tx, ty), spiral.accuracy(model, txh, tyh)
        results[label] = {"train_acc": acc, "heldout_acc": held, "final_loss": losses[-1]}
        panels.append((label, spiral.probability_grid(model), f"train acc {acc:.1f}%, held-out acc {held:.1f}%\n"
                                                               f"final training loss {losses[-1]:.3g} (nats)"))
    title = (f"Two spirals, {cfg.depth}×{cfg.hidden} ReLU MLP, {cfg.steps} full-batch steps, lr {cfg.lr:g}, "
             f"{2 * cfg.points_per_class} training points")
    save_figure(spiral_figure(x, y, panels, title), args.out)
    payload = {"figure": str(args.out), "config": dataclasses.asdict(cfg), "results": results}
    _write_json(args.out.with_suffix(".json"), payload)
    return payload


COMMANDS = {"sensitivity": cmd_sensitivity, "prune": cmd_prune, "trajectory": cmd_trajectory,
            "spiral": cmd_spiral}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    _set_threads(getattr(args, "num_threads", 0))
    try:
        payload = COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"python -m analysis {args.command}: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
