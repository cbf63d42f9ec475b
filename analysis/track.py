"""Train exactly like ``train.py`` with a :class:`~analysis.tracker.SensitivityTracker` attached.

For train.py builds that do not wire the tracker in themselves: a ``torch.optim`` step pre-hook lets the
tracker observe each step's unscaled, clipped gradients just before the update, as the trainer would call it
(a step the GradScaler skips for overflowing gradients never runs the hook).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence


def attach(trainer, path: Path, every: int):
    """Observe every optimizer step of ``trainer`` first; returns the tracker (close it when training ends)."""
    from analysis.tracker import SensitivityTracker
    tracker = SensitivityTracker(trainer.model, trainer.optimizer, path, every, beta3=trainer.cfg.beta3)
    trainer.optimizer.register_step_pre_hook(lambda optimizer, args, kwargs: tracker.observe(trainer.global_step + 1))
    return tracker


def train_with_tracker(train_args: Sequence[str], every: int, log_name: str = "sensitivity.jsonl") -> dict:
    from mt_dnn.config import parse_args
    from mt_dnn.trainer import Trainer
    if every < 1:
        raise ValueError(f"--every: must be >= 1, got {every}")
    cfg = parse_args(list(train_args))
    if cfg.resume:
        raise ValueError("--resume: the tracker's own EMA is not checkpointed; start a fresh run to track it")
    trainer = Trainer(cfg)
    log_path = Path(cfg.output_dir) / log_name
    if log_path.exists():
        raise ValueError(f"{log_path}: already exists; remove it or choose another --log_name")
    tracker = attach(trainer, log_path, every)
    try:
        history = trainer.fit()
    finally:
        tracker.close()
    return {"log": str(log_path), "steps": trainer.global_step, "history": history}
