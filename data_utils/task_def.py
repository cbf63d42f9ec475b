"""Task definitions: a YAML file (MT-DNN's field names) -> one validated, frozen ``TaskDef`` per task.

A new task needs only a YAML entry and canonical TSVs, so everything the rest of the code relies on is checked
here, once, with an error that names the YAML file (and line), the task and the field.
"""
from __future__ import annotations

import logging
import math
import re
import reprlib
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from data_utils.hf_spec import DataSpec, parse_data
from data_utils.safe_load import DataFileError, parse_yaml, read_text


class TaskType(Enum):
    Classification = 1
    Regression = 2
    Ranking = 3
    Span = 4              # extractive QA (SQuAD v1.1 / v2.0): a start and an end token per window
    SequenceLabeling = 5  # one tag per word (CoNLL-2003 NER)
    SeqenceLabeling = 5   # MT-DNN's spelling: an alias of SequenceLabeling


class DataFormat(Enum):
    PremiseOnly = 1
    PremiseAndOneHypothesis = 2
    PremiseAndMultiHypothesis = 3
    MRC = 4       # SQuAD's official JSON ({task}_{split}.json)
    Seqence = 5   # CoNLL-2003 column files ({task}_{split}.conll); MT-DNN's spelling
    Sequence = 5  # the correct spelling, an alias


# Kept here (not imported) so loading a task file needs no torch/sklearn; tests check them against the
# registries in data_utils.metrics and mt_dnn.loss.
CLASS_METRICS = ("ACC", "F1", "MCC", "AUC")
REGRESSION_METRICS = ("Pearson", "Spearman")
SPAN_METRICS = ("EmF1",)      # SQuAD's exact match and F1 (v2.0: also HasAns_* / NoAns_*)
SEQUENCE_METRICS = ("SeqEval",)  # entity-level precision / recall / F1
KNOWN_METRICS = CLASS_METRICS + REGRESSION_METRICS + SPAN_METRICS + SEQUENCE_METRICS
METRICS_FOR_TYPE = {TaskType.Classification: CLASS_METRICS, TaskType.Regression: REGRESSION_METRICS,
                    TaskType.Ranking: CLASS_METRICS, TaskType.Span: SPAN_METRICS,
                    TaskType.SequenceLabeling: SEQUENCE_METRICS}
LOSS_FOR_TYPE = {TaskType.Classification: "CeCriterion", TaskType.Regression: "MseCriterion",
                 TaskType.Ranking: "RankCeCriterion", TaskType.Span: "SpanCeCriterion",
                 TaskType.SequenceLabeling: "SeqCeCriterion"}
FORMATS_FOR_TYPE = {
    TaskType.Classification: (DataFormat.PremiseOnly, DataFormat.PremiseAndOneHypothesis),
    TaskType.Regression: (DataFormat.PremiseOnly, DataFormat.PremiseAndOneHypothesis),
    TaskType.Ranking: (DataFormat.PremiseAndMultiHypothesis,),
    TaskType.Span: (DataFormat.MRC,),
    TaskType.SequenceLabeling: (DataFormat.Seqence,),
}
#: Task types whose examples are not canonical TSV rows: each has its own reader in prepro_std.py.
TOKEN_LEVEL_TYPES = (TaskType.Span, TaskType.SequenceLabeling)
SPLIT_ROLES = ("train", "dev", "test")
DEFAULT_SPLITS = ("train", "dev", "test")
SPAN_FIELDS = ("doc_stride", "max_query_len", "max_answer_len", "n_best_size", "unanswerable",
               "null_score_diff_threshold")
DATA_FIELDS = ("data", "columns")  # rows from CSV/JSON/Parquet or a `datasets` dataset: data_utils/hf_spec.py
FIELDS = ("task_type", "data_format", "n_class", "labels", "metric_meta", "loss", "dropout_p", "split_names",
          "enable_san", "adv_loss", "kd_loss") + SPAN_FIELDS + DATA_FIELDS
MAX_CLASSES = 100_000  # classes (Ranking: hypotheses) a task may have: each gets a label string and a head row
QUOTE_CHARS = 80
#: SMART's divergence between clean and perturbed outputs (``adv_loss``) and the distillation loss on soft
#: targets (``kd_loss``), per task type (the first is the default); the registry is mt_dnn.objectives.
ADV_LOSSES = {TaskType.Classification: ("SymKlCriterion", "KlCriterion", "JSCriterion"),
              TaskType.Regression: ("MseCriterion",),
              TaskType.Ranking: ("SymKlCriterion", "KlCriterion", "JSCriterion")}
KD_LOSSES = {TaskType.Classification: ("KlCriterion", "MseCriterion"),
             TaskType.Regression: ("MseCriterion",),
             TaskType.Ranking: ("KlCriterion", "MseCriterion")}
_TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
_SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*\Z")


#: MT-DNN / SAGE-repo names that parse here but are not implemented: value -> why. A field holding one of them
#: gets a warning naming file:line (the task is skipped for task_type/data_format, the name dropped or replaced
#: for metric_meta/loss), instead of the typo error a name unknown to MT-DNN gets.
MTDNN_TASK_TYPES = ("SpanYN", "MaskLM", "SpanSeqenceLabeling", "SeqenceGeneration", "SeqenceGenerationMRC",
                    "EncSeqenceGeneration", "ClozeChoice")
MTDNN_DATA_FORMATS = ("MLM", "CLUE_CLASSIFICATION", "CLUE_SEQ", "CLUE_GEN", "ClozeChoice")
MTDNN_METRICS = ("F1MAC", "F1MIC", "CLUEEM", "CLUEF1", "CMAT", "SeqEvalList")
#: Today's MT-DNN names for what this project calls Span + MRC: its squad_prepro.py reads SQuAD's official JSON
#: ``{task}_{split}.json`` whatever the data_format says, and decodes SpanClassificationYN as SQuAD v2.0 (null
#: answer at [CLS], threshold 0). Value: the task type, and whether its questions may be unanswerable.
MTDNN_SPAN_TYPES = {"SpanClassification": False, "SpanClassificationYN": True}
MTDNN_FORMAT_ALIASES = {"CLUE_SPAN": "MRC"}
MTDNN_METRIC_ALIASES = {"EmF12": "EmF1"}  # MT-DNN's SQuAD v2.0 EM/F1; EmF1 reports v2.0's on unanswerable tasks
MTDNN_LOSSES = ("KlCriterion", "SymKlCriterion", "NsKlCriterion",
                "NsSymKlCriterion", "JSCriterion", "HLCriterion", "MlmCriterion", "SpanYNCeCriterion")
MTDNN_ENCODER_TYPES = ("BERT", "ROBERTA", "XLNET", "SAN", "XLM", "DEBERTA", "ELECTRA", "T5", "T5G", "MSRT5G",
                       "MSRT5", "MSRLONGT5G", "MSRLONGT5")
#: MT-DNN task-definition fields with no effect here: field -> why (each use is warned about with file:line).
NO_EFFECT_FIELDS = {
    "encoder_type": "the encoder comes from --init_checkpoint (and is checked by --encoder_type)",
}
#: ``adv_loss`` / ``kd_loss`` on a task type with no SMART divergence or distillation loss: MT-DNN reads the
#: criterion name and uses it only under --adv_train (which asserts the type is supported) or with soft labels
#: (which its token-level shards never carry), so the field changes nothing; here --adv_train and --mkd_opt
#: refuse a run that trains such a task.
INERT_OBJECTIVE_FIELDS = {
    "adv_loss": "SMART (--adv_train) is for Classification, Regression and Ranking tasks and refuses a run "
                "that trains this one, as MT-DNN's assertion does",
    "kd_loss": "distillation (--mkd_opt) is for Classification, Regression and Ranking tasks and refuses a run "
               "that trains this one",
}

log = logging.getLogger("sage.task_def")


class TaskDefError(ValueError):
    """A task-definition file problem, as one line naming the file, the task and the field."""


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 3, 6, 6, 4
_REPR.maxstring = _REPR.maxother = QUOTE_CHARS


def _q(value: Any) -> str:
    """A value quoted for an error line: at most ~QUOTE_CHARS characters, however large (or aliased) it is."""
    text = _REPR.repr(value)
    return text if len(text) <= QUOTE_CHARS else text[:QUOTE_CHARS - 3] + "..."


@dataclass(frozen=True)
class SpanOptions:
    """A Span task's windowing and decoding settings (YAML fields of the same names; BERT's SQuAD defaults).

    ``doc_stride`` is the step between the first context tokens of consecutive windows; ``unanswerable`` marks
    a SQuAD v2.0 task: its questions may have no answer, and "" is predicted when the best null score beats the
    best span score by more than ``null_score_diff_threshold``.
    """
    doc_stride: int = 128
    max_query_len: int = 64
    max_answer_len: int = 30
    n_best_size: int = 20
    unanswerable: bool = False
    null_score_diff_threshold: float = 0.0


