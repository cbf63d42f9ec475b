"""Where a run reports: ``--report_to tensorboard mlflow wandb`` (Hugging Face's flag), TensorBoard by default.

The registry below names each reporter, the Python package it needs and the pip package that installs it; a
reporter whose package is missing is refused in one line before the run folder is touched. Only rank 0 reports.
The Trainer calls :class:`Reporting` with its logged scalars (training loss, learning rate, optimizer statistics,
dev metrics), each evaluation's record (the line appended to ``metrics.jsonl``) and the ``best/`` folder it saved.
Reporters that resume (MLflow's run id, W&B's run id) keep their ids in ``OUTPUT_DIR/reporting.json``.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from mt_dnn.reporter_base import STATE_FILE, Reporter, RunInfo, read_state  # noqa: F401 (re-exported)


@dataclass(frozen=True)
class ReporterSpec:
    """A reporter: the module it imports (``package``), what installs it (``pip``), and how it starts."""
    name: str
    package: str
    pip: str
    start: Callable[[RunInfo], Reporter]


def _tensorboard(run: RunInfo) -> Reporter:
    from mt_dnn.report_tensorboard import TensorBoardReporter
    return TensorBoardReporter(run)


def _mlflow(run: RunInfo) -> Reporter:
    from mt_dnn.report_mlflow import MlflowReporter
    return MlflowReporter(run)


def _wandb(run: RunInfo) -> Reporter:
    from mt_dnn.report_wandb import WandbReporter
    return WandbReporter(run)


REPORTERS: dict[str, ReporterSpec] = {
    "tensorboard": ReporterSpec("tensorboard", "tensorboard", "tensorboard", _tensorboard),
    "mlflow": ReporterSpec("mlflow", "mlflow", "mlflow-skinny", _mlflow),
    "wandb": ReporterSpec("wandb", "wandb", "wandb", _wandb),
}
CHOICES = (*REPORTERS, "all", "none")


def installed(name: str) -> bool:
    return importlib.util.find_spec(REPORTERS[name].package) is not None


def names(report_to: Optional[Sequence[str]], tensorboard: bool = True) -> list[str]:
    """The reporters a run uses. ``None`` (not given): TensorBoard unless ``--no_tensorboard``; ``all``: every
    installed reporter (as Hugging Face's ``--report_to all``); ``none``: no reporter. Commas separate names too.
    Unknown names and contradictions are refused (ValueError, one line)."""
    if report_to is None:
        return ["tensorboard"] if tensorboard else []
    given = [n.strip() for item in report_to for n in str(item).split(",") if n.strip()]
    unknown = [n for n in given if n not in CHOICES]
    if unknown:
        raise ValueError(f"--report_to: unknown reporter '{unknown[0]}'; known: {', '.join(CHOICES)}")
    if not given:
        raise ValueError(f"--report_to: name at least one of {', '.join(CHOICES)}")
    if ("none" in given or "all" in given) and len(set(given)) > 1:
        word = "none" if "none" in given else "all"
        raise ValueError(f"--report_to: '{word}' cannot be combined with other reporters")
    if "none" in given:
        return []
    chosen = [n for n in REPORTERS if installed(n)] if "all" in given else list(dict.fromkeys(given))
    if "tensorboard" in given and not tensorboard:
        raise ValueError("--report_to: names tensorboard while --no_tensorboard turns it off; drop one of them")
    return [n for n in chosen if tensorboard or n != "tensorboard"]


def check_installed(chosen: Sequence[str]) -> None:
    """Refuse, before the run starts, a reporter whose package this Python cannot import."""
    for name in chosen:
        if not installed(name):
            spec = REPORTERS[name]
            raise ValueError(f"--report_to {name}: the {spec.package} package is not installed here; "
                             f"pip install {spec.pip}")


def flat_params(cfg) -> dict[str, str]:
    """A dataclass config as flat string parameters (lists and tuples comma-joined)."""
    out = {}
    for key, value in dataclasses.asdict(cfg).items():
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        out[key] = str(value)
    return out


class ReporterError(ValueError):
    """A reporter that failed to start or to record (its server, its files, its login); one line naming it."""


def _failed(name: str, what: str, exc: BaseException) -> ReporterError:
    reason = " ".join(str(exc).split())[:300] or type(exc).__name__
    return ReporterError(f"--report_to {name}: {what} failed ({type(exc).__name__}: {reason})")


class Reporting:
    """The run's reporters by name (none on ranks other than 0). ``wanted``: whether any reporter is on at all,
    the same on every rank (the optimizer statistics they receive are gathered by a collective under FSDP).
    A reporter's own error becomes one line naming it (train.py: exit 2; the run's checkpoints stay resumable)."""

    def __init__(self, reporters: Optional[dict[str, Reporter]] = None, wanted: bool = False):
        self.reporters, self.wanted = dict(reporters or {}), wanted
        self.closed = False

    def __bool__(self) -> bool:
        return bool(self.reporters)

    def _each(self, what: str, call: Callable[[Reporter], None]) -> None:
        for name, reporter in self.reporters.items():
            try:
                call(reporter)
            except Exception as exc:
                raise _failed(name, what, exc) from exc

    def scalars(self, values: dict, step: int) -> None:
        self._each(f"recording step {step}", lambda r: r.scalars(values, step))

    def evaluated(self, record: dict, best: Optional[Path]) -> None:
        self._each(f"recording epoch {record.get('epoch')}'s evaluation", lambda r: r.evaluated(record, best))

    def flush(self) -> None:
        self._each("flushing", lambda r: r.flush())

    def close(self) -> None:
        """End every reporter once; the status comes from the exception in flight, if any (whose report then
        wins over a reporter's failure to close)."""
        if self.closed:
            return
        self.closed = True
        exc = sys.exc_info()[1]
        stopped = exc is not None and type(exc).__name__ in ("Stopped", "Interrupted", "KeyboardInterrupt")
        status = "FINISHED" if exc is None else "KILLED" if stopped else "FAILED"
        try:
            self._each("ending the run", lambda r: r.close(status))
        except ReporterError:
            if exc is None:
                raise


def start(cfg, output_dir: Path, is_main: bool) -> Reporting:
    """Start the reporters ``cfg`` asks for (rank 0 only); a failing start closes those already started."""
    chosen = names(cfg.report_to, cfg.tensorboard)
    if not is_main or not chosen:
        return Reporting(wanted=bool(chosen))
    run = RunInfo(Path(output_dir), flat_params(cfg), cfg.resume, read_state(output_dir) if cfg.resume else {})
    started: dict[str, Reporter] = {}
    try:
        for name in chosen:
            try:
                started[name] = REPORTERS[name].start(run)
            except Exception as exc:
                raise _failed(name, "starting", exc) from exc
    except BaseException:
        Reporting(started).close()
        raise
    return Reporting(started, wanted=True)
