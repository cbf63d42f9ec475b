"""Data-parallel training on CPU with gloo: 2 ranks under torchrun against 1 process with the doubled batch.

The runs use a tiny random BERT without dropout, two tasks (so one head is idle each step) and dataset sizes
that leave uneven last batches, which exercises the per-rank loss weighting. Each case launches real processes
(``python -m torch.distributed.run``), as users do.
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel

from conftest import ROOT, tiny_bert_config
from workspace import write_shards

pytestmark = [pytest.mark.subprocess,
              pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available in this build")]

TASKS = """
pairs:
  task_type: Classification
  data_format: PremiseAndOneHypothesis
  n_class: 2
  labels: [not, same]
  metric_meta: [ACC, F1]
  dropout_p: 0.0
  split_names: [train, dev]
score:
  task_type: Regression
  data_format: PremiseOnly
  n_class: 1
  metric_meta: [Pearson]
  dropout_p: 0.0
  split_names: [train, dev]
"""
LAUNCH_TIMEOUT = 300


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    torch.manual_seed(0)
    AutoModel.from_config(tiny_bert_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)) \
        .save_pretrained(root / "tiny-bert")
    (root / "tasks.yml").write_text(TASKS, encoding="utf-8")
    write_shards(root / "shards", sizes=(22, 13, 0), seed=3)  # 22 = 8+8+6 and 13 = 8+5: uneven last batches
    return root


def _args(ws: Path, out: str, batch: int, *extra: str) -> list[str]:
    return ["--train_datasets", "pairs,score", "--task_def", str(ws / "tasks.yml"), "--data_dir",
            str(ws / "shards"), "--init_checkpoint", str(ws / "tiny-bert"), "--output_dir", str(ws / out),
            "--optimizer", "usadamax", "--learning_rate", "2e-3", "--batch_size", str(batch), "--epochs", "2",
            "--max_seq_len", "64", "--optim_impl", "foreach", "--no_tensorboard", "--device", "cpu",
            "--seed", "11", "--log_every", "1", *extra]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    assert proc.returncode == 0, f"{' '.join(cmd[:6])} ... failed:\n{proc.stderr[-4000:]}"
    return proc


def _torchrun(script: str, args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                 "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), script, *args])


def _final_weights(out: Path) -> dict[str, torch.Tensor]:
    latest = (out / "latest").read_text().strip()
    return load_file(str(out / latest / "model.safetensors"))


def _assert_close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= atol, f"largest parameter difference {worst:.3g} > {atol}"


@pytest.fixture(scope="module")
def single(ws):
    """The baseline: one process, global batch 8."""
    _run([sys.executable, "train.py", *_args(ws, "single", 8)])
    return ws / "single"


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_ranks_match_one_process_with_doubled_batch(ws, single, mode):
    extra = ["--fsdp"] if mode == "fsdp" else []
    _torchrun("train.py", _args(ws, mode, 4, *extra))
    out = ws / mode
    assert (out / "latest").read_text() == (single / "latest").read_text()  # same number of steps
    _assert_close(_final_weights(out), _final_weights(single), atol=1e-6)
    # evaluation was sharded over the ranks and gathered: same predictions, same metrics, rank 0 wrote them
    for name in ("pairs_dev_scores_1.json", "score_dev_scores_1.json"):
        got, want = (json.loads((d / name).read_text()) for d in (out, single))
        assert got["uids"] == want["uids"]
        assert got["predictions"][:5] == pytest.approx(want["predictions"][:5], abs=1e-4)
        assert got["metrics"] == pytest.approx(want["metrics"], rel=1e-4)
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [0, 1]  # one record per epoch, not one per rank


def test_training_moved_the_weights(ws, single):
    """Guards the parity test against comparing two runs that did nothing: the encoder moved by far more than
    the parity tolerance."""
    init = AutoModel.from_pretrained(ws / "tiny-bert").state_dict()
    final = _final_weights(single)
    moved = max((final[f"encoder.{k}"] - v).abs().max().item() for k, v in init.items() if f"encoder.{k}" in final)
    assert moved > 1e-4


SMART = ["--adv_train", "--adv_k", "2", "--adv_p_norm", "l2", "--adv_noise_var", "1e-2"]


def test_two_ranks_match_one_process_with_smart(ws, single):
    """SMART on: each example's noise is keyed by the example and the step, and its ascent step does not depend
    on how many examples share its rank, so 2 ranks (3 + 2 extra forwards each, no skipped work) still match
    1 process with the doubled batch."""
    _run([sys.executable, "train.py", *_args(ws, "single-smart", 8, *SMART)])
    _torchrun("train.py", _args(ws, "ddp-smart", 4, *SMART))
    one, two = _final_weights(ws / "single-smart"), _final_weights(ws / "ddp-smart")
    _assert_close(two, one, atol=1e-5)
    plain = _final_weights(single)
    assert max((one[k] - plain[k]).abs().max().item() for k in one) > 1e-4  # SMART changed the training


@pytest.mark.parametrize("case,settings", [
    ("smart", "DDP: static graph, buffers not broadcast"),
    ("san-head", "DDP: static graph, buffers not broadcast"),
    ("accumulation", "DDP: every parameter used, buffers not broadcast")])
def test_one_task_under_cheaper_ddp_settings_matches_one_process(ws, case, settings):
    """One training task: DDP without the per-step search for unused parameters (a static graph, or with
    gradient accumulation every parameter used) and without buffer broadcasts, still equal to 1 process with
    the doubled batch -- with SMART's extra forwards, with accumulation (no_sync), and with a SAN head, under
    which the encoder's pooler gets no gradient."""
    extra = {"smart": SMART, "accumulation": ["--grad_accumulation_step", "2"],
             "san-head": ["--task_def", str(ws / "tasks-san.yml"), "--answer_opt", "1", "--answer_mem_drop_p", "0",
                          "--answer_dropout_p", "0"]}[case]
    if case == "san-head":
        (ws / "tasks-san.yml").write_text(TASKS.replace("  labels: [not, same]\n", "  labels: [not, same]\n"
                                                        "  enable_san: true\n"), encoding="utf-8")
    extra = [*extra, "--train_datasets", "pairs", "--test_datasets", "pairs", "--epochs", "1"]
    _run([sys.executable, "train.py", *_args(ws, f"one-task-{case}", 8, *extra)])
    _torchrun("train.py", _args(ws, f"one-task-{case}-ddp", 4, *extra))
    assert settings in (ws / f"one-task-{case}-ddp" / "train.log").read_text()
    one, two = _final_weights(ws / f"one-task-{case}"), _final_weights(ws / f"one-task-{case}-ddp")
    _assert_close(two, one, atol=1e-5)
    if case == "san-head":  # the pooler really was idle: it still holds the initial weights
        init = AutoModel.from_pretrained(ws / "tiny-bert").state_dict()
        assert torch.equal(two["encoder.pooler.dense.weight"], init["pooler.dense.weight"])


