"""The five sections of bench/gpu_check.py. Each records its steps through ``check.step``; a step raises
``SkipStep`` where the hardware cannot run it, and returns its numbers (``_failed``/``_reason`` when a
correctness condition does not hold)."""
from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import sys
import time

import torch

from bench.gpu_check_core import ROOT, Check, SkipStep
from bench.host_syncs import SyncCounter
from bench.synthetic_run import make_workspace, train_config

LR = 1e-3
#: largest error of the fused step against float64 beyond the parameter dtype's own rounding (one per step),
#: relative to the size of the float64 update over the steps: a step of the wrong size is an error of order 1
UPDATE_RTOL = {torch.float32: 1e-3, torch.bfloat16: 0.05, torch.float16: 0.05}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _failed_if(condition: bool, reason: str, values: dict) -> dict:
    if condition:
        values |= {"_failed": True, "_reason": reason}
    return values


# ------------------------------------------------------------------------------------------------ a: kernel
def _bert_shapes(check: Check) -> list[tuple[str, torch.Size]]:
    from transformers import AutoModel, BertConfig
    from bench.synthetic_run import SHAPES
    with torch.device("meta"):
        model = AutoModel.from_config(BertConfig(**SHAPES["tiny" if check.smoke else "bert-base"]))
    return [(name, p.shape) for name, p in model.named_parameters()]


def _impl(check: Check, dtype: torch.dtype) -> dict:
    """The implementation under test: fused (Triton on CUDA, the C kernel for CPU float32); the CPU rehearsal
    takes foreach for half precision (its fused path is a torch.compile build, covered by the test suite)."""
    return {"fused": True} if check.cuda or dtype == torch.float32 else {"foreach": True}


def _step_against_float64(check: Check, shapes, dtype, algorithm: str, scale: float = 1.0, offset: int = 0,
                          steps: int = 3, build=None) -> dict:
    """``steps`` optimizer steps in ``dtype`` against the same steps in float64 (foreach) from the same rounded
    start and gradients; ``scale``: gradients multiplied by a GradScaler's scale, which the step divides out;
    ``offset``: parameters are views this many elements into a buffer (misaligned for vector loads); ``build``:
    what builds the optimizer under test (default ``build_optimizer``; the tests pass a faulty one)."""
    from module.bert_optim import build_optimizer, sage_param_groups
    build = build or build_optimizer
    device = check.device
    gen = torch.Generator(device=device).manual_seed(0)
    named, reference = [], []
    for name, shape in shapes:
        start = (torch.randn(shape, device=device, generator=gen) * 0.02).to(dtype)
        if offset:
            buffer = torch.empty(start.numel() + offset, device=device, dtype=dtype)
            p = torch.nn.Parameter(buffer[offset:].view(shape))
            with torch.no_grad():
                p.copy_(start)
        else:
            p = torch.nn.Parameter(start.clone())
        named.append((name, p))
        reference.append((name, torch.nn.Parameter(start.double())))
    kw = dict(lr=LR, weight_decay=0.01)
    opt = build(algorithm, sage_param_groups(named), **kw, **_impl(check, dtype))
    ref = build_optimizer(algorithm, sage_param_groups(reference), **kw, foreach=True)
    scaler = torch.amp.GradScaler(device.type, init_scale=scale, enabled=scale != 1.0)
    starts = [p.detach().clone() for _, p in reference]
    for step in range(steps):
        for (_, p), (_, r) in zip(named, reference):
            g = (torch.randn(p.shape, device=device, generator=gen) * 1e-3).to(dtype)
            r.grad = g.double()
            p.grad = (g.float() * scale).to(dtype) if scale != 1.0 else g.clone()
        if scale != 1.0:
            scaler.scale(torch.ones((), device=device))  # the scaler's scale tensor exists from the first scale()
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        ref.step()
    worst, worst_name = 0.0, ""
    rounding = steps * torch.finfo(dtype).eps  # each step rounds the parameter to its dtype once
    for (name, p), (_, r), start in zip(named, reference, starts):
        want = r.detach()
        update = (want - start).abs().max().item()
        excess = ((p.detach().double() - want).abs() - rounding * want.abs()).clamp(min=0)
        error = excess.max().item() / max(update, 1e-30)
        if not error <= worst:  # NaN counts as the worst
            worst, worst_name = error, name
    tol = UPDATE_RTOL[dtype]
    values = {"tensors": len(named), "params_M": sum(s.numel() for _, s in shapes) / 1e6,
              "impl": "fused" if "fused" in _impl(check, dtype) else "foreach", "max_error_over_update": worst,
              "tolerance": tol, "worst_tensor": worst_name}
    return _failed_if(not worst <= tol, f"error {worst:.3g} of the update > {tol} ({worst_name})", values)


