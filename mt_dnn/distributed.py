"""Data-parallel plumbing for ``torchrun``: the process group, error agreement, gathers, and model wrapping.

The project never launches processes itself: ``torchrun`` (single node, several nodes via its rendezvous) sets
RANK, WORLD_SIZE and LOCAL_RANK, and :func:`from_environment` reads them (the legacy ``torch.distributed.launch``'s
``--local_rank`` too). Every rank runs the same :class:`Trainer`;
the helpers here are no-ops in a single process, so the trainer has one code path.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job (rank 0 of 1 when not launched by torchrun)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class RankError(ValueError):
    """Bad input seen on rank ``origin``, raised on every rank so that all of them stop together."""

    def __init__(self, origin: int, message: str):
        super().__init__(f"rank {origin}: {message}")
        self.origin = origin


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}: expected an integer, got {raw!r}") from None


def from_environment(local_rank_flag: Optional[str] = None) -> DistEnv:
    """The launcher's environment (RANK, WORLD_SIZE, LOCAL_RANK), or a single process.

    ``local_rank_flag`` is ``--local_rank``/``--local-rank`` as given (None: not given). The legacy
    ``torch.distributed.launch`` passes it and, in some versions, sets no LOCAL_RANK; then it places this process
    on GPU N, as MT-DNN's train.py did. Where LOCAL_RANK is set the two must agree, and a multi-process job whose
    local rank is known from neither is refused: every process would otherwise land on GPU 0.
    """
    world = _int_env("WORLD_SIZE", 1)
    rank, env_local = _int_env("RANK", 0), _int_env("LOCAL_RANK", -1)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"environment: RANK={rank} WORLD_SIZE={world} is not a valid placement")
    flag = _local_rank(local_rank_flag)
    if flag is not None and flag >= 0:
        if "LOCAL_RANK" in os.environ and env_local != flag:
            raise ValueError(f"--local_rank {flag}: the launcher set LOCAL_RANK={env_local}; give one placement")
        return DistEnv(rank=rank, world_size=world, local_rank=flag)
    if flag == -1 and world > 1:
        raise ValueError(f"--local_rank -1 asks for one process, but the launcher set WORLD_SIZE={world}")
    if world > 1 and "LOCAL_RANK" not in os.environ:
        raise ValueError(f"environment: WORLD_SIZE={world} but no LOCAL_RANK, so this process's GPU is unknown: "
                         "launch with torchrun, or pass --local_rank")
    return DistEnv(rank=rank, world_size=world, local_rank=max(env_local, 0))


def _local_rank(text: Optional[str]) -> Optional[int]:
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        value = -2
    if value < -1:
        raise ValueError(f"--local_rank {text}: expected a GPU index (0, 1, ...) or -1 (one process)")
    return value


def init_process_group(env: DistEnv, device: str = "auto", timeout_minutes: float = 30.0) -> None:
    """NCCL when this job trains on CUDA, gloo on CPU; binds each rank to its local GPU first."""
    if not env.enabled or dist.is_initialized():
        return
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", rank=env.rank, world_size=env.world_size,
                            timeout=datetime.timedelta(minutes=timeout_minutes))


def destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (``[obj]`` in a single process)."""
    if not active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if active():
        dist.barrier()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean over ranks of a scalar tensor (for logging only)."""
    if not active():
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / dist.get_world_size()


@contextlib.contextmanager
def agree_on_errors(env: DistEnv) -> Iterator[None]:
    """Run a setup phase so that bad input on any rank stops *all* ranks with that rank's message.

    Without this, a rank that fails while loading its data exits and the others block in the next collective
    until the process-group timeout. Every rank reaches the gather below, failed or not, so nobody hangs.
    """
    error = None
    try:
        yield
    except (ValueError, FileNotFoundError, OSError, KeyError) as exc:
        if not active():
            raise
        error = str(exc)
    except SystemExit as exc:  # argparse already printed its message on this rank
        if not active():
            raise
        error = f"invalid command line (exit {exc.code})"
    except Exception as exc:  # unexpected: keep the traceback on the rank that saw it
        if not active():
            raise
        traceback.print_exc()
        error = f"{type(exc).__name__}: {exc}"
    if not active():
        return
    failed = [(rank, msg) for rank, msg in enumerate(all_gather_objects(error)) if msg is not None]
    if failed:
        rank, msg = failed[0]
        raise RankError(rank, msg)
