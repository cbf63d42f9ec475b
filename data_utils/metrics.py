"""Evaluation metrics (all ×100) and the paper's GLUE score.

A registry maps the YAML ``metric_meta`` names to functions ``f(golds, preds, scores) -> float`` so a new task
only names its metrics. ``preds`` are class ids (classification, ranking) or raw floats (regression); ``scores``
are probabilities and only AUC reads them.
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef, roc_auc_score

MetricFn = Callable[[np.ndarray, np.ndarray, Optional[np.ndarray]], float]


def _acc(golds, preds, scores):
    return 100.0 * accuracy_score(golds, preds)


def _f1(golds, preds, scores):
    classes = set(np.unique(golds).tolist()) | set(np.unique(preds).tolist())
    if not classes <= {0, 1}:
        raise ValueError(f"metric F1: binary F1 of class 1 needs labels in {{0, 1}}, got {sorted(classes)}")
    return 100.0 * f1_score(golds, preds, pos_label=1, average="binary", zero_division=0.0)


def _mcc(golds, preds, scores):
    return 100.0 * matthews_corrcoef(golds, preds)


def _pearson(golds, preds, scores):
    return 100.0 * float(pearsonr(preds.astype(np.float64), golds.astype(np.float64))[0])


def _spearman(golds, preds, scores):
    return 100.0 * float(spearmanr(preds.astype(np.float64), golds.astype(np.float64))[0])


def _auc(golds, preds, scores):
    if scores is None:
        raise ValueError("metric AUC: needs scores (probabilities), got None")
    if scores.ndim == 2 and scores.shape[1] == 2:
        scores = scores[:, 1]  # positive-class probability of a binary softmax
    if scores.ndim == 1:
        return 100.0 * roc_auc_score(golds, scores)
    return 100.0 * roc_auc_score(golds, scores, multi_class="ovr")


METRICS: dict[str, MetricFn] = {
    "ACC": _acc,
    "F1": _f1,
    "MCC": _mcc,
    "Pearson": _pearson,
    "Spearman": _spearman,
    "AUC": _auc,
}


def _em_f1(golds, predictions, task_def) -> dict[str, float]:
    from data_utils.squad import squad_scores
    return squad_scores(golds, predictions, task_def.span.unanswerable)


def _seqeval(golds, predictions, task_def) -> dict[str, float]:
    from data_utils.conll import entity_scores
    return entity_scores(golds, predictions)


#: Metrics of a whole decoded split, for Span and SequenceLabeling tasks: YAML name -> f(golds, predictions,
#: task_def) -> {key: value ×100}. EmF1: golds {question id: [answer texts]}, predictions {question id: text};
#: SeqEval: golds and predictions are lists of tag sequences.
SPLIT_METRICS: dict[str, Callable] = {
    "EmF1": _em_f1,
    "SeqEval": _seqeval,
}


#: Labelled rows a split needs before a metric is defined (scipy refuses a correlation of fewer than 2 points);
#: AUC also needs every class among the gold labels (sklearn refuses it otherwise).
MIN_ROWS = {"Pearson": 2, "Spearman": 2, "AUC": 2}


def check_scorable(task_def, golds, where: str) -> None:
    """Refuse, before any training, a labelled split that the task's metrics cannot score: ``where`` names the
    split's file (and what limited its rows, if anything did)."""
    n = len(golds)
    for name in task_def.metric_meta:
        need = MIN_ROWS.get(name, 1)
        if n < need:
            raise ValueError(f"{where}: {n} labelled row(s), but metric {name} of task {task_def.name} needs at "
                             f"least {need}")
        if name == "AUC" and len(set(np.asarray(golds).tolist())) < task_def.n_class:
            raise ValueError(f"{where}: metric AUC of task {task_def.name} needs every one of its {task_def.n_class} "
                             "classes among the gold labels")


def get_metric(name: str) -> MetricFn:
    """The metric function for a YAML name; unknown names fail with the list of known ones."""
    try:
        return METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric '{name}'; known: {', '.join(METRICS)}") from None


def _as_array(values, what: str) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor; widen floats first, as numpy has no bfloat16
        values = values.detach().cpu()
        values = values.double() if values.is_floating_point() else values
    arr = np.asarray(values)
    if arr.ndim == 0:
        raise ValueError(f"metrics: {what} must be a sequence, got {type(values).__name__}")
    if arr.size == 0:
        raise ValueError(f"metrics: {what} is empty")
    return arr


def compute_metric(name: str, golds, preds, scores=None) -> float:
    """One metric ×100 after checking that golds, preds (and scores) are non-empty and the same length."""
    fn = get_metric(name)
    g, p = _as_array(golds, "golds"), _as_array(preds, "preds")
    s = None if scores is None else _as_array(scores, "scores")
    if len(g) != len(p):
        raise ValueError(f"metric {name}: {len(g)} golds but {len(p)} preds")
    if s is not None and len(s) != len(g):
        raise ValueError(f"metric {name}: {len(g)} golds but {len(s)} scores")
    return float(fn(g, p, s))


def compute_metrics(task_def, golds, preds, scores=None) -> dict[str, float]:
    """Every metric in ``task_def.metric_meta``, keyed by its name, in the YAML's order."""
    names = task_def.metric_meta
    if not names:
        raise ValueError(f"task {task_def.name}: metric_meta is empty")
    return {name: compute_metric(name, golds, preds, scores) for name in names}


def task_of(dataset: str) -> str:
    """The task of a ``{task}_{split}`` dataset name ('mnli_mismatched_dev' -> 'mnli'); a bare task name stays.

    Task names contain no '_' (data_utils.task_def enforces it), so everything before the first '_' is the task.
    """
    task = dataset.split("_", 1)[0]
    if not task:
        raise ValueError(f"glue score: cannot tell the task of dataset name '{dataset}'")
    return task


def _checked_values(dataset: str, metrics: Mapping[str, float]) -> list[float]:
    if not metrics:
        raise ValueError(f"glue score: dataset '{dataset}' has no metrics")
    return [float(v) for v in metrics.values()]


def glue_average(results: Mapping[str, Mapping[str, float]]) -> float:
    """The paper's dev GLUE score (A.1.3): average every metric of every split within a task, then the tasks.

    So MNLI's matched and mismatched accuracies count as one task, and MRPC's Acc/F1 as one number. A NaN
    metric (Pearson of constant predictions) makes the score NaN rather than stopping a training run.
    """
    if not results:
        raise ValueError("glue score: no results given")
    per_task: dict[str, list[float]] = {}
    for dataset, metrics in results.items():
        per_task.setdefault(task_of(dataset), []).extend(_checked_values(dataset, metrics))
    return sum(sum(v) / len(v) for v in per_task.values()) / len(per_task)


def glue_test_average(results: Mapping[str, Mapping[str, float]]) -> float:
    """The paper's test-server style score: the plain average of every reported number."""
    if not results:
        raise ValueError("glue score: no results given")
    values = [v for dataset, metrics in results.items() for v in _checked_values(dataset, metrics)]
    return sum(values) / len(values)

