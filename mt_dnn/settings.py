"""What each component reads of a run's configuration: small frozen dataclasses, each built from a
:class:`mt_dnn.config.TrainConfig` by its ``*_settings()`` method, so that a component's signature says which
flags it depends on (the model builder, warm start, SMART and distillation never see the whole config)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional, TypeVar

T = TypeVar("T")


def pick(cls: type[T], source: Any, **given: Any) -> T:
    """``cls`` with every field not ``given`` read from the attribute of the same name of ``source``."""
    return cls(**{f.name: given[f.name] if f.name in given else getattr(source, f.name)
                  for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class ModelSettings:
    """The model flags: depth, dropout, SAN answer heads, head layout, encoder freezing (model.build_model)."""
    num_hidden_layers: int
    bert_dropout_p: Optional[float]
    dropout_p: float
    head_layout: Optional[str]
    pooler_actf: Optional[str]
    answer_opt: int
    answer_num_turn: int
    answer_mem_drop_p: float
    answer_att_hidden_size: int
    answer_dropout_p: float
    update_bert_opt: int


@dataclass(frozen=True)
class WarmStartSettings:
    """Where a run's model comes from and how it is shaped (warm_start.start_model)."""
    init_checkpoint: str
    encoder_type: Optional[int]
    train_datasets: tuple[str, ...]
    allow_unused_weights: bool
    task_def: str
    model: ModelSettings


@dataclass(frozen=True)
class SmartSettings:
    """SMART's adversarial term (objectives.Smart)."""
    seed: int
    adv_k: int
    adv_step_size: float
    adv_noise_var: float
    adv_p_norm: str
    adv_norm_level: int
    adv_epsilon: float
    adv_alpha: float


@dataclass(frozen=True)
class DistillSettings:
    """Knowledge distillation from soft targets (objectives.Distillation)."""
    kd_alpha: float
    kd_loss: Optional[str]


@dataclass(frozen=True)
class ObjectiveSettings:
    """Which extra objective terms a run adds to the task loss, and their settings (objectives.build_objectives)."""
    adv_train: bool
    mkd_opt: int
    smart: SmartSettings
    distill: DistillSettings
