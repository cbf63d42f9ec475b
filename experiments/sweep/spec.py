"""The sweep spec: one YAML file -> a typed :class:`SweepSpec` and the list of runs it stands for.

A spec names the grid (tasks × optimizers × learning rates × β3 × seeds) and the fixed ``train.py`` settings of
every run. It is read with ``yaml.safe_load`` semantics and checked field by field, so a mistake stops the sweep
before any run starts, with one line naming the file, the line and the field.
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from data_utils.safe_load import DataFileError, parse_yaml, read_text
from data_utils.safe_paths import plain_name
from data_utils.task_def import load_task_defs
from module.bert_optim import OPTIMIZERS
from mt_dnn.config import TrainConfig

#: train.py settings the grid itself sets for each run; a spec may not fix them in ``train_args``.
GRID_FIELDS = ("train_datasets", "test_datasets", "optimizer", "learning_rate", "beta3", "seed", "output_dir",
               "resume", "overwrite", "num_threads")
TOP_FIELDS = ("name", "runs_dir", "results_dir", "tasks", "optimizers", "learning_rates", "beta3", "seeds",
              "train_args", "parallel", "threads_per_run", "gpus_per_run", "cluster", "compare", "keep_step_checkpoints")
#: Settings of each job of ``sweep.py run --executor slurm|submitit-local`` a spec may carry (its flags override
#: them): name -> (type, lowest value).
CLUSTER_FIELDS = {"partition": (str, None), "time_min": (int, 1), "cpus_per_run": (int, 1), "mem_gb": (int, 1),
                  "max_concurrent": (int, 0)}
#: store_true flags of train.py (written as a bare flag when true) and store_false ones (flag when false).
STORE_TRUE = ("fp16", "bf16", "fsdp", "adv_train")
STORE_FALSE = {"tensorboard": "--no_tensorboard"}
MAX_RUNS = 100_000  # a grid beyond this is a typo (or an attack), not a sweep anyone runs


def fmt(value: float) -> str:
    """Shortest text that reads back as the same float (1e-4 -> '0.0001', 5e-5 -> '5e-05')."""
    return repr(float(value))


class SpecError(ValueError):
    """A bad spec: the message is one line, ``file:line: field 'x': why``."""


@dataclass(frozen=True)
class OptimizerGrid:
    """One optimizer's own axes; β3 is a single dummy value for optimizers without SAGE (it changes nothing)."""
    name: str
    learning_rates: tuple[float, ...]
    beta3: tuple[float, ...]
    uses_sage: bool


@dataclass(frozen=True)
class RunSpec:
    """One train.py run of the grid."""
    task: str
    optimizer: str
    learning_rate: float
    beta3: float
    seed: int

    @property
    def config_key(self) -> tuple[str, str, float, float]:
        """Runs that differ only in the seed share a configuration."""
        return (self.task, self.optimizer, self.learning_rate, self.beta3)

    @property
    def run_id(self) -> str:
        """The run's folder under ``runs_dir``: task/optimizer/lr<lr>_beta3-<β3>_seed<seed>."""
        return f"{self.task}/{self.optimizer}/lr{fmt(self.learning_rate)}_beta3-{fmt(self.beta3)}_seed{self.seed}"


@dataclass(frozen=True)
class SweepSpec:
    name: str
    source: str
    runs_dir: Path
    results_dir: Path
    tasks: tuple[str, ...]
    optimizers: tuple[OptimizerGrid, ...]
    seeds: tuple[int, ...]
    train_args: dict[str, Any] = field(default_factory=dict)
    parallel: int = 1
    threads_per_run: int = 0
    gpus_per_run: int = 1  # on a GPU machine; more than 1 runs train.py under torchrun
    cluster: dict[str, Any] = field(default_factory=dict)  # CLUSTER_FIELDS given in the spec
    compare: Optional[tuple[str, str]] = None
    keep_step_checkpoints: bool = False  # a finished run needs only best/; step-N/ exist for --resume

    def runs(self, tasks: Optional[Sequence[str]] = None) -> list[RunSpec]:
        """Every run of the grid (of ``tasks`` only, if given), seed by seed, so a sweep stopped early has whole
        seeds of every configuration."""
        return [RunSpec(task, opt.name, lr, b3, seed)
                for seed, task, opt in itertools.product(self.seeds, self.tasks, self.optimizers)
                if tasks is None or task in tasks
                for lr, b3 in itertools.product(opt.learning_rates, opt.beta3)]

    def task_subset(self, text: Optional[str]) -> Optional[list[str]]:
        """A ``--tasks`` value (comma-separated names of this spec's tasks) as a list; None or empty: None (all).
        Lets a sweep of several days be finished, and its final specs written, task by task."""
        if not text:
            return None
        tasks = [t.strip() for t in text.split(",") if t.strip()]
        unknown = [t for t in tasks if t not in self.tasks]
        if unknown or not tasks:
            raise ValueError(f"--tasks: {', '.join(unknown) or repr(text)} is not a task of {self.source} "
                             f"({', '.join(self.tasks)})")
        return tasks

    def optimizer_names(self) -> list[str]:
        return [o.name for o in self.optimizers]


