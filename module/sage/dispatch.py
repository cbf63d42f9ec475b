"""Which implementation runs a SAGE step, and the fused bucket loop with its self-checked kernels.

:func:`select` is the one place that chooses: the for-loop, foreach or fused implementation of a step, and for a
fused bucket the backend of :data:`BACKENDS` that takes it. It logs its reason once per (choice, device, dtype,
algorithm) on the ``sage.optim`` logger. Fused backends, by default:

- CUDA: a Triton multi-tensor kernel, one launch per bucket (:mod:`module.sage.triton_kernel`), when Triton is
  importable and the kernel passed its self-check in this process (else foreach, with one warning).
- CPU, float32/float64: a C kernel, one call per bucket (:mod:`module.sage.cpu_kernel`), when it builds and passed
  its self-check (else the ``torch.compile`` path, with one warning).
- Elsewhere (CPU bfloat16/float16, CUDA without Triton): the readable single-tensor math compiled with
  ``torch.compile`` (:mod:`module.sage.compiled`).

A backend is picked by name (``c``, ``triton``, ``compiled``) or given as an object (:class:`TritonBackend`,
:class:`CKernelBackend`, :class:`CompiledBackend`, or any object with their interface) through the optimizer's
``fused_backend`` attribute; left unset, ``$SAGE_FUSED_BACKEND`` names it, else the table's default applies. A
named backend takes the buckets it supports; the others go to ``torch.compile``.

Called by :func:`module.sage.functional._update` with tensor lists and scalars, never with an optimizer.
Half-precision parameters have float32 state (:func:`module.sage.updates.state_dtype`) on every path.

Public entry points for checks on new hardware: :func:`kernel_variants` lists the kernel variants a step can
take, :func:`check_variants` runs the self-check probe of each on a device and returns the verdicts.
"""
from __future__ import annotations

import itertools
import logging
import os
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Iterable, NamedTuple, Optional, Union

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import _default_to_fused_or_foreach

from module.sage import compiled
from module.sage.algorithms import ALGORITHMS, Algorithm, Columns, multi_step, single_step
from module.sage.updates import FORMULAS, state_dtype

log = logging.getLogger("sage.optim")

#: ``--optim_impl`` values.
IMPLEMENTATIONS = ("auto", "forloop", "foreach", "fused")
#: The oldest CUDA compute capability given the Triton kernel by ``auto``: Volta (V100). The kernel is
#: elementwise (no tensor-core instructions), the kind of kernel Triton still builds for sm_70/sm_75; every
#: variant checks itself on first use and falls back to foreach if it fails to build or disagrees.
TRITON_MIN_CAPABILITY = (7, 0)
#: The environment variable naming the fused backend of optimizers whose ``fused_backend`` is unset.
BACKEND_ENV = "SAGE_FUSED_BACKEND"


