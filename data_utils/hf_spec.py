"""The ``data:`` and ``columns:`` fields of a task definition: where a task's rows come from when they are not
canonical TSVs (CSV/JSON/Parquet files, a ``datasets`` hub dataset, or a folder written by ``save_to_disk``).

Only the YAML is checked here (no ``datasets`` import), so loading a task file stays cheap; data_utils/hf_data.py
reads the rows. Relative ``files`` and ``saved`` paths are resolved against the task-definition file's folder,
so a task file works from any working directory; a ``dataset`` is a ``datasets.load_dataset`` name, which that
library resolves (a hub name, or a folder relative to the working directory).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

#: File suffix -> the ``datasets`` builder that reads it (``format:`` names one explicitly).
FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
SOURCE_KEYS = ("files", "format", "dataset", "config", "split", "saved")
COLUMN_KEYS = ("premise", "hypothesis", "label", "uid")

Error = Callable[[str], Exception]  # reason -> the exception to raise (it names file:line, task and field)


@dataclass(frozen=True)
class SplitSource:
    """One split's rows: local ``files`` (read with ``format``), hub ``dataset``/``config``/``split`` as for
    ``datasets.load_dataset``, or a ``saved`` folder (``datasets.load_from_disk``; ``split`` picks one split of a
    saved DatasetDict)."""
    files: tuple[str, ...] = ()
    format: Optional[str] = None
    dataset: Optional[str] = None
    config: Optional[str] = None
    split: Optional[str] = None
    saved: Optional[str] = None

    def describe(self) -> str:
        """How error lines name the source: the file, the saved folder or the hub dataset and split."""
        if self.files:
            return self.files[0] if len(self.files) == 1 else f"{self.files[0]} (+{len(self.files) - 1} files)"
        if self.saved:
            return self.saved + (f" [split {self.split}]" if self.split else "")
        name = self.dataset + (f"/{self.config}" if self.config else "")
        return f"dataset {name} [split {self.split}]"


@dataclass(frozen=True)
class Columns:
    """Which columns hold the texts, the label and the uid. Texts left unset follow run_glue.py's rule
    (``sentence1``/``sentence2`` when both exist, else the first non-label columns); the uid defaults to the
    row number."""
    premise: Optional[str] = None
    hypothesis: Optional[tuple[str, ...]] = None  # one column, or one per hypothesis (Ranking)
    label: str = "label"
    uid: Optional[str] = None


@dataclass(frozen=True)
class DataSpec:
    """A task's data: split name -> source, in the order given, and the column mapping."""
    splits: tuple[tuple[str, SplitSource], ...]
    columns: Columns

    def source(self, split: str) -> Optional[SplitSource]:
        return dict(self.splits).get(split)

    @property
    def split_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.splits)


def _text(raw: Any, what: str, error: Error) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise error(f"{what} must be a non-empty string, got {type(raw).__name__} {raw!r}"[:200])
    return raw


def _resolve(path: str, base: Optional[Path]) -> str:
    p = Path(path).expanduser()
    return str(p if p.is_absolute() or base is None else base / p)


def _source(split: str, raw: Any, base: Optional[Path], error: Error) -> SplitSource:
    if isinstance(raw, str):  # `train: train.csv` is short for `train: {files: train.csv}`
        raw = {"files": raw}
    if not isinstance(raw, dict):
        raise error(f"{split}: must be a file name or a mapping with files, dataset or saved")
    for key in raw:
        if key not in SOURCE_KEYS:
            raise error(f"{split}: unknown key {key!r}; known: {', '.join(SOURCE_KEYS)}")
    kinds = [k for k in ("files", "dataset", "saved") if k in raw]
    if len(kinds) != 1:
        raise error(f"{split}: give exactly one of files, dataset, saved (got {', '.join(kinds) or 'none'})")
    values = {k: _text(raw[k], f"{split}.{k}", error) for k in ("format", "dataset", "config", "split", "saved")
              if k in raw}
    if "files" in raw:
        files = raw["files"] if isinstance(raw["files"], list) else [raw["files"]]
        if not files:
            raise error(f"{split}.files: the list is empty")
        values["files"] = tuple(_resolve(_text(f, f"{split}.files", error), base) for f in files)
        if "config" in raw or "split" in raw:
            raise error(f"{split}: config and split are for a dataset or a saved folder, not files")
        values["format"] = _file_format(split, values["files"], values.get("format"), error)
    elif "format" in raw:
        raise error(f"{split}.format: only files take a format")
    if "saved" in raw:
        values["saved"] = _resolve(values["saved"], base)
        if "config" in raw:
            raise error(f"{split}.config: a saved folder has no configs (use split to pick a DatasetDict split)")
    if "dataset" in raw and "split" not in raw:
        raise error(f"{split}: a dataset needs its split (as for datasets.load_dataset), e.g. split: train")
    return SplitSource(**values)


def _file_format(split: str, files: tuple[str, ...], given: Optional[str], error: Error) -> str:
    if given is not None:
        if given not in set(FORMATS.values()):
            raise error(f"{split}.format: unknown format {given!r}; known: {', '.join(sorted(set(FORMATS.values())))}")
        return given
    found = {FORMATS.get(Path(f).suffix.lower()) for f in files}
    if None in found or len(found) != 1:
        raise error(f"{split}.files: cannot tell the format from the suffixes of {list(files)} "
                    f"(known: {', '.join(FORMATS)}); add format: csv, json or parquet")
    return found.pop()


def _columns(raw: Any, error: Error) -> Columns:
    if raw is None:
        return Columns()
    if not isinstance(raw, dict):
        raise error(f"must be a mapping ({', '.join(COLUMN_KEYS)} -> column name)")
    for key in raw:
        if key not in COLUMN_KEYS:
            raise error(f"unknown key {key!r}; known: {', '.join(COLUMN_KEYS)}")
    values = {k: _text(raw[k], k, error) for k in ("premise", "label", "uid") if k in raw}
    if "hypothesis" in raw:
        hyp = raw["hypothesis"]
        hyp = hyp if isinstance(hyp, list) else [hyp]
        values["hypothesis"] = tuple(_text(h, "hypothesis", error) for h in hyp)
    return Columns(**values)


def parse_data(raw_data: Any, raw_columns: Any, base: Optional[Path], data_error: Error,
               columns_error: Error) -> DataSpec:
    """The checked ``data:`` block (split -> source) and ``columns:`` mapping of one task."""
    if not isinstance(raw_data, dict) or not raw_data:
        raise data_error("must be a mapping of split name -> source, e.g. {train: train.csv, dev: dev.csv}")
    splits = tuple((str(name), _source(str(name), raw, base, data_error)) for name, raw in raw_data.items())
    return DataSpec(splits, _columns(raw_columns, columns_error))
