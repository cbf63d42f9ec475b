"""The machinery of bench/gpu_check.py: sections with time budgets, steps that record their numbers or their
one-line failure, and the results file and table. The sections themselves are in gpu_check_sections.py."""
from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]

#: section id -> (title, seconds on a GPU, seconds in smoke mode)
SECTIONS = {
    "a": ("fused optimizer kernel: correctness", 100, 60),
    "b": ("CUDA graphs (--compile): correctness", 70, 40),
    "c": ("eager BERT-base training", 130, 60),
    "d": ("optimizer step: speed", 80, 40),
    "e": ("DDP, SMART and resume syncs, --compile per bucket", 160, 90),
}


class SkipStep(Exception):
    """A step that cannot run here (no CUDA, one GPU): recorded as skipped with the message as its reason."""


@dataclass
class Step:
    name: str
    status: str = "ok"  # ok | failed | skipped
    reason: str = ""
    seconds: float = 0.0
    values: dict = field(default_factory=dict)


@dataclass
class Section:
    id: str
    title: str
    budget_s: float
    steps: list[Step] = field(default_factory=list)
    seconds: float = 0.0


class Check:
    """The run: device, mode, the section being run and its deadline, and everything recorded so far."""

    def __init__(self, device: torch.device, smoke: bool, workdir: Path, budget_scale: float = 1.0):
        self.device, self.smoke, self.workdir, self.budget_scale = device, smoke, workdir, budget_scale
        self.sections: list[Section] = []
        self._deadline = float("inf")

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def remaining(self) -> float:
        return self._deadline - time.monotonic()

    @contextlib.contextmanager
    def section(self, sid: str) -> Iterator[Section]:
        title, gpu_s, smoke_s = SECTIONS[sid]
        budget = (smoke_s if self.smoke else gpu_s) * self.budget_scale
        sec = Section(sid, title, budget)
        self.sections.append(sec)
        start = time.monotonic()
        self._deadline = start + budget
        print(f"[{sid}] {title} (budget {budget:.0f} s)", file=sys.stderr, flush=True)
        try:
            yield sec
        finally:
            sec.seconds = time.monotonic() - start
            self._deadline = float("inf")

    def step(self, name: str, fn: Callable[[], Optional[dict]], need_s: float = 0.0) -> Step:
        """Run ``fn`` (its dict goes into the step's values) unless the section's budget has less than
        ``need_s`` seconds left; its exception becomes a failed step with a one-line reason."""
        step = Step(name)
        self.sections[-1].steps.append(step)
        need_s *= 0.25 if self.smoke else 1.0  # the rehearsal's shapes are tiny
        if self.remaining() < need_s:
            step.status, step.reason = "skipped", f"time budget ({self.remaining():.0f} s left, needs ~{need_s:.0f})"
            return step
        start = time.monotonic()
        try:
            step.values = fn() or {}
            if step.values.pop("_failed", None):
                step.status, step.reason = "failed", step.values.pop("_reason", "check did not hold")
        except SkipStep as exc:
            step.status, step.reason = "skipped", str(exc)
        except Exception as exc:  # one failed check is a row, not the end of the run
            step.status = "failed"
            step.reason = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"
            step.values["traceback_tail"] = traceback.format_exc().strip().splitlines()[-3:]
        finally:
            step.seconds = time.monotonic() - start
            if self.cuda:
                torch.cuda.empty_cache()
        print(f"  {name}: {step.status}{' (' + step.reason + ')' if step.reason else ''} "
              f"[{step.seconds:.1f} s]", file=sys.stderr, flush=True)
        return step

    def needs_cuda(self, what: str) -> None:
        if not self.cuda:
            raise SkipStep(f"needs CUDA ({what})")


# ------------------------------------------------------------------------------------------------ output
def environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": str(device),
           "threads": torch.get_num_threads(), "load_average": list(os.getloadavg())}
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        env |= {"gpu": torch.cuda.get_device_name(index), "capability": list(torch.cuda.get_device_capability(index)),
                "gpus_visible": torch.cuda.device_count()}
        try:
            import triton
            env["triton"] = triton.__version__
        except ImportError:
            env["triton"] = None
    return env


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "; ".join(map(_cell, value))
    if isinstance(value, dict):
        return ", ".join(f"{k} {_cell(v)}" for k, v in value.items())
    return str(value)


def table(check: Check) -> str:
    """One markdown row per step: its status and its numbers (ratios among them) side by side."""
    lines = ["| section | step | status | seconds | results |", "|---|---|---|---:|---|"]
    for sec in check.sections:
        for step in sec.steps:
            shown = {k: v for k, v in step.values.items() if k != "traceback_tail"}
            status = step.status if not step.reason else f"{step.status}: {step.reason}"
            lines.append(f"| {sec.id} | {step.name} | {status} | {step.seconds:.1f} | "
                         f"{_cell(shown).replace('|', '/')} |")
    return "\n".join(lines)


def results(check: Check, started: str) -> dict:
    return {"started": started, "smoke": check.smoke, "environment": environment(check.device),
            "sections": [{"id": s.id, "title": s.title, "budget_s": s.budget_s, "seconds": s.seconds,
                          "steps": [vars(step) for step in s.steps]} for s in check.sections],
            "failed": [f"{s.id}: {st.name}" for s in check.sections for st in s.steps if st.status == "failed"]}


def write_json(path: Path, data: dict) -> None:
    from data_utils.atomic import atomic_write
    from data_utils.jsonsafe import dumps
    with atomic_write(path) as handle:
        handle.write(dumps(data, indent=2) + "\n")