# ---------------------------------------------------------------------------------------------- YAML lines
def _key_lines(root: Optional[yaml.Node]) -> dict[tuple[str, ...], int]:
    """1-based line of every mapping key, by its path (('optimizers', 'usadamax', 'beta3') -> 7)."""
    lines: dict[tuple[str, ...], int] = {}

    def walk(node, path):
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = path + (str(key.value),)
                lines[sub] = key.start_mark.line + 1
                walk(value, sub)

    walk(root, ())
    return lines


class _Checker:
    """Builds one-line errors that name the file, the line of the field and the field."""

    def __init__(self, source: str, lines: dict[tuple[str, ...], int]):
        self.source, self.lines = source, lines

    def fail(self, path: tuple[str, ...], why: str) -> SpecError:
        line = next((self.lines[path[:k]] for k in range(len(path), 0, -1) if path[:k] in self.lines), None)
        where = f"{self.source}:{line}" if line else self.source
        return SpecError(f"{where}: field '{'.'.join(path)}': {why}")

    def number(self, path, value, kind=float) -> float:
        """YAML 1.1 reads '1e-4' as a string; accept any text float() reads, never evaluate it."""
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise self.fail(path, f"expected a number, got {value!r}")
        try:
            number = float(value)
        except ValueError:
            raise self.fail(path, f"expected a number, got {value!r}") from None
        if kind is int:
            if number != int(number):
                raise self.fail(path, f"expected an integer, got {value!r}")
            return int(number)
        return number

    def numbers(self, path, value, kind=float, low=None, high=None) -> tuple:
        items = value if isinstance(value, list) else [value]
        if not items:
            raise self.fail(path, "the list is empty")
        out = []
        for i, item in enumerate(items):
            n = self.number(path, item, kind)
            if (low is not None and n < low) or (high is not None and n >= high):
                raise self.fail(path, f"item {i + 1} ({item!r}) must be in [{low}, {high})")
            out.append(n)
        if len(set(out)) != len(out):
            raise self.fail(path, f"repeated values in {items}")
        return tuple(out)

    def names(self, path, value) -> tuple[str, ...]:
        items = value if isinstance(value, list) else [value]
        if not items or not all(isinstance(v, str) and v for v in items):
            raise self.fail(path, f"expected a name or a non-empty list of names, got {value!r}")
        if len(set(items)) != len(items):
            raise self.fail(path, f"repeated names in {items}")
        return tuple(items)


# ---------------------------------------------------------------------------------------------- parsing
def _optimizers(chk: _Checker, raw: dict) -> tuple[OptimizerGrid, ...]:
    value = raw.get("optimizers")
    if isinstance(value, list):
        value = {name: {} for name in chk.names(("optimizers",), value)}
    if not isinstance(value, dict) or not value:
        raise chk.fail(("optimizers",), "expected a list of optimizer names or a mapping name -> overrides")
    grids = []
    for name, over in value.items():
        path = ("optimizers", str(name))
        if str(name).lower() not in OPTIMIZERS:
            raise chk.fail(path, f"unknown optimizer '{name}'; known: {', '.join(OPTIMIZERS)}")
        over = over or {}
        if not isinstance(over, dict):
            raise chk.fail(path, f"expected a mapping of overrides (learning_rates, beta3), got {over!r}")
        unknown = sorted(set(over) - {"learning_rates", "beta3"})
        if unknown:
            raise chk.fail(path + (unknown[0],), "unknown field; an optimizer may override learning_rates, beta3")
        lr_path = path + ("learning_rates",) if "learning_rates" in over else ("learning_rates",)
        if over.get("learning_rates", raw.get("learning_rates")) is None:
            raise chk.fail(lr_path, f"is required (at the top level or under optimizer '{name}')")
        lrs = chk.numbers(lr_path, over.get("learning_rates", raw.get("learning_rates")), low=0.0)
        uses_sage = OPTIMIZERS[str(name).lower()][1]
        b3_path = path + ("beta3",) if "beta3" in over else ("beta3",)
        b3 = chk.numbers(b3_path, over.get("beta3", raw.get("beta3", TrainConfig.beta3)), low=0.0, high=1.0)
        if not uses_sage:
            if "beta3" in over and len(b3) > 1:
                raise chk.fail(b3_path, f"optimizer '{name}' does not use SAGE, so a β3 grid would repeat runs")
            b3 = (TrainConfig.beta3,)
        grids.append(OptimizerGrid(str(name).lower(), lrs, b3, uses_sage))
    return tuple(grids)


