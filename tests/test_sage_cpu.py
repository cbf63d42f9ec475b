"""The CPU C kernel of the fused SAGE step against module.sage_math's single-tensor math.

Through the real dispatch (``fused=True`` on CPU float32/float64 tensors goes to module.sage_cpu): every
algorithm and formula in float64 to 1e-12, float32 close to it, tensors split between threads at arbitrary
points, writes that stay inside each tensor, NaN propagation, AMP's gradient factor, the one-line errors, the
on-disk build cache, and the fallback to torch.compile with one warning when the library cannot be built.
"""
from __future__ import annotations

import warnings
from types import SimpleNamespace
from unittest import mock

import pytest
import torch

from module import bert_optim, sage_cpu, sage_fused, sage_math

HYPER = dict(beta1=0.9, beta2=0.999, beta3=0.75, eps=1e-6, weight_decay=0.0, formula="paper", sage=True)
SCALARS = dict(lr=1e-3, ipt_correction=1.0)
#: odd sizes, a zero-size tensor, and enough elements in all (> MIN_PARALLEL) for two threads to split them
SIZES = [(3, 5), (0,), (7,), (2049,), (33, 65), (40001,)]


@pytest.fixture(autouse=True)
def fresh_checks():
    sage_fused.reset_self_checks()
    yield
    sage_fused.reset_self_checks()


def _params(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=dtype) for s in SIZES]


def _counting(fn, calls):
    def wrapped(*args, **kwargs):
        calls.append(args[0])
        return fn(*args, **kwargs)
    return wrapped


def _run_pair(cls, kwargs, dtype=torch.float64, steps=4, grad_fn=None, threads=2):
    """Same model, same grads: the for-loop path vs fused=True (the C kernel); also returns the kernel calls."""
    ref_params, fused_params = _params(dtype), _params(dtype)

    def groups(ps):  # SAGE on (with decay) and off (without), as sage_param_groups builds them
        return [{"params": ps[:3], "sage": True, "weight_decay": 0.01},
                {"params": ps[3:], "sage": False, "weight_decay": 0.0}]
    ref = cls(groups(ref_params), foreach=False, **kwargs)
    fused = cls(groups(fused_params), fused=True, **kwargs)
    gen = torch.Generator().manual_seed(1)
    calls, saved_threads = [], torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with mock.patch.object(sage_cpu, "fused_step", _counting(sage_cpu.fused_step, calls)):
            for step in range(steps):
                for opt in (ref, fused):  # a schedule: lr changes every step, so no scalar may be cached
                    for group in opt.param_groups:
                        group["lr"] = kwargs.get("lr", 1e-2) * (1.0 - 0.2 * step)
                for rp, fp in zip(ref_params, fused_params):
                    g = torch.randn(rp.shape, generator=gen, dtype=dtype) if grad_fn is None else grad_fn(rp, step)
                    rp.grad, fp.grad = (None, None) if g is None else (g.clone(), g.clone())
                ref.step()
                fused.step()
    finally:
        torch.set_num_threads(saved_threads)
    return ref, fused, ref_params, fused_params, calls


def _kernel_matches(ref, fused, ref_params, fused_params, calls):
    assert calls, "the C kernel was not used"
    _assert_same(ref, fused, ref_params, fused_params)


def _assert_same(ref, fused, ref_params, fused_params, tol=1e-12):
    for i, (rp, fp) in enumerate(zip(ref_params, fused_params)):
        torch.testing.assert_close(fp, rp, rtol=tol, atol=tol, msg=lambda m: f"param {i}: {m}")
        for name, value in ref.state[rp].items():
            if name != "step":
                torch.testing.assert_close(fused.state[fp][name], value, rtol=tol, atol=tol,
                                           msg=lambda m: f"param {i} state {name}: {m}")
    assert all(rp.abs().sum() > 0 for rp in ref_params if rp.numel())  # the comparison saw real values


CASES = [
    (bert_optim.AdamaxSAGE, dict(formula="reference")),
    (bert_optim.AdamaxSAGE, dict(formula="paper")),
    (bert_optim.AdamWSAGE, dict(formula="reference")),
    (bert_optim.AdamWSAGE, dict(formula="reference", correct_bias=False, decay_lr="scheduled")),
    (bert_optim.AdamSAGE, dict(formula="paper")),
    (bert_optim.AdamSAGE, dict(formula="ablation2")),
    (bert_optim.SGDSAGE, dict(formula="paper")),
    (bert_optim.SGDSAGE, dict(formula="paper", momentum=0.9, dampening=0.1)),
    (bert_optim.SGDSAGE, dict(formula="ablation4", momentum=0.9, nesterov=True)),
]


