"""Extra training objectives on top of each task's loss: SMART adversarial regularization (``--adv_train``) and
multi-task knowledge distillation (``--mkd_opt``).

Each objective is a small term in :data:`OBJECTIVES`. The trainer builds the enabled ones once and passes every
micro-batch's :class:`MicroBatch` (its inputs, the clean outputs of the training forward, labels, soft targets)
through them in order; each maps the loss so far to the new total. With none enabled the training step is the
plain one, untouched.

The divergences (``adv_loss``) and distillation losses (``kd_loss``) are keyed by the task-definition names of
MT-DNN (data_utils.task_def.ADV_LOSSES / KD_LOSSES list which fit which task type).
"""
from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from data_utils.task_def import ADV_LOSSES, KD_LOSSES, TaskDef
from mt_dnn.settings import DistillSettings, ObjectiveSettings, SmartSettings

log = logging.getLogger("sage.train")


# ------------------------------------------------------------------------------------------ divergences
def _full(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (a bf16/fp16 forward's outputs), float64 kept (the finite-difference tests)."""
    return x if x.dtype == torch.float64 else x.float()


def _log_probs(outputs: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(_full(outputs), dim=-1)


def kl_criterion(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """KL(softmax(target) || softmax(outputs)), mean over the batch: how far the outputs' class distribution
    strays from the target's (SMART's perturbed vs clean)."""
    log_p, log_q = _log_probs(outputs), _log_probs(target)
    return (log_q.exp() * (log_q - log_p)).sum(-1).mean()


def sym_kl_criterion(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """KL(q || p) + KL(p || q) of the two softmax distributions, mean over the batch (SMART's classification
    regularizer)."""
    log_p, log_q = _log_probs(outputs), _log_probs(target)
    return ((log_q.exp() - log_p.exp()) * (log_q - log_p)).sum(-1).mean()


def js_criterion(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence: the mean KL of both distributions to their average, mean over the batch."""
    p, q = _log_probs(outputs).exp(), _log_probs(target).exp()
    log_m = ((p + q) / 2).log()
    return 0.5 * (torch.xlogy(p, p) + torch.xlogy(q, q) - (p + q) * log_m).sum(-1).mean()


def mse_criterion(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the raw outputs (regression values)."""
    return F.mse_loss(_full(outputs), _full(target))


DIVERGENCES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "SymKlCriterion": sym_kl_criterion,
    "KlCriterion": kl_criterion,
    "JSCriterion": js_criterion,
    "MseCriterion": mse_criterion,
}


def kd_kl(outputs: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) with the teacher's probabilities ``soft``: cross-entropy against soft targets less
    their entropy, so a one-hot teacher gives exactly the hard-label cross-entropy."""
    return (torch.xlogy(soft, soft) - soft * _log_probs(outputs)).sum(-1).mean()


def kd_mse(outputs: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """Squared error to the teacher: of the class probabilities (Classification, Ranking), or of the value
    (Regression, where ``outputs`` and ``soft`` are (B,))."""
    pred = _full(outputs) if outputs.ndim == 1 else _log_probs(outputs).exp()
    return F.mse_loss(pred, soft.to(pred.dtype))


KD_CRITERIA: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "KlCriterion": kd_kl,
    "MseCriterion": kd_mse,
}


def adv_loss_name(td: TaskDef) -> str:
    return td.adv_loss or ADV_LOSSES[td.task_type][0]


def kd_loss_name(td: TaskDef, default: Optional[str] = None) -> str:
    return td.kd_loss or default or KD_LOSSES[td.task_type][0]


# ------------------------------------------------------------------------------------------ a micro-batch
@dataclass
class MicroBatch:
    """What an objective sees of one micro-batch. ``outputs`` are the clean float32 outputs of the training
    forward (with their graph); ``forward`` runs the model on given word embeddings under the run's autocast,
    ``embed`` returns the word embeddings of the batch (with gradient to the embedding table)."""
    task_def: TaskDef
    outputs: torch.Tensor
    labels: torch.Tensor
    soft_labels: Optional[torch.Tensor]
    attention_mask: torch.Tensor  # (B, L) or (B, K, L), right-padded
    row_keys: list[int]           # per example: a number naming (example, global batch), the same on every rank
    forward: Callable[[torch.Tensor], torch.Tensor]
    embed: Callable[[], torch.Tensor]
    scale: Callable[[torch.Tensor], torch.Tensor]  # the GradScaler's scaling (identity without --fp16)


class RngStream:
    """A private RNG stream (CPU, and the device's CUDA stream) for the dropout of an objective's extra forwards:
    the run's main stream, hence every dropout mask of the plain forward, stays as it would be without the
    objective. Its state goes into step checkpoints, so a resumed run continues it exactly."""

    def __init__(self, seed: int, device: torch.device):
        self.devices = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else []
        with torch.random.fork_rng(devices=self.devices):
            torch.manual_seed(seed)
            self.state = self._get()

    def _get(self) -> dict[str, torch.Tensor]:
        state = {"cpu": torch.get_rng_state()}
        if self.devices:
            state["cuda"] = torch.cuda.get_rng_state(self.devices[0])
        return state

    @contextlib.contextmanager
    def active(self):
        with torch.random.fork_rng(devices=self.devices):
            torch.set_rng_state(self.state["cpu"])
            if self.devices:
                torch.cuda.set_rng_state(self.state["cuda"], self.devices[0])
            yield
            self.state = self._get()


# ------------------------------------------------------------------------------------------ the objectives
class Objective:
    """A term of the training objective: ``__call__`` maps (micro-batch, loss so far) to the new loss."""
    name = ""

    def __call__(self, mb: MicroBatch, loss: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass


_M32 = 0xFFFFFFFF
_MIX = 0x45D9F3B  # below 2**31: a 32-bit value times it stays inside int64, so the hash never overflows


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash, elementwise on int64 tensors holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * _MIX) & _M32
    x = x ^ (x >> 16)
    x = (x * _MIX) & _M32
    return x ^ (x >> 16)


def _sequence_words(seed: int, keys: list[int]) -> list[list[int]]:
    """Two 32-bit words per sequence from (seed, key), mixed on the host in exact 64-bit arithmetic
    (splitmix64), so neighbouring keys give unrelated noise."""
    out = []
    for key in keys:
        z = (seed * 0x9E3779B97F4A7C15 + key * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) % 2 ** 64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2 ** 64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2 ** 64
        z ^= z >> 31
        out.append([z & _M32, z >> 32])
    return out


def _to_device(rows: list[list[int]], device: torch.device) -> torch.Tensor:
    """A small int64 table on ``device`` without a host sync (pinned memory, asynchronous copy on CUDA)."""
    table = torch.tensor(rows, dtype=torch.int64)
    if device.type == "cuda" and torch.cuda.is_available():
        return table.pin_memory().to(device, non_blocking=True)
    return table.to(device)


def keyed_noise(embeds: torch.Tensor, mask: torch.Tensor, row_keys: list[int], seed: int) -> torch.Tensor:
    """Standard Gaussian noise of ``embeds``' shape, zero at padding, drawn on ``embeds``' device.

    Each value is a hash of (seed, its sequence's row key, position, hidden index) turned Gaussian by Box-Muller:
    the noise an example gets does not depend on which rank holds it, on the batch's padded length, or on
    anything drawn before, so 2 ranks match 1 process and resume is exact. Nothing is read back to the host
    (the mask stays on the device) and only a table of two words per sequence crosses to it."""
    length, hidden = embeds.shape[-2], embeds.shape[-1]
    flat_mask = mask.reshape(-1, length)
    per_row = flat_mask.shape[0] // len(row_keys)  # Ranking: K sequences per example
    keys = [key * per_row + j for key in row_keys for j in range(per_row)]
    words = _to_device(_sequence_words(seed, keys), embeds.device)
    device, pairs = embeds.device, (hidden + 1) // 2
    positions = torch.arange(length, device=device, dtype=torch.int64)
    row_pos = _mix32(words[:, :1] ^ positions) ^ words[:, 1:]               # (S, L)
    column = _mix32(torch.arange(2 * pairs, device=device, dtype=torch.int64).view(2, pairs) + 0x3C6EF372)
    bits = row_pos[:, :, None, None] ^ column                                # (S, L, 2, pairs)
    bits = ((bits ^ (bits >> 16)) * _MIX) & _M32  # one multiply round: no xor structure across rows/columns left
    u = ((bits >> 8).to(torch.float32) + 0.5) * 2.0 ** -24                  # uniform in (0, 1), never 0 or 1
    radius, angle = torch.sqrt(-2.0 * torch.log(u[:, :, 0])), (2 * torch.pi) * u[:, :, 1]
    noise = torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)], dim=-1)[..., :hidden]
    noise = noise * flat_mask[..., None].to(noise.dtype)
    return noise.view(embeds.shape).to(dtype=embeds.dtype)


def rescale(delta: torch.Tensor, p_norm: str, level: int, eps: float) -> torch.Tensor:
    """``delta`` scaled to unit ``p_norm`` per token (level 0: over the hidden size) or per sequence (level 1:
    over tokens and hidden size); ``eps`` keeps a zero direction finite. This is how SMART's ascent is bounded
    here, as in MT-DNN (whose ``--adv_epsilon`` plays the same role)."""
    dims = (-1,) if level == 0 else (-2, -1)
    if p_norm == "inf":
        size = delta.abs().amax(dim=dims, keepdim=True)
    elif p_norm == "l2":
        size = torch.linalg.vector_norm(delta, ord=2, dim=dims, keepdim=True)
    else:  # l1
        size = delta.abs().sum(dim=dims, keepdim=True)
    return delta / (size + eps)


class Smart(Objective):
    """SMART (Jiang et al., ACL 2020): loss + adv_alpha × D(f(x + δ), f(x)), where δ starts as Gaussian noise
    on the word embeddings and takes ``adv_k`` normalised ascent steps on D against the (fixed) clean outputs.

    Every micro-batch runs the same adv_k + 1 extra forwards and adv_k gradient computations whatever the data
    (a non-finite ascent gradient counts as zero rather than skipping work), so DDP ranks stay in step. The
    ascent climbs the *sum* of the per-example divergences, so each example's step does not depend on how many
    examples share its rank; the gradient is taken through the GradScaler's scale and divided by it
    afterwards, so fp16 does not flush it to zero. Padding positions are never perturbed. The final forward
    keeps the embedding table's gradient; δ itself is a constant there.
    """
    name = "smart"

    def __init__(self, settings: SmartSettings, device: torch.device, rank: int = 0):
        self.settings = settings
        self.rng = RngStream(int(settings.seed) * 1_000_003 + 104_729 * (rank + 1), device)

    def perturbation(self, mb: MicroBatch, embeds: torch.Tensor, target: torch.Tensor,
                     divergence: Callable) -> torch.Tensor:
        """δ after adv_k ascent steps from Gaussian noise of scale adv_noise_var (no graph kept)."""
        s = self.settings
        keep = mb.attention_mask.unsqueeze(-1).to(embeds.dtype)
        delta = keyed_noise(embeds, mb.attention_mask, mb.row_keys, int(s.seed)) * s.adv_noise_var
        rows = target.shape[0]
        for _ in range(s.adv_k):
            delta.requires_grad_(True)
            value = divergence(mb.forward(embeds + delta), target) * rows
            factor = mb.scale(torch.ones((), device=value.device))  # the GradScaler's scale (1 without fp16)
            (grad,) = torch.autograd.grad(value * factor, delta)
            grad = torch.nan_to_num(grad / factor, nan=0.0, posinf=0.0, neginf=0.0)
            delta = rescale(delta.detach() + s.adv_step_size * grad, s.adv_p_norm, s.adv_norm_level,
                            s.adv_epsilon) * keep
        return delta.detach()

    def __call__(self, mb: MicroBatch, loss: torch.Tensor) -> torch.Tensor:
        divergence = DIVERGENCES[adv_loss_name(mb.task_def)]
        with self.rng.active():
            embeds = mb.embed()
            delta = self.perturbation(mb, embeds.detach(), mb.outputs.detach(), divergence)
            adversarial = mb.forward(embeds + delta)
        return loss + self.settings.adv_alpha * divergence(adversarial, mb.outputs)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.rng.state)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        # a stream saved without a CUDA part (a CPU run resumed on a GPU) keeps this run's seeded CUDA part
        self.rng.state = {**self.rng.state, **state}


class Distillation(Objective):
    """Multi-task knowledge distillation: on tasks whose training shard carries teachers' ``soft_label``, the
    loss becomes (1 - kd_alpha) × hard-label loss + kd_alpha × kd_loss(outputs, soft targets)."""
    name = "mkd"

    def __init__(self, settings: DistillSettings, device: torch.device, rank: int = 0):
        self.settings = settings

    def __call__(self, mb: MicroBatch, loss: torch.Tensor) -> torch.Tensor:
        if mb.soft_labels is None:
            return loss
        kd = KD_CRITERIA[kd_loss_name(mb.task_def, self.settings.kd_loss)](mb.outputs, mb.soft_labels)
        return (1.0 - self.settings.kd_alpha) * loss + self.settings.kd_alpha * kd


#: name -> (whether the config enables it, constructor); applied in this order (distillation first, so SMART's
#: term is added to the mixed task loss).
OBJECTIVES: dict[str, tuple[Callable, Callable]] = {
    "mkd": (lambda s: s.mkd_opt > 0, lambda s, device, rank: Distillation(s.distill, device, rank)),
    "smart": (lambda s: s.adv_train, lambda s, device, rank: Smart(s.smart, device, rank)),
}


def build_objectives(settings: ObjectiveSettings, device: torch.device, rank: int = 0) -> list[Objective]:
    return [make(settings, device, rank) for enabled, make in OBJECTIVES.values() if enabled(settings)]


def for_run(settings: ObjectiveSettings, task_defs: dict[str, TaskDef], train_sets: Sequence, data_dir: str,
            device: torch.device, rank: int = 0) -> list[Objective]:
    """The extra objective terms a run enables (SMART, distillation), checked against its tasks and shards."""
    check_task_fits(settings, task_defs)
    if settings.mkd_opt > 0:
        with_soft = [d.task_def.name for d in train_sets if d.soft_labels is not None]
        if not with_soft:
            raise ValueError(f"--mkd_opt: no training shard in {data_dir} has soft_label "
                             "(write them with prepare_distillation_data.py)")
        log.info("--mkd_opt: distilling from soft targets on %s", ", ".join(with_soft))
    terms = build_objectives(settings, device, rank)
    if settings.adv_train:
        smart = settings.smart
        log.info("--adv_train: SMART with adv_alpha %g, adv_k %d, step %g, noise %g, %s norm per %s",
                 smart.adv_alpha, smart.adv_k, smart.adv_step_size, smart.adv_noise_var, smart.adv_p_norm,
                 "token" if smart.adv_norm_level == 0 else "sequence")
    return terms


def check_task_fits(settings: ObjectiveSettings, task_defs: dict[str, TaskDef]) -> None:
    """SMART and distillation need a task type they have a divergence for; ``--kd_loss`` must fit every task
    that uses it (YAML kd_loss wins where given)."""
    kd_loss = settings.distill.kd_loss
    for flag, on, losses in (("--adv_train", settings.adv_train, ADV_LOSSES),
                             ("--mkd_opt", settings.mkd_opt > 0, KD_LOSSES)):
        for td in task_defs.values():
            if on and td.task_type not in losses:
                raise ValueError(f"{flag}: task '{td.name}' is a {td.task_type.name} task; SMART and distillation "
                                 f"are for {', '.join(t.name for t in losses)} tasks")
    if not (settings.mkd_opt > 0 and kd_loss):
        return
    for td in task_defs.values():
        if td.kd_loss is None and kd_loss not in KD_LOSSES[td.task_type]:
            raise ValueError(f"--kd_loss: {kd_loss} does not fit {td.task_type.name} task '{td.name}'; use "
                             f"{', '.join(KD_LOSSES[td.task_type])} (or give kd_loss in its task definition)")


# ------------------------------------------------------------------------------------------ checkpoints
def states_to_bytes(objectives: list[Objective]) -> bytes:
    buffer = io.BytesIO()
    torch.save({o.name: o.state_dict() for o in objectives}, buffer)
    return buffer.getvalue()


def states_from_bytes(blob: bytes) -> dict:
    return torch.load(io.BytesIO(blob), weights_only=True)


def load_states(objectives: list[Objective], states: dict) -> None:
    for o in objectives:
        if o.name in states:
            o.load_state_dict(states[o.name])

