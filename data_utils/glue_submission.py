"""Assemble a GLUE benchmark submission folder from the per-task submission TSVs that train.py and predict.py write.

Inputs are runs or files. A run's output folder contributes the test predictions of its best epoch (the epoch in
``best/metrics.json``), any other folder those with ``--tag`` (e.g. ``predict`` for predict.py's files), and a file
``{task}_{split}_submission_{tag}.tsv`` itself. Each file is checked against what the benchmark's server expects
(header ``index<TAB>prediction``, its label names or finite floats for STS-B, every test index 0..N-1 exactly once,
N the official test size) and copied under the benchmark's file name; the folder appears only when complete.
"""
from __future__ import annotations

import math
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from data_utils.atomic import atomic_folder, atomic_write, clean_stale_temps
from data_utils.safe_load import DataFileError, read_json, read_text
from data_utils.safe_paths import check_output_root, plain_name

HEADER = "index\tprediction"
_INDEX = re.compile(r"[0-9]+\Z")  # ASCII digits only: str.isdigit() also takes '٣' and '²'
SUFFIX = "_submission_"
_BINARY = ("0", "1")
_NLI3 = ("entailment", "neutral", "contradiction")
_NLI2 = ("entailment", "not_entailment")


@dataclass(frozen=True)
class GlueFile:
    name: str                          # the benchmark's file name
    labels: Optional[tuple[str, ...]]  # None: a float (STS-B)
    rows: int                          # the official test set's size


# this project's {task}_{split} -> the benchmark's file (AX: the MNLI model's predictions on the diagnostic set)
GLUE_FILES: dict[str, GlueFile] = {
    "cola_test": GlueFile("CoLA.tsv", _BINARY, 1063),
    "sst_test": GlueFile("SST-2.tsv", _BINARY, 1821),
    "mrpc_test": GlueFile("MRPC.tsv", _BINARY, 1725),
    "stsb_test": GlueFile("STS-B.tsv", None, 1379),
    "qqp_test": GlueFile("QQP.tsv", _BINARY, 390965),
    "mnli_matched_test": GlueFile("MNLI-m.tsv", _NLI3, 9796),
    "mnli_mismatched_test": GlueFile("MNLI-mm.tsv", _NLI3, 9847),
    "qnli_test": GlueFile("QNLI.tsv", _NLI2, 5463),
    "rte_test": GlueFile("RTE.tsv", _NLI2, 3000),
    "wnli_test": GlueFile("WNLI.tsv", _BINARY, 146),
    "mnli_ax_test": GlueFile("AX.tsv", _NLI3, 1104),
}


class SubmissionError(ValueError):
    """One line naming the file (and line) that cannot go into the submission."""


# ---------------------------------------------------------------------------------------------- finding files
def dataset_and_tag(path: Path) -> tuple[str, str]:
    """``rte_test_submission_2.tsv`` -> ("rte_test", "2")."""
    stem = path.name[:-len(".tsv")] if path.name.endswith(".tsv") else ""
    if SUFFIX not in stem:
        raise SubmissionError(f"{path}: not a submission file (expected {{task}}_{{split}}{SUFFIX}{{tag}}.tsv)")
    dataset, _, tag = stem.rpartition(SUFFIX)
    return dataset, tag


def best_epoch_tag(run: Path) -> Optional[str]:
    """The epoch of a run's best checkpoint, which names that epoch's submission files (``updates_N``: the
    evaluation after N updates inside an epoch, with --save_per_updates_on)."""
    metrics = run / "best" / "metrics.json"
    if not metrics.is_file():
        return None
    try:
        record = read_json(metrics)
        return f"updates_{int(record['updates'])}" if "updates" in record else str(int(record["epoch"]))
    except DataFileError as exc:
        raise SubmissionError(str(exc)) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise SubmissionError(f"{metrics}: no readable 'epoch' ({exc})") from None


def files_in(folder: Path, tag: Optional[str]) -> dict[str, Path]:
    """The benchmark datasets' submission files in ``folder`` for ``tag`` (default: the run's best epoch)."""
    tag = tag if tag is not None else best_epoch_tag(folder)
    found = {}
    for path in sorted(folder.glob(f"*{SUFFIX}*.tsv")):
        dataset, file_tag = dataset_and_tag(path)
        if dataset in GLUE_FILES and (tag is None or file_tag == tag):
            found.setdefault(dataset, []).append(path)
    ambiguous = {d: ps for d, ps in found.items() if len(ps) > 1}
    if ambiguous:
        dataset, paths = next(iter(ambiguous.items()))
        tags = ", ".join(dataset_and_tag(p)[1] for p in paths)
        raise SubmissionError(f"{folder}: {dataset} has submission files for tags {tags} and no best/metrics.json "
                              "says which; pass --tag")
    return {d: ps[0] for d, ps in found.items()}


