#!/usr/bin/env python
"""Grid sweeps of train.py with seeds, and the statistics that SAGE's claims rest on.

    python sweep.py run SPEC.yml [--parallel N] [--threads_per_run N] [--tasks T,..] [--skip_recorded]  # run, report
    python sweep.py run SPEC.yml [--gpus 0,1,2,3] [--gpus_per_run N]     # on GPUs: each run at a time its own
    python sweep.py status SPEC.yml [--tasks T,..]                       # what is done, resumable, still to run
    python sweep.py report SPEC.yml [--results_dir DIR]                  # tables (markdown, CSV, JSON)
    python sweep.py heatmap SPEC.yml --task T --optimizer O [--out F.png] [--score best|last]

The spec format is described in experiments/sweep/README.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path


def _spec(args):
    from experiments.sweep.spec import load_spec
    spec = load_spec(args.spec)
    overrides = {k: getattr(args, k) for k in ("parallel", "threads_per_run", "gpus_per_run", "results_dir")
                 if getattr(args, k, None) is not None}
    if "results_dir" in overrides:
        overrides["results_dir"] = Path(overrides["results_dir"])
    for key, low in (("parallel", 1), ("threads_per_run", 0), ("gpus_per_run", 1)):
        if key in overrides and overrides[key] < low:
            raise ValueError(f"--{key}: must be >= {low}, got {overrides[key]}")
    return dataclasses.replace(spec, **overrides)


def cmd_run(args) -> int:
    from data_utils.resources import check_parallelism
    from data_utils.safe_paths import check_output_root
    from experiments.sweep.runner import run_sweep
    spec = _spec(args)
    for key, what in (("parallel", "runs"), ("threads_per_run", "threads")):
        check_parallelism(f"--{key}" if getattr(args, key, None) is not None else f"{spec.source}: {key}",
                          getattr(spec, key), what)
    check_output_root(spec.runs_dir, f"{spec.source}: runs_dir")
    check_output_root(spec.results_dir, f"{spec.source}: results_dir")
    tasks = spec.task_subset(args.tasks)
    groups = _gpu_groups(args, spec)
    only = f" (tasks {', '.join(tasks)} of {len(spec.runs())})" if tasks else ""
    on = f" on GPUs {' | '.join(','.join(g) for g in groups)}" if any(groups) else " on the CPU" if groups else ""
    print(f"sweep {spec.name}: {len(spec.runs(tasks))} runs{only}, {spec.parallel} at a time{on}, under "
          f"{spec.runs_dir}", flush=True)
    outcomes = run_sweep(spec, report=lambda line: print(line, flush=True), tasks=tasks,
                         recorded=_recorded(spec) if args.skip_recorded else (), gpu_groups=groups)
    failed = [o for o in outcomes if o.status == "failed"]
    code = cmd_report(args, spec) if len(failed) < len(outcomes) else 0
    if failed:
        print(f"sweep.py: error: {len(failed)} run(s) failed: "
              + ", ".join(f"{o.run.run_id} ({o.run_dir}/sweep.log)" for o in failed), file=sys.stderr)
        return 1
    return code


def _gpu_groups(args, spec) -> list[list[str]]:
    """Each run at a time's own GPUs, from --gpus or what this machine shows; [] on a machine without GPUs."""
    from experiments.sweep.devices import describe_visible, gpu_groups, parse_gpus, visible_gpus
    source = lambda key: f"--{key}" if getattr(args, key, None) is not None else f"{spec.source}: {key}"
    if args.gpus is not None and args.gpus.strip() == "cpu":  # GPUs hidden from every run
        if spec.gpus_per_run > 1:
            raise ValueError(f"{source('gpus_per_run')}: {spec.gpus_per_run} GPUs per run, but --gpus cpu hides them")
        return [[] for _ in range(spec.parallel)]
    visible = visible_gpus()
    gpus = parse_gpus(args.gpus, visible) if args.gpus is not None else visible
    given = f"--gpus {args.gpus}" if args.gpus is not None else describe_visible(visible)
    return gpu_groups(gpus, spec.gpus_per_run, spec.parallel, source("parallel"), source("gpus_per_run"), given)


