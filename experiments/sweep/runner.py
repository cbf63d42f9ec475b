"""Runs a sweep's train.py jobs, one or N at a time, and makes the sweep resumable.

Each run owns one folder under ``runs_dir`` (``task/optimizer/lr…_beta3-…_seed…``). Two marker files decide
what a re-started sweep does with it:

- ``sweep_run.json`` (written before train.py first starts): the run's train.py flags. A folder whose flags
  differ from the spec's is an error, never silently reused, so changing the spec cannot mix old and new runs.
- ``sweep_done.json`` (written when train.py exits 0): the run is finished and is skipped.

A folder with ``sweep_run.json`` but no ``sweep_done.json`` was killed: if train.py left a checkpoint
(``latest``), the run continues with ``--resume``; otherwise it starts again with ``--overwrite``, which removes
what train.py wrote there before (the sweep's own record and log stay). A new run's folder holds only the
sweep's files, which train.py leaves alone: no run is ever continued or replaced by accident.
While a sweep works on a run it holds ``sweep.lock`` (pid and host), so two sweeps over the same ``runs_dir``
never run the same job twice; a lock whose process is gone is taken over. On GPUs each run at a time gets its own
group of GPUs (``devices.py``); both records name the devices of the run's latest attempt (``["cpu"]`` without).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection, Optional, Sequence

from data_utils.atomic import atomic_write
from data_utils.safe_load import read_json
from data_utils.safe_paths import open_output
from experiments.sweep.devices import DevicePool
from experiments.sweep.spec import RunSpec, SweepSpec, train_argv

ROOT = Path(__file__).resolve().parents[2]
TRAIN_PY = ROOT / "train.py"
RUN_INFO = "sweep_run.json"
DONE = "sweep_done.json"
LOG = "sweep.log"
LATEST = "latest"  # mt_dnn.checkpoint's marker of the newest step checkpoint
LOCK = "sweep.lock"  # "<pid> <host>" of the sweep running this run now


class SweepError(RuntimeError):
    """A run folder the sweep cannot use as it is; the message is one line naming the folder."""


@dataclass
class Outcome:
    run: RunSpec
    run_dir: Path
    # done (finished now), skipped (finished before), recorded (no folder, in the committed runs CSV),
    # busy (another sweep runs it), failed
    status: str
    seconds: float = 0.0
    returncode: int = 0


def run_dir(spec: SweepSpec, run: RunSpec) -> Path:
    return spec.runs_dir / run.run_id


def state(spec: SweepSpec, run: RunSpec, recorded: Collection[str] = ()) -> str:
    """new, done, running (another live sweep holds it), resume (killed after a checkpoint), restart (killed
    before one) or, for a run without a folder whose run_id is in ``recorded`` (the committed runs CSV holds
    its results), recorded; checks that the recorded flags match the spec's."""
    folder = run_dir(spec, run)
    info = folder / RUN_INFO
    if not info.is_file():
        if folder.exists() and any(p.name != LOCK for p in folder.iterdir()):
            raise SweepError(f"{folder}: exists but was not started by a sweep (no {RUN_INFO}); move it away")
        if _held_elsewhere(folder):
            return "running"
        return "recorded" if run.run_id in recorded else "new"
    _check_same_flags(info, train_argv(spec, run, folder))
    if (folder / DONE).is_file():
        return "done"
    if _held_elsewhere(folder):
        return "running"
    return "resume" if (folder / LATEST).is_file() else "restart"


def _lock_owner() -> str:
    """pid and host; in a Slurm job also its job id, so a lock left by a job that is gone can be told apart."""
    job = os.environ.get("SLURM_JOB_ID", "").strip()
    return f"{os.getpid()} {socket.gethostname()}" + (f" slurm:{job}" if job.isdigit() else "")


def _held_elsewhere(folder: Path) -> bool:
    """True while another live process (of this host, or any process of another host) holds the run's lock. A
    lock of a Slurm job on another host (a preempted or cancelled job leaves one) is held while squeue lists the
    job; where squeue cannot tell, it is held."""
    try:
        owner = (folder / LOCK).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return False
    if owner == _lock_owner():
        return False
    pid, _, rest = owner.partition(" ")
    host, _, job = rest.partition(" slurm:")
    if host != socket.gethostname():
        return _slurm_job_alive(job) if job.isdigit() else True
    return _alive(pid)


