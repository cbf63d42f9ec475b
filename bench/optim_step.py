"""One optimizer.step() on BERT-base-shaped parameters: SAGE implementations side by side with torch.optim.

Prints one markdown table: median step time, ratio against torch's fastest AdamW (``fused=True``, on CPU and
CUDA), extra peak memory during a step (CUDA: the caching allocator's peak; CPU: the profiler's allocation
events, since RSS and tracemalloc do not see tensor temporaries reliably), the first step, which carries the
one-time compile cost of the fused paths (torch.compile on CPU, Triton on CUDA) and the state allocation, and on
CUDA the Triton kernel's table-cache misses per timed step (its tables are keyed on the tensors' addresses; two
extra rows reallocate the gradients before every step, as ``zero_grad(set_to_none=True)`` and a backward do, or
force a miss every step).

The ratio is paired: each row's steps alternate with steps of the baseline optimizer, kept alive for the whole
run, and the row's median is divided by the baseline's median over those same alternating steps, so a load
change on a shared machine moves both sides of the ratio alike. The host's load average is printed.

    python -m bench.optim_step [--device cpu|cuda] [--steps N] [--warmup N] [--only usadamw,torch]
    python -m bench.optim_step --device cuda --tune     # Triton block size / warps sweep instead
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

if not __package__:  # run by its file path, where the project's packages do not import
    print("optim_step.py: error: run it from the repository root as: python -m bench.optim_step [flags]",
          file=sys.stderr)
    raise SystemExit(2)

from module.bert_optim import AdamaxSAGE, AdamWSAGE, sage_param_groups  # noqa: E402

LR, BETAS, BETA3, EPS, WEIGHT_DECAY = 2e-5, (0.9, 0.999), 0.75, 1e-6, 0.01
#: torch's fastest AdamW: every ratio in the table is against it, on CPU and CUDA alike
BASELINE = ("torch AdamW", "fused")


@dataclass
class BenchConfig:
    device: str
    steps: int
    warmup: int
    only: tuple[str, ...] = ()
    tune: bool = False


# ----------------------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------------------
def bert_base_shapes() -> list[tuple[str, torch.Size]]:
    """Names and shapes of BERT-base's parameters (built on the meta device: no memory, no init cost)."""
    from transformers import AutoModel, BertConfig
    with torch.device("meta"):
        model = AutoModel.from_config(BertConfig())
    return [(name, p.shape) for name, p in model.named_parameters()]


def make_params(shapes, device: str) -> list[tuple[str, torch.nn.Parameter]]:
    """fp32 parameters ~N(0, 0.02) with random gradients attached (shared by every optimizer benchmarked)."""
    gen = torch.Generator(device=device).manual_seed(0)
    named = []
    for name, shape in shapes:
        p = torch.nn.Parameter(torch.randn(shape, device=device, generator=gen) * 0.02)
        p.grad = torch.randn(shape, device=device, generator=gen) * 1e-3
        named.append((name, p))
    return named


# ----------------------------------------------------------------------------------------------------------
# The authors' style: one Python iteration per parameter, a fresh temporary for every intermediate
# ----------------------------------------------------------------------------------------------------------
class ReferenceLoop:
    """AdamW-SAGE / Adamax-SAGE as the authors wrote the update (docs/sage_update_rule.md), kept for timing
    only."""

    def __init__(self, groups: list[dict], algo: str):
        self.groups, self.algo, self.state = groups, algo, {}

    @torch.no_grad()
    def step(self) -> None:
        for group in self.groups:
            for p in group["params"]:
                if p.grad is not None:
                    getattr(self, "_" + self.algo)(p, p.grad, group["sage"], group["weight_decay"])

    def _slot(self, p):
        if p not in self.state:
            self.state[p] = dict(step=0, m=torch.zeros_like(p), v=torch.zeros_like(p), ipt=torch.zeros_like(p))
        return self.state[p]

    def _adamw(self, p, g, sage, wd):
        s = self._slot(p)
        s["step"] += 1
        t, (b1, b2) = s["step"], BETAS
        s["m"].mul_(b1).add_(g, alpha=1 - b1)
        s["v"].mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = s["v"].sqrt().add_(EPS)
        step_size = LR
        if sage:
            ipt = (p * g).abs()
            s["ipt"].mul_(BETA3).add_(ipt, alpha=1 - BETA3)
            ipt_hat = s["ipt"] / (1 - BETA3 ** t)
            step_size = step_size * ((ipt - ipt_hat).abs() / (ipt_hat + EPS * EPS))
        step_size = step_size * (math.sqrt(1 - b2 ** t) / (1 - b1 ** t))
        p.add_(-(s["m"] / denom) * step_size)
        if wd:
            p.add_(p, alpha=-LR * wd)

    def _adamax(self, p, g, sage, wd):
        s = self._slot(p)
        b1, b2 = BETAS
        s["m"].mul_(b1).add_(g, alpha=1 - b1)
        s["v"] = torch.max(s["v"] * b2, g.abs() + EPS)
        update = s["m"] / (s["v"] + EPS)
        update = update + wd * p
        lr_t = LR
        if sage:
            ipt = (p * g).abs()
            s["ipt"].mul_(BETA3).add_(ipt, alpha=1 - BETA3)
            lr_t = lr_t * ((ipt - s["ipt"]).abs() / (s["ipt"] + EPS * EPS))
        p.add_(-(lr_t * update))
        s["step"] += 1


