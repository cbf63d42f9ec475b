"""The Triton multi-tensor SAGE kernel against module.sage.updates' single-tensor math (float64, to 1e-12).

Runs the kernel in Triton's CPU interpreter on CPU tensors, so it needs triton but no GPU. ``triton.jit``
chooses interpreter or compiler when a kernel is defined, so the interpreted copy of module/sage/triton_kernel.py is
loaded privately with TRITON_INTERPRET=1 set only around that import: module.sage.triton_kernel itself (the CUDA
path other tests may use) is left alone.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import subprocess
import warnings
import sys
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import torch

triton = pytest.importorskip("triton", reason="triton is not installed: `pip install triton` to test the fused CUDA "
                             "path")
if tuple(int(x) for x in triton.__version__.split(".")[:2]) < (3, 6):
    # Before 3.6 the interpreter's patches of triton.language outlive the interpreted call and break later
    # compilation in the same process (seen with 3.5.0), so these tests would harm other tests.
    pytest.skip(f"triton {triton.__version__} < 3.6: its interpreter leaks patches into compiled kernels",
                allow_module_level=True)

from module import bert_optim  # noqa: E402
from module.sage import dispatch, functional, updates  # noqa: E402
from module.sage.dispatch import TritonBackend  # noqa: E402
from sage_kernel_cases import (CASES, HYPER, SCALARS, Counting, HostReads,  # noqa: E402
                               assert_half_follows_float64, assert_inside, assert_nan_propagated, assert_same, bucket,
                               carve, case_id, counting, groups, nan_first_grad, run_half_pair, run_pair,
                               run_scaled_pair)

pytestmark = [pytest.mark.interpreter]

ROOT = Path(__file__).resolve().parents[1]
SIZES = [(3, 5), (0,), (7,), (2049,), (33, 65)]  # odd sizes, a zero-size tensor, one block + 1 element


def _load_copy(interpret: bool):
    """A private copy of module/sage/triton_kernel.py, its kernels interpreted or compiled as asked."""
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
    try:
        name = "_sage_triton_interpreted" if interpret else "_sage_triton_compiled"
        spec = importlib.util.spec_from_file_location(name, ROOT / "module" / "sage" / "triton_kernel.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        if saved is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = saved
    return mod


_ENV_BEFORE = os.environ.get("TRITON_INTERPRET")
st = _load_copy(interpret=True)


#: Fused steps of CPU tensors on the interpreted kernel (the default route picks the C kernel on CPU).
INTERPRETED = TritonBackend(module=st, device_types=("cpu",))


def _run_pair(cls, kwargs, dtype=torch.float64, steps=4, grad_fn=None):
    """Same model, same grads: the for-loop path (updates.single_*) vs the Triton path; returns both."""
    return run_pair(cls, kwargs, SIZES, dtype=dtype, steps=steps, grad_fn=grad_fn, fused_backend=INTERPRETED)



@pytest.mark.parametrize("cls,kwargs", CASES, ids=case_id)
def test_matches_single_tensor_math_float64(cls, kwargs):
    assert_same(*_run_pair(cls, kwargs))


@pytest.mark.parametrize("formula", ["paper", "ablation1", "ablation3", "ablation5"])
def test_every_formula(formula):
    assert_same(*_run_pair(bert_optim.AdamWSAGE, dict(formula=formula), steps=2))


def test_maximize_and_noncontiguous_grads_fall_back_correctly():
    """maximize negates grads (new tensors); a transposed grad is not fusable and runs the eager math."""
    def grad_fn(p, step):
        g = torch.randn(tuple(reversed(p.shape)), dtype=p.dtype, generator=torch.Generator().manual_seed(step))
        return g.t() if p.dim() == 2 else g
    ref, fused, rps, fps = _run_pair(bert_optim.AdamaxSAGE, dict(maximize=True), steps=3, grad_fn=grad_fn)
    assert not rps[0].grad.is_contiguous()
    assert_same(ref, fused, rps, fps)


def test_tensors_at_different_steps_get_their_own_bias_corrections():
    """A parameter without a gradient on step 0 lags one step: two buckets, each with its own scalars."""
    def grad_fn(p, step):
        if step == 0 and p.shape == SIZES[0]:
            return None
        return torch.randn(p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(step + 10))
    ref, fused, rps, fps = _run_pair(bert_optim.AdamWSAGE, dict(formula="paper"), steps=3, grad_fn=grad_fn)
    assert float(fused.state[fps[0]]["step"]) == 2 and float(fused.state[fps[2]]["step"]) == 3
    assert_same(ref, fused, rps, fps)


def test_float32_close_to_float64_math():
    """float32 parameters compute in float32: close to the float64 for-loop result, not bit-equal."""
    ref, fused, rps, fps = _run_pair(bert_optim.AdamWSAGE, dict(formula="paper"), dtype=torch.float32, steps=3)
    for rp, fp in zip(rps, fps):
        torch.testing.assert_close(fp, rp, rtol=1e-5, atol=1e-6)


def test_adamax_propagates_nan_like_torch_maximum():
    """torch.maximum propagates NaN into exp_inf; a kernel max that dropped it would hide a bad gradient."""
    assert_nan_propagated(*_run_pair(bert_optim.AdamaxSAGE, {}, steps=1, grad_fn=nan_first_grad))


def _carve(sizes, seed, sentinel):
    """Tensors that are 16-byte-aligned views into one buffer, each followed by sentinel elements."""
    return carve(sizes, seed, sentinel, lambda pos, n: -(-(pos + n + 1) // 4) * 4)


def test_writes_stay_inside_each_tensor():
    """Sizes just under, at and over a block boundary: the tail mask neither drops nor overruns an element."""
    block, sentinel = st.BLOCK_SIZE, 777.0
    sizes = [block - 1, block, block + 1, 1]
    carved = [_carve(sizes, seed, sentinel) for seed in range(5)]  # θ, g, exp_avg, exp_avg_sq, Ī
    expected = [[v.clone() for v in views] for views, _ in carved]
    hyper = dict(HYPER, weight_decay=0.01)
    scalars = dict(lr=1e-2, decay_lr=1e-2, step_correction=0.5, ipt_correction=2.0)
    st.fused_step("adamw", carved[0][0], carved[1][0], [carved[2][0], carved[3][0]], carved[4][0], scalars, hyper)
    for i in range(len(sizes)):
        updates.single_adamw(*(e[i] for e in expected), **scalars, **hyper)
    assert_inside(carved, expected, sentinel)
    assert not torch.equal(carved[0][0][0], _carve(sizes, 0, sentinel)[0][0])  # θ did move


def test_tables_are_hand_computed_and_cached():
    st.clear_table_cache()
    block = st.BLOCK_SIZE
    ps = [torch.zeros(5), torch.zeros(0), torch.zeros(block + 1)]
    gs = [torch.zeros_like(p) for p in ps]
    cols = [ps, gs, None, None, None]
    table = st._tables(torch.device("cpu"), cols, block)
    assert table.n_blocks == 3
    assert table.blocks.tolist() == [0, 0, 2, 0, 2, block]  # (tensor row, first element) per block
    assert table.rows.view(3, 6).tolist() == [[p.data_ptr(), g.data_ptr(), 0, 0, 0, p.numel()]
                                              for p, g in zip(ps, gs)]
    assert table.aligned == all(t.data_ptr() % 16 == 0 for t in ps + gs)
    again = st._tables(torch.device("cpu"), cols, block)
    assert again is table and len(st._TABLES) == 1  # same addresses: no new table, no copy
    gs[0] = torch.zeros(5)
    st._tables(torch.device("cpu"), [ps, gs, None, None, None], block)
    assert len(st._TABLES) == 2
    misaligned = torch.zeros(9)[1:]
    assert not st._tables(torch.device("cpu"), [[misaligned], [torch.zeros(8)], None, None, None], block).aligned


def test_table_cache_is_bounded():
    st.clear_table_cache()
    keep = []  # hold the tensors so that every iteration has new addresses
    for _ in range(st._MAX_CACHED_TABLES + 3):
        keep.append((torch.zeros(3), torch.zeros(3)))
        st._tables(torch.device("cpu"), [[keep[-1][0]], [keep[-1][1]], None, None, None], st.BLOCK_SIZE)
    assert len(st._TABLES) == st._MAX_CACHED_TABLES


def test_unknown_algorithm_is_named():
    p, g, s, ipt = bucket()
    with pytest.raises(ValueError, match="unknown algorithm 'lamb'"):
        st.fused_step("lamb", p, g, s, ipt, SCALARS, HYPER)


def test_sage_without_ipt_buffers_is_rejected():
    p, g, s, _ = bucket()
    with pytest.raises(ValueError, match="sage=True needs the sensitivity EMA"):
        st.fused_step("adamax", p, g, s, None, SCALARS, HYPER)


def test_state_of_wrong_dtype_is_named():
    p, g, s, ipt = bucket()
    s[1][0] = s[1][0].float()
    with pytest.raises(ValueError, match="state 1 0 must be a contiguous torch.float64 tensor"):
        st.fused_step("adamax", p, g, s, ipt, SCALARS, HYPER)


def test_unsupported_dtype_is_named():
    p, g, s, ipt = bucket(torch.int32)
    with pytest.raises(ValueError, match="supports .* got parameters torch.int32"):
        st.fused_step("adamax", p, g, s, ipt, SCALARS, HYPER)


def test_algorithm_without_kernel_is_named():
    """The functional entry hands the kernel an algorithm by name: one without a kernel is named, not guessed."""
    p, g, s, ipt = bucket()
    fake = functional.Algorithm("lamb", updates.single_adamax, updates.multi_adamax)
    with pytest.raises(ValueError, match="unknown algorithm 'lamb'"):
        functional._update(fake, p, g, s, ipt, [torch.tensor(0.0)], lambda step: SCALARS, HYPER,
                           foreach=None, fused=True, grad_scale=None, found_inf=None, maximize=False,
                           fused_backend=INTERPRETED)


def test_interpreted_copy_leaves_the_real_module_compiled():
    """The private interpreted copy must not leak TRITON_INTERPRET into module.sage.triton_kernel (CUDA tests)."""
    assert os.environ.get("TRITON_INTERPRET") == _ENV_BEFORE
    assert type(st._sage_kernel).__name__ == "InterpretedFunction"
    if _ENV_BEFORE != "1":
        from module.sage import triton_kernel
        assert type(triton_kernel._sage_kernel).__name__ == "JITFunction"


class _FakeH100Driver:
    """Enough of a Triton driver for JITFunction.warmup to bind arguments and compile for sm_90 without a GPU."""

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget
        return GPUTarget("cuda", 90, 32)


def test_compiled_kernel_builds_for_h100_with_vector_loads_and_no_recompiles():
    """The real launch path (binder, annotations, constexprs, options) up to the launch, on CPU.

    The interpreter accepts things the compiler rejects (and ignores alignment hints), so compile the CUDA
    kernel for an H100 with Triton's bundled ptxas: full blocks must use 128-bit loads, and a new learning
    rate every step must reuse the compiled kernel (scalars are not specialised).
    """
    compiled = _load_copy(interpret=False)
    if type(compiled._sage_kernel).__name__ != "JITFunction":
        pytest.skip("TRITON_INTERPRET is forced on in this environment")
    ps = [torch.zeros(5), torch.zeros(3000)]
    cols = [ps] + [[torch.zeros_like(p) for p in ps] for _ in range(4)]
    table = compiled._tables(torch.device("cpu"), cols, compiled.BLOCK_SIZE)
    hyper = dict(HYPER, weight_decay=0.01, formula="reference")
    driver = triton.runtime.driver
    previous = getattr(driver, "_active", None)  # None on a GPU-less box: resetting would look for a driver
    driver.set_active(_FakeH100Driver())
    try:
        kernels = []
        for lr in (1e-3, 0.0, 0.5, 2e-5):
            scalars = dict(lr=lr, decay_lr=1e-3, step_correction=0.3, ipt_correction=4.0)
            args, kwargs = compiled._kernel_args("adamw", cols, scalars, hyper, table)
            kernels.append(compiled._sage_kernel.warmup(*args, grid=(table.n_blocks,), **kwargs))
        assert all(k is kernels[0] for k in kernels)  # one compiled kernel, reused
        assert table.aligned and "ld.global.v4" in kernels[0].asm["ptx"]
        sgd = dict(HYPER, formula="ablation2", momentum=0.9, dampening=0.0, nesterov=True)
        sgd_cols = [[p.double() for p in col] for col in cols[:3]] + [None, [p.double() for p in ps]]
        sgd_table = compiled._tables(torch.device("cpu"), sgd_cols, compiled.BLOCK_SIZE)
        args, kwargs = compiled._kernel_args("sgd", sgd_cols, dict(SCALARS, first_step=True), sgd, sgd_table)
        assert "div.rn.f64" in compiled._sage_kernel.warmup(*args, grid=(1,), **kwargs).asm["ptx"]
    finally:
        driver.set_active(previous)


class _FakeDriver(_FakeH100Driver):
    """A driver that says the current GPU has compute capability ``arch`` (70: V100, 75: T4)."""

    def __init__(self, arch: int):
        self.arch = arch

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget
        return GPUTarget("cuda", self.arch, 32)


@pytest.mark.parametrize("arch", [70, 75])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_compiled_kernel_builds_for_volta_and_turing_without_spills(arch, dtype, tmp_path):
    """``--optim_impl auto`` gives V100/T4 the Triton kernel: it must compile for sm_70/sm_75 (float16
    parameters with float32 state included), with vector accesses and no register spills (Triton's bundled
    ptxas, asked for its resource usage)."""
    compiled = _load_copy(interpret=False)
    if type(compiled._sage_kernel).__name__ != "JITFunction":
        pytest.skip("TRITON_INTERPRET is forced on in this environment")
    ps = [torch.zeros(5, dtype=dtype), torch.zeros(3000, dtype=dtype)]
    cols = [ps, [torch.zeros_like(p) for p in ps]] + [[torch.zeros(p.shape) if dtype == torch.float16 else
                                                       torch.zeros_like(p) for p in ps] for _ in range(3)]
    table = compiled._tables(torch.device("cpu"), cols, compiled.BLOCK_SIZE)
    scalars = dict(lr=1e-3, decay_lr=1e-3, step_correction=0.3, ipt_correction=4.0)
    args, kwargs = compiled._kernel_args("adamw", cols, scalars, dict(HYPER, weight_decay=0.01), table)
    driver = triton.runtime.driver
    previous = getattr(driver, "_active", None)
    driver.set_active(_FakeDriver(arch))
    try:
        kernel = compiled._sage_kernel.warmup(*args, grid=(table.n_blocks,), **kwargs)
    finally:
        driver.set_active(previous)
    ptx = kernel.asm["ptx"]
    assert f".target sm_{arch}" in ptx and "ld.global.v4" in ptx
    from triton.backends.nvidia.compiler import get_ptxas
    (tmp_path / "k.ptx").write_text(ptx)
    usage = subprocess.run([get_ptxas(arch).path, f"-arch=sm_{arch}", "-v", str(tmp_path / "k.ptx"), "-o",
                            str(tmp_path / "k.cubin")], capture_output=True, text=True, timeout=300)
    assert usage.returncode == 0, usage.stderr
    spills = re.findall(r"(\d+) bytes spill (?:stores|loads)", usage.stderr + usage.stdout)
    assert spills and all(n == "0" for n in spills), usage.stderr


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (compiled Triton kernel)")
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("cls,kwargs", CASES[::2], ids=case_id)
def test_cuda_kernel_matches_single_tensor_math(cls, kwargs, dtype, tol):
    """The compiled kernel through the real dispatch (fused=True on CUDA goes to module.sage.triton_kernel)."""
    from module.sage import dispatch
    assert dispatch.triton_available()
    gen = torch.Generator().manual_seed(0)
    cpu = [torch.randn(s, generator=gen, dtype=dtype) for s in SIZES]
    ref_params = [p.clone().cuda() for p in cpu]
    fused_params = [p.clone().cuda() for p in cpu]
    ref = cls(groups(ref_params), foreach=False, **kwargs)
    fused = cls(groups(fused_params), fused=True, **kwargs)
    for _ in range(4):
        for rp, fp in zip(ref_params, fused_params):
            g = torch.randn(rp.shape, generator=gen, dtype=dtype).cuda()
            rp.grad, fp.grad = g.clone(), g.clone()
        ref.step()
        fused.step()
    for rp, fp in zip(ref_params, fused_params):
        torch.testing.assert_close(fp, rp, rtol=tol, atol=tol)
        for name, value in ref.state[rp].items():
            if name != "step":
                torch.testing.assert_close(fused.state[fp][name], value, rtol=tol, atol=tol)


# ----------------------------------------------------------------------------------------------------------
# Self-check on first use: a kernel that fails to compile or disagrees with foreach is not used
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture
def fresh_checks():
    dispatch.reset_self_checks()
    yield
    dispatch.reset_self_checks()


def test_healthy_kernel_is_checked_once_and_used(fresh_checks):
    calls = []
    with mock.patch.object(st, "fused_step", counting(st.fused_step, calls)), warnings.catch_warnings():
        warnings.simplefilter("error")  # no self-check warning
        ref, fused, rps, fps = _run_pair(bert_optim.AdamWSAGE, dict(formula="reference"), steps=3)
    assert_same(ref, fused, rps, fps)
    # Two kernel variants (SAGE group with decay, plain group without): one probe each, then 3 steps each.
    assert len(dispatch._VERIFIED) == 2 and all(dispatch._VERIFIED.values())
    assert len(calls) == 2 + 2 * 3


@pytest.mark.parametrize("fault", ["compile", "mismatch"])
def test_faulty_kernel_warns_once_and_falls_back_to_foreach(fault, fresh_checks):
    """Inject a compile failure or a wrong result: one warning, and every step equals the for-loop math."""
    real = st.fused_step

    def faulty(algorithm, params, grads, states, ipt_avgs, scalars, hyper):
        if fault == "compile":
            raise RuntimeError("PTXAS error: Internal Triton PTX codegen error\nsecond line")
        real(algorithm, params, grads, states, ipt_avgs, scalars, hyper)
        torch._foreach_add_(params, 1e-3)  # a kernel that is subtly wrong

    with mock.patch.object(st, "fused_step", faulty), pytest.warns(RuntimeWarning) as record:
        ref, fused, rps, fps = _run_pair(bert_optim.AdamaxSAGE, dict(formula="paper"), steps=3)
    messages = [str(w.message) for w in record if "self-check" in str(w.message)]
    assert len(messages) == 1, messages  # two variants failed, one warning for (device, algorithm)
    expected = "PTXAS error" if fault == "compile" else "differs from foreach"
    assert expected in messages[0] and "adamax on cpu" in messages[0] and "foreach" in messages[0]
    assert dispatch._VERIFIED and not any(dispatch._VERIFIED.values())
    assert_same(ref, fused, rps, fps)  # foreach equals the for-loop reference to 1e-12


def test_probe_tolerance_catches_a_small_error_in_float32(fresh_checks):
    """A 1e-3 relative error in float32 state is a mismatch, the kernel's own rounding is not."""
    p = torch.zeros(3)
    algo = functional.ALGORITHMS["adamw"]
    hyper = dict(HYPER, formula="reference", weight_decay=0.01)
    scalars = dict(lr=1e-3, decay_lr=1e-3, step_correction=0.5, ipt_correction=2.0)
    assert dispatch._self_check(st, algo, p.device, torch.float32, torch.float32, scalars, hyper) is None

    class Skewed:
        @staticmethod
        def fused_step(algorithm, params, grads, states, ipt_avgs, scalars, hyper):
            st.fused_step(algorithm, params, grads, states, ipt_avgs, scalars, hyper)
            torch._foreach_mul_(states[0], 1.001)
    problem = dispatch._self_check(Skewed, algo, p.device, torch.float32, torch.float32, scalars, hyper)
    assert problem is not None and "column 2" in problem


