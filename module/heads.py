"""Task heads: dropout with the task's ``dropout_p``, then one linear layer over the pooled representation; or,
for Classification tasks with ``enable_san: true`` (and ``--answer_opt 1``), MT-DNN's stochastic answer network;
Span and SequenceLabeling heads score every token instead.

A registry keyed by ``TaskType`` builds the right head, so a new task needs only its YAML entry. Layer names
(``dropout``, ``proj``, ``summary``, ``attend``, ``cell``) stay out of the SAGE name patterns: heads are trained
with the plain optimizer groups, as in the authors' code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from data_utils.task_def import TaskDef, TaskType


def _init_linear(layer: nn.Linear, init_std: Optional[float]) -> nn.Linear:
    """Normal(0, init_std) weights, zero bias: the encoder's own init, so fresh heads start with small logits.
    None keeps torch's default ``nn.Linear`` init (the SAGE repository's and MT-DNN's heads)."""
    if init_std is not None:
        nn.init.normal_(layer.weight, mean=0.0, std=init_std)
        nn.init.zeros_(layer.bias)
    return layer


class ClassificationHead(nn.Module):
    """(..., H) -> (..., n_class) logits.

    Under the ``mtdnn`` head layout MTDNNModel gives the head a ``pooler`` attribute, the task's own [CLS] pooler:
    the model applies it and passes its result here, the head only owns it (``heads.<task>.pooler.*``).
    """

    def __init__(self, hidden_size: int, n_class: int, dropout_p: float, init_std: Optional[float] = 0.02):
        super().__init__()
        self.dropout = nn.Dropout(dropout_p)
        self.proj = _init_linear(nn.Linear(hidden_size, n_class), init_std)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.proj(self.dropout(pooled))


class ScoreHead(nn.Module):
    """(..., H) -> (...) one float per input: a regression value, or a ranking score per (premise, hypothesis).
    May own a ``pooler`` as :class:`ClassificationHead` does."""

    def __init__(self, hidden_size: int, dropout_p: float, init_std: Optional[float] = 0.02):
        super().__init__()
        self.dropout = nn.Dropout(dropout_p)
        self.proj = _init_linear(nn.Linear(hidden_size, 1), init_std)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.proj(self.dropout(pooled)).squeeze(-1)


