"""What a run read: each shard's size and CRC-32, recorded in its training state and compared on ``--resume``.

The numbers are the shard cache's own key (data_utils/shard_cache.py ``shard_key``): loading a split computes
it once, for the cache and for this record alike, so the record costs no second pass over the file. The
modification time is part of the cache key but not of the comparison: a shard copied or touched with the same
bytes is the same data.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Union

COMPARED = ("size", "crc32")


def from_key(path: Union[str, Path], key: Mapping) -> dict:
    """The record of one shard, from its cache key (``{"size", "mtime_ns", "crc32"}``)."""
    return {"file": str(path), "size": int(key["size"]), "crc32": int(key["crc32"])}


def _what(record: Mapping) -> str:
    return f"{record['size']} bytes, CRC-32 {record['crc32']:08x}"


def changes(saved: Mapping[str, Mapping], current: Mapping[str, Mapping]) -> list[str]:
    """One phrase per shard (keyed by ``{task}_{split}``) whose bytes differ, or that only one side read."""
    out = []
    for name, then in saved.items():
        now: Optional[Mapping] = current.get(name)
        if now is None:
            out.append(f"{then['file']} (read then, not now)")
        elif any(then[k] != now[k] for k in COMPARED):
            out.append(f"{now['file']} ({_what(then)} then, {_what(now)} now)")
    out += [f"{now['file']} (read now, not then)" for name, now in current.items() if name not in saved]
    return out


def difference(where: Union[str, Path], saved: object, current: Mapping[str, Mapping]) -> Optional[str]:
    """One line on what changed since ``where`` (a training state) recorded ``saved``; None when nothing did or
    nothing was recorded (a state written before these records existed)."""
    if saved is None:
        return None
    if not _valid(saved):
        raise ValueError(f"{where}: its record of the shards read is malformed (not written by train.py?)")
    found = changes(saved, current)
    return f"{where} was written reading other data: {'; '.join(found)}" if found else None


def _valid(saved: object) -> bool:
    return isinstance(saved, dict) and all(
        isinstance(r, dict) and isinstance(r.get("file"), str)
        and all(isinstance(r.get(k), int) and not isinstance(r.get(k), bool) for k in COMPARED)
        for r in saved.values())