@pytest.mark.parametrize("maximize", [False, True])
def test_kernel_unscales_gradients_itself(maximize):
    """AMP protocol through the kernel: scaled grads + grad_scale equal unscaled grads, with no unscale pass
    (the kernel multiplies by 1/scale, or −1/scale with maximize, as it loads each gradient)."""
    launches = []

    result = run_scaled_pair(maximize, SIZES, contextlib.nullcontext,
                             fused_backend=Counting(INTERPRETED, launches))
    assert launches
    assert_same(*result)


# ----------------------------------------------------------------------------------------------------------
# Device placement: a launch runs on its tensors' device; one bucket, one device
# ----------------------------------------------------------------------------------------------------------
def test_launch_and_table_build_run_inside_the_guard_of_the_tensors_device():
    """Triton launches on the current device: the table copy and the launch sit inside a guard that makes the
    tensors' device current (and so its current stream), whatever device was current before."""
    events = []
    real_guard, real_tables, real_kernel = st._device_guard, st._tables, st._sage_kernel

    @contextlib.contextmanager
    def guard(device):
        events.append(("enter", device))
        with real_guard(device):
            yield
        events.append(("exit", device))

    def tables(device, columns, block):
        events.append(("tables", device))
        return real_tables(device, columns, block)

    class Kernel:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                events.append(("launch", grid))
                return real_kernel[grid](*args, **kwargs)
            return launch

    p, g, s, ipt = bucket()
    g[0].fill_(1.0)
    with mock.patch.object(st, "_device_guard", guard), mock.patch.object(st, "_tables", tables), \
            mock.patch.object(st, "_sage_kernel", Kernel()):
        st.fused_step("adamax", p, g, s, ipt, SCALARS, HYPER)
    cpu = torch.device("cpu")
    assert events == [("enter", cpu), ("tables", cpu), ("launch", (1,)), ("exit", cpu)]
    torch.testing.assert_close(s[0][0], torch.full((4,), 0.1, dtype=torch.float64))  # it ran: m = (1 − β1)·g


