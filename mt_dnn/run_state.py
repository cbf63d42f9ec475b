"""A run's checkpoints: what a step checkpoint holds, writing it (all ranks take part, rank 0 writes), and reading
the newest intact one back under ``--resume``, checked against this run's flags, task labels and shards.

A resumed run continues exactly: weights, optimizer, schedule, GradScaler, every rank's RNG streams and the
objectives' own streams come from the checkpoint, and the epoch plan is rebuilt from (seed, epoch).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import torch

from data_utils import jsonsafe, shard_fingerprint
from data_utils.safe_load import loads_json
from mt_dnn import checkpoint as ckpt
from mt_dnn import data_record
from mt_dnn import distributed as dist_utils
from mt_dnn import head_layout as layouts
from mt_dnn import objectives as objectives_mod
from mt_dnn import run_folder, task_labels
from mt_dnn.config import TrainConfig

log = logging.getLogger("sage.train")
# Fields that --resume may change without --allow_config_change: where and how the run reports, not what it computes.
RESUME_HARMLESS = frozenset({"output_dir", "num_threads", "log_every", "device", "resume", "tensorboard",
                             "report_to", "dist_timeout", "keep_last", "save_every_steps", "log_sensitivity_every",
                             "batch_size_eval", "optim_impl", "allow_config_change", "num_workers",
                             "compile", "shard_cache", "overwrite", "save_per_epoch", "keep_epochs"})

Found = tuple[Path, dict, dict]  # (checkpoint folder, training state, full weights under FSDP)


class RunState:
    """Saves and restores the state of one ``mt_dnn.trainer.Trainer``: its model, optimizer, schedule, scaler,
    objectives and progress (epoch, position, global_step, best_score, first_step, history)."""

    def __init__(self, trainer):
        self.trainer = trainer

    # ------------------------------------------------------------------------------------------------ saving
    def save(self, folder: Path, extra_files: dict[str, str], training_state: Optional[dict] = None) -> Path:
        """All ranks take part (FSDP gathers), rank 0 writes, everyone waits until the folder is complete."""
        t = self.trainer
        t.check_finite()  # a checkpoint never holds non-finite weights
        weights = self._model_state()
        if t.is_main:
            ckpt.save_checkpoint(folder, weights, t.cfg.to_json(), training_state,
                                 {**extra_files, ckpt.ENCODER_CONFIG: t.model.encoder.config.to_json_string(),
                                  task_labels.FILE: task_labels.dumps(t.task_defs),
                                  data_record.FILE: data_record.dumps(t.train_sets, t.eval_sets)})
        dist_utils.barrier()
        return folder

    def save_step(self) -> Path:
        """``step-N/`` with the full training state, marked latest; older ones pruned to ``--keep_last``."""
        t = self.trainer
        state = self.training_state()
        folder = self.save(t.output_dir / f"step-{t.global_step}", {}, state if t.is_main else None)
        if t.is_main:
            ckpt.mark_latest(t.output_dir, folder)
            ckpt.prune_step_checkpoints(t.output_dir, t.cfg.keep_last)
        dist_utils.barrier()
        return folder

    def training_state(self) -> dict:
        t = self.trainer
        rngs = [ckpt.rng_state_from_bytes(b) for b in dist_utils.all_gather_objects(ckpt.rng_state_bytes())]
        extra = {}
        if t.objectives:  # their private RNG streams, per rank
            blobs = dist_utils.all_gather_objects(objectives_mod.states_to_bytes(t.objectives))
            extra["objective_ranks"] = [objectives_mod.states_from_bytes(b) for b in blobs]
        return {**extra, "optimizer": self._optimizer_state(), "optimizer_format": "full" if t.sharded else "torch",
                "scheduler": t.scheduler.state_dict(),
                "scaler": t.scaler.state_dict(), "rng": rngs[0], "rng_ranks": rngs,
                "progress": {"epoch": t.epoch, "position": t.position, "global_step": t.global_step,
                             "best_score": t.best_score, "first_step": t.first_step,
                             "train_loss": t.train_loss.state()},
                "history": jsonsafe.dumps(t.history), "shards": self.shard_fingerprints()}

    def shard_fingerprints(self) -> dict:
        """Every shard this run reads: training data (the gradients) and the dev/test shards it evaluates (the
        history, the best/ choice and the per-epoch files compare epochs, so they must score the same data)."""
        t = self.trainer
        return {d.name: d.fingerprint for d in t.train_sets + t.eval_sets if d.fingerprint is not None}

    def _model_state(self):
        """What the weights file holds: the module itself, or under FSDP the gathered full state dict."""
        t = self.trainer
        if not t.sharded:
            return t.model
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        return get_model_state_dict(t.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def _optimizer_state(self) -> dict:
        t = self.trainer
        if not t.sharded:
            return t.optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
        return get_optimizer_state_dict(t.model, t.optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    # ------------------------------------------------------------------------------------------------ resuming
    def resume(self) -> None:
        """``--resume``: continue from the newest intact checkpoint, if there is one, and make metrics.jsonl hold
        exactly its epoch records."""
        t = self.trainer
        with dist_utils.agree_on_errors(t.env):
            found = self.read_resume()
        if found is not None:
            self.apply(*found)
        if t.is_main and run_folder.agree_metrics(t.output_dir, t.history):
            log.info("--resume: %s now holds the checkpoint's %d epoch record(s)", t.output_dir / run_folder.METRICS,
                     len(t.history))

    def read_resume(self) -> Optional[Found]:
        """Read (and check) the newest readable checkpoint: local file reads only, so ranks can agree on errors.

        An unreadable one (truncated, overwritten) is reported and the previous kept step checkpoint is tried.
        """
        t = self.trainer
        candidates = ckpt.resume_candidates(t.output_dir)
        if not candidates:
            continuing = t.continued.model_ckpt
            start = f"continuing --model_ckpt {continuing}" if continuing else "starting fresh"
            log.info("--resume: no checkpoint in %s, %s", t.output_dir, start)
            return None
        first_error = None
        for folder in candidates:
            try:
                found = self._read_checkpoint(folder)
            except ckpt.CheckpointError as exc:
                log.warning("--resume: %s", exc)
                first_error = first_error or exc
                continue
            if first_error is not None:
                log.warning("--resume: falling back to %s, the newest intact checkpoint", folder)
            return found
        raise first_error

    def _read_checkpoint(self, folder: Path) -> Found:
        t = self.trainer
        self._check_config(folder, ckpt.read_config_json(folder))
        state = ckpt.load_training_state(folder)
        self._check_inputs(folder, state)
        expected = "full" if t.sharded else "torch"
        if state.get("optimizer_format", "torch") != expected:
            raise ValueError(f"{folder}: optimizer state was saved {'with' if expected == 'torch' else 'without'} "
                             f"--fsdp; resume with the same setting")
        position, epoch = state["progress"]["position"], state["progress"]["epoch"]
        if position > t.micro_per_epoch:
            where = f"{folder}: stopped at batch {position} of epoch {epoch}, but an epoch of this run has " \
                    f"{t.micro_per_epoch} batches"
            if not t.cfg.allow_config_change:
                raise ValueError(f"{where} (did the training data change?); pass --allow_config_change to start "
                                 "the next epoch instead")
            log.warning("--resume: %s; starting the next epoch", where)
        weights = ckpt.read_weights(folder) if t.sharded else {}
        if not t.sharded:
            ckpt.check_weights_fit(t.model, folder)
        return folder, state, weights

    def _check_config(self, folder: Path, saved: dict) -> None:
        """Resuming under other settings silently continues a different run; list the fields that differ."""
        cfg = self.trainer.cfg
        current = loads_json(cfg.to_json(), "this run's config")
        defaults = loads_json(TrainConfig(train_datasets=[]).to_json(), "the default config")
        saved = {**saved, "head_layout": layouts.layout_of(saved.get("head_layout"))}  # older configs: encoder
        changed = [f"{k} ({_short(saved.get(k, defaults[k]))} -> {_short(v)})" for k, v in current.items()
                   if k not in RESUME_HARMLESS and saved.get(k, defaults[k]) != v]
        if not changed:
            return
        if not cfg.allow_config_change:
            raise ValueError(f"--resume: {folder / ckpt.CONFIG} differs in {'; '.join(changed)}; resume with the "
                             "same flags, or pass --allow_config_change")
        log.warning("--resume with --allow_config_change: %s", "; ".join(changed))

    def _check_inputs(self, folder: Path, state: dict) -> None:
        """Task labels or shards changed since the checkpoint also continue a different run (checkpoints written
        before they were recorded resume as before)."""
        t = self.trainer
        problems = ((task_labels.difference(task_labels.read(folder) or {}, t.task_defs,
                                            str(folder / task_labels.FILE), t.task_defs, t.cfg.task_def),
                     "the same task definition"),
                    (shard_fingerprint.difference(folder / ckpt.STATE, state.get("shards"),
                                                  self.shard_fingerprints()), "the same data"))
        for problem, same in problems:
            if problem is not None and not t.cfg.allow_config_change:
                raise ValueError(f"--resume: {problem}; resume with {same}, or pass --allow_config_change")
            if problem is not None:
                log.warning("--resume with --allow_config_change: %s", problem)

    def apply(self, folder: Path, state: dict, weights: dict) -> None:
        """Restore what :meth:`read_resume` found into the trainer."""
        t = self.trainer
        if t.sharded:
            from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                                 set_optimizer_state_dict)
            options = StateDictOptions(full_state_dict=True)
            set_model_state_dict(t.model, weights, options=options)
            set_optimizer_state_dict(t.model, t.optimizer, state["optimizer"], options=options)
        else:
            ckpt.load_weights(t.model, folder)
            t.optimizer.load_state_dict(state["optimizer"])
        t.scheduler.load_state_dict(state["scheduler"])
        t.scaler.load_state_dict(state["scaler"])
        rngs = state.get("rng_ranks") or [state["rng"]]
        if len(rngs) != t.world_size:
            log.warning("--resume: checkpoint has RNG streams for %d rank(s), this run has %d; dropout streams "
                        "restart from the seed", len(rngs), t.world_size)
            torch.manual_seed(t.cfg.seed + t.rank)
        else:
            note = ckpt.set_rng_state(rngs[t.rank])
            if note:
                log.warning("--resume: %s", note)
        objective_states = state.get("objective_ranks") or []
        if len(objective_states) == t.world_size:
            objectives_mod.load_states(t.objectives, objective_states[t.rank])
        progress = state["progress"]
        t.epoch, t.position = progress["epoch"], min(progress["position"], t.micro_per_epoch)
        t.global_step, t.best_score = progress["global_step"], progress["best_score"]
        t.first_step = progress.get("first_step", 0)  # steps its --model_ckpt had taken before it
        if "train_loss" in progress:  # the logged running mean goes on (older checkpoints: it restarts)
            t.train_loss.load(progress["train_loss"])
        t.last_step = t.first_step + t.total_steps
        t.history = loads_json(state["history"], Path(folder) / ckpt.STATE)
        log.info("resumed from %s: epoch %d, batch %d, step %d", folder, t.epoch, t.position, t.global_step)


def _short(value, limit: int = 60) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
