"""Per-token hidden states of chosen encoder layers for a text file, in MT-DNN's ``extractor.py`` format.

Input: one example per line; ``premise|||hypothesis`` is a pair, and as in MT-DNN a file with any line that is not
a pair is read as single sentences (each line's text up to its first ``|||``). Examples are tokenized as MT-DNN's
extractor tokenizes them (special tokens added, truncated to ``max_seq_length``). Layer ``i`` is the output of the
encoder's transformer layer ``i`` counted from 0 (the list MT-DNN's extractor indexes; negative ``i`` counts from
the last layer), i.e. Hugging Face's ``hidden_states[i + 1]``. Output: one JSON line per example, in file order,
``{"<layer>": "<str of the [tokens x hidden] list>", ..., "uid": "<line index>"}``, as MT-DNN writes it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import torch

from module import encoders
from mt_dnn import upstream_checkpoint as upstream

SEPARATOR = "|||"


def read_examples(path: Path) -> tuple[list[tuple[str, Optional[str]]], bool]:
    """(each line's (premise, hypothesis or None), whether the file is read as single sentences)."""
    try:
        with open(path, encoding="utf8") as handle:
            blocks = [line.strip().split(SEPARATOR) for line in handle]
    except FileNotFoundError:
        raise FileNotFoundError(f"--finput {path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"--finput {path}: not UTF-8 text (byte {exc.start})") from None
    single = any(len(b) != 2 for b in blocks)
    return [(b[0], None if single else b[1]) for b in blocks], single


def tokenize(tokenizer, examples: Sequence[tuple[str, Optional[str]]], max_len: int) -> list[tuple[list, list]]:
    """(token ids, type ids) per example."""
    out = []
    for premise, hypothesis in examples:
        enc = tokenizer(premise, hypothesis, add_special_tokens=True, max_length=max_len, truncation=True,
                        padding=False)
        ids = enc["input_ids"]
        out.append((ids, enc.get("token_type_ids") or [0] * len(ids)))
    return out


def layer_indices(text: str, n_layers: int) -> list[int]:
    """``--layers`` ("10,11") as given, each checked to name one of ``n_layers`` layers."""
    try:
        layers = [int(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"--layers {text}: expected comma-separated layer numbers, e.g. 10,11") from None
    for layer in layers:
        if not -n_layers <= layer < n_layers:
            raise ValueError(f"--layers {text}: the encoder has {n_layers} layers (0..{n_layers - 1}, or "
                             f"{-n_layers}..-1 from the last)")
    return layers


# ---------------------------------------------------------------------------------------------- the encoder
def encoder_from_pt(path: Path, encoder_type: Optional[int]):
    """The encoder (``bert.*``) of an MT-DNN / SAGE-repository ``.pt`` checkpoint."""
    from mt_dnn.warm_start import read_mtdnn
    src = read_mtdnn(path, encoder_type, {}, ())
    encoder = encoders.load_encoder(str(path), config=src.encoder_config)
    own = {k[len("encoder."):]: v for k, v in src.weights.items() if k.startswith("encoder.")}
    result = encoder.load_state_dict(own, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith(upstream.REBUILT_BUFFERS)
               and not k.startswith("pooler.")]  # the pooler does not change the hidden states
    if missing or result.unexpected_keys:
        raise ValueError(f"--checkpoint {path}: its encoder does not match its config (missing {missing[:3]}, "
                         f"extra {result.unexpected_keys[:3]})")
    return encoder


def load(checkpoint: str, encoder_type: Optional[int]) -> tuple[object, str]:
    """(encoder, the tokenizer it was trained with, by name: None for a .pt) for a checkpoint folder of this
    project, an MT-DNN ``.pt`` or an encoder (registry name, local folder)."""
    from mt_dnn.warm_start import checkpoint_kind
    kind = checkpoint_kind(checkpoint)
    if kind == "mtdnn":
        return encoder_from_pt(Path(checkpoint), encoder_type), None
    if kind == "run":
        from mt_dnn.restore import restore
        restored = restore(Path(checkpoint))
        return restored.model.encoder, restored.cfg.init_checkpoint
    return encoders.load_encoder(checkpoint, encoder_type), checkpoint


@torch.no_grad()
def hidden_states(encoder, encoded: Sequence[tuple[list, list]], layers: Sequence[int], batch_size: int,
                  device: torch.device, pad_id: int) -> list[dict[int, list]]:
    """Per example, layer -> its [tokens x hidden] output as nested lists (MT-DNN's ``str`` of them follows)."""
    encoder.eval().to(device)
    out = []
    for start in range(0, len(encoded), batch_size):
        batch = encoded[start:start + batch_size]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        types = torch.zeros_like(ids)
        mask = torch.zeros_like(ids)
        for row, (tok, typ) in enumerate(batch):
            ids[row, :len(tok)], types[row, :len(typ)], mask[row, :len(tok)] = (
                torch.tensor(tok), torch.tensor(typ), 1)
        states = encoder(input_ids=ids.to(device), token_type_ids=types.to(device), attention_mask=mask.to(device),
                         output_hidden_states=True).hidden_states[1:]
        chosen = {layer: states[layer].float().cpu().numpy() for layer in layers}
        for row, (tok, _) in enumerate(batch):
            out.append({layer: chosen[layer][row][:len(tok)].tolist() for layer in layers})
    return out


def format_line(uid: str, features: dict[int, list]) -> str:
    """One output line, as MT-DNN's extractor writes it."""
    row: dict = {layer: str(values) for layer, values in features.items()}
    row["uid"] = uid
    return json.dumps(row)
