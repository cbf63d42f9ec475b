"""Precision per GPU (mt_dnn/precision.py) with a faked device capability: --bf16 refused where bfloat16 is
emulated (V100, T4), TF32 matmuls on by default from Ampere on, --no_tf32 recorded in the config; the rule
agrees with docker/gpu_check.py's advice."""
from __future__ import annotations

import json
import sys

import pytest
import torch

from conftest import ROOT
from mt_dnn import precision
from mt_dnn.config import TrainConfig, parse_args

sys.path.insert(0, str(ROOT / "docker"))
import gpu_check  # noqa: E402

GPUS = {(7, 0): "Tesla V100-SXM2-16GB", (7, 5): "Tesla T4", (8, 0): "NVIDIA A100-SXM4-80GB",
        (8, 6): "NVIDIA A10", (9, 0): "NVIDIA H100 80GB HBM3"}
CUDA0 = torch.device("cuda", 0)


@pytest.fixture()
def gpu(monkeypatch):
    """Pretend GPU 0 has the capability the test sets; matmul precision restored afterwards."""
    current = {"capability": (8, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: current["capability"])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: GPUS[current["capability"]])
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    before = torch.backends.cuda.matmul.fp32_precision
    yield current
    torch.backends.cuda.matmul.fp32_precision = before


@pytest.mark.parametrize("capability", [(7, 0), (7, 5)])
def test_bf16_is_refused_where_it_is_emulated_naming_fp16(gpu, capability):
    gpu["capability"] = capability
    with pytest.raises(ValueError) as err:
        precision.check_bf16(CUDA0, True)
    assert str(err.value) == (f"--bf16: GPU 0 ({GPUS[capability]}, sm_{capability[0]}{capability[1]}) has no "
                              "bfloat16 units (bfloat16 would be emulated, several times slower); use --fp16 "
                              "(float16 autocast with a GradScaler) or fp32 (no flag)")
    precision.check_bf16(CUDA0, False)  # fp32 and --fp16 runs are fine there


@pytest.mark.parametrize("capability", [(8, 0), (8, 6), (9, 0)])
def test_bf16_is_accepted_from_ampere_on_and_on_cpu(gpu, capability):
    gpu["capability"] = capability
    precision.check_bf16(CUDA0, True)
    precision.check_bf16(torch.device("cpu"), True)


@pytest.mark.parametrize("capability", list(GPUS))
def test_the_rule_agrees_with_the_images_gpu_check(capability):
    bf16_ok = capability >= precision.BF16_CAPABILITY
    assert gpu_check.precision_flag(capability) == ("--bf16" if bf16_ok else "--fp16")


def test_tf32_on_by_default_from_ampere_off_with_the_flag_and_below(gpu):
    gpu["capability"] = (8, 0)
    line = precision.apply_tf32(CUDA0, True)
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    assert line == "float32 matmuls use TF32 on GPU 0 (NVIDIA A100-SXM4-80GB, sm_80) (--no_tf32 turns this off)"
    assert precision.apply_tf32(CUDA0, False) == ("float32 matmuls in full float32 (--no_tf32) on GPU 0 "
                                                  "(NVIDIA A100-SXM4-80GB, sm_80)")
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"
    gpu["capability"] = (9, 0)
    precision.apply_tf32(CUDA0, True)
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    gpu["capability"] = (7, 0)
    assert precision.apply_tf32(CUDA0, True) == ("float32 matmuls in full float32: GPU 0 (Tesla V100-SXM2-16GB, "
                                                 "sm_70) has no TF32 tensor cores")
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"


def test_cpu_runs_leave_matmul_precision_alone(gpu):
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    assert precision.apply_tf32(torch.device("cpu"), True) is None
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"


def test_tf32_flag_defaults_on_and_is_recorded_in_the_config():
    assert TrainConfig(train_datasets=["rte"]).tf32 is True
    assert parse_args(["--train_datasets", "rte"]).tf32 is True
    off = parse_args(["--train_datasets", "rte", "--no_tf32"])
    assert off.tf32 is False and json.loads(off.to_json())["tf32"] is False


def test_train_py_refuses_bf16_on_a_v100_in_one_line(gpu, monkeypatch, tmp_path, capsys):
    """Before anything is built or written: exit 2, one line, no output folder."""
    import train as train_cli
    gpu["capability"] = (7, 0)
    monkeypatch.setattr("mt_dnn.trainer.pick_device", lambda name, env=None: CUDA0)
    out = tmp_path / "run"
    assert train_cli.main(["--train_datasets", "rte", "--bf16", "--output_dir", str(out), "--no_tensorboard"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert err == ["train.py: error: --bf16: GPU 0 (Tesla V100-SXM2-16GB, sm_70) has no bfloat16 units (bfloat16 "
                   "would be emulated, several times slower); use --fp16 (float16 autocast with a GradScaler) or "
                   "fp32 (no flag)"]
    assert not out.exists()


@pytest.mark.cuda
def test_tf32_follows_this_gpus_capability():
    before = torch.backends.cuda.matmul.fp32_precision
    try:
        device = torch.device("cuda", torch.cuda.current_device())
        line = precision.apply_tf32(device, True)
        capable = torch.cuda.get_device_capability(device) >= precision.TF32_CAPABILITY
        assert torch.backends.cuda.matmul.fp32_precision == ("tf32" if capable else "ieee")
        assert line.startswith("float32 matmuls use TF32" if capable else "float32 matmuls in full float32")
        if not capable:
            with pytest.raises(ValueError, match="--bf16: GPU .* has no bfloat16 units"):
                precision.check_bf16(device, True)
    finally:
        torch.backends.cuda.matmul.fp32_precision = before
