"""The training loop: multi-task batches -> MTDNNModel -> SAGE optimizer, with evaluation and checkpoints.

:class:`Trainer` builds data, model, optimizer and schedule from a :class:`TrainConfig`; :meth:`Trainer.fit` runs
epochs, evaluates every test dataset after each one and keeps the best checkpoint; :meth:`Trainer.train_epoch`
holds one epoch's loop, top to bottom. Runs stop and resume exactly (mt_dnn/run_state.py: the epoch plan is
rebuilt from (seed, epoch); RNG, optimizer, scheduler and scaler states come from the checkpoint). Setup helpers
live beside it: mt_dnn/runtime.py (device, seeds, run folder, log), mt_dnn/run_data.py (shards),
mt_dnn/continuation.py (continuing an MT-DNN/SAGE run), mt_dnn/parallel.py, mt_dnn/gradients.py.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch
from tqdm import tqdm

from data_utils import jsonsafe
from data_utils.metrics import glue_average
from data_utils.safe_paths import append_line, check_output_root
from data_utils.shard_checks import encoder_limits
from data_utils.task_def import dataset_task, load_task_defs, select_tasks
from module.bert_optim import build_optimizer, build_schedule, sage_param_groups
from module.sage.dispatch import implementation_kwargs
from mt_dnn import distributed as dist_utils
from mt_dnn import epoch_checkpoints, gradients, parallel, precision, reporting, run_config, run_data
from mt_dnn import objectives as objectives_mod
from mt_dnn.batcher import epoch_plan as plan_epoch
from mt_dnn.batcher import to_device
from mt_dnn.compiled import CompiledForward, encoder_shapes, stable_grads
from mt_dnn.config import TrainConfig
from mt_dnn.continuation import continue_optimizer, model_ckpt_to_continue
from mt_dnn.distributed import DistEnv
from mt_dnn.evaluate import autocast_context, write_scores, write_submission
from mt_dnn.loss_log import TrainLoss
from mt_dnn.nonfinite import NonFiniteGuard
from mt_dnn.pipeline import MicroBatches, PlanSampler, micro_batch_stream, rank_share
from mt_dnn.run_state import RunState
from mt_dnn.runtime import RunFolder, check_machine_settings, pick_device, seed_everything
from mt_dnn.static_shapes import StaticShapes, real_rows
from mt_dnn.stop_signals import StopSignals, Stopped, ignore_in_worker
from mt_dnn.warm_start import start_model

log = logging.getLogger("sage.train")


def optimizer_impl_kwargs(impl: str, device: torch.device, sharded: bool = False) -> dict:
    """The optimizer's ``foreach``/``fused`` flags for ``--optim_impl`` (decided in module.sage.dispatch)."""
    return implementation_kwargs(impl, device, sharded=sharded)


class StepHook:
    """Called around each optimizer step and with each set of logged scalars (benches time steps with it)."""

    def before_step(self, trainer: "Trainer") -> None:
        pass

    def after_step(self, trainer: "Trainer") -> None:
        pass

    def logged(self, trainer: "Trainer", values: dict) -> None:
        pass


