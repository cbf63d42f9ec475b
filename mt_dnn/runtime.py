"""What a training process sets up before any model exists: seeds, the device, the machine's thread and worker
counts, the run folder (created, locked, its log files opened) and the ``sage.train`` log.

A run whose setup fails leaves nothing behind: :class:`RunFolder` remembers the folders and log files it created
and :meth:`RunFolder.undo` removes exactly those.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from data_utils.resources import check_parallelism
from data_utils.safe_paths import LogFileHandler, refuse_symlink
from mt_dnn import checkpoint as ckpt
from mt_dnn import run_folder
from mt_dnn.distributed import DistEnv

log = logging.getLogger("sage.train")
#: The optimizer's one line saying which implementation it chose and why (module.sage.dispatch) goes to the same
#: places as the run's own log.
optim_log = logging.getLogger("sage.optim")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def pick_device(name: str, env: Optional[DistEnv] = None) -> torch.device:
    """``auto`` prefers CUDA; under torchrun each rank takes the GPU of its LOCAL_RANK (one process given
    ``--local_rank N`` takes GPU N, as MT-DNN's train.py did)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device: unknown device '{name}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ValueError(f"--device {name}: CUDA is not available here (torch {torch.__version__}, {build}); "
                             "use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    if device.type == "cuda" and device.index is None and env is not None and (env.enabled or env.local_rank):
        if env.local_rank >= torch.cuda.device_count():
            raise ValueError(f"local rank {env.local_rank} (LOCAL_RANK or --local_rank): only "
                             f"{torch.cuda.device_count()} CUDA device(s) visible")
        return torch.device("cuda", env.local_rank)
    return device


def check_machine_settings(num_threads: int, num_workers: Optional[int], fsdp: bool, env: DistEnv) -> None:
    """Settings that this machine or launch decides: thread and worker counts (data_utils/resources.py), and
    --fsdp, which shards across torchrun's processes and means nothing in a single one."""
    check_parallelism("--num_threads", num_threads)
    check_parallelism("--num_workers", num_workers or 0, "processes")
    if fsdp and not env.enabled:
        raise ValueError("--fsdp: shards the model across the processes torchrun starts, and this run is a single "
                         "process; launch it with torchrun --nproc_per_node N (N >= 2), or drop --fsdp")


def create_output_dir(path: Path) -> Optional[Path]:
    """Create ``path`` and return the topmost folder this call created (None if it existed), so a run whose
    setup fails can remove exactly what it made."""
    missing = [p for p in [path, *path.parents] if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".sage-write-probe"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"--output_dir {path}: cannot write there ({exc.strerror or exc})") from None
    return missing[-1] if missing else None


def setup_logging(output_dir: Path, is_main: bool = True, log_file: Optional[str] = None,
                  created: Optional[list] = None) -> None:
    """Log to stderr, OUTPUT_DIR/train.log and ``--log_file``; log files are never opened through a symbolic
    link. ``created`` receives each log file this call creates (a failed setup removes them again)."""
    log.setLevel(logging.INFO)
    log.handlers.clear()
    optim_log.handlers.clear()  # the optimizer's logger mirrors this run's handlers, never a finished run's
    log.propagate = False
    if not is_main:
        log.addHandler(logging.NullHandler())
        return
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    files = [(output_dir / "train.log", "--output_dir")]
    if log_file and Path(log_file).resolve() != files[0][0].resolve():  # MT-DNN's --log_file: a second copy
        if Path(log_file).is_dir():
            raise ValueError(f"--log_file {log_file}: is a folder; name a file")
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        files.append((Path(log_file), "--log_file"))
    log.addHandler(logging.StreamHandler(sys.stderr))
    for path, flag in files:
        if created is not None and not os.path.lexists(path):
            created.append(path)
        try:
            log.addHandler(LogFileHandler(path))
        except ValueError as exc:
            raise ValueError(f"{flag}: {exc}") from None
    for handler in log.handlers:
        handler.setFormatter(fmt)
        optim_log.addHandler(handler)
    optim_log.setLevel(logging.INFO)


def close_logging() -> None:
    for handler in list(log.handlers):
        handler.close()
        log.removeHandler(handler)
    optim_log.handlers.clear()


class RunFolder:
    """This run's ``--output_dir``. Only rank 0 writes there, so only it creates, locks and cleans the folder
    (the one-run rule of mt_dnn/run_folder.py); every rank sets up its log."""

    def __init__(self, path: Path, is_main: bool):
        self.path, self.is_main = Path(path), is_main
        self.lock: Optional[run_folder.RunLock] = None
        self.created_dir: Optional[Path] = None  # the topmost folder this run created
        self.created_logs: list[Path] = []  # log files created in a folder that existed

    def claim(self, resume: bool, overwrite: bool, log_file: Optional[str]) -> None:
        """Create and lock the folder and apply its one-run rule before anything is written there."""
        notes: list[str] = []
        if self.is_main:
            self.created_dir = create_output_dir(self.path)
            self.lock, notes = run_folder.claim(self.path, resume, overwrite,
                                                lambda: bool(ckpt.resume_candidates(self.path)))
        setup_logging(self.path, self.is_main, log_file, self.created_logs)
        refuse_symlink(self.path / run_folder.METRICS)  # appended to after each epoch: checked now
        for line in notes:
            log.info("%s", line)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def undo(self) -> None:
        """A run that never started leaves no output folder behind (only the folders it created itself), and no
        log file it created in a folder that existed."""
        if self.created_dir is None and not self.created_logs:
            return
        if self.is_main:
            close_logging()
        for path in self.created_logs:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self.created_logs = []
        if self.created_dir is not None:
            shutil.rmtree(self.created_dir, ignore_errors=True)
        self.created_dir = None
