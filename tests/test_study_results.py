"""The full-size study's committed results (docs/results/minilm_glue4_*) are what its committed runs give.

A copy of the committed specs and runs CSVs without a single run folder, as in a fresh clone: every run is read
back from its CSV row, and the final specs, each sweep's report and the combined study come out equal to the
committed files. A hand edit of a committed table, a final spec that is not what its selection chose, or a runs
CSV that no longer matches its report fails here. Nothing trains."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import sweep
from analysis.cli import OPTIMIZER_LABELS as NAMES
from experiments.sweep import final_specs, study
from experiments.sweep.report import PAPER_NAMES as TASK_TITLES
from experiments.sweep.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "docs" / "results"
# study.py's own pair of selection specs (what `python -m experiments.sweep.study` reads), relative for the clone
SELECT = tuple(p.relative_to(ROOT) for p in study.SELECT_SPECS)


@pytest.fixture
def clone(tmp_path, monkeypatch):
    """The study's specs, task definitions and committed results in a fresh folder; no runs/."""
    for rel in (Path("experiments") / "glue" / "glue_task_def.yml", *SELECT):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    results = tmp_path / "docs" / "results"
    results.mkdir(parents=True)
    for path in COMMITTED.glob("minilm_glue4_*"):
        if path.suffix in (".yml", ".csv", ".json"):
            shutil.copy(path, results / path.name)
    monkeypatch.chdir(tmp_path)
    assert not Path("runs").exists()
    return results


def final_spec_paths(select: Path) -> list[Path]:
    spec = load_spec(ROOT / select)
    paths = (COMMITTED / f"{final_specs.final_spec_name(spec.name, t)}.yml" for t in spec.tasks)
    return [p for p in paths if p.exists()]


def test_the_study_has_committed_results_to_check():
    assert [len(final_spec_paths(select)) for select in SELECT] == [4, 4]
    saved = json.loads((COMMITTED / "minilm_glue4_study.json").read_text(encoding="utf-8"))
    assert [(p["finished"], p["pending"]) for p in saved["pairs"]] == [(["rte", "mrpc", "stsb", "cola"], {})] * 2


@pytest.mark.parametrize("select", SELECT, ids=lambda p: p.stem)
def test_final_specs_are_what_the_selection_chose(clone, select):
    committed = final_spec_paths(select)
    for path in committed:
        (clone / path.name).unlink()
    tasks = ",".join(load_spec(p).tasks[0] for p in committed)
    assert final_specs.main([str(select), "--tasks", tasks]) == 0
    for path in committed:
        assert (clone / path.name).read_text(encoding="utf-8") == path.read_text(encoding="utf-8"), path.name


@pytest.mark.parametrize("select", SELECT, ids=lambda p: p.stem)
def test_every_report_comes_back_from_its_runs_csv(clone, select, capsys):
    specs = [select, *(Path("docs") / "results" / p.name for p in final_spec_paths(select))]
    for spec in specs:
        name = load_spec(spec).name
        (clone / f"{name}.json").unlink()
        assert sweep.main(["report", str(spec)]) == 0
        assert "read back from" in capsys.readouterr().out  # no folder: every run came from the CSV
        got = json.loads((clone / f"{name}.json").read_text(encoding="utf-8"))
        assert got == json.loads((COMMITTED / f"{name}.json").read_text(encoding="utf-8")), name


def test_the_combined_study_comes_back_from_the_runs_csvs(clone, capsys):
    for suffix in (".json", ".md", ".png"):
        (clone / f"minilm_glue4_study{suffix}").unlink(missing_ok=True)
    assert study.main([arg for select in SELECT for arg in ("--select", str(select))]) == 0
    for suffix in (".json", ".md"):
        got = (clone / f"minilm_glue4_study{suffix}").read_text(encoding="utf-8")
        assert got == (COMMITTED / f"minilm_glue4_study{suffix}").read_text(encoding="utf-8"), suffix
    assert (clone / "minilm_glue4_study.png").read_bytes()[:4] == b"\x89PNG"


# -------------------------------------------------------------------- docs/study.md's numbers are the study's
MEAN_STD = re.compile(r"(-?\d+\.\d) ± (\d+\.\d)")
DELTA = re.compile(r"([+−-]\d+\.\d) \(p = (\d\.\d+)\)")