class Trainer:
    """One training run. Under torchrun every rank builds its own Trainer with its :class:`DistEnv`."""

    def __init__(self, cfg: TrainConfig, env: Optional[DistEnv] = None, hooks: Sequence[StepHook] = ()):
        self.env = env or DistEnv()
        self.hooks = list(hooks)
        self.rank, self.world_size, self.is_main = self.env.rank, self.env.world_size, self.env.is_main
        self.folder: Optional[RunFolder] = None
        self.reporting = reporting.Reporting()  # TensorBoard, MLflow, W&B (--report_to; mt_dnn/reporting.py)
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
        reporting.check_installed(reporting.names(cfg.report_to, cfg.tensorboard))
        self.folder = RunFolder(self.output_dir, self.is_main)
        self.folder.claim(cfg.resume, cfg.overwrite, cfg.log_file)

    def release(self) -> None:
        """Let go of the run folder's lock (fit() does this when it ends, however it ends)."""
        self.reporting.close()
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
        self.continued = model_ckpt_to_continue(cfg, self.output_dir)
        self._start = start_model(cfg.warm_start_settings(), self.task_defs, self.continued.model_ckpt)
        layout = self._start.settings  # the head layout decided
        self.cfg = cfg = dataclasses.replace(cfg, head_layout=layout.head_layout, pooler_actf=layout.pooler_actf)
        model = self._start.model
        run_data.refuse_untrained_heads(cfg, self._start.warm)
        limits = encoder_limits(model.encoder.config, cfg.init_checkpoint)
        self.train_sets = run_data.train_sets(cfg, self.task_defs, limits)
        self.eval_sets = run_data.eval_sets(cfg, self.task_defs, limits)
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

    def _setup_optimization(self) -> None:
        cfg = self.cfg
        self.optimizer = self._build_optimizer()
        self.tracker = self._sensitivity_tracker()
        self.micro_per_epoch = len(self.epoch_plan(0))
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / cfg.grad_accumulation_step)
        self.total_steps = cfg.max_steps or self.steps_per_epoch * cfg.epochs  # the schedule's horizon
        # optimizer steps taken before this run (a continued MT-DNN/SAGE optimizer state) and the last one to take
        self.first_step = continue_optimizer(self._start, self.continued, self.optimizer, self.model, cfg,
                                             self.total_steps, self.sharded)
        self.last_step = self.first_step + self.total_steps
        self.scheduler = build_schedule(self.optimizer, cfg.warmup_schedule, self.total_steps, cfg.warmup,
                                        start_step=self.first_step)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.fp16)
        self.guard = NonFiniteGuard(self.device, check_grads=not cfg.fp16)
        self.objectives = objectives_mod.for_run(cfg.objective_settings(), self.task_defs, self.train_sets,
                                                 cfg.data_dir, self.device, self.rank)
        self.reporting = reporting.start(cfg, self.output_dir, self.is_main)
        # progress: (epoch, micro-batches of that epoch consumed), optimizer steps (counting a continued state's),
        # best dev score
        self.epoch, self.position, self.global_step = 0, 0, self.first_step
        self.best_score: Optional[float] = None
        self.history: list[dict] = []
        self.loss_log: list[tuple[int, float]] = []  # (step, mean training loss since the last log) this run
        self.train_loss = TrainLoss(self.device, cfg.log_every)  # the loss lines of the log (mt_dnn/loss_log.py)

    # ---------------------------------------------------------------------------------------------- setup
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

    # ---------------------------------------------------------------------------------------------- training
    def epoch_plan(self, epoch: int) -> list[tuple[int, list[int]]]:
        """The global batches of ``epoch`` as (task index, example indices), the same on every rank."""
        cfg = self.cfg
        return plan_epoch(self.train_sets, cfg.batch_size * self.world_size, cfg.seed, epoch, cfg.mix_opt, cfg.ratio)

    def fit(self, stop_after_steps: Optional[int] = None) -> list[dict]:
        """Train to the end (or, for tests and preemption drills, return after ``stop_after_steps`` steps)."""
        self._bar = None
        try:
            with self._stops:
                if self.cfg.resume:
                    self.state.resume()
                if self.is_main:  # every option of this run, where MT-DNN's tooling reads them
                    run_config.write(self.output_dir, self.cfg.to_json())
                log.info("training %s on %s | %d steps (%d per epoch) | optimizer %s lr %g beta3 %g | device %s%s",
                         ",".join(self.cfg.train_datasets), self.cfg.data_dir, self.total_steps, self.steps_per_epoch,
                         self.cfg.optimizer, self.cfg.learning_rate, self.cfg.beta3, self.device,
                         f" {self.amp_dtype}".replace("torch.", "") if self.amp_dtype else "")
                self.model.train()
                self._steps_this_run = 0
                # position > 0 with every step done: killed before the last epoch's evaluation ended; finish it
                while self.global_step < self.last_step or self.position > 0:
                    if self.global_step < self.last_step and self.train_epoch(stop_after_steps):
                        break  # stop_after_steps
                    self.check_finite()  # never score (and save as best/) a model with non-finite weights
                    self.history.append(self.evaluate(self.epoch))
                    epoch_checkpoints.save_epoch(self, self.history[-1])  # --save_per_epoch
                    self.epoch, self.position = self.epoch + 1, 0
                    self.save_step_checkpoint()
                    if self.global_step < self.last_step:
                        self._stop_if_asked(saved=True)
                self._close()
                return self.history
        finally:
            if self._bar is not None:  # an error ends the run: clear the progress bar before train.py's one line
                self._bar.close()
            self.release()

    def train_epoch(self, stop_after_steps: Optional[int] = None) -> bool:
        """The rest of epoch ``self.epoch`` from micro-batch ``self.position``; True when ``stop_after_steps`` ends
        the run here. The loss stays on the device between log steps: nothing here waits for the GPU except
        logging, checkpoints and evaluation."""
        cfg, plan = self.cfg, self.epoch_plan(self.epoch)
        self._bar = bar = tqdm(total=len(plan), initial=self.position, desc=f"epoch {self.epoch}", unit="batch",
                               disable=not self.is_main, mininterval=1.0 if sys.stderr.isatty() else 30.0, leave=False)
        sampler = PlanSampler(plan, self.position, self.rank, self.world_size)  # the input pipeline's order
        batches = micro_batch_stream(self.micro_batch_set, sampler, self.num_workers,
                                     pin_memory=self.device.type == "cuda", worker_init=ignore_in_worker)
        self.train_loss.start_epoch(self.position, len(plan))
        with contextlib.closing(batches):  # closing stops the loader's workers
            for pos, batch in zip(range(self.position, len(plan)), batches):
                task_idx, indices = plan[pos]
                boundary = (pos + 1) % cfg.grad_accumulation_step == 0 or pos + 1 == len(plan)  # ends a step
                with parallel.gradient_sync(self.net, boundary):  # no all-reduce while only accumulating
                    loss = self.micro_batch_backward(task_idx, indices, batch)
                self.guard.observe_loss(self.global_step + 1, self.train_sets[task_idx].task_def.name, loss)
                self.train_loss.add(loss, len(indices), task_idx)
                self.position = pos + 1
                bar.update(1)
                if not boundary:
                    continue
                for hook in self.hooks:
                    hook.before_step(self)
                self.optimizer_step()
                for hook in self.hooks:
                    hook.after_step(self)
                self._steps_this_run += 1
                if self.train_loss.due(self.global_step):
                    self.check_finite()  # this step syncs anyway, for the logged loss
                    self.train_loss.report(self, bar, self._log_scalars)
                mid_epoch = epoch_checkpoints.mid_epoch_due(self, len(plan))  # --save_per_updates_on
                if mid_epoch:  # evaluated before the checkpoint, which then holds this record in its history
                    self.check_finite()
                    self.history.append(self.evaluate(self.epoch, updates=self.global_step))
                saved = mid_epoch or bool(cfg.save_every_steps) and self.global_step % cfg.save_every_steps == 0
                if saved:
                    self.save_step_checkpoint()
                if stop_after_steps is not None and self._steps_this_run >= stop_after_steps:
                    self.check_finite()
                    bar.close()
                    return True
                self._stop_if_asked(saved)
                if self.global_step >= self.last_step:
                    break
        bar.close()
        return False

    def micro_batch_backward(self, task_idx: int, indices: list[int], batch: Optional[dict] = None) -> torch.Tensor:
        """Forward and backward of one micro-batch (its loss scaled for accumulation and the GradScaler); returns
        the loss. Under --compile the backward graph is compiled at its first call: if that fails, the micro-batch
        is redone eagerly (a failed compile has added no gradient)."""
        loss = self.micro_batch_loss(task_idx, indices, None if batch is None else dict(batch))
        compiled = self.cfg.compile and self.train_forward.active  # (the forward may have fallen back)
        try:
            with self.train_forward.first_backward(self.model.parameters()) if compiled else contextlib.nullcontext():
                self.scaler.scale(loss / self.cfg.grad_accumulation_step).backward()
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:
            if not self.cfg.compile or not self.train_forward.active:
                raise
            self.train_forward.fall_back(exc, "the backward pass")
            loss = self.micro_batch_loss(task_idx, indices, None if batch is None else dict(batch))
            self.scaler.scale(loss / self.cfg.grad_accumulation_step).backward()
        return loss

    def micro_batch_loss(self, task_idx: int, indices: list[int], batch: Optional[dict] = None) -> torch.Tensor:
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

    def optimizer_step(self) -> None:
        """Unscale, clip, record sensitivity, step the optimizer, the GradScaler and the schedule."""
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

    def _stop_if_asked(self, saved: bool) -> None:
        """After a SIGTERM/SIGINT (agreed on by every rank): checkpoint this step and raise Stopped."""
        signum = self._stops.agreed()
        if signum is None:
            return
        if not saved:
            self.save_step_checkpoint()
        self._close()
        raise Stopped(signum, self.global_step)

    def _close(self) -> None:
        self.reporting.flush()
        if self.tracker is not None:
            self.tracker.close()
        dist_utils.barrier()

    def check_finite(self) -> None:
        """Raise NonFiniteError if a loss, gradient norm or weight went non-finite since the last check."""
        self.guard.check(self.model.parameters(), self.global_step)

    # ---------------------------------------------------------------------------------------------- evaluation
    def evaluate(self, epoch: int, updates: Optional[int] = None) -> dict:
        """Score every test dataset: at the end of ``epoch``, or inside it after ``updates`` optimizer updates."""
        tag, where = epoch_checkpoints.evaluation_tag(epoch, updates), epoch_checkpoints.label(epoch, updates)
        dev_results = {}
        for data in self.eval_sets:
            result = parallel.predict(self.model, data, self.cfg.batch_size_eval, self.device, self.pad_id,
                                      self.amp_dtype, self.rank, self.world_size)
            if not self.is_main:
                continue
            write_scores(result, self.output_dir, tag)
            if result.metrics is None:
                write_submission(result, data.task_def,
                                 self.output_dir / f"{data.name}_submission_{tag}.tsv")
                continue
            dev_results[data.name] = result.metrics
            log.info("%s %s: %s", where, data.name,
                     ", ".join(f"{k} {v:.2f}" for k, v in result.metrics.items()))
        record = {"epoch": epoch, "step": self.global_step, **({} if updates is None else {"updates": updates}),
                  "dev": dev_results}
        if dev_results:
            record["glue_average"] = glue_average(dev_results)
            log.info("%s GLUE-style dev average: %.2f", where, record["glue_average"])
            self._log_scalars({f"dev/{d}/{m}": v for d, ms in dev_results.items() for m, v in ms.items()}
                              | {"dev/average": record["glue_average"]})
        # every rank must know whether to save: FSDP gathers the full weights collectively
        record = dist_utils.all_gather_objects(record)[0]
        score = record.get("glue_average")
        best = score is not None and (self.best_score is None or score > self.best_score)
        if best:
            self.best_score = score
            self.state.save(self.output_dir / "best", {"metrics.json": jsonsafe.dumps(record, indent=2)})
        if self.is_main:
            append_line(self.output_dir / "metrics.jsonl", jsonsafe.dumps(record) + "\n")
            self.reporting.evaluated(record, self.output_dir / "best" if best else None)
        return record

    def _log_scalars(self, values: dict) -> None:
        for hook in self.hooks:
            hook.logged(self, values)
        self.reporting.scalars(values, self.global_step)

    def save_step_checkpoint(self) -> Path:
        return self.state.save_step()
