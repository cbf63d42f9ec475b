"""The result numbers in docs/ are the committed result files' numbers, to the digit shown.

Each test reads one table or paragraph of a guide and recomputes what it states from the JSON that backs it
(docs/results/*.json, docs/figures/*.json): means and sample standard deviations over seeds, paired t-tests
(scipy's ttest_rel, as the sweep reports), pruning drops, figure summaries. The study's own tables are checked
in tests/test_study_results.py. A hand edit of a number, or a result file replaced without its text, fails here.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RESULTS = DOCS / "results"
FIGURES = DOCS / "figures"
NAMES = {"adamax": "Adamax", "usadamax": "Adamax-SAGE"}


# ------------------------------------------------------------------------------------------------- helpers
def result(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text(encoding="utf-8"))


def section(path: Path, heading: str) -> str:
    """The text under the first heading line that starts with ``heading``, up to the next heading of its level or
    above."""
    lines = path.read_text(encoding="utf-8").splitlines()
    fenced, in_code = set(), False  # a "# comment" inside a code block is no heading
    for i, line in enumerate(lines):
        if line.startswith("```"):
            in_code = not in_code
        if in_code:
            fenced.add(i)
    start = next(i for i, line in enumerate(lines) if line.startswith(heading) and i not in fenced)
    level = len(heading) - len(heading.lstrip("#"))
    end = next((i for i in range(start + 1, len(lines)) if i not in fenced and lines[i].startswith("#")
                and len(lines[i]) - len(lines[i].lstrip("#")) <= level), len(lines))
    return "\n".join(lines[start + 1:end])


def table_rows(text: str) -> list[list[list[str]]]:
    """Every markdown table in ``text`` as its rows of cells, header and rule left out."""
    found, rows, header = [], None, False
    for line in text.splitlines() + [""]:
        if not line.startswith("|"):
            if rows is not None:
                found.append(rows)
            rows, header = None, False
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        if rows is None:
            rows, header = [], True
        elif header and set(cells[0]) <= set("-:"):
            header = False
        else:
            rows.append(cells)
    return found


def tables(text: str) -> list[dict[str, list[str]]]:
    """Every markdown table in ``text``: {a row's first cell: the row's cells}."""
    return [{cells[0]: cells for cells in rows} for rows in table_rows(text)]


def sci(value: float) -> str:
    """3.8e-6, as the guides write small numbers."""
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def number(text: str) -> float:
    return float(text.replace("−", "-").replace("+", ""))


def shown(text: str, value: float) -> bool:
    """``text`` is ``value`` rounded to the decimals ``text`` shows."""
    decimals = len(text.split(".")[1]) if "." in text else 0
    return abs(number(text) - value) <= 0.5 * 10 ** -decimals + 1e-9


def check_mean_std(cell: str, values: list[float], where: str) -> None:
    match = re.search(r"(\d+\.\d+) ± (\d+\.\d+)", cell)
    assert match, f"{where}: no 'mean ± std' in {cell!r}"
    assert shown(match.group(1), float(np.mean(values))), f"{where}: mean {cell!r}, file {np.mean(values):.4f}"
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    assert shown(match.group(2), std), f"{where}: std {cell!r}, file {std:.4f}"


def check_delta(cell: str, diff: float, p: float, where: str) -> None:
    match = re.search(r"([+−-]\d+\.\d+) \(p = (\d\.\d+)", cell)
    assert match, f"{where}: no '±d (p = …)' in {cell!r}"
    assert shown(match.group(1), diff), f"{where}: {cell!r}, file {diff:+.4f}"
    assert shown(match.group(2), p), f"{where}: {cell!r}, file p = {p:.4f}"


def chosen(res: dict) -> dict[tuple[str, str], dict]:
    """(task, optimizer) -> the configuration the sweep chose on dev."""
    out = {(c["task"], c["optimizer"]): c for c in res["configs"] if c["chosen"]}
    assert len(out) == len({(c["task"], c["optimizer"]) for c in res["configs"]}), res["name"]
    return out


def seed_values(config: dict) -> list[float]:
    return [config["best_by_seed"][s] for s in sorted(config["best_by_seed"], key=int)]


# ------------------------------------------------------------------------------ small RTE/MRPC sweeps
SMALL_SWEEPS = {  # result file -> the heading of the docs/results/README.md section that holds its table
    "minilm_rte_mrpc": "## 600 training examples per task",
    "minilm_rte_mrpc_2k": "## 2000 training examples per task",
}


def small_sweep_tables() -> list[tuple[str, str, dict]]:
    """(where, result name, rows) for each small-sweep table: two in docs/study.md, two in docs/results/README.md."""
    study = section(DOCS / "study.md", "## Small sweeps")
    study_600, study_2k = study.split("**2,000 examples**", 1)
    found = [("docs/study.md 600", "minilm_rte_mrpc", tables(study_600)[0]),
             ("docs/study.md 2,000", "minilm_rte_mrpc_2k", tables(study_2k)[0])]
    for name, heading in SMALL_SWEEPS.items():
        found.append((f"docs/results/README.md {heading}", name, tables(section(RESULTS / "README.md", heading))[0]))
    return found


SMALL_SWEEP_TABLES = small_sweep_tables()


@pytest.mark.parametrize("where,name,rows", SMALL_SWEEP_TABLES, ids=[where for where, _, _ in SMALL_SWEEP_TABLES])
def test_small_sweep_tables_are_the_committed_sweeps(where, name, rows):
    res = result(name)
    picked = chosen(res)
    base, cand = res["compare"]
    tasks = sorted({task for task, _ in picked}, key=["rte", "mrpc"].index)
    assert tasks == ["rte", "mrpc"], name
    for opt in (base, cand):
        row = next(cells for first, cells in rows.items() if first in (opt, NAMES[opt]))
        rte, mrpc = picked[("rte", opt)], picked[("mrpc", opt)]
        lr = float(re.search(r"lr ([\d.e-]+)", row[1]).group(1))
        assert lr == pytest.approx(rte["learning_rate"]) == pytest.approx(mrpc["learning_rate"]), (where, row)
        if opt.startswith("us"):
            assert f"β3 {rte['beta3']:g}" in row[1], (where, row)
        assert int(row[2]) == rte["best"]["n"] == mrpc["best"]["n"], (where, row)
        check_mean_std(row[3], seed_values(rte), f"{where} {opt} RTE")
        acc, f1 = re.match(r"(\d+\.\d)/(\d+\.\d)", row[4]).groups()
        metrics = mrpc["mean_metrics"]["mrpc_dev"]
        assert shown(acc, metrics["ACC"]) and shown(f1, metrics["F1"]), (where, row)
        spread = re.search(r"± (\d+\.\d+)", row[4]).group(1)  # the std of the score, (Acc + F1) / 2
        assert shown(spread, float(np.std(seed_values(mrpc), ddof=1))), (where, row)
        seeds = sorted(rte["best_by_seed"], key=int)
        check_mean_std(row[5], [(rte["best_by_seed"][s] + mrpc["best_by_seed"][s]) / 2 for s in seeds],
                       f"{where} {opt} Avg")
    delta = next(cells for first, cells in rows.items() if "−" in first)
    for col, key in ((3, "rte"), (4, "mrpc"), (5, "average")):
        test = res["ttests"][key]
        check_delta(delta[col], test["mean_diff"], test["p"], f"{where} {key}")
        by_seed = {s: [] for s in picked[("rte", cand)]["best_by_seed"]}  # the paired test, recomputed
        for task in tasks:
            for s in by_seed:
                by_seed[s].append(picked[(task, cand)]["best_by_seed"][s] - picked[(task, base)]["best_by_seed"][s])
        diffs = [d[tasks.index(key)] if key != "average" else float(np.mean(d)) for d in by_seed.values()]
        assert stats.ttest_rel(diffs, np.zeros(len(diffs))).pvalue == pytest.approx(test["p"], rel=1e-6), key


def test_the_lr_beta3_table_is_the_committed_grids():
    text = section(RESULTS / "README.md", "## Learning rate × β3")
    rows = table_rows(text)[0]
    header = ["0.6", "0.75", "0.9"]
    checked = 0
    for name, examples in (("minilm_mrpc_beta3", "600"), ("minilm_mrpc_beta3_2k", "2000")):
        cells = {(c["learning_rate"], c["beta3"]): c["best"]["mean"] for c in result(name)["configs"]
                 if c["optimizer"] == "usadamax"}
        for lr in (1e-4, 3e-4):
            row = next(r for r in rows if r[0] == examples and float(r[1]) == lr)
            for text_value, beta3 in zip(row[2:], header):
                assert shown(text_value, cells[(lr, float(beta3))]), (name, lr, beta3, text_value)
                checked += 1
    assert checked == 12
    adamax = next(r for r in result("minilm_rte_mrpc_2k")["runs"]
                  if r["run_id"] == "mrpc/adamax/lr0.0003_beta3-0.75_seed1")
    assert f"(79.7; Adamax, seed 1, lr 3e-4: {adamax['best_score']:.1f})" in " ".join(text.split())


# ---------------------------------------------------------------------------------------------------- SMART
def smart_section(task: str) -> str:
    return section(DOCS / "smart_distillation.md", f"### On {task}")


def test_smart_mrpc_table_is_the_committed_runs():
    rows = tables(smart_section("MRPC"))[0]
    for name, smart in (("minilm_mrpc_smart_plain", ""), ("minilm_mrpc_smart", "SMART + ")):
        res = result(name)
        for opt in ("adamax", "usadamax"):
            config = chosen(res)[("mrpc", opt)]
            row = rows[f"{smart}{NAMES[opt]}"]
            assert int(row[1]) == config["best"]["n"] == 3
            acc, f1 = re.match(r"(\d+\.\d)/(\d+\.\d) on every seed", row[2]).groups()
            for metrics in config["metrics_by_seed"].values():
                assert shown(acc, metrics["mrpc_dev"]["ACC"]) and shown(f1, metrics["mrpc_dev"]["F1"]), (name, opt)
            check_mean_std(row[3], seed_values(config), f"{name} {opt}")


def test_smart_sst_table_and_its_paired_tests_are_the_committed_runs():
    text = smart_section("SST-2")
    rows = tables(text)[0]
    scores = {}
    for name, smart in (("minilm_sst_smart_plain", ""), ("minilm_sst_smart", "SMART + ")):
        res = result(name)
        for opt in ("adamax", "usadamax"):
            config = chosen(res)[("sst", opt)]
            values = seed_values(config)
            scores[(smart, opt)] = values
            row = rows[f"{smart}{NAMES[opt]}"]
            assert int(row[1]) == len(values) == 3
            assert row[2] == ", ".join(f"{v:.1f}" for v in values), (name, opt, row[2])
            check_mean_std(row[3], values, f"{name} {opt}")
        test = res["ttests"]["sst"]
        assert test["p"] == pytest.approx(stats.ttest_rel(scores[(smart, "usadamax")], scores[(smart, "adamax")]).pvalue)

    def paired(a, b):
        return float(np.mean(np.subtract(a, b))), float(stats.ttest_rel(a, b).pvalue)

    claims = {  # the paragraph's phrase before each "(p = …)" -> (candidate, baseline)
        "Adamax-SAGE − Adamax": (("", "usadamax"), ("", "adamax")),
        "with SMART on both,": (("SMART + ", "usadamax"), ("SMART + ", "adamax")),
        "SMART's effect on Adamax": (("SMART + ", "adamax"), ("", "adamax")),
        "and on Adamax-SAGE": (("SMART + ", "usadamax"), ("", "usadamax")),
    }
    prose = " ".join(text.split())
    for phrase, (cand, base) in claims.items():
        match = re.search(re.escape(phrase) + r" ([+−-]\d+\.\d) \(p = (\d\.\d+)\)", prose)
        assert match, phrase
        diff, p = paired(scores[cand], scores[base])
        assert shown(match.group(1), diff) and shown(match.group(2), p), (phrase, match.group(0), diff, p)


# ---------------------------------------------------------------------------------------------- pruning
def pruning(task: str) -> dict[str, dict[float, dict]]:
    data = json.loads((RESULTS / f"minilm_glue4_{task}_pruning.json").read_text(encoding="utf-8"))
    return {label: {point["pruned"]: point for point in curve} for label, curve in data["curves"].items()}


def study_paragraph(start: str) -> str:
    text = (DOCS / "study.md").read_text(encoding="utf-8")
    return " ".join(text[text.index(start):].split("\n\n", 1)[0].split())


def test_rte_pruning_numbers_are_the_committed_curves():
    curves = pruning("rte")
    text = study_paragraph("**Pruning (the paper's Fig. 3) on the same RTE models**")
    for label in ("Adamax", "Adamax-SAGE"):
        assert f"{label} {curves[label][0.0]['score']:.1f} → {curves[label][0.5]['score']:.1f}" in text, label
        assert curves[label][0.0]["score"] - curves[label][0.5]["score"] < 1.0  # "both lose under a point"


@pytest.mark.parametrize("task,start", [("mrpc", "**Pruning on MRPC's final models**"),
                                        ("cola", "**Pruning on CoLA's final models**")])
def test_mrpc_and_cola_pruning_numbers_are_the_committed_curves(task, start):
    curves = pruning(task)
    text = study_paragraph(start)
    drops = {}
    for label in ("Adamax", "Adamax-SAGE"):
        first, half = curves[label][0.0], curves[label][0.5]
        assert f"{first['score']:.1f} → {half['score']:.1f}" in text, label
        drops[label] = np.subtract(first["scores"], half["scores"])
    extra = drops["Adamax-SAGE"] - drops["Adamax"]
    p = stats.ttest_rel(drops["Adamax-SAGE"], drops["Adamax"]).pvalue
    assert re.search(rf"\b{np.mean(extra):.1f} points? (more|on average)", text), (task, np.mean(extra))
    assert f"p = {p:.2f}" in text, (task, p)
    sage, base = drops["Adamax-SAGE"], drops["Adamax"]
    assert f"{sage.min():.1f} to {sage.max():.1f} against Adamax's {base.min():.1f} to {base.max():.1f}".replace(
        "-", "−") in text, (task, sage, base)


# ---------------------------------------------------------------------------------------------- figures
def test_the_analyses_table_is_the_committed_figures():
    rows = {cells[0].split()[0].strip("`"): cells for cells in tables((DOCS / "analyses.md").read_text())[0].values()}
    fig2 = json.loads((FIGURES / "fig2_sensitivity_sst2.json").read_text(encoding="utf-8"))
    sage, adamax = "Adamax-SAGE (lr 2e-4)", "Adamax (lr 2e-4)"
    medians = {k: v["median"] for k, v in fig2["summary"].items()}
    spread = {k: max(v.values()) / min(v.values()) for k, v in fig2["per_layer_median"].items()}
    assert (f"median {sci(medians[sage])} (SAGE) vs {sci(medians[adamax])}" in rows["sensitivity"][2]
            and f"spread {spread[sage]:.1f}× (SAGE) vs {spread[adamax]:.1f}×" in rows["sensitivity"][2]), medians
    fig3 = json.loads((FIGURES / "fig3_pruning_sst2.json").read_text(encoding="utf-8"))
    drop = {k: {p["kept"]: p["score"] for p in v}[0.6] - v[0]["score"] for k, v in fig3["curves"].items()}
    assert (f"SAGE {drop[sage]:.2f} points, Adamax {drop[adamax]:.2f}".replace("-", "−")
            in rows["prune"][2]), drop
    text = (DOCS / "analyses.md").read_text(encoding="utf-8")
    unpruned = {k: v[0]["score"] for k, v in fig3["curves"].items()}
    assert f"({unpruned[sage]:.2f} vs {unpruned[adamax]:.2f})" in text, unpruned


# ------------------------------------------------------------------------------------ the headline answer
@pytest.mark.parametrize("path,heading", [(ROOT / "README.md", "## Does SAGE help?"),
                                          (DOCS / "study.md", "# Does SAGE help?")], ids=["README", "study"])
def test_the_headline_answer_is_the_committed_study(path, heading):
    """The three lines a reader sees first: each pair's four-task gain at the best epoch and its p, and the run count."""
    text = " ".join(section(path, heading).split())
    study = json.loads((RESULTS / "minilm_glue4_study.json").read_text(encoding="utf-8"))
    labels = {"adamax": "Adamax", "usadamax": "Adamax-SAGE", "adamw": "AdamW", "usadamw": "AdamW-SAGE"}
    for pair in study["pairs"]:
        test = pair["ttests"]["best"]["average"]
        phrase = f"{labels[pair['candidate']]} vs {labels[pair['baseline']]}"
        match = re.search(re.escape(phrase) + r"[^+−(]* ([+−]\d+\.\d)[^(]*\(p = (\d\.\d+)\)", text)
        assert match, (path, phrase)
        assert shown(match.group(1), test["mean_diff"]) and shown(match.group(2), test["p"]), (path, match.group(0))
    runs = sum(len(result(f"minilm_glue4_{pair}_select")["runs"]) for pair in ("adamax", "adamw"))
    runs += sum(len(result(f"minilm_glue4_{pair}_final_{task}")["runs"])
                for pair in ("adamax", "adamw") for task in ("rte", "mrpc", "stsb", "cola"))
    assert f"{runs} runs" in text, (path, runs)


