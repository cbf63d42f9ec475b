"""train.py killed, stopped or doubled at precise points (tests/fault_driver.py), checked against one
uninterrupted run of the same flags: a kill mid-epoch, during an evaluation, between an evaluation and its
checkpoint, or during a checkpoint write leaves every earlier result intact, and ``--resume`` then completes the
run with exactly one metrics record per epoch and the uninterrupted run's weights, scores and submissions.
SIGTERM and SIGINT stop at the next step boundary with a checkpoint and one line; a second train.py on the same
folder is refused naming the first; a fresh run into a folder holding a run is refused, ``--overwrite`` replaces
it. Every run is a real process with one thread, so float sums add up in the same order in all of them."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel

import train as train_cli
from conftest import ROOT, tiny_bert_config
from workspace import TASK_YAML, write_shards

pytestmark = [pytest.mark.subprocess]

DRIVER = ROOT / "tests" / "fault_driver.py"
TIMEOUT = 300


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupted")
    torch.manual_seed(0)
    AutoModel.from_config(tiny_bert_config()).save_pretrained(root / "tiny-bert")
    (root / "tasks.yml").write_text(TASK_YAML, encoding="utf-8")
    write_shards(root / "shards", sizes=(32, 16, 16))
    return root


def argv(ws: Path, out: str, *extra: str) -> list[str]:
    """pairs (train, dev, test): 4 steps per epoch, 2 epochs; a step checkpoint every 2 steps, which divides
    the step count, so the last epoch's batches end with a step checkpoint before its evaluation."""
    return ["--train_datasets", "pairs", "--task_def", str(ws / "tasks.yml"), "--data_dir", str(ws / "shards"),
            "--init_checkpoint", str(ws / "tiny-bert"), "--output_dir", str(ws / out), "--no_tensorboard",
            "--batch_size", "8", "--max_seq_len", "64", "--optim_impl", "foreach", "--log_every", "1",
            "--epochs", "2", "--save_every_steps", "2", "--learning_rate", "2e-3", "--seed", "7",
            "--device", "cpu", "--num_threads", "1", *extra]


def env() -> dict:
    out = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        out.pop(key, None)
    return out


def run(args: list[str], fault: str = "") -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(DRIVER), fault, "train", *args] if fault else [sys.executable, "train.py", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=TIMEOUT)


def ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]


def project_lines(stderr: str) -> list[str]:
    """The lines train.py prints itself (progress bars and the log share stderr)."""
    return re.findall(r"train\.py: [^\r\n]*", stderr)


@pytest.fixture(scope="module")
def reference(ws):
    ok(run(argv(ws, "reference")))
    return ws / "reference"


# Every file a finished run reports, besides its log
REPORTED = ["metrics.jsonl", "best/model.safetensors", "best/metrics.json", "pairs_dev_scores_0.json",
            "pairs_dev_scores_1.json", "pairs_test_scores_0.json", "pairs_test_scores_1.json",
            "pairs_test_submission_0.tsv", "pairs_test_submission_1.tsv", "latest", "step-8/model.safetensors"]


def assert_same_run(out: Path, reference: Path) -> None:
    """The same results as the uninterrupted run: one record per epoch, equal weights, scores and submissions;
    nothing else of train.py's left behind (no temps, no lock, no other step folder)."""
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    for name in REPORTED:
        if name.endswith(".safetensors"):
            a, b = load_file(str(out / name)), load_file(str(reference / name))
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        else:
            assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())


