"""The training loop: multi-task batches -> MTDNNModel -> SAGE optimizer, with evaluation and checkpoints.

Reads top to bottom: :class:`Trainer` builds data, model, optimizer and schedule from a :class:`TrainConfig`;
:meth:`Trainer.fit` runs epochs of optimizer steps, evaluates every test dataset after each epoch, keeps the
best checkpoint, and can stop and resume exactly (the epoch plan is rebuilt from (seed, epoch); RNG, optimizer,
scheduler and scaler states come from the checkpoint).
"""
from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
from tqdm import tqdm

from data_utils import jsonsafe
from data_utils.metrics import check_scorable, glue_average
from data_utils.safe_paths import append_line, check_output_root, refuse_symlink
from data_utils.shard_checks import EncoderLimits, encoder_limits
from data_utils.shards import find_shard
from data_utils.task_def import dataset_splits, dataset_task, load_task_defs, select_tasks
from module.bert_optim import build_optimizer, build_schedule, sage_param_groups
from module.sage.dispatch import implementation_kwargs
from mt_dnn import checkpoint as ckpt
from mt_dnn import distributed as dist_utils
from mt_dnn import objectives as objectives_mod
from mt_dnn import gradients, optimizer_stats, parallel, precision, run_folder
from mt_dnn import upstream_checkpoint as upstream
from mt_dnn.batcher import TaskData, epoch_plan, load_split, to_device
from mt_dnn.compiled import CompiledForward, encoder_shapes, stable_grads
from mt_dnn.config import TrainConfig
from mt_dnn.distributed import DistEnv
from mt_dnn.nonfinite import NonFiniteGuard
from mt_dnn.evaluate import autocast_context, write_scores, write_submission
from mt_dnn.runtime import RunFolder, check_machine_settings, pick_device, seed_everything
from mt_dnn.run_state import RunState
from mt_dnn.pipeline import MicroBatches, PlanSampler, micro_batch_stream, rank_share
from mt_dnn.static_shapes import StaticShapes, real_rows
from mt_dnn.stop_signals import StopSignals, Stopped, ignore_in_worker
from mt_dnn.warm_start import checkpoint_kind, start_model

log = logging.getLogger("sage.train")


def optimizer_impl_kwargs(impl: str, device: torch.device, sharded: bool = False) -> dict:
    """The optimizer's ``foreach``/``fused`` flags for ``--optim_impl`` (decided in module.sage.dispatch)."""
    return implementation_kwargs(impl, device, sharded=sharded)


