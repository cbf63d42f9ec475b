"""A sweep through submitit (experiments/sweep/cluster.py) without a cluster: the same spec through submitit's local
executor trains the same runs as the local pool (equal scores in the runs CSV, a byte-identical report), a run
killed mid-way is resumed by the next `sweep.py run --executor submitit-local` to the uninterrupted weights, the
sbatch script of `--executor slurm` (a fake sbatch/srun on PATH) carries the job settings, and a missing scheduler,
a missing submitit or a setting the executor cannot honour is one line before anything is written."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import sweep as sweep_cli
from experiments.sweep import runner
from experiments.sweep.spec import RunSpec, SpecError, load_spec, train_argv
from mt_dnn.config import parse_args
from mt_dnn.trainer import Trainer
from test_sweep_runs import SPEC, cpu_runs, sweep_workspace  # noqa: F401 (cpu_runs: CPU runs here too)

pytestmark = [pytest.mark.subprocess]


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    return sweep_workspace(tmp_path_factory.mktemp("cluster"))


def write_spec(ws: Path, runs: str, seeds: str = "[1, 2]") -> Path:
    """Adamax and Adamax-SAGE (one β3), 2 seeds: 4 runs, with a checkpoint every 4 steps (for the killed run)."""
    text = SPEC.format(root=ws, runs=runs, epochs=2, save_every=4)
    text = text.replace("usadamax: {beta3: [0.6, 0.8]}", "usadamax: {beta3: [0.6]}").replace("seeds: [1, 2]",
                                                                                          f"seeds: {seeds}")
    path = ws / f"{runs}.yml"
    path.write_text(text, encoding="utf-8")
    return path


def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = sweep_cli.main(["run", *argv])
    return code, out.getvalue()


def results(spec) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(spec.results_dir.iterdir())}


def rows_without_seconds(data: bytes) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(io.StringIO(data.decode()))]


@pytest.fixture(scope="module")
def both(ws):
    """The spec run by the local pool, its report kept; its runs and report removed; the same spec (same runs_dir)
    run again through submitit's local executor: (spec, local report files, submitit report files, stdout)."""
    path = write_spec(ws, "runs")
    spec = load_spec(path)
    code, out = run_cli(str(path))
    assert code == 0, out
    local = results(spec)
    shutil.rmtree(spec.runs_dir)
    shutil.rmtree(spec.results_dir)
    code, out = run_cli(str(path), "--executor", "submitit-local")
    assert code == 0, out
    return spec, local, results(spec), out


def test_submitit_local_gives_the_local_pools_runs_csv_and_a_byte_identical_report(both):
    spec, local, submitted, out = both
    assert "4 runs, through --executor submitit-local (no GPU, 1 CPU(s) per job)" in out
    assert "submitting 4 run(s) to submitit-local" in out and out.count(" done ") == 4
    assert sorted(local) == sorted(submitted) == ["tiny.json", "tiny.md", "tiny_configs.csv", "tiny_runs.csv"]
    assert submitted["tiny.md"] == local["tiny.md"] and submitted["tiny_configs.csv"] == local["tiny_configs.csv"]
    rows = rows_without_seconds(submitted["tiny_runs.csv"])
    assert rows == rows_without_seconds(local["tiny_runs.csv"])  # every score, metric, flags and folder alike
    assert len(rows) == 4 and all(float(r["best_score"]) > 0 for r in rows)
    for run in spec.runs():  # each run went through a submitit job of its own, on the CPU
        folder = runner.run_dir(spec, run)
        assert json.loads((folder / runner.RUN_INFO).read_text())["devices"] == ["cpu"]
        assert (folder / runner.DONE).is_file()
    assert len(list((spec.runs_dir / "submitit").glob("*_result.pkl"))) == 4