@dataclass(frozen=True)
class TaskDef:
    """One task. ``labels[i]`` is the TSV label string of class id ``i`` (Ranking: of hypothesis ``i``).

    For Ranking, ``n_class`` is the number of hypotheses per example (the TSV's columns after the premise).
    """
    name: str
    task_type: TaskType
    data_format: DataFormat
    n_class: int
    labels: Optional[tuple[str, ...]]
    metric_meta: tuple[str, ...]
    loss: str
    dropout_p: float = 0.1
    split_names: tuple[str, ...] = DEFAULT_SPLITS
    enable_san: bool = False
    adv_loss: Optional[str] = None  # SMART divergence (None: the task type's default, see ADV_LOSSES)
    kd_loss: Optional[str] = None   # distillation loss on soft targets (None: the default, see KD_LOSSES)
    span: Optional[SpanOptions] = None  # Span tasks only
    data: Optional[DataSpec] = None  # where the rows come from when they are not canonical TSVs
    dropout_given: bool = field(default=False, compare=False)  # the YAML set dropout_p (--dropout_p fills others)
    _label_ids: dict = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        ids = {lab: i for i, lab in enumerate(self.labels)} if self.labels is not None else {}
        object.__setattr__(self, "_label_ids", ids)
        if self.task_type is TaskType.Span and self.span is None:  # built in code rather than from YAML
            object.__setattr__(self, "span", SpanOptions())

    @property
    def is_regression(self) -> bool:
        return self.task_type is TaskType.Regression

    def label_id(self, label: str) -> int:
        """The class id of a TSV label string."""
        if self.labels is None:
            raise ValueError(f"task {self.name}: a {self.task_type.name} task has no label names")
        try:
            return self._label_ids[label]
        except KeyError:
            raise ValueError(f"task {self.name}: label {_q(label)} is not one of {list(self.labels)}") from None

    def label_name(self, class_id: int) -> str:
        """The TSV label string of a class id (for prediction files)."""
        if self.labels is None:
            raise ValueError(f"task {self.name}: a {self.task_type.name} task has no label names")
        if isinstance(class_id, bool) or not 0 <= int(class_id) < len(self.labels) or int(class_id) != class_id:
            raise ValueError(f"task {self.name}: class id {_q(class_id)} is outside 0..{len(self.labels) - 1}")
        return self.labels[int(class_id)]

    def parse_label(self, text: str) -> Union[int, float]:
        """A canonical-TSV label -> the shard label: a class id, or a finite float for Regression."""
        if not self.is_regression:
            return self.label_id(text)
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"task {self.name}: regression label {_q(text)} is not a number") from None
        if not math.isfinite(value):
            raise ValueError(f"task {self.name}: regression label {_q(text)} is not finite")
        return value

    def split_role(self, split: str) -> str:
        """'train', 'dev' or 'test': the role word the split name contains."""
        return split_role(split)

    def train_splits(self) -> tuple[str, ...]:
        return tuple(s for s in self.split_names if split_role(s) == "train")

    def dev_splits(self) -> tuple[str, ...]:
        """Labelled evaluation splits (names containing 'dev')."""
        return tuple(s for s in self.split_names if split_role(s) == "dev")

    def test_splits(self) -> tuple[str, ...]:
        """Unlabelled splits (names containing 'test'); their shards carry a placeholder label."""
        return tuple(s for s in self.split_names if split_role(s) == "test")

    def shard_splits(self) -> tuple[str, ...]:
        """The splits prepro_std.py builds: split_names, plus ``train`` and ``dev`` where the list names no such
        split, as MT-DNN's train.py reads ``{task}_train`` and ``{task}_dev`` anyway (the SAGE repository's
        ``split_names: [test_labeled]``)."""
        extra = tuple(role for role in ("train", "dev") if not any(split_role(s) == role for s in self.split_names))
        return self.split_names + extra

    def has_labels(self, split: str) -> bool:
        return split_role(split) != "test"

    def placeholder_label(self) -> Union[int, float]:
        return 0.0 if self.is_regression else 0

    @property
    def token_level(self) -> bool:
        """Span and SequenceLabeling: outputs per token, examples read from their own file formats."""
        return self.task_type in TOKEN_LEVEL_TYPES


def split_role(split: str) -> str:
    """The one role word ('train', 'dev', 'test') a split name contains; anything else is an error."""
    roles = [r for r in SPLIT_ROLES if r in split]
    if len(roles) != 1:
        raise ValueError(f"split name {_q(split)} must contain exactly one of 'train', 'dev', 'test' "
                         "(that is how labelled training, evaluation and unlabelled test splits are told apart)")
    return roles[0]