def _wide(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (softmax of bf16/fp16 autocast outputs), float64 stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


@dataclass(frozen=True)
class SanOptions:
    """The SAN head's settings (MT-DNN's --answer_* flags)."""
    num_turn: int = 5
    mem_drop_p: float = 0.1
    att_hidden_size: int = 128
    state_dropout_p: float = 0.1


class SANClassifier(nn.Module):
    """Stochastic answer network (Liu et al., 2018; MT-DNN's ``enable_san``): multi-step reasoning over tokens.

    The hypothesis tokens (token type 1) are summarised by a small self-attention into the initial state; each
    step attends bilinearly from the state over the premise tokens (type 0), feeds what it read into a GRU cell
    to get the next state, and predicts class probabilities from [read; state; |read - state|; read * state].
    The answer averages the steps' probabilities; while training, each step's prediction is dropped with
    probability ``mem_drop_p`` (at least one step is always kept), so no single step can carry the answer.
    Returns log-probabilities, which act as logits: softmax gives the averaged probabilities back, and
    cross-entropy on them is the negative log of the averaged probability of the gold class.

    A row with no type-1 tokens (a single sentence, or an encoder without segment ids) uses all its tokens as
    both the hypothesis and the premise.
    """

    uses_tokens = True  # MTDNNModel passes (hidden states, attention_mask, token_type_ids), not a pooled vector

    def __init__(self, hidden_size: int, n_class: int, dropout_p: float, options: SanOptions,
                 init_std: float = 0.02):
        super().__init__()
        self.options = options
        self.dropout = nn.Dropout(dropout_p)
        self.state_dropout = nn.Dropout(options.state_dropout_p)
        self.summary = nn.Sequential(_init_linear(nn.Linear(hidden_size, options.att_hidden_size), init_std),
                                     nn.Tanh(), _init_linear(nn.Linear(options.att_hidden_size, 1), init_std))
        self.attend = nn.Linear(hidden_size, hidden_size, bias=False)
        nn.init.normal_(self.attend.weight, mean=0.0, std=init_std)
        self.cell = nn.GRUCell(hidden_size, hidden_size)
        self.proj = _init_linear(nn.Linear(4 * hidden_size, n_class), init_std)

    @staticmethod
    def _masks(attention_mask: torch.Tensor, token_type_ids: Optional[torch.Tensor]):
        valid = attention_mask.bool()
        if token_type_ids is None:
            return valid, valid
        hypothesis = valid & (token_type_ids == 1)
        single = ~hypothesis.any(dim=1, keepdim=True)
        premise = valid & ((token_type_ids == 0) | single)
        return premise, torch.where(single, valid, hypothesis)

    @staticmethod
    def _weighted_sum(scores: torch.Tensor, mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(_wide(scores).masked_fill(~mask, float("-inf")), dim=1).to(values.dtype)
        return torch.bmm(weights.unsqueeze(1), values).squeeze(1)

    def _keep(self, batch: int, device: torch.device) -> torch.Tensor:
        """(B, T) 0/1 weights of the steps whose predictions count."""
        turns = self.options.num_turn
        if not self.training or self.options.mem_drop_p == 0:
            return torch.ones(batch, turns, device=device)
        keep = (torch.rand(batch, turns, device=device) >= self.options.mem_drop_p).float()
        forced = torch.randint(turns, (batch,), device=device)
        return keep.scatter(1, forced.unsqueeze(1), 1.0)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        premise, hypothesis = self._masks(attention_mask, token_type_ids)
        memory = self.dropout(hidden)
        state = self._weighted_sum(self.summary(memory).squeeze(-1), hypothesis, memory)
        probs = []
        for _ in range(self.options.num_turn):
            scores = torch.bmm(memory, self.attend(state).unsqueeze(2)).squeeze(2)
            read = self._weighted_sum(scores, premise, memory)
            state = self.cell(read, self.state_dropout(state))
            merged = torch.cat([read, state, (read - state).abs(), read * state], dim=-1)
            probs.append(torch.softmax(_wide(self.proj(merged)), dim=-1))
        keep = self._keep(hidden.shape[0], hidden.device)
        averaged = (torch.stack(probs, dim=1) * keep.unsqueeze(2)).sum(1) / keep.sum(1, keepdim=True)
        return averaged.clamp_min(1e-12).log()


class SpanHead(nn.Module):
    """(B, L, H) token states -> (B, L, 2) start and end logits; padding gets a large negative logit."""

    per_token = True  # MTDNNModel passes (hidden states, attention_mask), not a pooled vector

    def __init__(self, hidden_size: int, dropout_p: float, init_std: Optional[float] = 0.02):
        super().__init__()
        self.dropout = nn.Dropout(dropout_p)
        self.proj = _init_linear(nn.Linear(hidden_size, 2), init_std)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits = _wide(self.proj(self.dropout(hidden)))
        return logits.masked_fill(~attention_mask.bool().unsqueeze(-1), -1e4)


class TaggingHead(nn.Module):
    """(B, L, H) token states -> (B, L, n_class) tag logits (only first sub-tokens are trained and read)."""

    per_token = True

    def __init__(self, hidden_size: int, n_class: int, dropout_p: float, init_std: Optional[float] = 0.02):
        super().__init__()
        self.dropout = nn.Dropout(dropout_p)
        self.proj = _init_linear(nn.Linear(hidden_size, n_class), init_std)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.proj(self.dropout(hidden))


def _classification(task_def: TaskDef, hidden_size: int, init_std: Optional[float]) -> nn.Module:
    if task_def.n_class < 2:
        raise ValueError(f"task {task_def.name}: a Classification head needs n_class >= 2, got {task_def.n_class}")
    return ClassificationHead(hidden_size, task_def.n_class, task_def.dropout_p, init_std)


def _score(task_def: TaskDef, hidden_size: int, init_std: Optional[float]) -> nn.Module:
    return ScoreHead(hidden_size, task_def.dropout_p, init_std)


def _span(task_def: TaskDef, hidden_size: int, init_std: Optional[float]) -> nn.Module:
    return SpanHead(hidden_size, task_def.dropout_p, init_std)


def _tagging(task_def: TaskDef, hidden_size: int, init_std: Optional[float]) -> nn.Module:
    return TaggingHead(hidden_size, task_def.n_class, task_def.dropout_p, init_std)


HeadBuilder = Callable[[TaskDef, int, Optional[float]], nn.Module]

HEADS: dict[TaskType, HeadBuilder] = {
    TaskType.Classification: _classification,
    TaskType.Regression: _score,
    TaskType.Ranking: _score,
    TaskType.Span: _span,
    TaskType.SequenceLabeling: _tagging,
}


def build_head(task_def: TaskDef, hidden_size: int, init_std: Optional[float] = 0.02,
               san: Optional[SanOptions] = None) -> nn.Module:
    """The head for ``task_def.task_type``; a task type without a registered head fails with the known ones.

    ``san`` (MT-DNN's ``--answer_opt 1``) gives the Classification tasks with ``enable_san`` a SANClassifier, which
    keeps its own normal(0, 0.02) init whatever ``init_std`` says (no other project has this network).
    """
    if task_def.task_type not in HEADS:
        known = ", ".join(t.name for t in HEADS)
        raise ValueError(f"task {task_def.name}: no head for task type {task_def.task_type!r}; known: {known}")
    if task_def.enable_san and san is not None:
        if task_def.task_type is not TaskType.Classification:
            raise ValueError(f"task {task_def.name}: the SAN head is for Classification tasks, not "
                             f"{task_def.task_type.name}")
        return SANClassifier(hidden_size, task_def.n_class, task_def.dropout_p, san,
                             0.02 if init_std is None else init_std)
    return HEADS[task_def.task_type](task_def, hidden_size, init_std)


def reads_pooled(head: nn.Module) -> bool:
    """Whether the head reads the pooled [CLS] vector (Classification, Regression, Ranking), not every token."""
    return not (getattr(head, "per_token", False) or getattr(head, "uses_tokens", False))


def head_reads_pooled(task_def: TaskDef, san: Optional[SanOptions] = None) -> bool:
    """Whether ``build_head(task_def, ..., san)`` gives a head that reads the pooled vector."""
    uses_san = task_def.enable_san and san is not None
    return task_def.task_type in (TaskType.Classification, TaskType.Regression, TaskType.Ranking) and not uses_san
