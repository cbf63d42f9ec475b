"""Loading an encoder, its config and its tokenizer from a registry name, a local folder or a hub id.

The registry itself (names, MT-DNN's ``--encoder_type`` ints, the embedded ``minilm-l6``) is
``pretrained_models.py``; this module adds what needs the project's JSON bounds (``data_utils.safe_load``): a
damaged ``config.json`` is one line naming it, and an encoder that cannot be loaded is one line saying why.
"""
from __future__ import annotations

import os
from typing import Optional

from data_utils.safe_load import read_json
from pretrained_models import WEIGHT_FILES, ENCODERS, check_encoder_type, check_supported, resolve


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
