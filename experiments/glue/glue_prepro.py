"""Raw GLUE files (``glue_data/<TASK>/`` layout) -> canonical TSVs ``{task}_{split}.tsv``.

Canonical rows are ``uid, label, premise[, hypothesis]`` (tab-separated, no header, UTF-8); test splits carry a
placeholder label (the task's first label, or 0.0 for Regression) unless their file holds gold labels (SNLI,
SciTail). Raw files are split on tabs only, quotes being plain text (``csv.QUOTE_NONE`` semantics). Columns are
found by header name, so a file whose header moved a column still converts right; only CoLA's train/dev have no
header and are read by position. Labels are checked against the task-definition YAML.

Uids are those MT-DNN's and the SAGE repository's glue_prepro.py write, so shards made from the same files are
the same: the index column for SST-2 test, QNLI, RTE, MNLI, SNLI and QQP test; elsewhere (CoLA, SST-2 train/dev,
MRPC, STS-B, QQP train/dev, WNLI, SciTail) the 0-based number of the row among the rows converted.

Beyond GLUE, as in MT-DNN's and the SAGE authors' task definitions: SNLI (``SNLI/`` or ``snli_1.0/``: the GLUE
layout ``{train,dev,test}.tsv`` that MT-DNN reads, else the release's ``snli_1.0_{train,dev,test}.jsonl`` or its
``.txt`` files) and SciTail (``SciTail/`` or ``SciTailV1.1/``: ``tsv_format/scitail_1.0_{train,dev,test}.tsv``,
headerless premise, hypothesis, label). SNLI pairs whose gold label is ``-`` (no annotator majority) are left
out, as MT-DNN does, and counted.

A missing task folder or file is reported and skipped; a malformed row stops the run with ``file:line`` unless
``--skip_bad_rows`` (each skipped row is still reported). MNLI dev also converts from the Hugging Face Arrow
exports in ``MNLI/hf_datasets_format/`` when the official ``dev_*.tsv`` files are absent.

MT-DNN's command line works too: ``--root_dir data`` reads ``data/<TASK>/`` and writes ``data/canonical_data/``;
its ``--old_glue`` and ``--seed`` get one notice each (mt_dnn/cli_flags.py).
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

ROOT = Path(__file__).resolve().parents[2]
if not __package__:  # run by its file path, as MT-DNN's README types it: the same command as a module of this
    # checkout (relative paths keep meaning the caller's directory)
    _path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    os.execve(sys.executable, [sys.executable, "-m", "experiments.glue.glue_prepro", *sys.argv[1:]],
              {**os.environ, "PYTHONPATH": _path})

from data_utils.task_def import TaskDef, TaskDefError, load_task_defs  # noqa: E402
from data_utils.safe_load import DataFileError, loads_json  # noqa: E402
from data_utils.tsv import TsvError, iter_tsv, read_lines, write_tsv  # noqa: E402
from mt_dnn.cli_flags import GLUE_PREPRO  # noqa: E402

Col = Union[str, int]  # a header name, or a position in a headerless file


@dataclass(frozen=True)
class RawFile:
    """Where one canonical split comes from inside a GLUE task folder."""
    split: str
    name: str
    premise: Col
    hypothesis: Optional[Col] = None
    label: Optional[Col] = None        # None: unlabelled (test) file
    uid: Optional[Col] = None          # None: the 0-based number of the row among the rows converted
    header: bool = True
    n_cols: Optional[int] = None       # headerless files only
    fmt: str = "tsv"                   # or "jsonl": one JSON object per line, columns are its keys
    no_gold: Optional[Col] = None      # a column whose "-" marks a pair without a gold label: left out
    extra: bool = False                # a split task defs may leave out (MNLI's ax_test): then not converted


@dataclass(frozen=True)
class ArrowFile:
    """A Hugging Face Arrow export used for ``split`` when its official TSV is absent (MNLI dev)."""
    split: str
    name: str
    label_names: tuple[str, ...]       # HF's class order: position = the Arrow file's integer label


@dataclass(frozen=True)
class GlueTask:
    """``files`` may list several sources for one split: the first that exists is converted."""
    folder: str
    files: tuple[RawFile, ...]
    arrow: tuple[ArrowFile, ...] = ()
    other_folders: tuple[str, ...] = ()  # other names the folder goes by (a release's own archive name)


def _pair(index: Optional[str], first: str, second: str, label: str, test_index: Optional[str] = None):
    return (RawFile("train", "train.tsv", first, second, label, index),
            RawFile("dev", "dev.tsv", first, second, label, index),
            RawFile("test", "test.tsv", first, second, None, test_index))


_MNLI_HF = ("entailment", "neutral", "contradiction")


def _snli(split: str) -> tuple[RawFile, ...]:
    """The GLUE layout MT-DNN reads (``{split}.tsv``), else the release's JSON-lines file, else its tab-separated
    .txt (same columns as the JSON, with a header). Every SNLI file, test included, holds gold labels."""
    glue = RawFile(split, f"{split}.tsv", "sentence1", "sentence2", "gold_label", "index", no_gold="gold_label")
    return (glue,) + tuple(RawFile(split, f"snli_1.0_{split}.{ext}", "sentence1", "sentence2", "gold_label",
                                   "pairID", fmt=fmt, no_gold="gold_label")
                           for ext, fmt in (("jsonl", "jsonl"), ("txt", "tsv")))


def _scitail(split: str) -> RawFile:
    return RawFile(split, f"tsv_format/scitail_1.0_{split}.tsv", premise=0, hypothesis=1, label=2, header=False,
                   n_cols=3)

GLUE_TASKS: dict[str, GlueTask] = {
    "cola": GlueTask("CoLA", (
        RawFile("train", "train.tsv", premise=3, label=1, header=False, n_cols=4),
        RawFile("dev", "dev.tsv", premise=3, label=1, header=False, n_cols=4),
        RawFile("test", "test.tsv", premise="sentence"))),
    "sst": GlueTask("SST-2", (
        RawFile("train", "train.tsv", premise="sentence", label="label"),
        RawFile("dev", "dev.tsv", premise="sentence", label="label"),
        RawFile("test", "test.tsv", premise="sentence", uid="index"))),
    "mrpc": GlueTask("MRPC", _pair(None, "#1 String", "#2 String", "Quality")),
    "stsb": GlueTask("STS-B", _pair(None, "sentence1", "sentence2", "score")),
    "qqp": GlueTask("QQP", _pair(None, "question1", "question2", "is_duplicate", test_index="id")),
    "mnli": GlueTask("MNLI", (
        RawFile("train", "train.tsv", "sentence1", "sentence2", "gold_label", "index"),
        RawFile("matched_dev", "dev_matched.tsv", "sentence1", "sentence2", "gold_label", "index"),
        RawFile("mismatched_dev", "dev_mismatched.tsv", "sentence1", "sentence2", "gold_label", "index"),
        RawFile("matched_test", "test_matched.tsv", "sentence1", "sentence2", None, "index"),
        RawFile("mismatched_test", "test_mismatched.tsv", "sentence1", "sentence2", None, "index"),
        # GLUE's diagnostic set (AX) is scored with the MNLI model; it lives beside MNLI in glue_data/diagnostic/
        RawFile("ax_test", "../diagnostic/diagnostic.tsv", "sentence1", "sentence2", None, "index", extra=True)),
        arrow=(ArrowFile("matched_dev", "hf_datasets_format/validation_matched.arrow", _MNLI_HF),
               ArrowFile("mismatched_dev", "hf_datasets_format/validation_mismatched.arrow",
                         _MNLI_HF))),
    "qnli": GlueTask("QNLI", _pair("index", "question", "sentence", "label", test_index="index")),
    "rte": GlueTask("RTE", _pair("index", "sentence1", "sentence2", "label", test_index="index")),
    "wnli": GlueTask("WNLI", _pair(None, "sentence1", "sentence2", "label")),
}

#: Not GLUE (download.sh does not fetch them; place the releases under --glue_dir), in the authors' task def.
OTHER_TASKS: dict[str, GlueTask] = {
    "snli": GlueTask("SNLI", _snli("train") + _snli("dev") + _snli("test"), other_folders=("snli_1.0",)),
    "scitail": GlueTask("SciTail", (_scitail("train"), _scitail("dev"), _scitail("test")),
                        other_folders=("SciTailV1.1",)),
}
TASKS: dict[str, GlueTask] = {**GLUE_TASKS, **OTHER_TASKS}


class BadRow(TsvError):
    """One malformed data row (skippable with --skip_bad_rows)."""


NO_GOLD = object()  # a row the source marks as having no gold label (SNLI's "-"): left out and counted


# ------------------------------------------------------------------------------------------ TSV source
def _positions(raw: RawFile, path: Path, header: Optional[list[str]]) -> dict[str, Optional[int]]:
    wanted = {"uid": raw.uid, "label": raw.label, "premise": raw.premise, "hypothesis": raw.hypothesis,
              "no_gold": raw.no_gold}
    if header is None:
        return wanted
    pos = {}
    for role, name in wanted.items():
        if name is not None and name not in header:
            raise TsvError(f"{path}:1: no column {name!r} in the header ({', '.join(header)})")
        pos[role] = None if name is None else header.index(name)
    return pos


_NO_BREAKS = str.maketrans({"\t": " ", "\r": " ", "\n": " "})


def _clean(text: str) -> str:
    """Tabs and line breaks would split a canonical row; they become spaces."""
    return text.translate(_NO_BREAKS)


def _placeholder(td: TaskDef) -> str:
    return "0.0" if td.is_regression else td.labels[0]


def _row(td: TaskDef, path: Path, ln: int, fields, pos: dict):
    """A canonical row from a split line (``fields`` a list) or a JSON object (``fields`` a dict)."""
    if pos.get("no_gold") is not None and fields[pos["no_gold"]].strip() == "-":
        return NO_GOLD
    texts = [fields[pos["premise"]]] + ([fields[pos["hypothesis"]]] if pos["hypothesis"] is not None else [])
    for role, text in zip(("premise", "hypothesis"), texts):
        if not text.strip():
            raise BadRow(f"{path}:{ln}: the {role} text is empty")
    uid = None if pos["uid"] is None else fields[pos["uid"]]  # None: numbered when collected
    if uid is not None and not uid.strip():
        raise BadRow(f"{path}:{ln}: the uid is empty")
    if pos["label"] is None:
        label = _placeholder(td)
    else:
        label = fields[pos["label"]].strip()
        try:
            td.parse_label(label)
        except ValueError as exc:
            raise BadRow(f"{path}:{ln}: {exc}") from None
    return [uid, label] + [_clean(t) for t in texts]


def tsv_rows(td: TaskDef, path: Path, raw: RawFile) -> Iterator[Union[list[str], BadRow]]:
    """Canonical rows of one raw GLUE TSV; a malformed row comes as a ``BadRow`` value (the caller decides
    whether to stop or skip), a bad file raises ``TsvError``."""
    lines = iter_tsv(path)
    header = next(lines)[1] if raw.header else None
    pos = _positions(raw, path, header)
    n_cols = len(header) if header is not None else raw.n_cols
    for ln, fields in lines:
        if len(fields) != n_cols:
            yield BadRow(f"{path}:{ln}: expected {n_cols} tab-separated columns"
                         f"{' (as in the header)' if header else ''}, got {len(fields)}")
            continue
        try:
            yield _row(td, path, ln, fields, pos)
        except BadRow as exc:
            yield exc


def jsonl_rows(td: TaskDef, path: Path, raw: RawFile) -> Iterator[Union[list[str], BadRow]]:
    """Canonical rows of a JSON-lines file (SNLI 1.0): one object per line, the RawFile's columns are keys."""
    pos = _positions(raw, path, None)
    for ln, line in enumerate(read_lines(path), start=1):
        try:
            obj = loads_json(line, path, ln)
        except DataFileError as exc:
            yield BadRow(str(exc))
            continue
        missing = [k for k in pos.values() if k is not None and not isinstance((obj or {}).get(k), str)] \
            if isinstance(obj, dict) else ["an object"]
        if missing:
            yield BadRow(f"{path}:{ln}: expected string field(s) {missing}")
            continue
        try:
            yield _row(td, path, ln, obj, pos)
        except BadRow as exc:
            yield exc