# ---------------------------------------------------------------------------------------------- loading
class _Where:
    """Formats errors as ``file:line: task 'x', field 'y': reason`` using the composed nodes' positions."""

    def __init__(self, path: str, root: Optional[yaml.Node]):
        self.path = path
        self.task_lines: dict[str, int] = {}
        self.field_lines: dict[tuple[str, str], int] = {}
        self.duplicates: list[tuple[Optional[str], str, int]] = []
        self.repeats: list[tuple[str, str, int, int]] = []  # a field given again with the same value
        self.warnings: list[str] = []
        self.no_effect: dict[str, list[tuple[str, Optional[int]]]] = {}  # field -> [(task, line)]
        self.inert: dict[tuple[str, str], list[tuple[str, Optional[int]]]] = {}  # (field, type) -> [(task, line)]
        self.base: Optional[Path] = None  # the task file's folder: relative data paths start there
        if isinstance(root, yaml.MappingNode):
            self._scan(root)

    def _scan(self, root: yaml.MappingNode) -> None:
        for key, value in root.value:
            task = str(key.value)
            if task in self.task_lines:
                self.duplicates.append((None, task, key.start_mark.line + 1))
            self.task_lines.setdefault(task, key.start_mark.line + 1)
            if isinstance(value, yaml.MappingNode):
                seen: dict[str, yaml.Node] = {}
                for fkey, fvalue in value.value:
                    name, line = str(fkey.value), fkey.start_mark.line + 1
                    if name in seen and _node_value(seen[name]) == _node_value(fvalue):
                        self.repeats.append((task, name, self.field_lines[(task, name)], line))
                    elif name in seen:
                        self.duplicates.append((task, name, line))
                    seen.setdefault(name, fvalue)
                    self.field_lines.setdefault((task, name), line)

    def error(self, reason: str, task: Optional[str] = None, field_name: Optional[str] = None) -> TaskDefError:
        line = self.field_lines.get((task, field_name)) or self.task_lines.get(task)
        where = f"{self.path}:{line}" if line else self.path
        what = ""
        if task is not None:
            what = f" task {_q(task)}" + (f", field {_q(field_name)}" if field_name else "") + ":"
        return TaskDefError(f"{where}:{what} {reason}")

    def warn(self, reason: str, task: Optional[str] = None, field_name: Optional[str] = None) -> None:
        self.warnings.append(str(self.error(reason, task, field_name)))

    def no_effect_warnings(self) -> list[str]:
        """One line per no-effect field (and, for objective fields, task type), at its first use, listing every
        task (and line) that gives it."""
        lines = []
        for key, uses in self.no_effect.items():
            lines.append(f"{self.path}:{uses[0][1]}: field '{key}' has no effect here ({NO_EFFECT_FIELDS[key]}); "
                         f"given for {_uses(uses)}")
        for (key, type_name), uses in self.inert.items():
            lines.append(f"{self.path}:{uses[0][1]}: field '{key}' has no effect on {type_name} tasks "
                         f"({INERT_OBJECTIVE_FIELDS[key]}); given for {_uses(uses)}")
        return lines


def _uses(uses: list[tuple[str, Optional[int]]]) -> str:
    return ", ".join(f"{task} (line {line})" for task, line in uses)


def _node_value(node: yaml.Node):
    """A composed node as a comparable value (resolved tags included): two fields with equal values mean the same."""
    if isinstance(node, yaml.ScalarNode):
        return node.tag, node.value
    if isinstance(node, yaml.SequenceNode):
        return node.tag, tuple(_node_value(item) for item in node.value)
    return node.tag, tuple((_node_value(k), _node_value(v)) for k, v in node.value)


class _Skip(Exception):
    """A task MT-DNN knows but this project cannot train (its type or data format): left out, with a warning."""


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _enum(where: _Where, task: str, key: str, raw: Any, enum_cls: type[Enum], mtdnn_only=(), aliases=None) -> Enum:
    if isinstance(raw, str) and raw in (aliases or {}):
        return enum_cls[aliases[raw]]
    if isinstance(raw, str) and raw in mtdnn_only:
        where.warn(f"MT-DNN's {key} {raw} is not supported here; the task is left out", task, key)
        raise _Skip(raw)
    if not isinstance(raw, str) or raw not in enum_cls.__members__:
        raise where.error(f"unknown value {_q(raw)}; known: {', '.join(enum_cls.__members__)}", task, key)
    return enum_cls[raw]


def _str_list(where: _Where, task: str, key: str, raw: Any, ints_ok: bool = False) -> tuple[str, ...]:
    if not isinstance(raw, list) or not raw:
        raise where.error(f"must be a non-empty list, got {_type_name(raw)} {_q(raw)}", task, key)
    out = []
    for i, item in enumerate(raw):
        if isinstance(item, bool):
            raise where.error(f"item {i} is the boolean {_q(item)}: YAML reads unquoted yes/no/true/false/on/off "
                              "as booleans; quote it", task, key)
        if ints_ok and isinstance(item, int):
            item = str(item)
        if not isinstance(item, str) or not item.strip() or item != item.strip() or any(c in item for c in "\t\r\n"):
            raise where.error(f"item {i} must be a non-empty string without surrounding spaces, tabs or "
                              f"newlines, got {_type_name(item)} {_q(item)}", task, key)
        out.append(item)
    dup = sorted({x for x in out if out.count(x) > 1})
    if dup:
        raise where.error(f"repeated item(s) {dup}", task, key)
    return tuple(out)


