"""The rules of a run folder (``--output_dir``): one writer at a time, one run per folder.

- :class:`RunLock`: an exclusive lock held for the whole run, so a second ``train.py`` on the same folder is
  refused in one line naming the holder instead of interleaving its checkpoints with the first one's.
- :func:`claim`: takes the lock, cleans what killed writers left, and decides what happens to a previous run
  found in the folder: ``--resume`` continues it, ``--overwrite`` removes it first (train.py's own files only;
  files it did not write are kept and named in the log), and a fresh run into a folder that holds a run is
  refused, so two runs never mix their ``best/``, ``metrics.jsonl`` and step checkpoints.
- :func:`agree_metrics`: on resume, ``metrics.jsonl`` is rewritten to the checkpoint's history, so an epoch
  evaluated and then killed before its checkpoint is recorded once, not twice.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Optional, Sequence

from data_utils import jsonsafe
from data_utils.atomic import atomic_write, clean_stale_temps
from data_utils.safe_load import loads_json
from mt_dnn import run_config

LOCK = "train.lock"
METRICS = "metrics.jsonl"
LATEST = "latest"
STEP_NAME = re.compile(r"step-\d+\Z")
EPOCH_NAME = re.compile(r"epoch-\d+\Z")  # --save_per_epoch
# What train.py writes into a run folder. RESULTS are what a run reports; LOGS only describe an attempt (config.json:
# the options of the run writing the folder, rewritten by each attempt).
RESULT_NAMES = frozenset({"best", METRICS, LATEST})
RESULT_PATTERNS = (STEP_NAME, EPOCH_NAME,
                   re.compile(r".+_(scores|predictions|submission)_(updates_)?\d+(\.[A-Za-z]+)+\Z"))
LOG_NAMES = frozenset({"train.log", "tensorboard", "sensitivity.jsonl", "mlruns", "wandb", "reporting.json",
                       run_config.NAME})
OWN_NAMES = frozenset({LOCK, ".sage-write-probe"})
# Where flock() is not available (some FUSE and network filesystems), the lock is an exclusive-create file.
NO_FLOCK_ERRNOS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL})
_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC


class RunFolderError(ValueError):
    """The output folder cannot be used as asked; one line naming the folder and what to do."""


# ---------------------------------------------------------------------------------------------- the lock
def _holder_text() -> str:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                       "started": time.strftime("%Y-%m-%d %H:%M:%S")})


def _describe_holder(raw: str) -> str:
    try:
        info = loads_json(raw, LOCK)
        return f"pid {int(info['pid'])} on {info['host']}, started {info['started']}"
    except (ValueError, KeyError, TypeError):
        return "a process that has not written its name yet"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """``OUTPUT_DIR/train.lock``, locked with ``flock`` for as long as the run lives.

    The kernel drops a flock when its process ends however it ends, so a lock left by a crash is never in the
    way; the file then holds the dead holder's details until the next run takes it over. Where the filesystem
    has no flock, the lock is the file's exclusive creation instead, and a file whose holder is a dead process
    of this host counts as stale; a holder on another host cannot be checked and is refused (the message says
    which file to remove once that run is known to be gone). NFS mounted with ``nolock`` grants flocks that other
    hosts do not see: there, keep one run per folder by hand.
    """

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK
        self._fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        try:
            return self._acquire()
        except OSError as exc:  # a symlink planted as the lock (O_NOFOLLOW), a read-only folder, ...
            raise RunFolderError(f"{self.path}: cannot take the run's lock ({exc.strerror or exc})") from None

    def _acquire(self) -> "RunLock":
        while self._fd is None:
            try:
                fd, created = os.open(self.path, _FLAGS | os.O_CREAT | os.O_EXCL, 0o666), True
            except FileExistsError:
                try:
                    fd, created = os.open(self.path, _FLAGS), False
                except FileNotFoundError:  # released in between: start again
                    continue
            try:
                locked = self._try_flock(fd)
            except BaseException:
                os.close(fd)
                raise
            if locked is None:  # no flock here: the exclusive creation is the lock
                if created:
                    self._take(fd)
                    break
                os.close(fd)
                return self._acquire_exclusive()
            if self._same_file(fd):
                self._take(fd)
            else:
                os.close(fd)
        return self

    def _take(self, fd: int) -> None:
        os.ftruncate(fd, 0)
        os.write(fd, _holder_text().encode("utf-8"))
        self._fd = fd

    def _try_flock(self, fd: int) -> Optional[bool]:
        """True once locked; None where the filesystem has no flock; a live holder is refused."""
        import fcntl
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise self._refusal(self._read_holder(fd)) from None
        except OSError as exc:
            if exc.errno not in NO_FLOCK_ERRNOS:
                raise
            return None
        return True

    def _same_file(self, fd: int) -> bool:
        """False when the file was removed and recreated (a previous holder's release) while this process was
        taking the lock: the lock must be on the file that the path names now."""
        try:
            return os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def _acquire_exclusive(self) -> "RunLock":
        while True:
            try:
                fd = os.open(self.path, _FLAGS | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                try:
                    raw = self.path.read_text(encoding="utf-8", errors="replace")
                except FileNotFoundError:
                    continue
                if not self._stale(raw):
                    raise self._refusal(raw, f"; if that run is gone, remove {self.path}") from None
                self.path.unlink(missing_ok=True)
                continue
            self._take(fd)
            return self

    @staticmethod
    def _stale(raw: str) -> bool:
        try:
            info = loads_json(raw, LOCK)
            pid, host = int(info["pid"]), info["host"]
        except (ValueError, KeyError, TypeError):
            return False  # being written by a live holder, or another program's: never taken over
        return host == socket.gethostname() and not _pid_alive(pid)

    @staticmethod
    def _read_holder(fd: int) -> str:
        return os.pread(fd, 4096, 0).decode("utf-8", errors="replace")

    def _refusal(self, raw: str, hint: str = "") -> RunFolderError:
        return RunFolderError(f"--output_dir {self.path.parent}: another train.py is writing this run "
                              f"({_describe_holder(raw)}); wait for it to finish or use another --output_dir{hint}")

    def release(self) -> None:
        """Remove the file while still holding it, then let go (a waiting process re-checks the path)."""
        if self._fd is None:
            return
        try:
            if self._same_file(self._fd):
                self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


# ---------------------------------------------------------------------------------------------- the folder
def _is_result(name: str) -> bool:
    return name in RESULT_NAMES or any(p.match(name) for p in RESULT_PATTERNS)


def own_entries(folder: Path) -> tuple[list[Path], list[Path]]:
    """(results, logs): the entries of ``folder`` that train.py writes, by name (the lock not included)."""
    results, logs = [], []
    for entry in sorted(Path(folder).iterdir()):
        if _is_result(entry.name):
            results.append(entry)
        elif entry.name in LOG_NAMES and (entry.name != run_config.NAME or run_config.is_run_config(entry)):
            logs.append(entry)  # (a config.json that is not a run's options is someone else's file: kept)
    return results, logs


def foreign_entries(folder: Path) -> list[Path]:
    """Entries train.py never writes (a sweep's records, a user's notes, other programs' temps): kept."""
    results, logs = own_entries(folder)
    own = {p.name for p in results + logs} | OWN_NAMES
    return [p for p in sorted(Path(folder).iterdir()) if p.name not in own and ".sage-tmp-" not in p.name]


def remove_entries(entries: Sequence[Path]) -> None:
    """Remove files and folders without following a symlink anywhere: a link is removed, never its target."""
    for entry in entries:
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)  # removes links inside as links
            else:
                entry.unlink(missing_ok=True)
        except OSError as exc:
            raise RunFolderError(f"{entry}: cannot remove it ({exc.strerror or exc})") from None


def _names(entries: Sequence[Path], limit: int = 6) -> str:
    shown = [p.name + ("/" if p.is_dir() and not p.is_symlink() else "") for p in entries[:limit]]
    return ", ".join(shown) + (f" and {len(entries) - limit} more" if len(entries) > limit else "")


def claim(folder: Path, resume: bool, overwrite: bool, has_checkpoint) -> tuple[RunLock, list[str]]:
    """Lock ``folder`` for this run and apply the one-run-per-folder rule; returns the lock and lines to log.

    ``has_checkpoint()`` says whether ``--resume`` has a step checkpoint to continue from. Without one, a
    ``--resume`` starts the run, which is refused while the folder holds another run's results (a finished
    run whose step checkpoints were removed would otherwise be replaced); the logs of an attempt that recorded
    nothing (TensorBoard events, sensitivity records) are removed so that they do not mix with the new run's.
    """
    folder = Path(folder)
    lock = RunLock(folder).acquire()
    try:
        notes = [f"{folder}: {what} (left by an interrupted run)" for what in clean_stale_temps(folder)]
        results, logs = own_entries(folder)
        if overwrite:
            if results or logs:
                removed = _names(results + logs)
                remove_entries(results + logs)
                notes.append(f"--overwrite: removed the previous run in {folder} ({removed})")
            foreign = foreign_entries(folder)
            if foreign:
                notes.append(f"--overwrite: kept {len(foreign)} entr{'y' if len(foreign) == 1 else 'ies'} "
                             f"train.py did not write: {_names(foreign)}")
        elif resume and not has_checkpoint():
            if results:
                raise RunFolderError(f"--resume: {folder} holds results of a run ({_names(results)}) but no step "
                                     "checkpoint to continue from; pass --overwrite instead to start it again")
            stale_logs = [p for p in logs if p.name != "train.log"]
            if stale_logs:
                notes.append(f"--resume: removed {_names(stale_logs)} of an attempt that left no checkpoint")
                remove_entries(stale_logs)
        elif not resume and (results or logs):
            raise RunFolderError(f"--output_dir {folder}: holds a run ({_names(results + logs)}); pass --resume "
                                 "to continue it, --overwrite to replace it, or use another --output_dir")
    except BaseException:
        lock.release()
        raise
    return lock, notes


def agree_metrics(folder: Path, history: Sequence[dict]) -> bool:
    """Make ``metrics.jsonl`` hold exactly the checkpoint's history (one record per finished epoch); returns
    whether the file had to change."""
    path = Path(folder) / METRICS
    text = "".join(jsonsafe.dumps(record) + "\n" for record in history)
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except FileNotFoundError:
        if not history:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    with atomic_write(path) as handle:
        handle.write(text)
    return True


def latest_name(folder: Path) -> Optional[str]:
    """The step folder named in ``latest``: only ``step-N`` is accepted (never a path, ``..`` or another name)."""
    marker = Path(folder) / LATEST
    if not marker.is_file():
        return None
    name = marker.read_text("utf-8", errors="replace").strip()
    if not STEP_NAME.match(name):
        shown = name if len(name) <= 60 else name[:57] + "..."
        raise RunFolderError(f"{marker}: names {shown!r}, not a step-N folder of this run; remove the file "
                             "(--resume then takes the newest step-N folder)")
    return name