def test_the_spiral_row_is_the_committed_figure():
    spiral = json.loads((FIGURES / "fig5_two_spirals.json").read_text(encoding="utf-8"))
    rows = {cells[0].split()[0].strip("`"): cells for cells in tables((DOCS / "analyses.md").read_text())[0].values()}
    held = {k: v["heldout_acc"] for k, v in spiral["results"].items()}
    assert spiral["config"]["seed"] == 0
    assert f"(seed 0): Adam {held['Adam']:.1f}, Adam-SAGE {held['Adam-SAGE']:.1f}" in rows["spiral"][2], held


# ------------------------------------------------------------------- docs/results/README.md's study blocks
def test_the_study_blocks_in_the_results_index_are_the_committed_study():
    """Each block row: both optimizers' best-epoch mean ± std and learning rate, and SAGE − base with its p."""
    rows = tables(section(RESULTS / "README.md", "## The full-size study"))[0]
    study = json.loads((RESULTS / "minilm_glue4_study.json").read_text(encoding="utf-8"))
    titles = {"rte": "RTE", "mrpc": "MRPC", "stsb": "STS-B", "cola": "CoLA"}
    labels = {"adamax": "Adamax", "usadamax": "Adamax-SAGE", "adamw": "AdamW", "usadamw": "AdamW-SAGE"}
    checked = 0
    for pair in study["pairs"]:
        final = {(f["task"], f["optimizer"]): f for f in pair["final"]}
        base, cand = pair["baseline"], pair["candidate"]
        for task in pair["tasks"]:
            cell = " ".join(rows[f"{titles[task]}, {labels[base]} vs {labels[cand]}"][2].split())
            for opt in (base, cand):
                f = final[(task, opt)]
                match = re.search(rf"\b{re.escape(labels[opt])} (\d+\.\d) ± (\d+\.\d) \(([^)]*)\)", cell)
                assert match, (task, opt, cell)
                check_mean_std(f"{match.group(1)} ± {match.group(2)}", list(f["best_by_seed"].values()),
                               f"docs/results/README.md {task} {opt}")
                lr = float(re.search(r"lr ([\d.e-]+)", match.group(3)).group(1))
                assert lr == pytest.approx(f["learning_rate"]), (task, opt, match.group(3))
            test = pair["ttests"]["best"][task]
            delta = re.search(r"\), ([+−-]\d+\.\d), p = (\d\.\d+)", cell)
            assert delta, (task, cell)
            check_delta(f"{delta.group(1)} (p = {delta.group(2)})", test["mean_diff"], test["p"], f"{task} {base}")
            checked += 1
    assert checked == 8