def _alive(pid: str) -> bool:
    """Whether the process runs: a killed process that its parent has not reaped yet (a zombie) holds nothing."""
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except OSError:  # no procfs (macOS): os.kill's answer stands
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _slurm_job_alive(job: str) -> bool:
    """Whether squeue still lists the job (pending, running, completing...); True where squeue cannot be asked."""
    if shutil.which("squeue") is None:
        return True
    try:
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=60,
                             check=False)
    except (OSError, subprocess.TimeoutExpired):
        return True
    if out.returncode != 0:  # an id squeue no longer knows ("Invalid job id") is a finished job
        return "invalid job id" not in out.stderr.lower()
    return bool(out.stdout.strip())


def _acquire(folder: Path) -> bool:
    """Take the run's lock (O_EXCL create); a lock left by a dead process is taken over."""
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            fd = os.open(folder / LOCK, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)  # minus the umask, as open()
        except FileExistsError:
            if _held_elsewhere(folder):
                return False
            (folder / LOCK).unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(_lock_owner())
        return True


def _recorded_argv(info: Path) -> list[str]:
    """The train.py flags a run folder's ``sweep_run.json`` holds (as ``write_run_info`` wrote them)."""
    return read_json(info)["train_argv"]


def _check_same_flags(info: Path, argv: list[str]) -> None:
    try:
        recorded = _recorded_argv(info)
    except (ValueError, KeyError, TypeError):
        raise SweepError(f"{info}: unreadable run record; delete the folder to re-run it") from None
    if recorded != argv:
        diff = next((f"{a!r} vs {b!r}" for a, b in zip(recorded, argv) if a != b),
                    f"{len(recorded)} vs {len(argv)} flags")
        raise SweepError(f"{info}: this run was started with other train.py flags ({diff}); "
                         "move the folder away or use another runs_dir")


def flags_digest(argv: Sequence[str]) -> str:
    """A short fingerprint of a run's train.py flags. The runs CSV records it, so a row read back after its
    folder is gone counts only while the spec would still run it with the same flags."""
    return hashlib.sha256(json.dumps(list(argv)).encode("utf-8")).hexdigest()[:16]


def folder_flags(folder: Path) -> str:
    """The fingerprint of the flags a run folder was started with; empty if its record is unreadable."""
    try:
        return flags_digest(_recorded_argv(folder / RUN_INFO))
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def write_run_info(spec: SweepSpec, run: RunSpec, version: Optional[dict] = None,
                   devices: Optional[Sequence[str]] = None) -> Path:
    """Create the run's folder with its record of flags, code version and devices, before train.py first starts."""
    folder = run_dir(spec, run)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_write(folder / RUN_INFO) as handle:
        json.dump({"run_id": run.run_id, "train_argv": train_argv(spec, run, folder), "code": version or {},
                   "devices": _device_names(devices)}, handle, indent=2)
    return folder


def _device_names(devices: Optional[Sequence[str]]) -> list[str]:
    return list(devices) if devices else ["cpu"]


def _record_devices(folder: Path, devices: Optional[Sequence[str]]) -> None:
    """A resumed run keeps its record (flags, the code it started with) and names the devices it continues on."""
    info = read_json(folder / RUN_INFO)
    info["devices"] = _device_names(devices)
    with atomic_write(folder / RUN_INFO) as handle:
        json.dump(info, handle, indent=2)


def git_version() -> dict:
    """Commit and whether tracked files were modified: enough to tell which code produced a run."""
    def git(*args):
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return out.stdout.strip() if out.returncode == 0 else None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status)}


