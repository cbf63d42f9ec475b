"""``--compile``: the encoder under torch.compile, once per input shape, shared by every task; eager when
compiling fails.

The training loop calls :class:`CompiledForward` where it called the model. The part of a forward that does not
depend on the task (:meth:`MTDNNModel.encoder_body`: the encoder and its pooler) runs compiled; the task heads,
a few small kernels on the pooled vector (or on the token states for Span/NER/SAN heads), run eagerly after it.
Shapes are static (see mt_dnn.static_shapes), so dynamo compiles one encoder graph per length bucket and encoder
row count (Ranking tasks feed K sequences per example), whatever the number of tasks; its recompile limit is
raised to that bound. The first call of each shape logs its compile time (and on CUDA the memory its graph
reserved). On CUDA the mode is ``reduce-overhead`` (CUDA graphs), elsewhere the default. Evaluation and SMART's
extra forwards stay eager (other shapes, few calls).

Failures: a compile that fails (no C++ compiler, an unsupported op) logs one warning and training continues
eagerly; out-of-memory is raised, never taken for a compile failure; a shape that hits dynamo's recompile limit
is said in one line and runs eagerly, the shapes compiled so far stay compiled.
"""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Iterator, Optional

import torch

log = logging.getLogger("sage.train")


def compile_mode(device: torch.device) -> Optional[str]:
    return "reduce-overhead" if device.type == "cuda" else None


def allow_recompiles(bound: int) -> None:
    """Let dynamo keep ``bound`` specialisations of the forward (its default keeps 8, then runs eagerly)."""
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, bound)
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, bound)


def encoder_shapes(model, tasks: list[str], rows: int, lengths: tuple[int, ...]) -> int:
    """How many encoder graphs a run compiles at most: one per length bucket and (pooled or token states,
    encoder rows) among the trained tasks (MTDNNModel.encoder_body's two outputs)."""
    kinds = set()
    shared_pooler = getattr(model, "head_layout", "encoder") != "mtdnn"  # mtdnn: a pooler per task, run eagerly
    for task in tasks:
        head, td = model.heads[task], model.task_defs[task]
        pooled = shared_pooler and not (getattr(head, "per_token", False) or getattr(head, "uses_tokens", False))
        kinds.add((pooled, rows * (td.n_class if td.task_type.name == "Ranking" else 1)))
    return len(kinds) * len(lengths)


def stable_grads(params) -> None:
    """Give each parameter a zero ``.grad`` before a CUDA-graphed backward, so gradients are added into buffers
    that are not graph outputs: a ``.grad`` that *is* a graph output is overwritten by the next replay, which breaks
    gradient accumulation and SMART's extra backward passes. Only the parameters this step trains get one (the other
    tasks' heads keep None, so the optimizer leaves them alone)."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def out_of_memory(exc: BaseException) -> Optional[BaseException]:
    """The out-of-memory error behind ``exc`` (itself, or what a compiler wrapped), else None."""
    seen: set[int] = set()
    todo: list[Optional[BaseException]] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, torch.OutOfMemoryError):
            return current
        todo += [current.__cause__, current.__context__, getattr(current, "inner_exception", None)]
    return None


class _EncoderBody(torch.nn.Module):
    """The task-independent forward as a module of its own, which is what gets compiled (the model's own
    parameters stay where they are: this wrapper is never saved)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids, pooled: bool) -> torch.Tensor:
        return self.model.encoder_body(pooled, input_ids, attention_mask, token_type_ids)


