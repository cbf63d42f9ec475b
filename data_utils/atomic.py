"""Atomic file writes: a temp file in the target's folder, renamed over the target only on success.

An interrupted or failed run therefore never leaves a file that looks complete, and an older complete file
stays as it was until its replacement is whole. A kill can still leave the temp itself behind, so every temp
name carries this project's tag, the writer's host and process id
(``.{target}.sage-tmp-{host}-{pid}-{random}.tmp``): :func:`clean_stale_temps` removes only those whose writer
is gone, never a temp of a live writer, and never a file another program named.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from pathlib import Path
from typing import IO, Iterator, Union

from data_utils.safe_paths import write_failure

TEMP_TAG = "sage-tmp"
TEMP_SUFFIX = ".tmp"
OTHER_HOST_AGE_S = 24 * 3600  # a temp written from another host (shared filesystem) counts as stale after this
LEGACY_AGE_S = 3600  # untagged temps of earlier versions (no writer id): stale once untouched this long
_TEMP_NAME = re.compile(rf"\.(?P<target>.+)\.{TEMP_TAG}-(?P<host>[0-9a-f]{{8}})-(?P<pid>\d+)-(?P<kind>.*)"
                        rf"{re.escape(TEMP_SUFFIX)}\Z")
# Earlier versions named temps with tempfile's 8 random characters only; these are their exact shapes, for the
# files this project writes (checkpoint folders, `latest`, score/submission files, shards and their stamps).
_RANDOM8 = r"[a-z0-9_]{8}"
_LEGACY_NAME = re.compile(rf"\.(?P<target>(step-\d+|best)\.{_RANDOM8}|(step-\d+|best)\.old|"
                          rf"(latest|.+_scores_.+\.json|.+_submission_.+\.tsv|.+\.jsonl|.+\.jsonl\.stamp)"
                          rf"\.{_RANDOM8}\.tmp)\Z")


def _host() -> str:
    return hashlib.sha256(socket.gethostname().encode("utf-8")).hexdigest()[:8]


def temp_prefix(target_name: str) -> str:
    """The start of a temp name for ``target_name``, written by this process."""
    return f".{target_name}.{TEMP_TAG}-{_host()}-{os.getpid()}-"


def old_copy_name(target_name: str) -> str:
    """Where atomic_folder parks the previous complete folder during a replace (recovered if a kill hits)."""
    return f"{temp_prefix(target_name)}old{TEMP_SUFFIX}"


def current_umask() -> int:
    """The process's umask, read without changing it where Linux reports it (``os.umask`` only sets)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(path: Union[str, Path]) -> None:
    """Give a temp (mkstemp: 0600, mkdtemp: 0700) and everything inside it the mode ``open()``/``mkdir()``
    would have given under the umask (0o666/0o777 minus the umask; executables keep their x bits), so a
    teammate reads a shared run's files exactly when they read the rest of the user's files."""
    mask = current_umask()
    for entry in [Path(path), *(Path(path).rglob("*") if Path(path).is_dir() else ())]:
        st = entry.lstat()
        if stat.S_ISLNK(st.st_mode):
            continue
        full = 0o777 if stat.S_ISDIR(st.st_mode) or st.st_mode & 0o111 else 0o666
        os.chmod(entry, full & ~mask)


@contextlib.contextmanager
def atomic_write(path: Union[str, Path], mode: str = "w", encoding: str = "utf-8",
                 executable: bool = False) -> Iterator[IO]:
    """Yield a file opened for writing; it becomes ``path`` when the block exits without an exception, with the
    mode ``open()`` would give it (``executable``: that of a new program, 0o777 minus the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path.name), suffix=TEMP_SUFFIX)
    try:
        kwargs = {} if "b" in mode else {"encoding": encoding, "newline": ""}
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
        os.chmod(tmp, (0o777 if executable else 0o666) & ~current_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        failure = write_failure(exc, path)  # a full disk: one line naming the file, not a traceback
        if failure is exc:
            raise
        raise failure from None


@contextlib.contextmanager
def atomic_folder(path: Union[str, Path], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp folder beside ``path``; it becomes ``path`` (replacing it if ``overwrite``) on success."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists (pass --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=temp_prefix(path.name), suffix=TEMP_SUFFIX))
    try:
        yield tmp
        honour_umask(tmp)
        if path.exists():
            old = path.with_name(old_copy_name(path.name))
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        failure = write_failure(exc, path)
        if failure is exc:
            raise
        raise failure from None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _untouched_for(entry: Path) -> float:
    """Seconds since anything in ``entry`` (a file, or a folder and the files in it) was last modified."""
    try:
        paths = [entry, *entry.iterdir()] if entry.is_dir() and not entry.is_symlink() else [entry]
        return time.time() - max(p.lstat().st_mtime for p in paths)
    except FileNotFoundError:
        return 0.0


def _stale(entry: Path, host: str, pid: int) -> bool:
    if host == _host():
        return not _pid_alive(pid)
    try:
        return time.time() - entry.lstat().st_mtime > OTHER_HOST_AGE_S
    except FileNotFoundError:
        return False


def clean_stale_temps(folder: Union[str, Path]) -> list[str]:
    """Remove this project's temps in ``folder`` left by writers that no longer run; return what was done.

    A parked previous checkpoint (``old_copy_name``) whose target is missing - a kill between the two renames of
    a replace - is renamed back instead of removed, so the last complete checkpoint survives.
    """
    folder = Path(folder)
    done: list[str] = []
    if not folder.is_dir():
        return done
    for entry in sorted(folder.iterdir()):
        match, legacy = _TEMP_NAME.match(entry.name), _LEGACY_NAME.match(entry.name)
        if match is not None:
            if not _stale(entry, match["host"], int(match["pid"])):
                continue
            target, parked = folder / match["target"], match["kind"] == "old"
        elif legacy is not None and _untouched_for(entry) > LEGACY_AGE_S:
            target, parked = folder / entry.name[1:-len(".old")], entry.name.endswith(".old")
        else:
            continue
        if parked and entry.is_dir() and not target.exists():
            os.replace(entry, target)
            done.append(f"restored {target.name} from {entry.name}")
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
            done.append(f"removed {entry.name}")
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
            done.append(f"removed {entry.name}")
    return done
