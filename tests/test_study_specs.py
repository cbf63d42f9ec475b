"""The full-size study's specs (docs/study.md), checked by the sweep's own loader, and final_specs.py (fresh seeds at
the settings a finished selection sweep chose) on a hand-written selection report. Nothing here trains."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from experiments.sweep import final_specs
from experiments.sweep.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
SPECS = {fam: ROOT / "experiments" / "sweep" / f"minilm_glue4_{fam}_select.yml" for fam in ("adamax", "adamw")}
PAIRS = {"adamax": ("adamax", "usadamax"), "adamw": ("adamw", "usadamw")}


@pytest.mark.parametrize("fam", sorted(SPECS))
def test_selection_specs_follow_the_protocol(fam, monkeypatch):
    monkeypatch.chdir(ROOT)  # the loader checks task names against the task_def file, relative to the cwd
    spec = load_spec(SPECS[fam])
    base, sage = PAIRS[fam]
    assert spec.tasks == ("rte", "mrpc", "stsb", "cola")
    assert spec.compare == (base, sage) and spec.seeds == (1, 2)
    args = spec.train_args
    assert (args["epochs"], args["max_seq_len"], args["batch_size"]) == (3, 128, 32)
    assert "max_train_samples" not in args  # full training sets
    grids = {o.name: o for o in spec.optimizers}
    assert set(grids) == {base, sage} and not grids[base].uses_sage and grids[sage].uses_sage
    assert grids[sage].beta3 == (0.75, 0.9)
    assert len(grids[base].learning_rates) >= 3 and len(grids[sage].learning_rates) >= 3
    for b, s in zip(sorted(grids[base].learning_rates), sorted(grids[sage].learning_rates)):
        assert 2 <= s / b <= 5  # SAGE's grid 2-5x higher than the base grid's first values, as the authors advise
    # the base grid reaches past the top lr of the first grid, which RTE's Adamax selection chose (its edge):
    # Adamax 1e-4..1e-3 (5 values: 5e-4 was chosen next, so 1e-3 was added too), AdamW 2e-5..3e-4 (5 values:
    # RTE's AdamW selection chose 5e-5, the bottom, so 2e-5 was added)
    n_base = {"adamax": 5, "adamw": 5}[fam]
    assert len(grids[base].learning_rates) == n_base
    assert max(grids[base].learning_rates) == {"adamax": 1e-3, "adamw": 3e-4}[fam]
    assert min(grids[base].learning_rates) == {"adamax": 1e-4, "adamw": 2e-5}[fam]
    # SAGE's grid: 3 values, and Adamax-SAGE's 2e-3 added when MRPC's selection chose 1e-3, the top of its grid;
    # AdamW-SAGE's 5e-5 when CoLA's selection chose 1e-4, the bottom of its grid
    n_sage = {"adamax": 4, "adamw": 4}[fam]
    assert len(grids[sage].learning_rates) == n_sage
    assert max(grids[sage].learning_rates) == {"adamax": 2e-3, "adamw": 5e-4}[fam]
    assert min(grids[sage].learning_rates) == {"adamax": 2e-4, "adamw": 5e-5}[fam]
    # per task and seed: the base grid + n_sage x 2 SAGE configurations
    assert len(spec.runs()) == 4 * 2 * (n_base + n_sage * 2)


def test_the_two_selection_specs_share_settings_but_no_run(monkeypatch):
    monkeypatch.chdir(ROOT)
    a, w = load_spec(SPECS["adamax"]), load_spec(SPECS["adamw"])
    assert a.runs_dir == w.runs_dir and a.train_args == w.train_args
    assert not {r.run_id for r in a.runs()} & {r.run_id for r in w.runs()}


CHOSEN = {  # task -> optimizer -> (lr, beta3); adamax's beta3 is the grid's dummy value; no lr at a grid edge
    "rte": {"adamax": (3e-4, 0.75), "usadamax": (5e-4, 0.9)},
    "mrpc": {"adamax": (5e-4, 0.75), "usadamax": (1e-3, 0.75)},
    "stsb": {"adamax": (2e-4, 0.75), "usadamax": (5e-4, 0.9)},
    "cola": {"adamax": (3e-4, 0.75), "usadamax": (5e-4, 0.75)},
}


def write_report(spec_path: Path, n_seeds=2, drop=None, chosen_settings=None) -> None:
    """A selection report with ``n_seeds`` per configuration that marks ``chosen_settings`` (default CHOSEN)
    chosen, leaving out the chosen configuration of ``drop`` (task, optimizer)."""
    spec = load_spec(spec_path)
    chosen_settings = chosen_settings or CHOSEN
    configs = []
    for run in spec.runs():
        if run.seed != spec.seeds[0]:
            continue
        chosen = chosen_settings[run.task][run.optimizer] == (run.learning_rate, run.beta3)
        if chosen and (run.task, run.optimizer) == drop:
            continue
        configs.append({"task": run.task, "optimizer": run.optimizer, "learning_rate": run.learning_rate,
                        "beta3": run.beta3, "best": {"mean": 70.0, "std": 1.0, "n": n_seeds},
                        "chosen": chosen})
    spec.results_dir.mkdir(parents=True, exist_ok=True)
    (spec.results_dir / f"{spec.name}.json").write_text(json.dumps({"configs": configs}), encoding="utf-8")


@pytest.fixture
def select_spec(tmp_path, monkeypatch):
    """The committed Adamax selection spec, run from a copy of the repo layout it needs (the task_def)."""
    (tmp_path / "experiments" / "glue").mkdir(parents=True)
    shutil.copy(ROOT / "experiments" / "glue" / "glue_task_def.yml", tmp_path / "experiments" / "glue")
    shutil.copy(SPECS["adamax"], tmp_path / "select.yml")
    monkeypatch.chdir(tmp_path)
    return Path("select.yml")


def test_final_specs_run_the_chosen_settings_with_fresh_seeds(select_spec):
    write_report(select_spec)
    assert final_specs.main([str(select_spec)]) == 0
    select = load_spec(select_spec)
    for task, chosen in CHOSEN.items():
        path = Path("docs/results") / f"minilm_glue4_adamax_final_{task}.yml"
        spec = load_spec(path)
        assert spec.name == f"minilm_glue4_adamax_final_{task}" and spec.tasks == (task,)
        assert spec.seeds == (3, 4, 5, 6, 7)
        assert {(r.optimizer, r.learning_rate, r.beta3, r.seed) for r in spec.runs()} == {
            (opt, lr, b3, seed) for opt, (lr, b3) in chosen.items() for seed in (3, 4, 5, 6, 7)}
        assert len(spec.runs()) == 10
        # everything else as in the selection spec: the same runs_dir, flags, comparison
        assert (spec.runs_dir, spec.train_args, spec.compare, spec.parallel) == (
            select.runs_dir, select.train_args, select.compare, select.parallel)


def test_final_specs_refuse_an_unfinished_selection_and_reused_seeds(select_spec, capsys):
    write_report(select_spec, n_seeds=1)
    assert final_specs.main([str(select_spec)]) == 2
    assert ("rte/adamax: the chosen configuration has 1 of 2 seeds; finish the selection sweep first"
            in capsys.readouterr().err)
    write_report(select_spec, drop=("cola", "usadamax"))
    assert final_specs.main([str(select_spec)]) == 2
    assert "no chosen configuration for cola/usadamax" in capsys.readouterr().err
    write_report(select_spec)
    assert final_specs.main([str(select_spec), "--seeds", "2,3,4,5,6"]) == 2
    assert "--seeds: [2] already chose the settings" in capsys.readouterr().err
    assert not list(Path("docs/results").glob("*.yml"))  # nothing written by a refused call
    Path("docs/results/minilm_glue4_adamax_select.json").unlink()
    assert final_specs.main([str(select_spec)]) == 2
    assert "no report (python sweep.py report select.yml)" in capsys.readouterr().err


def test_final_specs_for_the_finished_tasks_only(select_spec, capsys):
    write_report(select_spec, drop=("cola", "usadamax"))  # cola's selection unfinished, rte's done
    assert final_specs.main([str(select_spec), "--tasks", "rte"]) == 0
    assert sorted(p.name for p in Path("docs/results").glob("*.yml")) == ["minilm_glue4_adamax_final_rte.yml"]
    spec = load_spec(Path("docs/results/minilm_glue4_adamax_final_rte.yml"))
    assert {(r.optimizer, r.learning_rate, r.beta3) for r in spec.runs()} == {
        (opt, lr, b3) for opt, (lr, b3) in CHOSEN["rte"].items()}
    capsys.readouterr()
    assert final_specs.main([str(select_spec), "--tasks", "rte,cola"]) == 2
    assert "no chosen configuration for cola/usadamax" in capsys.readouterr().err
    assert final_specs.main([str(select_spec), "--tasks", "sst"]) == 2
    assert capsys.readouterr().err.strip() == ("final_specs.py: error: --tasks: sst is not a task of select.yml "
                                               "(rte, mrpc, stsb, cola)")


def test_final_specs_refuse_a_chosen_lr_at_the_edge_of_its_grid(select_spec, capsys):
    """The edge rule: Adamax's grid is 1e-4..1e-3, Adamax-SAGE's 2e-4..2e-3; a choice at either end stops."""
    edged = {task: dict(settings) for task, settings in CHOSEN.items()}
    edged["stsb"]["adamax"] = (1e-3, 0.75)  # top
    edged["cola"]["usadamax"] = (2e-4, 0.9)  # bottom
    write_report(select_spec, chosen_settings=edged)
    assert final_specs.main([str(select_spec)]) == 2
    assert capsys.readouterr().err.strip() == (
        "final_specs.py: error: select.yml: stsb/adamax chose lr 0.001, the top of its grid "
        "(0.0001, 0.0002, 0.0003, 0.0005, 0.001); cola/usadamax chose lr 0.0002, the bottom of its grid "
        "(0.0002, 0.0005, 0.001, 0.002): widen the grid past it and run the new cells (or --allow_edge)")
    assert not list(Path("docs/results").glob("*.yml"))  # nothing written
    # the tasks whose choices are inside their grids go ahead on their own
    assert final_specs.main([str(select_spec), "--tasks", "rte,mrpc"]) == 0
    assert final_specs.main([str(select_spec), "--tasks", "stsb"]) == 2
    assert "stsb/adamax chose lr 0.001, the top" in capsys.readouterr().err
    assert final_specs.main([str(select_spec), "--allow_edge"]) == 0
    spec = load_spec(Path("docs/results/minilm_glue4_adamax_final_stsb.yml"))
    assert {(r.optimizer, r.learning_rate) for r in spec.runs()} == {("adamax", 1e-3), ("usadamax", 5e-4)}


def test_edge_rule_on_grids_of_one_two_and_three_values():
    from experiments.sweep.spec import parse_spec
    spec = parse_spec("name: e\nruns_dir: r\ntasks: [rte]\nseeds: [1]\ntrain_args: {task_def: " +
                      str(ROOT / "experiments/glue/glue_task_def.yml") + "}\noptimizers:\n"
                      "  adamax: {learning_rates: [1.0e-4]}\n  adamw: {learning_rates: [1.0e-4, 2.0e-4]}\n"
                      "  usadamax: {learning_rates: [1.0e-4, 2.0e-4, 3.0e-4], beta3: [0.9]}\n")
    edges = final_specs.edge_choices(spec, {"rte": {"adamax": (1e-4, 0.75), "adamw": (2e-4, 0.75),
                                                    "usadamax": (2e-4, 0.9)}})
    assert edges == ["rte/adamw chose lr 0.0002, the top of its grid (0.0001, 0.0002)"]  # one lr: fixed on purpose


def test_the_committed_study_chose_inside_its_grids(monkeypatch):
    """The finished tasks of the committed selection reports (docs/results) passed the edge rule."""
    monkeypatch.chdir(ROOT)
    for fam in SPECS:
        spec = load_spec(SPECS[fam])
        done = [t for t in spec.tasks
                if (spec.results_dir / f"{final_specs.final_spec_name(spec.name, t)}.yml").exists()]
        assert "rte" in done and "mrpc" in done
        chosen = final_specs.chosen_settings(spec, spec.results_dir / f"{spec.name}.json", done)
        assert final_specs.edge_choices(spec, chosen) == []


def test_study_driver_runs_selection_then_final_per_task_and_pair(tmp_path):
    """run_glue4_study.sh with a stand-in Python that records its arguments: the order of the study's steps."""
    import os
    import subprocess
    log = tmp_path / "calls.txt"
    fake = tmp_path / "python"
    fake.write_text(f'#!/usr/bin/env bash\necho "$*" >> {log}\n', encoding="utf-8")
    fake.chmod(0o755)
    env = dict(os.environ, PYTHON=str(fake), TASKS="rte cola", PAIRS="adamax adamw", PARALLEL="3")
    for skip, flag in ((None, " --skip_recorded"), ("0", "")):  # by default, recorded runs are not trained again
        log.unlink(missing_ok=True)
        env.pop("SKIP_RECORDED", None)
        env.update({"SKIP_RECORDED": skip} if skip else {})
        subprocess.run(["bash", str(ROOT / "experiments" / "sweep" / "run_glue4_study.sh")], env=env, check=True)
        calls = log.read_text(encoding="utf-8").splitlines()
        expected = []
        for task in ("rte", "cola"):
            for fam in ("adamax", "adamw"):
                select = f"experiments/sweep/minilm_glue4_{fam}_select.yml"
                expected += [f"sweep.py run {select} --tasks {task} --parallel 3{flag}",
                             f"-m experiments.sweep.final_specs {select} --tasks {task}",
                             f"sweep.py run docs/results/minilm_glue4_{fam}_final_{task}.yml --parallel 3{flag}"]
        assert calls == expected + ["-m experiments.sweep.study"]