def study_doc_tables() -> dict[str, dict[str, list[str]]]:
    """The study section's tables: the header's first cell -> {a row's first cell: the row's cells}."""
    text = (ROOT / "docs" / "study.md").read_text(encoding="utf-8")
    section = text.split("## The full-size study", 1)[1].split("\n## ", 1)[0]
    tables: dict[str, dict[str, list[str]]] = {}
    header = None
    for line in section.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells[0]
            tables[header] = {}
        elif not set(cells[0]) <= set("-"):
            tables[header][cells[0]] = cells
    return tables


def table_for(tables: dict, title: str) -> dict[str, list[str]]:
    found = [rows for header, rows in tables.items() if header.startswith(title)]
    assert len(found) == 1, f"docs/study.md: no single study table headed '{title} …'"
    return found[0]


def check_mean_std(cell: str, values: list[float], where: str) -> None:
    match = MEAN_STD.search(cell)
    assert match, f"{where}: no 'mean ± std' in {cell!r}"
    mean, std = float(match.group(1)), float(match.group(2))
    arr = np.asarray(values)
    assert abs(mean - arr.mean()) < 0.051 and abs(std - arr.std(ddof=1)) < 0.051, f"{where}: {cell!r}"


def check_delta(cell: str, test: dict, where: str) -> None:
    match = DELTA.search(cell)
    assert match, f"{where}: no '±d (p = …)' in {cell!r}"
    delta, p = float(match.group(1).replace("−", "-")), float(match.group(2))
    assert abs(delta - test["mean_diff"]) < 0.051, f"{where}: {cell!r} but the study has {test['mean_diff']:.3f}"
    assert abs(p - test["p"]) < 0.006 if len(match.group(2)) > 3 else abs(p - test["p"]) < 0.051, where


def test_the_study_doc_reports_the_committed_study():
    """Every finished task's table rows (setting, best- and last-epoch mean ± std, SAGE − base with its p) and each
    finished pair's four-task average in docs/study.md are the committed study.json's, to the digit shown."""
    tables = study_doc_tables()
    saved = json.loads((COMMITTED / "minilm_glue4_study.json").read_text(encoding="utf-8"))
    checked = averages = 0
    for pair in saved["pairs"]:
        final = {(f["task"], f["optimizer"]): f for f in pair["final"]}
        base, cand = NAMES[pair["baseline"]], NAMES[pair["candidate"]]
        for task in pair["finished"]:
            rows = table_for(tables, TASK_TITLES[task])
            for opt in (pair["baseline"], pair["candidate"]):
                row, f = rows[NAMES[opt]], final[(task, opt)]
                lr = float(re.search(r"lr ([\d.e-]+)", row[1]).group(1))
                assert lr == pytest.approx(f["learning_rate"]), f"docs/study.md {TASK_TITLES[task]} {NAMES[opt]}: {row[1]}"
                if opt.startswith("us"):
                    assert f"β3 {f['beta3']:g}" in row[1], f"docs/study.md {TASK_TITLES[task]} {NAMES[opt]}: {row[1]}"
                for col, epoch in ((2, "best"), (3, "last")):
                    check_mean_std(row[col], list(f[f"{epoch}_by_seed"].values()),
                                   f"docs/study.md {TASK_TITLES[task]} {NAMES[opt]} {epoch}")
            for col, epoch in ((2, "best"), (3, "last")):
                check_delta(rows[f"SAGE − {base}"][col], pair["ttests"][epoch][task],
                            f"docs/study.md {TASK_TITLES[task]} SAGE − {base} {epoch}")
            checked += 1
        if "average" in pair["ttests"]["best"]:
            averages += 1
            rows = table_for(tables, "four-task average")
            for col, epoch in ((1, "best"), (2, "last")):
                for opt, name in ((pair["baseline"], base), (pair["candidate"], cand)):
                    per_task = [final[(t, opt)][f"{epoch}_by_seed"] for t in pair["tasks"]]
                    seeds = sorted(set.intersection(*(set(s) for s in per_task)))
                    check_mean_std(rows[name][col], [np.mean([s[k] for s in per_task]) for k in seeds],
                                   f"docs/study.md four-task average {name} {epoch}")
                delta_row = [cells for first, cells in rows.items() if first.startswith(f"SAGE − {base}")]
                assert len(delta_row) == 1, f"docs/study.md four-task average: no 'SAGE − {base}' row"
                check_delta(delta_row[0][col], pair["ttests"][epoch]["average"], f"docs/study.md average {base} {epoch}")
    assert (checked, averages) == (8, 2)
