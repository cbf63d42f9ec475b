"""The tokenized shard format: ``{root_dir}/{model_short_name}/{task}_{split}.jsonl``.

MT-DNN's shards, ``{task}_{split}.json`` with the same lines (plus keys such as ``attention_mask`` that are not
needed here), are read too when no ``.jsonl`` of that name exists.

One JSON object per line: ``uid`` (str), ``label`` (class id, or float for Regression; a test split holds its
TSV's labels when all are the task's, else the placeholder 0 / 0.0), ``token_id`` and ``type_id`` (lists of
ints; for PremiseAndMultiHypothesis, one list per hypothesis). Span and SequenceLabeling rows carry more fields after these (``EXTRA_KEYS``; see
data_utils/squad.py and data_utils/conll.py). A training shard written by prepare_distillation_data.py has one
more, ``soft_label``: the teachers' class probabilities (a list of n_class floats) or, for Regression, their
predicted value. ``format_line`` writes exactly what ``json.dumps`` of that dict writes, without its per-call cost.
"""
from __future__ import annotations

import functools
import os
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Iterator, Sequence, Union

import pretrained_models
from data_utils.safe_load import DataFileError, loads_json
from data_utils.safe_paths import plain_name
from data_utils.tsv import first_seen

KEYS = ("uid", "label", "token_id", "type_id")
SOFT_LABEL = "soft_label"
#: Fields after the base keys in Span rows (data_utils.squad) and SequenceLabeling rows (data_utils.conll).
EXTRA_KEYS = ("qid", "start", "end", "offsets", "context", "answers", "impossible", "words", "tags", "word_start")


class ShardError(ValueError):
    """A malformed shard line, as one line starting with ``file:line``."""


def model_short_name(name_or_path: str) -> str:
    """The shard folder's name: registry names stay, paths and hub ids keep their last part. A last part that
    cannot name a folder inside ``--root_dir`` (``.``, ``..``, nothing) is refused rather than written around."""
    if name_or_path in pretrained_models.ENCODERS:
        return name_or_path
    return plain_name(os.path.basename(os.path.normpath(name_or_path)),
                      f"--model {name_or_path}: the shard folder's name (the model's last path part)")


def shard_path(root_dir: Union[str, Path], model: str, task: str, split: str) -> Path:
    return Path(root_dir) / model_short_name(model) / f"{task}_{split}.jsonl"


def find_shard(data_dir: Union[str, Path], task: str, split: str) -> Path:
    """``{task}_{split}.jsonl``, or MT-DNN's ``{task}_{split}.json`` when only that exists (same line format;
    the .jsonl path is returned when neither does, for the error message)."""
    path = Path(data_dir) / f"{task}_{split}.jsonl"
    mtdnn = path.with_suffix(".json")
    return mtdnn if not path.is_file() and mtdnn.is_file() else path


def _ints(values: Sequence[int]) -> str:
    return "[" + ", ".join(map(str, values)) + "]"


def format_label(label: Union[int, float]) -> str:
    """JSON text of a label: ints as ints, floats with Python's shortest round-trip repr (as json does)."""
    if isinstance(label, float):
        return float.__repr__(label)
    return str(int(label))


@functools.lru_cache(maxsize=None)
def _zeros(n: int) -> str:
    return "[" + ", ".join(["0"] * n) + "]"


def _line(uid: str, label: Union[int, float], tok: str, typ: str) -> str:
    return (f'{{"uid": {encode_basestring_ascii(uid)}, "label": {format_label(label)}, '
            f'"token_id": {tok}, "type_id": {typ}}}')


def format_line(uid: str, label: Union[int, float], token_id, type_id) -> str:
    """One shard line (no newline), byte-identical to ``json.dumps(dict(uid=..., label=..., ...))``."""
    if token_id and isinstance(token_id[0], (list, tuple)):
        return _line(uid, label, "[" + ", ".join(map(_ints, token_id)) + "]",
                     "[" + ", ".join(map(_ints, type_id)) + "]")
    return _line(uid, label, _ints(token_id), _ints(type_id))


def format_line_zero_types(uid: str, label: Union[int, float], token_id: Sequence[int]) -> str:
    """``format_line`` with an all-zero ``type_id`` of the same length, without building that list."""
    return _line(uid, label, _ints(token_id), _zeros(len(token_id)))