# ------------------------------------------------------------------------------------------ Arrow source
def arrow_rows(td: TaskDef, path: Path, arrow: ArrowFile) -> Iterator[Union[list[str], BadRow]]:
    """Canonical rows (or ``BadRow`` values) of a HF Arrow export (columns premise, hypothesis, label, idx)."""
    import pyarrow as pa
    try:
        table = pa.ipc.open_stream(str(path)).read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        raise TsvError(f"{path}: not an Arrow IPC stream ({exc})") from None
    missing = [c for c in ("premise", "hypothesis", "label", "idx") if c not in table.column_names]
    if missing:
        raise TsvError(f"{path}: missing column(s) {missing} (has {table.column_names})")
    cols = [table.column(c).to_pylist() for c in ("idx", "label", "premise", "hypothesis")]
    for i, (idx, label, premise, hypothesis) in enumerate(zip(*cols)):
        if not isinstance(label, int) or not 0 <= label < len(arrow.label_names):
            yield BadRow(f"{path}: row {i}: label {label!r} is not in 0..{len(arrow.label_names) - 1}")
        elif not all(isinstance(t, str) and t.strip() for t in (premise, hypothesis)):
            yield BadRow(f"{path}: row {i}: the {'premise' if not (premise or '').strip() else 'hypothesis'} "
                         "text is empty")
        else:
            name = arrow.label_names[label]
            td.label_id(name)  # the YAML must know HF's label names
            yield [str(idx), name, _clean(premise), _clean(hypothesis)]