def _train_args(chk: _Checker, raw: Any) -> dict[str, Any]:
    raw = raw or {}
    if not isinstance(raw, dict):
        raise chk.fail(("train_args",), f"expected a mapping of train.py settings, got {raw!r}")
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    args = {}
    for key, value in raw.items():
        path = ("train_args", str(key))
        if key in GRID_FIELDS:
            raise chk.fail(path, "set by the sweep grid for each run; remove it from train_args")
        if key not in defaults:
            raise chk.fail(path, "not a train.py setting (see python train.py --help)")
        args[key] = _typed(chk, path, defaults[key], value)
    try:
        TrainConfig(train_datasets=["probe"], **args).validate()
    except ValueError as exc:
        flag = str(exc).split(":", 1)[0].lstrip("-")
        raise chk.fail(("train_args", flag) if flag in raw else ("train_args",), str(exc)) from None
    return args


#: settings whose default is None, and the type a value must have
_OPTIONAL_TYPES = {"encoder_type": int, "sage_formula": str}


def _typed(chk: _Checker, path: tuple[str, ...], default: Any, value: Any) -> Any:
    """The value in the type of the TrainConfig field (judged by its default), or a one-line error."""
    name = path[-1]
    if name == "betas":
        pair = chk.numbers(path, value)
        if len(pair) != 2:
            raise chk.fail(path, f"expected two numbers [beta1, beta2], got {value!r}")
        return pair
    if value is None and default is None:
        return None
    kind = _OPTIONAL_TYPES.get(name) if default is None else type(default)
    if kind is bool:
        if not isinstance(value, bool):
            raise chk.fail(path, f"expected true or false, got {value!r}")
        return value
    if kind in (int, float):
        return chk.number(path, value, kind)
    if not isinstance(value, str):
        raise chk.fail(path, f"expected text, got {value!r}")
    return value


def _plain(chk: _Checker, path: tuple[str, ...], name: str) -> str:
    try:
        return plain_name(name, "name")
    except ValueError as exc:
        raise chk.fail(path, str(exc).split(": ", 1)[1]) from None