def _training_variants(check: Check):
    """The kernel variants BERT training takes (AdamW-/Adamax-SAGE and their plain groups, with and without
    decay, the default formula) in each parameter dtype; the CPU rehearsal probes float32 AdamW only."""
    from module.sage.dispatch import kernel_variants
    if check.smoke:
        return kernel_variants(dtypes=(torch.float32,), algorithms=("adamw",), formulas=("reference",))
    return kernel_variants(dtypes=(torch.float32, torch.bfloat16, torch.float16), algorithms=("adamw", "adamax"),
                           formulas=("reference",))


def _probe_variants(check: Check, variants, reserve_s: float = 0.0) -> dict:
    """Each variant's self-check probe (the hand-written kernel against float64), while the section's budget
    lasts (keeping ``reserve_s`` for the steps after): how many were probed, which failed."""
    from module.sage.dispatch import check_variants
    probed, failed, no_kernel = 0, [], 0
    for variant in variants:
        if check.remaining() < reserve_s:
            break
        ((_, problem),) = check_variants(check.device, [variant])
        probed += 1
        if (problem or "").startswith("no hand-written kernel"):
            no_kernel += 1
        elif problem is not None:
            failed.append(f"{variant.algorithm}/{str(variant.dtype)[6:]}/{variant.formula}/sage={variant.sage}"
                          f"/decay={variant.decay}: {problem}")
    values = {"variants": len(variants), "probed": probed, "no_kernel_here": no_kernel, "failed": len(failed),
              "first_failures": failed[:3]}
    return _failed_if(bool(failed), f"{len(failed)} kernel variant(s) failed their self-check probe", values)


def _other_variants(check: Check):
    from module.sage.dispatch import kernel_variants
    if check.smoke:
        raise SkipStep("the CPU rehearsal probes the float32 AdamW variants only")
    seen = set(_training_variants(check))
    return [v for v in kernel_variants() if v not in seen]


def _nan_gradients(check: Check) -> dict:
    """Under a GradScaler a NaN gradient skips the step (parameters and step counts unchanged); without one, the
    fused step puts NaN where the foreach step does and agrees elsewhere."""
    from module.bert_optim import AdamWSAGE
    device, shape = check.device, (257, 33)

    def make(**impl):
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.randn(shape, device=device) * 0.02)
        return p, AdamWSAGE([{"params": [p], "sage": True}], lr=LR, **impl)
    p, opt = make(fused=True)
    p.grad = torch.randn(shape, device=device) * 1e-3
    p.grad[3, 5] = float("nan")
    before = p.detach().clone()
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0 ** 10)
    scaler.scale(torch.ones((), device=device))
    scaler.step(opt)
    scaler.update()
    skipped = torch.equal(p.detach(), before) and scaler.get_scale() < 2.0 ** 10
    fused, opt_f = make(fused=True)
    plain, opt_p = make(foreach=True)
    grad = torch.randn(shape, device=device) * 1e-3
    grad[7, 1] = float("nan")
    fused.grad, plain.grad = grad.clone(), grad.clone()
    opt_f.step()
    opt_p.step()
    same_nans = torch.equal(fused.isnan(), plain.isnan())
    finite = ~plain.isnan()
    close = torch.allclose(fused[finite], plain[finite], rtol=1e-5, atol=1e-7)
    values = {"skipped_under_grad_scaler": skipped, "nan_positions_match_foreach": same_nans,
              "finite_values_match_foreach": close, "nan_count": int(fused.isnan().sum())}
    return _failed_if(not (skipped and same_nans and close), "NaN gradients handled differently from foreach",
                      values)


def _cuda_tests(check: Check) -> dict:
    check.needs_cuda("the CUDA-only tests skip without a GPU")
    timeout = max(30, min(300, check.remaining() - 5))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider",
                           f"--timeout={int(timeout)}"], cwd=ROOT, capture_output=True, text=True, timeout=timeout + 30)
    summary = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
    return _failed_if(proc.returncode not in (0, 5), f"pytest -m cuda: {summary}",
                      {"summary": summary, "exit": proc.returncode})


