"""The input pipeline (mt_dnn/pipeline.py): worker processes build the same micro-batches as the training
thread, a run with workers equals one without, bit for bit, and resumes exactly; multi-tensor per-parameter
clipping keeps the per-parameter rule."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModel

from mt_dnn.batcher import collate, epoch_plan, load_split, shard_for_rank
from mt_dnn.config import parse_args
from mt_dnn.gradients import clip_each_parameter
from mt_dnn.pipeline import MicroBatches, PlanSampler, micro_batch_stream, rank_share
from mt_dnn.trainer import Trainer
from workspace import config, make_workspace
from data_utils.task_def import load_task_defs


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return make_workspace(tmp_path_factory, "pipeline")


def _sets(ws):
    defs = load_task_defs(ws / "tasks.yml")
    return [load_split(ws / "shards", defs[t], "train", 64) for t in ("pairs", "score", "pick")]


@pytest.mark.subprocess
@pytest.mark.parametrize("rank,world", [(0, 1), (1, 2)])
def test_workers_build_the_plans_batches_from_the_start_position(workspace, rank, world):
    sets = _sets(workspace)
    plan = epoch_plan(sets, 8, seed=3, epoch=1)
    start = 5
    got = list(micro_batch_stream(MicroBatches(sets, 0, False), PlanSampler(plan, start, rank, world), 2, False))
    assert len(got) == len(plan) - start
    for (task_idx, indices), batch in zip(plan[start:], got):  # the straightforward construction, by hand
        want = collate(sets[task_idx], shard_for_rank(indices, rank, world), 0)
        assert batch.keys() == want.keys()
        for key in want:
            assert torch.equal(batch[key], want[key]), key


def test_rank_share_weights_and_empty_shares():
    assert rank_share(list(range(10)), 1, 2) == ([5, 6, 7, 8, 9], 1.0)
    assert rank_share([4, 5, 6], 0, 2) == ([4], 2 / 3)
    assert rank_share([4, 5, 6], 1, 2) == ([5, 6], 4 / 3)
    assert rank_share([4], 0, 2) == ([4], 0.0)  # nothing for rank 0: one example at weight 0
    assert rank_share([4], 1, 2) == ([4], 2.0)


@pytest.mark.subprocess
def test_closing_the_stream_stops_its_workers(workspace):
    sets = _sets(workspace)
    stream = micro_batch_stream(MicroBatches(sets, 0, False), PlanSampler(epoch_plan(sets, 8, 0, 0), 0, 0, 1), 2,
                                False)
    next(stream)
    frame = stream.gi_frame
    workers = frame.f_locals["it"]._workers
    assert workers and all(w.is_alive() for w in workers)
    stream.close()
    assert not any(w.is_alive() for w in workers)


def _weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.subprocess
def test_workers_train_bit_identically_and_resume_exactly(workspace):
    inline = Trainer(config(workspace, "w0", num_workers=0, save_every_steps=4))
    inline.fit()
    full = Trainer(config(workspace, "w2", num_workers=2, save_every_steps=4))
    full.fit()
    a, b = _weights(inline), _weights(full)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # killed after 10 steps, mid-epoch 0 (22 micro-batches per epoch); the newest checkpoint is step 8
    cut = Trainer(config(workspace, "w2-cut", num_workers=2, save_every_steps=4))
    cut.fit(stop_after_steps=10)
    assert (workspace / "w2-cut" / "latest").read_text().strip() == "step-8"
    resumed = Trainer(config(workspace, "w2-cut", num_workers=2, save_every_steps=4, resume=True))
    resumed.fit()
    assert resumed.global_step == full.global_step
    c = _weights(resumed)
    for key in a:
        assert torch.equal(b[key], c[key]), key
    init = AutoModel.from_pretrained(workspace / "tiny-bert").state_dict()
    moved = max((a[f"encoder.{k}"] - v).abs().max().item() for k, v in init.items() if f"encoder.{k}" in a)
    assert moved > 1e-3  # the runs compared above trained


def test_per_parameter_clipping_matches_torchs_rule_per_parameter():
    torch.manual_seed(0)
    shapes, scales = [(3, 4), (5,), (2, 2, 2), (7,), (1,)], [10.0, 0.01, 3.0, 1e-3, 50.0]
    params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    for p, scale in zip(params, scales):
        p.grad = torch.randn_like(p) * scale
    params.append(torch.nn.Parameter(torch.randn(2)))  # no gradient: skipped
    expected = [None if p.grad is None else p.grad.clone() for p in params]
    for g in expected:  # the authors' rule, parameter by parameter: max_norm / (norm + 1e-6), at most 1
        if g is not None:
            g.mul_(min(1.0, 0.5 / (g.double().norm().item() + 1e-6)))
    clip_each_parameter(params, 0.5)
    for p, want in zip(params, expected):
        if want is None:
            assert p.grad is None
            continue
        torch.testing.assert_close(p.grad, want, rtol=1e-6, atol=0)
    assert params[0].grad.norm().item() == pytest.approx(0.5, rel=1e-5)  # clipped
    assert params[1].grad.norm().item() < 0.1  # small gradients untouched


def test_num_workers_flag_and_mtdnn_alias():
    assert parse_args(["--train_datasets", "rte"]).num_workers is None  # auto: 2 on CUDA, 0 on CPU
    assert parse_args(["--train_datasets", "rte", "--num_workers", "3"]).num_workers == 3
    assert parse_args(["--train_datasets", "rte", "--dataloader_num_workers", "1"]).num_workers == 1
    with pytest.raises(ValueError, match="--num_workers: must be >= 0, got -1"):
        parse_args(["--train_datasets", "rte", "--num_workers", "-1"])
    with pytest.raises(ValueError, match="--compile: not available with --fsdp"):
        parse_args(["--train_datasets", "rte", "--compile", "--fsdp"])