# ----------------------------------------------------------------------------------------------------------
# Candidates (registry: row label -> factory of an object with .step())
# ----------------------------------------------------------------------------------------------------------
def _touch(p, g, exp_avg, exp_avg_sq, ipt_avg, **_):
    """The fused usadamw step's reads and writes, one add each instead of the update's arithmetic."""
    exp_avg.add_(g)
    exp_avg_sq.add_(g)
    if ipt_avg is not None:
        ipt_avg.add_(p)
    p.add_(g)


class TrafficFloor:
    """A fused usadamw optimizer whose compiled per-tensor math is swapped for :func:`_touch` during its step:
    the same tensors, chunks, flat small-tensor call and scalars, so it moves the same bytes through the same
    path with almost no arithmetic. Fused usadamw − this row = the update's arithmetic; this row − torch fused
    AdamW = SAGE's extra bytes plus the path's overhead."""

    def __init__(self, groups: list[dict]):
        from module.sage.dispatch import CompiledBackend

        class Touch(CompiledBackend):
            def single(self, algorithm: str) -> Callable[..., None]:
                return _touch
        self.opt = AdamWSAGE(groups, lr=LR, betas=BETAS, beta3=BETA3, eps=EPS, fused=True)
        self.opt.fused_backend = Touch()

    def step(self) -> None:
        self.opt.step()


class CompiledPath:
    """A fused SAGE optimizer whose CPU steps take the torch.compile path (the C kernel's predecessor)."""

    def __init__(self, opt):
        self.opt = opt
        self.opt.fused_backend = "compiled"

    def step(self) -> None:
        self.opt.step()


class FreshGradients:
    """A fused SAGE optimizer whose gradients are freed and reallocated (untimed) before every step, as
    ``zero_grad(set_to_none=True)`` and a backward do: new addresses miss the Triton kernel's table cache."""

    def __init__(self, opt, named):
        self.opt, self.params = opt, [p for _, p in named]
        self.sources = [p.grad.clone() for p in self.params]

    def prepare(self) -> None:
        for p in self.params:
            p.grad = None
        for p, source in zip(self.params, self.sources):
            p.grad = source.clone()

    def step(self) -> None:
        self.opt.step()


class ForcedMisses:
    """A fused SAGE optimizer whose Triton table cache is emptied (untimed) before every step: each step pays
    the miss (host-built tables, pinned non-blocking copy)."""

    def __init__(self, opt):
        self.opt = opt

    def prepare(self) -> None:
        from module.sage import triton_kernel
        triton_kernel.clear_table_cache()

    def step(self) -> None:
        self.opt.step()


def _groups(named):
    return sage_param_groups(named, weight_decay=WEIGHT_DECAY)


