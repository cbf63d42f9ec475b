"""Batches for multi-task training: one task per batch, tasks interleaved, lengths bucketed, padding to ×8.

An epoch's plan (which examples form which batch, in which order) is a pure function of (seed, epoch), drawn
from a private generator, so a resumed run rebuilds the same plan and skips the batches it already consumed.
Distributed runs cut every global batch into per-rank slices, so all ranks train the same task at each step.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from data_utils import shard_cache, shard_fingerprint
from data_utils.shard_checks import EncoderLimits, check_encoder_fit, check_encoder_ranges, check_labels
from data_utils.shards import find_shard, read_shard
from data_utils.task_def import DataFormat, TaskDef, TaskType

PAD_MULTIPLE = 8
BUCKET_BATCHES = 50  # examples are length-sorted within windows of this many batches


@dataclass
class TaskData:
    """One tokenized split, with each example's (max) sequence length. ``token_ids``/``type_ids``/``uids`` are
    lists, or read-only views over the shard's memory-mapped cache that index and compare like those lists."""
    task_def: TaskDef
    split: str
    uids: list[str]
    labels: list
    token_ids: list
    type_ids: list
    lengths: list[int]
    soft_labels: Optional[list] = None  # teachers' soft targets (prepare_distillation_data.py), when the shard has them
    extras: list[dict] = None  # per row, the shard's fields beyond the four base keys (Span, SequenceLabeling)
    fingerprint: Optional[dict] = None  # the shard file's size and CRC-32 (data_utils/shard_fingerprint.py)

    @property
    def name(self) -> str:
        return f"{self.task_def.name}_{self.split}"

    @property
    def ranking(self) -> bool:
        return self.task_def.data_format is DataFormat.PremiseAndMultiHypothesis

    def __len__(self) -> int:
        return len(self.uids)


def _truncate(ids: list[int], max_len: int) -> list[int]:
    """Keep the first tokens and the final special token ([SEP]/</s>), as the shard's own truncation does."""
    return ids if len(ids) <= max_len else ids[: max_len - 1] + ids[-1:]


def load_split(data_dir: str | Path, task_def: TaskDef, split: str, max_seq_len: int,
               limit: int = 0, encoder: Optional[EncoderLimits] = None, cache: bool = True) -> TaskData:
    """A split, its labels checked against the task and (given ``encoder``) its token ids, type ids and
    truncated lengths against the encoder, so bad data fails here with ``file:line`` and not mid-run.

    With ``cache``, row tasks (Classification, Regression, Ranking) are served from the shard's memory-mapped
    cache (data_utils/shard_cache.py), built on first use: ``token_ids``/``type_ids``/``uids`` are then read-only
    sequence views that return each row as today's lists would hold it. Span/SequenceLabeling tasks, shards with
    soft labels (distillation) and shards the cache cannot hold exactly keep the in-memory path below.

    ``fingerprint`` is the whole file's (not only the first ``limit`` rows'): the cache's key, computed once."""
    path = find_shard(data_dir, task_def.name, split)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: shard not found (run prepro_std.py for task '{task_def.name}', "
                                f"split '{split}', or check --data_dir)")
    return load_shard(path, task_def, split, max_seq_len, limit, encoder, cache)