def _recorded(spec) -> set[str]:
    """Runs whose results the committed runs CSV holds (the report reads them back when their folders are gone)."""
    from experiments.sweep.results import ledger_path, read_ledger
    recorded = set(read_ledger(spec))
    if recorded:
        print(f"{len(recorded)} finished runs are recorded in {ledger_path(spec)}; `run --skip_recorded` does not "
              "train one whose folder is gone again", flush=True)
    return recorded


def cmd_status(args) -> int:
    from experiments.sweep.runner import run_dir, state
    spec = _spec(args)
    recorded = _recorded(spec)
    counts: dict[str, int] = {}
    for run in spec.runs(spec.task_subset(args.tasks)):
        current = state(spec, run, recorded)
        counts[current] = counts.get(current, 0) + 1
        print(f"{current:8s} {run.run_id}  {run_dir(spec, run)}")
    print(", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return 0


def cmd_report(args, spec=None) -> int:
    from experiments.sweep.report import write_report
    spec = spec or _spec(args)
    summary = write_report(spec)
    print(summary.markdown)
    print(f"written: {', '.join(str(p) for p in summary.paths)}")
    return 0


def cmd_heatmap(args) -> int:
    from experiments.sweep.heatmap import heatmap_for_spec
    spec = _spec(args)
    out = Path(args.out) if args.out else spec.results_dir / f"{spec.name}_{args.task}_{args.optimizer}_heatmap.png"
    heatmap_for_spec(spec, args.task, args.optimizer.lower(), out, args.score)
    print(f"written: {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sweep.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the grid (finished runs are skipped, killed ones resumed), then report")
    run.add_argument("--parallel", type=int, help="runs at a time (overrides the spec)")
    run.add_argument("--threads_per_run", type=int, help="torch CPU threads per run (overrides the spec)")
    run.add_argument("--gpus", help="comma-separated GPU ids the runs share out, each run at a time its own "
                                    "(default: CUDA_VISIBLE_DEVICES, else every GPU torch sees; "
                                    "cpu: hide them from the runs)")
    run.add_argument("--gpus_per_run", type=int,
                     help="GPUs of each run (overrides the spec; more than 1: train.py under torchrun)")
    run.add_argument("--results_dir", help="where the report goes (overrides the spec)")
    run.add_argument("--skip_recorded", action="store_true",
                     help="do not train again a run whose folder is gone but whose results the committed "
                          "<name>_runs.csv holds (to continue a sweep on a fresh clone)")
    run.set_defaults(func=cmd_run)
    status = sub.add_parser("status", help="list every run and its state")
    status.set_defaults(func=cmd_status)
    for command in (run, status):
        command.add_argument("--tasks", help="comma-separated: only these tasks' runs (the report still covers "
                                             "every finished run of the spec)")
    report = sub.add_parser("report", help="tables from the finished runs: markdown, CSV, JSON")
    report.add_argument("--results_dir", help="where the report goes (overrides the spec)")
    report.set_defaults(func=cmd_report)
    heat = sub.add_parser("heatmap", help="dev score over learning rate x beta3 as a PNG")
    heat.add_argument("--task", required=True)
    heat.add_argument("--optimizer", required=True)
    heat.add_argument("--score", choices=("best", "last"), default="best",
                      help="best-epoch or last-epoch dev score, averaged over seeds")
    heat.add_argument("--out", help="PNG path (default: results_dir/<name>_<task>_<optimizer>_heatmap.png)")
    heat.add_argument("--results_dir", help=argparse.SUPPRESS)
    heat.set_defaults(func=cmd_heatmap)
    for command in (run, status, report, heat):
        command.add_argument("spec", help="sweep spec YAML")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from experiments.sweep.runner import SweepError
    try:
        return args.func(args)
    except (ValueError, SweepError, FileNotFoundError) as exc:
        print(f"sweep.py: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