# ----------------------------------------------------------------------------------------------------------
# Fused backends: one interface for the Triton kernel, the C kernel and torch.compile
# ----------------------------------------------------------------------------------------------------------
class Backend:
    """A fused implementation of a bucket, with the interface the self-check and the bucket loop use: ``KERNEL``
    (its name in messages), ``ALGORITHMS``, ``takes(device, dtype, grad_dtype)`` and ``fused_step(algorithm, p,
    g, states, ipt_avgs, scalars, hyper, grad_factor=)``. ``fallback`` runs a bucket whose variant failed the
    self-check: ``"foreach"`` or another backend; None means the backend is not self-checked."""

    name = ""
    device_types: Optional[tuple[str, ...]] = None  # None: any device type
    fallback: Union[str, "Backend", None] = None

    def load(self) -> Any:
        """The module implementing the kernel (ImportError: not available here)."""
        raise NotImplementedError

    def available(self) -> bool:
        """Whether the kernel imports here (asked once per backend object)."""
        if getattr(self, "_available", None) is None:
            try:
                self.load()
                self._available = True
            except ImportError:
                self._available = False
        return self._available

    @property
    def KERNEL(self) -> str:  # noqa: N802 - the kernels' module attribute
        return self.load().KERNEL

    @property
    def ALGORITHMS(self):  # noqa: N802
        return self.load().ALGORITHMS

    def takes(self, device: torch.device, dtype: torch.dtype, grad_dtype: torch.dtype) -> bool:
        return self.device_types is None or device.type in self.device_types

    def fused_step(self, algorithm: str, params: list[Tensor], grads: list[Tensor], states: list[list[Tensor]],
                   ipt_avgs: Optional[list[Tensor]], scalars: dict, hyper: dict,
                   grad_factor: Optional[float] = None) -> None:
        self.load().fused_step(algorithm, params, grads, states, ipt_avgs, scalars, hyper,
                               **self._launch_kwargs(grad_factor))

    def _launch_kwargs(self, grad_factor: Optional[float]) -> dict:
        """Keywords for the kernel module's ``fused_step``: only those set (a kernel may take no others)."""
        return {} if grad_factor is None else {"grad_factor": grad_factor}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class CompiledBackend(Backend):
    """``torch.compile`` of the single-tensor math (any device and dtype; not self-checked).

    ``small_numel``: tensors below it share one flat call (:data:`module.sage.compiled.SMALL_NUMEL`)."""

    name = "compiled"

    def __init__(self, small_numel: int = compiled.SMALL_NUMEL):
        self.small_numel = small_numel

    def load(self) -> ModuleType:
        return compiled

    def single(self, algorithm: str) -> Callable[..., None]:
        """The single-tensor function compiled for ``algorithm``."""
        return ALGORITHMS[algorithm].single

    def fused_step(self, algorithm, params, grads, states, ipt_avgs, scalars, hyper, grad_factor=None) -> None:
        compiled.fused_step(algorithm, params, grads, states, ipt_avgs, scalars, hyper, grad_factor,
                            small_numel=self.small_numel, single=self.single(algorithm))

    def __repr__(self) -> str:
        return f"CompiledBackend(small_numel={self.small_numel})"


class CKernelBackend(Backend):
    """The C kernel (:mod:`module.sage.cpu_kernel`): CPU float32/float64 buckets; ``fallback`` (default
    :class:`CompiledBackend`) runs the variants that fail to build or disagree."""

    name = "c"
    device_types = ("cpu",)

    def __init__(self, fallback: Optional[Backend] = None):
        self.fallback = fallback if fallback is not None else CompiledBackend()

    def load(self) -> ModuleType:
        from module.sage import cpu_kernel
        return cpu_kernel

    def takes(self, device, dtype, grad_dtype) -> bool:
        return device.type == "cpu" and dtype in self.load().DTYPES and grad_dtype == dtype


class TritonBackend(Backend):
    """The Triton kernel (:mod:`module.sage.triton_kernel`, or ``module``: a copy of it, e.g. interpreted) for
    tensors of ``device_types``; ``block_size``/``num_warps`` override its launch configuration. A variant that
    fails its self-check runs foreach."""

    name = "triton"
    fallback = "foreach"

    def __init__(self, module: Optional[ModuleType] = None, device_types: tuple[str, ...] = ("cuda",),
                 block_size: Optional[int] = None, num_warps: Optional[int] = None):
        self.module, self.device_types = module, tuple(device_types)
        self.block_size, self.num_warps = block_size, num_warps

    def load(self) -> ModuleType:
        if self.module is None:
            from module.sage import triton_kernel
            return triton_kernel
        return self.module

    def _launch_kwargs(self, grad_factor: Optional[float]) -> dict:
        config = {k: v for k, v in (("block_size", self.block_size), ("num_warps", self.num_warps)) if v}
        return dict(super()._launch_kwargs(grad_factor), **config)

    def launch_config(self) -> dict:
        """The launch configuration this backend uses (the benchmark reports it)."""
        default = self.load().launch_config()
        return dict(block_size=self.block_size or default["block_size"],
                    num_warps=self.num_warps or default["num_warps"])

    def __repr__(self) -> str:
        return (f"TritonBackend(device_types={self.device_types}, block_size={self.block_size}, "
                f"num_warps={self.num_warps})")


#: The backend table: name -> class, in the order the default route tries them; ``compiled`` takes the rest.
BACKENDS: dict[str, type[Backend]] = {"triton": TritonBackend, "c": CKernelBackend, "compiled": CompiledBackend}
_DEFAULTS: dict[str, Backend] = {}


