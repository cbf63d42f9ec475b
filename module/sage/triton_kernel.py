"""Multi-tensor Triton kernel for the SAGE optimizers: one launch per (device, dtype, step) bucket.

Why a pointer table: BERT-base has ~200 parameter tensors, and one launch per tensor costs more than the
update itself. Each launch instead gets a device table with one row per tensor (the addresses of θ, g, the two
state buffers, Ī and the element count), a table of blocks (tensor row, first element) and a flag per row (all
of its addresses 16-byte aligned: its full blocks use vector accesses). Every program updates one block,
casting the row's integer addresses to typed pointers, so all tensors of a bucket go in a single launch. The
tables depend only on the addresses and sizes, so they are cached; a miss builds them on the host and copies
them from pinned memory without blocking (a copy from pageable memory would wait for the whole stream).

The per-element math is that of :mod:`module.sage.updates`' ``single_*`` functions, op for op, with IEEE
division and square root; it runs in float32 (float64 for float64 parameters) and writes θ and state in place
with no parameter-sized temporaries. State is ``state_dtype`` of the parameters (float32 for float16/bfloat16).
Each launch runs on the tensors' device and that device's current stream, whatever device is current.
Works under ``TRITON_INTERPRET=1`` on CPU tensors (the tests use that).
"""
from __future__ import annotations

import contextlib
import struct
from collections import OrderedDict
from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from module.sage.kernel_args import (ALGORITHMS, SCALAR_NAMES, bucket_columns, check_bucket, is_momentum,
                                      kernel_floats)
from module.sage.updates import state_dtype

KERNEL = "Triton kernel"
__all__ = ["fused_step", "ALGORITHMS", "KERNEL", "BLOCK_SIZE", "NUM_WARPS", "clear_table_cache", "table_cache_stats",
           "launch_config"]

#: Elements and warps per program: 8 fp32 elements per thread, so full blocks compile to 128-bit accesses (checked
#: in the sm_90 PTX). Not yet timed on a GPU: ``bench/optim_step.py --device cuda --tune`` sweeps them.
BLOCK_SIZE = 2048
NUM_WARPS = 8
#: Columns of a tensor row in the pointer table: θ, g, state0, state1, Ī, numel.
_ROW = 6
_MAX_CACHED_TABLES = 16

_TRITON_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64, torch.float16: tl.float16,
                  torch.bfloat16: tl.bfloat16}


# ----------------------------------------------------------------------------------------------------------
# The kernel
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def _div(a, b):
    """IEEE-rounded division (Triton's ``/`` on float32 may be approximate; float64 ``/`` is exact)."""
    if a.dtype == tl.float32:
        return tl.div_rn(a, b)
    return a / b


@triton.jit
def _sqrt(x):
    if x.dtype == tl.float32:
        return tl.sqrt_rn(x)
    return tl.sqrt(x)


@triton.jit
def _sage_factor(ipt, ipt_avg, ipt_correction, eps, eps_sq, FORMULA: tl.constexpr):
    """The modulating term of updates.single_sage_factor; Î = Ī·c, U = |I − Î|."""
    ihat = ipt_avg * ipt_correction
    u = tl.abs(ipt - ihat)
    if FORMULA == "reference":
        s = _div(u, ihat + eps_sq)
    elif FORMULA == "paper":
        s = _div(u + eps, ihat + eps)
    elif FORMULA == "ablation1":
        s = (u + eps) * (ihat + eps)
    elif FORMULA == "ablation2":
        s = _div(ihat + eps, u + eps)
    elif FORMULA == "ablation3":
        s = ihat + eps
    elif FORMULA == "ablation4":
        s = _div(tl.full(ihat.shape, 1.0, ihat.dtype), ihat + eps)
    else:  # ablation5
        s = u + eps
    return s


@triton.jit
def _scalar(bits, COMPUTE: tl.constexpr):
    """A float64 scalar sent as its IEEE bit pattern, rounded once to the compute type (as torch does)."""
    return bits.to(tl.int64).to(tl.float64, bitcast=True).to(COMPUTE)