def test_guard_makes_the_tensors_cuda_device_current(monkeypatch):
    """For tensors on cuda:1 the guard is torch.cuda.device(cuda:1): current device, and with it the current
    stream, of the tensors (``--device cuda:1`` never calls set_device); CPU tensors need none."""
    entered = []

    class Device:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            entered.append(self.device)

        def __exit__(self, *exc):
            entered.append("exit")

    monkeypatch.setattr(torch.cuda, "device", Device)
    with st._device_guard(torch.device("cuda", 1)):
        assert entered == [torch.device("cuda", 1)]
    with st._device_guard(torch.device("cpu")):
        pass
    assert entered == [torch.device("cuda", 1), "exit"]


def test_bucket_on_two_devices_is_refused_in_one_line():
    p, g, s, ipt = bucket()
    meta = lambda: torch.zeros(4, dtype=torch.float64, device="meta")  # noqa: E731
    for col in (p, g, s[0], s[1], ipt):
        col.append(meta())
    with pytest.raises(ValueError, match=r"^fused SAGE step: one launch updates tensors on one device; "
                                         r"parameter 1 is on meta, parameter 0 on cpu$"):
        st.fused_step("adamax", p, g, s, ipt, SCALARS, HYPER)
    p, g, s, ipt = bucket()
    g[0] = meta()
    with pytest.raises(ValueError, match=r"^fused SAGE step: one launch updates tensors on one device; "
                                         r"gradient 0 is on meta, parameter 0 on cpu$"):
        st.fused_step("adamax", p, g, s, ipt, SCALARS, HYPER)


