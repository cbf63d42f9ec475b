#!/usr/bin/env python
"""Second phase of the paper's protocol: fresh seeds at each optimizer's setting chosen on dev.

Reads a finished selection sweep's report (``<results_dir>/<name>.json``, the configurations marked chosen) and
writes one spec per task, ``<results_dir>/<base>_final_<task>.yml``: the selection spec with that task only, each
optimizer reduced to its chosen lr (and β3 for SAGE), and new seeds. Each spec is checked by the sweep's own
parser before it is written; a selection that is not finished (a chosen configuration with fewer seeds than
the spec) is an error, not a spec from half the evidence.

A chosen learning rate at the top or bottom of its optimizer's grid is an error too: the best value may lie past
the edge, and a base optimizer tuned only to its grid's edge is under-tuned, which flatters SAGE. The message
names each task, optimizer and lr; widen the grid in the selection spec, run the new cells (``sweep.py run``
skips the finished ones), and call this again. ``--allow_edge`` writes the specs anyway, for a grid that cannot
sensibly go further.

    python -m experiments.sweep.final_specs SELECT.yml [--seeds 3,4,5,6,7] [--out_dir DIR] [--tasks rte,..]
                                            [--allow_edge]

``--tasks`` writes the specs of those tasks only, once their selection is finished (the selection sweep run
with ``sweep.py run --tasks``), so a study of several days can be finished and committed task by task.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import yaml

if not __package__:  # run by its file path, where the project's packages do not import
    print("final_specs.py: error: run it from the repository root as: python -m experiments.sweep.final_specs [flags]",
          file=sys.stderr)
    raise SystemExit(2)

from data_utils.atomic import atomic_write  # noqa: E402
from data_utils.safe_load import read_json, read_yaml  # noqa: E402
from experiments.sweep.spec import SpecError, SweepSpec, fmt, load_spec, parse_spec  # noqa: E402

N_FINAL_SEEDS = 5


def chosen_settings(spec: SweepSpec, report_path: Path,
                    tasks: Optional[Sequence[str]] = None) -> dict[str, dict[str, tuple[float, float]]]:
    """task -> optimizer -> (lr, β3) of the configurations the selection report marks chosen (``tasks``
    only, if given)."""
    tasks = list(spec.tasks if tasks is None else tasks)
    try:
        configs = read_json(report_path)["configs"]
    except FileNotFoundError:
        raise ValueError(f"{report_path}: no report (python sweep.py report {spec.source})") from None
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{report_path}: not a sweep report (no 'configs')") from None
    chosen: dict[str, dict[str, tuple[float, float]]] = {}
    for c in configs:
        if not c.get("chosen") or c["task"] not in tasks:
            continue
        if c["best"]["n"] < len(spec.seeds):
            raise ValueError(f"{report_path}: {c['task']}/{c['optimizer']}: the chosen configuration has "
                             f"{c['best']['n']} of {len(spec.seeds)} seeds; finish the selection sweep first")
        chosen.setdefault(c["task"], {})[c["optimizer"]] = (float(c["learning_rate"]), float(c["beta3"]))
    for task in tasks:
        for opt in spec.optimizer_names():
            if opt not in chosen.get(task, {}):
                raise ValueError(f"{report_path}: no chosen configuration for {task}/{opt}; "
                                 "finish the selection sweep first")
    return chosen


def edge_choices(spec: SweepSpec, chosen: dict[str, dict[str, tuple[float, float]]]) -> list[str]:
    """One line per chosen lr at the top or bottom of its optimizer's grid (a grid of one lr has no edge to
    widen: it was fixed on purpose)."""
    grids = {o.name: sorted(o.learning_rates) for o in spec.optimizers}
    found = []
    for task, settings in chosen.items():
        for opt, (lr, _) in settings.items():
            grid = grids[opt]
            if len(grid) < 2 or grid[0] < lr < grid[-1]:
                continue
            side = "top" if lr == grid[-1] else "bottom"
            found.append(f"{task}/{opt} chose lr {fmt(lr)}, the {side} of its grid "
                         f"({', '.join(fmt(v) for v in grid)})")
    return found


def final_base_name(name: str) -> str:
    return name[:-len("_select")] if name.endswith("_select") else name


def final_spec_name(select_name: str, task: str) -> str:
    """The name (and file stem) of one task's final spec, from its selection spec's name."""
    return f"{final_base_name(select_name)}_final_{task}"


def final_spec_text(spec: SweepSpec, raw: dict, task: str, chosen: dict[str, tuple[float, float]],
                    seeds: list[int]) -> str:
    """The YAML of one task's final spec: the selection spec's other fields unchanged."""
    sage = {o.name: o.uses_sage for o in spec.optimizers}
    optimizers = {}
    for opt in spec.optimizer_names():
        lr, beta3 = chosen[opt]
        optimizers[opt] = {"learning_rates": [lr]} | ({"beta3": [beta3]} if sage[opt] else {})
    out = {k: v for k, v in raw.items() if k not in ("learning_rates", "beta3")}
    out |= {"name": final_spec_name(spec.name, task), "tasks": [task], "optimizers": optimizers,
            "seeds": seeds}
    head = (f"# Written by experiments/sweep/final_specs.py from {spec.source}: the settings chosen on dev with "
            f"seeds {list(spec.seeds)}, fresh seeds.\n")
    return head + yaml.safe_dump(out, sort_keys=False)


def write_final_specs(select_path: Path, seeds: list[int] | None = None, out_dir: Path | None = None,
                      tasks: Optional[str] = None, allow_edge: bool = False) -> list[Path]:
    """``tasks``: a --tasks value (comma-separated), None for every task of the selection spec; ``allow_edge``:
    write the specs even where a chosen lr is at its grid's edge."""
    spec = load_spec(select_path)
    tasks = spec.task_subset(tasks) or list(spec.tasks)
    seeds = seeds or list(range(max(spec.seeds) + 1, max(spec.seeds) + 1 + N_FINAL_SEEDS))
    reused = sorted(set(seeds) & set(spec.seeds))
    if reused:
        raise ValueError(f"--seeds: {reused} already chose the settings; the final seeds must be fresh")
    raw = read_yaml(select_path)  # load_spec above read the same text within the same bounds
    chosen = chosen_settings(spec, spec.results_dir / f"{spec.name}.json", tasks)
    edges = [] if allow_edge else edge_choices(spec, chosen)
    if edges:
        raise ValueError(f"{spec.source}: {'; '.join(edges)}: widen the grid past it and run the new cells "
                         "(or --allow_edge)")
    out_dir = out_dir or spec.results_dir
    texts = {}
    for task in tasks:
        path = out_dir / f"{final_spec_name(spec.name, task)}.yml"
        texts[path] = final_spec_text(spec, raw, task, chosen[task], seeds)
        parse_spec(texts[path], str(path))  # every spec checked before any is written
    for path, text in texts.items():
        with atomic_write(path) as handle:
            handle.write(text)
    return list(texts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", help="the selection sweep's spec (its report must be written)")
    p.add_argument("--seeds", help=f"comma-separated fresh seeds (default: the {N_FINAL_SEEDS} after the "
                                   "selection seeds)")
    p.add_argument("--out_dir", help="where to write the specs (default: the selection spec's results_dir)")
    p.add_argument("--tasks", help="comma-separated: only these tasks' specs (their selection must be finished)")
    p.add_argument("--allow_edge", action="store_true",
                   help="write the specs even where a chosen lr is the top or bottom of its grid")
    args = p.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    except ValueError:
        p.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    try:
        paths = write_final_specs(Path(args.spec), seeds, Path(args.out_dir) if args.out_dir else None,
                                  args.tasks, args.allow_edge)
    except (SpecError, ValueError) as exc:
        print(f"final_specs.py: error: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
