"""Score files in MT-DNN's layout: ``{"metrics", "predictions", "uids", "scores"}`` with ``scores`` one flat list.

MT-DNN's tooling (``calc_metrics.py``, ``prepare_distillation_data.py``, via its ``load_score_file``) reads a
score file as ``n_class`` consecutive values per row, rows in ``uids`` order: a classification row's class
probabilities, a ranking row's per-hypothesis probabilities, one value per regression row. This project writes
the same layout, so those tools and this project's read each other's files. Rows whose outputs vary in length
(a SequenceLabeling sentence: one value per word) are concatenated too; ``predictions[i]`` then says how many
values belong to row ``i``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence, Union

from data_utils.safe_load import DataFileError, read_json


def flat_scores(rows: Sequence[Any]) -> list:
    """Each row's scores, concatenated: a list row contributes its items, a single value itself."""
    out: list = []
    for row in rows:
        if isinstance(row, (list, tuple)):
            out.extend(row)
        else:
            out.append(row)
    return out


def read_score_file(path: Union[str, Path], n_class: int) -> dict[str, tuple[Any, list]]:
    """uid -> (prediction, its ``n_class`` scores), in file order; a file not in that layout is a one-line error
    naming it."""
    path = Path(path)
    try:
        obj = read_json(path, "score file")  # bounded: a hostile file is one line, never a hang
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: score file not found") from None
    except DataFileError as exc:
        raise ValueError(f"{path}: not a JSON score file ({str(exc).removeprefix(f'{path}: ')})") from None
    if not isinstance(obj, dict) or not all(isinstance(obj.get(k), list) for k in ("uids", "predictions", "scores")):
        raise ValueError(f"{path}: not a score file (expected lists 'uids', 'predictions' and 'scores')")
    uids, preds, scores = obj["uids"], obj["predictions"], obj["scores"]
    if len(preds) != len(uids):
        raise ValueError(f"{path}: {len(uids)} uids but {len(preds)} predictions")
    if any(isinstance(s, list) for s in scores):
        raise ValueError(f"{path}: 'scores' holds one list per row; MT-DNN's layout (written by this project's "
                         "predict.py and train.py) is one flat list")
    if len(scores) != n_class * len(uids):
        raise ValueError(f"{path}: 'scores' holds {len(scores)} values for {len(uids)} rows; a task with n_class "
                         f"{n_class} needs {n_class * len(uids)}")
    if len(set(uids)) != len(uids):
        raise ValueError(f"{path}: a uid appears twice")
    return {str(uid): (pred, scores[i * n_class:(i + 1) * n_class])
            for i, (uid, pred) in enumerate(zip(uids, preds))}


def check_same_rows(scored: dict, uids, score_path, tsv_path) -> None:
    """Refuse a score file holding rows the TSV lacks: uids are row numbers in most splits, so another split's
    score file would otherwise match by uid, row for wrong row."""
    extra = set(scored) - set(uids)
    if extra:
        raise ValueError(f"{score_path} holds {len(extra)} uids {tsv_path} lacks (first: {sorted(extra)[0]}); "
                         "the two files must hold the same rows")
