"""The CPU C kernel of the fused SAGE step against module.sage.updates' single-tensor math.

Through the real dispatch (``fused=True`` on CPU float32/float64 tensors goes to module.sage.cpu_kernel): every
algorithm and formula in float64 to 1e-12, float32 close to it, tensors split between threads at arbitrary
points, writes that stay inside each tensor, NaN propagation, AMP's gradient factor, the one-line errors, the
on-disk build cache, and the fallback to torch.compile with one warning when the library cannot be built.
"""
from __future__ import annotations

import contextlib
import warnings

import pytest
import torch

from module import bert_optim
from module.sage import cpu_kernel, dispatch, updates
from module.sage.dispatch import CKernelBackend, CompiledBackend
from sage_kernel_cases import (CASES, HYPER, SCALARS, Counting, assert_inside, assert_nan_propagated, assert_same,
                               bucket, carve, case_id, nan_first_grad, run_pair, run_scaled_pair)

#: odd sizes, a zero-size tensor, and enough elements in all (> MIN_PARALLEL) for two threads to split them
SIZES = [(3, 5), (0,), (7,), (2049,), (33, 65), (40001,)]


@pytest.fixture(autouse=True)
def fresh_checks():
    dispatch.reset_self_checks()
    yield
    dispatch.reset_self_checks()


@contextlib.contextmanager
def _threads(threads: int = 2):
    """Fused steps on ``threads`` threads."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _run_pair(cls, kwargs, dtype=torch.float64, steps=4, grad_fn=None, threads=2, backend=None):
    """Same model, same grads: the for-loop path vs fused=True (the C kernel, or ``backend``); also returns the
    kernel calls."""
    calls = []
    pair = run_pair(cls, kwargs, SIZES, lambda: _threads(threads), dtype=dtype, steps=steps, grad_fn=grad_fn,
                    fused_backend=Counting(backend or CKernelBackend(), calls))
    return (*pair, calls)


def _kernel_matches(ref, fused, ref_params, fused_params, calls):
    assert calls, "the C kernel was not used"
    assert_same(ref, fused, ref_params, fused_params)


@pytest.mark.parametrize("cls,kwargs", CASES, ids=case_id)
def test_matches_single_tensor_math_float64(cls, kwargs):
    _kernel_matches(*_run_pair(cls, kwargs))


@pytest.mark.parametrize("formula", ["paper", "ablation1", "ablation3", "ablation5"])
def test_every_formula(formula):
    _kernel_matches(*_run_pair(bert_optim.AdamWSAGE, dict(formula=formula), steps=2))


def test_float32_close_to_float64_math():
    """float32 parameters compute in float32: close to the float64 for-loop result, not bit-equal."""
    ref, fused, rps, fps, calls = _run_pair(bert_optim.AdamWSAGE, dict(formula="reference"), dtype=torch.float32,
                                            steps=3)
    assert calls
    for rp, fp in zip(rps, fps):
        torch.testing.assert_close(fp, rp, rtol=1e-5, atol=1e-6)


def test_result_does_not_depend_on_the_thread_count():
    """Threads split the concatenated elements at different points; the update is elementwise, so 1, 2 and 3
    threads give bit-identical parameters and state."""
    runs = [_run_pair(bert_optim.AdamaxSAGE, dict(formula="reference"), dtype=torch.float32, steps=2, threads=t)
            for t in (1, 2, 3)]
    for _, fused, _, fps, calls in runs[1:]:
        assert calls
        for fp, fp1 in zip(fps, runs[0][3]):
            assert torch.equal(fp, fp1)
            for name, value in runs[0][1].state[fp1].items():
                assert torch.equal(fused.state[fp][name], value)


def test_adamax_propagates_nan_like_torch_maximum():
    """torch.maximum propagates NaN into exp_inf; a C max that dropped it would hide a bad gradient."""
    *pair, calls = _run_pair(bert_optim.AdamaxSAGE, {}, steps=1, grad_fn=nan_first_grad)
    assert calls
    assert_nan_propagated(*pair)


def _carve(sizes, seed, sentinel):
    """Views into one buffer, each followed by sentinel elements (odd sizes, odd offsets)."""
    return carve(sizes, seed, sentinel, lambda pos, n: pos + n + 3, first=1)


def test_writes_stay_inside_each_tensor():
    """Sizes around the thread split and vector width, on two threads: no element dropped, none overrun."""
    sentinel, saved = 777.0, torch.get_num_threads()
    sizes = [1, 63, 64, 65, 17001, 16999, 5]  # 34198 elements: over MIN_PARALLEL, split inside a tensor
    carved = [_carve(sizes, seed, sentinel) for seed in range(5)]  # θ, g, exp_avg, exp_avg_sq, Ī
    expected = [[v.clone() for v in views] for views, _ in carved]
    hyper = dict(HYPER, weight_decay=0.01)
    scalars = dict(lr=1e-2, decay_lr=1e-2, step_correction=0.5, ipt_correction=2.0)
    torch.set_num_threads(2)
    try:
        cpu_kernel.fused_step("adamw", carved[0][0], carved[1][0], [carved[2][0], carved[3][0]], carved[4][0],
                            scalars, hyper)
    finally:
        torch.set_num_threads(saved)
    for i in range(len(sizes)):
        updates.single_adamw(*(e[i] for e in expected), **scalars, **hyper)
    assert_inside(carved, expected, sentinel)
    assert not torch.equal(carved[0][0][-1], _carve(sizes, 0, sentinel)[0][-1])  # θ did move


@pytest.mark.parametrize("maximize", [False, True])
def test_kernel_unscales_gradients_itself(maximize):
    """AMP protocol: scaled grads + grad_scale equal unscaled grads, with no unscale pass (the kernel
    multiplies by 1/scale, or −1/scale with maximize, as it loads each gradient)."""
    calls = []
    _kernel_matches(*run_scaled_pair(maximize, SIZES, _threads, fused_backend=Counting(CKernelBackend(), calls)),
                    calls)


def test_one_call_per_bucket_and_one_self_check_per_variant():
    """Two groups (SAGE with decay, plain without) = two variants: one probe each, then one call per step."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no self-check warning
        *_, calls = _run_pair(bert_optim.AdamWSAGE, dict(formula="reference"), steps=3)
    assert len(dispatch._VERIFIED) == 2 and all(dispatch._VERIFIED.values())
    assert len(calls) == 2 + 2 * 3


