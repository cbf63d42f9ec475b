"""The fused dispatcher's self-check (module/sage/dispatch.py): one verdict for every rank, and the public entry
points that list and probe the kernel variants.

The rank test starts 2 gloo ranks under torchrun, as users do (see tests/test_distributed.py); one rank is made
to see a faulty C kernel, and both must then refuse it. The C kernel stands in for the Triton one: the verdict
logic is the same for both.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from module.sage import dispatch

RANKS_SCRIPT = """
import json, sys, warnings
from types import SimpleNamespace
import torch
import torch.distributed as dist
from module.sage import cpu_kernel, dispatch
from module.sage.functional import ALGORITHMS

dist.init_process_group("gloo")
rank, faulty_rank, out_dir = dist.get_rank(), int(sys.argv[1]), sys.argv[2]


def skewed(algorithm, params, grads, states, ipt_avgs, scalars, hyper, grad_factor=None):
    cpu_kernel.fused_step(algorithm, params, grads, states, ipt_avgs, scalars, hyper, grad_factor)
    torch._foreach_mul_(states[0], 1.001)  # a kernel that is subtly wrong, on this rank only


kernel = SimpleNamespace(KERNEL=cpu_kernel.KERNEL, ALGORITHMS=cpu_kernel.ALGORITHMS,
                         fused_step=skewed if rank == faulty_rank else cpu_kernel.fused_step)
p = torch.zeros(4, dtype=torch.float64)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    adamw = dispatch.kernel_verified(kernel, ALGORITHMS["adamw"], p, p,
                                       *dispatch.KernelVariant("adamw", torch.float64, formula="paper").arguments())
    adamax = dispatch.kernel_verified(cpu_kernel, ALGORITHMS["adamax"], p, p,
                                        *dispatch.KernelVariant("adamax", torch.float64).arguments())
with open(f"{out_dir}/rank{rank}.json", "w", encoding="utf-8") as out:  # one file per rank: no interleaving
    json.dump({"rank": rank, "adamw": adamw, "adamax": adamax,
               "warnings": [str(w.message) for w in caught if "self-check" in str(w.message)]}, out)
dist.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.subprocess
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available in this build")
def test_a_kernel_failing_on_one_rank_is_refused_on_every_rank(tmp_path):
    """Rank 1 sees a wrong kernel, rank 0 a correct one: both fall back (an all-reduce of the verdict), and each
    says why in one warning; a variant that passes everywhere is used everywhere."""
    script = tmp_path / "ranks.py"
    script.write_text(RANKS_SCRIPT, encoding="utf-8")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                           "127.0.0.1", "--master_port", str(_free_port()), str(script), "1", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = {r["rank"]: r for r in (json.loads((tmp_path / f"rank{i}.json").read_text(encoding="utf-8"))
                                    for i in (0, 1))}
    assert sorted(ranks) == [0, 1]
    assert [ranks[r]["adamw"] for r in (0, 1)] == [False, False]
    assert [ranks[r]["adamax"] for r in (0, 1)] == [True, True]
    (healthy_rank,), (faulty_rank,) = ranks[0]["warnings"], ranks[1]["warnings"]
    assert "failed its self-check on another rank (it passed on this one)" in healthy_rank
    assert "(column 2 differs from foreach" in faulty_rank
    assert all("using the foreach implementation instead" in w for w in (healthy_rank, faulty_rank))


def test_without_a_process_group_the_verdict_is_the_local_one():
    assert not torch.distributed.is_initialized()
    assert dispatch._agreed(True, torch.device("cpu")) and not dispatch._agreed(False, torch.device("cpu"))


def test_kernel_variants_list_every_flavour_a_step_can_take():
    """Per dtype: Adamax, AdamW, Adam each (plain + 7 SAGE formulas) × decay = 16; SGD 16 × (no momentum,
    momentum, Nesterov) × first step = 96. The variants' arguments give the self-check's key."""
    variants = dispatch.kernel_variants()
    assert len(variants) == 4 * (3 * 16 + 96) and len(set(variants)) == len(variants)
    nesterov = dispatch.KernelVariant("sgd", torch.float16, formula="ablation4", momentum=True, nesterov=True,
                                        first_step=True)
    assert nesterov in variants
    scalars, hyper = nesterov.arguments()
    assert scalars["first_step"] and hyper == dict(beta3=0.75, eps=1e-6, weight_decay=0.0, formula="ablation4",
                                                   sage=True, momentum=0.9, dampening=0.0, nesterov=True)
    assert len(dispatch.kernel_variants(dtypes=[torch.float32], algorithms=["adamw"], formulas=["paper"])) == 4


def test_check_variants_returns_each_verdict_on_this_device():
    """On CPU the C kernel takes float32/float64; half precision has no hand-written CPU kernel, and says so."""
    V = dispatch.KernelVariant
    variants = [V("adamw", torch.float64, formula="paper", decay=True), V("sgd", torch.float32, momentum=True),
                V("adamax", torch.bfloat16)]
    before = dict(dispatch._VERIFIED)
    verdicts = dispatch.check_variants("cpu", variants)
    assert verdicts == [(variants[0], None), (variants[1], None),
                        (variants[2], "no hand-written kernel takes torch.bfloat16 on cpu")]
    assert dispatch._VERIFIED == before  # a diagnostic: the step's own verdicts are left as they were
