"""``python -m analysis``: every figure command runs end to end on tiny trained runs and writes a real PNG and its
numbers; bad inputs give one-line errors, exit 2 and leave no figure behind."""
from __future__ import annotations

import json
import random

import matplotlib.image
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel

from analysis.cli import main
from mt_dnn.sensitivity_log import SensitivityTracker
from conftest import tiny_bert_config
from data_utils.shards import format_line
from module.bert_optim import build_optimizer, sage_param_groups
from mt_dnn.config import TrainConfig
from mt_dnn.trainer import Trainer
from test_analysis import loss_fn, random_batches, tiny_model

TASKS = """
pairs:
  task_type: Classification
  data_format: PremiseAndOneHypothesis
  n_class: 2
  labels: [diff, same]
  metric_meta: [ACC, F1]
  split_names: [train, dev]
"""


def write_pairs(folder, seed=0):
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 48), ("dev", 24)):
        rows = []
        for i in range(n):
            y = rng.randint(0, 1)
            a = [2, 10 + y] + [rng.randint(20, 120) for _ in range(rng.randint(3, 12))] + [3]
            b = [rng.randint(20, 120) for _ in range(rng.randint(2, 8))] + [3]
            rows.append(format_line(f"{split}{i}", y, a + b, [0] * len(a) + [1] * len(b)))
        (folder / f"pairs_{split}.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny trained runs (Adamax-SAGE, Adamax) and one tracker log for each."""
    root = tmp_path_factory.mktemp("analysis_cli")
    torch.manual_seed(0)
    AutoModel.from_config(tiny_bert_config()).save_pretrained(root / "tiny-bert")
    (root / "tasks.yml").write_text(TASKS, encoding="utf-8")
    write_pairs(root / "shards")
    for opt in ("usadamax", "adamax"):
        cfg = TrainConfig(train_datasets=["pairs"], test_datasets=["pairs"], task_def=str(root / "tasks.yml"),
                          data_dir=str(root / "shards"), init_checkpoint=str(root / "tiny-bert"),
                          output_dir=str(root / opt), optimizer=opt, learning_rate=3e-3, batch_size=8, epochs=1,
                          max_seq_len=64, tensorboard=False, optim_impl="foreach", seed=3)
        Trainer(cfg).fit()
        model = tiny_model()
        optimizer = build_optimizer(opt, sage_param_groups(model), lr=1e-3, foreach=True)
        with SensitivityTracker(model, optimizer, root / opt / "sensitivity.jsonl", every=2) as tracker:
            for step, batch in enumerate(random_batches(6), start=1):
                optimizer.zero_grad()
                loss_fn(model)(batch).backward()
                tracker.observe(step)
                optimizer.step()
    return root


def assert_png(path):
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = matplotlib.image.imread(str(path)).shape[:2]
    assert height > 200 and width > 300


def no_leftovers(folder):
    return not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_sensitivity_command(runs, tmp_path, capsys):
    out = tmp_path / "fig2.png"
    argv = ["sensitivity", "--run", str(runs / "usadamax"), "--run", str(runs / "adamax"), "--per_layer", "300",
            "--cache_dir", str(tmp_path / "cache"), "--out", str(out)]
    assert main(argv) == 0
    assert_png(out)
    numbers = json.loads(out.with_suffix(".json").read_text())
    assert set(numbers["summary"]) == {"Adamax-SAGE", "Adamax"}  # labels default to the runs' optimizers
    n_weights = sum(p.numel() for n, p in tiny_model().named_parameters() if p.ndim == 2 and "embeddings" not in n
                    and not n.startswith("heads."))
    assert numbers["summary"]["Adamax"]["count"] == n_weights
    assert set(numbers["per_layer_median"]["Adamax"]) == {"0", "1"}
    assert json.loads(capsys.readouterr().out) == numbers
    caches = sorted((tmp_path / "cache").iterdir())
    assert len(caches) == 2
    # a second call reads the cache instead of measuring again: doctored cached values show up in the numbers
    for path in caches:
        save_file({k: torch.full_like(v, 0.125) for k, v in load_file(str(path)).items()}, str(path))
    assert main(argv) == 0
    again = json.loads(out.with_suffix(".json").read_text())
    assert again["summary"]["Adamax"]["median"] == again["summary"]["Adamax-SAGE"]["median"] == 0.125


def test_prune_command_scores_the_unpruned_model_like_training_did(runs, tmp_path):
    out = tmp_path / "fig3.png"
    assert main(["prune", "--run", str(runs / "usadamax"), "--run", str(runs / "adamax"), "--label", "SAGE",
                 "--label", "base", "--fractions", "0,0.2,0.9", "--out", str(out)]) == 0
    assert_png(out)
    numbers = json.loads(out.with_suffix(".json").read_text())
    assert numbers["metric"] == "mean of ACC, F1"
    for label, run in (("SAGE", "usadamax"), ("base", "adamax")):
        curve = numbers["curves"][label]
        assert [c["pruned"] for c in curve] == [0.0, 0.2, 0.9]
        trained = json.loads((runs / run / "best" / "metrics.json").read_text())["dev"]["pairs_dev"]
        assert curve[0]["score"] == pytest.approx(sum(trained.values()) / 2)
    assert no_leftovers(tmp_path)


def test_prune_command_averages_runs_that_share_a_label(runs, tmp_path):
    single = tmp_path / "single.png"
    both = tmp_path / "both.png"
    fractions = ["--fractions", "0,0.5"]
    assert main(["prune", "--run", str(runs / "usadamax"), "--run", str(runs / "adamax"), *fractions,
                 "--out", str(single)]) == 0
    assert main(["prune", "--run", str(runs / "usadamax"), "--run", str(runs / "adamax"), "--label", "seeds",
                 "--label", "seeds", *fractions, "--out", str(both)]) == 0
    assert_png(both)
    one = json.loads(single.with_suffix(".json").read_text())["curves"]
    two = json.loads(both.with_suffix(".json").read_text())
    assert list(two["curves"]) == ["seeds"] and len(two["runs"]["seeds"]) == 2
    for i, point in enumerate(two["curves"]["seeds"]):
        a, b = one["Adamax-SAGE"][i]["score"], one["Adamax"][i]["score"]
        assert point["scores"] == pytest.approx([a, b])
        assert point["score"] == pytest.approx((a + b) / 2)
        assert point["std"] == pytest.approx(abs(a - b) / 2 ** 0.5)  # sample std of two values
    assert "std" not in one["Adamax"][0]  # a label with one run is drawn as it is


def test_trajectory_command(runs, tmp_path):
    out_u, out_b = tmp_path / "fig4.png", tmp_path / "fig6.png"
    assert main(["trajectory", "--log", str(runs / "usadamax" / "sensitivity.jsonl"), "--log",
                 str(runs / "adamax" / "sensitivity.jsonl"), "--out_u", str(out_u), "--out_blocks", str(out_b),
                 "--title", "tiny"]) == 0
    assert_png(out_u)
    assert_png(out_b)
    summary = json.loads(out_u.with_suffix(".json").read_text())["summary"]
    assert set(summary) == {"usadamax", "adamax"} and summary["adamax"]["steps"] == [2, 6]


def test_spiral_command(tmp_path):
    out = tmp_path / "fig5.png"
    assert main(["spiral", "--points_per_class", "30", "--hidden", "8", "--steps", "20", "--out", str(out)]) == 0
    assert_png(out)
    results = json.loads(out.with_suffix(".json").read_text())["results"]
    assert set(results) == {"Adam", "Adam-SAGE"} and all(0 <= r["heldout_acc"] <= 100 for r in results.values())


def test_errors_are_one_line_exit_2_and_leave_no_figure(runs, tmp_path, capsys):
    cases = [
        (["sensitivity", "--run", str(runs / "usadamax"), "--run", str(runs / "adamax"), "--label", "x"],
         "--label: given 1 labels for 2 runs"),
        (["prune", "--run", str(tmp_path)], f"{tmp_path}: neither a checkpoint folder"),
        (["prune", "--run", str(runs / "adamax"), "--task", "rte"], "task 'rte' is not one of this run's tasks"),
        (["spiral", "--optimizers", "adam,lion"], "--optimizers: unknown lion"),
        (["spiral", "--hidden", "0"], "--hidden: must be >= 1, got 0"),
    ]
    bad_log = tmp_path / "bad.jsonl"
    bad_log.write_text("{oops\n")
    cases.append((["trajectory", "--log", str(bad_log)], f"{bad_log}:1: not valid JSON"))
    for argv, message in cases:
        outs = ["--out_u", str(tmp_path / "u.png"), "--out_blocks", str(tmp_path / "b.png")] \
            if argv[0] == "trajectory" else ["--out", str(tmp_path / "f.png")]
        assert main(argv + outs) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert err.startswith(f"python -m analysis {argv[0]}: error: ")
    assert not list(tmp_path.glob("*.png")) and no_leftovers(tmp_path)


def test_bad_fractions_are_refused_by_the_parser(runs, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["prune", "--run", str(runs / "adamax"), "--fractions", "0,1.5", "--out", "x.png"])
    assert exc.value.code == 2 and "fractions must be in [0, 1], got '0,1.5'" in capsys.readouterr().err
