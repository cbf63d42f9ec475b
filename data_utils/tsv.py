"""Canonical TSV reading: ``uid, label, premise[, hypothesis...]``, tab-separated, no header, UTF-8.

Fields are split on tabs only and quotes are plain characters (``csv.QUOTE_NONE`` semantics): GLUE text holds
stray ``"``. Lines are split on ``\\n`` only (``str.splitlines`` would also break on U+2028, U+0085 and friends,
which occur inside sentences); a trailing ``\\r`` (CRLF files) and a leading BOM are dropped. Every problem is a
``TsvError`` whose message starts with ``file:line``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

from data_utils.atomic import atomic_write
from data_utils.task_def import DataFormat, TaskDef


class TsvError(ValueError):
    """A bad input file, as one line starting with ``file:line``."""


def read_lines(path: Union[str, Path]) -> list[str]:
    """The file's lines without line ends; empty files and invalid UTF-8 are errors naming the line."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise TsvError(f"{path}: file not found") from None
    return decode_lines(data, path)


def decode_lines(data: bytes, path: Union[str, Path]) -> list[str]:
    """``read_lines`` for bytes already read; ``path`` is only used in error messages."""
    if not data.strip():
        raise TsvError(f"{path}: the file is empty")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise TsvError(f"{path}:{line}: invalid UTF-8 (byte 0x{data[exc.start]:02x})") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def iter_tsv(path: Union[str, Path]) -> Iterator[tuple[int, list[str]]]:
    """(1-based line number, tab-split fields) for every line."""
    for i, line in enumerate(read_lines(path), start=1):
        yield i, line.split("\t")


def columns_for(task_def: TaskDef) -> tuple[str, ...]:
    """Column names of the task's canonical TSV."""
    if task_def.data_format is DataFormat.PremiseOnly:
        return ("uid", "label", "premise")
    if task_def.data_format is DataFormat.PremiseAndOneHypothesis:
        return ("uid", "label", "premise", "hypothesis")
    return ("uid", "label", "premise") + tuple(f"hyp_{i + 1}" for i in range(task_def.n_class))


@dataclass
class CanonicalSplit:
    """One split's rows, column-wise (what the batched tokenizer wants).

    ``hypotheses`` is None (PremiseOnly), one string per row (PremiseAndOneHypothesis) or a tuple of
    ``n_class`` strings per row (PremiseAndMultiHypothesis). Test splits get the placeholder label unless
    ``keeps_labels`` says their labels are kept.
    """
    path: str
    uids: list[str]
    labels: list[Union[int, float]]
    premises: list[str]
    hypotheses: Optional[list]

    def __len__(self) -> int:
        return len(self.uids)


def keeps_labels(lines: Sequence[str], task_def: TaskDef, split: str) -> bool:
    """Whether a split's shard carries its TSV's labels: a labelled split always; a test split when every row's
    label is one of the task's (SNLI's and SciTail's test files hold gold labels, which MT-DNN's shards keep),
    otherwise each of its rows gets the placeholder (GLUE's test labels are placeholders anyway)."""
    if task_def.has_labels(split):
        return True
    labels = {fields[1] if len(fields) > 1 else None for fields in (line.split("\t", 2) for line in lines)}
    try:
        return None not in labels and all(task_def.parse_label(label) is not None for label in labels)
    except ValueError:
        return False


def parse_rows(path: Union[str, Path], lines: Sequence[str], first_line: int, task_def: TaskDef,
               split: str, labelled: Optional[bool] = None) -> CanonicalSplit:
    """Validate and split consecutive canonical lines (``first_line`` = 1-based number of ``lines[0]``).

    Checks column count, non-empty uid and text, and labels (``labelled``, by default a split that is not a test
    split; the others get the placeholder). Uid uniqueness spans chunks, so ``check_unique_uids`` does it.
    """
    cols = columns_for(task_def)
    labelled = task_def.has_labels(split) if labelled is None else labelled
    n_cols, placeholder = len(cols), task_def.placeholder_label()
    out = CanonicalSplit(str(path), [], [], [], None if n_cols == 3 else [])
    for ln, line in enumerate(lines, start=first_line):
        fields = line.split("\t")
        if len(fields) != n_cols:
            if not line.strip():
                raise TsvError(f"{path}:{ln}: empty line (expected {n_cols} tab-separated columns)")
            raise TsvError(f"{path}:{ln}: expected {n_cols} tab-separated columns ({', '.join(cols)}) for "
                           f"task {task_def.name} ({task_def.data_format.name}), got {len(fields)}")
        if not fields[0].strip():
            raise TsvError(f"{path}:{ln}: column 1 (uid) is empty")
        for col in range(2, n_cols):
            if not fields[col].strip():
                raise TsvError(f"{path}:{ln}: column {col + 1} ({cols[col]}) is empty")
        if labelled:
            try:
                out.labels.append(task_def.parse_label(fields[1]))
            except ValueError as exc:
                raise TsvError(f"{path}:{ln}: column 2 (label): {exc}") from None
        else:
            out.labels.append(placeholder)
        out.uids.append(fields[0])
        out.premises.append(fields[2])
        if n_cols == 4:
            out.hypotheses.append(fields[3])
        elif n_cols > 4:
            out.hypotheses.append(tuple(fields[3:]))
    return out


def first_seen(uid: str, seen: dict[str, int], line: int) -> int:
    """The line where ``uid`` first appeared (``line`` when it is new; ``seen`` is updated). Predictions are keyed
    by uid, and uids are compared without surrounding whitespace: ``"7 "`` and ``"7"`` are one example twice."""
    return seen.setdefault(uid.strip(), line)


def check_unique_uids(path: Union[str, Path], uids: Sequence[str], first_line: int, seen: dict[str, int]) -> None:
    """Refuse a uid seen before (``seen`` maps uid -> line and is updated)."""
    for ln, uid in enumerate(uids, start=first_line):
        prev = first_seen(uid, seen, ln)
        if prev != ln:
            raise TsvError(f"{path}:{ln}: uid {uid!r} repeats line {prev}")


def read_canonical(path: Union[str, Path], task_def: TaskDef, split: str) -> CanonicalSplit:
    """Read and validate a whole canonical TSV for ``task_def``."""
    data = parse_rows(path, read_lines(path), 1, task_def, split)
    check_unique_uids(path, data.uids, 1, {})
    return data


def write_tsv(path: Union[str, Path], rows: Sequence[Sequence[str]]) -> int:
    """Write rows atomically; a field holding a tab or line break would corrupt the file, so it is refused."""
    with atomic_write(path) as handle:
        for i, row in enumerate(rows, start=1):
            for field in row:
                if "\t" in field or "\n" in field or "\r" in field:
                    raise TsvError(f"{path}: row {i}: field {field[:40]!r} contains a tab or line break")
            handle.write("\t".join(row) + "\n")
    return len(rows)