# ----------------------------------------------------------------------------------------------------------
# Half-precision parameters: float32 state, float32 math, θ rounded once
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_parameters_keep_float32_state_and_follow_float64(dtype, fresh_checks):
    """With float16 state (1−β2)·g² underflows for gradients ~1e-3 and steps grow ~6×; the kernel keeps state
    in float32 and its steps follow the float64 math to θ's rounding."""
    calls = []
    result = run_half_pair(dtype, dict(fused=True), fused_backend=Counting(INTERPRETED, calls))
    assert calls and dispatch._VERIFIED and all(dispatch._VERIFIED.values())  # the kernel ran, checked
    assert_half_follows_float64(*result)


# ----------------------------------------------------------------------------------------------------------
# The self-check probe takes every path a step can take
# ----------------------------------------------------------------------------------------------------------
ADAMW = functional.ALGORITHMS["adamw"]
ADAMW_HYPER = dict(HYPER, formula="reference", weight_decay=0.01)
ADAMW_SCALARS = dict(lr=1e-3, decay_lr=1e-3, step_correction=0.5, ipt_correction=2.0)


def test_probe_takes_every_path_in_one_launch():
    """Many rows; full blocks and tails; full blocks of aligned and of misaligned rows; NaN, +inf and -inf
    gradients; a gradient factor other than ±1 (AMP's unscale in the kernel)."""
    seen = []

    def recording(algorithm, params, grads, states, ipt_avgs, scalars, hyper, grad_factor=None):
        table = st._tables(params[0].device, [params, grads, *states, ipt_avgs], st.BLOCK_SIZE)
        seen.append(([p.numel() for p in params], torch.cat(grads).clone(), scalars, table.row_aligned.tolist()))
        st.fused_step(algorithm, params, grads, states, ipt_avgs, scalars, hyper, grad_factor)

    problem = dispatch._self_check(SimpleNamespace(fused_step=recording), ADAMW, torch.device("cpu"),
                                     torch.float32, torch.float32, ADAMW_SCALARS, ADAMW_HYPER)
    assert problem is None and len(seen) == 1
    numels, grads, scalars, aligned = seen[0]
    block = st.BLOCK_SIZE
    assert len(numels) >= 24
    assert any(n >= block and a for n, a in zip(numels, aligned))
    assert any(n >= block and not a for n, a in zip(numels, aligned))
    assert any(n % block for n in numels if n > block) and any(0 < n < block for n in numels)
    assert grads.isnan().any() and (grads == float("inf")).any() and (grads == float("-inf")).any()
    assert abs(scalars["grad_factor"]) not in (0.0, 1.0)


