"""study.py, the full-size study's combined report: hand-made finished final runs of both optimizer pairs in the
committed specs' layout; per-task and four-task-average paired t-tests at the best and the last epoch checked
against differences computed by hand, pending tasks kept out of the average, and the files written."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from experiments.sweep import final_specs, runner, study
from experiments.sweep.spec import load_spec
from experiments.sweep.stats import paired_ttest
from test_study_specs import CHOSEN, ROOT, SPECS, write_report

METRICS = {"rte": ("rte_dev", ["ACC"]), "mrpc": ("mrpc_dev", ["ACC", "F1"]),
           "stsb": ("stsb_dev", ["Pearson", "Spearman"]), "cola": ("cola_dev", ["MCC"])}
TASK_SHIFT = {"rte": 0.0, "mrpc": 10.0, "stsb": 20.0, "cola": -10.0}


def score(task: str, optimizer: str, seed: int, epoch: int) -> float:
    """Base: 60 + task shift + seed, epochs 0/1/2 end at -1/best/-2; SAGE: + (seed mod 3) - 0.5 at its best,
    and its last epoch 1 point under its best."""
    base = 60.0 + TASK_SHIFT[task] + seed
    if optimizer.startswith("us"):
        best = base + (seed % 3) - 0.5
        return {0: best - 3.0, 1: best, 2: best - 1.0}[epoch]
    return {0: base - 1.0, 1: base, 2: base - 2.0}[epoch]


def finish(spec_path: Path, skip: int = 0) -> None:
    """Finished run folders for every run of a final spec but the last ``skip``; a task's metrics all equal."""
    spec = load_spec(spec_path)
    runs = spec.runs()
    for run in runs[:len(runs) - skip]:
        folder = runner.run_dir(spec, run)
        folder.mkdir(parents=True, exist_ok=True)
        ds, names = METRICS[run.task]
        lines = []
        for epoch in range(3):
            value = score(run.task, run.optimizer, run.seed, epoch)
            lines.append(json.dumps({"epoch": epoch, "dev": {ds: {m: value for m in names}},
                                     "glue_average": value}))
        (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (folder / runner.DONE).write_text(json.dumps({"seconds": 1.0}), encoding="utf-8")


CHOSEN_W = {task: {"adamw": (1e-4, 0.75), "usadamw": (2.5e-4, 0.9)} for task in ("rte", "mrpc", "stsb", "cola")}


@pytest.fixture
def layout(tmp_path, monkeypatch):
    """Both committed selection specs, finished selection reports, and the final specs final_specs.py writes."""
    (tmp_path / "experiments" / "glue").mkdir(parents=True)
    shutil.copy(ROOT / "experiments" / "glue" / "glue_task_def.yml", tmp_path / "experiments" / "glue")
    monkeypatch.chdir(tmp_path)
    paths = []
    for fam, chosen in (("adamax", CHOSEN), ("adamw", CHOSEN_W)):
        path = Path(f"{fam}_select.yml")
        shutil.copy(SPECS[fam], path)
        write_report(path, chosen_settings=chosen)
        assert final_specs.main([str(path)]) == 0
        paths.append(path)
    return paths


def hand_diffs(task: str, epoch: str, seeds=(3, 4, 5, 6, 7)) -> list[float]:
    e = {"best": 1, "last": 2}[epoch]
    # the best epoch is epoch 1 for both optimizers; the last epoch is 2
    return [score(task, "us", s, e) - score(task, "base", s, e) for s in seeds]


def test_per_task_and_average_ttests_at_best_and_last_epoch(layout, capsys):
    for fam in ("adamax", "adamw"):
        for task in ("rte", "mrpc", "stsb", "cola"):
            finish(Path(f"docs/results/minilm_glue4_{fam}_final_{task}.yml"))
    assert study.main(["--select", str(layout[0]), "--select", str(layout[1])]) == 0
    pairs = [study.load_pair(p) for p in layout]
    for pair in pairs:
        assert pair.complete and not pair.pending and pair.average_seeds() == [3, 4, 5, 6, 7]
        for epoch in ("best", "last"):
            for task in ("rte", "mrpc", "stsb", "cola"):
                d = hand_diffs(task, epoch)
                want = paired_ttest([0.0] * 5, d)
                got = pair.tests[epoch][task]
                assert (got.n, got.mean_diff, got.t, got.p) == pytest.approx((5, want.mean_diff, want.t, want.p))
            # GLUE-style average per seed: mean over tasks of the task score; its difference is the mean of
            # the four differences, which are equal across tasks here (the shifts cancel)
            d = [sum(x) / 4 for x in zip(*(hand_diffs(t, epoch) for t in ("rte", "mrpc", "stsb", "cola")))]
            want = paired_ttest([0.0] * 5, d)
            assert pair.tests[epoch]["average"].p == pytest.approx(want.p)
            assert study.differences(pair, "average", epoch) == pytest.approx(d)
    # by hand: best-epoch differences (seed mod 3) - 0.5 for seeds 3..7 = -0.5, 0.5, 1.5, -0.5, 0.5 -> mean 0.3;
    # last epoch: SAGE 1 under its best, Adamax 2 under -> +1 more each: mean 1.3
    assert pairs[0].tests["best"]["rte"].mean_diff == pytest.approx(0.3)
    assert pairs[0].tests["last"]["rte"].mean_diff == pytest.approx(1.3)
    md = Path("docs/results/minilm_glue4_study.md").read_text(encoding="utf-8")
    assert "| RTE | lr 0.0003 | lr 0.0005, β3 0.9 |" in md  # the settings chosen on dev
    # MRPC cell: both metrics' means over seeds 3..7 (70 + 10 + mean seed 5 = 75), ± std of the task score
    assert "| MRPC (Acc/F1) | 5 | 75.0/75.0 ± 1.6 |" in md
    assert "| **Avg** | 5 | 70.0 ± 1.6 |" in md  # 60 + mean shift 5 + mean seed 5 = 70
    assert "+0.3 (p = " in md and "+1.3 (p = " in md and "Pending" not in md
    saved = json.loads(Path("docs/results/minilm_glue4_study.json").read_text(encoding="utf-8"))
    assert saved["pairs"][1]["candidate"] == "usadamw"
    assert saved["pairs"][0]["differences"]["last"]["rte"] == pytest.approx(hand_diffs("rte", "last"))
    assert Path("docs/results/minilm_glue4_study.png").read_bytes()[:4] == b"\x89PNG"
    assert "written: " in capsys.readouterr().out


def test_unfinished_tasks_are_pending_and_out_of_the_average(layout, capsys):
    assert study.main(["--select", str(layout[0])]) == 2
    assert capsys.readouterr().err.startswith("study.py: error: no task has all its final runs finished yet "
                                              "(minilm_glue4_adamax: RTE (0 of 10 final runs finished); MRPC")
    finish(Path("docs/results/minilm_glue4_adamax_final_rte.yml"))
    finish(Path("docs/results/minilm_glue4_adamax_final_mrpc.yml"), skip=3)
    Path("docs/results/minilm_glue4_adamax_final_cola.yml").unlink()
    assert study.main(["--select", str(layout[0])]) == 0
    pair = study.load_pair(layout[0])
    assert pair.finished == ["rte"] and "average" not in pair.tests["best"]
    assert pair.pending == {"mrpc": "7 of 10 final runs finished", "stsb": "0 of 10 final runs finished",
                            "cola": "no final spec yet (minilm_glue4_adamax_final_cola.yml)"}
    md = Path("docs/results/minilm_glue4_study.md").read_text(encoding="utf-8")
    assert "**Avg**" not in md and "Pending: MRPC (7 of 10 final runs finished); STS-B" in md
    assert "The average over tasks waits for every task." in md
