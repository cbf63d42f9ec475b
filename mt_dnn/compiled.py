"""``--compile``: the training forward (encoder + heads) under torch.compile, eager when compiling fails.

The training loop calls :class:`CompiledForward` where it called the model. Shapes are static (see
mt_dnn.static_shapes) and the task name is a constant of each call, so dynamo compiles one graph per
(task, length bucket); its recompile limit is raised to that bound so no bucket silently drops to eager. On
CUDA the mode is ``reduce-overhead`` (CUDA graphs), elsewhere the default. Evaluation and SMART's extra forwards
stay eager (other shapes, few calls).
"""
from __future__ import annotations

import logging
from typing import Optional

import torch

log = logging.getLogger("sage.train")


def compile_mode(device: torch.device) -> Optional[str]:
    return "reduce-overhead" if device.type == "cuda" else None


def allow_recompiles(bound: int) -> None:
    """Let dynamo keep ``bound`` specialisations of the forward (its default keeps 8, then runs eagerly)."""
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, bound)
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, bound)


def stable_grads(params) -> None:
    """Give each parameter a zero ``.grad`` before a CUDA-graphed backward, so gradients are added into buffers
    of our own: a ``.grad`` that *is* a graph output is overwritten by the next replay, which breaks gradient
    accumulation and SMART's extra backward passes. Only the parameters this step trains get one (the other
    tasks' heads keep None, so the optimizer leaves them alone)."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


class CompiledForward:
    """Calls the compiled module; on the first failure logs one warning line and runs ``module`` eagerly from
    then on (the failed call is redone eagerly, so no micro-batch is lost). The trainer calls :meth:`fall_back`
    when the compiled backward fails at its first call, and redoes that micro-batch eagerly."""

    def __init__(self, module: torch.nn.Module, device: torch.device, bound: int):
        self.module = module
        self.cuda_graphs = device.type == "cuda"
        self.compiled = None
        try:
            allow_recompiles(bound)
            self.compiled = torch.compile(module, mode=compile_mode(device), dynamic=False)
        except Exception as exc:  # e.g. a Python or platform torch.compile does not support
            self.fall_back(exc)

    def fall_back(self, exc: BaseException, what: str = "the model") -> None:
        """Log one warning line and call the module eagerly from now on."""
        log.warning("--compile: compiling %s failed (%s); training continues eagerly", what, _one_line(exc))
        self.compiled = None

    @property
    def active(self) -> bool:
        return self.compiled is not None

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        if self.compiled is not None:
            try:
                if self.cuda_graphs:  # a new training iteration: earlier graph outputs may be overwritten
                    torch.compiler.cudagraph_mark_step_begin()
                return self.compiled(*args, **kwargs)
            except Exception as exc:
                self.fall_back(exc)
        return self.module(*args, **kwargs)
