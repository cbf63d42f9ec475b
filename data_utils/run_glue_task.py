"""The one task of a run given as HF's run_glue.py takes it: ``--train_file/--validation_file/--test_file`` or
``--dataset_name/--dataset_config_name``, turned into a task definition with a ``data:`` block.

run_glue.py's conventions, kept here: the label column is ``label``; float labels make a regression task; class
labels are the training split's distinct values, sorted (a ClassLabel column keeps its own names, in id order);
the texts are ``sentence1``/``sentence2`` when both exist, else the first two non-label columns, else the only
one; validation and test files have the training file's suffix. Classification is scored by accuracy,
regression by Pearson and Spearman correlation.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from data_utils.hf_data import HfDataError, import_datasets, load_source, run_glue_texts
from data_utils.hf_spec import FORMATS, SplitSource
from data_utils.safe_load import loads_json, read_text

TASK = "task"  # the task's name: shards task_{split}.jsonl, metrics task_dev
LABEL = "label"
FLOAT_DTYPES = ("float16", "float32", "float64")
#: run_glue.py's split names -> this project's
SPLITS = (("train", "train"), ("validation", "dev"), ("test", "test"))
SAVED_DICT = "dataset_dict.json"  # what DatasetDict.save_to_disk writes at its folder's root


@dataclass(frozen=True)
class RunGlueData:
    train_file: Optional[str] = None
    validation_file: Optional[str] = None
    test_file: Optional[str] = None
    dataset_name: Optional[str] = None
    dataset_config_name: Optional[str] = None

    @property
    def given(self) -> bool:
        """Any of the flags: a one-task run is asked for (and refused in one line if incomplete)."""
        return any(vars(self).values())


def _file_sources(data: RunGlueData) -> dict[str, SplitSource]:
    suffix = Path(data.train_file).suffix.lower()
    if suffix not in FORMATS:
        raise HfDataError(f"--train_file {data.train_file}: must be a {', '.join(FORMATS)} file")
    sources = {}
    for flag, split, path in (("--train_file", "train", data.train_file),
                              ("--validation_file", "dev", data.validation_file),
                              ("--test_file", "test", data.test_file)):
        if path is None:
            continue
        if Path(path).suffix.lower() != suffix:
            raise HfDataError(f"{flag} {path}: must have the --train_file's suffix {suffix} (as run_glue.py asks)")
        sources[split] = SplitSource(files=(str(Path(path).resolve()),), format=FORMATS[suffix])
    return sources


def _saved_sources(folder: Path) -> dict[str, SplitSource]:
    """A ``DatasetDict.save_to_disk`` folder: its own splits, read with ``load_from_disk``. (``load_dataset`` on
    such a folder infers splits from its file names and merges, e.g., ``validation_matched`` and
    ``validation_mismatched`` into one ``validation``.)"""
    names = list(loads_json(read_text(folder / SAVED_DICT), folder / SAVED_DICT).get("splits") or [])
    if "train" not in names:
        raise HfDataError(f"--dataset_name {folder}: a saved DatasetDict without a train split (its splits: "
                          f"{', '.join(names)})")
    return {ours: SplitSource(saved=str(folder.resolve()), split=theirs) for theirs, ours in SPLITS if theirs in names}


def _dataset_sources(data: RunGlueData) -> dict[str, SplitSource]:
    folder = Path(data.dataset_name)
    if (folder / SAVED_DICT).is_file():
        return _saved_sources(folder)
    if (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file():
        raise HfDataError(f"--dataset_name {folder}: a saved Dataset (one split); run_glue.py's flags read a "
                          "DatasetDict's train/validation/test splits: save a DatasetDict, or name the folder in a "
                          "task definition's data: block (saved: ...)")
    datasets = import_datasets()
    try:
        names = datasets.get_dataset_split_names(data.dataset_name, data.dataset_config_name)
    except Exception as exc:  # offline, unknown name, unknown config
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HfDataError(f"--dataset_name {data.dataset_name}: cannot list its splits: {first}") from None
    if "train" not in names:
        raise HfDataError(f"--dataset_name {data.dataset_name}: has no train split (its splits: {', '.join(names)})")
    # a local folder is written as its absolute path: the task definition is read later, from any directory
    name = str(Path(data.dataset_name).resolve()) if Path(data.dataset_name).is_dir() else data.dataset_name
    return {ours: SplitSource(dataset=name, config=data.dataset_config_name, split=theirs)
            for theirs, ours in SPLITS if theirs in names}


def task_definition(data: RunGlueData) -> dict:
    """The task definition (YAML mapping) of the run's one task, from its training split's columns and labels."""
    if data.dataset_name and (data.train_file or data.validation_file or data.test_file):
        raise HfDataError("--dataset_name and --train_file/--validation_file/--test_file name two sources; give one")
    if not data.train_file and (data.validation_file or data.test_file):
        raise HfDataError("--validation_file/--test_file need --train_file (a one-task run is trained on it)")
    if data.dataset_config_name and not data.dataset_name:
        raise HfDataError("--dataset_config_name needs --dataset_name")
    sources = _file_sources(data) if data.train_file else _dataset_sources(data)
    train = load_source(sources["train"])
    where = sources["train"].describe()
    if LABEL not in train.column_names:
        raise HfDataError(f"{where}: no 'label' column (run_glue.py's label column); the columns are "
                          f"{list(train.column_names)}")
    try:
        premise, hypothesis = run_glue_texts(train.column_names, LABEL)
    except ValueError as exc:
        raise HfDataError(f"{where}: {exc}") from None
    feature = train.features[LABEL]
    spec: dict = {"data_format": "PremiseOnly" if hypothesis is None else "PremiseAndOneHypothesis"}
    if getattr(feature, "dtype", None) in FLOAT_DTYPES:
        spec.update(task_type="Regression", metric_meta=["Pearson", "Spearman"])
    else:
        names = list(feature.names) if hasattr(feature, "names") else None
        values = train.unique(LABEL)
        if names is None:
            if any(v is None or isinstance(v, bool) or not isinstance(v, (int, str)) for v in values):
                kinds = sorted({"empty" if v is None else type(v).__name__ for v in values})
                raise HfDataError(f"{where}: column 'label' holds {'/'.join(kinds)} labels "
                                  f"({', '.join(sorted(map(repr, values))[:6])}): class labels must be strings or "
                                  "integers (floats make a regression task)")
            if len({type(v) for v in values}) > 1:
                raise HfDataError(f"{where}: column 'label' mixes strings and integers")
            names = [str(v) for v in sorted(values)]
        spec.update(task_type="Classification", labels=names, metric_meta=["ACC"])
    spec["data"] = {split: {k: (list(v) if k == "files" else v) for k, v in vars(src).items() if v}
                    for split, src in sources.items()}
    spec["columns"] = {"premise": premise, LABEL: LABEL, **({"hypothesis": hypothesis} if hypothesis else {})}
    return {TASK: spec}


def task_definition_text(data: RunGlueData) -> str:
    return "# The one task of a run given --train_file/--dataset_name (written by train.py or prepro_std.py).\n" + \
        yaml.safe_dump(task_definition(data), sort_keys=False, allow_unicode=True)