def _int(where: _Where, task: str, key: str, raw: Any) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise where.error(f"must be an integer, got {_type_name(raw)} {_q(raw)}", task, key)
    return raw


def _check_name(where: _Where, task: Any) -> str:
    if not isinstance(task, str):
        line = where.task_lines.get(str(task))
        raise TaskDefError(f"{where.path}:{line}: task name {_q(task)} must be a string, got {_type_name(task)}")
    if "_" in task:
        raise where.error(f"task name must not contain '_' (shard files are named {{task}}_{{split}}); "
                          f"try '{task.replace('_', '-')}'", task)
    if not _TASK_NAME.match(task):
        raise where.error("task name must be letters, digits and '-' (starting with a letter or digit)", task)
    return task


#: Task types without labels, whose n_class is fixed: (n_class, how an error states it). Span: the shard label
#: says whether the window holds the answer (0/1), the head has a start and an end logit.
FIXED_N_CLASS = {TaskType.Regression: (1, "1"), TaskType.Span: (2, "2 (start and end)")}


def _labels_and_classes(where: _Where, task: str, spec: dict, task_type: TaskType):
    raw_n, raw_labels = spec.get("n_class"), spec.get("labels")
    if task_type in FIXED_N_CLASS:
        fixed, what = FIXED_N_CLASS[task_type]
        if raw_labels is not None:
            raise where.error(f"a {task_type.name} task has no labels; remove the field", task, "labels")
        n_class = fixed if raw_n is None else _int(where, task, "n_class", raw_n)
        if n_class != fixed:
            raise where.error(f"a {task_type.name} task has n_class {what}, got {n_class}", task, "n_class")
        return fixed, None
    labels = _str_list(where, task, "labels", raw_labels, ints_ok=True) if raw_labels is not None else None
    if task_type is TaskType.SequenceLabeling and labels is None:
        raise where.error("a SequenceLabeling task needs its tags as labels (e.g. [O, B-PER, I-PER, ...])",
                          task, "labels")
    if raw_n is None and labels is None:
        raise where.error(f"a {task_type.name} task needs n_class or labels", task, "n_class")
    n_class = len(labels) if raw_n is None else _int(where, task, "n_class", raw_n)
    if n_class > MAX_CLASSES:
        raise where.error(f"n_class {n_class} is more than the {MAX_CLASSES:,} this project takes", task, "n_class")
    if n_class == 1 and task_type is TaskType.Ranking:
        where.warn("a Ranking task needs at least 2 hypotheses per example, got n_class 1 (MT-DNN's n_class 1 is "
                   "one score per hypothesis, their number read from its TSVs, which carry a ruid column this "
                   "project's do not); the task is left out: give the number of hypotheses to train it here",
                   task, "n_class")
        raise _Skip("n_class")
    if n_class < 2:
        what = "hypotheses per example" if task_type is TaskType.Ranking else "classes"
        raise where.error(f"a {task_type.name} task needs at least 2 {what}, got n_class {n_class}", task, "n_class")
    if labels is not None and len(labels) > n_class and task_type is not TaskType.Ranking:
        return n_class, _first_labels(where, task, labels, n_class)
    if labels is not None and len(labels) != n_class:
        raise where.error(f"n_class is {n_class} but labels has {len(labels)} items {list(labels)}", task, "n_class")
    return n_class, labels or tuple(str(i) for i in range(n_class))


def _first_labels(where: _Where, task: str, labels: tuple[str, ...], n_class: int) -> tuple[str, ...]:
    """MT-DNN's reading of more labels than n_class (its anli_task_def.yml's fever): the head has n_class
    outputs, class i is labels[i], and a row labelled with a later name fails its training; here such a row is
    refused when its TSV is read."""
    extra = labels[n_class:]
    where.warn(f"n_class is {n_class} but labels has {len(labels)} items {list(labels)}; as in MT-DNN, the head "
               f"has {n_class} classes {list(labels[:n_class])} and rows labelled {', '.join(map(repr, extra))} "
               "are refused (MT-DNN's training fails on them)", task, "n_class")
    return labels[:n_class]