def test_two_ranks_with_loader_workers_match_one_process(ws, single):
    """Micro-batches built by a worker process on each rank (--num_workers 1): the same parity as in-process."""
    _torchrun("train.py", _args(ws, "ddp-workers", 4, "--num_workers", "1"))
    _assert_close(_final_weights(ws / "ddp-workers"), _final_weights(single), atol=1e-6)


@pytest.mark.compile
def test_two_ranks_compiled_match_one_eager_process(ws, single):
    """--compile under torchrun (DDP, gloo): each rank pads its share (uneven here: 3+3 and 2+3 of the last
    batches) to the static shape; the result stays within compile tolerance of the eager single process."""
    _torchrun("train.py", _args(ws, "ddp-compile", 4, "--compile"))
    log = (ws / "ddp-compile" / "train.log").read_text()
    assert "--compile: batches of 4 rows padded to lengths 32/64" in log and "compiling the model failed" not in log
    _assert_close(_final_weights(ws / "ddp-compile"), _final_weights(single), atol=1e-4)


@pytest.fixture(scope="module")
def ddp_full(ws):
    """An uninterrupted 2-rank run with a step checkpoint every 3 steps."""
    _torchrun("train.py", _args(ws, "ddp-full", 4, "--save_every_steps", "3"))
    return ws / "ddp-full"


