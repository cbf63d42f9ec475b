"""MTDNNModel: one shared encoder, one small head per task, chosen by task name at each forward call.

The encoder is registered as ``self.encoder`` so its parameter names read ``encoder.encoder.layer.N.attention.self
...``: the SAGE optimizer's name patterns find the attention and feed-forward weights there, while the poolers and
heads (``pooler.dense``, ``heads.<task>.pooler.dense``, ``heads.<task>.proj``) fall in the plain groups, as the
authors' pooler and ``scoring_list`` do. Which pooler a head reads is the model's head layout
(mt_dnn/head_layout.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Iterator, Mapping, Optional

import torch
from torch import nn

from data_utils.task_def import TaskDef, TaskType
from module.heads import SanOptions, build_head, head_reads_pooled, reads_pooled
from module.pooler import FirstTokenPooler
from mt_dnn import head_layout as layouts
from mt_dnn.loss import build_loss
from mt_dnn.settings import ModelSettings


_EMPTY_MODULE_DICT = nn.ModuleDict()


def _check_task_names(task_defs: Mapping[str, TaskDef]) -> None:
    if not task_defs:
        raise ValueError("MTDNNModel: no task definitions given")
    for key, td in task_defs.items():
        if key != td.name:
            raise ValueError(f"MTDNNModel: task_defs key '{key}' differs from its TaskDef name '{td.name}'")
        if not key or "." in key:
            raise ValueError(f"MTDNNModel: task name '{key}' must be non-empty and contain no '.'")
        if hasattr(_EMPTY_MODULE_DICT, key):  # nn.ModuleDict keys cannot shadow its attributes
            raise ValueError(f"MTDNNModel: task name '{key}' is reserved by torch.nn.ModuleDict; rename the task")


def predict(task_def: TaskDef, outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Model outputs -> (predictions, scores), the inputs of data_utils.metrics.

    Classification: argmax class and softmax probabilities; Regression: the float itself, twice;
    Ranking: index of the best of the K hypotheses and the softmax over the K scores. Scores come back in
    float32 even from a bf16/fp16 forward pass (numpy, hence the metrics, has no bfloat16).
    """
    if task_def.task_type is TaskType.Regression:
        values = outputs.float()
        return values, values
    if task_def.task_type in (TaskType.Classification, TaskType.Ranking):
        probs = torch.softmax(outputs.float(), dim=-1)
        return probs.argmax(dim=-1), probs
    if task_def.task_type is TaskType.Span:
        return span_candidates(outputs.float(), task_def.span.n_best_size)
    if task_def.task_type is TaskType.SequenceLabeling:
        probs = torch.softmax(outputs.float(), dim=-1)
        best = probs.max(dim=-1)
        return best.indices, best.values
    raise ValueError(f"task {task_def.name}: cannot predict for task type {task_def.task_type!r}")