# ------------------------------------------------------------------------------------------ driver
def _collect(rows: Iterator, skip_bad: bool, log: Callable[[str], None], where: str = "") -> list[list[str]]:
    out, no_gold = [], 0
    for row in rows:
        if row is NO_GOLD:
            no_gold += 1
        elif isinstance(row, BadRow):
            if not skip_bad:
                raise row
            log(f"skipped: {row}")
        else:
            if row[0] is None:  # MT-DNN's counter: the row's number among the rows converted
                row[0] = str(len(out))
            out.append(row)
    if no_gold:
        log(f"{where}: {no_gold} pairs without a gold label ('-') left out")
    return out


def _sources(task: GlueTask, folder: Path):
    """(split, source path, row generator factory) for each split whose file exists; misses as (split, path, None)."""
    arrow_for = {a.split: a for a in task.arrow}
    choices: dict[str, list[RawFile]] = {}
    for raw in task.files:
        choices.setdefault(raw.split, []).append(raw)
    for split, raws in choices.items():
        raw = next((r for r in raws if (folder / r.name).is_file()), raws[0])
        path = Path(os.path.normpath(folder / raw.name))  # "../diagnostic/..." named without the detour
        if path.is_file():
            reader = jsonl_rows if raw.fmt == "jsonl" else tsv_rows
            yield raw.split, path, lambda td, p=path, r=raw, f=reader: f(td, p, r)
        elif raw.split in arrow_for and (folder / arrow_for[raw.split].name).is_file():
            a = arrow_for[raw.split]
            yield raw.split, folder / a.name, lambda td, p=folder / a.name, a=a: arrow_rows(td, p, a)
        else:
            yield raw.split, path, None


