"""Entry points: benches, experiment scripts and the script generator run as modules from the repository root
(``python -m bench.optim_step``); no file outside tests/ edits ``sys.path``, and a script started by its file
path (where the project's packages do not import) refuses in one line that names the module command."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUARD = "if not __package__:"


def project_python_files() -> list[Path]:
    """Every .py file of the project outside tests/ (hidden folders, data and run outputs left out)."""
    skip = {"tests", "data", "demo_out", "runs", "checkpoints", "node_modules"}
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and not (folder == str(ROOT) and d in skip)]
        found += [Path(folder) / f for f in files if f.endswith(".py")]
    return sorted(found)


#: Scripts MT-DNN's users start by their file path: run that way, they re-run themselves as the module.
BY_PATH = {"experiments/glue/glue_prepro.py": "experiments.glue.glue_prepro"}


def guarded_scripts() -> list[Path]:
    return [p for p in project_python_files() if GUARD in p.read_text(encoding="utf-8")]


def refusing_scripts() -> list[Path]:
    return [p for p in guarded_scripts() if str(p.relative_to(ROOT)) not in BY_PATH]


def test_no_file_outside_tests_patches_sys_path():
    assert [str(p.relative_to(ROOT)) for p in project_python_files() if "sys.path" in p.read_text("utf-8")] == []


def test_every_bench_and_experiment_script_with_project_imports_is_guarded():
    names = {str(p.relative_to(ROOT)) for p in guarded_scripts()}
    assert {"bench/optim_step.py", "bench/train_throughput.py", "bench/gpu_check.py", "experiments/glue/glue_prepro.py",
            "experiments/sweep/final_specs.py", "experiments/sweep/study.py", "experiments/demo/run_demo.py",
            "scripts/generate.py"} <= names


@pytest.mark.subprocess
@pytest.mark.parametrize("path", refusing_scripts(), ids=lambda p: str(p.relative_to(ROOT)))
def test_run_by_file_path_is_refused_with_the_module_command(path, tmp_path):
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    proc = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == f"{path.name}: error: run it from the repository root as: python -m {module} [flags]\n"


@pytest.mark.subprocess
def test_the_module_command_runs_from_the_repository_root():
    proc = subprocess.run([sys.executable, "-m", "experiments.glue.glue_prepro", "--help"], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: glue_prepro.py"), proc.stderr


@pytest.mark.subprocess
@pytest.mark.parametrize("script, module", sorted(BY_PATH.items()))
def test_mtdnns_by_path_command_runs_as_the_module_from_any_directory(script, module, tmp_path):
    """MT-DNN's README types `python experiments/glue/glue_prepro.py --root_dir data`: the same as the module
    command, relative paths meaning the caller's directory."""
    by_path = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True,
                             timeout=300, cwd=tmp_path)
    as_module = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True,
                               timeout=300, cwd=ROOT)
    assert (by_path.returncode, by_path.stdout) == (0, as_module.stdout) and as_module.returncode == 0
    (tmp_path / "data" / "RTE").mkdir(parents=True)
    (tmp_path / "data" / "RTE" / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n"
                                                        "7\tA dog runs.\tAn animal moves.\tentailment\n")
    run = subprocess.run([sys.executable, str(ROOT / script), "--root_dir", "data"], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    # the caller's data/, not the checkout's
    assert (tmp_path / "data" / "canonical_data" / "rte_train.tsv").read_text() == \
        "7\tentailment\tA dog runs.\tAn animal moves.\n"


@pytest.mark.subprocess
@pytest.mark.parametrize("script", ["predict.py", "calc_metrics.py", "prepare_distillation_data.py", "extractor.py"])
def test_mtdnn_tool_scripts_run_by_file_path_from_the_repository_root(script):
    """MT-DNN's tools are top-level scripts there and here: ``python predict.py ...`` as their users type it."""
    proc = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.startswith(f"usage: {script}"), proc.stderr