@triton.jit
def _typed(row, col: tl.constexpr, offs, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    """Pointers to elements ``offs`` of the tensor whose address is in column ``col`` of a table row.

    A loaded address carries no alignment facts, so ALIGNED (every address of the row 16-byte aligned, the
    row's flag set on the host) restates it; with block starts multiple of BLOCK this lets full blocks use
    vector accesses.
    """
    ptrs = tl.load(row + col).to(tl.pointer_type(DTYPE)) + offs
    if ALIGNED:
        ptrs = tl.multiple_of(ptrs, 16)
    return ptrs


@triton.jit
def _update_block(row, offs, mask,
                  lr, beta1, one_minus_beta1, beta2, one_minus_beta2, beta3, one_minus_beta3, eps, eps_sq,
                  weight_decay, step_size, decay, bias_correction1, bias_correction2_sqrt, ipt_correction,
                  momentum, one_minus_dampening, grad_factor,
                  ALGO: tl.constexpr, SAGE: tl.constexpr, FORMULA: tl.constexpr, HAS_DECAY: tl.constexpr,
                  HAS_MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr, FIRST_STEP: tl.constexpr,
                  P_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr, S_DTYPE: tl.constexpr, COMPUTE: tl.constexpr,
                  ALIGNED: tl.constexpr):
    """One block of one tensor; ``mask`` is None for full blocks (unmasked, vectorisable accesses).

    Scalars are float64 bit patterns (see _sage_kernel); state buffers and Ī are S_DTYPE.
    """
    lr, beta1, one_minus_beta1 = _scalar(lr, COMPUTE), _scalar(beta1, COMPUTE), _scalar(one_minus_beta1, COMPUTE)
    beta2, one_minus_beta2 = _scalar(beta2, COMPUTE), _scalar(one_minus_beta2, COMPUTE)
    beta3, one_minus_beta3 = _scalar(beta3, COMPUTE), _scalar(one_minus_beta3, COMPUTE)
    eps, eps_sq, weight_decay = _scalar(eps, COMPUTE), _scalar(eps_sq, COMPUTE), _scalar(weight_decay, COMPUTE)
    step_size, decay = _scalar(step_size, COMPUTE), _scalar(decay, COMPUTE)
    ipt_correction, momentum = _scalar(ipt_correction, COMPUTE), _scalar(momentum, COMPUTE)
    bias_correction1 = _scalar(bias_correction1, COMPUTE)
    bias_correction2_sqrt = _scalar(bias_correction2_sqrt, COMPUTE)
    one_minus_dampening = _scalar(one_minus_dampening, COMPUTE)
    grad_factor = _scalar(grad_factor, COMPUTE)
    p_ptr = _typed(row, 0, offs, P_DTYPE, ALIGNED)
    g_ptr = _typed(row, 1, offs, G_DTYPE, ALIGNED)
    p = tl.load(p_ptr, mask=mask).to(COMPUTE)
    g = tl.load(g_ptr, mask=mask).to(COMPUTE) * grad_factor  # AMP unscale and maximize's sign, in registers
    if ALGO == "sgd":
        if HAS_DECAY:
            d = g + weight_decay * p
        else:
            d = g
        if HAS_MOMENTUM:
            buf_ptr = _typed(row, 2, offs, S_DTYPE, ALIGNED)
            if FIRST_STEP:
                buf = d
            else:
                buf = tl.load(buf_ptr, mask=mask).to(COMPUTE) * momentum + one_minus_dampening * d
            tl.store(buf_ptr, buf.to(S_DTYPE), mask=mask)
            if NESTEROV:
                d = d + momentum * buf
            else:
                d = buf
        update = d
    else:
        m_ptr = _typed(row, 2, offs, S_DTYPE, ALIGNED)
        v_ptr = _typed(row, 3, offs, S_DTYPE, ALIGNED)
        m = tl.load(m_ptr, mask=mask).to(COMPUTE)
        v = tl.load(v_ptr, mask=mask).to(COMPUTE)
        if ALGO == "adamax":
            m = m * beta1 + one_minus_beta1 * g
            v = tl.maximum(v * beta2, tl.abs(g) + eps, propagate_nan=tl.PropagateNan.ALL)  # as torch.maximum
            update = _div(m, v + eps)
            if HAS_DECAY:
                update = update + weight_decay * p
        elif ALGO == "adamw":
            m = m * beta1 + one_minus_beta1 * g
            v = v * beta2 + one_minus_beta2 * (g * g)
            update = _div(m, _sqrt(v) + eps)
        else:  # adam: L2 decay folded into the moments' gradient
            if HAS_DECAY:
                d = g + weight_decay * p
            else:
                d = g
            m = m * beta1 + one_minus_beta1 * d
            v = v * beta2 + one_minus_beta2 * (d * d)
            update = _div(_div(m, bias_correction1), _div(_sqrt(v), bias_correction2_sqrt) + eps)
        tl.store(m_ptr, m.to(S_DTYPE), mask=mask)
        tl.store(v_ptr, v.to(S_DTYPE), mask=mask)
    if SAGE:
        ipt_ptr = _typed(row, 4, offs, S_DTYPE, ALIGNED)
        ipt = tl.abs(p * g)
        ipt_avg = tl.load(ipt_ptr, mask=mask).to(COMPUTE) * beta3 + one_minus_beta3 * ipt
        tl.store(ipt_ptr, ipt_avg.to(S_DTYPE), mask=mask)
        update = update * _sage_factor(ipt, ipt_avg, ipt_correction, eps, eps_sq, FORMULA)
    if ALGO == "adamw":
        p = p - update * step_size
        if HAS_DECAY:
            p = p - p * decay
    else:
        p = p - update * lr
    tl.store(p_ptr, p.to(P_DTYPE), mask=mask)


@triton.jit(do_not_specialize=SCALAR_NAMES)
def _sage_kernel(rows, blocks, row_aligned,
                 lr: tl.int64, beta1: tl.int64, one_minus_beta1: tl.int64, beta2: tl.int64,
                 one_minus_beta2: tl.int64, beta3: tl.int64, one_minus_beta3: tl.int64, eps: tl.int64,
                 eps_sq: tl.int64, weight_decay: tl.int64, step_size: tl.int64, decay: tl.int64,
                 bias_correction1: tl.int64, bias_correction2_sqrt: tl.int64, ipt_correction: tl.int64,
                 momentum: tl.int64, one_minus_dampening: tl.int64, grad_factor: tl.int64,
                 ALGO: tl.constexpr, SAGE: tl.constexpr, FORMULA: tl.constexpr, HAS_DECAY: tl.constexpr,
                 HAS_MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr, FIRST_STEP: tl.constexpr,
                 P_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr, S_DTYPE: tl.constexpr, COMPUTE: tl.constexpr,
                 BLOCK: tl.constexpr):
    """Grid: one program per block. Float scalars arrive as int64 bit patterns of float64 values: kernel
    arguments annotated float64 would be exact when compiled, but the interpreter (and Python-float
    constants) round them to float32, which the float64 parity tests would see.

    Three paths, all in every compiled variant (so one launch, and one self-check probe, covers them): full
    blocks of a row whose addresses are all 16-byte aligned (vector accesses), other full blocks, and tails."""
    pid = tl.program_id(0)
    tensor = tl.load(blocks + 2 * pid)
    start = tl.multiple_of(tl.load(blocks + 2 * pid + 1), BLOCK)
    row = rows + tensor * 6  # _ROW columns per tensor
    numel = tl.load(row + 5)
    offs = start + tl.arange(0, BLOCK)
    if start + BLOCK <= numel:
        if tl.load(row_aligned + tensor) != 0:
            _update_block(row, offs, None, lr, beta1, one_minus_beta1, beta2, one_minus_beta2, beta3,
                          one_minus_beta3, eps, eps_sq, weight_decay, step_size, decay, bias_correction1,
                          bias_correction2_sqrt, ipt_correction, momentum, one_minus_dampening, grad_factor, ALGO,
                          SAGE, FORMULA, HAS_DECAY, HAS_MOMENTUM, NESTEROV, FIRST_STEP, P_DTYPE, G_DTYPE, S_DTYPE,
                          COMPUTE, True)
        else:
            _update_block(row, offs, None, lr, beta1, one_minus_beta1, beta2, one_minus_beta2, beta3,
                          one_minus_beta3, eps, eps_sq, weight_decay, step_size, decay, bias_correction1,
                          bias_correction2_sqrt, ipt_correction, momentum, one_minus_dampening, grad_factor, ALGO,
                          SAGE, FORMULA, HAS_DECAY, HAS_MOMENTUM, NESTEROV, FIRST_STEP, P_DTYPE, G_DTYPE, S_DTYPE,
                          COMPUTE, False)
    else:  # a masked tail: its accesses are not vectorised whatever the alignment
        _update_block(row, offs, offs < numel, lr, beta1, one_minus_beta1, beta2, one_minus_beta2, beta3,
                      one_minus_beta3, eps, eps_sq, weight_decay, step_size, decay, bias_correction1,
                      bias_correction2_sqrt, ipt_correction, momentum, one_minus_dampening, grad_factor, ALGO,
                      SAGE, FORMULA, HAS_DECAY, HAS_MOMENTUM, NESTEROV, FIRST_STEP, P_DTYPE, G_DTYPE, S_DTYPE,
                      COMPUTE, False)


# ----------------------------------------------------------------------------------------------------------
# Device tables (cached on the tensors' addresses and sizes)
# ----------------------------------------------------------------------------------------------------------
class _Table(NamedTuple):
    rows: Tensor         # int64 [n, 6]: θ, g, state0, state1, Ī addresses (0 when absent), numel
    blocks: Tensor       # int64 [n_blocks, 2]: tensor row, first element
    row_aligned: Tensor  # int64 [n]: 1 where every address of the row is 16-byte aligned
    n_blocks: int
    aligned: bool        # every row aligned


_TABLES: "OrderedDict[tuple, _Table]" = OrderedDict()
_TABLE_STATS = {"hits": 0, "misses": 0}


def clear_table_cache() -> None:
    """Drop every cached table and zero the hit/miss counts."""
    _TABLES.clear()
    _TABLE_STATS.update(hits=0, misses=0)


def table_cache_stats() -> dict[str, int]:
    """Table-cache hits and misses since the last :func:`clear_table_cache` (a miss builds and copies tables)."""
    return dict(_TABLE_STATS)


def _tables(device: torch.device, columns: list[Optional[list[Tensor]]], block: int) -> _Table:
    """The device tables for tensors given column by column (θ, g, state0, state1, Ī; None = absent).

    A miss reads no tensor on the host and does not wait for the device: sizes come from Python ints and the
    host table is copied from pinned memory without blocking (see :func:`_upload`)."""
    numels = tuple(map(Tensor.numel, columns[0]))
    addresses = tuple(None if col is None else tuple(map(Tensor.data_ptr, col)) for col in columns)
    key = (device, block, numels, addresses)
    hit = _TABLES.get(key)
    if hit is not None:
        _TABLE_STATS["hits"] += 1
        _TABLES.move_to_end(key)
        return hit
    _TABLE_STATS["misses"] += 1
    n = len(numels)
    rows = torch.zeros((n, _ROW), dtype=torch.int64)
    for c, col in enumerate(addresses):
        if col is not None:
            rows[:, c] = torch.tensor(col, dtype=torch.int64)
    rows[:, _ROW - 1] = torch.tensor(numels, dtype=torch.int64)
    n_per_row = [-(-m // block) for m in numels]
    n_blocks = sum(n_per_row)
    counts = torch.tensor(n_per_row, dtype=torch.int64)
    first = torch.cumsum(counts, 0) - counts
    tensor_of_block = torch.repeat_interleave(torch.arange(n), counts, output_size=n_blocks)
    start = (torch.arange(n_blocks) - first[tensor_of_block]) * block
    flags = [int(all(col is None or col[i] % 16 == 0 for col in addresses)) for i in range(n)]
    host = torch.cat([rows.view(-1), torch.stack([tensor_of_block, start], 1).view(-1),
                      torch.tensor(flags, dtype=torch.int64)])
    table = _upload(host, device)
    entry = _Table(table[:n * _ROW], table[n * _ROW:n * _ROW + 2 * n_blocks], table[n * _ROW + 2 * n_blocks:],
                   n_blocks, all(flags))
    _TABLES[key] = entry
    if len(_TABLES) > _MAX_CACHED_TABLES:
        _TABLES.popitem(last=False)
    return entry


def _upload(host: Tensor, device: torch.device) -> Tensor:
    """``host`` on ``device`` without a host sync: staged in pinned memory and copied on the device's current
    stream without blocking (from pageable memory the copy waits for everything queued on the stream, e.g. the
    backward pass). The caching host allocator keeps the pinned block until the copy has run."""
    if device.type == "cpu":
        return host
    return host.pin_memory().to(device, non_blocking=True)


# ----------------------------------------------------------------------------------------------------------
# Launch
# ----------------------------------------------------------------------------------------------------------
def _bits(x: float) -> int:
    """IEEE float64 bit pattern of ``x`` as a signed int64 (the kernel bit-casts it back)."""
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


def _kernel_args(algorithm: str, columns: list[Optional[list[Tensor]]], scalars: dict, hyper: dict,
                 table: _Table, block_size: int = BLOCK_SIZE, num_warps: int = NUM_WARPS) -> tuple[tuple, dict]:
    """Positional and keyword arguments of _sage_kernel for one bucket."""
    params, grads = columns[0], columns[1]
    momentum = is_momentum(algorithm, hyper)
    args = (table.rows, table.blocks, table.row_aligned, *map(_bits, kernel_floats(algorithm, scalars, hyper)))
    kwargs = dict(
        ALGO=algorithm, SAGE=columns[4] is not None, FORMULA=str(hyper["formula"]),
        HAS_DECAY=float(hyper["weight_decay"]) != 0, HAS_MOMENTUM=momentum,
        NESTEROV=momentum and bool(hyper["nesterov"]), FIRST_STEP=bool(scalars.get("first_step", False)),
        P_DTYPE=_TRITON_DTYPES[params[0].dtype], G_DTYPE=_TRITON_DTYPES[grads[0].dtype],
        S_DTYPE=_TRITON_DTYPES[state_dtype(params[0].dtype)],
        COMPUTE=tl.float64 if params[0].dtype == torch.float64 else tl.float32,
        BLOCK=block_size, num_warps=num_warps, enable_fp_fusion=True)
    return args, kwargs


def _device_guard(device: torch.device):
    """The tensors' device made current around a launch. Triton launches on the current device, on its current
    stream: without the guard a bucket on cuda:1 would run on cuda:0 (with cuda:1's addresses) whenever cuda:0 is
    current, e.g. ``--device cuda:1`` without ``torch.cuda.set_device``. Under the guard the stream is cuda:1's
    current stream, the one torch queues the tensors' other work on."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _launch(algorithm: str, columns: list[Optional[list[Tensor]]], scalars: dict, hyper: dict,
            block_size: int = BLOCK_SIZE, num_warps: int = NUM_WARPS) -> None:
    """One kernel launch for a validated one-device bucket (see fused_step for the contract)."""
    device = columns[0][0].device
    with _device_guard(device):
        table = _tables(device, columns, block_size)
        if table.n_blocks == 0:
            return
        args, kwargs = _kernel_args(algorithm, columns, scalars, hyper, table, block_size, num_warps)
        _sage_kernel[(table.n_blocks,)](*args, **kwargs)


# ----------------------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------------------
def fused_step(algorithm: str, params: list[Tensor], grads: list[Tensor], states: list[list[Tensor]],
               ipt_avgs: Optional[list[Tensor]], scalars: dict, hyper: dict,
               grad_factor: Optional[float] = None, *, block_size: Optional[int] = None,
               num_warps: Optional[int] = None) -> None:
    """Update every tensor of one bucket in place with a single launch (any device Triton runs on).

    ``states`` holds one list per state buffer of the algorithm (adamax: exp_avg, exp_inf; adamw/adam:
    exp_avg, exp_avg_sq; sgd: momentum_buffer, or no list without momentum); ``ipt_avgs`` the Ī tensors when
    ``hyper["sage"]``. ``scalars`` (step-dependent) and ``hyper`` are the keyword arguments of the algorithm's
    ``updates.single_*`` function, for one step count shared by the whole bucket. Tensors must be contiguous
    and on one device; parameters share one dtype, states and Ī are ``state_dtype`` of it, gradients share one
    dtype. The kernel multiplies each gradient by ``grad_factor`` (default: ``scalars["grad_factor"]``, else 1)
    as it loads it (AMP's 1/scale, −1 for maximize): no unscale pass. ``block_size``/``num_warps``: the launch
    configuration (default BLOCK_SIZE, NUM_WARPS; ``bench/optim_step.py --tune`` sweeps them).
    """
    columns = bucket_columns(algorithm, params, grads, states, ipt_avgs, hyper)
    if not params:
        return
    check_bucket(columns, _TRITON_DTYPES)
    factor = scalars.get("grad_factor", 1.0) if grad_factor is None else grad_factor
    _launch(algorithm, columns, dict(scalars, grad_factor=factor), hyper, block_size or BLOCK_SIZE,
            num_warps or NUM_WARPS)


def launch_config() -> dict:
    """The default tuning knobs (reported by the benchmark)."""
    return dict(block_size=BLOCK_SIZE, num_warps=NUM_WARPS)