@pytest.mark.parametrize("cls,kwargs", CASES, ids=lambda x: x.__name__ if isinstance(x, type) else
                         "-".join(f"{k}={v}" for k, v in x.items()))
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
    def grad_fn(p, step):
        g = torch.ones_like(p)
        if p.numel():
            g.view(-1)[0] = float("nan")
        return g
    ref, fused, rps, fps, calls = _run_pair(bert_optim.AdamaxSAGE, {}, steps=1, grad_fn=grad_fn)
    assert calls
    for rp, fp in zip(rps, fps):
        torch.testing.assert_close(fused.state[fp]["exp_inf"], ref.state[rp]["exp_inf"], equal_nan=True)
        assert fused.state[fp]["exp_inf"].isnan().sum() == min(1, rp.numel())


def _carve(sizes, seed, sentinel):
    """Views into one buffer, each followed by sentinel elements (odd sizes, odd offsets)."""
    starts, pos = [], 1
    for n in sizes:
        starts.append(pos)
        pos += n + 3
    buffer = torch.full((pos,), sentinel, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    views = [buffer[a:a + n] for a, n in zip(starts, sizes)]
    for v in views:
        v.copy_(torch.rand(v.shape, generator=gen, dtype=torch.float64) + 0.5)
    return views, buffer


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
        sage_cpu.fused_step("adamw", carved[0][0], carved[1][0], [carved[2][0], carved[3][0]], carved[4][0],
                            scalars, hyper)
    finally:
        torch.set_num_threads(saved)
    for i in range(len(sizes)):
        sage_math.single_adamw(*(e[i] for e in expected), **scalars, **hyper)
    for (views, buffer), exp in zip(carved, expected):
        for v, e in zip(views, exp):
            torch.testing.assert_close(v, e, rtol=1e-12, atol=1e-12)
        outside = torch.ones_like(buffer, dtype=torch.bool)
        for v in views:
            outside[v.storage_offset():v.storage_offset() + v.numel()] = False
        assert (buffer[outside] == sentinel).all()
    assert not torch.equal(carved[0][0][-1], _carve(sizes, 0, sentinel)[0][-1])  # θ did move


@pytest.mark.parametrize("maximize", [False, True])
def test_kernel_unscales_gradients_itself(maximize):
    """AMP protocol: scaled grads + grad_scale equal unscaled grads, with no unscale pass (the kernel
    multiplies by 1/scale, or −1/scale with maximize, as it loads each gradient)."""
    scale = 2.0 ** 12
    ref_params, fused_params = _params(torch.float64), _params(torch.float64)
    groups = lambda ps: [{"params": ps[:3], "sage": True, "weight_decay": 0.01},  # noqa: E731
                         {"params": ps[3:], "sage": False}]
    ref = bert_optim.AdamWSAGE(groups(ref_params), foreach=False, maximize=maximize)
    fused = bert_optim.AdamWSAGE(groups(fused_params), fused=True, maximize=maximize)
    gen = torch.Generator().manual_seed(3)
    calls = []
    with mock.patch.object(sage_cpu, "fused_step", _counting(sage_cpu.fused_step, calls)):
        for _ in range(3):
            for rp, fp in zip(ref_params, fused_params):
                g = torch.randn(rp.shape, generator=gen, dtype=torch.float64)
                rp.grad, fp.grad = g.clone(), g * scale
            fused.grad_scale, fused.found_inf = torch.tensor(scale), torch.tensor(0.0)
            ref.step()
            fused.step()
            assert torch.equal(fused_params[0].grad, ref_params[0].grad * scale)  # gradients left as they were
    _kernel_matches(ref, fused, ref_params, fused_params, calls)


def test_one_call_per_bucket_and_one_self_check_per_variant():
    """Two groups (SAGE with decay, plain without) = two variants: one probe each, then one call per step."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no self-check warning
        *_, calls = _run_pair(bert_optim.AdamWSAGE, dict(formula="reference"), steps=3)
    assert len(sage_fused._VERIFIED) == 2 and all(sage_fused._VERIFIED.values())
    assert len(calls) == 2 + 2 * 3


# ----------------------------------------------------------------------------------------------------------
# What the kernel refuses
# ----------------------------------------------------------------------------------------------------------
def _bucket(dtype=torch.float64):
    p = [torch.zeros(4, dtype=dtype)]
    return p, [torch.zeros_like(p[0])], [[torch.zeros_like(p[0])], [torch.zeros_like(p[0])]], [torch.zeros_like(p[0])]


def test_unknown_algorithm_is_named():
    p, g, s, ipt = _bucket()
    with pytest.raises(ValueError, match="unknown algorithm 'lamb'"):
        sage_cpu.fused_step("lamb", p, g, s, ipt, SCALARS, HYPER)


def test_sage_without_ipt_buffers_is_rejected():
    p, g, s, _ = _bucket()
    with pytest.raises(ValueError, match="sage=True needs the sensitivity EMA"):
        sage_cpu.fused_step("adamax", p, g, s, None, SCALARS, HYPER)


def test_state_of_wrong_dtype_or_layout_is_named():
    p, g, s, ipt = _bucket()
    s[1][0] = s[1][0].float()
    with pytest.raises(ValueError, match="state 1 0 must be a contiguous torch.float64 tensor"):
        sage_cpu.fused_step("adamax", p, g, s, ipt, SCALARS, HYPER)
    p, g, s, ipt = _bucket()
    ipt[0] = torch.zeros(8, dtype=torch.float64)[::2]
    with pytest.raises(ValueError, match=r"exp_avg_ipt 0 must be .*\(contiguous=False\)"):
        sage_cpu.fused_step("adamax", p, g, s, ipt, SCALARS, HYPER)


def test_half_precision_goes_to_the_compiled_path():
    """bfloat16/float16 (and mixed gradient dtypes) are not the C kernel's: it refuses them, dispatch skips it."""
    p, g, s, ipt = _bucket(torch.bfloat16)
    with pytest.raises(ValueError, match="supports torch.float32, torch.float64; got parameters torch.bfloat16"):
        sage_cpu.fused_step("adamax", p, g, s, ipt, SCALARS, HYPER)
    assert not sage_cpu.supports(p[0], g[0])
    assert not sage_cpu.supports(torch.zeros(2), torch.zeros(2, dtype=torch.float64))
    assert sage_fused._backend(p[0], g[0]) == (None, "compiled")
    assert sage_fused._backend(torch.zeros(2), torch.zeros(2)) == (sage_cpu, "compiled")


# ----------------------------------------------------------------------------------------------------------
# Build cache and build failures
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAGE_CPU_CACHE_DIR", str(tmp_path / "cache"))
    sage_cpu._library.cache_clear()
    yield tmp_path / "cache"
    sage_cpu._library.cache_clear()


def _one_adamax_step():
    p, g, s, ipt = _bucket()
    g[0].fill_(1.0)
    sage_cpu.fused_step("adamax", p, g, s, ipt, SCALARS, dict(HYPER, formula="reference"))
    return s[0][0]  # exp_avg = (1 − β1)·g


def test_each_variant_is_built_once_and_reused_from_disk(private_cache, monkeypatch):
    torch.testing.assert_close(_one_adamax_step(), torch.full((4,), 0.1, dtype=torch.float64))
    built = sorted(private_cache.glob("*.so"))
    assert len(built) == 1 and not [f for f in private_cache.iterdir() if f.suffix != ".so"]
    sage_cpu._library.cache_clear()

    def no_rebuild(*args, **kwargs):
        raise AssertionError(f"rebuilt: {args}")
    monkeypatch.setattr(sage_cpu, "subprocess", SimpleNamespace(run=no_rebuild))  # must come from disk
    torch.testing.assert_close(_one_adamax_step(), torch.full((4,), 0.1, dtype=torch.float64))
    assert sorted(private_cache.glob("*.so")) == built


def test_failed_build_names_the_compiler_and_leaves_nothing(private_cache, monkeypatch):
    monkeypatch.setenv("CC", "/bin/false")
    with pytest.raises(RuntimeError, match="/bin/false failed on sage_cpu.c"):
        _one_adamax_step()
    assert not private_cache.exists() or not list(private_cache.iterdir())


@pytest.mark.compile
def test_unbuildable_kernel_warns_once_and_falls_back_to_torch_compile(private_cache, monkeypatch):
    """No working compiler for the C kernel: one warning naming the failure, and the torch.compile path runs
    (equal to the for-loop math)."""
    monkeypatch.setenv("CC", "/bin/false")
    compiled = []
    real = sage_fused._compiled_bucket
    with mock.patch.object(sage_fused, "_compiled_bucket", lambda *a: (compiled.append(1), real(*a))), \
            pytest.warns(RuntimeWarning) as record:
        ref, fused, rps, fps, _ = _run_pair(bert_optim.AdamaxSAGE, dict(formula="paper"), steps=2)
    messages = [str(w.message) for w in record if "self-check" in str(w.message)]
    assert len(messages) == 1, messages  # two variants failed, one warning for (kernel, device, algorithm)
    assert "C kernel for adamax on cpu" in messages[0] and "/bin/false failed" in messages[0]
    assert "torch.compile implementation" in messages[0]
    assert compiled and sage_fused._VERIFIED and not any(sage_fused._VERIFIED.values())
    _assert_same(ref, fused, rps, fps)