def load_shard(path: Path, task_def: TaskDef, split: str, max_seq_len: int, limit: int = 0,
               encoder: Optional[EncoderLimits] = None, cache: bool = True) -> TaskData:
    """:func:`load_split` for a shard file named by its path (MT-DNN's ``predict.py --prep_input``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: shard not found")
    key = shard_cache.shard_key(path)  # the cache's key and the run's record of what it read: one pass
    shard = shard_cache.load(path, key) if cache and not task_def.token_level else None
    data = (_cached_split(path, shard, task_def, split, max_seq_len, limit, encoder) if shard is not None
            else _read_split(path, task_def, split, max_seq_len, limit, encoder))
    data.fingerprint = shard_fingerprint.from_key(path, key)
    return data


def _read_split(path: Path, task_def: TaskDef, split: str, max_seq_len: int, limit: int,
                encoder: Optional[EncoderLimits]) -> TaskData:
    """The split read into memory, every row checked."""
    records = read_shard(path)
    if limit:
        records = records[:limit]
    if not records:
        raise ValueError(f"{path}: shard is empty")
    ranking = task_def.data_format is DataFormat.PremiseAndMultiHypothesis
    uids, labels, toks, types, lengths, extras = [], [], [], [], [], []
    soft = [rec.get("soft_label") for rec in records]
    if any(s is not None for s in soft):
        _check_soft_labels(path, task_def, soft)
    for ln, rec in enumerate(records, start=1):
        tok, typ = rec["token_id"], rec["type_id"]
        if task_def.token_level:
            _check_token_level(path, ln, task_def, rec, max_seq_len)
            extras.append({k: v for k, v in rec.items() if k not in ("uid", "label", "token_id", "type_id")})
        if ranking:
            if not isinstance(tok[0], list) or len(tok) != task_def.n_class:
                raise ValueError(f"{path}:{ln}: task {task_def.name} expects {task_def.n_class} hypotheses")
            tok = [_truncate(t, max_seq_len) for t in tok]
            typ = [_truncate(t, max_seq_len) for t in typ]
            length = max(len(t) for t in tok)
        else:
            if isinstance(tok[0], list):
                raise ValueError(f"{path}:{ln}: task {task_def.name} expects one sequence, got several")
            tok, typ = _truncate(tok, max_seq_len), _truncate(typ, max_seq_len)
            length = len(tok)
        uids.append(rec["uid"])
        labels.append(rec["label"])
        toks.append(tok)
        types.append(typ)
        lengths.append(length)
    if not task_def.token_level:  # Span / SequenceLabeling rows are checked by _check_token_level
        check_labels(path, task_def, labels)
    if encoder is not None:
        check_encoder_fit(path, toks, types, lengths, encoder, ranking, max_seq_len)
    return TaskData(task_def, split, uids, labels, toks, types, lengths,
                    soft if any(s is not None for s in soft) else None, extras if task_def.token_level else None)


# ------------------------------------------------------------------------------------------------ cached rows
class _View(Sequence):
    """A read-only sequence over a mapped cache; equal to any sequence with the same items (as a list is)."""

    def __init__(self, n: int):
        self._n = n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: Union[int, slice]):
        if isinstance(i, slice):
            return [self._item(j) for j in range(*i.indices(self._n))]
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(f"row {i} of {self._n}")
        return self._item(int(i))

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and not isinstance(other, str) and len(other) == self._n \
            and all(a == b for a, b in zip(self, other))

    __hash__ = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._n} rows)"


class CachedRows(_View):
    """Row i's token (or type) ids as a list, cut to ``max_len`` as ``_truncate`` cuts; for Ranking rows, one
    list per hypothesis."""

    def __init__(self, shard, column: str, n: int, max_len: int, ranking: bool):
        super().__init__(n)
        self._shard, self._column, self._max_len, self._ranking = shard, column, max_len, ranking

    def _seq(self, flat: np.ndarray, off: np.ndarray, s: int) -> list[int]:
        a, b = int(off[s]), int(off[s + 1])
        if b - a <= self._max_len:
            return flat[a:b].tolist()
        return flat[a:a + self._max_len - 1].tolist() + [int(flat[b - 1])]

    def _item(self, i: int):
        flat, off = getattr(self._shard, self._column), self._shard.seq_off
        if not self._ranking:
            return self._seq(flat, off, i)
        row_seq = self._shard.row_seq
        return [self._seq(flat, off, s) for s in range(int(row_seq[i]), int(row_seq[i + 1]))]


class CachedStrings(_View):
    """Row i's uid, decoded from the cache's UTF-8 buffer."""

    def __init__(self, shard, n: int):
        super().__init__(n)
        self._shard = shard

    def _item(self, i: int) -> str:
        off = self._shard.uid_off
        return self._shard.uid_bytes[int(off[i]):int(off[i + 1])].tobytes().decode("utf-8")


def _truncated_ranges(shard, column: str, n_seq: int, seq_len: np.ndarray, max_len: int):
    """Per sequence (smallest, largest) id after ``_truncate``: kept from the cache, recomputed for the few
    sequences longer than ``max_len`` (their cut-off tail no longer counts, as in the in-memory path)."""
    low = np.asarray(getattr(shard, f"{column}_lo")[:n_seq], dtype=np.int64)
    high = np.asarray(getattr(shard, f"{column}_hi")[:n_seq], dtype=np.int64)
    long_rows = np.flatnonzero(seq_len > max_len)
    if long_rows.size:
        low, high = low.copy(), high.copy()
        flat, off = getattr(shard, column), shard.seq_off
        for s in long_rows.tolist():
            a, b = int(off[s]), int(off[s + 1])
            kept = np.append(flat[a:a + max_len - 1], flat[b - 1]).astype(np.int64)
            low[s], high[s] = kept.min(), kept.max()
    return low, high


def _cached_split(path: Path, shard, task_def: TaskDef, split: str, max_seq_len: int, limit: int,
                  encoder: Optional[EncoderLimits]) -> TaskData:
    """The in-memory path's TaskData and checks (same order, same messages), from the mapped cache."""
    n = min(limit, shard.rows) if limit else shard.rows
    if not n:
        raise ValueError(f"{path}: shard is empty")
    ranking = task_def.data_format is DataFormat.PremiseAndMultiHypothesis
    nested = np.asarray(shard.nested[:n]) != 0
    n_seq_per_row = np.diff(np.asarray(shard.row_seq[:n + 1]))
    if ranking:
        bad = ~nested | (n_seq_per_row != task_def.n_class)
        if bad.any():
            raise ValueError(f"{path}:{int(np.flatnonzero(bad)[0]) + 1}: task {task_def.name} expects "
                             f"{task_def.n_class} hypotheses")
    elif nested.any():
        raise ValueError(f"{path}:{int(np.flatnonzero(nested)[0]) + 1}: task {task_def.name} expects one "
                         "sequence, got several")
    n_seq = int(shard.row_seq[n])
    seq_len = np.diff(np.asarray(shard.seq_off[:n_seq + 1]))
    kept = np.minimum(seq_len, max_seq_len)
    lengths = (kept.reshape(n, task_def.n_class).max(axis=1) if ranking else kept).tolist()
    labels = shard.labels[:n].tolist()
    check_labels(path, task_def, labels)
    if encoder is not None:
        check_encoder_ranges(path, _truncated_ranges(shard, "tok", n_seq, seq_len, max_seq_len),
                             _truncated_ranges(shard, "typ", n_seq, seq_len, max_seq_len), lengths, encoder,
                             task_def.n_class if ranking else 1, max_seq_len)
    rows = [CachedRows(shard, column, n, max_seq_len, ranking) for column in ("tok", "typ")]
    return TaskData(task_def, split, CachedStrings(shard, n), labels, rows[0], rows[1], lengths)


