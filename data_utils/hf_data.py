"""Rows of a task's ``data:`` source (CSV/JSON/Parquet files, a hub dataset, a ``save_to_disk`` folder), read
with ``datasets`` and checked into the same ``CanonicalSplit`` a canonical TSV gives, so prepro_std.py writes the
same shards from either.

``datasets`` keeps its memory-mapped Arrow copy of local files in its own cache (``HF_DATASETS_CACHE``) and honours
``HF_DATASETS_OFFLINE``. Labels are mapped to the task's ``labels`` by name: a ClassLabel column by its names,
strings as they are, integers as their decimal text; a label outside the list is refused with its row.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, Optional, Sequence

from data_utils.hf_spec import Columns, SplitSource
from data_utils.task_def import DataFormat, TaskDef
from data_utils.tsv import CanonicalSplit, first_seen


class HfDataError(ValueError):
    """A problem with a ``data:`` source, as one line naming the source, the column and the row."""


def import_datasets():
    """The ``datasets`` package, or a one-line error saying how to get it."""
    try:
        import datasets
    except ImportError:
        raise HfDataError("reading a data: source needs the datasets package (pip install datasets; it is in "
                          "requirements.txt)") from None
    return datasets


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_source(source: SplitSource):
    """The ``datasets.Dataset`` of one split (memory-mapped Arrow)."""
    datasets = import_datasets()
    where = source.describe()
    for path in source.files + ((source.saved,) if source.saved else ()):
        if not Path(path).exists():
            raise HfDataError(f"{path}: not found")
    # datasets keys its Arrow copy of local files by path and mtime only, so an edit that keeps the mtime (cp -p,
    # a coarse-clock file system) would be read from the stale copy: local files are parsed afresh every time.
    fresh = "force_redownload"
    try:
        if source.files:
            return datasets.load_dataset(source.format, data_files=list(source.files), split="train",
                                         download_mode=fresh)
        if source.saved:
            loaded = datasets.load_from_disk(source.saved)
        else:
            local = Path(source.dataset).is_dir()
            return datasets.load_dataset(source.dataset, source.config, split=source.split,
                                         download_mode=fresh if local else None)
    except Exception as exc:  # datasets raises many kinds (FileNotFoundError, ValueError, ArrowInvalid, ...)
        raise HfDataError(f"{where}: cannot read it with datasets: {_first_line(exc)}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if source.split is None or source.split not in loaded:
            what = "names no split" if source.split is None else f"has no split {source.split!r}"
            raise HfDataError(f"{source.saved}: a saved DatasetDict; the task's data {what} (its splits: "
                              f"{', '.join(loaded)})")
        return loaded[source.split]
    if source.split is not None:
        raise HfDataError(f"{source.saved}: a saved Dataset has no splits; remove split: {source.split}")
    return loaded


def source_digest(source: SplitSource, dataset=None) -> bytes:
    """What the shard depends on: the files' bytes, the saved folder's files, or the hub dataset's fingerprint."""
    h = hashlib.sha256()
    if source.files or source.saved:
        paths = list(source.files) or sorted(p for p in Path(source.saved).rglob("*") if p.is_file())
        for path in paths:
            h.update(str(path).encode("utf-8") + b"\0")
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    h.update(block)
    else:
        h.update(repr((source.dataset, source.config, source.split)).encode("utf-8"))
        h.update(str(getattr(dataset if dataset is not None else load_source(source), "_fingerprint", "")).encode())
    return h.digest()


# ------------------------------------------------------------------------------------------ columns
def run_glue_texts(column_names: Sequence[str], label: str) -> tuple[str, Optional[str]]:
    """run_glue.py's choice of text columns: sentence1/sentence2 when both exist, else the first two non-label
    columns, else the only one (then the task has one text)."""
    rest = [c for c in column_names if c != label]
    if "sentence1" in rest and "sentence2" in rest:
        return "sentence1", "sentence2"
    if not rest:
        raise ValueError(f"no text column (the columns are {list(column_names)})")
    return rest[0], rest[1] if len(rest) > 1 else None