def default_backend(name: str) -> Backend:
    """The shared default-configured instance of a backend of :data:`BACKENDS`."""
    if name not in BACKENDS:
        raise ValueError(f"unknown fused backend {name!r}; expected one of {', '.join(BACKENDS)}")
    if name not in _DEFAULTS:
        _DEFAULTS[name] = BACKENDS[name]()
    return _DEFAULTS[name]


def triton_available() -> bool:
    """Whether the Triton kernel imports here (Triton installed)."""
    return default_backend("triton").available()


def _wanted_backend(backend: Union[str, Backend, None]) -> Optional[Backend]:
    """The backend an optimizer asks for: its ``fused_backend``, else ``$SAGE_FUSED_BACKEND``, else None."""
    if backend is None:
        backend = os.environ.get(BACKEND_ENV) or None
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"${BACKEND_ENV}: unknown fused backend {backend!r}; expected one of "
                             f"{', '.join(BACKENDS)}")
    return default_backend(backend) if isinstance(backend, str) else backend


# ----------------------------------------------------------------------------------------------------------
# The one function that chooses
# ----------------------------------------------------------------------------------------------------------
class Choice(NamedTuple):
    """What runs: ``impl`` is ``forloop``, ``foreach``, ``fused`` or ``default`` (the caller's library decides:
    a plain torch optimizer's own rule); ``backend`` is the fused bucket's backend; ``reason`` says why."""
    impl: str
    backend: Optional[Backend]
    reason: str


_LOGGED: set[tuple] = set()


def select(requested: Optional[str], device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None,
           *, grad_dtype: Optional[torch.dtype] = None, sharded: bool = False,
           backend: Union[str, Backend, None] = None, params: Optional[list[Tensor]] = None,
           fused_supported: bool = True, algorithm: str = "") -> Choice:
    """Choose the implementation of a step (or, with ``dtype``, of one fused bucket).

    ``requested``: None (torch's rule from ``params``, as ``torch.optim`` applies it when neither ``foreach`` nor
    ``fused`` is set), ``auto``, ``forloop``, ``foreach`` or ``fused``. ``auto``: foreach on sharded (FSDP
    DTensor) parameters; fused on CPU (the C kernel) and on CUDA from compute capability 7.0 (V100, T4, A100,
    H100, ...) when Triton is importable (the Triton kernel, behind its self-check); foreach otherwise
    (pre-Volta GPUs, no Triton, other device types). ``fused_supported=False`` (a torch optimizer without a
    fused step): ``fused`` leaves the choice to that optimizer. A fused choice with ``dtype`` given names the
    backend of the bucket: ``backend`` (a name or object), else ``$SAGE_FUSED_BACKEND``, else Triton for the
    device types it takes, the C kernel for what it takes, ``torch.compile`` for the rest.
    """
    if requested is not None and requested not in IMPLEMENTATIONS:
        raise ValueError(f"unknown optimizer implementation {requested!r}; expected one of "
                         f"{', '.join(IMPLEMENTATIONS)}")
    choice = _choose(requested, device, dtype, grad_dtype, sharded, backend, params, fused_supported)
    key = (choice.impl, None if choice.backend is None else choice.backend.name, str(device), dtype, algorithm)
    if key not in _LOGGED:
        _LOGGED.add(key)
        where = "".join(f" {x}" for x in (algorithm, device, dtype) if x)
        what = choice.impl if choice.backend is None else f"fused, {choice.backend.name} backend"
        log.info("optimizer step%s: %s (%s)", where and f" ({where.strip()})", what, choice.reason)
    return choice


def _choose(requested, device, dtype, grad_dtype, sharded, backend, params, fused_supported) -> Choice:
    if requested is None:
        if params is None:
            return Choice("default", None, "neither foreach nor fused set")
        _, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)
        return Choice("foreach" if foreach else "forloop", None, "torch's default for these tensors")
    if requested == "auto":
        if sharded:
            return Choice("foreach", None, "auto on sharded (FSDP) parameters")
        if device.type == "cpu":
            requested, why = "fused", "auto on CPU"
        elif device.type != "cuda":
            return Choice("foreach", None, f"auto on {device.type}")
        elif tuple(torch.cuda.get_device_capability(device)) < TRITON_MIN_CAPABILITY:
            return Choice("foreach", None, f"auto below compute capability {TRITON_MIN_CAPABILITY}")
        elif not (_wanted_backend(backend) or default_backend("triton")).available():
            return Choice("foreach", None, "auto on CUDA without Triton")
        else:
            requested, why = "fused", "auto on CUDA with Triton"
    else:
        why = "requested"
    if requested != "fused":
        return Choice(requested, None, why)
    if not fused_supported:
        return Choice("default", None, "no fused step in this optimizer")
    if dtype is None:
        return Choice("fused", None, why)
    return _fused_choice(device, dtype, grad_dtype or dtype, _wanted_backend(backend), why)


