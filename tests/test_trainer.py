"""Trainer on a tiny random BERT and synthetic shards: every task type, sampler proportions, exact resume,
determinism, mixed precision, output files, and the CLI's errors."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train as train_cli
from data_utils.task_def import load_task_defs
from mt_dnn.batcher import TaskData, collate, epoch_plan, load_split, shard_for_rank
from mt_dnn.config import TrainConfig, parse_args
from mt_dnn.trainer import Trainer
from workspace import TASK_YAML, config, make_workspace, write_shards  # noqa: F401 (shared helpers)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return make_workspace(tmp_path_factory, "trainer")


def weights(out: Path, folder: str) -> dict:
    return load_file(str(out / folder / "model.safetensors"))


def test_trains_all_task_types_and_writes_outputs(workspace):
    trainer = Trainer(config(workspace, "run-all", tensorboard=True))
    history = trainer.fit()
    out = workspace / "run-all"
    assert len(history) == 2 and trainer.global_step == trainer.total_steps
    rec = history[-1]
    assert set(rec["dev"]) == {"pairs_dev", "score_dev", "pick_dev"}
    assert rec["dev"]["pairs_dev"].keys() == {"ACC", "F1"}
    expected_avg = sum([sum(m.values()) / len(m) for m in rec["dev"].values()]) / 3
    assert rec["glue_average"] == pytest.approx(expected_avg)
    scores = json.loads((out / "pick_dev_scores_1.json").read_text())
    assert set(scores) == {"metrics", "predictions", "uids", "scores"}
    assert len(scores["uids"]) == 24 and len(scores["scores"]) == 24 * 3  # MT-DNN's layout: one flat list
    assert all(isinstance(s, float) for s in scores["scores"])
    assert sum(scores["scores"][:3]) == pytest.approx(1.0)  # a row's 3 probabilities come first
    lines = (out / "pairs_test_submission_1.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 11
    assert all(line.split("\t")[1] in ("not", "same") for line in lines[1:])
    saved = json.loads((out / "best" / "train_config.json").read_text())
    assert saved["optimizer"] == "usadamax" and saved["train_datasets"] == ["pairs", "score", "pick"]
    assert (out / "train.log").read_text().count("GLUE-style dev average") == 2
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tensorboard").iterdir())


def test_loss_goes_down(workspace):
    trainer = Trainer(config(workspace, "run-score", train_datasets=["score"], test_datasets=["score"], epochs=6,
                                learning_rate=0.03))
    trainer.fit()
    losses = [loss for _, loss in trainer.loss_log]
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3, losses


def test_resume_after_interruption_gives_identical_weights(workspace):
    full = Trainer(config(workspace, "run-full", save_every_steps=3))
    full.fit()
    # Interrupted run: dies after 8 steps; its newest checkpoint is step 6, so steps 7-8 are redone.
    cut = Trainer(config(workspace, "run-cut", save_every_steps=3))
    cut.fit(stop_after_steps=8)
    assert (workspace / "run-cut" / "latest").read_text().strip() == "step-6"
    resumed = Trainer(config(workspace, "run-cut", save_every_steps=3, resume=True))
    resumed.fit()
    assert resumed.global_step == full.global_step
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed.history[-1]["dev"] == full.history[-1]["dev"]


def test_same_seed_same_metrics_other_seed_differs(workspace):
    a = Trainer(config(workspace, "seed-a", epochs=1)).fit()
    b = Trainer(config(workspace, "seed-b", epochs=1)).fit()
    c = Trainer(config(workspace, "seed-c", epochs=1, seed=8)).fit()
    assert a[-1]["dev"] == b[-1]["dev"]
    assert a[-1]["dev"] != c[-1]["dev"]


@pytest.mark.parametrize("flag", ["bf16", "fp16"])
def test_mixed_precision_with_sage(workspace, flag, monkeypatch):
    # train.py refuses --fp16 off CUDA (too slow for a real encoder); the tiny one exercises the GradScaler path
    monkeypatch.setattr("mt_dnn.precision.FP16_DEVICE_TYPES", ("cuda", "cpu"))
    trainer = Trainer(config(workspace, f"amp-{flag}", epochs=1, **{flag: True}))
    trainer.fit()
    assert trainer.global_step == trainer.total_steps
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert trainer.scaler.is_enabled() == (flag == "fp16")


def test_grad_accumulation_counts_steps(workspace):
    trainer = Trainer(config(workspace, "accum", epochs=1, grad_accumulation_step=3))
    trainer.fit()
    assert trainer.global_step == -(-trainer.micro_per_epoch // 3)


def _fake(lengths, task="pairs", ws=None):
    return TaskData(load_task_defs_cached(ws)[task], "train", [str(i) for i in range(len(lengths))],
                    [0] * len(lengths), [[1] * n for n in lengths], [[0] * n for n in lengths], list(lengths))


def load_task_defs_cached(ws):
    return load_task_defs(ws / "tasks.yml")


def test_sampler_proportions_ratio_and_mix_opt(workspace):
    big, small = _fake([5] * 320, ws=workspace), _fake([5] * 80, "score", workspace)
    plan = epoch_plan([big, small], 8, seed=1, epoch=0)
    counts = [sum(1 for t, _ in plan if t == k) for k in (0, 1)]
    assert counts == [40, 10]
    assert sorted(i for t, idx in plan if t == 0 for i in idx) == list(range(320))
    assert plan != epoch_plan([big, small], 8, seed=1, epoch=1)
    assert plan == epoch_plan([big, small], 8, seed=1, epoch=0)
    ratio = epoch_plan([big, small], 8, seed=1, epoch=0, ratio=0.1)
    assert [sum(1 for t, _ in ratio if t == k) for k in (0, 1)] == [40, 4]
    ordered = epoch_plan([big, small], 8, seed=1, epoch=0, mix_opt=1)
    assert [t for t, _ in ordered] == [1] * 10 + [0] * 40
    # the first half of the plan already mixes both tasks
    assert len({t for t, _ in plan[:25]}) == 2


def test_length_bucketing_and_padding(workspace):
    rng = random.Random(0)
    lengths = [rng.randint(3, 60) for _ in range(400)]
    data = _fake(lengths, ws=workspace)
    plan = epoch_plan([data], 16, seed=0, epoch=0)
    waste = sum(max(lengths[i] for i in idx) * len(idx) - sum(lengths[i] for i in idx) for _, idx in plan)
    assert waste < 0.1 * sum(lengths)  # random batching would waste ~40%
    batch = collate(data, plan[0][1], pad_id=0)
    assert batch["input_ids"].shape[1] % 8 == 0
    assert batch["attention_mask"].sum().item() == sum(lengths[i] for i in plan[0][1])
    assert shard_for_rank(list(range(10)), 0, 2) + shard_for_rank(list(range(10)), 1, 2) == list(range(10))


def test_ranking_collate_shape(workspace):
    td = load_task_defs(workspace / "tasks.yml")["pick"]
    data = load_split(workspace / "shards", td, "train", max_seq_len=12)
    batch = collate(data, [0, 1, 2], pad_id=0)
    assert batch["input_ids"].shape[:2] == (3, 3) and batch["input_ids"].shape[2] == 16
    assert max(len(t) for group in data.token_ids for t in group) <= 12


def test_cli_parses_mt_dnn_flags():
    cfg = parse_args(["--train_datasets", "rte,mrpc", "--optim", "usadamw", "--learning_rate", "3e-4",
                      "--beta3", "0.8", "--epochs", "2", "--bf16", "--ratio", "0.5", "--mix_opt", "1"])
    assert cfg.train_datasets == ["rte", "mrpc"] and cfg.test_datasets == ["rte", "mrpc"]
    assert (cfg.optimizer, cfg.learning_rate, cfg.beta3, cfg.bf16) == ("usadamw", 3e-4, 0.8, True)
    assert TrainConfig.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize("args,message", [
    (["--optimizer", "adamq"], "--optimizer: unknown optimizer 'adamq'"),
    (["--beta3", "1.0"], "--beta3: must be in [0, 1)"),
    (["--fp16", "--bf16"], "--fp16: choose one"),
    (["--batch_size", "0"], "--batch_size: must be >= 1"),
    (["--warmup_schedule", "step"], "--warmup_schedule: unknown schedule"),
    (["--fsdp", "--optim_impl", "fused"], "--optim_impl: fused is not available on FSDP"),
    (["--fsdp", "--log_sensitivity_every", "5"], "--log_sensitivity_every: not available with --fsdp"),
    (["--log_sensitivity_every", "-1"], "--log_sensitivity_every: must be >= 0"),
    (["--dist_timeout", "0"], "--dist_timeout: must be > 0"),
])
def test_cli_rejects_bad_flags(args, message, capsys):
    assert train_cli.main(["--train_datasets", "rte"] + args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_cli_reports_missing_shard_and_task(workspace, capsys):
    base = ["--task_def", str(workspace / "tasks.yml"), "--init_checkpoint", str(workspace / "tiny-bert"),
            "--output_dir", str(workspace / "cli-err"), "--no_tensorboard"]
    assert train_cli.main(base + ["--train_datasets", "pairs", "--data_dir", str(workspace / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "pairs_train.jsonl: shard not found" in err
    assert train_cli.main(base + ["--train_datasets", "nli", "--data_dir", str(workspace / "shards")]) == 2
    assert "nli" in capsys.readouterr().err


def test_predict_cli_reproduces_dev_metrics_and_writes_submission(workspace, capsys):
    import predict as predict_cli
    out = workspace / "run-predict"
    trainer = Trainer(config(workspace, "run-predict", epochs=1))
    history = trainer.fit()
    assert predict_cli.main(["--checkpoint", str(out / "best"), "--task", "pairs", "--split", "dev",
                             "--batch_size", "5"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["metrics"] == pytest.approx(history[-1]["dev"]["pairs_dev"])
    assert predict_cli.main(["--checkpoint", str(out / "best"), "--task", "pairs", "--split", "test"]) == 0
    lines = (out / "best" / "pairs_test_submission_predict.tsv").read_text().splitlines()
    assert lines == (out / "pairs_test_submission_0.tsv").read_text().splitlines()
    capsys.readouterr()
    assert predict_cli.main(["--checkpoint", str(out / "best"), "--task", "nli"]) == 2
    assert "--task: 'nli' is not a task of this checkpoint" in capsys.readouterr().err