def _check_soft_labels(path: Path, task_def: TaskDef, soft: list) -> None:
    """Every line or none has a soft_label, of the task's shape: n_class probabilities, or one value."""
    regression = task_def.is_regression
    for ln, value in enumerate(soft, start=1):
        if value is None:
            raise ValueError(f"{path}:{ln}: no soft_label, while other lines have one")
        if regression != (not isinstance(value, list)) or (not regression and len(value) != task_def.n_class):
            want = "one number" if regression else f"a list of {task_def.n_class} probabilities"
            raise ValueError(f"{path}:{ln}: soft_label of task {task_def.name} must be {want}")
def _check_token_level(path, ln: int, task_def: TaskDef, rec: dict, max_seq_len: int) -> None:
    """Token positions in these rows point into the row as prepro_std.py built it: it cannot be cut here."""
    from data_utils.conll import SEQUENCE_KEYS
    from data_utils.squad import SPAN_KEYS
    keys = SPAN_KEYS if task_def.task_type is TaskType.Span else SEQUENCE_KEYS
    missing = [k for k in keys if k not in rec]
    if missing:
        raise ValueError(f"{path}:{ln}: a {task_def.task_type.name} row needs the fields {list(keys)}; missing "
                         f"{missing} (rebuild the shard with prepro_std.py)")
    if len(rec["token_id"]) > max_seq_len:
        raise ValueError(f"{path}:{ln}: {len(rec['token_id'])} tokens, more than --max_seq_len {max_seq_len}; "
                         f"{task_def.task_type.name} rows cannot be cut after prepro_std.py: rebuild the shards "
                         "with prepro_std.py --max_seq_len (windows/sentences are made to fit there)")


