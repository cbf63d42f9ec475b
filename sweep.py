#!/usr/bin/env python
"""Grid sweeps of train.py with seeds, and the statistics that SAGE's claims rest on.

    python sweep.py run SPEC.yml [--parallel N] [--threads_per_run N] [--tasks T,..] [--skip_recorded]  # run, report
    python sweep.py run SPEC.yml [--gpus 0,1,2,3] [--gpus_per_run N]     # on GPUs: each run at a time its own
    python sweep.py run SPEC.yml --executor slurm [--partition P] [--time_min M] [--max_concurrent N]  # a job array
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
    if args.executor != "local":
        return _cmd_submit(args, spec, tasks)
    stray = next((k for k in CLUSTER_FLAGS if getattr(args, k) is not None), None)
    if stray:
        raise ValueError(f"--{stray}: a setting of the jobs of --executor slurm or submitit-local, "
                         "not of the local pool")
    groups = _gpu_groups(args, spec)
    only = f" (tasks {', '.join(tasks)} of {len(spec.runs())})" if tasks else ""
    on = f" on GPUs {' | '.join(','.join(g) for g in groups)}" if any(groups) else " on the CPU" if groups else ""
    print(f"sweep {spec.name}: {len(spec.runs(tasks))} runs{only}, {spec.parallel} at a time{on}, under "
          f"{spec.runs_dir}", flush=True)
    outcomes = run_sweep(spec, report=lambda line: print(line, flush=True), tasks=tasks,
                         recorded=_recorded(spec) if args.skip_recorded else (), gpu_groups=groups)
    return _finish(args, spec, outcomes)


CLUSTER_FLAGS = ("partition", "time_min", "cpus_per_run", "mem_gb", "max_concurrent", "submitit_folder", "no_wait")


def _cmd_submit(args, spec, tasks) -> int:
    """The pending runs as one job array through submitit (--executor slurm, or its local executor)."""
    from experiments.sweep.cluster import submit_sweep
    settings = _cluster_settings(args, spec)
    where = f"{settings.gpus} GPU(s) and " if settings.gpus else "no GPU, "
    print(f"sweep {spec.name}: {len(spec.runs(tasks))} runs, through --executor {args.executor} ({where}"
          f"{settings.cpus} CPU(s) per job), under {spec.runs_dir}", flush=True)
    outcomes = submit_sweep(spec, args.executor, settings, report=lambda line: print(line, flush=True), tasks=tasks,
                            recorded=_recorded(spec) if args.skip_recorded else (), wait=not args.no_wait)
    if args.no_wait:
        print(f"`sweep.py status {args.spec}` follows the jobs, `sweep.py report {args.spec}` tables the finished "
              f"runs, and the same `sweep.py run` again submits what did not finish", flush=True)
        return 0
    return _finish(args, spec, outcomes)


def _cluster_settings(args, spec):
    """What each job asks for, from the flags and the spec; a setting the jobs cannot honour is one line."""
    from experiments.sweep.cluster import ClusterSettings
    if args.no_wait and args.executor != "slurm":
        raise ValueError("--no_wait: only with --executor slurm")
    if args.parallel is not None:
        raise ValueError(f"--parallel: sets the local pool; with --executor {args.executor} use --max_concurrent")
    if args.gpus is not None and args.gpus.strip() != "cpu":
        raise ValueError(f"--gpus: names this machine's GPUs; with --executor {args.executor} each job gets "
                         "gpus_per_run GPUs from the scheduler (--gpus cpu: CPU jobs)")
    for key, low in (("time_min", 1), ("cpus_per_run", 1), ("mem_gb", 1), ("max_concurrent", 0)):
        if getattr(args, key) is not None and getattr(args, key) < low:
            raise ValueError(f"--{key}: must be >= {low}, got {getattr(args, key)}")
    given = lambda key: getattr(args, key) if getattr(args, key) is not None else spec.cluster.get(key)
    default_window = spec.parallel if args.executor == "submitit-local" else 0  # local: this machine's CPUs
    window = given("max_concurrent")
    return ClusterSettings(
        gpus=_job_gpus(args, spec), cpus=given("cpus_per_run") or spec.threads_per_run or 1,
        time_min=given("time_min") or 240, partition=given("partition"), mem_gb=given("mem_gb"),
        max_concurrent=default_window if window is None else window,
        folder=Path(args.submitit_folder) if args.submitit_folder else None)


def _job_gpus(args, spec) -> int:
    """GPUs per job: gpus_per_run (0 with --gpus cpu). Submitit's local executor would hand every job the same
    first GPU(s), so it runs CPU jobs only: on a machine without GPUs, or with --gpus cpu."""
    from experiments.sweep.devices import visible_gpus
    if args.gpus is not None:
        return 0
    if args.executor != "submitit-local":
        return spec.gpus_per_run
    if visible_gpus():
        raise ValueError("--executor submitit-local: its jobs would all share this machine's first GPU(s); "
                         "use --executor local here (each run its own GPUs), or --gpus cpu")
    if spec.gpus_per_run > 1:
        source = "--gpus_per_run" if args.gpus_per_run is not None else f"{spec.source}: gpus_per_run"
        raise ValueError(f"{source}: {spec.gpus_per_run} GPUs per run, but no GPU is visible here")
    return 0


def _finish(args, spec, outcomes) -> int:
    """The report (unless every run failed) and the failed runs' one line."""
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
    run.add_argument("--executor", choices=("local", "slurm", "submitit-local"), default="local",
                     help="local: this machine's process pool; slurm: one job array through submitit; "
                          "submitit-local: the same jobs through submitit's local executor")
    run.add_argument("--partition", help="--executor slurm: the partition of the jobs")
    run.add_argument("--time_min", type=int, help="--executor slurm: each job's time limit in minutes (default 240)")
    run.add_argument("--cpus_per_run", type=int, help="--executor slurm: CPUs per job (default threads_per_run or 1)")
    run.add_argument("--mem_gb", type=int, help="--executor slurm: memory per job in GB (default: the partition's)")
    run.add_argument("--max_concurrent", type=int, help="--executor slurm: jobs of the array running at once "
                                                        "(default: no bound; submitit-local: the spec's parallel)")
    run.add_argument("--submitit_folder", help="--executor slurm: job scripts and logs (default runs_dir/submitit)")
    run.add_argument("--no_wait", action="store_true", default=None,
                     help="--executor slurm: return once the array is submitted (status and report follow it)")
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