def _fused_choice(device, dtype, grad_dtype, wanted: Optional[Backend], why: str) -> Choice:
    """The backend of a fused bucket: the wanted one or the table's first taker, if importable; else compiled."""
    candidates = [wanted] if wanted is not None else [default_backend(name) for name in BACKENDS]
    for b in candidates:
        if b.takes(device, dtype, grad_dtype):
            if b.available():
                return Choice("fused", b, why)
            return Choice("fused", default_backend("compiled"), f"{why}; the {b.name} backend does not import")
    return Choice("fused", default_backend("compiled"), f"{why}; no hand-written kernel takes {dtype} on {device}")


def implementation_kwargs(impl: str, device: torch.device, *, sharded: bool = False,
                          backend: Union[str, Backend, None] = None) -> dict:
    """``foreach``/``fused`` flags for a configured implementation (``--optim_impl``), chosen by :func:`select`."""
    choice = select(impl, device, sharded=sharded, backend=backend)
    return {"forloop": dict(foreach=False, fused=None), "foreach": dict(foreach=True, fused=None),
            "fused": dict(foreach=None, fused=True)}[choice.impl]


def requested_from_flags(foreach: Optional[bool], fused: Optional[bool]) -> Optional[str]:
    """The implementation ``torch.optim``-style flags ask for (None: neither set, torch's rule applies)."""
    if foreach and fused:
        raise ValueError("foreach and fused cannot both be True")
    if foreach is None and fused is None:
        return None
    return "fused" if fused else "foreach" if foreach else "forloop"


# ----------------------------------------------------------------------------------------------------------
# The fused bucket loop
# ----------------------------------------------------------------------------------------------------------
def row(columns: Columns, i: int) -> tuple:
    """The i-th tensor of every column (None for an absent column)."""
    return tuple(None if col is None else col[i] for col in columns)



def buckets(params: list[Tensor], grads: list[Tensor], buffers: Columns, ipt_avgs: Optional[list[Tensor]],
            steps: list[float]) -> list[tuple[float, Columns]]:
    """Same-device, same-dtype, same-step buckets as (step, [params, grads, *buffers, ipt_avgs]) columns."""
    n = len(params)
    columns = [params, grads, *buffers, ipt_avgs]
    padded = [[None] * n if col is None else col for col in columns]
    out = []
    for _, (_, idx) in Optimizer._group_tensors_by_device_and_dtype(padded, with_indices=True).items():
        by_step: dict[float, list[int]] = {}
        for i in idx:
            by_step.setdefault(steps[i], []).append(i)
        for step, picked in by_step.items():
            out.append((step, [None if col is None else [col[i] for i in picked] for col in columns]))
    return out


