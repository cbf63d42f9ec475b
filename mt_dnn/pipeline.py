"""Micro-batches built off the training thread: a DataLoader whose batch sampler is the epoch plan.

Each item the loader yields is one collated micro-batch of one task (this rank's share of a global batch), in
plan order from the resume position on. The plan is a pure function of (seed, epoch) and collation draws no
random numbers, so worker processes change where a batch is built, never what it holds: ``num_workers`` 0 and
N give bit-identical training, and a resumed run starts its sampler at the saved position. The loader gets a
private generator, so starting workers leaves the global RNG (dropout masks) untouched.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mt_dnn.batcher import TaskData, collate, shard_for_rank
from mt_dnn.static_shapes import StaticShapes, pad_batch


def rank_share(indices: list[int], rank: int, world_size: int) -> tuple[list[int], float]:
    """This rank's examples of a global batch and its loss weight, so that averaging over ranks (as DDP and FSDP
    do with gradients) gives the mean over the whole global batch even when shares differ in size. With fewer
    examples than ranks a rank still takes part in the gradient all-reduce: one example, weight 0."""
    local = shard_for_rank(indices, rank, world_size)
    weight = len(local) * world_size / len(indices)
    return (local or indices[:1]), weight


class PlanSampler(Sampler):
    """Batch sampler over one epoch's plan from ``start``: each batch is [(task index, example index)] of this
    rank's share."""

    def __init__(self, plan: Sequence[tuple[int, list[int]]], start: int, rank: int, world_size: int):
        self.plan, self.start, self.rank, self.world_size = plan, start, rank, world_size

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for pos in range(self.start, len(self.plan)):
            task_idx, indices = self.plan[pos]
            local, _ = rank_share(indices, self.rank, self.world_size)
            yield [(task_idx, i) for i in local]

    def __len__(self) -> int:
        return max(0, len(self.plan) - self.start)


class MicroBatches(Dataset):
    """Collates a sampler batch into tensors (and, for --compile, pads them to a static shape)."""

    def __init__(self, train_sets: Sequence[TaskData], pad_id: int, with_soft_labels: bool,
                 shapes: Optional[StaticShapes] = None):
        self.train_sets, self.pad_id, self.with_soft_labels, self.shapes = train_sets, pad_id, with_soft_labels, shapes

    def __getitems__(self, keys: list[tuple[int, int]]) -> dict:
        data = self.train_sets[keys[0][0]]
        batch = collate(data, [i for _, i in keys], self.pad_id, with_soft_labels=self.with_soft_labels)
        return batch if self.shapes is None else pad_batch(batch, self.shapes, data.task_def)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        return self.__getitems__([key])

    def __len__(self) -> int:
        return sum(len(d) for d in self.train_sets)


def _as_is(batch: dict) -> dict:
    """The DataLoader's collate_fn: MicroBatches already collated (module level, so workers can pickle it)."""
    return batch


def micro_batch_stream(dataset: MicroBatches, sampler: PlanSampler, num_workers: int,
                       pin_memory: bool, worker_init: Optional[Callable[[int], None]] = None) -> Iterator[dict]:
    """The epoch's remaining micro-batches. 0 workers: collated on this thread as each is needed, exactly as
    before the loader existed. N > 0: built ahead by N processes (pinned when ``pin_memory``; each first runs
    ``worker_init``); they are shut down when the stream is closed (end of epoch, early stop, error)."""
    if num_workers == 0:
        for keys in sampler:
            yield dataset.__getitems__(keys)
        return
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=_as_is,
                        pin_memory=pin_memory, generator=torch.Generator(), prefetch_factor=4,
                        worker_init_fn=worker_init)
    it = iter(loader)
    try:
        yield from it
    finally:
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