class Trainer:
    """One training run. Under torchrun every rank builds its own Trainer with its :class:`DistEnv`."""

    def __init__(self, cfg: TrainConfig, env: Optional[DistEnv] = None):
        self.env = env or DistEnv()
        self.rank, self.world_size, self.is_main = self.env.rank, self.env.world_size, self.env.is_main
        self.folder: Optional[RunFolder] = None
        self._stops = StopSignals()
        try:
            self._setup(cfg)
        except BaseException:
            if self.folder is not None:
                self.folder.undo()
            self.release()
            raise

    def _setup(self, cfg: TrainConfig) -> None:
        # Input is read in phases that end with an agreement: bad input on any rank stops every rank together,
        # instead of leaving the others blocked in the next collective (DDP's construction, a gradient reduce).
        with dist_utils.agree_on_errors(self.env):
            self._claim_output_dir(cfg.validate())
        with dist_utils.agree_on_errors(self.env):
            self._setup_inputs(cfg)
        cfg = self.cfg  # validated, with the head layout decided
        self.sharded = cfg.fsdp and dist_utils.active()  # FSDP: optimizer steps and checkpoints on shards
        self.state = RunState(self)  # checkpoints: save, resume
        self.net = parallel.parallelize(self.model, self.device, cfg.fsdp, cfg.train_datasets, cfg.compile,
                                        cfg.grad_accumulation_step)  # what the training forward calls
        self.train_forward = self._compile() if self.cfg.compile else self.net
        self._params_by_task: dict[str, list] = {}
        if self.world_size > 1:  # identical initial weights everywhere; different dropout masks per rank
            torch.manual_seed(self.cfg.seed + self.rank)
        with dist_utils.agree_on_errors(self.env):
            self._setup_optimization()

    def _claim_output_dir(self, cfg: TrainConfig) -> None:
        """Refuse a folder inside the inputs and settings this machine cannot honour, then create and lock the run
        folder (mt_dnn/runtime.py) before anything is written there."""
        self.output_dir = Path(cfg.output_dir)
        check_output_root(self.output_dir, "--output_dir", (cfg.data_dir, cfg.init_checkpoint))
        check_machine_settings(cfg.num_threads, cfg.num_workers, cfg.fsdp, self.env)
        self.folder = RunFolder(self.output_dir, self.is_main)
        self.folder.claim(cfg.resume, cfg.overwrite, cfg.log_file)

    def release(self) -> None:
        """Let go of the run folder's lock (fit() does this when it ends, however it ends)."""
        if self.folder is not None:
            self.folder.release()

    def _setup_inputs(self, cfg: TrainConfig) -> None:
        self.cfg = cfg = cfg.validate()
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        seed_everything(cfg.seed)
        self.device = pick_device(cfg.device, self.env)
        precision.check_fp16(self.device, cfg.fp16)
        precision.check_bf16(self.device, cfg.bf16)
        tf32 = precision.apply_tf32(self.device, cfg.tf32)
        if tf32:
            log.info("%s", tf32)
        self.amp_dtype = precision.autocast_dtype(cfg.fp16, cfg.bf16)

        all_defs = load_task_defs(cfg.task_def)
        names = list(dict.fromkeys(cfg.train_datasets + [dataset_task(d) for d in cfg.test_datasets]))
        self.task_defs = select_tasks(all_defs, names, source=cfg.task_def)
        self.continuing = self._model_ckpt_to_continue()
        self._start = start_model(cfg, self.task_defs, self.continuing)
        self.cfg = cfg = self._start.cfg  # with the head layout decided
        model = self._start.model
        self._refuse_untrained_heads(self._start.warm)
        limits = encoder_limits(model.encoder.config, cfg.init_checkpoint)
        self.train_sets = self._load_train_sets(limits)
        self.eval_sets = self._load_eval_sets(limits)
        pad_id = model.encoder.config.pad_token_id
        self.pad_id = pad_id if pad_id is not None else 0
        self.num_workers = cfg.num_workers if cfg.num_workers is not None else 2 if self.device.type == "cuda" else 0
        # --compile: static shapes, so that compiles stay bounded (mt_dnn/static_shapes.py)
        self.shapes = StaticShapes.for_run(min(cfg.max_seq_len, limits.max_positions or cfg.max_seq_len),
                                           cfg.batch_size, self.pad_id) if cfg.compile else None
        self.micro_batch_set = MicroBatches(self.train_sets, self.pad_id, cfg.mkd_opt > 0, self.shapes)
        self.model = model.to(self.device)
        san = [n for n, head in self.model.heads.items() if getattr(head, "uses_tokens", False)]
        if san:
            log.info("SAN answer heads (--answer_opt 1, enable_san: true): %s", ", ".join(san))
        if cfg.update_bert_opt > 0:
            log.info("--update_bert_opt %d: the encoder is frozen; the pooler and heads train", cfg.update_bert_opt)

    def _model_ckpt_to_continue(self) -> Optional[str]:
        """``--resume --model_ckpt X``: X, the model this run continues. Its optimizer state is read only while
        --output_dir holds no checkpoint yet; once this run has checkpoints of its own, --resume continues those
        (the model is still built from X, as a run from --init_checkpoint is)."""
        cfg = self.cfg
        self._optimizer_from_model_ckpt = False
        if not (cfg.resume and cfg.model_ckpt):
            return None
        if not Path(cfg.model_ckpt).is_file():
            what = "a folder: to continue one of this project's runs, --resume with its --output_dir" \
                if Path(cfg.model_ckpt).is_dir() else "no such file"
            raise ValueError(f"--model_ckpt {cfg.model_ckpt}: {what}")
        init = cfg.init_checkpoint
        if checkpoint_kind(init) != "encoder" and Path(init).resolve() != Path(cfg.model_ckpt).resolve():
            raise ValueError(f"--model_ckpt {cfg.model_ckpt}: --init_checkpoint {init} is a trained model too; give "
                             "one of them (under --resume, --model_ckpt is the model continued)")
        self._optimizer_from_model_ckpt = not ckpt.resume_candidates(self.output_dir)
        return cfg.model_ckpt

    def _refuse_untrained_heads(self, warm_heads: Sequence[str]) -> None:
        """A --test_datasets task that is neither trained here nor loaded from --init_checkpoint would be scored
        with a randomly initialised head."""
        known = set(self.cfg.train_datasets) | set(warm_heads)
        untrained = [t for t in self.cfg.test_datasets if dataset_task(t) not in known]
        if untrained:
            raise ValueError(f"--test_datasets: {', '.join(untrained)} not in --train_datasets; its head would be "
                             "untrained (random), so its scores would mean nothing")

    def _setup_optimization(self) -> None:
        cfg = self.cfg
        self.optimizer = self._build_optimizer()
        self.tracker = self._sensitivity_tracker()
        self.micro_per_epoch = len(self._plan(0))
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / cfg.grad_accumulation_step)
        self.total_steps = cfg.max_steps or self.steps_per_epoch * cfg.epochs  # the schedule's horizon
        # optimizer steps taken before this run (a continued MT-DNN/SAGE optimizer state) and the last one to take
        self.first_step = self._continue_optimizer()
        self.last_step = self.first_step + self.total_steps
        self.scheduler = build_schedule(self.optimizer, cfg.warmup_schedule, self.total_steps, cfg.warmup,
                                        start_step=self.first_step)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.fp16)
        self.guard = NonFiniteGuard(self.device, check_grads=not cfg.fp16)
        self.objectives = self._objectives()
        self.writer = self._tensorboard()
        # progress: (epoch, micro-batches of that epoch consumed), optimizer steps (counting a continued state's),
        # best dev score
        self.epoch, self.position, self.global_step = 0, 0, self.first_step
        self.best_score: Optional[float] = None
        self.history: list[dict] = []
        self.loss_log: list[tuple[int, float]] = []  # (step, mean training loss since the last log) this run

    def _continue_optimizer(self) -> int:
        """The optimizer state of an MT-DNN/SAGE ``.pt`` this run starts from, mapped onto this run's optimizer:
        required under --resume --model_ckpt (anything that cannot be mapped exactly, or saved options that differ
        from this run's flags without --allow_config_change, is an error); under --init_checkpoint restored where
        it maps one-to-one and the options agree, else the optimizer starts fresh. Logs the init line and what was
        done; returns the optimizer steps already taken."""
        start, cfg = self._start, self.cfg
        src = start.source
        if src is None:
            return 0
        prefix = f"--model_ckpt {self.continuing}: continuing" if self.continuing else "init from"
        if src.blob is None or (not self.continuing and "optimizer" not in src.blob) or \
                (self.continuing and not self._optimizer_from_model_ckpt):  # --resume reads this run's own state
            log.info(start.loaded.line(prefix))
            return 0
        try:
            state = self._read_upstream_optimizer(src)
        except upstream.Unmappable as exc:
            if self.continuing:
                raise ValueError(f"--model_ckpt: {exc}") from None
            log.info(start.loaded.line(prefix))
            log.info("--init_checkpoint: optimizer state not restored, the optimizer starts fresh at step 0 (%s)", exc)
            return 0
        placed = upstream.apply(self.optimizer, self._parameter_names(), state)
        log.info(start.loaded.line(prefix, used=("'optimizer'",)))
        low, high = state.steps
        steps = f"step {high}" if low == high else f"steps {low}..{high} per parameter (the schedule counts {high})"
        log.info("%s: optimizer state restored for %d parameters, %s; the schedule goes on from step %d of %d",
                 "--model_ckpt" if self.continuing else "--init_checkpoint", placed, steps, state.step,
                 self.total_steps)
        return state.step

    def _read_upstream_optimizer(self, src) -> "upstream.OptimizerState":
        cfg = self.cfg
        if self.sharded:
            raise upstream.Unmappable(f"{src.where}: optimizer state cannot be placed on --fsdp shards")
        state = upstream.read_optimizer(src.blob, src.blob.get("config") or {}, src.key_map, cfg, self.total_steps,
                                        self.optimizer, self._parameter_names(), src.where)
        if state.differences:
            listed = "; ".join(state.differences)
            if not self.continuing:
                raise upstream.Unmappable(f"{src.where}: its saved options differ from this run's flags: {listed}")
            if not cfg.allow_config_change:
                raise ValueError(f"--model_ckpt {src.where}: its saved options differ from this run's flags: {listed}; "
                                 "give the same flags, or pass --allow_config_change to continue with this run's")
            log.warning("--model_ckpt with --allow_config_change: this run's flags are used: %s", listed)
        return state

    def _parameter_names(self) -> dict[int, str]:
        return {id(p): name for name, p in self.model.named_parameters()}

    # ---------------------------------------------------------------------------------------------- setup
    def _load_train_sets(self, limits: EncoderLimits) -> list[TaskData]:
        sets = []
        for task in self.cfg.train_datasets:
            td = self.task_defs[task]
            splits = td.train_splits()
            if not splits:  # e.g. the SAGE repo's `split_names: [test_labeled]`: MT-DNN reads {task}_train anyway
                log.info("%s: task %s lists no train split in split_names; reading %s_train as MT-DNN does",
                         self.cfg.task_def, task, task)
                splits = ("train",)
            sets.append(load_split(self.cfg.data_dir, td, splits[0], self.cfg.max_seq_len,
                                   self.cfg.max_train_samples, limits, cache=self.cfg.shard_cache))
        return sets

    def _load_eval_sets(self, limits: EncoderLimits) -> list[TaskData]:
        sets = []
        for name in self.cfg.test_datasets:
            td = self.task_defs[dataset_task(name)]
            for split in dataset_splits(td, name):
                path = find_shard(self.cfg.data_dir, td.name, split)
                if not path.is_file() and split in td.test_splits():
                    log.info("no %s shard: skipping test predictions for %s_%s", path, td.name, split)
                    continue
                if not path.is_file() and split not in td.split_names:  # MT-DNN's {task}_dev, when present
                    continue
                sets.append(load_split(self.cfg.data_dir, td, split, self.cfg.max_seq_len,
                                       self.cfg.max_eval_samples, limits, cache=self.cfg.shard_cache))
                if td.has_labels(split) and not td.token_level:  # found now, not after the first epoch
                    limited = f" (--max_eval_samples {self.cfg.max_eval_samples})" if self.cfg.max_eval_samples else ""
                    check_scorable(td, sets[-1].labels, f"{path}{limited}")
        return sets

    def _compile(self) -> CompiledForward:
        bound = encoder_shapes(self.model, self.cfg.train_datasets, self.shapes.rows, self.shapes.lengths)
        log.info("--compile: batches of %d rows padded to lengths %s: at most %d encoder graphs, shared by the "
                 "tasks (heads run eagerly)", self.shapes.rows, "/".join(map(str, self.shapes.lengths)), bound)
        return CompiledForward(self.net, self.model, self.device, bound)

    def _sensitivity_tracker(self):
        if not (self.cfg.log_sensitivity_every and self.is_main):
            return None
        from mt_dnn.sensitivity_log import SensitivityTracker
        return SensitivityTracker(self.model, self.optimizer, self.output_dir / "sensitivity.jsonl",
                                  self.cfg.log_sensitivity_every, self.cfg.beta3)

    def _build_optimizer(self):
        cfg = self.cfg
        trained = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]  # --update_bert_opt
        groups = sage_param_groups(trained, weight_decay=cfg.weight_decay)
        kwargs = dict(lr=cfg.learning_rate, beta3=cfg.beta3, eps=cfg.adam_eps,
                      **optimizer_impl_kwargs(cfg.optim_impl, self.device, cfg.fsdp and dist_utils.active()))
        if cfg.optimizer.lower() not in ("sgd", "ussgd"):
            kwargs["betas"] = cfg.betas
        elif cfg.momentum:
            kwargs["momentum"] = cfg.momentum
        if cfg.sage_formula:
            kwargs["formula"] = cfg.sage_formula
        return build_optimizer(cfg.optimizer, groups, **kwargs)

    def _objectives(self) -> list:
        """The extra objective terms this run enables (SMART, distillation); see mt_dnn/objectives.py."""
        cfg = self.cfg
        objectives_mod.check_task_fits(cfg, self.task_defs)
        if cfg.mkd_opt > 0:
            with_soft = [d.task_def.name for d in self.train_sets if d.soft_labels is not None]
            if not with_soft:
                raise ValueError(f"--mkd_opt: no training shard in {cfg.data_dir} has soft_label "
                                 "(write them with prepare_distillation_data.py)")
            log.info("--mkd_opt: distilling from soft targets on %s", ", ".join(with_soft))
        terms = objectives_mod.build_objectives(cfg, self.device, self.rank)
        if cfg.adv_train:
            log.info("--adv_train: SMART with adv_alpha %g, adv_k %d, step %g, noise %g, %s norm per %s",
                     cfg.adv_alpha, cfg.adv_k, cfg.adv_step_size, cfg.adv_noise_var, cfg.adv_p_norm,
                     "token" if cfg.adv_norm_level == 0 else "sequence")
        return terms

    def _tensorboard(self):
        if not (self.cfg.tensorboard and self.is_main):
            return None
        from torch.utils.tensorboard import SummaryWriter
        return SummaryWriter(str(refuse_symlink(self.output_dir / "tensorboard")))

    def _plan(self, epoch: int) -> list[tuple[int, list[int]]]:
        cfg = self.cfg
        global_batch = cfg.batch_size * self.world_size
        return epoch_plan(self.train_sets, global_batch, cfg.seed, epoch, cfg.mix_opt, cfg.ratio)

    # ---------------------------------------------------------------------------------------------- training
    def _forward_backward(self, task_idx: int, indices: list[int], batch: Optional[dict]) -> torch.Tensor:
        """Forward and backward of one micro-batch. Under --compile the backward graph is compiled at its first
        call: if that fails, the micro-batch is redone eagerly (a failed compile has added no gradient)."""
        scale = self.scaler.scale
        loss = self._forward_loss(task_idx, indices, None if batch is None else dict(batch))
        try:
            with self._compiled_backward_guard():
                scale(loss / self.cfg.grad_accumulation_step).backward()
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:
            if not self.cfg.compile or not self.train_forward.active:
                raise
            self.train_forward.fall_back(exc, "the backward pass")
            loss = self._forward_loss(task_idx, indices, None if batch is None else dict(batch))
            scale(loss / self.cfg.grad_accumulation_step).backward()
        return loss

    def _compiled_backward_guard(self):
        if self.cfg.compile and self.train_forward.active:
            return self.train_forward.first_backward(self.model.parameters())
        return contextlib.nullcontext()

    def _forward_loss(self, task_idx: int, indices: list[int], batch: Optional[dict] = None) -> torch.Tensor:
        """Mean loss of this rank's share of a global batch (``batch``: its tensors from the input pipeline, or
        collated here when not given), weighted so that averaging over ranks (as DDP and FSDP do with gradients)
        gives the mean over the whole global batch even when shares differ in size (pipeline.rank_share)."""
        data = self.train_sets[task_idx]
        local, weight = rank_share(indices, self.rank, self.world_size)
        if batch is None:
            batch = self.micro_batch_set.__getitems__([(task_idx, i) for i in local])
        batch = to_device(batch, self.device)
        labels, soft = batch.pop("labels"), batch.pop("soft_labels", None)
        if self.shapes is not None and self.train_forward.cuda_graphs and self.train_forward.active:
            stable_grads(self._trained_params(data.task_def.name))
        with autocast_context(self.device, self.amp_dtype):
            out = self.train_forward(data.task_def.name, **batch)
        if self.shapes is not None:  # --compile: drop the rows that only filled the static shape
            out = real_rows(labels, out)
            batch = {k: v[: labels.shape[0]] for k, v in batch.items()}
        out = out.float()
        loss = self.model.loss(data.task_def.name, out, labels)
        if self.objectives:  # keys name (epoch, batch, task, example): the same on every rank
            keys = [((self.epoch * 1_000_003 + self.position) * 1_009 + task_idx) * 10_000_019 + i for i in local]
            step = self._micro_batch(data.task_def, batch, out, labels, soft, keys)
            for term in self.objectives:
                loss = term(step, loss)
        return loss * weight if weight != 1.0 else loss

    def _trained_params(self, task: str) -> list[torch.nn.Parameter]:
        """The parameters a micro-batch of ``task`` gives gradients: all but the other tasks' heads and the poolers
        this task's head does not read (the encoder's own, under the sage and mtdnn head layouts)."""
        if task not in self._params_by_task:
            self._params_by_task[task] = parallel.trained_parameters(self.model, task)
        return self._params_by_task[task]

    def _micro_batch(self, task_def, batch: dict, out: torch.Tensor, labels, soft,
                     keys: list[int]) -> objectives_mod.MicroBatch:
        """What the objective terms see. Their extra forwards call the model itself, not the DDP wrapper: one
        wrapper forward per backward; the gradients they add still reach the parameters' reduction hooks."""
        def forward(embeds: torch.Tensor) -> torch.Tensor:
            with autocast_context(self.device, self.amp_dtype):
                return self.model(task_def.name, **batch, inputs_embeds=embeds).float()
        return objectives_mod.MicroBatch(task_def, out, labels, soft, batch["attention_mask"], keys, forward,
                                         lambda: self.model.embed(batch["input_ids"]), self.scaler.scale)

    def _optimizer_step(self) -> None:
        cfg = self.cfg
        sharded = self.sharded
        if cfg.global_grad_clipping > 0 or cfg.grad_clipping > 0 or self.tracker is not None or sharded:
            self.scaler.unscale_(self.optimizer)  # (FSDP: on the DTensor gradients, before the local-shard step)
        norm = gradients.clip(self.model.parameters(), cfg.global_grad_clipping, cfg.grad_clipping, sharded)
        self.guard.observe_grad_norm(norm)
        every = cfg.log_sensitivity_every
        if every and (self.global_step + 1) % every == 0:
            self.check_finite()  # the tracker writes a record this step: never one of NaN statistics
        if self.tracker is not None and (not cfg.fp16 or gradients.all_finite(norm, self.model.parameters())):
            self.tracker.observe(self.global_step + 1)
        with parallel.local_shards(self.optimizer) if sharded else contextlib.nullcontext():
            self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1

    def _micro_batches(self, plan):
        """Remaining global batches of the epoch, and whether each one ends an optimizer step."""
        accum = self.cfg.grad_accumulation_step
        for pos in range(self.position, len(plan)):
            task_idx, indices = plan[pos]
            yield pos, task_idx, indices, (pos + 1) % accum == 0 or pos + 1 == len(plan)

    def fit(self, stop_after_steps: Optional[int] = None) -> list[dict]:
        """Train to the end (or, for tests and preemption drills, return after ``stop_after_steps`` steps)."""
        self._bar = None
        try:
            with self._stops:
                return self._train(stop_after_steps)
        finally:
            if self._bar is not None:  # an error ends the run: clear the progress bar before train.py's one line
                self._bar.close()
            self.release()

    def _train(self, stop_after_steps: Optional[int]) -> list[dict]:
        cfg = self.cfg
        if cfg.resume:
            with dist_utils.agree_on_errors(self.env):
                found = self.state.read_resume()
            if found is not None:
                self.state.apply(*found)
            if self.is_main and run_folder.agree_metrics(self.output_dir, self.history):
                log.info("--resume: %s now holds the checkpoint's %d epoch record(s)",
                         self.output_dir / run_folder.METRICS, len(self.history))
        log.info("training %s on %s | %d steps (%d per epoch) | optimizer %s lr %g beta3 %g | device %s%s",
                 ",".join(cfg.train_datasets), cfg.data_dir, self.total_steps, self.steps_per_epoch,
                 cfg.optimizer, cfg.learning_rate, cfg.beta3, self.device,
                 f" {self.amp_dtype}".replace("torch.", "") if self.amp_dtype else "")
        self.model.train()
        self._steps_this_run = 0
        # position > 0 with every step done: killed before the last epoch's evaluation ended; finish it
        while self.global_step < self.last_step or self.position > 0:
            if self.global_step < self.last_step:
                plan = self._plan(self.epoch)
                self._bar = bar = tqdm(total=len(plan), initial=self.position, desc=f"epoch {self.epoch}",
                                       unit="batch", disable=not self.is_main,
                                       mininterval=1.0 if sys.stderr.isatty() else 30.0, leave=False)
                with contextlib.closing(self._batch_stream(plan)) as batches:  # closing stops the loader's workers
                    stopped = self._train_epoch(plan, batches, bar, stop_after_steps)
                if stopped:
                    self._close()
                    return self.history
                bar.close()
            self._end_epoch()
            if self.global_step < self.last_step:
                self._stop_if_asked(saved=True)
        self._close()
        return self.history

    def _stop_if_asked(self, saved: bool) -> None:
        """After a SIGTERM/SIGINT (agreed on by every rank): checkpoint this step and raise Stopped."""
        signum = self._stops.agreed()
        if signum is None:
            return
        if not saved:
            self.save_step_checkpoint()
        self._close()
        raise Stopped(signum, self.global_step)

    def _batch_stream(self, plan):
        """The epoch's remaining micro-batches from the input pipeline (mt_dnn/pipeline.py)."""
        sampler = PlanSampler(plan, self.position, self.rank, self.world_size)
        return micro_batch_stream(self.micro_batch_set, sampler, self.num_workers,
                                  pin_memory=self.device.type == "cuda", worker_init=ignore_in_worker)

    def _train_epoch(self, plan, batches, bar, stop_after_steps: Optional[int]) -> bool:
        """The rest of one epoch; True when ``stop_after_steps`` ends the run here. The loss stays on the device
        between log steps: nothing here waits for the GPU except logging, checkpoints and evaluation."""
        cfg = self.cfg
        running, count, tick = torch.zeros((), device=self.device), 0, time.perf_counter()
        for (pos, task_idx, indices, boundary), batch in zip(self._micro_batches(plan), batches):
            with parallel.gradient_sync(self.net, boundary):
                loss = self._forward_backward(task_idx, indices, batch)
            self.guard.observe_loss(self.global_step + 1, self.train_sets[task_idx].task_def.name, loss)
            running += loss.detach()
            count += 1
            self.position = pos + 1
            bar.update(1)
            if not boundary:
                continue
            self._optimizer_step()
            self._steps_this_run += 1
            if cfg.log_every and self.global_step % cfg.log_every == 0:
                self.check_finite()  # this step syncs anyway, for the logged loss
                mean = dist_utils.all_reduce_mean(running / count).item()
                self.loss_log.append((self.global_step, mean))
                bar.set_postfix(loss=f"{mean:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
                # a pass over the optimizer state, on every rank (a collective under FSDP)
                stats = optimizer_stats.sage_stats(self.optimizer) if cfg.tensorboard else {}
                if self.writer is not None:
                    self._log_scalars({"train/loss": mean, "train/lr": self.scheduler.get_last_lr()[0],
                                       "train/samples_per_s": count * cfg.batch_size * self.world_size
                                       / (time.perf_counter() - tick), **stats})
                running.zero_()
                count, tick = 0, time.perf_counter()
            saved = bool(cfg.save_every_steps) and self.global_step % cfg.save_every_steps == 0
            if saved:
                self.save_step_checkpoint()
            if stop_after_steps is not None and self._steps_this_run >= stop_after_steps:
                self.check_finite()
                bar.close()
                return True
            self._stop_if_asked(saved)
            if self.global_step >= self.last_step:
                break
        return False

    def _close(self) -> None:
        if self.writer:
            self.writer.flush()
        if self.tracker is not None:
            self.tracker.close()
        dist_utils.barrier()

    def check_finite(self) -> None:
        """Raise NonFiniteError if a loss, gradient norm or weight went non-finite since the last check."""
        self.guard.check(self.model.parameters(), self.global_step)

    def _end_epoch(self) -> None:
        self.check_finite()  # never score (and save as best/) a model with non-finite weights
        record = self.evaluate(self.epoch)
        self.history.append(record)
        self.epoch += 1
        self.position = 0
        self.save_step_checkpoint()

    # ---------------------------------------------------------------------------------------------- evaluation
    def evaluate(self, epoch: int) -> dict:
        dev_results = {}
        for data in self.eval_sets:
            result = parallel.predict(self.model, data, self.cfg.batch_size_eval, self.device, self.pad_id,
                                      self.amp_dtype, self.rank, self.world_size)
            if not self.is_main:
                continue
            write_scores(result, self.output_dir, epoch)
            if result.metrics is None:
                write_submission(result, data.task_def,
                                 self.output_dir / f"{data.name}_submission_{epoch}.tsv")
                continue
            dev_results[data.name] = result.metrics
            log.info("epoch %d %s: %s", epoch, data.name,
                     ", ".join(f"{k} {v:.2f}" for k, v in result.metrics.items()))
        record = {"epoch": epoch, "step": self.global_step, "dev": dev_results}
        if dev_results:
            record["glue_average"] = glue_average(dev_results)
            log.info("epoch %d GLUE-style dev average: %.2f", epoch, record["glue_average"])
            self._log_scalars({f"dev/{d}/{m}": v for d, ms in dev_results.items() for m, v in ms.items()}
                              | {"dev/average": record["glue_average"]})
        # every rank must know whether to save: FSDP gathers the full weights collectively
        record = dist_utils.all_gather_objects(record)[0]
        score = record.get("glue_average")
        if score is not None and (self.best_score is None or score > self.best_score):
            self.best_score = score
            self.state.save(self.output_dir / "best", {"metrics.json": jsonsafe.dumps(record, indent=2)})
        if self.is_main:
            append_line(self.output_dir / "metrics.jsonl", jsonsafe.dumps(record) + "\n")
        return record

    def _log_scalars(self, values: dict) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            self.writer.add_scalar(key, value, self.global_step)

    def save_step_checkpoint(self) -> Path:
        return self.state.save_step()
