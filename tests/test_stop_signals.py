"""mt_dnn/stop_signals.py: the first SIGTERM/SIGINT only asks for a stop (the trainer checkpoints at the next
step boundary; tests/test_interrupted_runs.py), a second one, or one before training starts, ends the process at
once with one line; the previous handlers come back."""
from __future__ import annotations

import os
import re
import signal

import pytest

from fault_driver import run_with_fault
from mt_dnn.stop_signals import Interrupted, Stopped, StopSignals, interrupt_on_signals


def test_first_signal_asks_for_a_stop_and_a_second_one_interrupts():
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    with StopSignals() as stops:
        assert stops.agreed() is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert stops.agreed() == signal.SIGTERM
        with pytest.raises(Interrupted) as info:
            os.kill(os.getpid(), signal.SIGINT)
            signal.getsignal(signal.SIGINT)  # the handler runs between two bytecodes
    assert info.value.exit_code == 130
    assert str(info.value) == ("interrupted by SIGINT; --resume continues from the newest complete checkpoint in "
                               "--output_dir, if there is one")
    assert {s: signal.getsignal(s) for s in before} == before
    assert str(Stopped(signal.SIGTERM, 12)) == "stopped by SIGTERM at step 12; continue with --resume"
    assert Stopped(signal.SIGTERM, 12).exit_code == 143


def test_interrupt_on_signals_turns_sigterm_into_an_exception():
    with pytest.raises(Interrupted) as info, interrupt_on_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        signal.getsignal(signal.SIGTERM)
    assert info.value.exit_code == 143 and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


@pytest.mark.subprocess
def test_sigterm_before_training_is_one_line_and_leaves_no_new_folder(tmp_path):
    from test_interrupted_runs import argv  # noqa: F401  (its flags; the workspace is built here)
    import torch
    from transformers import AutoModel

    from conftest import tiny_bert_config
    from workspace import TASK_YAML, write_shards
    torch.manual_seed(0)
    AutoModel.from_config(tiny_bert_config()).save_pretrained(tmp_path / "tiny-bert")
    (tmp_path / "tasks.yml").write_text(TASK_YAML, encoding="utf-8")
    write_shards(tmp_path / "shards", sizes=(32, 16, 16))
    proc = run_with_fault("term_in_setup", "train", argv(tmp_path, "run/new"))
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert re.findall(r"train\.py: [^\r\n]*", proc.stderr) == [
        "train.py: interrupted by SIGTERM; --resume continues from the newest complete checkpoint in --output_dir, "
        "if there is one"]
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()