def _check_record(rec, path, ln: int, mtdnn: bool = False) -> None:
    """``mtdnn``: an MT-DNN ``.json`` shard, whose lines may carry more keys (attention_mask, olabel, ...)."""
    base_ok = isinstance(rec, dict) and tuple(rec)[:len(KEYS)] == KEYS
    if not isinstance(rec, dict) or (not base_ok and not (mtdnn and set(KEYS) <= set(rec))):
        got = list(rec) if isinstance(rec, dict) else type(rec).__name__
        raise ShardError(f"{path}:{ln}: expected an object with keys {list(KEYS)}, got {got}")
    unknown = [k for k in rec if k not in KEYS and k not in EXTRA_KEYS and k != SOFT_LABEL]
    if unknown and not mtdnn:
        raise ShardError(f"{path}:{ln}: expected an object with keys {list(KEYS)}, then only fields among "
                         f"{[*EXTRA_KEYS, SOFT_LABEL]}; got unknown {unknown}")
    if SOFT_LABEL in rec:
        _check_soft_label(rec[SOFT_LABEL], path, ln)
    if mtdnn and isinstance(rec["uid"], int) and not isinstance(rec["uid"], bool):
        rec["uid"] = str(rec["uid"])
    tok, typ = rec["token_id"], rec["type_id"]
    if not isinstance(rec["uid"], str):
        raise ShardError(f"{path}:{ln}: uid must be a string")
    if isinstance(rec["label"], bool) or not isinstance(rec["label"], (int, float)):
        raise ShardError(f"{path}:{ln}: label must be a number")
    if not isinstance(tok, list) or not tok or not isinstance(typ, list):
        raise ShardError(f"{path}:{ln}: token_id must be a non-empty list")
    rows = tok if isinstance(tok[0], list) else [tok]
    types = typ if rows is tok else [typ]
    if len(rows) != len(types) or any(len(a) != len(b) for a, b in zip(rows, types)):
        raise ShardError(f"{path}:{ln}: token_id and type_id differ in shape")
    _check_extras(rec, path, ln)


def _check_extras(rec: dict, path, ln: int) -> None:
    """Token positions and per-token lists of Span / SequenceLabeling rows must fit the row."""
    n = len(rec["token_id"])
    if "offsets" in rec and (not isinstance(rec["offsets"], list) or len(rec["offsets"]) != n):
        raise ShardError(f"{path}:{ln}: offsets must be a list with one entry per token ({n})")
    for key in ("start", "end"):
        if key in rec and (not isinstance(rec[key], int) or isinstance(rec[key], bool) or not 0 <= rec[key] < n):
            raise ShardError(f"{path}:{ln}: {key} must be a token position in 0..{n - 1}, got {rec[key]!r}")
    if "words" in rec:
        words, tags, starts = rec["words"], rec.get("tags"), rec.get("word_start")
        if not isinstance(words, list) or not isinstance(tags, list) or not isinstance(starts, list) \
                or len(starts) != len(words) or len(tags) not in (0, len(words)):
            raise ShardError(f"{path}:{ln}: words, tags and word_start must be lists with one entry per word")
        if any(not isinstance(p, int) or not -1 <= p < n for p in starts):
            raise ShardError(f"{path}:{ln}: word_start must hold token positions in 0..{n - 1} (or -1)")


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_soft_label(soft, path, ln: int) -> None:
    if not (_number(soft) or (isinstance(soft, list) and soft and all(map(_number, soft)))):
        raise ShardError(f"{path}:{ln}: soft_label must be a number or a non-empty list of numbers")


def is_mtdnn_shard(path: Union[str, Path]) -> bool:
    """MT-DNN's ``.json`` shards: their lines may carry more keys than this project's."""
    return str(path).endswith(".json")


def iter_shard(path: Union[str, Path]) -> Iterator[tuple[int, dict]]:
    """(line number, record) for every line of a shard, each checked (keys, types, token_id/type_id shapes, a
    uid not seen on an earlier line: scores and submissions are keyed by uid)."""
    mtdnn = is_mtdnn_shard(path)
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as handle:
        for ln, line in enumerate(handle, start=1):
            try:
                rec = loads_json(line, path, ln, check_depth=False)  # every value's shape is checked below
            except DataFileError as exc:
                raise ShardError(str(exc)) from None
            _check_record(rec, path, ln, mtdnn)
            _check_new_uid(rec["uid"], seen, path, ln)
            yield ln, rec


def _check_new_uid(uid: str, seen: dict[str, int], path, ln: int) -> None:
    first = first_seen(uid, seen, ln)
    if first != ln:
        raise ShardError(f"{path}:{ln}: uid {uid[:40]!r} repeats line {first} (each example needs its own uid)")


def read_shard(path: Union[str, Path]) -> list[dict]:
    """All records of a shard, checked line by line; MT-DNN's extra keys dropped."""
    if not is_mtdnn_shard(path):
        return [rec for _, rec in iter_shard(path)]
    return [{k: rec[k] for k in (*KEYS, SOFT_LABEL) if k in rec} for _, rec in iter_shard(path)]