def test_finished_runs_are_skipped_without_a_job(both, capsys):
    spec = both[0]
    code, out = run_cli(str(spec.source), "--executor", "submitit-local")
    assert code == 0 and "submitting" not in out
    assert "4 finished run(s) skipped, 0 read back from the runs CSV, 0 held by a live sweep or job" in out
    assert sweep_cli.main(["status", str(spec.source)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "4 done"


def test_a_run_killed_mid_way_is_resumed_by_the_next_submitit_run_to_the_uninterrupted_weights(both, ws):
    reference = both[0]
    spec = load_spec(write_spec(ws, "runs-killed", seeds="[1]"))
    run = RunSpec("pairs", "usadamax", 2e-3, 0.6, 1)
    folder = runner.write_run_info(spec, run)
    threads = torch.get_num_threads()
    try:  # train.py's own Trainer stops after 6 of 12 steps; its newest checkpoint is step 4
        Trainer(parse_args(train_argv(spec, run, folder) + ["--num_threads", "1", "--device", "cpu"])).fit(
            stop_after_steps=6)
    finally:
        torch.set_num_threads(threads)
    assert runner.state(spec, run) == "resume"
    code, out = run_cli(str(spec.source), "--executor", "submitit-local")
    assert code == 0, out
    assert "submitting 2 run(s)" in out  # the killed run and seed 1's Adamax run
    log = (folder / runner.LOG).read_text()
    assert " resume: " in log and "--resume" in log.splitlines()[0] and "resumed from" in log
    a = load_file(str(folder / "best" / "model.safetensors"))
    b = load_file(str(runner.run_dir(reference, run) / "best" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_sigkilled_submitit_sweep_is_resumed_by_the_next_run_to_the_uninterrupted_weights(ws):
    """The whole process tree (sweep.py, submitit's job, train.py) killed with SIGKILL once a run has a checkpoint,
    as a node that dies or a job the scheduler kills: the next `sweep.py run` submits the unfinished runs again and
    the killed one resumes from its checkpoint to the weights of a run nobody stopped."""
    def spec_of(runs: str):
        path = write_spec(ws, runs, seeds="[1]")
        path.write_text(path.read_text().replace("epochs: 2", "epochs: 12"), encoding="utf-8")  # 72 steps
        return path, load_spec(path)

    path, spec = spec_of("runs-sigkill")
    run = RunSpec("pairs", "usadamax", 2e-3, 0.6, 1)
    folder = runner.run_dir(spec, run)
    cmd = [sys.executable, str(runner.ROOT / "sweep.py"), "run", str(path), "--executor", "submitit-local"]
    proc = subprocess.Popen(cmd, cwd=runner.ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (folder / runner.LATEST).is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert (folder / runner.LATEST).is_file() and not (folder / runner.DONE).exists()
    deadline = time.monotonic() + 30  # SIGKILL is delivered, and the processes end, asynchronously
    while runner.state(spec, run) == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert runner.state(spec, run) == "resume"
    code, out = run_cli(str(path), "--executor", "submitit-local")
    assert code == 0, out
    assert "0 held by a live sweep or job" in out or "submitting 2 run(s)" in out  # the killed jobs hold nothing
    log = (folder / runner.LOG).read_text()
    assert "resumed from" in log and (folder / runner.DONE).is_file()
    ref_path, reference = spec_of("runs-sigkill-reference")
    code, out = run_cli(str(ref_path))
    assert code == 0, out
    a = load_file(str(folder / "best" / "model.safetensors"))
    b = load_file(str(runner.run_dir(reference, run) / "best" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


FAKE_SQUEUE = """#!/bin/sh
{body}
"""


@pytest.mark.parametrize("squeue, held", [
    ("echo RUNNING", True), ("echo PENDING", True), ("exit 0", False),
    ("echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1", False),
    ("echo 'slurm_load_jobs error: Unable to contact slurm controller' >&2; exit 1", True), (None, True)],
    ids=["running", "pending", "gone", "forgotten", "controller-down", "no-squeue"])
def test_a_lock_of_a_slurm_job_on_another_host_is_held_while_squeue_lists_the_job(ws, monkeypatch, squeue, held):
    bin_dir = ws / f"fake-squeue-{abs(hash(str(squeue)))}"
    bin_dir.mkdir(exist_ok=True)
    if squeue is not None:
        (bin_dir / "squeue").write_text(FAKE_SQUEUE.format(body=squeue), encoding="utf-8")
        (bin_dir / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    spec = load_spec(write_spec(ws, "runs-locks", seeds="[1]"))
    run = RunSpec("pairs", "adamax", 2e-3, 0.75, 1)
    folder = runner.run_dir(spec, run)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / runner.LOCK).write_text("4321 node-that-is-not-this-one slurm:77", encoding="utf-8")
    assert runner.state(spec, run) == ("running" if held else "new")
    (folder / runner.LOCK).write_text("4321 node-that-is-not-this-one", encoding="utf-8")  # not a Slurm job: held
    assert runner.state(spec, run) == "running"


def test_runs_held_by_a_live_sweep_or_job_are_not_submitted_again(ws, capsys):
    import socket
    spec = load_spec(write_spec(ws, "runs-held", seeds="[1]"))
    for run in spec.runs():
        runner.run_dir(spec, run).mkdir(parents=True)
        (runner.run_dir(spec, run) / runner.LOCK).write_text(f"1 {socket.gethostname()}", encoding="utf-8")  # alive
    code, out = run_cli(str(spec.source), "--executor", "submitit-local")
    assert "0 finished run(s) skipped, 0 read back from the runs CSV, 2 held by a live sweep or job" in out
    assert "submitting" not in out and not (spec.runs_dir / "submitit").exists()
    assert code == 2 and "no finished runs" in capsys.readouterr().err  # nothing to report yet, as the local pool


def test_a_run_in_a_slurm_job_names_the_job_in_its_lock(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert runner._lock_owner().endswith(" slurm:4242")
    monkeypatch.delenv("SLURM_JOB_ID")
    assert "slurm:" not in runner._lock_owner()


FAKE_SBATCH = """#!/bin/sh
cp "$1" "{out}/job.sh"
echo "Submitted batch job 4242"
"""


def fake_slurm(ws: Path, monkeypatch) -> Path:
    """A PATH whose sbatch keeps the job script it is given (in the returned folder) and submits job 4242."""
    bin_dir = ws / "fake-slurm"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "sbatch").write_text(FAKE_SBATCH.format(out=bin_dir), encoding="utf-8")
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n", encoding="utf-8")
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin")
    return bin_dir


def test_slurm_submits_one_array_whose_sbatch_script_carries_the_settings(ws, monkeypatch):
    bin_dir = fake_slurm(ws, monkeypatch)
    path = write_spec(ws, "runs-slurm")
    code, out = run_cli(str(path), "--executor", "slurm", "--no_wait", "--partition", "gpu", "--time_min", "90",
                        "--cpus_per_run", "3", "--mem_gb", "16", "--max_concurrent", "2", "--gpus_per_run", "2")
    assert code == 0, out
    assert "through --executor slurm (2 GPU(s) and 3 CPU(s) per job)" in out
    assert [line.split(" (job ")[1] for line in out.splitlines() if line.startswith("submitted ")] == \
        ["4242_0)", "4242_1)", "4242_2)", "4242_3)"]
    script = (bin_dir / "job.sh").read_text()
    for setting in ("#SBATCH --array=0-3%2", "#SBATCH --partition=gpu", "#SBATCH --time=90",
                    "#SBATCH --cpus-per-task=3", "#SBATCH --gpus-per-node=2", "#SBATCH --mem=16GB",
                    "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1", "#SBATCH --job-name=sweep-tiny",
                    f"cd {runner.ROOT}"):
        assert setting in script.splitlines(), setting
    assert not (load_spec(path).runs_dir / "pairs").exists()  # nothing ran here: the jobs make the run folders


def test_the_specs_cluster_settings_reach_the_sbatch_script_and_flags_override_them(ws, monkeypatch):
    bin_dir = fake_slurm(ws, monkeypatch)
    path = write_spec(ws, "runs-slurm-spec")
    path.write_text(path.read_text() + "cluster: {partition: long, time_min: 30, cpus_per_run: 2, mem_gb: 8, "
                    "max_concurrent: 1}\n", encoding="utf-8")
    code, out = run_cli(str(path), "--executor", "slurm", "--no_wait", "--time_min", "45")
    assert code == 0, out
    assert "through --executor slurm (1 GPU(s) and 2 CPU(s) per job)" in out
    script = (bin_dir / "job.sh").read_text().splitlines()
    for setting in ("#SBATCH --array=0-3%1", "#SBATCH --partition=long", "#SBATCH --time=45",
                    "#SBATCH --cpus-per-task=2", "#SBATCH --gpus-per-node=1", "#SBATCH --mem=8GB"):
        assert setting in script, setting


@pytest.mark.parametrize("block, message", [
    ("cluster: {queue: gpu}", "field 'cluster.queue': unknown job setting; known: partition, time_min, "
                              "cpus_per_run, mem_gb, max_concurrent"),
    ("cluster: {time_min: 0}", "field 'cluster.time_min': must be >= 1, got 0"),
    ("cluster: {partition: 3}", "field 'cluster.partition': expected a name, got 3"),
    ("cluster: [gpu]", "field 'cluster': expected a mapping of job settings"),
])
def test_a_bad_cluster_setting_in_the_spec_names_its_line(ws, block, message):
    path = write_spec(ws, "runs-bad-cluster")
    text = path.read_text()
    path.write_text(text + block + "\n", encoding="utf-8")
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert str(err.value).startswith(f"{path}:{len(text.splitlines()) + 1}: {message}")


def test_a_missing_scheduler_is_one_line_and_writes_nothing(ws, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(ws / "no-such-bin"))
    path = write_spec(ws, "runs-no-slurm")
    assert sweep_cli.main(["run", str(path), "--executor", "slurm"]) == 2
    assert capsys.readouterr().err == ("sweep.py: error: --executor slurm: no Slurm scheduler here (sbatch is not on "
                                       "PATH); run it on a login node of the cluster, or use --executor local\n")
    assert not load_spec(path).runs_dir.exists()


def test_a_missing_submitit_is_one_line(ws, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if it were not installed
    path = write_spec(ws, "runs-no-submitit")
    assert sweep_cli.main(["run", str(path), "--executor", "submitit-local"]) == 2
    assert capsys.readouterr().err == ("sweep.py: error: --executor: needs the submitit package (pip install -r "
                                       "requirements.txt)\n")
    assert not load_spec(path).runs_dir.exists()


BAD_FLAGS = [
    (["--executor", "slurm", "--parallel", "4"], "--parallel: sets the local pool; with --executor slurm use "
     "--max_concurrent"),
    (["--executor", "slurm", "--gpus", "0,1"], "--gpus: names this machine's GPUs; with --executor slurm each job "
     "gets gpus_per_run GPUs from the scheduler (--gpus cpu: CPU jobs)"),
    (["--executor", "submitit-local", "--no_wait"], "--no_wait: only with --executor slurm"),
    (["--executor", "slurm", "--time_min", "0"], "--time_min: must be >= 1, got 0"),
    (["--executor", "slurm", "--max_concurrent", "-1"], "--max_concurrent: must be >= 0, got -1"),
    (["--partition", "gpu"], "--partition: a setting of the jobs of --executor slurm or submitit-local, not of the "
     "local pool"),
    (["--no_wait"], "--no_wait: a setting of the jobs of --executor slurm or submitit-local, not of the local pool"),
]


def test_submitit_local_runs_cpu_jobs_only(ws, monkeypatch, capsys):
    """Its executor would give every job the same first GPU(s): refused where GPUs are visible."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    path = write_spec(ws, "runs-local-gpus")
    assert sweep_cli.main(["run", str(path), "--executor", "submitit-local"]) == 2
    assert capsys.readouterr().err == ("sweep.py: error: --executor submitit-local: its jobs would all share this "
                                       "machine's first GPU(s); use --executor local here (each run its own GPUs), "
                                       "or --gpus cpu\n")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert sweep_cli.main(["run", str(path), "--executor", "submitit-local", "--gpus_per_run", "2"]) == 2
    assert capsys.readouterr().err == ("sweep.py: error: --gpus_per_run: 2 GPUs per run, but no GPU is visible "
                                       "here\n")
    assert not load_spec(path).runs_dir.exists()


@pytest.mark.parametrize("args, message", BAD_FLAGS,
                         ids=[m.split(":")[0] + str(i) for i, (_, m) in enumerate(BAD_FLAGS)])
def test_a_setting_the_executor_cannot_honour_is_one_line(ws, capsys, args, message):
    path = write_spec(ws, "runs-bad-flags")
    assert sweep_cli.main(["run", str(path), *args]) == 2
    assert capsys.readouterr().err == f"sweep.py: error: {message}\n"
    assert not load_spec(path).runs_dir.exists()