def fused_update(algo: Algorithm, params: list[Tensor], grads: list[Tensor], buffers: Columns,
                 ipt_avgs: Optional[list[Tensor]], steps: list[float], scalars: Callable[[float], dict],
                 hyper: dict, grad_factor: float, backend: Union[str, Backend, None] = None) -> None:
    """One fused update of every tensor; ``grad_factor`` multiplies the gradient first (AMP unscale, maximize);
    ``backend``: the optimizer's ``fused_backend`` (see :func:`select`).

    Tensors the fused code cannot take (non-contiguous) run the single-tensor math eagerly.
    """
    fusable = [i for i, p in enumerate(params) if all(t is None or t.is_contiguous()
                                                      for t in (p, grads[i], *row(buffers, i)))]
    if len(fusable) < len(params):
        _eager_rest(algo, params, grads, buffers, ipt_avgs, steps, scalars, hyper, grad_factor, set(fusable))
        pick = lambda col: None if col is None else [col[i] for i in fusable]  # noqa: E731
        params, grads, buffers = pick(params), pick(grads), [pick(c) for c in buffers]
        ipt_avgs, steps = pick(ipt_avgs), [steps[i] for i in fusable]
        if not params:
            return
    for step, (p, g, *cols) in buckets(params, grads, buffers, ipt_avgs, steps):
        states, ipt, step_scalars = cols[:-1], cols[-1], scalars(step)
        chosen = select("fused", p[0].device, p[0].dtype, grad_dtype=g[0].dtype, backend=backend,
                        algorithm=algo.name).backend
        fallback = chosen.fallback
        if fallback is not None and not kernel_verified(chosen, algo, p[0], g[0], step_scalars, hyper,
                                                        getattr(fallback, "name", fallback)):
            if fallback == "foreach":
                multi_step(algo, p, g, states, ipt, step_scalars, hyper, grad_factor)
                continue
            chosen = fallback
        chosen.fused_step(algo.name, p, g, [c for c in states if c is not None], ipt, step_scalars, hyper,
                          grad_factor=grad_factor)


def _eager_rest(algo, params, grads, buffers, ipt_avgs, steps, scalars, hyper, grad_factor, fusable: set) -> None:
    """The single-tensor math, eagerly, for the tensors not in ``fusable``."""
    for i, (p, g) in enumerate(zip(params, grads)):
        if i not in fusable:
            single_step(algo, p, g, row(buffers, i), None if ipt_avgs is None else ipt_avgs[i], scalars(steps[i]),
                        hyper, grad_factor)


# ----------------------------------------------------------------------------------------------------------
# Kernel self-check: on first use per process, device and kernel variant, a hand-written kernel (Triton, C)
# must agree with the foreach math on a probe that takes every path a step of that variant can take; a build
# failure or a mismatch warns once and that variant runs the fallback (foreach after Triton, torch.compile after
# C). Under torch.distributed every rank gets the same verdict.
# ----------------------------------------------------------------------------------------------------------
_VERIFIED: dict[tuple, bool] = {}
_WARNED: set[tuple] = set()
#: relative tolerance of the probe per tensor dtype (the kernel computes in fp32, fp64 for fp64)
_PROBE_RTOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}
#: The probe's tensors, all in one bucket: a full block and a tail (2051), a tensor smaller than a block (5), a
#: misaligned view over two full blocks and a tail (4103), and one-block tensors up to a bucket of many rows.
_PROBE_SIZES = (2051, 5, 4103) + tuple(1 + (7 * i) % 29 for i in range(24))
#: Tensors placed one element past an aligned start: no 16-byte vector access may be assumed for them.
_PROBE_MISALIGNED = frozenset({2, *range(3, len(_PROBE_SIZES), 3)})
#: (tensor, element, value) of non-finite gradients: NaN in a full block, +inf in a tail, -inf misaligned.
_PROBE_NONFINITE = ((0, 3, float("nan")), (0, 2050, float("inf")), (2, 7, float("-inf")))
#: The factor the kernel applies to gradients as it loads them (AMP's 1/scale, maximize's sign): not 1, so a
#: kernel that skipped or inverted it fails.
_PROBE_GRAD_FACTOR = -0.125


def reset_self_checks() -> None:
    """Forget every verdict and logged choice (tests; a new process starts empty anyway)."""
    _VERIFIED.clear()
    _WARNED.clear()
    _LOGGED.clear()


_FALLBACK_NAMES = {"foreach": "the foreach implementation", "compiled": "the torch.compile implementation"}