def _misaligned_rows_wrong(algorithm, params, grads, states, ipt_avgs, scalars, hyper, grad_factor=None):
    st.fused_step(algorithm, params, grads, states, ipt_avgs, scalars, hyper)
    torch._foreach_add_([p for p in params if p.data_ptr() % 16], 1e-3)


def _grad_factor_ignored(algorithm, params, grads, states, ipt_avgs, scalars, hyper, grad_factor=None):
    st.fused_step(algorithm, params, grads, states, ipt_avgs, dict(scalars, grad_factor=1.0), hyper)


def _nan_dropped(algorithm, params, grads, states, ipt_avgs, scalars, hyper, grad_factor=None):
    st.fused_step(algorithm, params, grads, states, ipt_avgs, scalars, hyper)
    for t in (*params, *states[0], *states[1], *ipt_avgs):
        t[t.isnan()] = 0.0


def _first_rows_only(algorithm, params, grads, states, ipt_avgs, scalars, hyper, grad_factor=None):
    first = lambda col: col[:8]  # noqa: E731 - a table or grid that loses rows of a big bucket
    st.fused_step(algorithm, first(params), first(grads), [first(c) for c in states], first(ipt_avgs), scalars,
                  hyper)


@pytest.mark.parametrize("fault", [_misaligned_rows_wrong, _grad_factor_ignored, _nan_dropped, _first_rows_only],
                         ids=lambda f: f.__name__.strip("_"))