def _metrics(where: _Where, task: str, raw: Any, task_type: TaskType, n_class: int) -> tuple[str, ...]:
    names = _str_list(where, task, "metric_meta", raw)
    names = tuple(dict.fromkeys(MTDNN_METRIC_ALIASES.get(n, n) for n in names))
    dropped = [n for n in names if n in MTDNN_METRICS]
    if dropped:
        names = tuple(n for n in names if n not in MTDNN_METRICS)
        if not names:
            raise where.error(f"MT-DNN's metric(s) {', '.join(dropped)} are not implemented here and no other "
                              f"metric is given; add one of {', '.join(METRICS_FOR_TYPE[task_type])}", task,
                              "metric_meta")
        where.warn(f"MT-DNN's metric(s) {', '.join(dropped)} are not implemented here; left out", task,
                   "metric_meta")
    allowed = METRICS_FOR_TYPE[task_type]
    for name in names:
        if name not in KNOWN_METRICS:
            raise where.error(f"unknown metric {_q(name)}; known: {', '.join(KNOWN_METRICS)}", task, "metric_meta")
        if name not in allowed:
            raise where.error(f"metric {name} does not apply to a {task_type.name} task; use "
                              f"{', '.join(allowed)}", task, "metric_meta")
    if "F1" in names and (task_type is not TaskType.Classification or n_class != 2):
        raise where.error("F1 (of class 1) needs a 2-class Classification task", task, "metric_meta")
    return names


def _loss(where: _Where, task: str, raw: Any, task_type: TaskType) -> str:
    expected = LOSS_FOR_TYPE[task_type]
    if raw is None:
        return expected
    if raw in MTDNN_LOSSES:
        where.warn(f"MT-DNN's loss {raw} is not implemented here; {expected} is used", task, "loss")
        return expected
    if raw not in LOSS_FOR_TYPE.values():
        raise where.error(f"unknown loss {_q(raw)}; known: {', '.join(LOSS_FOR_TYPE.values())}", task, "loss")
    if raw != expected:
        raise where.error(f"loss {raw} does not fit a {task_type.name} task; use {expected}", task, "loss")
    return raw


def _dropout(where: _Where, task: str, raw: Any) -> float:
    """0.1 when absent (the trainer then applies --dropout_p; see ``TaskDef.dropout_given``)."""
    if raw is None:
        return 0.1
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 0.0 <= raw < 1.0:
        raise where.error(f"must be a number in [0, 1), got {_type_name(raw)} {_q(raw)}", task, "dropout_p")
    return float(raw)


def _splits(where: _Where, task: str, raw: Any) -> tuple[str, ...]:
    if raw is None:
        return DEFAULT_SPLITS
    names = _str_list(where, task, "split_names", raw)
    for name in names:
        if not _SPLIT_NAME.match(name):
            raise where.error(f"split name {_q(name)} must be letters, digits, '_' and '-'", task, "split_names")
        try:
            split_role(name)
        except ValueError as exc:
            raise where.error(str(exc), task, "split_names") from None
    return names


def _san(where: _Where, task: str, raw: Any, task_type: TaskType) -> bool:
    """True marks the task for the SAN answer head (used when --answer_opt is 1, as in MT-DNN)."""
    if raw is None or raw is False:
        return False
    if raw is True:
        if task_type is not TaskType.Classification:
            where.warn(f"the SAN answer head is for Classification tasks; a {task_type.name} task keeps its "
                       "linear head", task, "enable_san")
            return False
        return True
    raise where.error(f"must be true or false, got {_type_name(raw)} {_q(raw)}", task, "enable_san")


def _objective_loss(where: _Where, task: str, key: str, raw: Any, task_type: TaskType) -> Optional[str]:
    """``adv_loss`` / ``kd_loss``: a name from ADV_LOSSES / KD_LOSSES that fits the task type (None when absent:
    the run's default applies). MT-DNN's other criterion names get the default with a warning, as ``loss``."""
    if raw is None:
        return None
    allowed = (ADV_LOSSES if key == "adv_loss" else KD_LOSSES).get(task_type, ())
    if not allowed:
        if raw not in MTDNN_LOSSES and raw not in LOSS_FOR_TYPE.values():  # MT-DNN's LossCriterion names
            raise where.error(f"{key} does not apply to a {task_type.name} task (and {_q(raw)} is no MT-DNN "
                              "loss either)", task, key)
        where.inert.setdefault((key, task_type.name), []).append((task, where.field_lines.get((task, key))))
        return None
    known = sorted({n for names in (ADV_LOSSES if key == "adv_loss" else KD_LOSSES).values() for n in names})
    if raw in allowed:
        return raw
    if raw in known:
        raise where.error(f"{raw} does not fit a {task_type.name} task; use {', '.join(allowed)}", task, key)
    if raw in MTDNN_LOSSES or raw in LOSS_FOR_TYPE.values():
        where.warn(f"MT-DNN's {raw} is not available as {key} here; {allowed[0]} is used", task, key)
        return allowed[0]
    raise where.error(f"unknown loss {raw!r}; known: {', '.join(known)}", task, key)