def _cluster(chk: _Checker, raw: Any) -> dict[str, Any]:
    """The spec's job settings for a cluster executor, each checked against CLUSTER_FIELDS."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise chk.fail(("cluster",), f"expected a mapping of job settings ({', '.join(CLUSTER_FIELDS)})")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        path = ("cluster", str(key))
        if key not in CLUSTER_FIELDS:
            raise chk.fail(path, f"unknown job setting; known: {', '.join(CLUSTER_FIELDS)}")
        kind, low = CLUSTER_FIELDS[key]
        if kind is str:
            if not isinstance(value, str) or not value.strip():
                raise chk.fail(path, f"expected a name, got {value!r}")
            out[key] = value.strip()
            continue
        number = chk.number(path, value, int)
        if number < low:
            raise chk.fail(path, f"must be >= {low}, got {number}")
        out[key] = number
    return out


def _compare(chk: _Checker, raw: dict, names: list[str]) -> Optional[tuple[str, str]]:
    value = raw.get("compare")
    if value is None:
        return (names[0], names[1]) if len(names) == 2 else None
    pair = chk.names(("compare",), value)
    if len(pair) != 2:
        raise chk.fail(("compare",), f"expected [baseline, candidate], got {value!r}")
    for name in pair:
        if name.lower() not in names:
            raise chk.fail(("compare",), f"'{name}' is not one of the sweep's optimizers {names}")
    return (pair[0].lower(), pair[1].lower())


def parse_spec(text: str, source: str = "<spec>") -> SweepSpec:
    """Check every field and build the spec; raises :class:`SpecError` with one line naming file and field."""
    try:
        document = parse_yaml(text, source)  # bounded: aliases, depth, sizes
    except DataFileError as exc:
        raise SpecError(str(exc)) from None
    chk, raw = _Checker(source, _key_lines(document.root)), document.data
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: expected a mapping of sweep fields ({', '.join(TOP_FIELDS)})")
    unknown = sorted(set(map(str, raw)) - set(TOP_FIELDS))
    if unknown:
        raise chk.fail((unknown[0],), f"unknown field; known: {', '.join(TOP_FIELDS)}")
    for required in ("name", "runs_dir", "tasks", "optimizers", "seeds"):
        if raw.get(required) in (None, "", []):
            raise chk.fail((required,), "is required")
    if not isinstance(raw["name"], str):
        raise chk.fail(("name",), f"expected text, got {raw['name']!r}")
    _plain(chk, ("name",), raw["name"])  # names the report files under results_dir
    optimizers = _optimizers(chk, raw)
    runs_dir = Path(str(raw["runs_dir"]))
    parallel = chk.number(("parallel",), raw.get("parallel", 1), int)
    threads = chk.number(("threads_per_run",), raw.get("threads_per_run", 0), int)
    gpus_per_run = chk.number(("gpus_per_run",), raw.get("gpus_per_run", 1), int)
    if parallel < 1:
        raise chk.fail(("parallel",), f"must be >= 1, got {parallel}")
    if threads < 0:
        raise chk.fail(("threads_per_run",), f"must be >= 0 (0: torch's default), got {threads}")
    if gpus_per_run < 1:
        raise chk.fail(("gpus_per_run",), f"must be >= 1, got {gpus_per_run}")
    keep = raw.get("keep_step_checkpoints", False)
    if not isinstance(keep, bool):
        raise chk.fail(("keep_step_checkpoints",), f"expected true or false, got {keep!r}")
    train_args = _train_args(chk, raw.get("train_args"))
    tasks, seeds = _tasks(chk, raw["tasks"], train_args.get("task_def", TrainConfig.task_def)), \
        chk.numbers(("seeds",), raw["seeds"], int)
    runs = len(tasks) * len(seeds) * sum(len(o.learning_rates) * len(o.beta3) for o in optimizers)
    if runs > MAX_RUNS:
        raise SpecError(f"{source}: the grid has {runs:,} runs (tasks x seeds x learning rates x beta3), more than "
                        f"the {MAX_RUNS:,} a spec may hold; split the sweep")
    return SweepSpec(
        keep_step_checkpoints=keep, name=raw["name"], source=source, runs_dir=runs_dir,
        results_dir=Path(str(raw.get("results_dir") or runs_dir / "results")), tasks=tasks, optimizers=optimizers,
        seeds=seeds, train_args=train_args, parallel=parallel, threads_per_run=threads, gpus_per_run=gpus_per_run,
        cluster=_cluster(chk, raw.get("cluster")), compare=_compare(chk, raw, [o.name for o in optimizers]))


def _tasks(chk: _Checker, value: Any, task_def: str) -> tuple[str, ...]:
    """The task names, checked against the task-definition file when it can be read from here."""
    names = chk.names(("tasks",), value)
    for name in names:  # each names a folder under runs_dir
        _plain(chk, ("tasks",), name)
    path = Path(task_def)
    if path.is_file():
        known = load_task_defs(path)
        missing = [n for n in names if n not in known]
        if missing:
            raise chk.fail(("tasks",), f"{missing[0]!r} is not a task of {task_def}; known: {', '.join(known)}")
    return names


def load_spec(path: str | Path) -> SweepSpec:
    path = Path(path)
    try:
        text = read_text(path, "sweep spec")
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file") from None
    except DataFileError as exc:
        raise SpecError(str(exc)) from None
    return parse_spec(text, str(path))


def train_argv(spec: SweepSpec, run: RunSpec, output_dir: Path) -> list[str]:
    """The train.py flags of one run: the fixed ``train_args`` first, then the grid's own values."""
    argv: list[str] = []
    for key, value in spec.train_args.items():
        if key in STORE_TRUE:
            argv += [f"--{key}"] if value else []
        elif key in STORE_FALSE:
            argv += [] if value else [STORE_FALSE[key]]
        elif key == "betas":
            argv += ["--betas", *(str(v) for v in value)]
        elif value is None:
            continue
        else:
            argv += [f"--{key}", str(value)]
    return argv + ["--train_datasets", run.task, "--test_datasets", run.task, "--optimizer", run.optimizer,
                   "--learning_rate", fmt(run.learning_rate), "--beta3", fmt(run.beta3),
                   "--seed", str(run.seed), "--output_dir", str(output_dir)]
