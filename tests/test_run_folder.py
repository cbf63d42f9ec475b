"""mt_dnn/run_folder.py: the run lock (flock, and the exclusive-file lock where a filesystem has no flock),
what --overwrite removes and keeps, --resume without a checkpoint, `latest` accepting only step-N, pruning that
never removes the checkpoint `latest` names, and metrics.jsonl brought back to the checkpoint's history."""
from __future__ import annotations

import errno
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import train as train_cli
from mt_dnn import checkpoint as ckpt
from mt_dnn import run_folder
from mt_dnn.run_folder import RunFolderError, RunLock


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def holder(pid: int, host: str = socket.gethostname()) -> str:
    return json.dumps({"pid": pid, "host": host, "started": "2024-01-02 03:04:05"})


HOLDER = re.escape(f"pid {os.getpid()} on {socket.gethostname()}, started ") + r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"


# ------------------------------------------------------------------------------------------------ the lock
def test_lock_refuses_a_second_holder_naming_the_first_and_is_gone_after_release(tmp_path):
    first = RunLock(tmp_path).acquire()
    with pytest.raises(RunFolderError) as info:
        RunLock(tmp_path).acquire()  # another open file description: flock refuses it even in this process
    assert re.fullmatch(f"--output_dir {re.escape(str(tmp_path))}: another train.py is writing this run "
                        f"\\({HOLDER}\\); wait for it to finish or use another --output_dir", str(info.value))
    first.release()
    assert not (tmp_path / run_folder.LOCK).exists()
    RunLock(tmp_path).acquire().release()


def test_lock_left_by_a_killed_holder_is_taken_over(tmp_path):
    (tmp_path / run_folder.LOCK).write_text(holder(dead_pid()))  # its flock died with it
    lock = RunLock(tmp_path).acquire()
    assert json.loads((tmp_path / run_folder.LOCK).read_text())["pid"] == os.getpid()
    lock.release()


def test_lock_refuses_a_planted_symlink_without_touching_its_target(tmp_path):
    target = tmp_path / "target.txt"
    target.write_text("keep")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / run_folder.LOCK).symlink_to(target)
    with pytest.raises(RunFolderError, match=r"train\.lock: cannot take the run's lock \(Too many levels of "
                                             r"symbolic links\)"):
        RunLock(tmp_path / "run").acquire()
    assert target.read_text() == "keep"


@pytest.fixture
def no_flock(monkeypatch):
    import fcntl

    def flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(fcntl, "flock", flock)


def test_without_flock_the_lock_is_an_exclusive_file(tmp_path, no_flock):
    first = RunLock(tmp_path).acquire()
    lock_file = tmp_path / run_folder.LOCK
    with pytest.raises(RunFolderError) as info:
        RunLock(tmp_path).acquire()
    assert re.fullmatch(f"--output_dir {re.escape(str(tmp_path))}: another train.py is writing this run "
                        f"\\({HOLDER}\\); wait for it to finish or use another --output_dir; if that run is gone, "
                        f"remove {re.escape(str(lock_file))}", str(info.value))
    first.release()
    assert not lock_file.exists()
    lock_file.write_text(holder(dead_pid()))  # a killed holder of this host: stale
    RunLock(tmp_path).acquire().release()
    lock_file.write_text(holder(1, "another-host"))  # cannot be checked from here: refused
    with pytest.raises(RunFolderError, match=r"\(pid 1 on another-host, started 2024-01-02 03:04:05\)"):
        RunLock(tmp_path).acquire()
    assert json.loads(lock_file.read_text())["host"] == "another-host"


# ------------------------------------------------------------------------------------------------ the folder
def make_run(folder: Path) -> None:
    for name in ("best", "step-4", "tensorboard"):
        (folder / name).mkdir(parents=True)
        (folder / name / "f").write_text("x")
    for name in ("metrics.jsonl", "train.log", "pairs_dev_scores_0.json", "pairs_test_submission_0.tsv",
                 "squad_dev_predictions_1.json"):
        (folder / name).write_text("x")
    (folder / "latest").write_text("step-4\n")


def test_overwrite_removes_train_pys_files_only_and_never_follows_a_link(tmp_path):
    run = tmp_path / "run"
    make_run(run)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "data.txt").write_text("precious")
    (run / "tensorboard" / "link").symlink_to(outside)
    (run / "sensitivity.jsonl").symlink_to(outside / "data.txt")
    for name in ("notes.txt", "sweep_run.json", "my_scores.txt"):
        (run / name).write_text("mine")
    lock, notes = run_folder.claim(run, resume=False, overwrite=True, has_checkpoint=lambda: True)
    try:
        assert sorted(p.name for p in run.iterdir()) == ["my_scores.txt", "notes.txt", "sweep_run.json", "train.lock"]
    finally:
        lock.release()
    assert (outside / "data.txt").read_text() == "precious"
    assert notes == [f"--overwrite: removed the previous run in {run} (best/, latest, metrics.jsonl, "
                     "pairs_dev_scores_0.json, pairs_test_submission_0.tsv, squad_dev_predictions_1.json and 4 more)",
                     "--overwrite: kept 3 entries train.py did not write: my_scores.txt, notes.txt, sweep_run.json"]


def test_a_folder_of_other_files_is_not_a_run(tmp_path):
    (tmp_path / "sweep_run.json").write_text("{}")
    lock, notes = run_folder.claim(tmp_path, resume=False, overwrite=False, has_checkpoint=lambda: False)
    lock.release()
    assert notes == [] and (tmp_path / "sweep_run.json").exists()