def _sage(cls, impl: str) -> Callable:
    flags = {"for-loop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}[impl]
    return lambda named: cls(_groups(named), lr=LR, betas=BETAS, beta3=BETA3, eps=EPS, **flags)


def candidates(device: str) -> dict[tuple[str, str], Callable]:
    rows: dict[tuple[str, str], Callable] = {
        BASELINE: lambda named: torch.optim.AdamW(_groups(named), lr=LR, eps=EPS, fused=True),
        ("torch AdamW", "foreach"): lambda named: torch.optim.AdamW(_groups(named), lr=LR, eps=EPS, foreach=True),
    }
    rows[("torch Adamax", "foreach")] = lambda named: torch.optim.Adamax(_groups(named), lr=LR, eps=EPS,
                                                                        foreach=True)
    rows[("usadamw", "reference loop")] = lambda named: ReferenceLoop(_groups(named), "adamw")
    rows[("usadamax", "reference loop")] = lambda named: ReferenceLoop(_groups(named), "adamax")
    for name, cls in (("usadamw", AdamWSAGE), ("usadamax", AdamaxSAGE)):
        for impl in ("for-loop", "foreach", "fused"):
            rows[(name, impl)] = _sage(cls, impl)
    if device == "cpu":
        for name, cls in (("usadamw", AdamWSAGE), ("usadamax", AdamaxSAGE)):
            rows[(name, "fused, torch.compile")] = lambda named, cls=cls: CompiledPath(_sage(cls, "fused")(named))
        rows[("usadamw's bytes, no arithmetic", "torch.compile")] = lambda named: TrafficFloor(_groups(named))
    else:
        rows[("usadamw", "fused, gradients reallocated every step")] = \
            lambda named: FreshGradients(_sage(AdamWSAGE, "fused")(named), named)
        rows[("usadamw", "fused, table miss forced every step")] = \
            lambda named: ForcedMisses(_sage(AdamWSAGE, "fused")(named))
    return rows


# ----------------------------------------------------------------------------------------------------------
# Measurement
# ----------------------------------------------------------------------------------------------------------
def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str) -> float:
    """Seconds for one call, device work included."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def extra_peak_bytes(opt, device: str) -> Optional[int]:
    """Bytes allocated above the steady state during one step (state already exists)."""
    if device == "cuda":
        _sync(device)
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        opt.step()
        _sync(device)
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        opt.step()
    try:
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    except AttributeError:  # profiler internals moved: say so rather than print a wrong number
        return None
    current = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        current += e.nbytes()
        peak = max(peak, current)
    return peak


@dataclass
class Result:
    optimizer: str
    impl: str
    median_s: float
    first_s: float
    extra_bytes: Optional[int]
    ratio: float  # median step / the baseline's median over the alternating steps
    misses: Optional[float] = None  # Triton table-cache misses per timed step (None: no Triton path here)


def table_misses() -> Optional[int]:
    """Misses of the Triton kernel's table cache so far (None where that kernel cannot run)."""
    try:
        from module.sage import triton_kernel
    except ImportError:
        return None
    return triton_kernel.table_cache_stats()["misses"]


def run_one(label, factory, named, cfg: BenchConfig, baseline=None) -> Result:
    """Time ``cfg.steps`` steps of a fresh optimizer, each followed by a step of ``baseline`` (if given); an
    optimizer's ``prepare()``, if it has one, runs untimed before each of its steps."""
    opt = factory(named)
    prepare = getattr(opt, "prepare", lambda: None)
    prepare()
    first = timed(opt.step, cfg.device)
    for _ in range(max(0, cfg.warmup - 1)):
        prepare()
        timed(opt.step, cfg.device)
    times, base_times = [], []
    misses_before = table_misses() if cfg.device == "cuda" else None
    for _ in range(cfg.steps):
        prepare()
        times.append(timed(opt.step, cfg.device))
        if baseline is not None:
            base_times.append(timed(baseline.step, cfg.device))
    misses = None if misses_before is None else (table_misses() - misses_before) / cfg.steps
    prepare()
    extra = extra_peak_bytes(opt, cfg.device)
    del opt
    if cfg.device == "cuda":
        torch.cuda.empty_cache()
    median = statistics.median(times)
    ratio = median / statistics.median(base_times) if base_times else 1.0
    return Result(label[0], label[1], median, first, extra, ratio, misses)