def test_probe_fails_a_kernel_wrong_on_any_one_path(fault):
    """Each of these kernels is right on a small aligned finite probe with a factor of 1, and wrong in a step."""
    problem = dispatch._self_check(SimpleNamespace(fused_step=fault), ADAMW, torch.device("cpu"), torch.float32,
                                     torch.float32, ADAMW_SCALARS, ADAMW_HYPER)
    assert problem is not None and problem.startswith("column ")


def test_variants_of_every_dtype_pass_their_probe_under_the_interpreter():
    """The public entry for checks on new hardware: (variant, verdict) for each, here through the interpreter."""
    V = dispatch.KernelVariant
    variants = [V("adamw", dtype, formula="paper", decay=True)
                for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64)]
    variants += [V("sgd", torch.float16, momentum=True, nesterov=True, first_step=True),
                 V("adamax", torch.bfloat16, sage=False), V("adam", torch.float32, formula="ablation2", decay=True)]
    verdicts = dispatch.check_variants("cpu", variants, backend=INTERPRETED)
    assert [v for v, _ in verdicts] == variants
    assert all(problem is None for _, problem in verdicts), verdicts


# ----------------------------------------------------------------------------------------------------------
# Table misses: no host read, no blocking copy
# ----------------------------------------------------------------------------------------------------------
def test_table_miss_reads_nothing_on_the_host_and_copies_from_pinned_memory_without_blocking():
    """A copy from pageable memory waits for the whole stream (the backward pass included): a miss stages the
    table in pinned memory and copies it with non_blocking=True, reading no tensor on the host."""
    st.clear_table_cache()
    ps = [torch.zeros(5), torch.zeros(st.BLOCK_SIZE + 1)]
    cols = [ps, [torch.zeros_like(p) for p in ps], None, None, None]
    pinned, copies = [], []

    def pin_memory(t):
        pinned.append(t.clone())
        return pinned[-1]

    def to(t, *args, **kwargs):
        copies.append((any(t is q for q in pinned), args, kwargs))
        return t

    cuda1 = torch.device("cuda", 1)
    with HostReads() as reads, mock.patch.object(torch.Tensor, "pin_memory", pin_memory), \
            mock.patch.object(torch.Tensor, "to", to):
        table = st._tables(cuda1, cols, st.BLOCK_SIZE)
    assert reads.devices == []
    assert len(pinned) == 1 and copies == [(True, (cuda1,), {"non_blocking": True})]
    assert table.n_blocks == 3 and table.blocks.tolist() == [0, 0, 1, 0, 1, st.BLOCK_SIZE]
    assert st.table_cache_stats() == {"hits": 0, "misses": 1}
    assert st._tables(cuda1, cols, st.BLOCK_SIZE) is table
    assert st.table_cache_stats() == {"hits": 1, "misses": 1}


def test_new_gradient_addresses_are_counted_as_misses():
    """zero_grad(set_to_none=True) reallocates gradients; each new address set is a miss (the bench counts them)."""
    st.clear_table_cache()
    ps = [torch.zeros(5)]
    keep = []
    for _ in range(3):
        keep.append([torch.zeros(5)])
        st._tables(torch.device("cpu"), [ps, keep[-1], None, None, None], st.BLOCK_SIZE)
    st._tables(torch.device("cpu"), [ps, keep[0], None, None, None], st.BLOCK_SIZE)
    assert st.table_cache_stats() == {"hits": 1, "misses": 3}
    st.clear_table_cache()
    assert st.table_cache_stats() == {"hits": 0, "misses": 0}
