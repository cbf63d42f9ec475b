"""A memory-mapped cache of a row shard, so MNLI/QQP-sized splits cost neither minutes of JSON parsing nor
gigabytes of Python lists in every rank.

``{shard folder}/.shard_cache/{shard name}.cache`` is one file: a magic, a JSON header (format version, the key of
the JSONL it was built from, array table, CRC-32 of the data) and 64-byte-aligned arrays:

- ``tok``/``typ``: all sequences' token ids / type ids back to back, each in the smallest integer dtype that
  holds its values; ``seq_off``: where each sequence starts (int64, one more than there are sequences);
- ``row_seq``: where each row's sequences start (a Ranking row has one per hypothesis); ``nested``: whether the
  row's token_id was a list of lists;
- ``tok_lo``/``tok_hi``/``typ_lo``/``typ_hi``: each sequence's smallest and largest id, so the encoder checks
  (whose limits depend on the run, not the shard) cost O(rows) at load instead of a pass over every token;
- ``labels`` (int64, or float64 when the shard's labels are all floats); ``uid_bytes``/``uid_off``: UTF-8 uids.

The key is the JSONL's size, mtime_ns and CRC-32 of its bytes: an edited, replaced or copied-over shard rebuilds
the cache, and a cache that fails any check on opening (magic, header, size, CRC) is rebuilt rather than read.
One process builds while the others of the node wait on an exclusive ``fcntl.flock`` of ``{name}.lock`` and then
map its result; the file is written to a project temp (data_utils/atomic.py) and renamed, so a reader never sees
half a cache and a killed builder's temp is removed by the next build's ``clean_stale_temps``. On a filesystem
without ``flock`` (Lustre mounted without ``-o flock``, NFS without a lock daemon) each process builds its own copy
and renames it into place (same bytes, so whichever rename lands last changes nothing), after one warning line.

A shard whose values the arrays cannot hold exactly (soft labels, Span/SequenceLabeling fields, non-integer ids,
float class labels mixed with ints, empty hypotheses) gets a small header-only cache that says so, and the
caller reads it into memory as before.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import struct
import zlib
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

from data_utils.atomic import atomic_write, clean_stale_temps
from data_utils.safe_load import loads_json
from data_utils.shards import EXTRA_KEYS, KEYS, SOFT_LABEL, ShardError, is_mtdnn_shard, iter_shard

log = logging.getLogger(__name__)

CACHE_DIR = ".shard_cache"
MAGIC = b"SAGESHC1"
VERSION = 2  # 2: shards are checked for repeated uids while the cache is built
ALIGN = 64
CHUNK_ROWS = 16_384  # rows parsed before their ids are packed into numpy (bounds the build's transient memory)
_READ = 1 << 20
_MAX_HEADER = 1 << 20
_INT_DTYPES = tuple(np.dtype(d) for d in (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.int64))


class Uncacheable(Exception):
    """The shard holds something the flat arrays cannot represent exactly; the reason is the message."""


def cache_path(shard: Union[str, Path]) -> Path:
    shard = Path(shard)
    return shard.parent / CACHE_DIR / f"{shard.name}.cache"


def _crc_file(path: Path, start: int = 0) -> int:
    crc = 0
    with open(path, "rb") as handle:
        handle.seek(start)
        while True:
            block = handle.read(_READ)
            if not block:
                return crc
            crc = zlib.crc32(block, crc)


def shard_key(shard: Union[str, Path]) -> dict:
    """What identifies the JSONL's content: size, mtime_ns and CRC-32 (a same-size, same-mtime edit too)."""
    st = os.stat(shard)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "crc32": _crc_file(Path(shard))}


def smallest_dtype(lo: int, hi: int) -> np.dtype:
    """The smallest integer dtype holding every value in [lo, hi]."""
    return next(d for d in _INT_DTYPES if np.iinfo(d).min <= lo and hi <= np.iinfo(d).max)


# ------------------------------------------------------------------------------------------------ reading
@dataclass
class CachedShard:
    """The arrays of one cache file, mapped read-only (pickles as its path: a worker re-maps the file)."""
    path: Path
    header: dict
    arrays: dict

    @property
    def rows(self) -> int:
        return int(self.header["rows"])

    def __getattr__(self, name: str):
        arrays = self.__dict__.get("arrays")
        if arrays is not None and name in arrays:
            return arrays[name]
        raise AttributeError(name)

    def __reduce__(self):
        return _reopen, (str(self.path), self.header["key"])