def table(results: list[Result], baseline: tuple[str, str]) -> str:
    lines = ["| optimizer | implementation | median step (ms) | × " + " ".join(baseline)
             + " | extra peak memory (MiB) | first step (ms) | table misses / step |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        mem = "n/a" if r.extra_bytes is None else f"{r.extra_bytes / 2 ** 20:.1f}"
        misses = "–" if r.misses is None else f"{r.misses:.2f}"
        lines.append(f"| {r.optimizer} | {r.impl} | {r.median_s * 1e3:.2f} | {r.ratio:.2f} | {mem} | "
                     f"{r.first_s * 1e3:.1f} | {misses} |")
    return "\n".join(lines)


def copy_bandwidth(device: str, nbytes: int = 1 << 30) -> float:
    """Bytes/s of a device-to-device copy (read + write), the yardstick for a memory-bound update."""
    src = torch.empty(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = [timed(lambda: dst.copy_(src), device) for _ in range(5)]
    return 2 * nbytes / statistics.median(times)


def sage_floor_bytes(named) -> int:
    """Bytes an AdamW-SAGE step must move: SAGE tensors 36 B/element (read θ g m v Ī, write θ m v Ī), others 28."""
    total = 0
    for group in _groups(named):
        per = 36 if group["sage"] else 28
        total += per * sum(p.numel() for p in group["params"])
    return total


def header(named, cfg: BenchConfig) -> str:
    n = sum(p.numel() for _, p in named)
    parts = [f"device={cfg.device}", f"torch={torch.__version__}",
             f"params={n / 1e6:.1f}M fp32 in {len(named)} tensors",
             f"steps={cfg.steps}", f"warmup={cfg.warmup}", f"threads={torch.get_num_threads()}",
             "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())]
    if cfg.device == "cuda":
        parts.append(torch.cuda.get_device_name())
        try:
            import triton
            from module.sage import triton_kernel
            parts.append(f"triton={triton.__version__} {triton_kernel.launch_config()}")
        except ImportError:
            parts.append("triton=absent (fused = torch.compile)")
        bandwidth = copy_bandwidth(cfg.device)
        parts.append(f"copy bandwidth {bandwidth / 1e12:.2f} TB/s, usadamw memory floor "
                     f"{sage_floor_bytes(named) / bandwidth * 1e3:.2f} ms")
    return "; ".join(parts)


def tune(named, cfg: BenchConfig) -> str:
    """Median fused step per (BLOCK_SIZE, NUM_WARPS): synced per step, and with steps queued back to back."""
    from module.sage.dispatch import TritonBackend
    lines = ["| BLOCK_SIZE | NUM_WARPS | usadamw step (ms) | usadamw queued (ms/step) | usadamax step (ms) |",
             "|---:|---:|---:|---:|---:|"]
    for block, warps in ((1024, 4), (2048, 4), (2048, 8), (4096, 8), (8192, 16)):
        cells = []
        for cls in (AdamWSAGE, AdamaxSAGE):
            opt = _sage(cls, "fused")(named)
            opt.fused_backend = TritonBackend(block_size=block, num_warps=warps)
            for _ in range(cfg.warmup):
                opt.step()
            cells.append(statistics.median(timed(opt.step, cfg.device) for _ in range(cfg.steps)))
            if cls is AdamWSAGE:
                _sync(cfg.device)
                start = time.perf_counter()
                for _ in range(cfg.steps):
                    opt.step()
                _sync(cfg.device)
                cells.append((time.perf_counter() - start) / cfg.steps)
            del opt
        lines.append(f"| {block} | {warps} | " + " | ".join(f"{c * 1e3:.3f}" for c in cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------
def parse_args(argv=None) -> BenchConfig:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: cpu 5, cuda 50)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: cpu 3, cuda 5; fresh state pages fault in over the first CPU steps)")
    parser.add_argument("--only", default="", help="comma-separated substrings of row labels to keep")
    parser.add_argument("--tune", action="store_true", help="CUDA: sweep the Triton kernel's block size and warps")
    args = parser.parse_args(argv)
    if args.tune and args.device != "cuda":
        parser.error("--tune needs --device cuda (it tunes the Triton kernel)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    steps = args.steps if args.steps is not None else (50 if args.device == "cuda" else 5)
    warmup = args.warmup if args.warmup is not None else (5 if args.device == "cuda" else 3)
    if steps < 1 or warmup < 1:
        parser.error(f"--steps and --warmup must be >= 1 (got {steps}, {warmup})")
    only = tuple(s.strip() for s in args.only.split(",") if s.strip())
    return BenchConfig(args.device, steps, warmup, only, args.tune)


def main(argv=None) -> None:
    cfg = parse_args(argv)
    named = make_params(bert_base_shapes(), cfg.device)
    rows = candidates(cfg.device)
    keep = [k for k in rows if k != BASELINE and (not cfg.only or any(s in " ".join(k) for s in cfg.only))]
    print(header(named, cfg), flush=True)
    if cfg.tune:
        print(tune(named, cfg))
        return
    baseline = rows[BASELINE](named)
    for _ in range(cfg.warmup):
        baseline.step()
    results = [run_one(BASELINE, rows[BASELINE], named, cfg)]
    for label in keep:
        results.append(run_one(label, rows[label], named, cfg, baseline))
        print(f"  {' / '.join(label)}: {results[-1].median_s * 1e3:.2f} ms, {results[-1].ratio:.2f}x", file=sys.stderr,
              flush=True)
    print(table(results, BASELINE))
    print("load average at the end {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
