"""SIGTERM (a scheduler's preemption) and SIGINT (Ctrl-C) stop a run at the next step boundary, checkpointed.

While :class:`StopSignals` is active the first signal only sets a flag; the trainer checks it after each
optimizer step (and after each epoch's evaluation), saves a step checkpoint and raises :class:`Stopped`, which
``train.py`` reports in one line and exits with 128 + the signal number. A second signal raises
:class:`Interrupted` at once, for a user who does not want to wait for the step to end.

Under torchrun the ranks may see a signal at different steps (or only some of them see it), so the flag is
agreed on: a max over all ranks at every check, through a CPU (gloo) group so that no GPU work is waited for.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator, Optional

import torch
import torch.distributed as dist

from mt_dnn import distributed as dist_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(Exception):
    """The run stopped on a signal after saving a step checkpoint."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; continue with --resume")
        self.signum, self.step = signum, step

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class Interrupted(KeyboardInterrupt):
    """A signal that ends the process at once: before training started, or a second one while stopping."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}; --resume continues from the newest "
                         "complete checkpoint in --output_dir, if there is one")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _raise_interrupted(signum, _frame) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """SIGTERM and SIGINT raise :class:`Interrupted` (SIGTERM would otherwise end the process without a word);
    the previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _raise_interrupted) for signum in SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def ignore_in_worker(_worker_id: int = 0) -> None:
    """For helper processes (DataLoader workers, tokenizer pools): the signal is the main process's to handle;
    the main process shuts its helpers down itself."""
    for signum in SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


class StopSignals:
    """Context manager: while active, SIGTERM and SIGINT request a stop instead of ending the process."""

    def __init__(self):
        self.received = 0
        self._previous: dict[int, object] = {}
        self._group = None

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        if dist_utils.active():  # every rank enters here, so every rank creates the group
            self._group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum, _frame) -> None:
        if self.received:
            raise Interrupted(signum)
        self.received = signum

    def agreed(self) -> Optional[int]:
        """The signal every rank stops on now, or None; the same answer on every rank."""
        if not dist_utils.active():
            return self.received or None
        flag = torch.tensor([self.received], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        return int(flag.item()) or None
