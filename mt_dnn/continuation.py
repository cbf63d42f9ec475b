"""Continuing an MT-DNN or SAGE run: which model ``--resume --model_ckpt X`` continues, and the optimizer state a
run takes over from the ``.pt`` it starts from (mapped exactly onto this run's optimizer, or refused)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from mt_dnn import checkpoint as ckpt
from mt_dnn import upstream_checkpoint as upstream
from mt_dnn.config import TrainConfig
from mt_dnn.warm_start import Source, Start, checkpoint_kind

log = logging.getLogger("sage.train")


@dataclass(frozen=True)
class Continued:
    """``--resume --model_ckpt X``: X, the model this run continues (None without those flags)."""
    model_ckpt: Optional[str] = None
    read_optimizer: bool = False  # X's optimizer state is read: --output_dir holds no checkpoint of this run yet


def model_ckpt_to_continue(cfg: TrainConfig, output_dir: Path) -> Continued:
    """X's optimizer state is read only while --output_dir holds no checkpoint yet; once this run has checkpoints
    of its own, --resume continues those (the model is still built from X, as a run from --init_checkpoint is)."""
    if not (cfg.resume and cfg.model_ckpt):
        return Continued()
    if not Path(cfg.model_ckpt).is_file():
        what = "a folder: to continue one of this project's runs, --resume with its --output_dir" \
            if Path(cfg.model_ckpt).is_dir() else "no such file"
        raise ValueError(f"--model_ckpt {cfg.model_ckpt}: {what}")
    init = cfg.init_checkpoint
    if checkpoint_kind(init) != "encoder" and Path(init).resolve() != Path(cfg.model_ckpt).resolve():
        raise ValueError(f"--model_ckpt {cfg.model_ckpt}: --init_checkpoint {init} is a trained model too; give "
                         "one of them (under --resume, --model_ckpt is the model continued)")
    return Continued(cfg.model_ckpt, not ckpt.resume_candidates(output_dir))


def continue_optimizer(start: Start, continued: Continued, optimizer: torch.optim.Optimizer, model: torch.nn.Module,
                       cfg: TrainConfig, total_steps: int, sharded: bool) -> int:
    """The optimizer state of an MT-DNN/SAGE ``.pt`` this run starts from, mapped onto this run's optimizer:
    required under --resume --model_ckpt (anything that cannot be mapped exactly, or saved options that differ
    from this run's flags without --allow_config_change, is an error); under --init_checkpoint restored where
    it maps one-to-one and the options agree, else the optimizer starts fresh. Logs the init line and what was
    done; returns the optimizer steps already taken."""
    src, continuing = start.source, continued.model_ckpt
    if src is None:
        return 0
    prefix = f"--model_ckpt {continuing}: continuing" if continuing else "init from"
    if src.blob is None or (not continuing and "optimizer" not in src.blob) or \
            (continuing and not continued.read_optimizer):  # --resume reads this run's own state
        log.info(start.loaded.line(prefix))
        return 0
    names = {id(p): name for name, p in model.named_parameters()}
    try:
        state = _read_optimizer(src, bool(continuing), optimizer, names, cfg, total_steps, sharded)
    except upstream.Unmappable as exc:
        if continuing:
            raise ValueError(f"--model_ckpt: {exc}") from None
        log.info(start.loaded.line(prefix))
        log.info("--init_checkpoint: optimizer state not restored, the optimizer starts fresh at step 0 (%s)", exc)
        return 0
    placed = upstream.apply(optimizer, names, state)
    log.info(start.loaded.line(prefix, used=("'optimizer'",)))
    low, high = state.steps
    steps = f"step {high}" if low == high else f"steps {low}..{high} per parameter (the schedule counts {high})"
    log.info("%s: optimizer state restored for %d parameters, %s; the schedule goes on from step %d of %d",
             "--model_ckpt" if continuing else "--init_checkpoint", placed, steps, state.step, total_steps)
    return state.step


def _read_optimizer(src: Source, continuing: bool, optimizer: torch.optim.Optimizer, names: dict[int, str],
                    cfg: TrainConfig, total_steps: int, sharded: bool) -> upstream.OptimizerState:
    if sharded:
        raise upstream.Unmappable(f"{src.where}: optimizer state cannot be placed on --fsdp shards")
    state = upstream.read_optimizer(src.blob, src.blob.get("config") or {}, src.key_map, cfg, total_steps,
                                    optimizer, names, src.where)
    if state.differences:
        listed = "; ".join(state.differences)
        if not continuing:
            raise upstream.Unmappable(f"{src.where}: its saved options differ from this run's flags: {listed}")
        if not cfg.allow_config_change:
            raise ValueError(f"--model_ckpt {src.where}: its saved options differ from this run's flags: {listed}; "
                             "give the same flags, or pass --allow_config_change to continue with this run's")
        log.warning("--model_ckpt with --allow_config_change: this run's flags are used: %s", listed)
    return state
