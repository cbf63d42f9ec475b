#!/usr/bin/env python3
"""Whether Triton in this image can serve the fused optimizer step on every GPU generation the image targets.

The image builds without a GPU, and Triton does two things only at the first launch on one: it compiles the
kernel for the GPU's architecture (Triton IR -> PTX -> ptxas -> cubin) and it builds its launcher, a C module
that includes ``Python.h`` and CUDA's ``cuda.h``, with the image's C compiler. A base-image bump that drops
Volta from Triton's code generator, or Python headers from the image, would otherwise show up as the fused
step falling back to the slow path on the users' GPUs. This script does both ahead of time:

1. compiles a kernel shaped like the SAGE step (parameter addresses read from a table, masked vector loads of
   float32/float16 values, float32 math with sqrt and division, in-place stores) for each ``--require-arch``,
   through Triton's bundled ptxas, and checks the PTX targets that architecture;
2. compiles Triton's launcher source with the command Triton runs (``cc -O3 -shared -fPIC`` with the Python
   and CUDA include folders), leaving out only the link against the driver's ``libcuda``, which a GPU host
   brings at run time.

Exit 0 when all passes; otherwise one ``triton_check.py: error: ...`` line per failure and exit 1.

    python docker/triton_check.py --require-arch sm_70 --require-arch sm_80 --require-arch sm_90
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Optional, Sequence

_ARCH = re.compile(r"^sm_(\d+)[a-z]?$")
_TARGET = re.compile(r"\.target (\S+)")


def parse_arch(arch: str) -> int:
    """'sm_70' -> 70; 'sm_90a' -> 90."""
    match = _ARCH.match(arch)
    if match is None:
        raise ValueError(f"not a CUDA architecture name: {arch!r} (expected e.g. sm_70)")
    return int(match.group(1))


def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def sage_like(table, n_rows, lr, BLOCK: tl.constexpr, HALF: tl.constexpr):
        row = tl.program_id(0)
        p_addr = tl.load(table + row * 3)
        g_addr = tl.load(table + row * 3 + 1)
        numel = tl.load(table + row * 3 + 2)
        offs = tl.arange(0, BLOCK)
        mask = offs < numel
        kind = tl.float16 if HALF else tl.float32
        p_ptr = p_addr.to(tl.pointer_type(kind))
        g_ptr = g_addr.to(tl.pointer_type(kind))
        p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        update = g / (tl.sqrt(g * g + 1e-12) + 1e-6) * tl.abs(p * g)
        tl.store(p_ptr + offs, (p - lr * update).to(kind), mask=mask)
    return sage_like


def compile_for(arch: int, half: bool = False) -> str:
    """The kernel's PTX for sm_``arch`` (its cubin built too); raises what Triton raises on failure."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    source = ASTSource(fn=_kernel(), signature={"table": "*i64", "n_rows": "i32", "lr": "fp32",
                                                "BLOCK": "constexpr", "HALF": "constexpr"},
                       constexprs={"BLOCK": 1024, "HALF": half})
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32))
    if not compiled.asm.get("cubin"):
        raise RuntimeError("ptxas produced no cubin")
    return compiled.asm["ptx"]


def check_arch(arch: int) -> Optional[str]:
    """None if Triton compiles the kernel for sm_``arch`` (float32 and float16), else one line saying why."""
    for half in (False, True):
        try:
            ptx = compile_for(arch, half)
        except Exception as exc:  # Triton's errors are of many types; the first line says which
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return f"Triton cannot compile for sm_{arch} ({type(exc).__name__}: {first[:200]})"
        if f".target sm_{arch}" not in ptx:
            found = _TARGET.findall(ptx) or ["nothing"]
            return f"Triton's PTX for sm_{arch} targets {', '.join(found)}"
    return None


def find_compiler() -> Optional[str]:
    """The C compiler Triton would use: $CC, else cc, gcc or clang on PATH."""
    if os.environ.get("CC"):
        return shutil.which(os.environ["CC"]) or os.environ["CC"]
    return next((path for path in map(shutil.which, ("cc", "gcc", "clang")) if path), None)


def python_include() -> Path:
    scheme = sysconfig.get_default_scheme()
    return Path(sysconfig.get_paths(scheme="posix_prefix" if scheme == "posix_local" else scheme)["include"])


def launcher_source() -> Path:
    import triton
    return Path(triton.__file__).parent / "backends" / "nvidia" / "driver.c"


def check_launcher() -> Optional[str]:
    """None if Triton's launcher source compiles into a shared module here, else one line saying why."""
    include = python_include()
    if not (include / "Python.h").is_file():
        return (f"no Python.h in {include}: Triton cannot build its launcher (install the Python development "
                "headers in the image)")
    cc = find_compiler()
    if cc is None:
        return "no C compiler (cc, gcc, clang or $CC): Triton cannot build its launcher"
    source = launcher_source()
    if not source.is_file():
        return f"{source}: Triton's launcher source is missing"
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [cc, str(source), "-O3", "-shared", "-fPIC", "-Wno-psabi", "-o", str(Path(tmp) / "launcher.so"),
               f"-I{source.parent / 'include'}", f"-I{include}"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except OSError as exc:
            return f"{cc}: cannot run the C compiler ({exc.strerror or exc})"
        if proc.returncode != 0:
            first = next((line for line in proc.stderr.splitlines() if "error" in line), proc.stderr.strip()[:200])
            return f"Triton's launcher does not compile with {cc}: {first}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compile a SAGE-shaped Triton kernel for each required GPU "
                                                 "architecture and build Triton's launcher, without a GPU.")
    parser.add_argument("--require-arch", action="append", default=[], metavar="sm_XY",
                        help="an architecture Triton must compile for (repeatable; e.g. sm_70 for V100)")
    args = parser.parse_args(argv)
    try:
        archs = [parse_arch(a) for a in args.require_arch]
    except ValueError as exc:
        parser.error(f"--require-arch: {exc}")
    try:
        import triton
    except ImportError as exc:
        print(f"triton_check.py: error: Triton is not importable ({exc})", file=sys.stderr)
        return 1
    print(f"triton {triton.__version__}")
    problems = []
    for arch in archs:
        problem = check_arch(arch)
        print(f"sm_{arch}: {'compiles (float32, float16)' if problem is None else 'FAILED'}")
        problems.append(problem)
    launcher = check_launcher()
    print(f"launcher: {'builds (Python.h, cuda.h, ' + str(find_compiler()) + ')' if launcher is None else 'FAILED'}")
    problems.append(launcher)
    for problem in filter(None, problems):
        print(f"triton_check.py: error: {problem}", file=sys.stderr)
    return 1 if any(problems) else 0


if __name__ == "__main__":
    sys.exit(main())
