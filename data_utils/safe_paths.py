"""Where the project writes: names derived from user input stay single names, output folders are never system
or source folders, and output files are never opened through a symbolic link.

Without them a model name ``..`` puts prepro_std.py's shards into the parent of ``--root_dir``, a ``train.log``
symlink planted in a run folder makes every run append to its target (as root: to any file), and ``--output_dir
/`` writes a run over the filesystem root. Every writer asks these helpers rather than checking on its own.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import sys
from pathlib import Path
from typing import IO, Iterable, Optional, Union

_SEPARATORS = ("/", "\\", "\0")
#: Top-level folders of a Linux system (FHS): writing a run directly into one mixes it with the system's files.
SYSTEM_FOLDERS = ("/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/media", "/mnt", "/opt",
                  "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var")
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def plain_name(value: str, what: str) -> str:
    """``value`` if it can name one file or folder inside another (no separator, not ``.``/``..``, not empty);
    otherwise a ValueError naming ``what`` (the flag or field it came from)."""
    text = str(value)
    if text.strip() in ("", ".", "..") or any(sep in text for sep in _SEPARATORS):
        raise ValueError(f"{what}: {text!r} cannot name a folder or file (it must be one plain name: no '/' or "
                         "'\\', not '.' or '..')")
    return text


def _resolved(path: Union[str, Path]) -> Path:
    return Path(os.path.abspath(os.path.expanduser(str(path)))).resolve()


def _within(outer: Path, inner: Path) -> bool:
    return inner == outer or outer in inner.parents


def _wrong_root(where: Path, inputs: Iterable[Union[str, Path, None]]) -> Optional[str]:
    if where == Path(where.anchor):
        return "the filesystem root"
    if where == _resolved(Path.home()):
        return "the home folder"
    if str(where) in SYSTEM_FOLDERS:
        return "a top-level system folder"
    if where in _resolved(Path.cwd()).parents:
        return "a folder above the current directory"
    for name, inner in (("this project's source", PROJECT_ROOT), *((f"the input {p}", p) for p in inputs if p)):
        if os.path.exists(os.path.expanduser(str(inner))) and _within(where, _resolved(inner)):
            return name if where == _resolved(inner) else f"a folder holding {name}"
    return None


def check_output_root(path: Union[str, Path], flag: str, inputs: Iterable[Union[str, Path, None]] = ()) -> Path:
    """Refuse an output folder that is obviously the wrong place: the filesystem root, a top-level system folder,
    the home folder, a folder above the current directory, or a folder holding this project's source or one of
    ``inputs`` (the data or checkpoints the command reads). Outputs would mix with what is there, and replacing
    an earlier output (``--overwrite``) removes it."""
    where = _resolved(path)
    why = _wrong_root(where, inputs)
    if why is not None:
        raise ValueError(f"{flag} {path}: refusing to write into {why}; name a folder of its own")
    return where


# ---------------------------------------------------------------------------------------------- write failures
#: errno values that mean a write itself failed: no space, quota, file too large (RLIMIT_FSIZE), read-only, I/O
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})


class WriteError(OSError):
    """Writing ``path`` failed (a full disk, ...); the writer removed its temp or cut its append back first."""

    def __init__(self, path: Union[str, Path], why: str, original: Optional[BaseException] = None):
        super().__init__(f"{path}: cannot write ({why}); nothing half-written was left")
        self.path, self.original = str(path), original  # the library's own error, for callers that name the path


def write_failure(exc: BaseException, path: Union[str, Path]) -> BaseException:
    """``exc`` as a one-line :class:`WriteError` naming ``path`` when it means the write itself failed (also
    safetensors' and torch.save's renderings of a full disk), else ``exc`` unchanged."""
    text = str(exc)
    if isinstance(exc, WriteError):
        return exc
    if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
        return WriteError(path, exc.strerror or text, exc)
    found = re.search(r"os error (\d+)|code: (\d+)", text) if type(exc).__name__ == "SafetensorError" else None
    if found and int(found.group(1) or found.group(2)) in WRITE_ERRNOS:
        return WriteError(path, os.strerror(int(found.group(1) or found.group(2))), exc)
    if isinstance(exc, RuntimeError) and "PytorchStreamWriter failed writing" in text:
        return WriteError(path, "file write failed", exc)
    return exc


# ---------------------------------------------------------------------------------------------- opening files
def _open_fd(path: Union[str, Path], append: bool) -> int:
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    flags |= os.O_APPEND if append else os.O_TRUNC
    try:
        return os.open(path, flags, 0o666)  # the umask applies, as with open()
    except OSError as exc:
        if exc.errno == errno.ELOOP or Path(path).is_symlink():
            raise ValueError(f"{path}: is a symbolic link; output is never written through a link "
                             "(remove it)") from None
        if exc.errno == errno.EISDIR:
            raise ValueError(f"{path}: is a folder; name a file") from None
        raise


def open_output(path: Union[str, Path], mode: str = "a", encoding: Optional[str] = "utf-8") -> IO:
    """``open(path, mode)`` for writing ('w' or 'a', text or binary) that refuses to follow a symbolic link at
    ``path`` (O_NOFOLLOW): a link planted there would make the run write into whatever file it points to."""
    fd = _open_fd(path, append="a" in mode)
    return os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": encoding}))


def append_line(path: Union[str, Path], text: str) -> None:
    """Append ``text`` (one whole record) to ``path``, never through a symbolic link; if the write fails (a full
    disk), the file is cut back to its previous length, so it never ends in half a record."""
    fd = _open_fd(path, append=True)
    try:
        start = os.fstat(fd).st_size
        data = memoryview(text.encode("utf-8"))
        try:
            while data:
                data = data[os.write(fd, data):]
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            failure = write_failure(exc, path)
            if failure is exc:
                raise
            raise failure from None
    finally:
        os.close(fd)


def refuse_symlink(path: Union[str, Path]) -> Path:
    """``path`` unless it is a symbolic link: a folder a library creates files in (TensorBoard's), or a file
    appended to later, checked before a run starts rather than after its first epoch."""
    if Path(path).is_symlink():
        raise ValueError(f"{path}: is a symbolic link; output is never written through a link (remove it)")
    return Path(path)


class LogFileHandler(logging.FileHandler):
    """``logging.FileHandler`` (append) whose file is opened by :func:`open_output`: never through a link. A
    write that fails (a full disk) is reported once, in one line, and that file's log stops there, instead of
    a traceback on every later log line."""

    def __init__(self, path: Union[str, Path]):
        self.failed = False
        super().__init__(path, mode="a", encoding="utf-8")

    def _open(self):
        return open_output(self.baseFilename, self.mode, self.encoding)

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        self.failed = True
        sys.stderr.write(f"warning: {self.baseFilename}: cannot write the log ({sys.exc_info()[1]}); it stops "
                         "here\n")