def _command(spec: SweepSpec, run: RunSpec, current: str, devices: Optional[Sequence[str]] = None) -> list[str]:
    """train.py for a run in state ``current``: new, resume (--resume) or restart (--overwrite); on a group of
    several GPUs under torchrun, one process per GPU (``--standalone``: a free port of its own per run)."""
    launch = [sys.executable]
    if devices and len(devices) > 1:
        launch += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(len(devices))]
    cmd = [*launch, str(TRAIN_PY), *train_argv(spec, run, run_dir(spec, run))]
    cmd += {"resume": ["--resume"], "restart": ["--overwrite"]}.get(current, [])
    if spec.threads_per_run:
        cmd += ["--num_threads", str(spec.threads_per_run)]
    return cmd


def _env(threads: int, devices: Optional[Sequence[str]] = None) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if devices is not None:  # [] hides every GPU
        env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    return env


def execute(spec: SweepSpec, run: RunSpec, version: Optional[dict] = None,
            devices: Optional[Sequence[str]] = None) -> Outcome:
    """Bring one run to completion (skip, resume, restart or start) on ``devices`` (its GPU ids; [] hides every
    GPU; None leaves the environment's) and record the outcome. A run that another live sweep is running is left
    to it ("busy")."""
    folder = run_dir(spec, run)
    if not _acquire(folder):
        return Outcome(run, folder, "busy")
    try:
        return _execute_locked(spec, run, folder, version, devices)
    finally:
        (folder / LOCK).unlink(missing_ok=True)


def _execute_locked(spec: SweepSpec, run: RunSpec, folder: Path, version: Optional[dict],
                    devices: Optional[Sequence[str]]) -> Outcome:
    current = state(spec, run)
    if current == "done":
        return Outcome(run, folder, "skipped")
    if current != "resume":
        write_run_info(spec, run, version, devices)
    else:
        _record_devices(folder, devices)
    cmd = _command(spec, run, current, devices)
    on = f"CUDA_VISIBLE_DEVICES={','.join(devices)} " if devices is not None else ""
    start = time.perf_counter()
    with open_output(folder / LOG, "a") as log:  # never through a link planted in the run folder
        log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {current}: {on}{' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(spec.threads_per_run, devices),
                              cwd=os.getcwd(), check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        return Outcome(run, folder, "failed", seconds, proc.returncode)
    with atomic_write(folder / DONE) as handle:
        json.dump({"run_id": run.run_id, "seconds": round(seconds, 1), "resumed": current == "resume",
                   "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "devices": _device_names(devices)},
                  handle, indent=2)
    if not spec.keep_step_checkpoints:  # after DONE: a kill in between leaves only extra files
        for step in folder.glob("step-*"):
            shutil.rmtree(step, ignore_errors=True)
        (folder / LATEST).unlink(missing_ok=True)
    return Outcome(run, folder, "done", seconds)


def run_sweep(spec: SweepSpec, report: Callable[[str], None] = print,
              tasks: Optional[Sequence[str]] = None, recorded: Collection[str] = (),
              gpu_groups: Sequence[Sequence[str]] = ()) -> list[Outcome]:
    """Every run of the spec (of ``tasks`` only, if given), ``spec.parallel`` at a time, each on a free group of
    ``gpu_groups`` (none: the CPU); finished runs are skipped, failed ones reported. A run in ``recorded`` (run_ids
    whose results the committed runs CSV holds) that has no folder is skipped too ("recorded")."""
    runs = spec.runs(tasks)
    # every folder is checked before anything starts
    kept = {run.run_id for run in runs if state(spec, run, recorded) == "recorded"}
    version = git_version()
    lock, finished = threading.Lock(), [0]
    pool = DevicePool(gpu_groups)

    def one(run: RunSpec) -> Outcome:
        if run.run_id in kept:
            outcome = Outcome(run, run_dir(spec, run), "recorded")
        else:
            with pool.take() as devices:
                outcome = execute(spec, run, version, devices)
        with lock:
            finished[0] += 1
            extra = f" (exit {outcome.returncode}, see {outcome.run_dir / LOG})" if outcome.status == "failed" else ""
            took = f" in {outcome.seconds:.0f} s" if outcome.status in ("done", "failed") else ""
            report(f"[{finished[0]}/{len(runs)}] {outcome.status} {run.run_id}{took}{extra}")
        return outcome

    with ThreadPoolExecutor(max_workers=spec.parallel) as threads:
        return list(threads.map(one, runs))
