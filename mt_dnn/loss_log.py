"""The training loss as the logs report it.

Two views of the same per-micro-batch losses (the loss each backward starts from, extra objective terms included):

- MT-DNN's line, every ``--log_per_updates`` optimizer updates and after the first one, into ``train.log``,
  ``--log_file`` and stderr: ``Task [ 0] updates[   100] train loss[0.41234] remaining[0:12:00]``. The loss is
  MT-DNN's ``train_loss.avg``: the running mean since the run started, each micro-batch weighted by its examples.
  It is saved in step checkpoints, so a resumed run logs the values the uninterrupted one logs. ``Task`` is the
  index (in ``--train_datasets``) of the task of the update's last micro-batch; ``remaining`` estimates the rest
  of the epoch from this epoch's pace so far, as MT-DNN does.
- the window mean since the previous log step or the epoch's start (progress bar, TensorBoard ``train/loss``,
  ``Trainer.loss_log``).

Losses stay on the device between log steps; only a logged step waits for them.
"""
from __future__ import annotations

import datetime
import logging
import time
from typing import Callable

import torch

from mt_dnn import distributed as dist_utils
from mt_dnn import optimizer_stats

log = logging.getLogger("sage.train")


def mtdnn_line(task_id: int, updates: int, loss: float, remaining: str) -> str:
    """MT-DNN's loss line (its train.py, without its --debug SMART figures)."""
    return f"Task [{task_id:2}] updates[{updates:6}] train loss[{loss:.5f}] remaining[{remaining}]"


def remaining_text(seconds: float) -> str:
    """``H:MM:SS`` (days first past 24 hours), whole seconds: MT-DNN's ``str(timedelta)`` cut at the dot."""
    return str(datetime.timedelta(seconds=max(seconds, 0.0))).split(".")[0]


class TrainLoss:
    """Accumulates one run's micro-batch losses and writes the log lines at the steps that log them."""

    def __init__(self, device: torch.device, log_every: int):
        self.log_every = log_every
        self.window = torch.zeros((), device=device)  # sum of the losses since the last logged step
        self.window_count = 0
        self.pending = torch.zeros((), device=device)  # example-weighted sum not yet added to ``total``
        self.total, self.examples = 0.0, 0  # MT-DNN's meter: example-weighted sum (mean over ranks), examples
        self.task_id = 0
        self.tick = self.epoch_start = time.perf_counter()
        self.epoch_done, self.epoch_left = 0, 0

    def start_epoch(self, position: int, length: int) -> None:
        """The window and the pace restart with each epoch (and each resumed one)."""
        self.window.zero_()
        self.window_count, self.tick = 0, time.perf_counter()
        self.epoch_start = self.tick
        self.epoch_done, self.epoch_left = 0, length - position

    def add(self, loss: torch.Tensor, examples: int, task_id: int) -> None:
        loss = loss.detach()
        self.window += loss
        self.window_count += 1
        self.pending += loss * examples
        self.examples += examples
        self.task_id = task_id
        self.epoch_done, self.epoch_left = self.epoch_done + 1, self.epoch_left - 1

    def due(self, step: int) -> bool:
        """MT-DNN logs at every multiple of --log_per_updates and after the first update (0: never)."""
        return bool(self.log_every) and (step % self.log_every == 0 or step == 1)

    def running_mean(self) -> float:
        """MT-DNN's ``train_loss.avg`` (a collective under torchrun: every rank calls it)."""
        self.total += dist_utils.all_reduce_mean(self.pending).item()
        self.pending.zero_()
        return self.total / self.examples if self.examples else 0.0

    def report(self, trainer, bar, log_scalars: Callable[[dict], None]) -> None:
        """The logs of optimizer step ``trainer.global_step`` (call when :meth:`due`)."""
        step, mean = trainer.global_step, self.running_mean()
        pace = (time.perf_counter() - self.epoch_start) / max(self.epoch_done, 1)
        log.info("%s", mtdnn_line(self.task_id, step, mean, remaining_text(pace * self.epoch_left)))
        if step % self.log_every:
            return  # the first update's extra line: the window view logs on multiples only
        window = dist_utils.all_reduce_mean(self.window / max(self.window_count, 1)).item()
        lr = trainer.scheduler.get_last_lr()[0]
        trainer.loss_log.append((step, window))
        bar.set_postfix(loss=f"{window:.4f}", lr=f"{lr:.2e}")
        # a pass over the optimizer state, on every rank (a collective under FSDP)
        stats = optimizer_stats.sage_stats(trainer.optimizer) if trainer.reporting.wanted else {}
        if trainer.reporting:
            rate = self.window_count * trainer.cfg.batch_size * trainer.world_size / (time.perf_counter() - self.tick)
            log_scalars({"train/loss": window, "train/lr": lr, "train/samples_per_s": rate, **stats})
        self.window.zero_()
        self.window_count, self.tick = 0, time.perf_counter()

    def state(self) -> dict:
        """The meter, for a step checkpoint (a collective under torchrun)."""
        self.running_mean()
        return {"sum": self.total, "examples": self.examples}

    def load(self, state: dict) -> None:
        self.total, self.examples = float(state["sum"]), int(state["examples"])
        self.pending.zero_()