def _span_options(where: _Where, task: str, spec: dict, task_type: TaskType) -> Optional[SpanOptions]:
    given = [key for key in SPAN_FIELDS if key in spec]
    if task_type is not TaskType.Span:
        if given:
            raise where.error(f"only Span tasks have this field, not {task_type.name}", task, given[0])
        return None
    values = {}
    implied = MTDNN_SPAN_TYPES.get(spec["task_type"])
    if implied is not None:
        if spec.get("unanswerable", implied) != implied:
            raise where.error(f"MT-DNN's {spec['task_type']} means unanswerable: {str(implied).lower()}", task,
                              "unanswerable")
        values["unanswerable"] = implied
    for key in given:
        raw = spec[key]
        if key == "unanswerable":
            if not isinstance(raw, bool):
                raise where.error(f"must be true or false, got {_type_name(raw)} {raw!r}", task, key)
        elif key == "null_score_diff_threshold":
            if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
                raise where.error(f"must be a finite number, got {_type_name(raw)} {raw!r}", task, key)
            raw = float(raw)
        elif _int(where, task, key, raw) < 1:
            raise where.error(f"must be at least 1, got {raw}", task, key)
        values[key] = raw
    return SpanOptions(**values)


def _no_effect_field(where: _Where, task: str, key: str, raw: Any) -> None:
    if key == "encoder_type" and raw not in MTDNN_ENCODER_TYPES:
        raise where.error(f"unknown value {raw!r}; known: {', '.join(MTDNN_ENCODER_TYPES)}", task, key)
    where.no_effect.setdefault(key, []).append((task, where.field_lines.get((task, key))))


def _data(where: _Where, task: str, spec: dict, task_type: TaskType) -> Optional[DataSpec]:
    """The ``data:``/``columns:`` fields (None when the task reads canonical TSVs)."""
    if "data" not in spec:
        if "columns" in spec:
            raise where.error("columns maps the columns of a data: source; add data", task, "columns")
        return None
    if task_type in TOKEN_LEVEL_TYPES:
        raise where.error(f"a {task_type.name} task reads its own file format; data: is for Classification, "
                          "Regression and Ranking tasks", task, "data")
    data = parse_data(spec["data"], spec.get("columns"), where.base, lambda r: where.error(r, task, "data"),
                      lambda r: where.error(r, task, "columns"))
    for name in data.split_names:
        if not _SPLIT_NAME.match(name):
            raise where.error(f"split name {_q(name)} must be letters, digits, '_' and '-'", task, "data")
        try:
            split_role(name)
        except ValueError as exc:
            raise where.error(str(exc), task, "data") from None
    if "split_names" in spec:
        names = _splits(where, task, spec["split_names"])
        unknown = [n for n in data.split_names if n not in names]
        if unknown:
            raise where.error(f"split(s) {unknown} are not in split_names {list(names)}", task, "data")
    return data


def _build(where: _Where, task: str, spec: Any) -> TaskDef:
    if not isinstance(spec, dict):
        raise where.error(f"must be a mapping of fields, got {_type_name(spec)}", task)
    for key in spec:
        if key in NO_EFFECT_FIELDS:
            _no_effect_field(where, task, key, spec[key])
        elif key not in FIELDS:
            raise where.error(f"unknown field; known: {', '.join(FIELDS)}", task, str(key))
    for key in ("task_type", "data_format", "metric_meta"):
        if key not in spec:
            raise where.error("required field is missing", task, key)
    task_type = _enum(where, task, "task_type", spec["task_type"], TaskType, MTDNN_TASK_TYPES,
                      {name: "Span" for name in MTDNN_SPAN_TYPES})
    data_format = _enum(where, task, "data_format", spec["data_format"], DataFormat, MTDNN_DATA_FORMATS,
                        MTDNN_FORMAT_ALIASES)
    if data_format not in FORMATS_FOR_TYPE[task_type]:
        ok = ", ".join(f.name for f in FORMATS_FOR_TYPE[task_type])
        raise where.error(f"{data_format.name} does not fit a {task_type.name} task; use {ok}", task, "data_format")
    n_class, labels = _labels_and_classes(where, task, spec, task_type)
    data = _data(where, task, spec, task_type)
    return TaskDef(name=task, task_type=task_type, data_format=data_format, n_class=n_class, labels=labels,
                   metric_meta=_metrics(where, task, spec["metric_meta"], task_type, n_class),
                   loss=_loss(where, task, spec.get("loss"), task_type),
                   dropout_p=_dropout(where, task, spec.get("dropout_p")),
                   split_names=_splits(where, task, spec.get("split_names")) if data is None or "split_names" in spec
                   else data.split_names,
                   enable_san=_san(where, task, spec.get("enable_san"), task_type),
                   adv_loss=_objective_loss(where, task, "adv_loss", spec.get("adv_loss"), task_type),
                   kd_loss=_objective_loss(where, task, "kd_loss", spec.get("kd_loss"), task_type),
                   span=_span_options(where, task, spec, task_type),
                   data=data, dropout_given=spec.get("dropout_p") is not None)


