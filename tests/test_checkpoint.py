"""Checkpoint RNG states (mt_dnn/checkpoint.py) across a change in the number of visible GPUs, with a fake
``torch.cuda`` whose generators are byte tensors: the same count restores every generator exactly as saved,
fewer GPUs restore the first ones and say in one line what was dropped, and a resumed run goes on."""
from __future__ import annotations

import pytest
import torch

from mt_dnn import checkpoint as ckpt
from mt_dnn.trainer import Trainer
from workspace import config, make_workspace


class FakeCuda:
    """The RNG half of torch.cuda for ``count`` GPUs: each generator state is a distinct byte tensor."""

    def __init__(self, count: int, base: int = 0):
        self.states = [torch.full((16,), base + i, dtype=torch.uint8) for i in range(count)]
        self.calls: list[tuple] = []

    def install(self, monkeypatch) -> "FakeCuda":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: bool(self.states))
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(self.states))
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in self.states])
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", self._set_all)
        monkeypatch.setattr(torch.cuda, "set_rng_state", self._set_one)
        return self

    def _set_all(self, states):
        self.calls.append(("all", len(states)))
        if len(states) != len(self.states):  # what the real call does on a count mismatch
            raise IndexError("list index out of range")
        self.states = [s.clone() for s in states]

    def _set_one(self, state, device):
        self.calls.append(("one", device))
        if not 0 <= device < len(self.states):
            raise RuntimeError(f"invalid device ordinal {device}")
        self.states[device] = state.clone()


def _saved_with(monkeypatch, count: int) -> dict:
    FakeCuda(count, base=100).install(monkeypatch)
    return ckpt.rng_state_from_bytes(ckpt.rng_state_bytes())  # the round trip a checkpoint makes


def test_same_gpu_count_restores_every_generator_exactly(monkeypatch):
    state = _saved_with(monkeypatch, 2)
    now = FakeCuda(2).install(monkeypatch)
    assert ckpt.set_rng_state(state) is None
    assert now.calls == [("all", 2)]
    assert [s.tolist() for s in now.states] == [[100] * 16, [101] * 16]


def test_fewer_gpus_restore_the_first_ones_and_name_what_was_dropped(monkeypatch):
    state = _saved_with(monkeypatch, 4)
    now = FakeCuda(2).install(monkeypatch)
    note = ckpt.set_rng_state(state)
    assert note == ("the checkpoint has CUDA RNG states for 4 GPU(s), 2 visible now: restored GPUs 0-1, dropped GPUs "
                    "2-3")
    assert now.calls == [("one", 0), ("one", 1)]
    assert [s.tolist() for s in now.states] == [[100] * 16, [101] * 16]


def test_more_gpus_restore_the_saved_ones_and_say_the_rest_keep_their_seed(monkeypatch):
    state = _saved_with(monkeypatch, 1)
    now = FakeCuda(3).install(monkeypatch)
    note = ckpt.set_rng_state(state)
    assert note == ("the checkpoint has CUDA RNG states for 1 GPU(s), 3 visible now: restored GPU 0, GPUs 1-2 keep "
                    "their seeded state")
    assert [s[0].item() for s in now.states] == [100, 1, 2]


def test_no_gpu_now_drops_the_cuda_states_and_restores_the_cpu_ones_exactly(monkeypatch):
    torch.manual_seed(3)
    state = _saved_with(monkeypatch, 2)
    expected = torch.rand(4)
    FakeCuda(0).install(monkeypatch)
    torch.manual_seed(99)
    assert ckpt.set_rng_state(state) == "the checkpoint's CUDA RNG states of GPUs 0-1 dropped (no GPU visible now)"
    assert torch.equal(torch.rand(4), expected)


def test_cpu_checkpoint_restores_silently_when_gpus_appear(monkeypatch):
    FakeCuda(0).install(monkeypatch)
    state = ckpt.rng_state()
    assert "cuda" not in state
    now = FakeCuda(2).install(monkeypatch)
    assert ckpt.set_rng_state(state) is None and now.calls == []


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory, "rng")


def test_resume_with_fewer_gpus_visible_goes_on_and_logs_what_was_dropped(ws, monkeypatch):
    """A CPU run that saw 2 (fake) GPUs, resumed where 1 is visible: one warning line, and the run ends where
    the uninterrupted run ends (its dropout streams are the CPU ones, restored exactly)."""
    common = dict(train_datasets=["pairs"], test_datasets=[], epochs=1, save_every_steps=2, max_steps=6,
                  device="cpu")
    FakeCuda(2).install(monkeypatch)
    full = Trainer(config(ws, "rng-full", **common))
    full.fit()
    Trainer(config(ws, "rng-cut", **common)).fit(stop_after_steps=3)
    state = torch.load(ws / "rng-cut" / "step-2" / ckpt.STATE, weights_only=True)
    assert len(state["rng"]["cuda"]) == 2
    FakeCuda(1).install(monkeypatch)
    resumed = Trainer(config(ws, "rng-cut", resume=True, **common))
    resumed.fit()
    log = (ws / "rng-cut" / "train.log").read_text()
    assert ("--resume: the checkpoint has CUDA RNG states for 2 GPU(s), 1 visible now: restored GPU 0, dropped "
            "GPU 1") in log
    assert resumed.global_step == 6
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.cuda
def test_real_cuda_generators_round_trip_exactly():
    state = ckpt.rng_state_from_bytes(ckpt.rng_state_bytes())
    expected = torch.rand(4, device="cuda")
    torch.cuda.manual_seed_all(123)
    assert ckpt.set_rng_state(state) is None
    assert torch.equal(torch.rand(4, device="cuda"), expected)