def _wanted(task: GlueTask, split: str, td: TaskDef) -> bool:
    """Every split the converter knows must be in the task def, except the extras a task def may omit."""
    if split in td.split_names:
        return True
    if any(r.extra for r in task.files if r.split == split):
        return False
    raise TaskDefError(f"task '{td.name}': split '{split}' is not in its split_names {list(td.split_names)}")


def convert_task(name: str, td: TaskDef, glue_dir: Path, out_dir: Path, skip_bad: bool = False,
                 log: Callable[[str], None] = print) -> dict[str, int]:
    """Convert one task's files; returns rows written per split (missing files are logged and left out)."""
    task = TASKS[name]
    folder = next((glue_dir / f for f in (task.folder, *task.other_folders) if (glue_dir / f).is_dir()),
                  glue_dir / task.folder)
    if not folder.is_dir():
        log(f"{name}: folder {folder} not found, skipped")
        return {}
    written = {}
    for split, path, make_rows in _sources(task, folder):
        if not _wanted(task, split, td):
            continue
        if make_rows is None:
            log(f"{name} {split}: {path} not found, skipped")
            continue
        rows = _collect(make_rows(td), skip_bad, log, f"{name} {split}")
        if not rows:  # a header-only (or wholly skipped) file would become an empty TSV reported as converted
            raise TsvError(f"{path}: no data rows to convert (the file holds only a header, or every row was "
                           "left out); the previous output, if any, is kept")
        written[split] = write_tsv(out_dir / f"{name}_{split}.tsv", rows)
        log(f"{name} {split}: {written[split]} rows from {path} -> {out_dir / f'{name}_{split}.tsv'}")
    return written


