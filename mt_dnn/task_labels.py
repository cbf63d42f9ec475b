"""What each task's head was trained to output: its label list, task type and n_class, saved with the model.

Shards hold class ids, not label names, so a task definition whose labels were reordered after training leaves
dev metrics unchanged while every prediction written by name (GLUE submission, an export's ``id2label``) flips.
``task_labels.json`` in every checkpoint folder records the trained definition; whatever rebuilds a trained
model from a YAML compares the two with :func:`check` and refuses a disagreement in one line that names the
task and both definitions. A checkpoint written before this file existed has none: :func:`read` returns None
and the caller goes on as before.

A saved signature is ``{"task_type": "Classification", "n_class": 3, "labels": ["a", "b", "c"]}``; callers that
know only part of it (a foreign checkpoint's label vocabulary) may give a subset of these keys, and only the
keys given are compared.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Mapping, Optional, Union

from data_utils.atomic import atomic_write
from data_utils.safe_load import DataFileError, loads_json
from data_utils.task_def import TaskDef, TaskType
from mt_dnn.checkpoint import CheckpointError

FILE = "task_labels.json"
VERSION = 1
KEYS = ("task_type", "n_class", "labels")
MAX_BYTES = 16 << 20  # a few hundred tasks with thousands of labels each fit many times over
_QUOTE = 300


def signature(task_def: TaskDef) -> dict:
    """The part of a task definition that fixes what each output of its head means."""
    return {"task_type": task_def.task_type.name, "n_class": task_def.n_class,
            "labels": list(task_def.labels) if task_def.labels is not None else None}


def dumps(task_defs: Mapping[str, TaskDef]) -> str:
    """The file's text for these tasks (what :func:`write` writes; checkpoint writers pass it as an extra file)."""
    tasks = {name: signature(td) for name, td in task_defs.items()}
    return json.dumps({"version": VERSION, "tasks": tasks}, indent=2, ensure_ascii=False) + "\n"


def write(folder: Union[str, Path], task_defs: Mapping[str, TaskDef]) -> Path:
    """Write ``folder/task_labels.json`` atomically (a temp file, then a rename)."""
    path = Path(folder) / FILE
    with atomic_write(path) as handle:
        handle.write(dumps(task_defs))
    return path


def read(folder: Union[str, Path]) -> Optional[dict[str, dict]]:
    """Task name -> saved signature, or None when the checkpoint has no such file (written before it existed).
    A file that is not one of these raises CheckpointError naming it."""
    path = Path(folder) / FILE
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if len(raw) > MAX_BYTES:
        raise CheckpointError(f"{path}: larger than {MAX_BYTES >> 20} MiB; not a task-label file")
    try:
        data = loads_json(raw.decode("utf-8"), path)  # the project's JSON bounds (depth, long integers)
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON (not UTF-8 at byte offset {exc.start})") from None
    except DataFileError as exc:
        raise CheckpointError(str(exc)) from None
    return parse(data, str(path))


def parse(data: object, where: str) -> dict[str, dict]:
    """The ``tasks`` of a loaded file, each signature checked for the types :func:`check` relies on."""
    if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("tasks"), dict):
        raise CheckpointError(f"{where}: not a task-label file (expected {{\"version\": {VERSION}, \"tasks\": "
                              "{...}})")
    for name, sig in data["tasks"].items():
        if not _valid(sig):
            raise CheckpointError(f"{where}: task {name!r}: expected task_type (a task type name), n_class (an "
                                  "integer) and labels (a list of strings or null)")
    return data["tasks"]


def _valid(sig: object) -> bool:
    if not isinstance(sig, dict) or set(sig) - set(KEYS):
        return False
    kind, n, labels = sig.get("task_type"), sig.get("n_class"), sig.get("labels")
    return ((kind is None or kind in TaskType.__members__)
            and (n is None or (isinstance(n, int) and not isinstance(n, bool)))
            and (labels is None or (isinstance(labels, list) and all(isinstance(x, str) for x in labels))))


def describe(sig: Mapping) -> str:
    """``Classification with labels ['a', 'b']`` (or ``... with n_class N`` for a task without label names)."""
    kind = sig.get("task_type", "a task")
    if sig.get("labels") is not None:
        text = repr(list(sig["labels"]))
        return f"{kind} with labels {text if len(text) <= _QUOTE else text[:_QUOTE - 3] + '...'}"
    return f"{kind} with n_class {sig['n_class']}" if sig.get("n_class") is not None else str(kind)


def difference(saved: Mapping[str, dict], task_defs: Mapping[str, TaskDef], where: str, tasks: Iterable[str],
               source: str = "the task definition") -> Optional[str]:
    """The first of ``tasks`` whose definition differs from its saved signature, as one line (None: all agree).
    Tasks without a saved signature, or not in ``task_defs``, are not compared."""
    for task in tasks:
        if task not in saved or task not in task_defs:
            continue
        then = {k: v for k, v in saved[task].items() if k in KEYS}
        now = {k: v for k, v in signature(task_defs[task]).items() if k in then}
        if then != now:
            return (f"{where}: task '{task}' was trained as {describe(then)}, but {source} defines it as "
                    f"{describe(now)}")
    return None


def check(saved: Mapping[str, dict], task_defs: Mapping[str, TaskDef], where: str, tasks: Iterable[str],
          source: str = "the task definition",
          hint: str = "the head's outputs follow the trained order: restore it in the task definition") -> None:
    """Raise ValueError (one line: ``where``, the task, both definitions, then ``hint``) when one of ``tasks``
    is defined otherwise in ``task_defs`` than it was trained (``saved``, e.g. from :func:`read`)."""
    found = difference(saved, task_defs, where, tasks, source)
    if found is not None:
        raise ValueError(f"{found}; {hint}")