# ----------------------------------------------------------------------------------------------------------
# What the kernel refuses
# ----------------------------------------------------------------------------------------------------------
def test_unknown_algorithm_is_named():
    p, g, s, ipt = bucket()
    with pytest.raises(ValueError, match="unknown algorithm 'lamb'"):
        cpu_kernel.fused_step("lamb", p, g, s, ipt, SCALARS, HYPER)


def test_sage_without_ipt_buffers_is_rejected():
    p, g, s, _ = bucket()
    with pytest.raises(ValueError, match="sage=True needs the sensitivity EMA"):
        cpu_kernel.fused_step("adamax", p, g, s, None, SCALARS, HYPER)


def test_state_of_wrong_dtype_or_layout_is_named():
    p, g, s, ipt = bucket()
    s[1][0] = s[1][0].float()
    with pytest.raises(ValueError, match="state 1 0 must be a contiguous torch.float64 tensor"):
        cpu_kernel.fused_step("adamax", p, g, s, ipt, SCALARS, HYPER)
    p, g, s, ipt = bucket()
    ipt[0] = torch.zeros(8, dtype=torch.float64)[::2]
    with pytest.raises(ValueError, match=r"exp_avg_ipt 0 must be .*\(contiguous=False\)"):
        cpu_kernel.fused_step("adamax", p, g, s, ipt, SCALARS, HYPER)


def test_half_precision_goes_to_the_compiled_path():
    """bfloat16/float16 (and mixed gradient dtypes) are not the C kernel's: it refuses them, dispatch skips it."""
    p, g, s, ipt = bucket(torch.bfloat16)
    with pytest.raises(ValueError, match="supports torch.float32, torch.float64; got parameters torch.bfloat16"):
        cpu_kernel.fused_step("adamax", p, g, s, ipt, SCALARS, HYPER)
    assert not cpu_kernel.supports(p[0], g[0])
    assert not cpu_kernel.supports(torch.zeros(2), torch.zeros(2, dtype=torch.float64))
    assert dispatch.select("fused", p[0].device, p[0].dtype).backend.name == "compiled"
    chosen = dispatch.select("fused", torch.device("cpu"), torch.float32).backend
    assert chosen.load() is cpu_kernel and chosen.fallback.name == "compiled"


# ----------------------------------------------------------------------------------------------------------
# Build cache and build failures
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAGE_CPU_CACHE_DIR", str(tmp_path / "cache"))
    cpu_kernel._library.cache_clear()
    yield tmp_path / "cache"
    cpu_kernel._library.cache_clear()


def _one_adamax_step():
    p, g, s, ipt = bucket()
    g[0].fill_(1.0)
    cpu_kernel.fused_step("adamax", p, g, s, ipt, SCALARS, dict(HYPER, formula="reference"))
    return s[0][0]  # exp_avg = (1 − β1)·g


def test_each_variant_is_built_once_and_reused_from_disk(private_cache, monkeypatch):
    torch.testing.assert_close(_one_adamax_step(), torch.full((4,), 0.1, dtype=torch.float64))
    built = sorted(private_cache.glob("*.so"))
    assert len(built) == 1 and not [f for f in private_cache.iterdir() if f.suffix != ".so"]
    first = built[0].stat()
    cpu_kernel._library.cache_clear()
    torch.testing.assert_close(_one_adamax_step(), torch.full((4,), 0.1, dtype=torch.float64))
    assert sorted(private_cache.glob("*.so")) == built
    again = built[0].stat()  # must come from disk: a rebuild would have replaced the file (a new inode)
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)


def test_failed_build_names_the_compiler_and_leaves_nothing(private_cache, monkeypatch):
    monkeypatch.setenv("CC", "/bin/false")
    with pytest.raises(RuntimeError, match="/bin/false failed on cpu_kernel.c"):
        _one_adamax_step()
    assert not private_cache.exists() or not list(private_cache.iterdir())


@pytest.mark.compile
def test_unbuildable_kernel_warns_once_and_falls_back_to_torch_compile(private_cache, monkeypatch):
    """No working compiler for the C kernel: one warning naming the failure, and the torch.compile path runs
    (equal to the for-loop math)."""
    monkeypatch.setenv("CC", "/bin/false")
    compiled = []
    with pytest.warns(RuntimeWarning) as record:
        ref, fused, rps, fps, _ = _run_pair(bert_optim.AdamaxSAGE, dict(formula="paper"), steps=2,
                                            backend=CKernelBackend(fallback=Counting(CompiledBackend(), compiled)))
    messages = [str(w.message) for w in record if "self-check" in str(w.message)]
    assert len(messages) == 1, messages  # two variants failed, one warning for (kernel, device, algorithm)
    assert "C kernel for adamax on cpu" in messages[0] and "/bin/false failed" in messages[0]
    assert "torch.compile implementation" in messages[0]
    assert compiled and dispatch._VERIFIED and not any(dispatch._VERIFIED.values())
    assert_same(ref, fused, rps, fps)
