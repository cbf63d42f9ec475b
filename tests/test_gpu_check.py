"""bench/gpu_check.py, the first GPU run's one command: its CPU rehearsal (--smoke) runs every section and writes
one results file; a failed check is a row, not the end of the run; the float64 comparison catches a step of the
wrong size; host syncs are counted and placed."""
from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest
import torch

from bench import gpu_check_core as gpu_check
from bench import gpu_check_sections as sections
from bench.host_syncs import SyncCounter
from conftest import ROOT


def _cli():
    """bench/gpu_check.py itself (docker/gpu_check.py, the image's check, is another module)."""
    return importlib.import_module("bench.gpu_check")


@pytest.mark.subprocess
def test_smoke_mode_runs_every_section_on_cpu_and_writes_one_results_file(tmp_path):
    out = tmp_path / "results.json"
    # time budgets are for a GPU; a loaded CPU must not skip the steps asserted below
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--smoke", "--budget_scale", "100",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["smoke"] is True and data["failed"] == []
    assert [s["id"] for s in data["sections"]] == list("abcde")
    steps = {(s["id"], st["name"]): st for s in data["sections"] for st in s["steps"]}
    assert all(st["status"] in ("ok", "skipped") for st in steps.values())
    ran = {key for key, st in steps.items() if st["status"] == "ok"}
    assert {sid for sid, _ in ran} == set("abcde")  # every section exercised something on the CPU
    assert steps[("a", "CUDA-only tests (pytest -m cuda)")]["reason"].startswith("needs CUDA")
    assert steps[("c", "eager training, fp16")]["reason"] == "needs CUDA (float16 autocast is for CUDA)"
    assert steps[("a", "usadamw float32 params vs float64, BERT-base shapes")]["values"]["max_error_over_update"] < 1e-3
    smart = steps[("e", "host syncs per micro-batch, plain and SMART")]["values"]
    assert smart["smart_objective_own_syncs"] == 0
    compiled = steps[("e", "BERT-base --compile: time and memory per bucket vs eager")]["values"]
    assert sorted(compiled["per_bucket"]) == ["4x32", "4x64"] and compiled["compiled/eager"] > 0
    table = proc.stdout
    assert table.startswith("| section | step | status | seconds | results |") and f"results: {out}" in table


def _check(tmp_path, smoke=True) -> gpu_check.Check:
    return gpu_check.Check(torch.device("cpu"), smoke, tmp_path)


def test_a_failing_step_is_a_row_and_the_run_goes_on(tmp_path):
    check = _check(tmp_path)
    with check.section("d"):
        def broken():
            raise RuntimeError("kernel exploded\nsecond line")

        def cuda_only():
            check.needs_cuda("a CUDA graph")
        check.step("broken", broken)
        check.step("cuda only", cuda_only)
        check.step("fine", lambda: {"ms": 1.5})
        check.step("too long", lambda: {}, need_s=1e9)
    steps = check.sections[0].steps
    assert [(s.status, s.reason) for s in steps[:3]] == [("failed", "RuntimeError: kernel exploded"),
                                                         ("skipped", "needs CUDA (a CUDA graph)"), ("ok", "")]
    assert steps[2].values == {"ms": 1.5}
    assert steps[3].status == "skipped" and steps[3].reason.startswith("time budget (")
    data = gpu_check.results(check, "now")
    assert data["failed"] == ["d: broken"]
    assert "| d | broken | failed: RuntimeError: kernel exploded |" in gpu_check.table(check)


def test_the_float64_comparison_catches_a_step_of_the_wrong_size(tmp_path, monkeypatch):
    """A fused step six times too large (what float16 state did before it was kept in float32) fails the row."""
    check = _check(tmp_path)
    shapes = sections._bert_shapes(check)[:6]
    with check.section("a"):
        good = sections._step_against_float64(check, shapes, torch.float32, "usadamw")
        import module.bert_optim as bert_optim
        real = bert_optim.build_optimizer

        def six_times(name, params, **kw):
            if kw.get("fused"):
                kw["lr"] *= 6
            return real(name, params, **kw)
        bad = sections._step_against_float64(check, shapes, torch.float32, "usadamw", build=six_times)
    assert "_failed" not in good and good["max_error_over_update"] < 1e-3
    assert bad["_failed"] and bad["max_error_over_update"] > 1 and "of the update > 0.001" in bad["_reason"]


def test_cli_wants_a_gpu_unless_smoke(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    cli = _cli()
    with pytest.raises(SystemExit) as exit_info:
        cli.parse([])
    assert exit_info.value.code == 2
    assert "no CUDA device: this check is for a GPU; --smoke runs its CPU rehearsal" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.parse(["--smoke", "--sections", "az"])
    assert "--sections: unknown section(s) z; choose from abcde" in capsys.readouterr().err
    assert cli.parse(["--smoke"]).device == torch.device("cpu")


def test_host_reads_are_counted_and_placed():
    with SyncCounter("cpu") as syncs:
        value = sections._failed_if(torch.ones(3).sum().item() > 5, "x", {})
        torch.zeros(2).nonzero()
    assert value == {} and syncs.count == 2
    assert set(syncs.sites) == {"outside this project"}  # this test file is not project code
    assert syncs.summary(per=2)["per_step"] == 1.0
