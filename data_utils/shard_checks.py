"""Shard contents checked against the task and the encoder before training starts.

``read_shard`` checks each line's shape; this checks what only the task and the encoder know: labels in the
task's range, token ids inside the vocabulary, token types inside the type vocabulary, and lengths within the
encoder's position embeddings. A violation would otherwise surface as an ``IndexError`` (or a silently wrong
score) in the middle of a run. Checks run on numpy arrays of per-row extremes, so a 400k-row shard costs well
under a second; the slow per-row path runs only to name the first bad line.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from data_utils.shards import ShardError
from data_utils.task_def import DataFormat, TaskDef

# Encoders whose position ids start after the padding id (fairseq style), so fewer positions are usable.
OFFSET_POSITION_TYPES = ("roberta", "xlm-roberta", "camembert", "longformer")


@dataclass(frozen=True)
class EncoderLimits:
    """What an encoder accepts: token ids < vocab_size, type ids < type_vocab_size (None: type ids are not
    embedded, as in DeBERTa), at most max_positions (None: no absolute positions)."""
    name: str
    vocab_size: int
    type_vocab_size: Optional[int]
    max_positions: Optional[int]


def encoder_positions(config) -> Optional[int]:
    """Usable sequence length of an HF config (None when it has no absolute position embeddings)."""
    positions = getattr(config, "max_position_embeddings", None)
    if not isinstance(positions, int) or positions <= 0:  # XLNet reports -1: relative positions only
        return None
    if getattr(config, "model_type", "") in OFFSET_POSITION_TYPES:
        positions -= (getattr(config, "pad_token_id", 1) or 0) + 1
    return int(positions)


def encoder_limits(config, name: str) -> EncoderLimits:
    types = getattr(config, "type_vocab_size", None)
    return EncoderLimits(name, int(config.vocab_size), int(types) if types else None, encoder_positions(config))


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def check_labels(path: Path, task_def: TaskDef, labels: Sequence) -> None:
    """Class ids (and Ranking's index of the right hypothesis) in 0..n_class-1; regression labels finite."""
    if task_def.is_regression:
        values = np.asarray(labels, dtype=np.float64)  # read_shard already refused non-numbers
        bad = ~np.isfinite(values)
        if bad.any():
            i = _first(bad)
            raise ShardError(f"{path}:{i + 1}: label {labels[i]!r} is not finite (task {task_def.name})")
        return
    values = np.asarray(labels)
    n = task_def.n_class
    if values.dtype.kind != "i":  # a float, or an int too large for int64
        i = next(i for i, v in enumerate(labels) if not isinstance(v, int) or not 0 <= v < n)
        raise ShardError(f"{path}:{i + 1}: label {str(labels[i])[:40]} is not a class id of task {task_def.name} "
                         f"(integers 0..{n - 1})")
    bad = (values < 0) | (values >= n)
    if bad.any():
        i = _first(bad)
        what = "hypotheses" if task_def.data_format is DataFormat.PremiseAndMultiHypothesis else "classes"
        raise ShardError(f"{path}:{i + 1}: label {labels[i]} is outside 0..{n - 1} (task {task_def.name} has "
                         f"{n} {what})")


def _row_ranges(rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray, Optional[int]]:
    """Per-row min and max of integer rows, or the index of the first row holding a non-integer."""
    sizes = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    try:  # fromiter is ~2.5x faster than np.array(list); it truncates a float id as torch.tensor(long) would
        flat = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=int(sizes.sum()))
    except (TypeError, ValueError, OverflowError):  # a string, null, list or out-of-int64 value somewhere
        bad = next((i for i, r in enumerate(rows)
                    if not all(isinstance(v, (int, float)) and -2**63 <= v < 2**63 for v in r)), 0)
        return sizes, sizes, bad
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    return np.minimum.reduceat(flat, starts), np.maximum.reduceat(flat, starts), None


def _check_ids(path: Path, what: str, rows: Sequence, per_example: int, limit: int, hint: str) -> None:
    low, high, bad = _row_ranges(rows)
    if bad is not None:
        raise ShardError(f"{path}:{bad // per_example + 1}: {what} must be integers")
    _check_range(path, what, low, high, per_example, limit, hint)


def _check_range(path: Path, what: str, low: np.ndarray, high: np.ndarray, per_example: int, limit: int,
                 hint: str) -> None:
    low, high = np.asarray(low, dtype=np.int64), np.asarray(high, dtype=np.int64)
    out = (low < 0) | (high >= limit)
    if out.any():
        row = _first(out)
        value = int(low[row]) if low[row] < 0 else int(high[row])
        raise ShardError(f"{path}:{row // per_example + 1}: {what} {value} is outside 0..{limit - 1} {hint}")


def _vocab_hint(limits: EncoderLimits) -> str:
    return f"(encoder {limits.name} has a vocabulary of {limits.vocab_size}; was the shard made for it?)"


def _types_hint(limits: EncoderLimits) -> str:
    return f"(encoder {limits.name} has {limits.type_vocab_size} token type(s))"


def check_encoder_fit(path: Path, token_ids: Sequence, type_ids: Sequence, lengths: Sequence[int],
                      limits: EncoderLimits, ranking: bool, max_seq_len: int) -> None:
    """Token ids, type ids and lengths (after --max_seq_len truncation) that the encoder can embed."""
    if not token_ids:
        return
    k = len(token_ids[0]) if ranking else 1
    toks = list(chain.from_iterable(token_ids)) if ranking else token_ids
    types = list(chain.from_iterable(type_ids)) if ranking else type_ids
    _check_ids(path, "token id", toks, k, limits.vocab_size, _vocab_hint(limits))
    if limits.type_vocab_size is not None:
        _check_ids(path, "type id", types, k, limits.type_vocab_size, _types_hint(limits))
    _check_lengths(path, lengths, limits, max_seq_len)


def check_encoder_ranges(path: Path, tok_range: tuple, type_range: tuple, lengths: Sequence[int],
                         limits: EncoderLimits, per_example: int, max_seq_len: int) -> None:
    """``check_encoder_fit`` from each (truncated) sequence's smallest and largest token and type id, as the
    memory-mapped shard cache keeps them, with the same messages."""
    _check_range(path, "token id", *tok_range, per_example, limits.vocab_size, _vocab_hint(limits))
    if limits.type_vocab_size is not None:
        _check_range(path, "type id", *type_range, per_example, limits.type_vocab_size, _types_hint(limits))
    _check_lengths(path, lengths, limits, max_seq_len)


def _check_lengths(path: Path, lengths: Sequence[int], limits: EncoderLimits, max_seq_len: int) -> None:
    if limits.max_positions is None:
        return
    too_long = np.asarray(lengths) > limits.max_positions
    if too_long.any():
        i = _first(too_long)
        raise ShardError(f"{path}:{i + 1}: {lengths[i]} tokens after --max_seq_len {max_seq_len}, but encoder "
                         f"{limits.name} has {limits.max_positions} positions; use --max_seq_len "
                         f"{limits.max_positions} or less")
