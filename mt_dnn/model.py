"""MTDNNModel: one shared encoder, one small head per task, chosen by task name at each forward call.

The encoder is registered as ``self.encoder`` so its parameter names read ``encoder.encoder.layer.N.attention.self
...``: the SAGE optimizer's name patterns find the attention and feed-forward weights there, while the pooler and
heads (``pooler.dense``, ``heads.<task>.proj``) fall in the plain groups.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Optional

import torch
from torch import nn

from data_utils.task_def import TaskDef, TaskType
from module.heads import SanOptions, build_head
from module.pooler import FirstTokenPooler
from mt_dnn.loss import build_loss


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
    """A shared Hugging Face encoder plus one head per task, in an ``nn.ModuleDict`` keyed by task name."""

    def __init__(self, encoder: nn.Module, task_defs: Mapping[str, TaskDef], san: Optional[SanOptions] = None):
        super().__init__()
        _check_task_names(task_defs)
        config = encoder.config
        hidden, init_std = config.hidden_size, getattr(config, "initializer_range", 0.02)
        self.encoder = encoder
        self.task_defs = dict(task_defs)
        # BERT/RoBERTa bring a pretrained pooler; DeBERTa/ELECTRA have none, so we add our own.
        self.uses_encoder_pooler = getattr(encoder, "pooler", None) is not None
        self.pooler = None if self.uses_encoder_pooler else FirstTokenPooler(hidden, init_std)
        self.heads = nn.ModuleDict({name: build_head(td, hidden, init_std, san)
                                    for name, td in self.task_defs.items()})
        self.losses = {name: build_loss(td.loss) for name, td in self.task_defs.items()}

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
             inputs_embeds: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(N, L) token ids (or (N, L, H) word embeddings) -> (N, H) pooled [CLS] representation."""
        out = self._encode(input_ids, attention_mask, token_type_ids, inputs_embeds)
        if self.uses_encoder_pooler:
            return out.pooler_output
        return self.pooler(out.last_hidden_state)

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
            hidden = self._encode(input_ids, attention_mask, token_type_ids, inputs_embeds).last_hidden_state
            return head(hidden, attention_mask)
        if getattr(head, "uses_tokens", False):  # the SAN head reads every token, not the pooled [CLS]
            hidden = self._encode(input_ids, attention_mask, token_type_ids, inputs_embeds).last_hidden_state
            return head(hidden, attention_mask, token_type_ids)
        if not ranking:
            return head(self.pool(input_ids, attention_mask, token_type_ids, inputs_embeds))
        b, k, length = input_ids.shape
        if k != td.n_class:
            raise ValueError(f"task {task}: expects {td.n_class} hypotheses per example (n_class), got {k}")
        flat = [None if t is None else t.reshape(b * k, length) for t in (input_ids, attention_mask, token_type_ids)]
        embeds = None if inputs_embeds is None else inputs_embeds.reshape(b * k, length, -1)
        pooled = self.pool(*flat, embeds)
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
    """MT-DNN's --bert_dropout_p: the encoder's hidden dropout (embeddings and sublayer outputs); the attention
    probabilities keep their own rate. The config is updated too, so a saved checkpoint rebuilds the same."""
    for name, module in encoder.named_modules():
        if isinstance(module, nn.Dropout) and not name.rsplit(".", 1)[0].endswith("self"):
            module.p = p
    encoder.config.hidden_dropout_prob = p


def keep_first_layers(encoder: nn.Module, n: int) -> None:
    """MT-DNN's --num_hidden_layers: drop the encoder's transformer layers after the first ``n`` (the largest
    ModuleList holds them); the config is updated so a saved checkpoint rebuilds the shorter encoder."""
    lists = [m for m in encoder.modules() if isinstance(m, nn.ModuleList)]
    layers = max(lists, key=len) if lists else None
    if layers is None or n > len(layers):
        have = 0 if layers is None else len(layers)
        raise ValueError(f"--num_hidden_layers: the encoder has {have} layers, cannot keep {n}")
    del layers[n:]
    encoder.config.num_hidden_layers = n


def build_model(encoder: nn.Module, task_defs: Mapping[str, TaskDef], cfg) -> MTDNNModel:
    """An MTDNNModel configured by a TrainConfig's model flags (depth, dropout, SAN, encoder freezing)."""
    if cfg.num_hidden_layers > 0:
        keep_first_layers(encoder, cfg.num_hidden_layers)
    if cfg.bert_dropout_p is not None:
        set_encoder_dropout(encoder, cfg.bert_dropout_p)
    san = SanOptions(cfg.answer_num_turn, cfg.answer_mem_drop_p, cfg.answer_att_hidden_size,
                     cfg.answer_dropout_p) if cfg.answer_opt == 1 else None
    model = MTDNNModel(encoder, effective_task_defs(task_defs, cfg.dropout_p, cfg.answer_opt), san)
    if cfg.update_bert_opt > 0:  # MT-DNN: a frozen encoder; its pooler (MT-DNN's own, outside it) and heads train
        pooler = getattr(model.encoder, "pooler", None)
        keep = {id(p) for p in pooler.parameters()} if pooler is not None else set()
        for p in model.encoder.parameters():
            if id(p) not in keep:
                p.requires_grad_(False)
    return model