def section_a(check: Check) -> None:
    shapes = _bert_shapes(check)
    check.step("self-check probe, the variants BERT training takes",
               lambda: _probe_variants(check, _training_variants(check), reserve_s=45), need_s=10)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for algorithm in ("usadamw", "usadamax"):
            check.step(f"{algorithm} {str(dtype)[6:]} params vs float64, BERT-base shapes",
                       lambda d=dtype, a=algorithm: _step_against_float64(check, shapes, d, a), need_s=5)
    check.step("AMP-scaled gradients (scale 2^16) vs float64",
               lambda: _step_against_float64(check, shapes, torch.float32, "usadamw", scale=2.0 ** 16), need_s=5)
    check.step("misaligned bucket (views 1 element in) vs float64",
               lambda: _step_against_float64(check, shapes[:8], torch.float32, "usadamw", offset=1), need_s=5)
    check.step("NaN gradients", lambda: _nan_gradients(check), need_s=2)
    check.step("CUDA-only tests (pytest -m cuda)", lambda: _cuda_tests(check), need_s=30)
    check.step("self-check probe, every other variant (while the budget lasts)",
               lambda: _probe_variants(check, _other_variants(check)), need_s=10)


# ------------------------------------------------------------------------------------------------ b: CUDA graphs
@contextlib.contextmanager
def _cpu_compile_backend(check: Check):
    """The CPU rehearsal compiles with aot_eager (dynamo and AOT autograd, no inductor build); CUDA keeps
    torch.compile as the trainer calls it."""
    if check.cuda:
        yield
        return
    real = torch.compile
    torch.compile = lambda module, mode=None, dynamic=None: real(module, backend="aot_eager", dynamic=dynamic)
    torch._dynamo.reset()
    try:
        yield
    finally:
        torch.compile = real


def _workspace(check: Check, shape: str, rows: int, max_len: int, dropout: float = 0.1):
    name = f"{shape}-{rows}-{max_len}-{dropout}"
    return make_workspace(check.workdir / name, "tiny" if check.smoke else shape, rows, max_len, dropout)


def _trainers(check: Check, ws, tag: str, **kw):
    from mt_dnn.trainer import Trainer
    common = dict(device=str(check.device), tf32=False, optim_impl="foreach", **kw)
    with _cpu_compile_backend(check):
        compiled = Trainer(train_config(ws, f"{tag}-compiled", compile=True, **common))
    eager = Trainer(train_config(ws, f"{tag}-eager", **common))
    return compiled, eager