def kernel_verified(kernel, algo: Algorithm, p: Tensor, g: Tensor, scalars: dict, hyper: dict,
                    fallback: str = "foreach") -> bool:
    """Whether the kernel variant for these tensors and hyperparameters passed its self-check (run once).

    Under torch.distributed the verdict is all-reduced, so every rank runs the same implementation: ranks that
    step the same parameters meet the same variants in the same order, one collective each.
    """
    flavour = tuple(sorted((k, v) for k, v in hyper.items())) + (bool(scalars.get("first_step", False)),)
    name = kernel.KERNEL
    key = (name, str(p.device), algo.name, p.dtype, g.dtype, flavour)
    if algo.name not in kernel.ALGORITHMS:  # a programming error, not a kernel failure: say so
        raise ValueError(f"unknown algorithm {algo.name!r}; expected one of {', '.join(kernel.ALGORITHMS)}")
    if key not in _VERIFIED:
        problem = _self_check(kernel, algo, p.device, p.dtype, g.dtype, scalars, hyper)
        _VERIFIED[key] = _agreed(problem is None, p.device)
        if not _VERIFIED[key] and key[:3] not in _WARNED:
            _WARNED.add(key[:3])
            where = "" if problem is not None else " on another rank (it passed on this one)"
            why = f" ({problem})" if problem is not None else ""
            warnings.warn(f"fused SAGE step: the {name} for {algo.name} on {p.device} failed its self-check"
                          f"{where}{why}; using {_FALLBACK_NAMES[fallback]} instead", RuntimeWarning,
                          stacklevel=4)
    return _VERIFIED[key]


def _agreed(ok: bool, device: torch.device) -> bool:
    """``ok`` on every rank of the default process group, else ``ok`` (no group, or one rank)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return ok
    on = device if device.type == "cuda" and "nccl" in str(dist.get_backend()) else torch.device("cpu")
    flag = torch.tensor([int(ok)], dtype=torch.int32, device=on)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _probe(device, dtype, g_dtype, algo: Algorithm, hyper: dict) -> list[Optional[list[Tensor]]]:
    """Columns θ, g, state buffers, Ī of the probe bucket (positive second moments and Ī; state in
    ``state_dtype(dtype)``; non-finite gradients at ``_PROBE_NONFINITE``)."""
    gen = torch.Generator().manual_seed(0)

    def rand(dt, positive: bool = False) -> list[Tensor]:
        out = []
        for i, n in enumerate(_PROBE_SIZES):
            t = torch.randn(n, generator=gen, dtype=torch.float64)
            shift = int(i in _PROBE_MISALIGNED)
            view = torch.empty(n + shift, device=device, dtype=dt)[shift:]
            out.append(view.copy_(t.abs() + 0.1 if positive else t))
        return out

    s_dtype = state_dtype(dtype)
    n_states = 1 if algo.name == "sgd" else 2
    states = [rand(s_dtype), rand(s_dtype, positive=True)][:n_states]
    if algo.name == "sgd" and not hyper["momentum"]:
        states = [None]
    grads = rand(g_dtype)
    for tensor, element, value in _PROBE_NONFINITE:
        grads[tensor][element] = value
    return [rand(dtype), grads, *states, rand(s_dtype, positive=True) if hyper["sage"] else None]


def _self_check(kernel, algo: Algorithm, device, dtype, g_dtype, scalars: dict, hyper: dict) -> Optional[str]:
    """None if the kernel matches the foreach math (in float64) on the probe, else what went wrong."""
    scalars = dict(scalars, lr=0.5, **({"decay_lr": 0.5} if "decay_lr" in scalars else {}))  # visible moves
    try:
        columns = _probe(device, dtype, g_dtype, algo, hyper)
        wide = [None if col is None else [t.to(torch.float64, copy=True) for t in col] for col in columns]
        torch._foreach_mul_(wide[1], _PROBE_GRAD_FACTOR)
        algo.multi(*wide, **scalars, **hyper)
        p, g, *states, ipt = columns
        with warnings.catch_warnings():  # NaN/inf on purpose: an interpreted kernel's numpy would warn
            warnings.simplefilter("ignore", RuntimeWarning)
            kernel.fused_step(algo.name, p, g, [c for c in states if c is not None], ipt,
                              dict(scalars, grad_factor=_PROBE_GRAD_FACTOR), hyper)
    except Exception as exc:  # noqa: BLE001 - any compile or launch failure means: do not use the kernel
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    for c, (got, want) in enumerate(zip(columns, wide)):
        if c == 1 or got is None:
            continue  # gradients are inputs only
        problem = _disagreement(torch.cat(got), torch.cat(want))
        if problem is not None:
            return f"column {c} {problem}"
    return None


def _disagreement(got: Tensor, want: Tensor) -> Optional[str]:
    """How a column ``got`` differs from the float64 ``want`` beyond its dtype's tolerance, relative to each
    value plus the column's largest (rounding errors scale with the inputs); NaN/inf must match exactly."""
    rtol = _PROBE_RTOL.get(got.dtype, 1e-4)
    got = got.double()
    finite = torch.isfinite(want)
    if not bool(((got == want) | (got.isnan() & want.isnan()))[~finite].all()):
        return "differs from foreach in its non-finite elements (NaN/inf gradients)"
    err, scale = (got - want)[finite].abs(), want[finite].abs()
    bound = rtol * (scale + (scale.max() if scale.numel() else 0.0))
    if not bool((err <= bound).all()):  # a NaN where foreach is finite fails here too
        return f"differs from foreach by up to {float(err.max()):.3g}"
    return None