def test_resume_without_a_checkpoint(tmp_path):
    """Results but no step checkpoint (a finished run whose checkpoints were removed, or a kill between the
    first evaluation and its checkpoint): refused. Only an attempt's logs: its TensorBoard events go, the log
    stays, and the run starts."""
    run = tmp_path / "run"
    make_run(run)
    with pytest.raises(RunFolderError, match=r"^--resume: .*run holds results of a run \(best/, latest, "
                                             r".*\) but no step checkpoint to continue from; pass --overwrite "
                                             r"instead to start it again$"):
        run_folder.claim(run, resume=True, overwrite=False, has_checkpoint=lambda: False)
    assert (run / "best").is_dir() and not (run / run_folder.LOCK).exists()
    attempt = tmp_path / "attempt"
    attempt.mkdir()
    (attempt / "train.log").write_text("started\n")
    (attempt / "tensorboard").mkdir()
    lock, notes = run_folder.claim(attempt, resume=True, overwrite=False, has_checkpoint=lambda: False)
    lock.release()
    assert sorted(p.name for p in attempt.iterdir()) == ["train.log"]
    assert notes == ["--resume: removed tensorboard/ of an attempt that left no checkpoint"]


def test_resume_and_overwrite_together_are_refused(capsys):
    assert train_cli.main(["--train_datasets", "rte", "--resume", "--overwrite"]) == 2
    assert capsys.readouterr().err.strip() == ("train.py: error: --overwrite: choose one of --resume (continue the "
                                               "run in --output_dir) and --overwrite (remove it)")


# ------------------------------------------------------------------------------------------------ latest
@pytest.mark.parametrize("content", ["../x", "/etc/passwd", "step-3/../../x", "best", "step-", "step-3/"])
def test_latest_names_only_a_step_folder(tmp_path, content):
    (tmp_path / "step-3").mkdir()
    (tmp_path / "latest").write_text(content + "\n")
    with pytest.raises(RunFolderError) as info:
        ckpt.resume_candidates(tmp_path)
    assert str(info.value) == (f"{tmp_path / 'latest'}: names {content!r}, not a step-N folder of this run; "
                               "remove the file (--resume then takes the newest step-N folder)")
    if content != "step-3/":  # as a path, that one is step-3 itself
        with pytest.raises(ValueError, match="not a step-N folder"):
            ckpt.mark_latest(tmp_path, tmp_path / content)


def test_pruning_never_removes_the_folder_latest_names(tmp_path):
    for step in (4, 100, 200):
        (tmp_path / f"step-{step}").mkdir()
    (tmp_path / "latest").write_text("step-4\n")
    ckpt.prune_step_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-200", "step-4"]
    ckpt.prune_step_checkpoints(tmp_path, keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-4"]


# ------------------------------------------------------------------------------------------------ metrics
def test_metrics_jsonl_is_brought_back_to_the_checkpoints_history(tmp_path):
    history = [{"epoch": 0, "step": 4, "dev": {"pairs_dev": {"ACC": float("nan")}}, "glue_average": None}]
    lines = [json.dumps({"epoch": 0, "step": 4, "dev": {"pairs_dev": {"ACC": None}}, "glue_average": None})] * 2
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")  # epoch 0 evaluated again after a kill
    assert run_folder.agree_metrics(tmp_path, history)
    assert (tmp_path / "metrics.jsonl").read_text() == lines[0] + "\n"
    assert not run_folder.agree_metrics(tmp_path, history)
    assert run_folder.agree_metrics(tmp_path, []) and (tmp_path / "metrics.jsonl").read_text() == ""
    empty = tmp_path / "empty"
    empty.mkdir()
    assert not run_folder.agree_metrics(empty, []) and not (empty / "metrics.jsonl").exists()


def test_resume_refuses_a_latest_that_is_not_a_step_folder(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "x").mkdir()
    (run / "latest").write_text("../x\n")
    assert train_cli.main(["--train_datasets", "rte", "--output_dir", str(run), "--resume"]) == 2
    assert capsys.readouterr().err.strip() == (f"train.py: error: {run / 'latest'}: names '../x', not a step-N "
                                               "folder of this run; remove the file (--resume then takes the newest "
                                               "step-N folder)")
    assert sorted(p.name for p in run.iterdir()) == ["latest"]


def test_reporter_files_belong_to_the_run(tmp_path):
    """MLflow's file store, W&B's folder and the reporters' ids (--report_to) are the run's logs: --overwrite
    removes them, and an attempt that left no checkpoint takes them along, so a new run never reports into the
    previous attempt's MLflow or W&B run."""
    attempt = tmp_path / "attempt"
    for name in ("mlruns", "wandb"):
        (attempt / name).mkdir(parents=True)
    (attempt / "reporting.json").write_text('{"mlflow": {"run_id": "x"}}')
    (attempt / "train.log").write_text("started\n")
    lock, notes = run_folder.claim(attempt, resume=True, overwrite=False, has_checkpoint=lambda: False)
    lock.release()
    assert sorted(p.name for p in attempt.iterdir()) == ["train.log"]
    assert notes == ["--resume: removed mlruns/, reporting.json, wandb/ of an attempt that left no checkpoint"]
    (attempt / "mlruns").mkdir()
    with pytest.raises(RunFolderError, match=r"holds a run \(mlruns/, train.log\)"):
        run_folder.claim(attempt, resume=False, overwrite=False, has_checkpoint=lambda: False)
