"""Runs a sweep's train.py jobs, one or N at a time, and makes the sweep resumable.

Each run owns one folder under ``runs_dir`` (``task/optimizer/lr…_b3…_s…``). Two marker files decide what a
re-started sweep does with it:

- ``sweep_run.json`` (written before train.py first starts): the run's train.py flags. A folder whose flags
  differ from the spec's is an error, never silently reused, so changing the spec cannot mix old and new runs.
- ``sweep_done.json`` (written when train.py exits 0): the run is finished and is skipped.

A folder with ``sweep_run.json`` but no ``sweep_done.json`` was killed: if train.py left a checkpoint
(``latest``), the run continues with ``--resume``; otherwise the folder is emptied and the run starts again.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from data_utils.atomic import atomic_write
from experiments.sweep.spec import RunSpec, SweepSpec, train_argv

ROOT = Path(__file__).resolve().parents[2]
TRAIN_PY = ROOT / "train.py"
RUN_INFO = "sweep_run.json"
DONE = "sweep_done.json"
LOG = "sweep.log"
LATEST = "latest"  # mt_dnn.checkpoint's marker of the newest step checkpoint


class SweepError(RuntimeError):
    """A run folder the sweep cannot use as it is; the message is one line naming the folder."""


@dataclass
class Outcome:
    run: RunSpec
    run_dir: Path
    status: str  # done (finished now), skipped (finished before), failed
    seconds: float = 0.0
    returncode: int = 0


def run_dir(spec: SweepSpec, run: RunSpec) -> Path:
    return spec.runs_dir / run.run_id


def state(spec: SweepSpec, run: RunSpec) -> str:
    """new, done, resume (killed after a checkpoint) or restart (killed before one); checks the flags match."""
    folder = run_dir(spec, run)
    info = folder / RUN_INFO
    if not info.is_file():
        if folder.exists() and any(folder.iterdir()):
            raise SweepError(f"{folder}: exists but was not started by a sweep (no {RUN_INFO}); move it away")
        return "new"
    _check_same_flags(info, train_argv(spec, run, folder))
    if (folder / DONE).is_file():
        return "done"
    return "resume" if (folder / LATEST).is_file() else "restart"


def _check_same_flags(info: Path, argv: list[str]) -> None:
    try:
        recorded = json.loads(info.read_text(encoding="utf-8"))["train_argv"]
    except (ValueError, KeyError, TypeError):
        raise SweepError(f"{info}: unreadable run record; delete the folder to re-run it") from None
    if recorded != argv:
        diff = next((f"{a!r} vs {b!r}" for a, b in zip(recorded, argv) if a != b),
                    f"{len(recorded)} vs {len(argv)} flags")
        raise SweepError(f"{info}: this run was started with other train.py flags ({diff}); "
                         "move the folder away or use another runs_dir")


def _git_version() -> dict:
    """Commit and whether tracked files were modified: enough to tell which code produced a run."""
    def git(*args):
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return out.stdout.strip() if out.returncode == 0 else None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status)}


def _command(spec: SweepSpec, run: RunSpec, resume: bool) -> list[str]:
    cmd = [sys.executable, str(TRAIN_PY), *train_argv(spec, run, run_dir(spec, run))]
    if resume:
        cmd.append("--resume")
    if spec.threads_per_run:
        cmd += ["--num_threads", str(spec.threads_per_run)]
    return cmd


def _env(threads: int) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def execute(spec: SweepSpec, run: RunSpec, version: Optional[dict] = None) -> Outcome:
    """Bring one run to completion (skip, resume, restart or start) and record the outcome."""
    folder = run_dir(spec, run)
    current = state(spec, run)
    if current == "done":
        return Outcome(run, folder, "skipped")
    if current == "restart":
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    argv = train_argv(spec, run, folder)
    if current != "resume":
        with atomic_write(folder / RUN_INFO) as handle:
            json.dump({"run_id": run.run_id, "train_argv": argv, "code": version or {}}, handle, indent=2)
    start = time.perf_counter()
    with (folder / LOG).open("a", encoding="utf-8") as log:
        log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {current}: {' '.join(_command(spec, run, False))}\n")
        log.flush()
        proc = subprocess.run(_command(spec, run, current == "resume"), stdout=log, stderr=subprocess.STDOUT,
                              env=_env(spec.threads_per_run), cwd=os.getcwd(), check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        return Outcome(run, folder, "failed", seconds, proc.returncode)
    with atomic_write(folder / DONE) as handle:
        json.dump({"run_id": run.run_id, "seconds": round(seconds, 1), "resumed": current == "resume",
                   "finished": time.strftime("%Y-%m-%d %H:%M:%S")}, handle, indent=2)
    if not spec.keep_step_checkpoints:  # after DONE: a kill in between leaves only extra files
        for step in folder.glob("step-*"):
            shutil.rmtree(step, ignore_errors=True)
        (folder / LATEST).unlink(missing_ok=True)
    return Outcome(run, folder, "done", seconds)


def run_sweep(spec: SweepSpec, report: Callable[[str], None] = print) -> list[Outcome]:
    """Every run of the spec, ``spec.parallel`` at a time; finished runs are skipped, failed ones reported."""
    runs = spec.runs()
    for run in runs:  # every folder is checked before anything starts
        state(spec, run)
    version = _git_version()
    lock, finished = threading.Lock(), [0]

    def one(run: RunSpec) -> Outcome:
        outcome = execute(spec, run, version)
        with lock:
            finished[0] += 1
            extra = f" (exit {outcome.returncode}, see {outcome.run_dir / LOG})" if outcome.status == "failed" else ""
            took = f" in {outcome.seconds:.0f} s" if outcome.status != "skipped" else ""
            report(f"[{finished[0]}/{len(runs)}] {outcome.status} {run.run_id}{took}{extra}")
        return outcome

    with ThreadPoolExecutor(max_workers=spec.parallel) as pool:
        return list(pool.map(one, runs))