def span_candidates(logits: torch.Tensor, n_best: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L, 2) start/end logits -> the n best start and end positions (B, 2, n) and scores (B, 2, n + 1):
    ``scores[:, :, 0]`` is the first token's start/end logit (the null answer), the rest the n best logits.

    Only these per window reach the decoder (data_utils.squad.best_span), not the (B, L, 2) logits, so a
    distributed evaluation gathers little.
    """
    top = logits.transpose(1, 2).topk(min(n_best, logits.shape[1]), dim=-1)
    return top.indices, torch.cat([logits.transpose(1, 2)[..., :1], top.values], dim=-1)


class MTDNNModel(nn.Module):
    """A shared Hugging Face encoder plus one head per task, in an ``nn.ModuleDict`` keyed by task name.

    ``head_layout`` (``encoder``, ``sage``, ``mtdnn``; None: ``encoder``) says which pooler the heads read;
    ``pooler_actf`` its activation (None: the layout's default); ``pooler_dropout_p`` the dropout on the shared
    pooler's input under ``sage`` (the SAGE repository's global --dropout_p).
    """

    def __init__(self, encoder: nn.Module, task_defs: Mapping[str, TaskDef], san: Optional[SanOptions] = None,
                 head_layout: Optional[str] = None, pooler_actf: Optional[str] = None,
                 pooler_dropout_p: float = 0.1):
        super().__init__()
        _check_task_names(task_defs)
        problem = layouts.check(head_layout, pooler_actf)
        if problem:
            raise ValueError(problem)
        config = encoder.config
        hidden, init_std = config.hidden_size, getattr(config, "initializer_range", 0.02)
        self.head_layout, self.pooler_actf = layouts.layout_of(head_layout), layouts.actf_of(head_layout, pooler_actf)
        self.encoder = encoder
        self.task_defs = dict(task_defs)
        has_pooler = getattr(encoder, "pooler", None) is not None
        # encoder layout: BERT/RoBERTa bring a pretrained pooler; DeBERTa/ELECTRA have none, so one is added.
        self.uses_encoder_pooler = self.head_layout == "encoder" and has_pooler
        if self.head_layout == "sage":  # the authors' shared pooler, torch's default init as theirs
            self.pooler = FirstTokenPooler(hidden, None, pooler_dropout_p, self.pooler_actf)
        else:
            self.pooler = FirstTokenPooler(hidden, init_std) if self.head_layout == "encoder" and not has_pooler \
                else None
        head_init = init_std if self.head_layout == "encoder" else None  # theirs: torch's default nn.Linear init
        self.heads = nn.ModuleDict({name: self._head(td, hidden, head_init, san)
                                    for name, td in self.task_defs.items()})
        self.losses = {name: build_loss(td.loss) for name, td in self.task_defs.items()}
        # what computes the task-independent part of a forward on token ids (mt_dnn.compiled swaps in a compiled
        # one for the training forward); same arguments and result as encoder_body
        self._body_override: Optional[Callable] = None

    def _head(self, td: TaskDef, hidden: int, init_std: Optional[float], san: Optional[SanOptions]) -> nn.Module:
        if self.head_layout != "mtdnn" or not head_reads_pooled(td, san):
            return build_head(td, hidden, init_std, san)
        # MT-DNN: Sequential(Pooler(task dropout), Linear): the task's dropout is on the pooler's input
        pooler = FirstTokenPooler(hidden, None, td.dropout_p, self.pooler_actf)
        head = build_head(dataclasses.replace(td, dropout_p=0.0), hidden, init_std, san)
        head.pooler = pooler
        return head

    @property
    def task_names(self) -> list[str]:
        return list(self.task_defs)

    def _task(self, task: str) -> TaskDef:
        try:
            return self.task_defs[task]
        except KeyError:
            raise ValueError(f"unknown task '{task}'; this model has: {', '.join(self.task_defs)}") from None

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token ids (..., L) -> the encoder's word embeddings (..., L, H): what SMART perturbs and passes back
        as ``inputs_embeds`` (positions and token types are still added inside the encoder)."""
        return self.encoder.get_input_embeddings()(input_ids)

    def _encode(self, input_ids, attention_mask, token_type_ids, inputs_embeds):
        """The encoder on token ids, or on given word embeddings (same shapes, ids unused) when perturbed."""
        kwargs = {"attention_mask": attention_mask}
        if inputs_embeds is None:
            kwargs["input_ids"] = input_ids
        else:
            kwargs["inputs_embeds"] = inputs_embeds
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        return self.encoder(**kwargs, return_dict=True)

    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             token_type_ids: Optional[torch.Tensor] = None,
             inputs_embeds: Optional[torch.Tensor] = None, task: Optional[str] = None) -> torch.Tensor:
        """(N, L) token ids (or (N, L, H) word embeddings) -> (N, H) pooled [CLS] representation, through the
        pooler ``task``'s head reads (the ``mtdnn`` layout has one per task, so it needs the task)."""
        out = self._encode(input_ids, attention_mask, token_type_ids, inputs_embeds)
        if self.uses_encoder_pooler:
            return out.pooler_output
        return self.pooler_of(task)(out.last_hidden_state)

    def pooler_of(self, task: Optional[str]) -> nn.Module:
        """The pooler module ``task``'s head reads (not for the encoder's own pooler: see ``uses_encoder_pooler``)."""
        if self.head_layout != "mtdnn":
            return self.pooler
        if task is None:
            raise ValueError("the mtdnn head layout pools with each task's own pooler: name the task")
        pooler = getattr(self.heads[task], "pooler", None)
        if pooler is None:
            raise ValueError(f"task {task}: its head reads every token, not a pooled vector")
        return pooler

    def parameters_used_by(self, task: str) -> list[nn.Parameter]:
        """The parameters a forward of ``task`` reads: the encoder (without its pooler when no head of ``task``'s
        kind reads it), the pooler this task's head reads, and this head. The others never get a gradient from it,
        so they must never be given one (a zero gradient would still let weight decay move them)."""
        self._task(task)
        head = self.heads[task]
        skip = {id(p) for name, other in self.heads.items() if name != task for p in other.parameters()}
        encoder_pooler = getattr(self.encoder, "pooler", None)
        if encoder_pooler is not None and not (self.uses_encoder_pooler and reads_pooled(head)):
            skip |= {id(p) for p in encoder_pooler.parameters()}
        if self.pooler is not None and not reads_pooled(head):
            skip |= {id(p) for p in self.pooler.parameters()}
        return [p for p in self.parameters() if id(p) not in skip]

    def encoder_body(self, pooled: bool, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     token_type_ids: Optional[torch.Tensor] = None,
                     inputs_embeds: Optional[torch.Tensor] = None) -> torch.Tensor:
        """What every task's forward shares: (N, H) pooled [CLS] vectors, or (N, L, H) token states for heads that
        read every token (and, under the ``mtdnn`` layout, for the per-task poolers). It does not depend on the
        task, so ``--compile`` compiles it once per input shape."""
        if pooled:
            return self.pool(input_ids, attention_mask, token_type_ids, inputs_embeds)
        return self._encode(input_ids, attention_mask, token_type_ids, inputs_embeds).last_hidden_state

    def _pooled(self, task: str, input_ids, attention_mask, token_type_ids, inputs_embeds) -> torch.Tensor:
        """The pooled vector ``task``'s head reads: pooled inside the shared body, except under the ``mtdnn``
        layout, whose per-task pooler runs after the shared token states."""
        if self.head_layout == "mtdnn":
            return self.pooler_of(task)(self._body(False, input_ids, attention_mask, token_type_ids, inputs_embeds))
        return self._body(True, input_ids, attention_mask, token_type_ids, inputs_embeds)

    def _body(self, pooled: bool, input_ids, attention_mask, token_type_ids, inputs_embeds) -> torch.Tensor:
        if self._body_override is not None and inputs_embeds is None:
            return self._body_override(pooled, input_ids, attention_mask, token_type_ids)
        return self.encoder_body(pooled, input_ids, attention_mask, token_type_ids, inputs_embeds)

    @contextlib.contextmanager
    def body_override(self, body: Callable) -> Iterator[None]:
        """Compute :meth:`encoder_body` on token ids with ``body`` inside the block (the compiled training
        forward); forwards on given embeddings (SMART's) and everything outside the block stay as they are."""
        self._body_override = body
        try:
            yield
        finally:
            self._body_override = None

    def forward(self, task: str, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: Optional[torch.Tensor] = None,
                inputs_embeds: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Classification: (B, n_class) logits; Regression: (B,) floats; Ranking: (B, K) scores from (B, K, L);
        Span: (B, L, 2) start/end logits; SequenceLabeling: (B, L, n_class) tag logits.

        ``inputs_embeds`` (input_ids' shape + (H,)), when given, replaces the word embeddings of ``input_ids``
        (SMART's perturbed inputs); ``input_ids`` still fixes the shapes."""
        td = self._task(task)
        ranking = td.task_type is TaskType.Ranking
        want = 3 if ranking else 2
        if input_ids.ndim != want:
            layout = "(B, K, L)" if ranking else "(B, L)"
            raise ValueError(f"task {task}: expects input_ids of shape {layout}, got {tuple(input_ids.shape)}")
        for what, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if t is not None and t.shape != input_ids.shape:
                raise ValueError(f"task {task}: {what} {tuple(t.shape)} does not match input_ids "
                                 f"{tuple(input_ids.shape)}")
        if inputs_embeds is not None and inputs_embeds.shape[:-1] != input_ids.shape:
            raise ValueError(f"task {task}: inputs_embeds {tuple(inputs_embeds.shape)} does not match input_ids "
                             f"{tuple(input_ids.shape)}")
        head = self.heads[task]
        if getattr(head, "per_token", False):  # Span / SequenceLabeling: one output per token
            hidden = self._body(False, input_ids, attention_mask, token_type_ids, inputs_embeds)
            return head(hidden, attention_mask)
        if getattr(head, "uses_tokens", False):  # the SAN head reads every token, not the pooled [CLS]
            hidden = self._body(False, input_ids, attention_mask, token_type_ids, inputs_embeds)
            return head(hidden, attention_mask, token_type_ids)
        if not ranking:
            return head(self._pooled(task, input_ids, attention_mask, token_type_ids, inputs_embeds))
        b, k, length = input_ids.shape
        if k != td.n_class:
            raise ValueError(f"task {task}: expects {td.n_class} hypotheses per example (n_class), got {k}")
        flat = [None if t is None else t.reshape(b * k, length) for t in (input_ids, attention_mask, token_type_ids)]
        embeds = None if inputs_embeds is None else inputs_embeds.reshape(b * k, length, -1)
        pooled = self._pooled(task, *flat, embeds)
        return self.heads[task](pooled.view(b, k, -1))

    def loss(self, task: str, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The task's YAML ``loss`` applied to this model's outputs for that task."""
        self._task(task)
        return self.losses[task](outputs, labels)

    def predict(self, task: str, outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(predictions, scores) for the task's outputs; see the module-level ``predict``."""
        return predict(self._task(task), outputs)


# ------------------------------------------------------------------------------------------ from a config
def effective_task_defs(task_defs: Mapping[str, TaskDef], dropout_p: float, answer_opt: int) -> dict[str, TaskDef]:
    """The task defs as this run uses them: ``--dropout_p`` for tasks whose YAML gives none, and ``enable_san``
    kept only under ``--answer_opt 1`` (MT-DNN's rule: SAN where both the task and the run ask for it)."""
    out = {}
    for name, td in task_defs.items():
        changes = {}
        if not td.dropout_given and td.dropout_p != dropout_p:
            changes["dropout_p"] = dropout_p
        if td.enable_san and answer_opt != 1:
            changes["enable_san"] = False
        out[name] = dataclasses.replace(td, **changes) if changes else td
    return out


def set_encoder_dropout(encoder: nn.Module, p: float) -> None:
    """MT-DNN's and the SAGE repository's --bert_dropout_p: the encoder's hidden dropout (embeddings and sublayer
    outputs) and its attention-probability dropout, both (their train.py sets hidden_dropout_prob and
    attention_probs_dropout_prob). The config is updated too, so a saved checkpoint rebuilds the same."""
    for module in encoder.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
    encoder.config.hidden_dropout_prob = p
    encoder.config.attention_probs_dropout_prob = p


def keep_first_layers(encoder: nn.Module, n: int) -> None:
    """MT-DNN's --num_hidden_layers: drop the encoder's transformer layers after the first ``n`` (the largest
    ModuleList holds them); the config is updated so a saved checkpoint rebuilds the shorter encoder.

    ALBERT runs one shared layer ``num_hidden_layers`` times (its ModuleList holds one layer group): there the
    first ``n`` layers are the first ``n`` repetitions, which its forward takes from the config."""
    lists = [m for m in encoder.modules() if isinstance(m, nn.ModuleList)]
    layers = max(lists, key=len) if lists else None
    depth = getattr(encoder.config, "num_hidden_layers", None)
    have = depth if isinstance(depth, int) and depth > 0 else 0 if layers is None else len(layers)
    if n > have:
        raise ValueError(f"--num_hidden_layers: the encoder has {have} layers, cannot keep {n}")
    groups = getattr(encoder.config, "num_hidden_groups", None)
    if layers is not None and len(layers) < have:  # layers share weights (ALBERT)
        if groups != 1 and n < have:
            raise ValueError(f"--num_hidden_layers: the encoder's {have} layers share {groups} weight groups; "
                             f"keeping {n} would regroup them, so only the whole encoder (-1) is supported")
    elif layers is not None:
        del layers[n:]
    encoder.config.num_hidden_layers = n


def build_model(encoder: nn.Module, task_defs: Mapping[str, TaskDef], settings: ModelSettings) -> MTDNNModel:
    """An MTDNNModel configured by a run's model flags (depth, dropout, SAN, head layout, encoder freezing)."""
    if settings.num_hidden_layers > 0:
        keep_first_layers(encoder, settings.num_hidden_layers)
    if settings.bert_dropout_p is not None:
        set_encoder_dropout(encoder, settings.bert_dropout_p)
    san = SanOptions(settings.answer_num_turn, settings.answer_mem_drop_p, settings.answer_att_hidden_size,
                     settings.answer_dropout_p) if settings.answer_opt == 1 else None
    model = MTDNNModel(encoder, effective_task_defs(task_defs, settings.dropout_p, settings.answer_opt), san,
                       head_layout=settings.head_layout, pooler_actf=settings.pooler_actf,
                       pooler_dropout_p=settings.dropout_p)
    if settings.update_bert_opt > 0:  # MT-DNN: a frozen encoder; the pooler the heads read (outside it) and heads train
        keep = {id(p) for p in model.encoder.pooler.parameters()} if model.uses_encoder_pooler else set()
        for p in model.encoder.parameters():
            if id(p) not in keep:
                p.requires_grad_(False)
    return model
