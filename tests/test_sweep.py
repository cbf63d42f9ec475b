"""Sweep spec, statistics and report without training: hand-computed t-tests and GLUE averages, every bad
spec's one-line error, the grid's runs and flags, CSV/JSON round trips and the heatmap PNG."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

import sweep as sweep_cli
from experiments.sweep import heatmap, report, stats
from experiments.sweep.results import RunResult, read_metrics
from experiments.sweep.spec import RunSpec, SpecError, parse_spec, train_argv

GOOD = """\
name: demo
runs_dir: /tmp/nowhere/runs
tasks: [rte, mrpc]
optimizers:
  adamax: {}
  usadamax:
    learning_rates: [3e-4]
    beta3: [0.6, 0.8]
learning_rates: [1.0e-4, 2.0e-4]
seeds: [1, 2, 3]
train_args:
  epochs: 2
  bf16: true
  tensorboard: false
  betas: [0.9, 0.98]
  max_train_samples: 100
"""


# ---------------------------------------------------------------- the spec


def test_grid_runs_and_flags():
    spec = parse_spec(GOOD, "good.yml")
    runs = spec.runs()
    # adamax: 2 lrs × 1 (β3 is no axis without SAGE); usadamax: 1 lr × 2 β3; times 2 tasks × 3 seeds
    assert len(runs) == (2 + 2) * 2 * 3
    assert len({r.run_id for r in runs}) == len(runs)
    assert runs[0] == RunSpec("rte", "adamax", 1e-4, 0.75, 1)
    assert [r.seed for r in runs[:8]] == [1] * 8  # seed by seed: a stopped sweep has whole seeds
    assert {(r.learning_rate, r.beta3) for r in runs if r.optimizer == "usadamax"} == {(3e-4, 0.6), (3e-4, 0.8)}
    assert spec.compare == ("adamax", "usadamax")
    assert spec.results_dir == Path("/tmp/nowhere/runs/results")
    run = RunSpec("mrpc", "usadamax", 3e-4, 0.6, 2)
    assert run.run_id == "mrpc/usadamax/lr0.0003_beta3-0.6_seed2"
    argv = train_argv(spec, run, Path("out"))
    assert argv == ["--epochs", "2", "--bf16", "--no_tensorboard", "--betas", "0.9", "0.98",
                    "--max_train_samples", "100", "--train_datasets", "mrpc", "--test_datasets", "mrpc",
                    "--optimizer", "usadamax", "--learning_rate", "0.0003", "--beta3", "0.6", "--seed", "2",
                    "--output_dir", "out"]


def test_train_argv_parses_with_the_real_train_py_config():
    from mt_dnn.config import parse_args
    spec = parse_spec(GOOD, "good.yml")
    cfg = parse_args(train_argv(spec, RunSpec("rte", "usadamax", 3e-4, 0.6, 3), Path("o")))
    assert (cfg.optimizer, cfg.learning_rate, cfg.beta3, cfg.seed) == ("usadamax", 3e-4, 0.6, 3)
    assert cfg.bf16 and not cfg.tensorboard and cfg.betas == (0.9, 0.98) and cfg.epochs == 2


def _bad(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new)


BAD_SPECS = [  # (edit of GOOD, expected message with the line of the field)
    (("name: demo\n", "name: demo\nsedes: [1]\n"), "bad.yml:2: field 'sedes': unknown field"),
    (("  adamax: {}", "  adamx: {}"), "bad.yml:5: field 'optimizers.adamx': unknown optimizer 'adamx'"),
    (("[3e-4]", "[fast]"), "bad.yml:7: field 'optimizers.usadamax.learning_rates': expected a number, got 'fast'"),
    (("[0.6, 0.8]", "[0.6, 1.5]"), "bad.yml:8: field 'optimizers.usadamax.beta3': item 2 (1.5) must be in [0.0, 1.0)"),
    (("seeds: [1, 2, 3]", "seeds: [1, 1.5]"), "bad.yml:10: field 'seeds': expected an integer, got 1.5"),
    (("seeds: [1, 2, 3]", "seeds: [1, 2, 1]"), "bad.yml:10: field 'seeds': repeated values in [1, 2, 1]"),
    (("  epochs: 2", "  seed: 2"), "bad.yml:12: field 'train_args.seed': set by the sweep grid for each run"),
    (("  epochs: 2", "  epoch: 2"), "bad.yml:12: field 'train_args.epoch': not a train.py setting"),
    (("  bf16: true", "  bf16: yes please"), "bad.yml:13: field 'train_args.bf16': expected true or false"),
    (("  epochs: 2", "  epochs: 0"), "bad.yml:12: field 'train_args.epochs': --epochs: must be >= 1"),
    (("betas: [0.9, 0.98]", "betas: [0.9]"), "bad.yml:15: field 'train_args.betas': expected two numbers"),
    (("tasks: [rte, mrpc]\n", ""), "bad.yml: field 'tasks': is required"),
    (("name: demo\n", "name: demo\ncompare: [adam, usadamax]\n"),
     "bad.yml:2: field 'compare': 'adam' is not one of the sweep's optimizers"),
    (("name: demo\n", "name: demo\nparallel: 0\n"), "bad.yml:2: field 'parallel': must be >= 1, got 0"),
    (("name: demo\n", "name: demo\ngpus_per_run: 0\n"), "bad.yml:2: field 'gpus_per_run': must be >= 1, got 0"),
    (("name: demo\n", "name: demo\ngpus_per_run: two\n"),
     "bad.yml:2: field 'gpus_per_run': expected a number, got 'two'"),
    (("    beta3: [0.6, 0.8]", "    beta3: [0.6, 0.8]\n  adam:\n    beta3: [0.5, 0.6]"),
     "bad.yml:10: field 'optimizers.adam.beta3': optimizer 'adam' does not use SAGE"),
    (("seeds: [1, 2, 3]", "seeds: [1, 2, 3"), "bad.yml:11: not valid YAML"),
    (("tasks: [rte, mrpc]", "tasks: [rte, mrcp]"),
     "bad.yml:3: field 'tasks': 'mrcp' is not a task of experiments/glue/glue_task_def.yml; known: "),
    (("learning_rates: [1.0e-4, 2.0e-4]\n", ""),
     "bad.yml: field 'learning_rates': is required (at the top level or under optimizer 'adamax')"),
]


@pytest.mark.parametrize("edit, message", BAD_SPECS, ids=[m.split("'")[1] if "'" in m else m for _, m in BAD_SPECS])
def test_bad_spec_one_line_error(edit, message):
    with pytest.raises(SpecError) as info:
        parse_spec(_bad(GOOD, *edit), "bad.yml")
    text = str(info.value)
    assert text.startswith(message), text
    assert "\n" not in text


def test_cli_bad_spec_exits_nonzero_with_one_line(tmp_path, capsys):
    path = tmp_path / "bad.yml"
    path.write_text(_bad(GOOD, "[3e-4]", "[fast]"), encoding="utf-8")
    for command in (["status"], ["run"], ["report"], ["heatmap", "--task", "rte", "--optimizer", "usadamax"]):
        assert sweep_cli.main(command + [str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"sweep.py: error: {path}:7: field 'optimizers.usadamax.learning_rates': "
                       "expected a number, got 'fast'")
    assert not (tmp_path / "nowhere").exists()
    assert sweep_cli.main(["status", str(tmp_path / "missing.yml")]) == 2
    assert capsys.readouterr().err.strip() == f"sweep.py: error: {tmp_path / 'missing.yml'}: no such spec file"


# ---------------------------------------------------------------- statistics, by hand


def test_paired_ttest_hand_computed_three_seeds():
    base, cand = [60.0, 62.0, 61.0], [61.0, 65.0, 62.5]
    d = [1.0, 3.0, 1.5]  # candidate − baseline
    mean = (1.0 + 3.0 + 1.5) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)
    t = mean / (sd / math.sqrt(3))
    p = 1 - t / math.sqrt(2 + t * t)  # Student t with 2 degrees of freedom: two-sided p in closed form
    result = stats.paired_ttest(base, cand)
    assert (result.n, result.mean_diff) == (3, pytest.approx(mean))
    assert result.t == pytest.approx(t) and result.p == pytest.approx(p)
    assert result.t == pytest.approx(3.0508511, rel=1e-6) and result.p == pytest.approx(0.09274, abs=1e-4)


def test_paired_ttest_two_seeds_and_degenerate_cases():
    result = stats.paired_ttest([1.0, 2.0], [2.0, 5.0])  # d = (1, 3): mean 2, sd √2, t = 2
    assert result.t == pytest.approx(2.0)
    assert result.p == pytest.approx(1 - 2 / math.pi * math.atan(2.0))  # 1 degree of freedom: Cauchy
    one = stats.paired_ttest([1.0], [2.0])
    assert one.n == 1 and one.mean_diff == 1.0 and math.isnan(one.p)
    same = stats.paired_ttest([1.0, 2.0], [2.0, 3.0])  # identical differences: no variance, scipy's limit
    assert same.t == math.inf and same.p == 0.0
    assert math.isnan(stats.paired_ttest([1.0, 2.0], [1.0, 2.0]).p)  # no difference at all: undefined
    with pytest.raises(ValueError, match="2 baseline values but 3 candidate values"):
        stats.paired_ttest([1.0, 2.0], [1.0, 2.0, 3.0])


def test_mean_std_is_the_sample_std():
    ms = stats.mean_std([70.0, 72.0, 77.0])
    assert ms.mean == pytest.approx(73.0) and ms.n == 3
    assert ms.std == pytest.approx(math.sqrt((9 + 1 + 16) / 2))
    assert math.isnan(stats.mean_std([5.0]).std)


# the paper's Table 2, BERT-base Adamax row: its Avg is 82.8
PAPER_ADAMAX = {"rte_dev": {"ACC": 69.2}, "mrpc_dev": {"ACC": 86.2, "F1": 90.4}, "cola_dev": {"MCC": 57.8},
                "sst_dev": {"ACC": 92.9}, "stsb_dev": {"Pearson": 89.7, "Spearman": 89.2},
                "qnli_dev": {"ACC": 91.2}, "qqp_dev": {"ACC": 90.9, "F1": 88.0},
                "mnli_matched_dev": {"ACC": 84.5}, "mnli_mismatched_dev": {"ACC": 84.4}}


def _result(task, opt, lr, b3, seed, metrics, last=None, epoch=1) -> RunResult:
    score = sum(v for m in metrics.values() for v in m.values()) / sum(len(m) for m in metrics.values())
    last_metrics = last or metrics
    last_score = sum(v for m in last_metrics.values() for v in m.values()) / sum(len(m) for m in last_metrics.values())
    return RunResult(RunSpec(task, opt, lr, b3, seed), Path(f"/runs/{task}/{opt}/{seed}"), 2, epoch, score, metrics,
                     last_score, last_metrics, 10.0)


def _paper_results(opt="adamax", shift=0.0):
    out = []
    for task in ("rte", "mrpc", "cola", "sst", "stsb", "qnli", "qqp", "mnli"):
        metrics = {ds: {m: v + shift for m, v in ms.items()} for ds, ms in PAPER_ADAMAX.items()
                   if ds.startswith(task + "_")}
        out.append(_result(task, opt, 1e-4, 0.75, 1, metrics))
    return out


def test_glue_average_of_the_papers_adamax_row():
    summaries = stats.summarize(_paper_results())
    best = stats.best_configs(summaries)
    tasks = ("rte", "mrpc", "cola", "sst", "stsb", "qnli", "qqp", "mnli")
    # by hand: average within a task (MRPC, STS-B, QQP, MNLI m/mm), then over the 8 tasks
    hand = (69.2 + (86.2 + 90.4) / 2 + 57.8 + 92.9 + (89.7 + 89.2) / 2 + 91.2 + (90.9 + 88.0) / 2
            + (84.5 + 84.4) / 2) / 8
    assert hand == pytest.approx(82.84375)
    assert stats.seed_averages(best, tasks, "adamax", [1]) == [pytest.approx(hand)]
    assert round(hand, 1) == 82.8  # the paper's number


def _two_optimizer_results():
    """3 seeds × 2 tasks; adamax at two lrs (2e-4 is better), usadamax at one. Scores chosen for hand math."""
    rte = {1: (60.0, 61.0), 2: (62.0, 65.0), 3: (61.0, 62.5)}  # seed -> (adamax, usadamax) RTE Acc
    out = []
    for seed, (a, u) in rte.items():
        out.append(_result("rte", "adamax", 1e-4, 0.75, seed, {"rte_dev": {"ACC": a - 5}}))
        out.append(_result("rte", "adamax", 2e-4, 0.75, seed, {"rte_dev": {"ACC": a}}, {"rte_dev": {"ACC": a - 1}}))
        out.append(_result("rte", "usadamax", 3e-4, 0.7, seed, {"rte_dev": {"ACC": u}}, epoch=0))
        out.append(_result("mrpc", "adamax", 2e-4, 0.75, seed, {"mrpc_dev": {"ACC": 80.0, "F1": 86.0 + seed}}))
        out.append(_result("mrpc", "usadamax", 3e-4, 0.7, seed, {"mrpc_dev": {"ACC": 81.0, "F1": 87.0 + seed}}))
    return out


def test_best_config_and_comparison_by_hand():
    summaries = stats.summarize(_two_optimizer_results())
    assert len(summaries) == 5
    best = stats.best_configs(summaries)
    assert best[("rte", "adamax")].learning_rate == 2e-4
    adamax = best[("rte", "adamax")]
    assert adamax.best.mean == pytest.approx(61.0) and adamax.last.mean == pytest.approx(60.0)
    assert adamax.best.std == pytest.approx(1.0)
    tests = stats.compare(best, ["rte", "mrpc"], "adamax", "usadamax")
    assert tests["rte"].t == pytest.approx(3.0508511, rel=1e-6)  # the same differences as the t-test above
    # MRPC: every seed gains (1 + 1) / 2 = 1 exactly -> no variance: t = inf, p = 0 (scipy's limit)
    assert tests["mrpc"].mean_diff == pytest.approx(1.0) and tests["mrpc"].p == 0.0
    # average over tasks per seed: differences (1 + 1)/2, (3 + 1)/2, (1.5 + 1)/2 = 1, 2, 1.25
    d = [1.0, 2.0, 1.25]
    mean = sum(d) / 3
    t = mean / (math.sqrt(sum((x - mean) ** 2 for x in d) / 2) / math.sqrt(3))
    assert tests["average"].mean_diff == pytest.approx(mean)
    assert tests["average"].t == pytest.approx(t)
    assert tests["average"].p == pytest.approx(1 - t / math.sqrt(2 + t * t))


def test_last_epoch_comparison_by_hand():
    best = stats.best_configs(stats.summarize(_two_optimizer_results()))
    tests = stats.compare(best, ["rte", "mrpc"], "adamax", "usadamax", epoch="last")
    # RTE last epoch: adamax (2e-4) ends 1 point under its best, usadamax at its best -> differences 2, 4, 2.5
    d_rte = [2.0, 4.0, 2.5]
    assert tests["rte"].mean_diff == pytest.approx(sum(d_rte) / 3)
    assert tests["rte"].p == pytest.approx(stats.paired_ttest([0, 0, 0], d_rte).p)
    assert tests["mrpc"].mean_diff == pytest.approx(1.0)  # last = best on MRPC
    d = [(x + 1.0) / 2 for x in d_rte]  # per seed: the mean of the two tasks' differences
    assert tests["average"].mean_diff == pytest.approx(sum(d) / 3)
    assert tests["average"].t == pytest.approx(stats.paired_ttest([0, 0, 0], d).t)
    assert best[("rte", "adamax")].by_seed("last") == {1: 59.0, 2: 61.0, 3: 60.0}
    with pytest.raises(ValueError, match="epoch: expected 'best' or 'last', got 'first'"):
        stats.compare(best, ["rte"], "adamax", "usadamax", epoch="first")


# ---------------------------------------------------------------- results, report, heatmap


def test_read_metrics_keeps_the_last_record_of_a_repeated_epoch(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rec = lambda e, s: json.dumps({"epoch": e, "step": 1, "dev": {"rte_dev": {"ACC": s}}, "glue_average": s})
    path.write_text("\n".join([rec(0, 50.0), rec(1, 52.0), rec(1, 55.0)]) + "\n", encoding="utf-8")
    assert [r["score"] for r in read_metrics(path)] == [50.0, 55.0]
    path.write_text(rec(0, 50.0) + "\n{\"epoch\": 1}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not an evaluation record"):
        read_metrics(path)


def _spec(tmp_path):
    text = GOOD.replace("/tmp/nowhere/runs", str(tmp_path / "runs")).replace(
        "learning_rates: [3e-4]\n    beta3: [0.6, 0.8]", "learning_rates: [3e-4]\n    beta3: [0.7]")
    return parse_spec(text + f"results_dir: {tmp_path / 'results'}\n", "t.yml")


def test_report_tables_and_files(tmp_path, monkeypatch):
    spec = _spec(tmp_path)
    results = _two_optimizer_results()
    monkeypatch.setattr(report, "collect", lambda s: results)
    out = report.write_report(spec)
    md = out.markdown
    assert "| optimizer | setting (chosen on dev) | seeds | RTE (Acc) | MRPC (Acc/F1) | Avg |" in md
    # adamax: RTE 61.0 ± 1.0; MRPC Acc 80.0 / F1 mean 88.0, task score std = std of (83.5, 84, 84.5) = 0.5
    # Avg = (61 + (80 + 88) / 2) / 2 = 72.5
    assert "| adamax | lr 0.0002 | 3 | 61.0 ± 1.0 | 80.0/88.0 ± 0.5 | 72.5 ± 0.7 |" in md
    assert "| usadamax − adamax | paired t-test over seeds | | +1.8 (p = 0.0927, n = 3) | +1.0 (p = 0, n = 3) |" in md
    assert f"{len(results)} of 18 runs finished" in md  # (2 + 1 configs) × 2 tasks × 3 seeds
    assert {p.name for p in out.paths} == {"demo.md", "demo_runs.csv", "demo_configs.csv", "demo.json"}
    rows = list(csv.DictReader((tmp_path / "results" / "demo_runs.csv").open(encoding="utf-8")))
    assert len(rows) == len(results)
    assert float(rows[1]["best_score"]) == 60.0 and float(rows[1]["last_rte_dev_ACC"]) == 59.0
    assert list(rows[0])[-1] == "run_dir" and rows[-1]["best_mrpc_dev_F1"] == "90.0"
    configs = list(csv.DictReader((tmp_path / "results" / "demo_configs.csv").open(encoding="utf-8")))
    assert [c["chosen"] for c in configs if c["task"] == "rte" and c["optimizer"] == "adamax"] == ["False", "True"]
    data = json.loads((tmp_path / "results" / "demo.json").read_text(), parse_constant=pytest.fail)
    assert data["ttests"]["mrpc"]["t"] == "inf" and data["ttests"]["mrpc"]["p"] == 0.0
    assert data["ttests"]["rte"]["n"] == 3
    assert data["configs"][0]["best"]["std"] == pytest.approx(1.0)
    assert not list((tmp_path / "results").glob(".*tmp"))


def test_heatmap_grid_and_png(tmp_path):
    results = [_result("mrpc", "usadamax", lr, b3, s, {"mrpc_dev": {"ACC": 70 + 100 * lr + b3 + s}})
               for lr in (1e-4, 3e-4) for b3 in (0.6, 0.8) for s in (1, 2) if (lr, b3) != (3e-4, 0.8)]
    lrs, betas, values, counts = heatmap.score_grid(stats.summarize(results), "mrpc", "usadamax")
    assert lrs == [1e-4, 3e-4] and betas == [0.6, 0.8]
    assert values[0, 1] == pytest.approx(70 + 0.01 + 0.8 + 1.5) and counts[0, 1] == 2
    assert math.isnan(values[1, 1]) and counts[1, 1] == 0
    out = heatmap.plot_heatmap(lrs, betas, values, counts, "test", tmp_path / "h.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    with pytest.raises(ValueError, match="no finished runs of task 'rte' with optimizer 'usadamax'"):
        heatmap.score_grid(stats.summarize(results), "rte", "usadamax")


def test_table_names_each_tasks_setting_when_they_differ_and_omits_std_of_one_seed(tmp_path):
    spec = _spec(tmp_path)
    results = [r for r in _two_optimizer_results() if r.run.seed == 1]
    results.append(_result("mrpc", "adamax", 5e-4, 0.75, 1, {"mrpc_dev": {"ACC": 90.0, "F1": 92.0}}))
    best = stats.best_configs(stats.summarize(results))
    table = report.paper_table(spec, best, stats.compare(best, spec.tasks, "adamax", "usadamax"))
    assert "| adamax | RTE lr 0.0002; MRPC lr 0.0005 | 1 | 60.0 | 90.0/92.0 | 75.5 |" in table
    assert "| usadamax | lr 0.0003, β3 0.7 | 1 | 61.0 | 81.0/88.0 | 72.8 |" in table
    assert "(p = n/a, n = 1)" in table  # Avg above: (61 + (81 + 88) / 2) / 2 = 72.75


def test_run_and_status_tasks_filter_only_those_tasks_runs(tmp_path, monkeypatch, capsys):
    from experiments.sweep import runner
    path = tmp_path / "good.yml"
    path.write_text(GOOD.replace("/tmp/nowhere/runs", str(tmp_path / "runs")), encoding="utf-8")
    ran = []
    monkeypatch.setattr(runner, "execute", lambda spec, run, version=None, devices=None: ran.append(run) or
                        runner.Outcome(run, runner.run_dir(spec, run), "failed", 0.0, 1))
    assert sweep_cli.main(["run", str(path), "--tasks", "mrpc"]) == 1  # every (fake) run failed: no report
    out = capsys.readouterr().out
    assert "12 runs (tasks mrpc of 24)" in out
    assert len(ran) == 12 and {r.task for r in ran} == {"mrpc"}
    assert sweep_cli.main(["status", str(path), "--tasks", "mrpc"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "12 new" and all("mrpc/" in line for line in lines[:-1])
    assert sweep_cli.main(["run", str(path), "--tasks", "rte,sst"]) == 2
    assert capsys.readouterr().err.strip() == (f"sweep.py: error: --tasks: sst is not a task of {path} (rte, mrpc)")
