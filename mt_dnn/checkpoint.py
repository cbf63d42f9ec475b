"""Checkpoints: weights as safetensors, training state (optimizer, scheduler, RNG, sampler) as a weights-only
torch file, the config as JSON — written into a temp folder and renamed, so a kill never leaves a half checkpoint.

Layout of ``output_dir``: ``step-<N>/`` (for --resume; the newest named in ``latest``), ``best/`` (best dev score).
"""
from __future__ import annotations

import io
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from data_utils.atomic import atomic_write

WEIGHTS = "model.safetensors"
STATE = "training_state.pt"
CONFIG = "train_config.json"
LATEST = "latest"
ENCODER_CONFIG = "encoder_config.json"  # the encoder architecture, so predict.py needs no hub access


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "python_pos": random.getstate()[2], "numpy": torch.from_numpy(np.random.get_state()[1].copy()),
             "numpy_pos": int(np.random.get_state()[2])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def rng_state_bytes() -> bytes:
    """This process's RNG state, serialised for gathering across ranks (tensors do not travel as objects)."""
    buffer = io.BytesIO()
    torch.save(rng_state(), buffer)
    return buffer.getvalue()


def rng_state_from_bytes(blob: bytes) -> dict:
    return torch.load(io.BytesIO(blob), weights_only=True)


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(int(x) for x in state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(folder: Path, model: torch.nn.Module | dict[str, torch.Tensor], config_json: str,
                    training_state: Optional[dict] = None, extra_files: Optional[dict[str, str]] = None) -> Path:
    """Write a complete checkpoint folder atomically (temp folder in the same parent, then rename).

    ``model`` is a module, or a full state dict (what FSDP gathers from its shards).
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        if isinstance(model, torch.nn.Module):
            save_model(model, str(tmp / WEIGHTS))
        else:
            save_file({k: v.contiguous() for k, v in model.items()}, str(tmp / WEIGHTS))
        (tmp / CONFIG).write_text(config_json, encoding="utf-8")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        if training_state is not None:
            torch.save(training_state, tmp / STATE)
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def mark_latest(output_dir: Path, folder: Path) -> None:
    with atomic_write(Path(output_dir) / LATEST) as handle:
        handle.write(folder.name + "\n")


def latest_checkpoint(output_dir: Path) -> Optional[Path]:
    marker = Path(output_dir) / LATEST
    if not marker.is_file():
        return None
    folder = Path(output_dir) / marker.read_text(encoding="utf-8").strip()
    if not (folder / STATE).is_file():
        raise FileNotFoundError(f"{marker}: names {folder.name}, which has no {STATE}")
    return folder


def prune_step_checkpoints(output_dir: Path, keep: int) -> None:
    """Remove all but the newest ``keep`` step-N folders."""
    steps = sorted((p for p in Path(output_dir).glob("step-*") if p.is_dir()),
                   key=lambda p: int(p.name.split("-", 1)[1]))
    for old in steps[:-keep] if keep > 0 else steps:
        shutil.rmtree(old, ignore_errors=True)


def _weights_file(folder: Path) -> Path:
    path = Path(folder) / WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no model weights there")
    return path


def load_weights(model: torch.nn.Module, folder: Path) -> None:
    path = _weights_file(folder)
    missing, unexpected = load_model(model, str(path), strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not fit the model (missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]})")


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The weights file as a CPU state dict."""
    return load_file(str(_weights_file(folder)))


def load_training_state(folder: Path) -> dict:
    return torch.load(Path(folder) / STATE, weights_only=True, map_location="cpu")
