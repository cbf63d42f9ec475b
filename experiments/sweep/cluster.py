"""Hands a sweep's pending runs to a cluster scheduler through submitit: one job array, one job per run.

Each job brings its run to completion exactly as the local pool does (:func:`runner.execute`: the same folder,
flags record, lock, resume or restart, ``sweep_done.json``), so the ledger, ``status``, ``report`` and a later
``sweep.py run`` (which skips finished runs and resumes killed ones, such as a preempted job's) neither know nor
care which executor ran a run. ``submitit-local`` is submitit's own local executor: the same path on this machine,
without a scheduler (the tests run it).
"""
from __future__ import annotations

import os
import shlex
import shutil
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from experiments.sweep.devices import visible_gpus
from experiments.sweep.runner import ROOT, Outcome, SweepError, execute, git_version, run_dir, state
from experiments.sweep.spec import RunSpec, SweepSpec

EXECUTORS = ("local", "slurm", "submitit-local")  # local: this machine's process pool (runner.run_sweep)


@dataclass(frozen=True)
class ClusterSettings:
    """What each job asks the scheduler for. ``gpus`` per job (0: a CPU job; its GPUs hidden from train.py)."""
    gpus: int
    cpus: int
    time_min: int = 240
    partition: Optional[str] = None
    mem_gb: Optional[int] = None
    max_concurrent: int = 0  # jobs of the array running at once (0: as many as the scheduler allows)
    folder: Optional[Path] = None  # submitit's job scripts, pickles and logs (default: <runs_dir>/submitit)


def run_job(spec: SweepSpec, run: RunSpec, version: dict, cwd: str, gpus: int) -> tuple[str, float, int]:
    """One job: the run on the GPUs the scheduler gave it (``CUDA_VISIBLE_DEVICES``), or on the CPU."""
    os.chdir(cwd)  # the spec's relative paths are the submitter's
    devices: list[str] = []
    if gpus:
        devices = visible_gpus()
        if len(devices) < gpus:
            raise SweepError(f"{run.run_id}: the job asked for {gpus} GPU(s) and sees {len(devices)}")
        devices = devices[:gpus]
    outcome = execute(spec, run, version, devices)
    return outcome.status, outcome.seconds, outcome.returncode


def _submitit():
    try:
        import submitit
    except ImportError:
        raise SweepError("--executor: needs the submitit package (pip install -r requirements.txt)") from None
    return submitit


def make_executor(spec: SweepSpec, executor: str, settings: ClusterSettings, jobs: int):
    """A submitit executor with the job array's settings; a missing scheduler is one line."""
    submitit = _submitit()
    if executor == "slurm" and shutil.which("sbatch") is None:
        raise SweepError("--executor slurm: no Slurm scheduler here (sbatch is not on PATH); run it on a login node "
                         "of the cluster, or use --executor local")
    folder = settings.folder or spec.runs_dir / "submitit"
    ex = submitit.AutoExecutor(folder=str(folder), cluster="slurm" if executor == "slurm" else "local")
    prefix = "slurm" if executor == "slurm" else "local"
    params = dict(name=f"sweep-{spec.name}", timeout_min=settings.time_min, nodes=1, tasks_per_node=1,
                  cpus_per_task=settings.cpus, gpus_per_node=settings.gpus,
                  **{f"{prefix}_setup": [f"cd {shlex.quote(str(ROOT))}"]})  # where the job finds this code
    if settings.mem_gb:
        params["mem_gb"] = settings.mem_gb
    if settings.partition:
        params["slurm_partition"] = settings.partition
    if settings.max_concurrent:
        params["slurm_array_parallelism"] = min(settings.max_concurrent, max(jobs, 1))
    ex.update_parameters(**params)
    return ex


def submit_sweep(spec: SweepSpec, executor: str, settings: ClusterSettings, report: Callable[[str], None] = print,
                 tasks: Optional[Sequence[str]] = None, recorded=(), wait: bool = True) -> list[Outcome]:
    """Submit every run that is not finished, read back from the runs CSV or held by a live sweep or job (its
    lock) as one job array, wait for the jobs and return the outcomes in the grid's order, as
    :func:`runner.run_sweep` does. Without ``wait`` (Slurm only) it returns once the array is submitted, with the
    submitted runs as "submitted"."""
    runs = spec.runs(tasks)
    states = {run.run_id: state(spec, run, recorded) for run in runs}  # every folder checked before submitting
    settled = {"done": "skipped", "recorded": "recorded", "running": "busy"}  # a live sweep or job holds "running"
    pending = [run for run in runs if states[run.run_id] not in settled]
    outcomes = {run.run_id: Outcome(run, run_dir(spec, run), settled[states[run.run_id]])
                for run in runs if states[run.run_id] in settled}
    if outcomes:
        count = {status: sum(o.status == status for o in outcomes.values()) for status in settled.values()}
        report(f"{count['skipped']} finished run(s) skipped, {count['recorded']} read back from the runs CSV, "
               f"{count['busy']} held by a live sweep or job")
    if pending:
        ex = make_executor(spec, executor, settings, len(pending))
        n = len(pending)
        report(f"submitting {n} run(s) to {executor}; job logs under {settings.folder or spec.runs_dir / 'submitit'}")
        for done, (run, job) in enumerate(_jobs(ex, executor, spec, pending, settings), 1):
            if not wait:
                outcomes[run.run_id] = Outcome(run, run_dir(spec, run), "submitted")
                report(f"submitted {run.run_id} (job {job.job_id})")
                continue
            try:
                status, seconds, code = job.result()
            except Exception as exc:  # the job died (killed, preempted, out of time): the next run resumes it
                status, seconds, code = "failed", 0.0, -1
                report(f"job {job.job_id} of {run.run_id}: {str(exc).strip().splitlines()[-1] if str(exc) else exc}")
            outcomes[run.run_id] = Outcome(run, run_dir(spec, run), status, seconds, code)
            took = f" in {seconds:.0f} s" if status in ("done", "failed") else ""
            report(f"[{done}/{n}] {status} {run.run_id}{took} (job {job.job_id})")
    return [outcomes[run.run_id] for run in runs]


def _jobs(ex, executor: str, spec: SweepSpec, pending: list[RunSpec], settings: ClusterSettings):
    """(run, job) in the grid's order: Slurm gets one array (its parallelism bounds the running jobs); submitit's
    local executor, which has no such bound, gets each job once fewer than ``max_concurrent`` are running."""
    cwd, version = os.getcwd(), git_version()
    if executor == "slurm":
        n = len(pending)
        jobs = ex.map_array(run_job, [spec] * n, pending, [version] * n, [cwd] * n, [settings.gpus] * n)
        yield from zip(pending, jobs)
        return
    window, running = settings.max_concurrent or len(pending), deque()
    for run in pending:
        if len(running) == window:
            oldest = running.popleft()
            oldest[1].wait()
            yield oldest
        running.append((run, ex.submit(run_job, spec, run, version, cwd, settings.gpus)))
    yield from running
