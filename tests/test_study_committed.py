"""The full-size study's committed results (docs/results/minilm_glue4_*) are what its committed runs give.

A copy of the committed specs and runs CSVs without a single run folder, as in a fresh clone: every run is read
back from its CSV row, and the final specs, each sweep's report and the combined study come out equal to the
committed files. A hand edit of a committed table, a final spec that is not what its selection chose, or a runs
CSV that no longer matches its report fails here. Nothing trains."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import sweep
from experiments.sweep import final_specs, study
from experiments.sweep.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "docs" / "results"
SELECT = {fam: Path("experiments") / "sweep" / f"minilm_glue4_{fam}_select.yml" for fam in ("adamax", "adamw")}


@pytest.fixture
def clone(tmp_path, monkeypatch):
    """The study's specs, task definitions and committed results in a fresh folder; no runs/."""
    for rel in (Path("experiments") / "glue" / "glue_task_def.yml", *SELECT.values()):
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


def final_spec_paths(fam: str) -> list[Path]:
    spec = load_spec(ROOT / SELECT[fam])
    return [COMMITTED / f"{final_specs.final_spec_name(spec.name, t)}.yml" for t in spec.tasks
            if (COMMITTED / f"{final_specs.final_spec_name(spec.name, t)}.yml").exists()]


def test_the_study_has_committed_results_to_check():
    assert len(final_spec_paths("adamax")) == 4 and len(final_spec_paths("adamw")) >= 3
    assert (COMMITTED / "minilm_glue4_study.json").is_file()


@pytest.mark.parametrize("fam", sorted(SELECT))
def test_final_specs_are_what_the_selection_chose(clone, fam):
    committed = final_spec_paths(fam)
    for path in committed:
        (clone / path.name).unlink()
    tasks = ",".join(load_spec(p).tasks[0] for p in committed)
    assert final_specs.main([str(SELECT[fam]), "--tasks", tasks]) == 0
    for path in committed:
        assert (clone / path.name).read_text(encoding="utf-8") == path.read_text(encoding="utf-8"), path.name


@pytest.mark.parametrize("fam", sorted(SELECT))
def test_every_report_comes_back_from_its_runs_csv(clone, fam, capsys):
    specs = [SELECT[fam], *(Path("docs") / "results" / p.name for p in final_spec_paths(fam))]
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
    assert study.main(["--select", str(SELECT["adamax"]), "--select", str(SELECT["adamw"])]) == 0
    for suffix in (".json", ".md"):
        got = (clone / f"minilm_glue4_study{suffix}").read_text(encoding="utf-8")
        assert got == (COMMITTED / f"minilm_glue4_study{suffix}").read_text(encoding="utf-8"), suffix
    assert (clone / "minilm_glue4_study.png").read_bytes()[:4] == b"\x89PNG"