def _reopen(path: str, key: dict) -> CachedShard:
    shard = open_cache(Path(path), key, verify=False)
    if shard is None or shard.header.get("uncacheable"):
        raise RuntimeError(f"{path}: the shard cache changed or vanished while in use")
    return shard


def _read_header(path: Path) -> tuple[dict, int]:
    with open(path, "rb") as handle:
        start = handle.read(len(MAGIC) + 8)
        if len(start) != len(MAGIC) + 8 or start[:len(MAGIC)] != MAGIC:
            raise ValueError("not a shard cache (bad magic)")
        (size,) = struct.unpack("<Q", start[len(MAGIC):])
        if size > _MAX_HEADER:
            raise ValueError("header too large")
        raw = handle.read(size)
    if len(raw) != size:
        raise ValueError("truncated header")
    header = loads_json(raw.decode("utf-8"), path)
    if not isinstance(header, dict):
        raise ValueError("header is not an object")
    return header, len(MAGIC) + 8 + size


def open_cache(path: Path, key: dict, verify: bool = True) -> Optional[CachedShard]:
    """The cache at ``path`` if it is whole and built from the JSONL with ``key``, else None (the reason is
    logged at debug level). ``verify`` checks the CRC of the data, which a torn or corrupted file fails."""
    try:
        header, _ = _read_header(path)
        if header.get("version") != VERSION or header.get("key") != key:
            log.debug("%s: stale (built from another version of the shard)", path)
            return None
        if header.get("uncacheable"):
            return CachedShard(path, header, {})
        data_start, end = int(header["data_start"]), int(header["end"])
        if os.path.getsize(path) != end:
            raise ValueError(f"size {os.path.getsize(path)}, header says {end}")
        if verify and _crc_file(path, data_start) != header["crc32"]:
            raise ValueError("CRC mismatch")
        if end == data_start:
            return CachedShard(path, header, {name: np.zeros(0, dtype=spec["dtype"])
                                              for name, spec in header["arrays"].items()})
        whole = np.memmap(path, dtype=np.uint8, mode="r")
        arrays = {}
        for name, spec in header["arrays"].items():
            dtype, count, offset = np.dtype(spec["dtype"]), int(spec["count"]), int(spec["offset"])
            if offset < data_start or offset + count * dtype.itemsize > end:
                raise ValueError(f"array {name} outside the file")
            arrays[name] = whole[offset:offset + count * dtype.itemsize].view(dtype)
        return CachedShard(path, header, arrays)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        log.info("%s: unusable shard cache (%s); rebuilding it", path, exc)
        return None


