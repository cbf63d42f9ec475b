"""Which GPUs a sweep's runs get: each run at a time its own group of ``gpus_per_run`` GPUs.

Without this every run picks the default device, so ``parallel: 8`` on an 8-GPU machine would put all eight runs
on ``cuda:0``. The GPUs come from ``--gpus 0,1,2,3`` or, without it, from ``CUDA_VISIBLE_DEVICES`` (as a scheduler
such as Slurm sets it) or torch's device count. A run sees only its group (its own ``CUDA_VISIBLE_DEVICES``), so
train.py's ``--device auto`` lands on it; a group of several GPUs runs train.py under torchrun, one process per
GPU. A machine without GPUs keeps CPU runs as they were (threads per run).
"""
from __future__ import annotations

import os
import queue
import re
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_:/.-]*$")  # an index, a GPU-/MIG- UUID


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` names them (indices or UUIDs); without that
    variable, torch's device count (0..n-1); ``[]`` on a machine without GPUs."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is not None:
        return [item.strip() for item in value.split(",") if item.strip()]
    return [str(i) for i in range(cuda_device_count())]


def cuda_device_count() -> int:
    import torch
    return torch.cuda.device_count()


def describe_visible(visible: Sequence[str]) -> str:
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']}"
    return f"torch sees {len(visible)} GPU(s)" if visible else "torch sees no GPU"


def parse_gpus(text: str, visible: Sequence[str]) -> list[str]:
    """A ``--gpus`` value (comma-separated GPU ids, each one of ``visible``) as a list; a ValueError naming the
    flag otherwise: giving a run a GPU it cannot see would train it on the CPU without a word."""
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not _ID.match(item) for item in items):
        raise ValueError(f"--gpus: expected comma-separated GPU ids such as 0,1,2,3, got {text!r}")
    repeated = next((item for i, item in enumerate(items) if item in items[:i]), None)
    if repeated is not None:
        raise ValueError(f"--gpus: GPU {repeated} is listed twice in {text!r}")
    missing = [item for item in items if item not in visible]
    if missing:
        raise ValueError(f"--gpus: GPU {missing[0]} is not visible here ({describe_visible(visible)})")
    return items


def gpu_groups(gpus: Sequence[str], per_run: int, parallel: int, parallel_source: str,
               per_run_source: str, given: str) -> list[list[str]]:
    """``parallel`` disjoint groups of ``per_run`` GPUs (the first ones of ``gpus``); ``[]`` for CPU runs. Too few
    GPUs is a ValueError naming the setting: runs sharing a GPU would not be what the spec asks for."""
    if not gpus:
        if per_run > 1:
            raise ValueError(f"{per_run_source}: {per_run} GPUs per run, but no GPU is visible here")
        return []
    need = parallel * per_run
    if need > len(gpus):
        raise ValueError(f"{parallel_source}: {parallel} run(s) at a time x {per_run} GPU(s) per run need {need} "
                         f"GPUs; {len(gpus)} are given ({given}); lower it or give more GPUs")
    return [list(gpus[i * per_run:(i + 1) * per_run]) for i in range(parallel)]


class DevicePool:
    """Hands each running run a free group of GPUs and takes it back when the run ends (an empty group: GPUs
    hidden); with no groups (a CPU machine) every run gets ``None``."""

    def __init__(self, groups: Sequence[Sequence[str]]):
        self.groups = [list(g) for g in groups]
        self._free: Optional[queue.Queue] = None
        if self.groups:
            self._free = queue.Queue()
            for group in self.groups:
                self._free.put(group)

    @contextmanager
    def take(self) -> Iterator[Optional[list[str]]]:
        if self._free is None:
            yield None
            return
        group = self._free.get()
        try:
            yield group
        finally:
            self._free.put(group)
