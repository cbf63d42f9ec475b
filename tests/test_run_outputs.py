"""MT-DNN's run outputs: epoch-N/ checkpoints (--save_per_epoch), mid-epoch evaluation (--save_per_updates_on
--save_per_updates), config.json at the run root, and the training-loss line of the log (--log_per_updates)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import predict as predict_cli
from mt_dnn import loss_log, run_config, run_folder
from mt_dnn.config import load_config, parse_args
from mt_dnn.trainer import Trainer
from mt_dnn.warm_start import checkpoint_kind
from workspace import config, make_workspace

LINE = re.compile(r"Task \[(?P<task>[ \d]{2,})\] updates\[(?P<updates>[ \d]{6,})\] train loss\[(?P<loss>\d+\.\d{5})\] "
                  r"remaining\[(?P<remaining>\d+:\d\d:\d\d)\]$")
TWO_TASKS = dict(train_datasets=["pairs", "score"], test_datasets=["pairs", "score"])  # 12 + 6 batches an epoch


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return make_workspace(tmp_path_factory, "outputs")


def loss_lines(log: Path) -> list[tuple[int, int, str]]:
    """(task id, updates, loss as printed) of each MT-DNN loss line."""
    found = []
    for text in log.read_text(encoding="utf-8").splitlines():
        match = LINE.search(text)
        if match:
            found.append((int(match["task"]), int(match["updates"]), match["loss"]))
    return found


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


class RecordLosses:
    """Wraps the model's loss (a public method) to see each micro-batch's loss and size as training computes it."""

    def __init__(self, trainer: Trainer):
        self.losses: list[tuple[str, float, int]] = []
        self.inner = trainer.model.loss
        trainer.model.loss = self

    def __call__(self, task, out, labels):
        loss = self.inner(task, out, labels)
        if torch.is_grad_enabled():
            self.losses.append((task, float(loss.detach()), int(labels.shape[0])))
        return loss


# ---------------------------------------------------------------------------------------------- the loss line
def test_mtdnn_line_format():
    assert loss_log.mtdnn_line(0, 100, 0.41, "0:12:00") == \
        "Task [ 0] updates[   100] train loss[0.41000] remaining[0:12:00]"
    assert loss_log.mtdnn_line(12, 1234567, 2.5, "1 day, 2:00:00") == \
        "Task [12] updates[1234567] train loss[2.50000] remaining[1 day, 2:00:00]"
    assert loss_log.remaining_text(3 * 3600 + 61.9) == "3:01:01"
    assert loss_log.remaining_text(-1.0) == "0:00:00"


def test_loss_lines_are_the_running_mean_of_the_micro_batch_losses(workspace):
    """Each line's loss is the example-weighted mean of every micro-batch loss since the run started (MT-DNN's
    train_loss.avg), logged after update 1 and every --log_per_updates updates, with grad accumulation counting
    updates as optimizer steps; the same lines reach --log_file."""
    log_file = workspace / "mtdnn-train.log"
    trainer = Trainer(config(workspace, "loss-lines", **TWO_TASKS, epochs=2, grad_accumulation_step=2, log_every=3,
                             log_file=str(log_file)))
    recorder = RecordLosses(trainer)
    trainer.fit()
    micro = len(trainer.epoch_plan(0))  # 18 micro-batches an epoch: 9 updates
    assert len(recorder.losses) == 2 * micro and trainer.global_step == 18
    # update u ends micro-batch 2u of the run (epochs split evenly here)
    tasks = trainer.cfg.train_datasets
    expected = []
    for u in [1, *range(3, 19, 3)]:
        seen = recorder.losses[:2 * u]
        mean = sum(loss * n for _, loss, n in seen) / sum(n for _, _, n in seen)
        expected.append((tasks.index(seen[-1][0]), u, mean))
    lines = loss_lines(workspace / "loss-lines" / "train.log")
    assert [(t, u) for t, u, _ in lines] == [(t, u) for t, u, _ in expected]
    for (_, _, printed), (_, _, mean) in zip(lines, expected):
        assert abs(float(printed) - mean) <= 5e-6 + 1e-6 * mean, (printed, mean)
    assert loss_lines(log_file) == lines
    # the window mean (progress bar, TensorBoard) stays on the multiples of --log_per_updates
    assert [s for s, _ in trainer.loss_log] == [3, 6, 9, 12, 15, 18]


def test_no_loss_lines_with_log_per_updates_0(workspace):
    Trainer(config(workspace, "no-lines", train_datasets=["score"], test_datasets=["score"], epochs=1,
                   log_every=0)).fit()
    assert loss_lines(workspace / "no-lines" / "train.log") == []


# ---------------------------------------------------------------------------------------------- mid-epoch evaluation
def test_mid_epoch_evaluation_every_n_updates(workspace):
    """18 updates an epoch, --save_per_updates 6: evaluated at updates 6, 12, 24, 30 inside the epochs; 18 and 36
    end an epoch and are evaluated once, as the epoch."""
    trainer = Trainer(config(workspace, "mid", **TWO_TASKS, save_per_updates_on=True, save_per_updates=6,
                             keep_last=10))
    history = trainer.fit()
    out = workspace / "mid"
    assert [(r["epoch"], r["step"], r.get("updates")) for r in records(out)] == \
        [(0, 6, 6), (0, 12, 12), (0, 18, None), (1, 24, 24), (1, 30, 30), (1, 36, None)]
    assert records(out) == json.loads(json.dumps(history))
    assert sorted(p.name for p in out.glob("step-*")) == ["step-12", "step-18", "step-24", "step-30", "step-36",
                                                          "step-6"]
    scores = json.loads((out / "pairs_dev_scores_updates_12.json").read_text())
    assert scores["metrics"] == records(out)[1]["dev"]["pairs_dev"]
    assert (out / "pairs_test_submission_updates_30.tsv").is_file()
    text = (out / "train.log").read_text()
    assert "epoch 0 updates 6 GLUE-style dev average" in text and "epoch 0 GLUE-style dev average" in text
    best = json.loads((out / "best" / "metrics.json").read_text())
    assert best["glue_average"] == max(r["glue_average"] for r in records(out))
    # the checkpoint written with an evaluation holds the weights it scored
    step6 = predict(out / "step-6", workspace / "pred-mid")
    assert step6["metrics"] == records(out)[0]["dev"]["pairs_dev"]


def test_resumed_run_with_mid_epoch_evaluation_equals_uninterrupted_one(workspace):
    """Killed after 8 updates (the newest checkpoint: step-6, written with the evaluation at 6) and resumed: the
    same weights, the same metrics.jsonl and, after the resume point, the same loss lines."""
    settings = dict(**TWO_TASKS, save_per_updates_on=True, save_per_updates=6, log_every=2)
    full = Trainer(config(workspace, "mid-full", **settings))
    full.fit()
    Trainer(config(workspace, "mid-cut", **settings)).fit(stop_after_steps=8)
    assert (workspace / "mid-cut" / "latest").read_text().strip() == "step-6"
    resumed = Trainer(config(workspace, "mid-cut", **settings, resume=True))
    resumed.fit()
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (workspace / "mid-cut" / "metrics.jsonl").read_text() == \
        (workspace / "mid-full" / "metrics.jsonl").read_text()
    log = (workspace / "mid-cut" / "train.log").read_text()
    after_resume = workspace / "resumed-part.log"
    after_resume.write_text(log[log.index("resumed from"):])
    resumed_lines = loss_lines(after_resume)
    assert [u for _, u, _ in resumed_lines] == list(range(8, 37, 2))
    assert resumed_lines == [line for line in loss_lines(workspace / "mid-full" / "train.log") if line[1] >= 8]


# ---------------------------------------------------------------------------------------------- epoch-N/
def predict(checkpoint: Path, out: Path) -> dict:
    assert predict_cli.main(["--checkpoint", str(checkpoint), "--task", "pairs", "--split", "dev",
                             "--output_dir", str(out), "--device", "cpu"]) == 0
    return json.loads((out / "pairs_dev_scores_predict.json").read_text())


def test_save_per_epoch_keeps_the_newest_epochs_each_a_checkpoint(workspace, capsys):
    trainer = Trainer(config(workspace, "epochs", **TWO_TASKS, epochs=3, save_per_epoch=True, keep_epochs=2))
    history = trainer.fit()
    out = workspace / "epochs"
    assert sorted(p.name for p in out.glob("epoch-*")) == ["epoch-1", "epoch-2"]
    for epoch in (1, 2):
        folder = out / f"epoch-{epoch}"
        assert json.loads((folder / "metrics.json").read_text()) == json.loads(json.dumps(history[epoch]))
        assert not (folder / "training_state.pt").exists()
        assert checkpoint_kind(str(folder)) == "run"
    # the last epoch is the final model
    final = load_file(str(out / "epoch-2" / "model.safetensors"))
    assert all(torch.equal(final[k], v) for k, v in trainer.model.state_dict().items())
    # predict.py reads epoch-1 and scores what that epoch's evaluation scored
    scored = predict(out / "epoch-1", workspace / "pred-epochs")
    capsys.readouterr()
    epoch1 = json.loads((out / "pairs_dev_scores_1.json").read_text())
    assert scored["predictions"] == epoch1["predictions"] and scored["metrics"] == epoch1["metrics"]
    # and --init_checkpoint starts from it
    warm = Trainer(config(workspace, "from-epoch", **TWO_TASKS, init_checkpoint=str(out / "epoch-1")))
    saved = load_file(str(out / "epoch-1" / "model.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in warm.model.state_dict().items())
    warm.release()


def test_keep_epochs_0_keeps_all_and_overwrite_removes_them(workspace):
    Trainer(config(workspace, "all-epochs", train_datasets=["score"], test_datasets=["score"], epochs=3,
                   save_per_epoch=True)).fit()
    out = workspace / "all-epochs"
    assert sorted(p.name for p in out.glob("epoch-*")) == ["epoch-0", "epoch-1", "epoch-2"]
    results, logs = run_folder.own_entries(out)
    assert {"epoch-0", "epoch-1", "epoch-2"} <= {p.name for p in results} and "config.json" in {p.name for p in logs}
    Trainer(config(workspace, "all-epochs", train_datasets=["score"], test_datasets=["score"], epochs=1,
                   overwrite=True)).fit()
    assert list(out.glob("epoch-*")) == []


# ---------------------------------------------------------------------------------------------- config.json
def test_config_json_holds_the_runs_options_on_one_line(workspace):
    out = workspace / "cfg-line"
    Trainer(config(workspace, "cfg-line", **TWO_TASKS, epochs=1, max_steps=2)).fit()
    text = (out / "config.json").read_text()
    assert text.count("\n") == 1 and text.endswith("}\n")
    options = json.loads(text.splitlines()[0])  # how MT-DNN's config.json is read: its first line
    assert options == json.loads((out / "best" / "train_config.json").read_text())
    assert load_config(out / "config.json").train_datasets == ["pairs", "score"]


def test_resume_rewrites_config_json_with_the_resumed_runs_options(workspace):
    settings = dict(train_datasets=["score"], test_datasets=["score"], epochs=2, save_every_steps=2)
    Trainer(config(workspace, "cfg-resume", **settings)).fit(stop_after_steps=3)
    assert json.loads((workspace / "cfg-resume" / "config.json").read_text())["keep_last"] == 1
    Trainer(config(workspace, "cfg-resume", **settings, keep_last=3, resume=True)).fit()
    options = json.loads((workspace / "cfg-resume" / "config.json").read_text())
    assert options["keep_last"] == 3 and options["resume"] is True


def test_a_config_json_train_py_did_not_write_is_kept(workspace):
    """An encoder's config.json in --output_dir is not a run's: no refusal, and --overwrite keeps it."""
    out = workspace / "foreign-config"
    out.mkdir()
    (out / "config.json").write_text('{"model_type": "bert", "hidden_size": 32}\n')
    assert run_folder.own_entries(out) == ([], [])
    assert [p.name for p in run_folder.foreign_entries(out)] == ["config.json"]
    run_folder.claim(out, resume=False, overwrite=True, has_checkpoint=lambda: False)[0].release()
    assert json.loads((out / "config.json").read_text())["model_type"] == "bert"


def test_a_run_folder_with_config_json_is_still_refused_as_init_checkpoint(workspace, tmp_path):
    (tmp_path / "best").mkdir()
    run_config.write(tmp_path, config(workspace, "x").to_json())
    with pytest.raises(ValueError, match=r"this is a run's output folder; pass .*best or one of its step-N"):
        checkpoint_kind(str(tmp_path))


# ---------------------------------------------------------------------------------------------- flags
def test_mtdnn_flags_parse_to_the_options(capsys):
    cfg = parse_args(["--train_datasets", "rte", "--save_per_updates_on", "--save_per_updates", "100",
                      "--save_per_epoch", "--keep_epochs", "2", "--log_per_updates", "500"])
    assert (cfg.save_per_updates_on, cfg.save_per_updates, cfg.save_per_epoch, cfg.keep_epochs, cfg.log_every) == \
        (True, 100, True, 2, 500)
    assert capsys.readouterr().err == ""
    assert parse_args(["--train_datasets", "rte"]).save_per_updates == 10000  # MT-DNN's default


def test_save_per_updates_without_its_switch_is_one_notice(capsys):
    assert parse_args(["--train_datasets", "rte", "--save_per_updates", "100"]).save_per_updates_on is False
    assert capsys.readouterr().err.splitlines() == [
        "train.py: warning: --save_per_updates 100 has no effect without --save_per_updates_on (MT-DNN reads it "
        "only then)"]


@pytest.mark.parametrize("args,message", [
    (["--save_per_updates_on", "--save_per_updates", "0"], "--save_per_updates: must be >= 1, got 0"),
    (["--keep_epochs", "2"], "--keep_epochs: applies to the epoch-N folders of --save_per_epoch; add "
                             "--save_per_epoch or leave the flag out"),
    (["--save_per_epoch", "--keep_epochs", "-1"], "--keep_epochs: must be >= 0 (0: keep every epoch-N folder), "
                                                  "got -1"),
])
def test_bad_output_flags_are_refused_in_one_line(args, message, tmp_path, capsys):
    import train as train_cli
    out = tmp_path / "never"
    assert train_cli.main(["--train_datasets", "rte", "--output_dir", str(out), *args]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"train.py: error: {message}"
    assert not out.exists()


def test_run_folder_patterns_know_the_new_files(tmp_path):
    for name in ("epoch-3", "rte_dev_scores_updates_600.json", "rte_test_submission_updates_600.tsv"):
        (tmp_path / name).mkdir() if name.startswith("epoch") else (tmp_path / name).write_text("x")
    assert sorted(p.name for p in run_folder.own_entries(tmp_path)[0]) == \
        ["epoch-3", "rte_dev_scores_updates_600.json", "rte_test_submission_updates_600.tsv"]
