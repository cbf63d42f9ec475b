"""Sweeps that really run train.py (tiny random BERT, synthetic shards): every run finishes and is reported,
finished runs are skipped, a killed run resumes with --resume to the same weights as an uninterrupted one, a run
killed before its first checkpoint starts again, changed flags and failed runs are reported, and the heatmap
command writes a PNG."""
from __future__ import annotations

import csv
import json
import random
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel

import sweep as sweep_cli
from conftest import tiny_bert_config
from data_utils.shards import format_line
from experiments.sweep import runner
from experiments.sweep.spec import RunSpec, load_spec, train_argv
from mt_dnn.config import parse_args
from mt_dnn.trainer import Trainer

pytestmark = [pytest.mark.subprocess]

TASK_YAML = """
pairs:
  task_type: Classification
  data_format: PremiseAndOneHypothesis
  n_class: 2
  metric_meta: [ACC, F1]
  split_names: [train, dev]
"""

SPEC = """
name: tiny
runs_dir: {root}/{runs}
results_dir: {root}/results
tasks: [pairs]
optimizers:
  adamax: {{}}
  usadamax: {{beta3: [0.6, 0.8]}}
learning_rates: [2.0e-3]
seeds: [1, 2]
parallel: 2
threads_per_run: 1
train_args:
  task_def: {root}/tasks.yml
  data_dir: {root}/shards
  init_checkpoint: {root}/tiny-bert
  epochs: {epochs}
  batch_size: 8
  max_seq_len: 64
  optim_impl: foreach
  tensorboard: false
  log_every: 2
  save_every_steps: {save_every}
"""


def _pairs(rng: random.Random, n: int) -> list[str]:
    """The label is the first content token, so the task is learnable in a few steps."""
    lines = []
    for i in range(n):
        y = rng.randint(0, 1)
        a = [2, 10 + y] + [rng.randint(20, 120) for _ in range(rng.randint(3, 12))] + [3]
        b = [rng.randint(20, 120) for _ in range(rng.randint(3, 8))] + [3]
        lines.append(format_line(str(i), y, a + b, [0] * len(a) + [1] * len(b)))
    return lines