def assert_earlier_results_intact(out: Path, reference: Path) -> None:
    """After a kill: every record is the uninterrupted run's, every visible checkpoint loads."""
    lines = (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").exists() else []
    assert lines == (reference / "metrics.jsonl").read_text().splitlines()[:len(lines)]
    for folder in [out / "best", *out.glob("step-*")]:
        if folder.exists():
            load_file(str(folder / "model.safetensors"))
            json.loads((folder / "train_config.json").read_text())


def temps(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if ".sage-tmp-" in p.name)


# (fault, what the killed run left: `latest`, metrics records, whether a temp folder is left)
KILLS = {
    "mid_epoch": ("kill_after_step:3", "step-2", 0, False),
    "during_last_evaluation": ("kill_in_eval:1", "step-8", 1, False),
    "between_evaluation_and_checkpoint": ("kill_after_eval:0", "step-4", 1, False),
    "during_checkpoint_write": ("kill_in_checkpoint:step-6", "step-4", 1, True),
}


@pytest.mark.parametrize("case", list(KILLS))
def test_a_kill_keeps_earlier_results_and_resume_completes_the_same_run(ws, reference, case):
    fault, latest, records, temp_left = KILLS[case]
    out = ws / f"kill-{case}"
    proc = run(argv(ws, out.name), fault)
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert (out / "latest").read_text().strip() == latest
    lines = (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").exists() else []
    assert len(lines) == records
    assert bool(temps(out)) == temp_left
    assert_earlier_results_intact(out, reference)
    if case == "during_last_evaluation":  # every step done: --resume once declared it finished here
        state = torch.load(out / "step-8" / "training_state.pt", weights_only=True)
        assert state["progress"]["global_step"] == 8 and not (out / "pairs_test_submission_1.tsv").exists()
    ok(run(argv(ws, out.name, "--resume")))
    assert_same_run(out, reference)
    log = (out / "train.log").read_text()
    if case == "between_evaluation_and_checkpoint":  # the epoch evaluated before the kill is recorded once
        assert "--resume: " + str(out / "metrics.jsonl") + " now holds the checkpoint's 0 epoch record(s)" in log
    if temp_left:
        assert "(left by an interrupted run)" in log


@pytest.mark.parametrize("signame,batch,step,code", [("SIGTERM", 3, 3, 143), ("SIGINT", 6, 6, 130)])
def test_sigterm_and_sigint_save_a_checkpoint_say_one_line_and_resume_exactly(ws, reference, signame, batch,
                                                                             step, code):
    """The signal arrives during micro-batch N's forward; the step ends, is checkpointed (step 6 is also a
    --save_every_steps step: saved once), and the process exits 128 + the signal number."""
    out = ws / f"signal-{signame}"
    point = "term_at_batch" if signame == "SIGTERM" else "int_at_batch"
    proc = run(argv(ws, out.name), f"{point}:{batch}")
    assert proc.returncode == code, proc.stderr[-3000:]
    assert project_lines(proc.stderr) == [f"train.py: stopped by {signame} at step {step}; continue with --resume"]
    assert "Traceback" not in proc.stderr
    assert (out / "latest").read_text().strip() == f"step-{step}" and not temps(out)
    assert not (out / "train.lock").exists()
    ok(run(argv(ws, out.name, "--resume")))
    assert_same_run(out, reference)


def test_a_second_writer_is_refused_naming_the_first_which_finishes_untouched(ws, reference, capsys):
    out = ws / "concurrent"
    ready, go = ws / "concurrent.ready", ws / "concurrent.go"
    first = subprocess.Popen([sys.executable, str(DRIVER), "pause_after_step:1", "train", *argv(ws, out.name)],
                             cwd=ROOT, env=env() | {"FAULT_READY": str(ready), "FAULT_GO": str(go)},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not ready.exists():
            assert first.poll() is None and time.monotonic() < deadline, "the first run did not reach step 1"
            time.sleep(0.1)
        before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
        holder = re.escape(f"pid {first.pid} on {socket.gethostname()}, started ")
        for extra in ([], ["--overwrite"], ["--resume"]):  # the lock comes first: nothing is removed or read
            assert train_cli.main(argv(ws, out.name, *extra)) == 2
            err = capsys.readouterr().err
            line = project_lines(err)
            assert len(line) == 1 and re.fullmatch(
                f"train.py: error: --output_dir {re.escape(str(out))}: another train.py is writing this run "
                f"\\({holder}\\d{{4}}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d\\); wait for it to finish or use another "
                "--output_dir", line[0]), err
        assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
        go.write_text("go")
        _, err = first.communicate(timeout=TIMEOUT)
        assert first.returncode == 0, err[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
    assert_same_run(out, reference)


def test_a_fresh_run_into_a_run_folder_is_refused_and_overwrite_replaces_it(ws, reference, capsys, tmp_path):
    out = ws / "fresh-into"
    shutil.copytree(reference, out)
    (out / "notes.txt").write_text("mine")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not train.py's")
    (out / "best" / "link").symlink_to(outside)  # removing best/ must not follow it
    before = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file() and not p.is_symlink()}
    assert train_cli.main(argv(ws, out.name)) == 2
    line = project_lines(capsys.readouterr().err)
    assert line == [f"train.py: error: --output_dir {out}: holds a run (best/, latest, metrics.jsonl, "
                    "pairs_dev_scores_0.json, pairs_dev_scores_1.json, pairs_test_scores_0.json and 6 more); pass "
                    "--resume to continue it, --overwrite to replace it, or use another --output_dir"]
    assert {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*")
            if p.is_file() and not p.is_symlink()} == before
    ok(run(argv(ws, out.name, "--overwrite")))
    (out / "notes.txt").unlink()  # kept: not train.py's
    assert_same_run(out, reference)
    assert (outside / "keep.txt").read_text() == "not train.py's"
    log = (out / "train.log").read_text()
    assert log.count("training pairs on") == 1  # the old run's log went with it
    assert f"--overwrite: removed the previous run in {out} (best/, latest, metrics.jsonl" in log
    assert "--overwrite: kept 1 entry train.py did not write: notes.txt" in log
