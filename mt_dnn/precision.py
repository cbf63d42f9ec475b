"""Which precision a device gets: float16 autocast on CUDA only, bfloat16 autocast only where the GPU has bfloat16
units, TF32 matmuls for float32 work where it has TF32 tensor cores (both from Ampere, compute capability 8.0).

Volta (V100, sm_70) and Turing (T4, sm_75) run bfloat16 through emulation, several times slower than float16 with
a GradScaler; ``torch.cuda.is_bf16_supported()`` may still say True there, so the capability decides (as
docker/gpu_check.py does). ``--bf16`` on such a GPU is refused in one line naming ``--fp16``. TF32 keeps float32
storage and range with a 10-bit mantissa in the matmuls' products; fp32 runs (the paper scripts) get it on
Ampere and newer unless ``--no_tf32``.
"""
from __future__ import annotations

from typing import Optional

import torch

FP16_DEVICE_TYPES = ("cuda",)  # float16 autocast on CPU has no fast kernels: a real encoder makes no progress
BF16_CAPABILITY = (8, 0)
TF32_CAPABILITY = (8, 0)


def _index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def describe(device: torch.device) -> str:
    """'GPU 0 (NVIDIA A100-SXM4-80GB, sm_80)'."""
    index = _index(device)
    major, minor = torch.cuda.get_device_capability(index)
    return f"GPU {index} ({torch.cuda.get_device_name(index)}, sm_{major}{minor})"


def check_fp16(device: torch.device, fp16: bool) -> None:
    if fp16 and device.type not in FP16_DEVICE_TYPES:
        raise ValueError(f"--fp16: float16 autocast is for CUDA; on {device.type} use --bf16 or fp32 (no flag)")


def autocast_dtype(fp16: bool, bf16: bool) -> Optional[torch.dtype]:
    return torch.float16 if fp16 else torch.bfloat16 if bf16 else None


def check_bf16(device: torch.device, bf16: bool) -> None:
    """Refuse --bf16 on a CUDA GPU without bfloat16 units."""
    if not bf16 or device.type != "cuda":
        return
    if tuple(torch.cuda.get_device_capability(_index(device))) < BF16_CAPABILITY:
        raise ValueError(f"--bf16: {describe(device)} has no bfloat16 units (bfloat16 would be emulated, several "
                         "times slower); use --fp16 (float16 autocast with a GradScaler) or fp32 (no flag)")


def apply_tf32(device: torch.device, tf32: bool) -> Optional[str]:
    """Set float32 matmuls on this CUDA device to TF32 (Ampere and newer, unless --no_tf32) or full float32;
    return the one line to log (None off CUDA, where nothing is changed)."""
    if device.type != "cuda":
        return None
    capable = tuple(torch.cuda.get_device_capability(_index(device))) >= TF32_CAPABILITY
    on = tf32 and capable
    torch.backends.cuda.matmul.fp32_precision = "tf32" if on else "ieee"
    if on:
        return f"float32 matmuls use TF32 on {describe(device)} (--no_tf32 turns this off)"
    if tf32:
        return f"float32 matmuls in full float32: {describe(device)} has no TF32 tensor cores"
    return f"float32 matmuls in full float32 (--no_tf32) on {describe(device)}"