@pytest.fixture(scope="module", autouse=True)
def cpu_runs():
    """The tiny sweeps run on the CPU wherever the tests run: on a GPU machine two runs at a time would each
    need a GPU of their own (tests/test_sweep_devices.py covers GPUs)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CUDA_VISIBLE_DEVICES", "")
        yield


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    return sweep_workspace(tmp_path_factory.mktemp("sweep"))


def sweep_workspace(root: Path) -> Path:
    """A tiny BERT, the one-task YAML and its shards under ``root``: what the sweep specs of the tests name."""
    torch.manual_seed(0)
    AutoModel.from_config(tiny_bert_config()).save_pretrained(root / "tiny-bert")
    (root / "tasks.yml").write_text(TASK_YAML, encoding="utf-8")
    (root / "shards").mkdir()
    rng = random.Random(0)
    for split, n in (("train", 48), ("dev", 24)):
        (root / "shards" / f"pairs_{split}.jsonl").write_text("\n".join(_pairs(rng, n)) + "\n", encoding="utf-8")
    return root


def write_spec(ws: Path, name: str, runs: str, epochs: int = 2, save_every: int = 0) -> Path:
    path = ws / f"{name}.yml"
    path.write_text(SPEC.format(root=ws, runs=runs, epochs=epochs, save_every=save_every), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def swept(ws):
    """The whole tiny grid run once through the CLI: (spec path, first run's stdout)."""
    path = write_spec(ws, "tiny", "runs")
    import contextlib
    import io
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = sweep_cli.main(["run", str(path)])
    assert code == 0, out.getvalue()
    return path, out.getvalue()


def test_sweep_runs_every_run_and_reports(swept, ws):
    path, stdout = swept
    spec = load_spec(path)
    runs = spec.runs()
    assert len(runs) == 6  # adamax: 1 setting, usadamax: 2 β3 values; × 2 seeds
    assert stdout.count(" done ") == 6
    for run in runs:
        folder = runner.run_dir(spec, run)
        assert (folder / runner.DONE).is_file() and (folder / "best" / "model.safetensors").is_file()
        assert len((folder / "metrics.jsonl").read_text().splitlines()) == 2
        assert not list(folder.glob("step-*")) and not (folder / "latest").exists()  # pruned once finished
        assert json.loads((folder / runner.RUN_INFO).read_text())["train_argv"] == train_argv(spec, run, folder)
    rows = list(csv.DictReader((ws / "results" / "tiny_runs.csv").open(encoding="utf-8")))
    assert sorted(r["run_id"] for r in rows) == sorted(r.run_id for r in runs)
    for row in rows:  # the CSV's numbers are the runs' own metrics.jsonl numbers
        records = [json.loads(x) for x in (Path(row["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
        assert float(row["best_score"]) == pytest.approx(max(r["glue_average"] for r in records))
        assert float(row["last_pairs_dev_F1"]) == pytest.approx(records[-1]["dev"]["pairs_dev"]["F1"])
    md = (ws / "results" / "tiny.md").read_text()
    assert "| optimizer | setting (chosen on dev) | seeds | pairs (Acc/F1) | Avg |" in md
    assert "| usadamax − adamax | paired t-test over seeds |" in md and "n = 2)" in md


def test_finished_runs_are_skipped(swept, ws, capsys):
    path, _ = swept
    spec = load_spec(path)
    logs = {r.run_id: (runner.run_dir(spec, r) / runner.LOG).read_text() for r in spec.runs()}
    assert sweep_cli.main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.count(" skipped ") == 6 and " done " not in out
    assert logs == {r.run_id: (runner.run_dir(spec, r) / runner.LOG).read_text() for r in spec.runs()}
    assert sweep_cli.main(["status", str(path)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "6 done"


def test_heatmap_command_writes_png(swept, ws, capsys):
    path, _ = swept
    png = ws / "out" / "heat.png"
    assert sweep_cli.main(["heatmap", str(path), "--task", "pairs", "--optimizer", "usadamax",
                           "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert sweep_cli.main(["heatmap", str(path), "--task", "pairs", "--optimizer", "adam"]) == 2
    assert "optimizer 'adam' is not in" in capsys.readouterr().err


def test_changed_flags_are_an_error_not_a_silent_reuse(swept, ws, capsys):
    path = write_spec(ws, "tiny-3-epochs", "runs", epochs=3)
    assert sweep_cli.main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sweep.py: error: ") and "\n" not in err
    assert "sweep_run.json: this run was started with other train.py flags ('2' vs '3')" in err


def test_killed_run_resumes_with_resume_to_the_uninterrupted_weights(ws):
    spec = load_spec(write_spec(ws, "resume", "runs-resume", save_every=4))
    reference = load_spec(write_spec(ws, "reference", "runs-reference", save_every=4))
    run = RunSpec("pairs", "usadamax", 2e-3, 0.6, 1)
    # the reference: killed before its first checkpoint (a stale file, no `latest`) -> started again from scratch
    folder = runner.write_run_info(reference, run)
    (folder / "metrics.jsonl").write_text('{"epoch": 0, "dev": {}, "glue_average": 1}\n', encoding="utf-8")
    assert runner.state(reference, run) == "restart"
    assert runner.execute(reference, run).status == "done"
    assert len((folder / "metrics.jsonl").read_text().splitlines()) == 2
    started = (folder / runner.LOG).read_text().splitlines()[0]  # train.py replaces the attempt on purpose
    assert " restart: " in started and " --overwrite" in started and " --resume" not in started
    # the killed run: train.py's own Trainer stops after 6 of 12 steps; its newest checkpoint is step 4
    folder = runner.write_run_info(spec, run)
    threads = torch.get_num_threads()
    try:  # the same thread count as the sweep's runs, so float sums add up in the same order
        # on the CPU, as the sweep's runs (this process may have set up CUDA before the variable hid it)
        Trainer(parse_args(train_argv(spec, run, folder) + ["--num_threads", "1", "--device", "cpu"])).fit(
            stop_after_steps=6)
    finally:
        torch.set_num_threads(threads)
    assert (folder / "latest").read_text().strip() == "step-4"
    assert runner.state(spec, run) == "resume"
    outcome = runner.execute(spec, run)
    assert outcome.status == "done"
    log = (folder / runner.LOG).read_text()
    assert "--resume" in log.splitlines()[0] and "resumed from" in log
    a = load_file(str(folder / "best" / "model.safetensors"))
    b = load_file(str(runner.run_dir(reference, run) / "best" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    last = lambda f: json.loads((f / "metrics.jsonl").read_text().splitlines()[-1])["dev"]
    assert last(folder) == last(runner.run_dir(reference, run))


def test_failed_run_is_reported_and_not_marked_done(ws, capsys):
    path = write_spec(ws, "broken", "runs-broken")
    path.write_text(path.read_text().replace(f"{ws}/shards", f"{ws}/no-shards").replace("seeds: [1, 2]", "seeds: [1]")
                    .replace("usadamax: {beta3: [0.6, 0.8]}", "usadamax: {}"), encoding="utf-8")
    assert sweep_cli.main(["run", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("sweep.py: error: 2 run(s) failed: pairs/adamax/lr0.002_beta3-0.75_seed1 (")
    assert "\n" not in err
    spec = load_spec(path)
    for run in spec.runs():
        folder = runner.run_dir(spec, run)
        assert not (folder / runner.DONE).exists()
        assert "no-shards" in (folder / runner.LOG).read_text()
        assert runner.state(spec, run) == "restart"


def test_a_run_locked_by_a_live_sweep_is_left_alone_and_a_stale_lock_is_taken_over(swept, ws):
    import socket
    import subprocess
    import sys
    spec = load_spec(swept[0])
    run = spec.runs()[0]
    lock = runner.run_dir(spec, run) / runner.LOCK
    lock.write_text(f"1 {socket.gethostname()}", encoding="utf-8")  # pid 1 is always alive
    assert runner.execute(spec, run).status == "busy" and lock.is_file()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(f"{dead.stdout.strip()} {socket.gethostname()}", encoding="utf-8")
    assert runner.execute(spec, run).status == "skipped" and not lock.exists()
    fresh = RunSpec("pairs", "adamax", 2e-3, 0.75, 9)
    runner.run_dir(spec, fresh).mkdir(parents=True)
    (runner.run_dir(spec, fresh) / runner.LOCK).write_text(f"1 {socket.gethostname()}", encoding="utf-8")
    assert runner.state(spec, fresh) == "running"
    if Path("/proc/self/stat").is_file():  # a killed process not yet reaped (a zombie) holds no lock
        zombie = subprocess.Popen([sys.executable, "-c", "pass"])
        deadline = time.monotonic() + 60
        while Path(f"/proc/{zombie.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        (runner.run_dir(spec, fresh) / runner.LOCK).write_text(f"{zombie.pid} {socket.gethostname()}",
                                                               encoding="utf-8")
        assert runner.state(spec, fresh) == "new"
        zombie.wait()
