"""The fused SAGE step on CPU: a small C kernel (``module/sage/cpu_kernel.c``), one call per bucket.

Why C and not ``torch.compile``: the compiled single-tensor math runs one parallel region per call and, on a
BERT-base step, measured 1.2–1.4× torch's hand-written fused AdamW; this kernel updates every tensor of a
bucket in one parallel region and one pass over memory (``bench/optim_step.py`` has both rows).

Each flavour (algorithm, SAGE, formula, decay, momentum, Nesterov, first step, float32/float64) is one compile of
the same source with ``-D`` macros (a fraction of a second, with the C compiler ``torch.compile`` also needs),
cached on disk under a hash of the source, compiler, flags and CPU, and loaded with ctypes. The interface is
that of :mod:`module.sage.triton_kernel`: :mod:`module.sage.dispatch` checks each variant against the foreach math on
first use and falls back to the ``torch.compile`` path (with one warning) if it fails to build or disagrees.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from module.sage.kernel_args import (ALGORITHMS, SCALAR_NAMES, bucket_columns, check_bucket, is_momentum,
                                     kernel_floats)
from module.sage.updates import FORMULAS

__all__ = ["fused_step", "supports", "ALGORITHMS", "KERNEL", "SOURCE", "cache_dir"]

KERNEL = "C kernel"
SOURCE = Path(__file__).with_name("cpu_kernel.c")
#: -march=native: the library is built for this CPU (its flags are part of the cache key); on x86, full-width
#: AVX-512 where the CPU has it (gcc otherwise prefers 256-bit vectors), as torch's own vectorised kernels use.
FLAGS = ("-O3", "-march=native", *(("-mprefer-vector-width=512",) if platform.machine().lower() in
                                   ("x86_64", "amd64") else ()),
         "-fno-math-errno", "-fno-trapping-math", "-fopenmp", "-std=gnu11", "-shared", "-fPIC")
#: parameter dtype -> (C type, |x|, sqrt); gradients must have the parameters' dtype
DTYPES = {torch.float32: ("float", "fabsf", "sqrtf"), torch.float64: ("double", "fabs", "sqrt")}
_ALGO_CODES = {"adamax": 0, "adamw": 1, "adam": 2, "sgd": 3}


def supports(p: Tensor, g: Tensor) -> bool:
    """Whether the kernel takes a bucket with these parameter and gradient tensors."""
    return p.device.type == "cpu" and p.dtype in DTYPES and g.dtype == p.dtype


def cache_dir() -> Path:
    """Where built libraries are kept: $SAGE_CPU_CACHE_DIR, else a per-user folder in the temp directory."""
    configured = os.environ.get("SAGE_CPU_CACHE_DIR")
    if configured:
        return Path(configured)
    user = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"sage_cpu_{user}"


def _compiler() -> str:
    found = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not found:
        raise RuntimeError("no C compiler found (install gcc or set CC)")
    return found


@functools.lru_cache(maxsize=1)
def _cpu_identity() -> str:
    """This CPU's model and instruction-set flags (the build uses -march=native)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    wanted = [line for line in lines if line.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(wanted)))


def _defines(algorithm: str, dtype: torch.dtype, hyper: dict, first_step: bool, sage: bool) -> tuple[str, ...]:
    c_type, c_abs, c_sqrt = DTYPES[dtype]
    momentum = is_momentum(algorithm, hyper)
    values = dict(T=c_type, ABS=c_abs, SQRT=c_sqrt, ALGO=_ALGO_CODES[algorithm], SAGE=int(sage),
                  FORMULA=FORMULAS.index(str(hyper["formula"])), HAS_DECAY=int(float(hyper["weight_decay"]) != 0),
                  HAS_MOMENTUM=int(momentum), NESTEROV=int(momentum and bool(hyper["nesterov"])),
                  FIRST_STEP=int(first_step))
    return tuple(f"-D{k}={v}" for k, v in values.items())


@functools.lru_cache(maxsize=None)
def _library(defines: tuple[str, ...]) -> ctypes.CDLL:
    """The built variant, compiling it once into the cache (temp file, then rename: no half-written library)."""
    cc = _compiler()
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, cc.encode(), " ".join(FLAGS + defines).encode(),
                                     _cpu_identity().encode()])).hexdigest()[:24]
    target = cache_dir() / f"sage_cpu_{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        # a fresh name the compiler creates itself, with the umask's mode (mkstemp's 0600 would make a cache
        # shared by a team unreadable to the others)
        tmp = str(target.parent / f".{target.name}.{os.getpid()}-{os.urandom(6).hex()}.tmp.so")
        try:
            done = subprocess.run([cc, *FLAGS, *defines, str(SOURCE), "-o", tmp], capture_output=True, text=True)
            if done.returncode != 0:
                first = (done.stderr.strip().splitlines() or ["(no output)"])[0]
                raise RuntimeError(f"{cc} failed on {SOURCE.name}: {first}")
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    lib = ctypes.CDLL(str(target))
    pointers = ctypes.POINTER(ctypes.c_void_p)
    lib.sage_step.argtypes = [ctypes.c_int64, pointers, pointers, pointers, pointers, pointers,
                              ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_double), ctypes.c_int]
    lib.sage_step.restype = None
    return lib


def _addresses(column: Optional[list[Tensor]], n: int):
    array = (ctypes.c_void_p * n)()
    if column is not None:
        array[:] = [t.data_ptr() for t in column]
    return array


def fused_step(algorithm: str, params: list[Tensor], grads: list[Tensor], states: list[list[Tensor]],
               ipt_avgs: Optional[list[Tensor]], scalars: dict, hyper: dict,
               grad_factor: Optional[float] = None) -> None:
    """Update every tensor of one bucket in place with one kernel call; the contract of
    :func:`module.sage.triton_kernel.fused_step` (contiguous CPU tensors, float32 or float64, one dtype throughout)."""
    columns = bucket_columns(algorithm, params, grads, states, ipt_avgs, hyper)
    if not params:
        return
    check_bucket(columns, DTYPES)
    if params[0].device.type != "cpu":
        raise ValueError(f"the C kernel updates CPU tensors; got {params[0].device}")
    lib = _library(_defines(algorithm, params[0].dtype, hyper, bool(scalars.get("first_step", False)),
                            columns[4] is not None))
    n = len(params)
    factor = scalars.get("grad_factor", 1.0) if grad_factor is None else grad_factor
    floats = kernel_floats(algorithm, dict(scalars, grad_factor=factor), hyper)
    lib.sage_step(n, *(_addresses(col, n) for col in columns), (ctypes.c_int64 * n)(*map(Tensor.numel, params)),
                  (ctypes.c_double * len(SCALAR_NAMES))(*floats), torch.get_num_threads())
