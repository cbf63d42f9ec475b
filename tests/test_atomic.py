"""Atomic writes give their files the modes open() and mkdir() would under the umask (0o666 / 0o777 minus it):
a temp from mkstemp (0600) or mkdtemp (0700), or a file a library writes privately (safetensors: 0600), must not
make a shared run's model unreadable to a teammate, nor a private one readable."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from data_utils.atomic import atomic_folder, atomic_write, current_umask


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o022, 0o002, 0o077, 0o027])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def test_umask_is_read_without_changing_it(umask):
    assert current_umask() == umask
    assert os.umask(umask) == umask  # still set: reading it did not change it


def test_atomic_files_get_the_mode_open_would_give(tmp_path, umask):
    with atomic_write(tmp_path / "scores.json") as handle:
        handle.write("{}")
    with open(tmp_path / "plain.txt", "w") as handle:  # the reference: what open() gives
        handle.write("x")
    assert _mode(tmp_path / "scores.json") == _mode(tmp_path / "plain.txt") == 0o666 & ~umask
    with atomic_write(tmp_path / "train_rte.sh", executable=True) as handle:
        handle.write("#!/bin/sh\n")
    assert _mode(tmp_path / "train_rte.sh") == 0o777 & ~umask


def test_checkpoint_folders_and_everything_in_them_honour_the_umask(tmp_path, umask):
    from mt_dnn.checkpoint import save_checkpoint
    model = torch.nn.Linear(3, 2)
    save_checkpoint(tmp_path / "best", model, "{}", {"progress": 1}, {"metrics.json": "{}"})
    (tmp_path / "reference").mkdir()
    assert _mode(tmp_path / "best") == _mode(tmp_path / "reference") == 0o777 & ~umask
    files = sorted(p.name for p in (tmp_path / "best").iterdir())
    assert files == ["metrics.json", "model.safetensors", "train_config.json", "training_state.pt"]
    for name in files:  # safetensors writes 0600 on its own: the folder's files must still follow the umask
        assert _mode(tmp_path / "best" / name) == 0o666 & ~umask, name
    with atomic_folder(tmp_path / "export", overwrite=True) as tmp:
        (tmp / "sub").mkdir(mode=0o700)
        (tmp / "sub" / "tokenizer.json").write_text("{}")
        os.chmod(tmp / "sub" / "tokenizer.json", 0o600)
    assert _mode(tmp_path / "export" / "sub") == 0o777 & ~umask
    assert _mode(tmp_path / "export" / "sub" / "tokenizer.json") == 0o666 & ~umask


def test_figures_demo_records_and_sensitivity_caches_honour_the_umask(tmp_path, umask):
    from matplotlib.figure import Figure
    from analysis.plots import save_figure
    from experiments.demo.run_demo import write_json
    fig = Figure()
    fig.add_subplot().plot([0, 1])
    save_figure(fig, tmp_path / "fig.png")
    write_json(tmp_path / "demo_run.json", {"seconds": 1.0})
    for name in ("fig.png", "demo_run.json"):
        assert _mode(tmp_path / name) == 0o666 & ~umask, name