def test_resume_under_torchrun_is_exact(ws, ddp_full):
    """A 2-rank run killed after 7 steps (newest checkpoint: step 6) and resumed ends where an uninterrupted
    2-rank run ends, bit for bit."""
    every = ["--save_every_steps", "3"]
    _torchrun(str(ROOT / "tests" / "dist_stop_driver.py"), ["7", *_args(ws, "ddp-cut", 4, *every)])
    assert (ws / "ddp-cut" / "latest").read_text().strip() == "step-6"
    state = torch.load(ws / "ddp-cut" / "step-6" / "training_state.pt", weights_only=True)
    assert len(state["rng_ranks"]) == 2  # each rank's RNG stream is kept
    _torchrun("train.py", _args(ws, "ddp-cut", 4, *every, "--resume"))
    a, b = _final_weights(ws / "ddp-full"), _final_weights(ws / "ddp-cut")
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_sigterm_on_one_rank_stops_every_rank_at_the_same_step_and_resumes_exactly(ws, ddp_full):
    """Only rank 1 gets SIGTERM, during its second micro-batch: the ranks agree on the stop, save step-2 together
    (each rank's RNG stream in it), both exit 143 and rank 0 prints the one line; --resume under torchrun then
    ends where the uninterrupted run ends, bit for bit."""
    args = _args(ws, "ddp-term", 4, "--save_every_steps", "3")
    port, procs = _free_port(), []
    for rank in (0, 1):
        env = _env() | {"RANK": str(rank), "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "tests" / "fault_driver.py"), "term_at_batch:2@1",
                                       "train", *args], cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE))
    outs = [p.communicate(timeout=LAUNCH_TIMEOUT) for p in procs]
    assert [p.returncode for p in procs] == [143, 143], outs[0][1][-3000:]
    lines = [re.findall(r"train\.py: [^\r\n]*", err) for _, err in outs]
    assert lines == [["train.py: stopped by SIGTERM at step 2; continue with --resume"], []]
    assert (ws / "ddp-term" / "latest").read_text().strip() == "step-2"
    state = torch.load(ws / "ddp-term" / "step-2" / "training_state.pt", weights_only=True)
    assert len(state["rng_ranks"]) == 2 and state["progress"]["global_step"] == 2
    _torchrun("train.py", [*args, "--resume"])
    a, b = _final_weights(ddp_full), _final_weights(ws / "ddp-term")
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_run_folder_locked_by_another_run_stops_every_rank_with_one_line(ws):
    """Only rank 0 takes the run's lock; its refusal stops both ranks in the setup phase, with one line naming
    the holder (this test process), and nothing is written."""
    from mt_dnn.run_folder import RunLock
    out = ws / "ddp-locked"
    out.mkdir()
    lock = RunLock(out).acquire()
    try:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), "train.py", *_args(ws, out.name, 4, "--dist_timeout", "2")]
        proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
        assert sorted(p.name for p in out.iterdir()) == ["train.lock"]
    finally:
        lock.release()
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if "train.py: error:" in line]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert f"--output_dir {out}: another train.py is writing this run (pid {os.getpid()} on " in errors[0]


def test_fsdp_logs_the_mean_sensitivity_of_the_whole_state(ws):
    """--fsdp on 2 ranks: the logged sage/mean_sensitivity_ema is the mean over the whole optimizer state (each
    rank holds a shard; sum and count are reduced over the ranks), equal to the 1-process run's value at every
    log step; the optimizer's shard-local value alone is about half of it."""
    stats = {}
    for nproc, mode in ((1, "single"), (2, "fsdp")):
        out = ws / f"stats-{mode}.json"
        extra = ["--fsdp"] if mode == "fsdp" else []
        _torchrun(str(ROOT / "tests" / "dist_sage_stats_driver.py"),
                  ["4", str(out), *_args(ws, f"stats-{mode}", 8 // nproc, "--tensorboard", *extra)], nproc=nproc)
        stats[mode] = json.loads(out.read_text())
    one, two = stats["single"], stats["fsdp"]
    assert two["sharded"] and not one["sharded"] and len(two["logged"]) == 4
    assert two["logged"][-1] == pytest.approx(two["true"], rel=1e-9)
    assert two["logged"] == pytest.approx(one["logged"], rel=1e-5)
    assert 0.3 < two["optimizer_own"] / two["true"] < 0.7


def test_bad_input_on_one_rank_stops_every_rank(ws):
    """Two nodes' worth of processes started by hand; only rank 1 has a wrong --data_dir. Without error
    agreement rank 0 would block in its first collective until the timeout."""
    port, procs = _free_port(), []
    for rank in (0, 1):
        data = "shards" if rank == 0 else "no-such-shards"
        args = _args(ws, "bad", 4) + ["--data_dir", str(ws / data), "--dist_timeout", "2"]
        env = _env() | {"RANK": str(rank), "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    start = time.monotonic()
    outs = [p.communicate(timeout=LAUNCH_TIMEOUT) for p in procs]
    assert time.monotonic() - start < 100, "ranks did not stop promptly"
    assert [p.returncode for p in procs] == [2, 2]
    err0 = outs[0][1].strip().splitlines()
    assert err0[-1].startswith("train.py: error: rank 1: ") and "no-such-shards" in err0[-1], outs[0][1][-2000:]
    assert "train.py: error:" in outs[1][1]
    assert not list((ws / "bad").glob("step-*")) and not (ws / "bad" / "best").exists()


def test_divergence_stops_every_rank_with_one_line(ws):
    """--learning_rate 1e6 under torchrun: every rank stops at the same check (the flag is all-reduced), the
    message is printed once, and nothing non-finite is saved."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "train.py",
           *_args(ws, "ddp-diverge", 4, "--learning_rate", "1e6", "--max_steps", "4", "--dist_timeout", "2")]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if "train.py: error:" in line]
    assert len(errors) == 1 and "training diverged: non-finite" in errors[0], proc.stderr[-3000:]
    assert not (ws / "ddp-diverge" / "best").exists() and not list((ws / "ddp-diverge").glob("step-*"))