def text_columns(td: TaskDef, columns: Columns, column_names: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """(premise column, hypothesis columns) for the task's data format; unset ones follow run_glue.py's rule."""
    want = {DataFormat.PremiseOnly: 0, DataFormat.PremiseAndOneHypothesis: 1}.get(td.data_format, td.n_class)
    premise, hyps = columns.premise, columns.hypothesis
    if premise is None or (hyps is None and want):
        first, second = run_glue_texts(column_names, columns.label)
        premise = premise or first
        hyps = hyps if hyps is not None else ((second,) if second is not None and want == 1 else None)
        if hyps is None and want:
            raise ValueError(f"columns: a {td.data_format.name} task needs hypothesis column(s); name them as "
                             "columns: {hypothesis: ...}")
    hyps = hyps or ()
    if len(hyps) != want:
        raise ValueError(f"columns: a {td.data_format.name} task takes {want} hypothesis column(s), got "
                         f"{list(hyps)}")
    return premise, tuple(hyps)


# ------------------------------------------------------------------------------------------ rows
def _label_name(value: Any, names: Optional[Sequence[str]]) -> str:
    """A label cell as a name of the task's label list (ClassLabel ids through the feature's names)."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"label {value!r} is not a class name or id")
    if names is not None and isinstance(value, int):
        if not 0 <= value < len(names):
            raise ValueError(f"label {value} is not an id of the column's ClassLabel names {list(names)}")
        return names[value]
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # CSV columns with an empty cell come back as floats
    if isinstance(value, (int, str)):
        return str(value)
    raise ValueError(f"label {value!r} ({type(value).__name__}) is not a class name or id")


def _regression(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"regression label {value!r} is not a finite number")
    return float(value)


def read_split(td: TaskDef, split: str, source: SplitSource, dataset=None) -> CanonicalSplit:
    """The checked rows of one split (``dataset``: the split already loaded with :func:`load_source`)."""
    ds = dataset if dataset is not None else load_source(source)
    where, cols, names = source.describe(), td.data.columns, list(ds.column_names)
    try:
        premise, hyps = text_columns(td, cols, names)
    except ValueError as exc:
        raise HfDataError(f"{where}: task {td.name}: {exc}") from None
    labelled = td.has_labels(split)
    needed = [premise, *hyps] + ([cols.label] if labelled else []) + ([cols.uid] if cols.uid else [])
    for col in needed:
        if col not in names:
            raise HfDataError(f"{where}: task {td.name}: column {col!r} not found; the columns are {names}")
    n = len(ds)
    if n == 0:
        raise HfDataError(f"{where}: task {td.name}: split {split} has no rows")
    texts = {col: list(ds[col]) for col in (premise, *hyps)}
    for col, values in texts.items():
        for i, text in enumerate(values):
            if text is not None and not isinstance(text, str):  # e.g. run_glue.py's rule picked an idx column
                raise HfDataError(f"{where}: row {i}, column {col!r}: {type(text).__name__} {text!r} is not text "
                                  f"(the task's text columns: {list(texts)})")
            if not isinstance(text, str) or not text.strip():
                raise HfDataError(f"{where}: row {i}, column {col!r}: the text is empty or not a string ({text!r})")
    uids = [str(u) for u in ds[cols.uid]] if cols.uid else [str(i) for i in range(n)]
    for i, uid in enumerate(uids):
        if not uid.strip():
            raise HfDataError(f"{where}: row {i}, column {cols.uid!r}: the uid is empty")
    seen: dict[str, int] = {}
    for i, uid in enumerate(uids):
        first = first_seen(uid, seen, i)
        if first != i:
            raise HfDataError(f"{where}: row {i}, column {cols.uid!r}: uid {uid!r} repeats row {first}")
    labels = _labels(td, ds, cols.label, where) if labelled else _test_labels(td, ds, cols.label, where)
    hyp_rows = None
    if len(hyps) == 1:
        hyp_rows = texts[hyps[0]]
    elif hyps:
        hyp_rows = list(zip(*(texts[h] for h in hyps)))
    return CanonicalSplit(where, uids, labels, texts[premise], hyp_rows)


def _test_labels(td: TaskDef, ds, column: str, where: str) -> list:
    """A test split keeps its labels when every one is the task's (as a canonical TSV's test split does: SNLI's
    gold test labels); otherwise (no label column, HF's -1 placeholders) every row gets the placeholder."""
    if column in ds.column_names:
        try:
            return _labels(td, ds, column, where)
        except HfDataError:
            pass
    return [td.placeholder_label()] * len(ds)


def _labels(td: TaskDef, ds, column: str, where: str) -> list:
    feature = ds.features[column]
    names = list(feature.names) if hasattr(feature, "names") else None  # a ClassLabel column
    out = []
    for i, value in enumerate(ds[column]):
        try:
            out.append(_regression(value) if td.is_regression else td.label_id(_label_name(value, names)))
        except ValueError as exc:
            raise HfDataError(f"{where}: row {i}, column {column!r}: {exc}") from None
    return out