def _grads(trainer) -> dict:
    return {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


def _compare(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), "different parameters got gradients"
    return max(((a[k] - b[k]).abs().max() / (b[k].abs().max() + 1e-12)).item() for k in a)


def _padded_and_accumulated(check: Check, ws) -> dict:
    """Micro-batches of 8, 8 and 4 rows (the last padded to 8 by copies of its first row): compiled loss and
    gradients equal eager ones per micro-batch, and accumulated over all three without zeroing."""
    batch = 8
    compiled, eager = _trainers(check, ws, "graphs", batch_size=batch, max_train_samples=2 * batch + 4,
                                dropout_p=0.0)
    with _cpu_compile_backend(check):
        plan = eager.epoch_plan(0)
        worst_loss, worst_grad, rows = 0.0, 0.0, []
        for accumulate in (False, True):
            for trainer in (compiled, eager):
                trainer.model.train()
                trainer.optimizer.zero_grad(set_to_none=True)
            for task_idx, indices in plan:
                losses = []
                for trainer in (compiled, eager):
                    if not accumulate:
                        trainer.optimizer.zero_grad(set_to_none=True)
                    loss = trainer.micro_batch_loss(task_idx, indices)
                    loss.backward()
                    losses.append(loss.detach())
                rows.append(len(indices))
                worst_loss = max(worst_loss, ((losses[0] - losses[1]).abs() / losses[1].abs()).item())
                if not accumulate:
                    worst_grad = max(worst_grad, _compare(_grads(compiled), _grads(eager)))
            accumulated = _compare(_grads(compiled), _grads(eager))
    mode = "reduce-overhead (CUDA graphs)" if check.cuda else "aot_eager on CPU (no CUDA graphs)"
    values = {"mode": mode, "micro_batch_rows": sorted(set(rows)), "max_loss_rel_diff": worst_loss,
              "max_grad_rel_diff": worst_grad, "accumulated_grad_rel_diff": accumulated,
              "graphs": len(compiled.train_forward.compiled_shapes)}
    ok = worst_loss < 1e-4 and worst_grad < 1e-3 and accumulated < 1e-3 and compiled.train_forward.active
    return _failed_if(not ok, "compiled and eager disagree beyond 1e-3", values)


def _dropout_between_replays(check: Check, ws) -> dict:
    from mt_dnn.batcher import to_device
    """Dropout on: the same batch through the compiled forward twice gives different outputs (the masks are
    drawn anew at each replay), about as different as two eager forwards."""
    compiled, eager = _trainers(check, ws, "dropout", batch_size=8, dropout_p=0.1)
    task_idx, indices = eager.epoch_plan(0)[0]
    diffs = []
    with _cpu_compile_backend(check):
        for trainer in (compiled, eager):
            trainer.model.train()
            batch = to_device(trainer.micro_batch_set.__getitems__([(task_idx, i) for i in indices]), trainer.device)
            batch.pop("labels")
            outs = []
            for _ in range(2):  # the training graph (grad enabled), as in training; no backward needed
                outs.append(trainer.train_forward("pairs", **batch).float().detach().clone())
            diffs.append((outs[0] != outs[1]).float().mean().item())
    values = {"compiled_outputs_differing": diffs[0], "eager_outputs_differing": diffs[1]}
    return _failed_if(not diffs[0] > 0.5, "the compiled forward repeats its dropout masks", values)


def section_b(check: Check) -> None:
    still = _workspace(check, "small", 64, 64, dropout=0.0)
    check.step("padding rows and gradient accumulation, compiled vs eager",
               lambda: _padded_and_accumulated(check, still), need_s=20)
    noisy = _workspace(check, "small", 64, 64, dropout=0.1)
    check.step("dropout masks change between replays", lambda: _dropout_between_replays(check, noisy), need_s=15)


# ------------------------------------------------------------------------------------------------ c: eager training
def _precision_flags(check: Check, precision: str) -> dict:
    if precision == "fp16" and not check.cuda:
        raise SkipStep("needs CUDA (float16 autocast is for CUDA)")
    return {"fp32": {}, "bf16": {"bf16": True}, "fp16": {"fp16": True}}[precision]


def _timed_training(check: Check, trainer, warmup: int, steps: int) -> dict:
    trainer.fit(stop_after_steps=warmup)
    _sync(check.device)
    with SyncCounter(check.device) as syncs:
        start = time.perf_counter()
        trainer.fit(stop_after_steps=steps)
        _sync(check.device)
        seconds = time.perf_counter() - start
    samples = steps * trainer.cfg.batch_size
    return {"samples_per_s": samples / seconds, "ms_per_step": 1e3 * seconds / steps,
            "host_syncs_per_step": syncs.count / steps, "sync_sites": syncs.summary(steps)["sites"],
            "counted": syncs.kind}


def _eager_training(check: Check, ws, precision: str) -> dict:
    from mt_dnn.trainer import Trainer
    flags = _precision_flags(check, precision)
    batch, steps, warmup = (4, 2, 1) if check.smoke else (32, 15, 3)
    try:
        trainer = Trainer(train_config(ws, f"eager-{precision}", device=str(check.device), batch_size=batch,
                                       **flags))
    except ValueError as exc:  # --bf16 on a GPU without bfloat16 units: refused, as it should be
        raise SkipStep(str(exc)) from None
    values = _timed_training(check, trainer, warmup, steps)
    return {"batch_rows": batch, "precision": precision, **values}


def section_c(check: Check) -> None:
    rows = 64 if check.smoke else 32 * 24
    ws = _workspace(check, "bert-base", rows, 32 if check.smoke else 128)
    for precision in ("fp32", "bf16", "fp16"):
        check.step(f"eager training, {precision}", lambda p=precision: _eager_training(check, ws, p), need_s=25)


# ------------------------------------------------------------------------------------------------ d: optimizer speed
def _optimizer_rows(check: Check) -> None:
    from bench import optim_step as ob
    device = check.device.type
    cfg = ob.BenchConfig(device, steps=2 if check.smoke else 20, warmup=1 if check.smoke else 3)
    named = ob.make_params(_bert_shapes(check), device)
    rows = ob.candidates(device)
    keep = [("usadamw", "fused"), ("usadamax", "fused"), ("usadamw", "foreach")]
    if check.cuda:
        keep += [("usadamw", "fused, gradients reallocated every step"),
                 ("usadamw", "fused, table miss forced every step")]
    floor_s = None
    if check.cuda:
        floor_s = ob.sage_floor_bytes(named) / ob.copy_bandwidth(device)
    baseline = rows[ob.BASELINE](named)
    for _ in range(cfg.warmup):
        baseline.step()
    base = {}

    def run(label):
        result = ob.run_one(label, rows[label], named, cfg, None if label == ob.BASELINE else baseline)
        values = {"median_ms": 1e3 * result.median_s, "x_torch_fused_adamw": result.ratio if base else 1.0,
                  "first_step_ms": 1e3 * result.first_s}
        if result.extra_bytes is not None:
            values["extra_peak_MiB"] = result.extra_bytes / 2 ** 20
        if result.misses is not None:
            values["table_misses_per_step"] = result.misses
        if floor_s:
            values["x_memory_floor"] = result.median_s / floor_s
        base.setdefault("done", True)
        return values
    check.step("torch AdamW fused (the baseline)", lambda: run(ob.BASELINE), need_s=5)
    for label in keep:
        check.step(" ".join(label), lambda lab=label: run(lab), need_s=5)
    check.step("host time of one fused usadamw step", lambda: _host_time(check, named), need_s=5)


def _host_time(check: Check, named) -> dict:
    """Seconds the host spends inside step() (on CUDA the call returns once the kernels are queued)."""
    from module.bert_optim import AdamWSAGE, sage_param_groups
    opt = AdamWSAGE(sage_param_groups(named), lr=LR, fused=True)
    host, total = [], []
    for i in range(3 if check.smoke else 23):
        _sync(check.device)
        start = time.perf_counter()
        opt.step()
        queued = time.perf_counter()
        _sync(check.device)
        if i >= 3 or check.smoke:
            host.append(queued - start)
            total.append(time.perf_counter() - start)
    return {"host_ms": 1e3 * statistics.median(host), "step_ms": 1e3 * statistics.median(total),
            "host_share": statistics.median(host) / statistics.median(total)}


def section_d(check: Check) -> None:
    _optimizer_rows(check)


# ---------------------------------------------------------------------------------------------- e: syncs, DDP, compile
def _ddp_cost(check: Check) -> dict:
    if check.cuda and torch.cuda.device_count() < 2:
        raise SkipStep(f"needs 2 GPUs ({torch.cuda.device_count()} visible): DDP's search for unused parameters "
                       "costs most where gradients travel between GPUs")
    out = check.workdir / "parallel_settings.json"
    args = ["--nproc", "2", "--json", str(out)]
    args += ["--device", "cpu", "--hidden", "32", "--layers", "1", "--batch", "2", "--seq_len", "16", "--steps", "1",
             "--warmup", "1"] if not check.cuda else ["--device", "cuda", "--hidden", "768", "--layers", "12",
                                                      "--batch", "32", "--seq_len", "128", "--steps", "10"]
    timeout = max(30, check.remaining() - 5)
    proc = subprocess.run([sys.executable, "-m", "bench.parallel_settings", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError((proc.stderr.strip().splitlines() or ["no output"])[-1])
    rows = json.loads(out.read_text())["rows"]
    return {r["row"]: {"before_ms": r["before_ms"], "now_ms": r["now_ms"], "now/before": r["now_over_before"]}
            for r in rows} | {"backend": "nccl" if check.cuda else "gloo (CPU rehearsal)"}


def _micro_batch_syncs(check: Check, ws) -> dict:
    """Host syncs of one micro-batch (forward, loss, backward) without and with SMART, after a warm-up one."""
    from mt_dnn.trainer import Trainer
    values = {}
    for name, kw in (("plain", {}), ("smart", dict(adv_train=True, adv_k=1))):
        trainer = Trainer(train_config(ws, f"syncs-{name}", device=str(check.device), batch_size=8, **kw))
        trainer.model.train()
        plan = trainer.epoch_plan(0)
        trainer.micro_batch_backward(*plan[0], None)
        _sync(check.device)
        with SyncCounter(check.device) as syncs:
            trainer.micro_batch_backward(*plan[1], None)
        values[f"{name}_syncs_per_micro_batch"] = syncs.count
        values[f"{name}_sites"] = syncs.summary(top=5)["sites"]
        smart_sites = syncs.sites
    smart_own = sum(n for site, n in smart_sites.items() if site.startswith("mt_dnn/objectives.py"))
    values["smart_objective_own_syncs"] = smart_own  # the extra forwards' own encoder syncs are the encoder's
    return _failed_if(smart_own > 0, "SMART's own code syncs the host", values | {"counted": syncs.kind})


def _resume_syncs(check: Check) -> dict:
    """Host syncs of a fused optimizer step, fresh and after a state_dict round trip (a resumed run)."""
    from module.bert_optim import AdamWSAGE, sage_param_groups
    shapes = _bert_shapes(check)[:24]

    def params():
        torch.manual_seed(0)
        named = [(n, torch.nn.Parameter(torch.randn(s, device=check.device) * 0.02)) for n, s in shapes]
        for _, p in named:
            p.grad = torch.randn_like(p) * 1e-3
        return named
    counts = {}
    fresh = AdamWSAGE(sage_param_groups(params()), lr=LR, fused=True)
    fresh.step()
    state = fresh.state_dict()
    resumed = AdamWSAGE(sage_param_groups(params()), lr=LR, fused=True)
    resumed.load_state_dict(state)
    resumed.step()
    for name, opt in (("fresh", fresh), ("resumed", resumed)):
        _sync(check.device)
        with SyncCounter(check.device) as syncs:
            opt.step()
        counts[f"{name}_step_syncs"] = syncs.count
        counts[f"{name}_sites"] = syncs.summary()["sites"]
    return _failed_if(counts["resumed_step_syncs"] > counts["fresh_step_syncs"],
                      "a resumed fused step syncs more than a fresh one", counts | {"counted": syncs.kind})


def _compile_per_bucket(check: Check, ws) -> dict:
    """BERT-base under --compile, one micro-batch per length bucket (short and long sequences picked from the
    data), then timed rounds over the same batches compiled and eager: compile time and memory per bucket, and
    samples/s side by side."""
    from mt_dnn.trainer import Trainer
    batch = 4 if check.smoke else 32
    flags = {} if not check.cuda else {"bf16": True} if torch.cuda.get_device_capability(check.device)[0] >= 8 \
        else {"fp16": True}
    common = dict(device=str(check.device), batch_size=batch, max_seq_len=64, **flags)
    results = {}
    for mode in ("compiled", "eager"):
        with _cpu_compile_backend(check):
            trainer = Trainer(train_config(ws, f"bucket-{mode}", compile=mode == "compiled", **common))
            lengths = trainer.train_sets[0].lengths
            order = sorted(range(len(lengths)), key=lambda i: lengths[i])
            batches = [order[:batch], order[-batch:]]  # the shortest (bucket 32) and the longest (bucket 64)
            trainer.model.train()
            for indices in batches:  # compiles each bucket (compiled mode)
                trainer.micro_batch_backward(0, indices, None)
                trainer.optimizer_step()
            rounds = 1 if check.smoke else 5
            _sync(check.device)
            start = time.perf_counter()
            for _ in range(rounds):
                for indices in batches:
                    trainer.micro_batch_backward(0, indices, None)
                    trainer.optimizer_step()
            _sync(check.device)
            results[mode] = rounds * len(batches) * batch / (time.perf_counter() - start)
            if mode == "compiled":
                shapes = trainer.train_forward.compiled_shapes
                per_bucket = {f"{'x'.join(map(str, dims))}": {"compile_s": v["seconds"],
                                                               "MiB": None if v["memory_bytes"] is None
                                                               else v["memory_bytes"] / 2 ** 20}
                              for (_, dims), v in shapes.items()}
                active = trainer.train_forward.active
    values = {"precision": next(iter(flags), "fp32"), "per_bucket": per_bucket,
              "compiled_samples_per_s": results["compiled"], "eager_samples_per_s": results["eager"],
              "compiled/eager": results["compiled"] / results["eager"]}
    return _failed_if(not active or len(per_bucket) != 2, "the compiled forward fell back or missed a bucket", values)


def section_e(check: Check) -> None:
    check.step("DDP: unused-parameter search and buffer broadcasts, before vs now", lambda: _ddp_cost(check),
               need_s=30)
    ws = _workspace(check, "small", 64, 64)
    check.step("host syncs per micro-batch, plain and SMART", lambda: _micro_batch_syncs(check, ws), need_s=10)
    check.step("host syncs of a fused step, fresh and resumed", lambda: _resume_syncs(check), need_s=5)
    big = _workspace(check, "bert-base", 256, 64)
    check.step("BERT-base --compile: time and memory per bucket vs eager", lambda: _compile_per_bucket(check, big),
               need_s=60)


RUNNERS = {"a": section_a, "b": section_b, "c": section_c, "d": section_d, "e": section_e}