class CompiledForward:
    """Calls ``net`` (the model, or its DDP wrapper) with the model's encoder body compiled. On the first
    failure it logs one warning line and runs ``net`` eagerly from then on (the failed call is redone eagerly, so
    no micro-batch is lost). The trainer calls :meth:`fall_back` when the compiled backward fails at its first
    call, and redoes that micro-batch eagerly."""

    def __init__(self, net: torch.nn.Module, model: torch.nn.Module, device: torch.device, bound: int):
        self.net, self.model, self.device = net, model, device
        self.cuda_graphs = device.type == "cuda"
        self.compiled = None
        self.bound = bound
        self.compiled_shapes: dict[tuple, dict] = {}  # shape -> {"seconds": first call, "memory_bytes": ...}
        self.eager_shapes: set[tuple] = set()  # shapes past dynamo's recompile limit
        self._backward_pending = False  # a shape compiled its forward; its backward compiles at its first call
        try:
            allow_recompiles(bound)
            self.compiled = torch.compile(_EncoderBody(model), mode=compile_mode(device), dynamic=False)
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
                with self.model.body_override(self._body):
                    return self.net(*args, **kwargs)
            except Exception as exc:
                oom = out_of_memory(exc)
                if oom is not None:  # not a compile problem: eager would run out of memory too
                    raise oom
                self.fall_back(exc)
        return self.net(*args, **kwargs)

    def _body(self, pooled: bool, input_ids, attention_mask, token_type_ids) -> torch.Tensor:
        shape = (pooled, tuple(input_ids.shape))
        if shape in self.eager_shapes:
            return self.model.encoder_body(pooled, input_ids, attention_mask, token_type_ids)
        first = shape not in self.compiled_shapes
        start = self._mark() if first else None
        try:
            with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
                out = self.compiled(input_ids, attention_mask, token_type_ids, pooled)
        except torch._dynamo.exc.FailOnRecompileLimitHit:
            self.eager_shapes.add(shape)
            log.warning("--compile: torch._dynamo's recompile limit (%d) was hit at a batch of %s; batches of that "
                        "shape run eagerly, the %d shape(s) compiled so far stay compiled",
                        torch._dynamo.config.recompile_limit, _describe(shape), len(self.compiled_shapes))
            return self.model.encoder_body(pooled, input_ids, attention_mask, token_type_ids)
        if first:
            self._report(shape, start)
            self._backward_pending = True
        return out

    @contextlib.contextmanager
    def first_backward(self, params) -> Iterator[None]:
        """Around a backward: if it is the first through a newly compiled graph (whose backward compiles now),
        keep the gradients as they were, and put them back if it fails. The eager heads after the compiled
        encoder have their backward run first, so a failed compiled backward would otherwise leave their
        gradients counted once before the micro-batch is redone eagerly."""
        if not (self.active and self._backward_pending):
            yield
            return
        kept = [(p, None if p.grad is None else p.grad.clone()) for p in params if p.requires_grad]
        try:
            yield
        except BaseException:
            for p, grad in kept:
                p.grad = grad
            raise
        self._backward_pending = False

    def _mark(self) -> tuple[float, int]:
        if self.cuda_graphs:
            torch.cuda.synchronize(self.device)
            return time.perf_counter(), torch.cuda.memory_reserved(self.device)
        return time.perf_counter(), 0

    def _report(self, shape: tuple, start: tuple[float, int]) -> None:
        """One line per compiled shape: the first call's time (compile and run) and, on CUDA, the memory it
        reserved (the graph's pool included)."""
        seconds, memory = time.perf_counter() - start[0], None
        if self.cuda_graphs:
            torch.cuda.synchronize(self.device)
            seconds = time.perf_counter() - start[0]
            memory = torch.cuda.memory_reserved(self.device) - start[1]
        self.compiled_shapes[shape] = {"seconds": seconds, "memory_bytes": memory}
        log.info("--compile: encoder graph %d of at most %d, for %s: first call (compile and run) %.1f s%s",
                 len(self.compiled_shapes), self.bound, _describe(shape), seconds,
                 "" if memory is None else f", {memory / 2 ** 20:+.0f} MiB CUDA memory reserved")


def _describe(shape: tuple) -> str:
    pooled, dims = shape
    return f"{'x'.join(map(str, dims))} tokens ({'pooled' if pooled else 'token states'})"