def convert(glue_dir: Path, out_dir: Path, task_def: Path, tasks: Optional[Sequence[str]] = None,
            skip_bad: bool = False, log: Callable[[str], None] = print) -> dict[str, dict[str, int]]:
    defs = load_task_defs(task_def)
    names = list(tasks) if tasks else [t for t in TASKS if t in defs]
    for n in names:
        if n not in TASKS:
            raise TaskDefError(f"--tasks: unknown GLUE task '{n}'; known: {', '.join(TASKS)}")
        if n not in defs:
            raise TaskDefError(f"{task_def}: no definition for GLUE task '{n}'")
    return {n: convert_task(n, defs[n], Path(glue_dir), Path(out_dir), skip_bad, log) for n in names}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="glue_prepro.py",
                                description="Raw GLUE files -> canonical TSVs {task}_{split}.tsv.")
    p.add_argument("--glue_dir", default=None, help="folder with CoLA/, SST-2/, MRPC/, ... (default: data/glue_data)")
    p.add_argument("--out_dir", default=None,
                   help="where {task}_{split}.tsv go (default: data/canonical_data, or ROOT_DIR/canonical_data)")
    p.add_argument("--root_dir", default=None,
                   help="MT-DNN's flag: the folder with CoLA/, SST-2/, ... (as --glue_dir); the TSVs go to "
                        "ROOT_DIR/canonical_data unless --out_dir says otherwise")
    p.add_argument("--task_def", default=str(ROOT / "experiments" / "glue" / "glue_task_def.yml"))
    p.add_argument("--tasks", nargs="+", default=None, help=f"subset of: {' '.join(TASKS)}")
    p.add_argument("--skip_bad_rows", action="store_true",
                   help="skip (and report) malformed rows instead of stopping at the first one")
    GLUE_PREPRO.add_to(p, "MT-DNN and SAGE-repository flags without an effect here")
    return p


def folders(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[Path, Path]:
    """(raw GLUE folder, output folder) from this project's flags or MT-DNN's --root_dir."""
    if args.root_dir is not None and args.glue_dir is not None:
        parser.error(f"--root_dir {args.root_dir} and --glue_dir {args.glue_dir} both name the raw GLUE folder; "
                     "give one")
    glue_dir = Path(args.root_dir or args.glue_dir or "data/glue_data")
    default_out = glue_dir / "canonical_data" if args.root_dir is not None else Path("data/canonical_data")
    return glue_dir, Path(args.out_dir) if args.out_dir is not None else default_out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    glue_dir, out_dir = folders(parser, args)
    for line in GLUE_PREPRO.notices(args):
        print(line, file=sys.stderr)
    try:
        done = convert(glue_dir, out_dir, Path(args.task_def), args.tasks, args.skip_bad_rows,
                       log=lambda msg: print(msg, file=sys.stderr))
    except (TsvError, TaskDefError) as exc:
        print(f"glue_prepro.py: error: {exc}", file=sys.stderr)
        return 1
    if not any(done.values()):
        print(f"glue_prepro.py: error: no GLUE files found under {glue_dir}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
