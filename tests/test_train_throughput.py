"""bench/train_throughput.py's arguments: the transformers.Trainer rows need the dev requirements (accelerate,
datasets), and without them the bench refuses those rows in one line instead of failing mid-run."""
from __future__ import annotations

import sys

import pytest

from bench import train_throughput


@pytest.mark.parametrize("missing", [("accelerate",), ("datasets",), ("accelerate", "datasets")])
def test_trainer_rows_without_the_dev_requirements_are_refused(missing, monkeypatch, capsys):
    for name in missing:
        monkeypatch.setitem(sys.modules, name, None)  # importlib.util.find_spec then reports it absent
    with pytest.raises(SystemExit) as info:
        train_throughput.parse_args(["--only", "project,hf-best"])
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].split(": error: ", 1)[1] == (  # argparse's prog is argv[0]
        f"--only: the transformers.Trainer rows need {' and '.join(missing)} "
        "(pip install -r requirements-dev.txt); --only project runs without them")


def test_our_row_alone_needs_neither(monkeypatch, tmp_path):
    for name in ("accelerate", "datasets"):
        monkeypatch.setitem(sys.modules, name, None)
    (tmp_path / "MRPC").mkdir()
    (tmp_path / "MRPC" / "train.tsv").write_text("x\n", encoding="utf-8")
    cfg = train_throughput.parse_args(["--only", "project", "--glue_dir", str(tmp_path)])
    assert cfg.only == ("project",)
