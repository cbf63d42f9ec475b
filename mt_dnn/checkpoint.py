"""Checkpoints: weights as safetensors, training state (optimizer, scheduler, RNG, sampler) as a weights-only
torch file, the config as JSON — written into a temp folder and renamed, so a kill never leaves a half checkpoint.

Layout of ``output_dir``: ``step-<N>/`` (for --resume; the newest named in ``latest``), ``best/`` (best dev score).
A file that cannot be read back (truncated, overwritten, foreign) raises :class:`CheckpointError`: one line that
names the file, so --resume can fall back to an older step checkpoint and predict.py can say what is wrong.
"""
from __future__ import annotations

import io
import random
import re
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_file, save_model

from data_utils.atomic import atomic_folder, atomic_write
from data_utils.safe_load import read_json
from mt_dnn import run_folder

WEIGHTS = "model.safetensors"
STATE = "training_state.pt"
CONFIG = "train_config.json"
LATEST = "latest"
ENCODER_CONFIG = "encoder_config.json"  # the encoder architecture, so predict.py needs no hub access
STATE_KEYS = ("optimizer", "scheduler", "scaler", "rng", "progress", "history")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read back, as one line starting with the file's path."""


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 100 else text[:97] + "..."


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


def set_rng_state(state: dict) -> Optional[str]:
    """Restore a :func:`rng_state`. Saved CUDA generators are restored for the GPUs visible now: all of them
    (exactly as saved) when the count is the same, else the first ones; the return value says in one line what
    was dropped or left unrestored (None when nothing was)."""
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(int(x) for x in state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    return _set_cuda_rng_states(list(state.get("cuda", [])))


def _set_cuda_rng_states(saved: list[torch.Tensor]) -> Optional[str]:
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not saved or not visible:
        return f"the checkpoint's CUDA RNG states of {_gpus(0, len(saved))} dropped (no GPU visible now)" \
            if saved else None
    if len(saved) == visible:
        torch.cuda.set_rng_state_all(saved)
        return None
    for index, generator_state in enumerate(saved[:visible]):
        torch.cuda.set_rng_state(generator_state, index)
    restored = min(len(saved), visible)
    what = f"dropped {_gpus(visible, len(saved))}" if len(saved) > visible else \
        f"{_gpus(len(saved), visible)} keep their seeded state"
    return (f"the checkpoint has CUDA RNG states for {len(saved)} GPU(s), {visible} visible now: restored "
            f"{_gpus(0, restored)}, {what}")


def _gpus(start: int, stop: int) -> str:
    return f"GPU {start}" if stop - start == 1 else f"GPUs {start}-{stop - 1}"


def save_checkpoint(folder: Path, model: torch.nn.Module | dict[str, torch.Tensor], config_json: str,
                    training_state: Optional[dict] = None, extra_files: Optional[dict[str, str]] = None) -> Path:
    """Write a complete checkpoint folder atomically (temp folder in the same parent, then rename).

    ``model`` is a module, or a full state dict (what FSDP gathers from its shards).
    """
    folder = Path(folder)
    with atomic_folder(folder, overwrite=True) as tmp:
        if isinstance(model, torch.nn.Module):
            save_model(model, str(tmp / WEIGHTS))
        else:
            save_file({k: v.contiguous() for k, v in model.items()}, str(tmp / WEIGHTS))
        (tmp / CONFIG).write_text(config_json, encoding="utf-8")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        if training_state is not None:
            torch.save(training_state, tmp / STATE)
    return folder


def mark_latest(output_dir: Path, folder: Path) -> None:
    """``latest`` only ever names a step-N folder inside ``output_dir``."""
    if Path(folder).parent != Path(output_dir) or not run_folder.STEP_NAME.match(Path(folder).name):
        raise ValueError(f"{folder}: not a step-N folder of {output_dir}")
    with atomic_write(Path(output_dir) / LATEST) as handle:
        handle.write(folder.name + "\n")


def numbered_folders(output_dir: Path, name: re.Pattern) -> list[Path]:
    """The folders of ``output_dir`` whose names match ``name`` (``run_folder.STEP_NAME``: step-N,
    ``run_folder.EPOCH_NAME``: epoch-N), highest N first."""
    found = [p for p in Path(output_dir).glob("*-*") if p.is_dir() and name.match(p.name)]
    return sorted(found, key=lambda p: int(p.name.rpartition("-")[2]), reverse=True)


def step_checkpoints(output_dir: Path) -> list[Path]:
    """The step-N folders, newest first."""
    return numbered_folders(output_dir, run_folder.STEP_NAME)


def resume_candidates(output_dir: Path) -> list[Path]:
    """Where --resume may start: the folder ``latest`` names (a step-N folder of this run, nothing else), then the
    other step folders, newest first."""
    name = run_folder.latest_name(output_dir)
    named = Path(output_dir) / name if name is not None else None
    rest = [p for p in step_checkpoints(output_dir) if p != named]
    return ([named] if named is not None else []) + rest


def prune_step_checkpoints(output_dir: Path, keep: int) -> None:
    """Remove all but the newest ``keep`` step-N folders, never the one ``latest`` names."""
    named, steps = run_folder.latest_name(output_dir), step_checkpoints(output_dir)
    others = [p for p in steps if p.name != named]
    for old in others[max(keep - (len(others) < len(steps)), 0):]:
        shutil.rmtree(old, ignore_errors=True)


def _weights_file(folder: Path) -> Path:
    path = Path(folder) / WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{path}: no model weights there")
    return path


def weight_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from the weights file's header (a truncated or foreign file fails here)."""
    path = _weights_file(folder)
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
    except Exception as exc:  # SafetensorError, OSError: a damaged or foreign file
        raise CheckpointError(f"{path}: not a readable safetensors file ({_reason(exc)})") from None


def check_weights_fit(model: torch.nn.Module, folder: Path) -> None:
    """Refuse saved tensors whose shapes differ from the model's, naming the first one (a head whose task now
    has another number of classes is the usual cause)."""
    path, saved = _weights_file(folder), weight_shapes(folder)
    for key, value in model.state_dict().items():
        if key in saved and tuple(value.shape) != saved[key]:
            hint = ""
            if key.startswith("heads."):
                hint = (f"; task '{key.split('.')[1]}' has a different number of classes (n_class/labels) in the "
                        "task definition than when this checkpoint was trained")
            raise ValueError(f"{path}: {key} has shape {list(saved[key])} there but {list(value.shape)} in "
                             f"this model{hint}")


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The weights file as a CPU state dict."""
    path = _weights_file(folder)
    weight_shapes(folder)
    try:
        return load_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({_reason(exc)})") from None


def load_weights(model: torch.nn.Module, folder: Path) -> None:
    check_weights_fit(model, folder)
    path = _weights_file(folder)
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except Exception as exc:  # the header was fine but the data is not
        raise CheckpointError(f"{path}: not a readable safetensors file ({_reason(exc)})") from None
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not fit the model (missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]})")
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path}: non-finite values in {bad[:3]}")


def load_training_state(folder: Path) -> dict:
    path = Path(folder) / STATE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # a truncated zip, random bytes, a pickle this project did not write: all one line
        raise CheckpointError(f"{path}: not a readable training state ({type(exc).__name__}: "
                              f"{_reason(exc)})") from None
    missing = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a training state written by train.py (no {', '.join(missing)})")
    return state


def read_config_json(folder: Path) -> dict:
    """The run's saved config as a plain dict (compared field by field on --resume)."""
    path = Path(folder) / CONFIG
    try:
        raw = read_json(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except ValueError as exc:  # not UTF-8, not JSON, nested too deeply: the message names the file
        raise CheckpointError(str(exc)) from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    return raw