# ------------------------------------------------------------------------------------------------ planning
def bucketed_batches(lengths: Sequence[int], batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """Shuffle, sort by length inside windows of BUCKET_BATCHES batches, cut into batches (little padding)."""
    perm = torch.randperm(len(lengths), generator=generator).tolist()
    window = batch_size * BUCKET_BATCHES
    batches = []
    for start in range(0, len(perm), window):
        chunk = sorted(perm[start:start + window], key=lambda i: lengths[i])
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    return batches


def _shuffled(items: list, generator: torch.Generator) -> list:
    return [items[i] for i in torch.randperm(len(items), generator=generator).tolist()]


def epoch_plan(train_sets: Sequence[TaskData], batch_size: int, seed: int, epoch: int, mix_opt: int = 0,
               ratio: float = 0.0) -> list[tuple[int, list[int]]]:
    """[(task index, example indices)] for one epoch.

    Every task contributes all its batches (so tasks mix in proportion to their size); with ``ratio`` > 0 the
    auxiliary tasks (all but the first) together contribute at most ratio × the first task's batch count.
    ``mix_opt`` 0 shuffles all batches together; 1 puts the auxiliary tasks' batches first, then the first
    task's (MT-DNN's option).
    """
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    per_task = [[(t, b) for b in bucketed_batches(ds.lengths, batch_size, gen)] for t, ds in enumerate(train_sets)]
    main, aux = per_task[0], [b for batches in per_task[1:] for b in batches]
    if ratio > 0 and aux:
        aux = _shuffled(aux, gen)[: max(1, int(ratio * len(main)))]
    if mix_opt == 1:
        return _shuffled(aux, gen) + _shuffled(main, gen)
    return _shuffled(main + aux, gen)


def eval_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Deterministic length-sorted batches for evaluation (results are put back in input order)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def shard_for_rank(indices: list[int], rank: int, world_size: int) -> list[int]:
    """This rank's contiguous slice of a global batch (sizes differ by at most one)."""
    n = len(indices)
    lo, hi = rank * n // world_size, (rank + 1) * n // world_size
    return indices[lo:hi]


# ------------------------------------------------------------------------------------------------ collation
def _padded_length(max_len: int) -> int:
    return -(-max_len // PAD_MULTIPLE) * PAD_MULTIPLE


def collate(data: TaskData, indices: list[int], pad_id: int, with_labels: bool = True,
            with_soft_labels: bool = False) -> dict:
    """Tensors for ``indices``: input_ids/attention_mask/token_type_ids of (B, L) or (B, K, L), labels (B,), and
    (``with_soft_labels``, when the shard has them) soft_labels (B, n_class) or (B,)."""
    seqs = [data.token_ids[i] for i in indices]
    types = [data.type_ids[i] for i in indices]
    if data.ranking:
        k = len(seqs[0])
        seqs = [s for group in seqs for s in group]
        types = [t for group in types for t in group]
    length = _padded_length(max(len(s) for s in seqs))
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    tt = torch.zeros((len(seqs), length), dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for row, (s, t) in enumerate(zip(seqs, types)):
        ids[row, :len(s)] = torch.tensor(s, dtype=torch.long)
        tt[row, :len(t)] = torch.tensor(t, dtype=torch.long)
        mask[row, :len(s)] = 1
    if data.ranking:
        ids, tt, mask = (x.view(len(indices), k, length) for x in (ids, tt, mask))
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": tt}
    if with_labels:
        batch["labels"] = LABELS.get(data.task_def.task_type, _row_labels)(data, indices, length)
        if with_soft_labels and data.soft_labels is not None:
            batch["soft_labels"] = torch.tensor([data.soft_labels[i] for i in indices], dtype=torch.float32)
    return batch


def _row_labels(data: TaskData, indices: list[int], length: int) -> torch.Tensor:
    """(B,) class ids, or floats for Regression."""
    dtype = torch.float32 if data.task_def.is_regression else torch.long
    return torch.tensor([data.labels[i] for i in indices], dtype=dtype)


def _span_labels(data: TaskData, indices: list[int], length: int) -> torch.Tensor:
    """(B, 2) start and end token positions (0, 0 when the window does not hold the answer)."""
    return torch.tensor([[data.extras[i]["start"], data.extras[i]["end"]] for i in indices], dtype=torch.long)


def _tag_labels(data: TaskData, indices: list[int], length: int) -> torch.Tensor:
    """(B, L) tag ids on each word's first sub-token, -1 (ignored by the loss) everywhere else."""
    out = torch.full((len(indices), length), -1, dtype=torch.long)
    for row, i in enumerate(indices):
        for pos, tag in zip(data.extras[i]["word_start"], data.extras[i]["tags"]):
            if pos >= 0:
                out[row, pos] = tag
    return out


#: How each task type's labels are batched (the default: one label per row).
LABELS = {TaskType.Span: _span_labels, TaskType.SequenceLabeling: _tag_labels}


def to_device(batch: dict, device: torch.device) -> dict:
    """Pinned, non-blocking host-to-GPU copies (no sync); CPU batches pass through."""
    if device.type == "cpu":
        return batch
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}
