"""Data parallelism under torchrun: wrapping the model (DDP, or FSDP2 per encoder layer), the cheapest DDP
options that are correct for the run, gradient sync only at step boundaries, the optimizer step on FSDP's local
shards, and evaluation split over the ranks.

DDP. ``find_unused_parameters=True`` makes DDP walk the autograd graph after every forward to find parameters
without a gradient; multi-task training needs it (each step trains one task's head; the other heads are idle).
With one training task the set of parameters a step trains is the same every step (all of them, less the heads
of evaluation-only tasks and, under heads that read every token, the pooler), which is what DDP's
``static_graph`` is for: it learns that set in the first step and stops searching. DDP's static graph does not
support accumulating gradients under ``no_sync`` (its first step must reduce), so with
``--grad_accumulation_step`` > 1 the search is switched off only where the task leaves no parameter idle. Under
``--compile`` the old setting stays (a compiled graph under a static DDP graph is not covered by the tests here).
``broadcast_buffers`` sends every buffer from rank 0 before each forward; it is needed only for buffers a forward
changes (BatchNorm's running statistics), and a BERT-style encoder has none (its position ids are constant).

FSDP. Parameters, gradients and optimizer state are DTensors; the SAGE update is elementwise, so running it on
each rank's local shards gives the same numbers as running it on the DTensors, without DTensor's per-op
dispatch on the host (:func:`local_shards`).
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
from torch import nn

from mt_dnn import distributed as dist_utils
from mt_dnn.batcher import TaskData
from mt_dnn.evaluate import SplitResult, predict_indices, predict_split, split_result

log = logging.getLogger("sage.train")


@dataclass(frozen=True)
class DDPSettings:
    find_unused_parameters: bool
    static_graph: bool
    broadcast_buffers: bool

    def kwargs(self) -> dict:
        """DDP's keyword arguments (``forward_sync_buffers`` where torch has it: ``broadcast_buffers`` is
        deprecated there; buffers are synced once at construction either way)."""
        import inspect
        from torch.nn.parallel import DistributedDataParallel
        accepted = inspect.signature(DistributedDataParallel.__init__).parameters
        buffers = "forward_sync_buffers" if "forward_sync_buffers" in accepted else "broadcast_buffers"
        return {"find_unused_parameters": self.find_unused_parameters, "static_graph": self.static_graph,
                buffers: self.broadcast_buffers}

    def describe(self) -> str:
        graph = "static graph" if self.static_graph else \
            "searching each step for unused parameters" if self.find_unused_parameters else "every parameter used"
        return f"DDP: {graph}, buffers {'broadcast each forward' if self.broadcast_buffers else 'not broadcast'}"


def parallelize(model: nn.Module, device: torch.device, fsdp: bool, train_tasks: list[str], compiled: bool,
                accumulation: int) -> nn.Module:
    """What the training forward calls: the model itself in a single process; under torchrun DDP (default) or
    FSDP2 ``fully_shard`` per encoder layer and at the root (then the model itself, sharded in place)."""
    if not dist_utils.active():
        return model
    if fsdp:
        from torch.distributed.fsdp import fully_shard
        for block in encoder_blocks(model.encoder):
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel
    settings = ddp_settings(model, train_tasks, compiled, accumulation)
    log.info("%s", settings.describe())
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   **settings.kwargs())


def encoder_blocks(encoder: nn.Module) -> list[nn.Module]:
    """The repeated transformer layers (the largest ModuleList), the natural FSDP sharding unit."""
    lists = [m for m in encoder.modules() if isinstance(m, nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []


def gradient_sync(net: nn.Module, enabled: bool):
    """A context for one micro-batch's backward: the gradient all-reduce is skipped on micro-batches that only
    accumulate."""
    if isinstance(net, torch.nn.parallel.DistributedDataParallel) and not enabled:
        return net.no_sync()
    if hasattr(net, "set_requires_gradient_sync"):  # FSDP2
        net.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()


def buffers_change_in_forward(model: nn.Module) -> bool:
    """Whether a forward updates buffers that ranks must keep equal (running statistics of batch norms)."""
    return any(isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats for m in model.modules())


def ddp_settings(model: nn.Module, train_tasks: list[str], compiled: bool, accumulation: int = 1) -> DDPSettings:
    buffers = buffers_change_in_forward(model)
    if len(train_tasks) > 1 or compiled:
        return DDPSettings(find_unused_parameters=True, static_graph=False, broadcast_buffers=buffers)
    if accumulation == 1:
        return DDPSettings(find_unused_parameters=False, static_graph=True, broadcast_buffers=buffers)
    trained = {id(p) for p in trained_parameters(model, train_tasks[0])}
    idle = any(p.requires_grad and id(p) not in trained for p in model.parameters())
    return DDPSettings(find_unused_parameters=idle, static_graph=False, broadcast_buffers=buffers)


def trained_parameters(model: nn.Module, task: str) -> list[nn.Parameter]:
    """The parameters a micro-batch of ``task`` gives gradients: those its forward reads
    (:meth:`MTDNNModel.parameters_used_by`: all but the other tasks' heads and the poolers this task's head does
    not read) that are trained at all."""
    return [p for p in model.parameters_used_by(task) if p.requires_grad]


# ------------------------------------------------------------------------------------------ FSDP optimizer step
def _is_dtensor(t) -> bool:
    from torch.distributed.tensor import DTensor
    return isinstance(t, DTensor)


@contextlib.contextmanager
def local_shards(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Inside the block the optimizer sees each DTensor parameter as its local shard (``.grad``: the gradient's
    local shard; state: the state tensors' local shards, which share their storage, so updates land in place).
    State the step creates is wrapped back into DTensors laid out like the parameter, so checkpoints and resume
    see what they saw before. Plain tensors pass through unchanged."""
    from torch.distributed.tensor import DTensor
    state = optimizer.state
    originals = [group["params"] for group in optimizer.param_groups]
    swapped: list[tuple[torch.Tensor, torch.Tensor]] = []  # (local shard, its DTensor parameter)
    try:
        for group in optimizer.param_groups:
            params = []
            for p in group["params"]:
                if not _is_dtensor(p):
                    params.append(p)
                    continue
                local = p._local_tensor.detach()
                local.grad = None if p.grad is None else p.grad._local_tensor
                if p in state:
                    state[local] = {k: v._local_tensor if _is_dtensor(v) else v for k, v in state[p].items()}
                swapped.append((local, p))
                params.append(local)
            group["params"] = params
        yield
        for local, p in swapped:  # what the step created or replaced goes back to the DTensor's state
            if local not in state:
                continue
            target = state[p]
            for key, value in state[local].items():
                old = target.get(key)
                if _is_dtensor(old) and value is old._local_tensor:
                    continue
                if torch.is_tensor(value) and value.dim() > 0 and value.shape == local.shape:
                    value = DTensor.from_local(value, p.device_mesh, p.placements, run_check=False,
                                               shape=p.shape, stride=p.stride())
                target[key] = value
    finally:
        for group, params in zip(optimizer.param_groups, originals):
            group["params"] = params
        for local, _ in swapped:
            state.pop(local, None)
            local.grad = None


# ------------------------------------------------------------------------------------------ evaluation
def predict(model: nn.Module, data: TaskData, batch_size: int, device: torch.device, pad_id: int,
            amp_dtype: Optional[torch.dtype], rank: int = 0, world_size: int = 1) -> SplitResult:
    """Each rank predicts an equal-length slice (padded with example 0, so that FSDP ranks run the same number
    of forwards); the slices are gathered and the metrics computed on the whole split."""
    args = (batch_size, device, pad_id, amp_dtype)
    if not dist_utils.active():
        return predict_split(model, data, *args)
    n, per = len(data), -(-len(data) // world_size)
    mine = list(range(rank * per, min((rank + 1) * per, n)))
    preds, scores = predict_indices(model, data, mine + [0] * (per - len(mine)), *args)
    if hasattr(model, "reshard"):  # FSDP2 keeps the root unsharded after a forward with no backward
        model.reshard()
    pieces = dist_utils.all_gather_objects((preds[:len(mine)], scores[:len(mine)]))
    return split_result(data, [x for p, _ in pieces for x in p], [x for _, s in pieces for x in s])