def collect(inputs: Sequence[Path], tag: Optional[str] = None) -> dict[str, Path]:
    """dataset -> the one file that provides it; two inputs providing the same benchmark file is an error."""
    chosen: dict[str, Path] = {}
    for item in map(Path, inputs):
        if item.is_dir():
            found = files_in(item, tag)
        elif item.is_file():
            dataset = dataset_and_tag(item)[0]
            if dataset not in GLUE_FILES:
                raise SubmissionError(f"{item}: {dataset} is not a GLUE test set (known: {', '.join(GLUE_FILES)})")
            found = {dataset: item}
        else:
            raise SubmissionError(f"{item}: no such file or folder")
        for dataset, path in found.items():
            if dataset in chosen:
                raise SubmissionError(f"{GLUE_FILES[dataset].name}: given twice, by {chosen[dataset]} and {path}")
            chosen[dataset] = path
    if not chosen:
        raise SubmissionError("no GLUE test predictions found in " + ", ".join(map(str, inputs)))
    return chosen


# ---------------------------------------------------------------------------------------------- checking
def _check_value(spec: GlueFile, value: str, where: str) -> None:
    if spec.labels is None:
        try:
            number = float(value)
        except ValueError:
            raise SubmissionError(f"{where}: prediction {value!r} is not a number") from None
        if not math.isfinite(number):
            raise SubmissionError(f"{where}: prediction {value!r} is not finite")
    elif value not in spec.labels:
        raise SubmissionError(f"{where}: label {value!r} is not one of {', '.join(spec.labels)} "
                              f"(the labels {spec.name} expects)")


def check_file(path: Path, spec: GlueFile, rows: Optional[int] = None) -> int:
    """Validate one submission TSV against its benchmark file; returns its row count."""
    rows = spec.rows if rows is None else rows
    try:
        lines = read_text(path, "submission file").splitlines()
    except DataFileError as exc:  # not UTF-8 (named by line), a folder
        raise SubmissionError(str(exc)) from None
    if not lines or lines[0] != HEADER:
        raise SubmissionError(f"{path}:1: header must be {HEADER!r} for {spec.name}, got {lines[0] if lines else ''!r}")
    seen: set[int] = set()
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        where = f"{path}:{number}"
        if len(fields) != 2:
            raise SubmissionError(f"{where}: expected 2 tab-separated fields, got {len(fields)}")
        if not _INDEX.match(fields[0]) or int(fields[0]) >= rows or int(fields[0]) in seen:
            raise SubmissionError(f"{where}: index {fields[0]!r} is not a new test index in 0..{rows - 1}")
        seen.add(int(fields[0]))
        _check_value(spec, fields[1], where)
    if len(seen) != rows:
        raise SubmissionError(f"{path}: {len(seen)} predictions, but {spec.name} needs all {rows} test rows")
    return rows


# ---------------------------------------------------------------------------------------------- writing
def assemble(inputs: Sequence[Path], out: Path, tag: Optional[str] = None, overwrite: bool = False,
             make_zip: bool = False, rows: Optional[Mapping[str, int]] = None,
             report: Callable[[str], None] = lambda line: None) -> dict:
    """Write the submission folder ``out`` (and ``out.zip``); ``rows`` overrides official sizes (for tests).

    What a killed run of this left beside ``out`` goes first, as train.py does in its run folder: a previous
    ``out`` parked during a replace comes back, dead writers' temps are removed (each step is ``report``ed)."""
    out = Path(out)
    check_output_root(out, "--out", inputs)  # --overwrite replaces the folder: never /, ~, an input
    if tag is not None:
        plain_name(tag, "--tag")  # it names the files to collect
    for what in clean_stale_temps(out.parent):
        report(f"{out.parent}: {what} (left by an interrupted run)")
    if out.exists() and not overwrite:
        raise SubmissionError(f"--out {out}: already exists (pass --overwrite to replace it)")
    chosen = collect(inputs, tag)
    counts = {}
    for dataset, path in chosen.items():
        counts[GLUE_FILES[dataset].name] = check_file(path, GLUE_FILES[dataset], (rows or {}).get(dataset))
    with atomic_folder(out, overwrite=True) as tmp:
        for dataset, path in chosen.items():
            shutil.copyfile(path, tmp / GLUE_FILES[dataset].name)
    summary = {"out": str(out), "files": {GLUE_FILES[d].name: str(p) for d, p in chosen.items()}, "rows": counts,
               "missing": [f.name for d, f in GLUE_FILES.items() if d not in chosen]}
    if make_zip:
        summary["zip"] = str(write_zip(out))
    return summary


def write_zip(folder: Path) -> Path:
    """``folder.zip`` with the TSVs at its top level, as the benchmark's upload expects."""
    target = folder.with_suffix(".zip")
    with atomic_write(target, "wb") as handle, zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.glob("*.tsv")):
            archive.write(path, arcname=path.name)
    return target
