"""mt_dnn/runtime.py: where a run's log lines go."""
from __future__ import annotations

import logging

from mt_dnn import runtime


def test_the_optimizers_choice_reaches_the_runs_log_and_stops_there_after_close(tmp_path):
    (tmp_path / "earlier").mkdir()
    runtime.setup_logging(tmp_path / "earlier")  # a run that never closed its log: its file must not get the line
    runtime.setup_logging(tmp_path)
    try:
        runtime.log.info("run line")
        logging.getLogger("sage.optim").info("optimizer step (usadamax cpu torch.float32): fused, c backend (why)")
    finally:
        runtime.close_logging()
    logging.getLogger("sage.optim").info("after close")
    lines = (tmp_path / "train.log").read_text(encoding="utf-8").splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == [
        "INFO run line", "INFO optimizer step (usadamax cpu torch.float32): fused, c backend (why)"]
    assert logging.getLogger("sage.optim").handlers == []
    assert (tmp_path / "earlier" / "train.log").read_text(encoding="utf-8") == ""