# ------------------------------------------------------------------------------------------------ building
class _Columns:
    """The shard parsed line by line into compact buffers (ids packed into numpy every CHUNK_ROWS rows)."""

    def __init__(self) -> None:
        self.tok_chunks: list[np.ndarray] = []
        self.typ_chunks: list[np.ndarray] = []
        self.bounds = {"tok": [0, -1], "typ": [0, -1]}  # running [min, max] (empty: max < min)
        self.ranges = {k: [] for k in ("tok_lo", "tok_hi", "typ_lo", "typ_hi")}
        self.seq_len, self.row_nseq, self.nested = array("q"), array("q"), array("b")
        self.int_labels, self.float_labels = array("q"), array("d")
        self.label_kinds: set[str] = set()
        self.uids: list[bytes] = []
        self._tok: list = []
        self._typ: list = []
        self._lens: list[int] = []

    def add(self, rec: dict) -> None:
        tok, typ = rec["token_id"], rec["type_id"]
        nested = isinstance(tok[0], list)
        seqs, types = (tok, typ) if nested else ([tok], [typ])
        for s, t in zip(seqs, types):
            if not s:
                raise Uncacheable("an empty hypothesis")
            self._tok.extend(s)
            self._typ.extend(t)
            self._lens.append(len(s))
        self.row_nseq.append(len(seqs))
        self.nested.append(nested)
        self._add_label(rec["label"])
        self.uids.append(rec["uid"].encode("utf-8"))

    def _add_label(self, label) -> None:
        if isinstance(label, int):
            if not -2 ** 63 <= label < 2 ** 63:
                raise Uncacheable("a label outside int64")
            self.label_kinds.add("int")
            self.int_labels.append(label)
        else:
            self.label_kinds.add("float")
            self.float_labels.append(label)
        if len(self.label_kinds) > 1:
            raise Uncacheable("integer and float labels mixed")

    def flush(self) -> None:
        if not self._lens:
            return
        try:
            tok = np.frombuffer(array("q", self._tok), dtype=np.int64)
            typ = np.frombuffer(array("q", self._typ), dtype=np.int64)
        except (TypeError, OverflowError):
            raise Uncacheable("token or type ids that are not int64 integers") from None
        starts = np.concatenate(([0], np.cumsum(self._lens[:-1], dtype=np.int64)))
        for name, values, chunks in (("tok", tok, self.tok_chunks), ("typ", typ, self.typ_chunks)):
            lo, hi = np.minimum.reduceat(values, starts), np.maximum.reduceat(values, starts)
            self.ranges[f"{name}_lo"].append(lo)
            self.ranges[f"{name}_hi"].append(hi)
            bound = self.bounds[name]
            first = bound[1] < bound[0]
            bound[0] = int(lo.min()) if first else min(bound[0], int(lo.min()))
            bound[1] = int(hi.max()) if first else max(bound[1], int(hi.max()))
            chunks.append(values.astype(smallest_dtype(int(lo.min()), int(hi.max()))))
        self.seq_len.extend(self._lens)
        self._tok, self._typ, self._lens = [], [], []

    def arrays(self) -> dict[str, np.ndarray]:
        """name -> array (``tok``/``typ`` as lists of chunks, written one by one in their final dtype)."""
        self.flush()
        out = {}
        for name, chunks in (("tok", self.tok_chunks), ("typ", self.typ_chunks)):
            lo, hi = self.bounds[name]
            dtype = smallest_dtype(lo, hi) if hi >= lo else np.dtype(np.uint8)
            out[name] = [c.astype(dtype, copy=False) for c in chunks]
            for side in ("lo", "hi"):
                parts = self.ranges[f"{name}_{side}"]
                out[f"{name}_{side}"] = np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)
        out["seq_off"] = np.concatenate(([0], np.cumsum(np.frombuffer(self.seq_len, np.int64), dtype=np.int64)))
        out["row_seq"] = np.concatenate(([0], np.cumsum(np.frombuffer(self.row_nseq, np.int64), dtype=np.int64)))
        out["nested"] = np.frombuffer(self.nested, np.int8).astype(np.uint8)
        floats = self.label_kinds == {"float"}
        out["labels"] = np.frombuffer(self.float_labels if floats else self.int_labels,
                                      np.float64 if floats else np.int64)
        out["uid_off"] = np.concatenate(([0], np.cumsum([len(u) for u in self.uids], dtype=np.int64)))
        out["uid_bytes"] = np.frombuffer(b"".join(self.uids), np.uint8)
        return out


def parse_shard(path: Path) -> _Columns:
    """Every line read and checked as ``read_shard`` does (same ``file:line`` errors), into compact columns;
    Uncacheable when a line holds something the columns cannot."""
    cols, mtdnn = _Columns(), is_mtdnn_shard(path)
    for ln, rec in iter_shard(path):
        if SOFT_LABEL in rec:
            raise Uncacheable("soft labels (distillation)")
        if not mtdnn and any(k in EXTRA_KEYS for k in rec):
            raise Uncacheable("Span/SequenceLabeling fields")
        cols.add(rec if not mtdnn else {k: rec[k] for k in KEYS})
        if ln % CHUNK_ROWS == 0:
            cols.flush()
    return cols


def _pad(n: int) -> int:
    return -n % ALIGN