class TaskDefs(dict):
    """Task name -> TaskDef, in file order; ``skipped`` holds the tasks MT-DNN knows but this project cannot
    train (name -> the reason), so selecting one fails with that reason instead of "unknown task"."""
    skipped: dict[str, str] = {}


def parse_task_defs(text: str, path: str = "<string>") -> dict[str, TaskDef]:
    """Task definitions from YAML text; ``path`` is only used in error messages."""
    try:
        document = parse_yaml(text, path)
    except DataFileError as exc:
        raise TaskDefError(str(exc)) from None
    where, data = _Where(path, document.root), document.data
    where.base = Path(path).resolve().parent if path != "<string>" else None
    if data is None:
        raise TaskDefError(f"{path}: no task definitions (the file is empty)")
    if not isinstance(data, dict):
        raise TaskDefError(f"{path}: must be a mapping of task name -> fields, got {_type_name(data)}")
    for task, name, line in where.duplicates:
        if task is None:
            raise TaskDefError(f"{path}:{line}: task '{name}' is defined twice")
        raise TaskDefError(f"{path}:{line}: task '{task}', field '{name}': given twice")
    for task, name, first, line in where.repeats:  # MT-DNN's ner_task_def.yml repeats `loss` on two tasks
        where.warnings.append(f"{path}:{line}: task {_q(task)}, field {_q(name)}: given twice, with the same value "
                              f"(lines {first} and {line}); read once, as MT-DNN's YAML reader does")
    defs, skipped = TaskDefs(), {}
    for task, spec in data.items():
        name = _check_name(where, task)
        try:
            defs[name] = _build(where, name, spec)
        except _Skip:
            skipped[name] = where.warnings[-1]
    defs.skipped = skipped
    for line in where.warnings + where.no_effect_warnings():
        log.warning("warning: %s", line)
    return defs


def load_task_defs(path: Union[str, Path]) -> dict[str, TaskDef]:
    """All task definitions of a YAML file, in file order."""
    path = Path(path)
    try:
        text = read_text(path, "task definition file")
    except FileNotFoundError:
        raise TaskDefError(f"{path}: task definition file not found") from None
    except DataFileError as exc:  # not UTF-8, a folder
        raise TaskDefError(str(exc)) from None
    return parse_task_defs(text, str(path))


def select_tasks(task_defs: dict[str, TaskDef], names, source: str = "task definitions") -> dict[str, TaskDef]:
    """The named tasks, in the order given; an unknown name fails with the known ones."""
    missing = [n for n in names if n not in task_defs]
    for name in missing:
        if name in getattr(task_defs, "skipped", {}):
            raise TaskDefError(f"task '{name}' cannot be used: {task_defs.skipped[name]}")
    if missing:
        raise TaskDefError(f"{source}: unknown task(s) {missing}; known: {', '.join(task_defs)}")
    return {n: task_defs[n] for n in names}


def dataset_task(name: str) -> str:
    """The task a ``--test_datasets`` entry belongs to: ``mnli`` and MT-DNN's ``mnli_matched`` -> ``mnli``
    (task names contain no '_', so the first piece is the task)."""
    return name.split("_", 1)[0]


def dataset_splits(task_def: TaskDef, name: str) -> tuple[str, ...]:
    """The dev and test splits a ``--test_datasets`` entry evaluates.

    A plain task name: every dev and test split of the task (plus MT-DNN's ``dev`` when split_names has none;
    the trainer skips it if its shard is absent). MT-DNN's ``{task}_{prefix}`` names: the splits named
    ``{prefix}_...`` (``mnli_matched`` -> ``matched_dev``, ``matched_test``: the shards MT-DNN calls
    ``mnli_matched_dev``, ``mnli_matched_test``).
    """
    splits = task_def.dev_splits() + task_def.test_splits()
    if name == task_def.name:
        # no dev split in split_names (the SAGE repo's `split_names: [test_labeled]`): MT-DNN reads {task}_dev
        return splits if task_def.dev_splits() else ("dev",) + splits
    prefix = name[len(task_def.name) + 1:] + "_"
    chosen = tuple(s for s in splits if s.startswith(prefix))
    if not chosen:
        raise TaskDefError(f"--test_datasets: '{name}' names no split of task {task_def.name}: expected split "
                           f"names starting with '{prefix}' among {list(splits)}")
    return chosen
