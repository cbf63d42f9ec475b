"""Counting host syncs, and where they come from.

On CUDA, torch's sync debug mode reports every operation that makes the host wait for the GPU (``.item()``, a
blocking copy to the host, ``nonzero``, a pageable copy to the device...); each report is attributed to the
innermost frame of this project's code on the Python stack. Elsewhere no operation waits for a device, so what
is counted is what *would* wait on one: aten operations that read a value back to the host
(``_local_scalar_dense``: item, bool, int, float) or whose output size depends on the data (``nonzero``).

    with SyncCounter(device) as syncs:
        ...
    syncs.count, syncs.sites.most_common(3)
"""
from __future__ import annotations

import collections
import traceback
import warnings
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
_PROJECT = tuple(str(ROOT / d) for d in ("mt_dnn", "module", "data_utils", "bench", "train.py"))
_READS = ("aten._local_scalar_dense", "aten.nonzero", "aten.item")


def call_site(skip_bench: bool = True) -> str:
    """'mt_dnn/trainer.py:512 (train_epoch)' for the innermost project frame on the stack, else 'torch'."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if frame.filename.startswith(_PROJECT) and not (skip_bench and "/bench/host_syncs.py" in frame.filename):
            rel = Path(frame.filename).relative_to(ROOT)
            return f"{rel}:{frame.lineno} ({frame.name})"
    return "outside this project"


class _HostReads(TorchDispatchMode):
    def __init__(self, counter: "SyncCounter"):
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func).startswith(_READS):
            self.counter.record(call_site())
        return func(*args, **(kwargs or {}))


class SyncCounter:
    """Counts host syncs (CUDA) or host reads (elsewhere) inside the block; ``sites`` says where."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.count = 0
        self.sites: collections.Counter[str] = collections.Counter()
        self.kind = "host syncs (CUDA sync debug mode)" if self.device.type == "cuda" else \
            "host reads (aten item/nonzero; on CPU these include reads of values a GPU run keeps on the host)"

    def record(self, site: str) -> None:
        self.count += 1
        self.sites[site] += 1

    def __enter__(self) -> "SyncCounter":
        if self.device.type == "cuda":
            self._previous = torch.cuda.get_sync_debug_mode()
            self._catch = warnings.catch_warnings()
            self._catch.__enter__()
            warnings.simplefilter("always")
            original = warnings.showwarning

            def show(message, category, filename, lineno, file=None, line=None):
                if "synchronizing" in str(message):
                    self.record(call_site())
                else:
                    original(message, category, filename, lineno, file, line)
            warnings.showwarning = show
            torch.cuda.set_sync_debug_mode("warn")
        else:
            self._mode = _HostReads(self)
            self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.set_sync_debug_mode(self._previous)
            self._catch.__exit__(*exc)
        else:
            self._mode.__exit__(*exc)

    def summary(self, per: int = 1, top: int = 3) -> dict:
        return {"kind": self.kind, "per_step": self.count / max(per, 1),
                "sites": [f"{site}: {n / max(per, 1):g}" for site, n in self.sites.most_common(top)]}