# ----------------------------------------------------------------------------------------------------------
# Every variant, for checks on new hardware (bench/ scripts): list them, probe them, return the verdicts
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KernelVariant:
    """One compiled flavour of the hand-written kernels: what the self-check keys its verdict on."""
    algorithm: str
    dtype: torch.dtype  # parameters and gradients; the state is state_dtype(dtype)
    sage: bool = True
    formula: str = "reference"
    decay: bool = False
    momentum: bool = False  # sgd only, as nesterov and first_step
    nesterov: bool = False
    first_step: bool = False

    def arguments(self) -> tuple[dict, dict]:
        """(step scalars, hyperparameters) of a step that takes this variant (plausible third-step values)."""
        hyper = dict(beta3=0.75, eps=1e-6, weight_decay=0.01 if self.decay else 0.0, formula=self.formula,
                     sage=self.sage)
        if self.algorithm == "sgd":
            hyper.update(momentum=0.9 if self.momentum else 0.0, dampening=0.0, nesterov=self.nesterov)
            return dict(lr=1e-3, first_step=self.first_step, ipt_correction=1.0), hyper
        hyper.update(beta1=0.9, beta2=0.999)
        scalars = {"adamax": dict(lr=1e-3, ipt_correction=1.0),
                   "adamw": dict(lr=1e-3, decay_lr=1e-3, step_correction=0.2, ipt_correction=1.7),
                   "adam": dict(lr=1e-3, bias_correction1=0.27, bias_correction2_sqrt=0.055, ipt_correction=1.7)}
        return scalars[self.algorithm], hyper


def kernel_variants(dtypes: Iterable[torch.dtype] = (torch.float32, torch.bfloat16, torch.float16, torch.float64),
                    algorithms: Iterable[str] = tuple(ALGORITHMS), formulas: Iterable[str] = FORMULAS
                    ) -> list[KernelVariant]:
    """Every kernel variant a step can take for these dtypes, algorithms and SAGE formulas."""
    formulas = tuple(formulas)
    out = []
    for dtype, algorithm in itertools.product(dtypes, algorithms):
        for (sage, formula), decay in itertools.product([(False, "reference")] + [(True, f) for f in formulas],
                                                        (False, True)):
            if algorithm != "sgd":
                out.append(KernelVariant(algorithm, dtype, sage, formula, decay))
                continue
            for (momentum, nesterov), first in itertools.product(((False, False), (True, False), (True, True)),
                                                                 (False, True)):
                out.append(KernelVariant(algorithm, dtype, sage, formula, decay, momentum, nesterov, first))
    return out


def check_variants(device: torch.device | str, variants: Optional[Iterable[KernelVariant]] = None,
                   backend: Union[str, Backend, None] = None) -> list[tuple[KernelVariant, Optional[str]]]:
    """Run the self-check probe of each variant (default: :func:`kernel_variants`) with the hand-written kernel
    that would take it on ``device`` (``backend``: as an optimizer's ``fused_backend``): (variant, None if it
    passed, else what failed). Local to this process: no verdict is cached, no warning issued, no rank
    consulted."""
    device = torch.device(device)
    results = []
    for variant in kernel_variants() if variants is None else variants:
        kernel = select("fused", device, variant.dtype, backend=backend, algorithm=variant.algorithm).backend
        if kernel.fallback is None:
            results.append((variant, f"no hand-written kernel takes {variant.dtype} on {device}"))
            continue
        scalars, hyper = variant.arguments()
        results.append((variant, _self_check(kernel, ALGORITHMS[variant.algorithm], device, variant.dtype,
                                             variant.dtype, scalars, hyper)))
    return results