def write_cache(target: Path, key: dict, arrays: Optional[dict], uncacheable: str = "") -> None:
    """Header and arrays into a project temp, renamed over ``target`` only when complete."""
    table, offset, header = {}, 0, {"version": VERSION, "key": key}
    if uncacheable:
        header["uncacheable"] = uncacheable
    else:
        for name, value in arrays.items():
            parts = value if isinstance(value, list) else [value]
            dtype = parts[0].dtype if parts else np.dtype(np.uint8)
            count = sum(p.size for p in parts)
            table[name] = {"dtype": dtype.str, "count": count, "offset": offset}
            offset += count * dtype.itemsize
            offset += _pad(offset)
        header["rows"] = len(arrays["nested"])
    # The header's own size fixes where the data starts, so size it with placeholder numbers first.
    header.update(arrays=table, crc32=0, data_start=0, end=0)
    # (each table offset grows by data_start below: room for 20 more digits each)
    probe = len(json.dumps({**header, "crc32": 2 ** 32, "data_start": 2 ** 60, "end": 2 ** 60}).encode())
    data_start = len(MAGIC) + 8 + probe + 20 * len(table)
    data_start += _pad(data_start)
    for spec in table.values():
        spec["offset"] += data_start
    header.update(data_start=data_start, end=data_start + offset)
    with atomic_write(target, "wb") as handle:
        handle.write(b"\0" * data_start)  # header placeholder, written last with the CRC
        crc, written = 0, 0
        for name in table:
            value = arrays[name]
            for part in (value if isinstance(value, list) else [value]):
                block = np.ascontiguousarray(part).tobytes()
                handle.write(block)
                crc, written = zlib.crc32(block, crc), written + len(block)
            pad = b"\0" * _pad(written)
            handle.write(pad)
            crc, written = zlib.crc32(pad, crc), written + len(pad)
        header["crc32"] = crc
        raw = json.dumps(header).encode("utf-8")
        raw += b" " * (data_start - len(MAGIC) - 8 - len(raw))
        handle.seek(0)
        handle.write(MAGIC + struct.pack("<Q", len(raw)) + raw)


def load(shard: Union[str, Path], key: Optional[dict] = None) -> Optional[CachedShard]:
    """The shard's mapped cache, built first when missing, stale or damaged; None when the shard must be read
    into memory instead (it holds what the cache cannot, its folder takes no cache, or the write failed). Bad
    lines raise the same ``file:line`` ShardError as ``read_shard``. ``key``: the shard's ``shard_key`` when the
    caller computed it already (it also records it), so the file is hashed once."""
    shard = Path(shard)
    target = cache_path(shard)
    key = key if key is not None else shard_key(shard)
    found = open_cache(target, key)
    if found is None:
        try:
            target.parent.mkdir(exist_ok=True)
            lock = open(target.with_name(target.name[:-len(".cache")] + ".lock"), "a+b")
        except OSError as exc:
            log.warning("%s: cannot write a shard cache there (%s); reading the shard into memory", target.parent,
                        exc)
            return None
        with lock:  # closing the file releases the lock, also when the build raises
            _lock_or_build_alone(lock, target.parent)
            found = open_cache(target, key)  # another rank may have built it while this one waited
            if found is None:
                for what in clean_stale_temps(target.parent):
                    log.info("%s: %s (left by an interrupted cache build)", target.parent, what)
                try:
                    found = _build(shard, target, key)
                except OSError as exc:  # a full or failing disk: the run goes on without the cache
                    log.warning("%s: could not write the shard cache (%s); reading the shard into memory", target,
                                getattr(exc, "original", None) or exc)  # the path is named already
                    return None
    return None if found.header.get("uncacheable") else found


#: what flock fails with where the filesystem has no such locks (Lustre without -o flock: ENOSYS; NFS: ENOLCK)
_NO_FLOCK = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})
_SAID_NO_FLOCK: set[str] = set()


def _lock_or_build_alone(handle, folder: Path) -> None:
    """Wait for the build lock; where the filesystem has no ``flock``, say once per folder that this process
    builds its own copy (other errors are raised)."""
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
    except OSError as exc:
        if exc.errno not in _NO_FLOCK:
            raise
        if str(folder) not in _SAID_NO_FLOCK:
            _SAID_NO_FLOCK.add(str(folder))
            log.warning("%s: this filesystem does not support flock (%s); each process builds its own copy of a "
                        "missing shard cache and renames it into place", folder, exc.strerror or exc)


def _build(shard: Path, target: Path, key: dict) -> CachedShard:
    try:
        arrays, reason = parse_shard(shard).arrays(), ""
    except Uncacheable as exc:
        arrays, reason = None, str(exc)
        log.info("%s: %s; this shard is read into memory (no cache)", shard, reason)
    if shard_key(shard) != key:
        raise ShardError(f"{shard}: the shard changed while its cache was being built; run again")
    write_cache(target, key, arrays, reason)
    built = open_cache(target, key, verify=False)
    if built is None:
        raise RuntimeError(f"{target}: the shard cache just written cannot be read back")
    return built
