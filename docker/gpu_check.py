#!/usr/bin/env python3
"""Which GPU kernels this torch build carries, whether they run on the visible GPUs, and which precision to use.

The image runs it twice. At build time ``--require-arch sm_70`` fails the build if a base-image bump loses the
Volta (V100) kernels: CUDA 12.8+/13 builds of torch no longer ship them. As the container's default command it
prints one line per visible GPU with the ``train.py`` precision flag for it: ``--bf16`` from Ampere (sm_80) on,
``--fp16`` (autocast + GradScaler) on Volta and Turing, which have no bfloat16 units -- there
``torch.cuda.is_bf16_supported()`` may still say True because bf16 is emulated, slowly, so it is not asked.
"""
from __future__ import annotations

import argparse
import re
import sys
from typing import Sequence

_ARCH = re.compile(r"^(sm|compute)_(\d+)(\d)[a-z]?$")


def parse_arch(arch: str) -> tuple[str, tuple[int, int]]:
    """'sm_70' -> ('sm', (7, 0)); 'compute_120' -> ('compute', (12, 0)); 'sm_90a' -> ('sm', (9, 0))."""
    match = _ARCH.match(arch)
    if match is None:
        raise ValueError(f"not a CUDA architecture name: {arch!r} (expected e.g. sm_70 or compute_90)")
    kind, major, minor = match.groups()
    return kind, (int(major), int(minor))


def runs_on(archs: Sequence[str], capability: tuple[int, int]) -> bool:
    """True if a GPU of this compute capability can run the build: a cubin sm_XY runs on major X with minor >= Y;
    PTX (compute_XY) is JIT-compiled by the driver for any GPU at or above XY."""
    for arch in archs:
        kind, (major, minor) = parse_arch(arch)
        if kind == "sm" and major == capability[0] and minor <= capability[1]:
            return True
        if kind == "compute" and (major, minor) <= tuple(capability):
            return True
    return False


def precision_flag(capability: tuple[int, int]) -> str:
    """The train.py flag for mixed precision on this GPU: bf16 needs Ampere (sm_80) or newer."""
    return "--bf16" if tuple(capability) >= (8, 0) else "--fp16"


def compiled_archs(torch) -> list[str]:
    """The architectures the CUDA build was compiled for. ``torch.cuda.get_arch_list()`` answers [] without a
    visible GPU, so read the build's own flags, which need no device (empty for CPU builds)."""
    flags = getattr(torch._C, "_cuda_getArchFlags", None)
    return (flags() or "").split() if flags is not None else []


def report(torch, required: Sequence[str]) -> int:
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda or 'none (CPU build)'}")
    if torch.version.cuda is None:
        if required:
            print(f"gpu_check.py: error: torch {torch.__version__} is a CPU build; it has no kernels for "
                  f"{', '.join(required)}", file=sys.stderr)
            return 1
        return 0
    archs = compiled_archs(torch)
    print(f"kernels compiled for: {' '.join(archs) or 'unknown'}")
    missing = [a for a in required if a not in archs]
    if missing:
        print(f"gpu_check.py: error: torch {torch.__version__} has no kernels for {', '.join(missing)} "
              f"(compiled for: {' '.join(archs) or 'unknown'})", file=sys.stderr)
        return 1
    if not torch.cuda.is_available():
        print("no GPU visible (docker run --gpus all ...)")
        return 0
    unusable = 0
    for i in range(torch.cuda.device_count()):
        cap = torch.cuda.get_device_capability(i)
        where = f"GPU {i}: {torch.cuda.get_device_name(i)} (sm_{cap[0]}{cap[1]})"
        if runs_on(archs, cap):
            print(f"{where}: kernels present; mixed precision: train.py {precision_flag(cap)}")
        else:
            unusable += 1
            print(f"{where}: this torch build has no kernels for it", file=sys.stderr)
    return 1 if unusable else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Report torch's GPU kernels, the visible GPUs and the precision "
                                                 "flag for each; fail if a required architecture is missing.")
    parser.add_argument("--require-arch", action="append", default=[], metavar="sm_XY",
                        help="fail unless the build carries kernels for it (repeatable; e.g. sm_70 for V100)")
    args = parser.parse_args(argv)
    for arch in args.require_arch:
        try:
            parse_arch(arch)
        except ValueError as exc:
            parser.error(f"--require-arch: {exc}")
    import torch
    return report(torch, args.require_arch)


if __name__ == "__main__":
    sys.exit(main())
