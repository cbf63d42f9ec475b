"""export.py: a run as a plain Hugging Face folder.

The round trip is checked from the outside: the folder is loaded with plain transformers (AutoModel,
AutoModelForSequenceClassification, AutoTokenizer) and its outputs on the dev shard are compared with what
predict.py wrote for the same checkpoint. RoBERTa and DeBERTa layouts are checked against the model's own forward;
heads with no exact HF counterpart, and exports whose logits would differ, are refused and leave nothing behind.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import (AutoModel, AutoModelForSequenceClassification, AutoTokenizer, BertTokenizerFast,
                          DebertaV2Config, ElectraConfig, RobertaConfig)

import export as export_cli
import predict as predict_cli
from conftest import tiny_bert_config
from fault_driver import run_with_fault
from data_utils.task_def import load_task_defs, select_tasks
from mt_dnn import hf_export
from mt_dnn.batcher import collate, load_split
from mt_dnn.model import MTDNNModel
from mt_dnn.trainer import Trainer
from workspace import TASK_YAML, config, write_shards

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(100)] + list("abcdefghijklmnopqrstuvw")


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    AutoModel.from_config(tiny_bert_config()).save_pretrained(root / "tiny-bert")
    BertTokenizerFast(vocab={w: i for i, w in enumerate(WORDS[:128])}).save_pretrained(str(root / "tiny-bert"))
    (root / "tasks.yml").write_text(TASK_YAML, encoding="utf-8")
    write_shards(root / "shards")
    Trainer(config(root, "run", epochs=1)).fit()
    return root


def _predicted(ws: Path, task: str, capsys) -> dict:
    assert predict_cli.main(["--checkpoint", str(ws / "run" / "best"), "--task", task, "--split", "dev",
                             "--output_dir", str(ws / "pred")]) == 0
    capsys.readouterr()
    return json.loads((ws / "pred" / f"{task}_dev_scores_predict.json").read_text())


def _hf_logits(folder: Path, ws: Path, task: str) -> tuple[torch.Tensor, object]:
    """Plain transformers over the dev shard, one padded batch."""
    hf = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    td = load_task_defs(ws / "tasks.yml")[task]
    data = load_split(str(ws / "shards"), td, "dev", 64)
    batch = collate(data, list(range(len(data))), hf.config.pad_token_id or 0, with_labels=False)
    with torch.no_grad():
        return hf(**batch).logits, hf.config


def test_classification_export_gives_predict_py_scores(ws, capsys):
    assert export_cli.main(["--checkpoint", str(ws / "run" / "best"), "--out", str(ws / "hf-pairs"),
                            "--task", "pairs"]) == 0
    assert json.loads(capsys.readouterr().out)["architecture"] == "BertForSequenceClassification"
    logits, cfg = _hf_logits(ws / "hf-pairs", ws, "pairs")
    assert cfg.id2label == {0: "not", 1: "same"} and cfg.label2id == {"not": 0, "same": 1}
    assert cfg.problem_type == "single_label_classification"
    expected = _predicted(ws, "pairs", capsys)
    torch.testing.assert_close(torch.softmax(logits, -1).flatten(), torch.tensor(expected["scores"]), rtol=0,
                               atol=1e-5)  # the score file holds MT-DNN's flat list
    assert logits.argmax(-1).tolist() == expected["predictions"]


def test_regression_export_gives_predict_py_values(ws, capsys):
    assert export_cli.main(["--checkpoint", str(ws / "run" / "best"), "--out", str(ws / "hf-score"),
                            "--task", "score"]) == 0
    logits, cfg = _hf_logits(ws / "hf-score", ws, "score")
    assert cfg.problem_type == "regression" and cfg.num_labels == 1
    expected = _predicted(ws, "score", capsys)
    torch.testing.assert_close(logits[:, 0], torch.tensor(expected["scores"]), rtol=0, atol=1e-5)


def test_encoder_export_loads_with_automodel_and_autotokenizer(ws, capsys):
    assert export_cli.main(["--checkpoint", str(ws / "run" / "best"), "--out", str(ws / "hf-enc")]) == 0
    from mt_dnn.restore import restore
    ours = restore(ws / "run" / "best").model.eval()
    hf = AutoModel.from_pretrained(str(ws / "hf-enc")).eval()
    batch = hf_export.probe_batch(hf.config)
    with torch.no_grad():
        torch.testing.assert_close(hf(**batch).pooler_output, ours.pool(**batch), rtol=0, atol=1e-6)
    tok = AutoTokenizer.from_pretrained(str(ws / "hf-enc"))
    assert tok("w3 W7 b")["input_ids"] == [2, 8, 12, 106, 3] and len(tok) == 128
    assert export_cli.main(["--checkpoint", str(ws / "run" / "best"), "--out", str(ws / "hf-enc")]) == 2
    assert "hf-enc: already exists (pass --overwrite" in capsys.readouterr().err
    assert export_cli.main(["--checkpoint", str(ws / "run" / "best"), "--out", str(ws / "hf-enc"),
                            "--overwrite", "--task", "pairs"]) == 0
    assert AutoModelForSequenceClassification.from_pretrained(str(ws / "hf-enc")).config.num_labels == 2


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_ranking_and_unknown_tasks_are_refused_leaving_nothing(ws, capsys):
    base = ["--checkpoint", str(ws / "run" / "best"), "--out", str(ws / "hf-no")]
    assert export_cli.main(base + ["--task", "pick"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("export.py: error: cannot export task pick: it is a Ranking task") and err.count("\n") == 1
    assert export_cli.main(base + ["--task", "nli"]) == 2
    assert "--task: 'nli' is not a task of this checkpoint (pairs, score, pick)" in capsys.readouterr().err
    assert not (ws / "hf-no").exists() and _leftovers(ws) == []


def test_export_whose_logits_would_differ_is_refused(ws, monkeypatch, capsys):
    # a layout that silently changes the encoder's activation: the reload-and-compare step must catch it
    wrong = hf_export.ClassifierLayout(None, "classifier", (("hidden_act", "relu"),))
    monkeypatch.setitem(hf_export.LAYOUTS, "bert", wrong)
    assert export_cli.main(["--checkpoint", str(ws / "run" / "best"), "--out", str(ws / "hf-wrong"),
                            "--task", "pairs"]) == 2
    assert "export self-check: the exported model's outputs differ" in capsys.readouterr().err
    assert not (ws / "hf-wrong").exists() and _leftovers(ws) == []


def _copy_with_origin(ws: Path, name: str, origin: str) -> Path:
    folder = ws / name
    shutil.copytree(ws / "run" / "best", folder)
    cfg = json.loads((folder / "train_config.json").read_text())
    cfg["init_checkpoint"] = origin
    (folder / "train_config.json").write_text(json.dumps(cfg))
    return folder


def test_tokenizer_follows_continued_runs_and_mtdnn_origin_needs_one(ws, capsys):
    chained = _copy_with_origin(ws, "chained", str(ws / "run" / "best"))
    assert hf_export.tokenizer_source(chained) == str(ws / "tiny-bert")
    (ws / "mt.pt").write_bytes(b"x")
    from_mtdnn = _copy_with_origin(ws, "from-mtdnn", str(ws / "mt.pt"))
    assert hf_export.tokenizer_source(from_mtdnn) is None
    assert export_cli.main(["--checkpoint", str(from_mtdnn), "--out", str(ws / "hf-mt")]) == 2
    assert "no tokenizer is known for this run (it started from an MT-DNN .pt" in capsys.readouterr().err
    assert export_cli.main(["--checkpoint", str(from_mtdnn), "--out", str(ws / "hf-mt"), "--tokenizer",
                            str(ws / "tiny-bert")]) == 0
    # a run that continued an MT-DNN/SAGE .pt (--resume --model_ckpt): its encoder name is not where it came from
    continued = ws / "continued"
    shutil.copytree(ws / "run" / "best", continued)
    cfg = json.loads((continued / "train_config.json").read_text())
    (continued / "train_config.json").write_text(json.dumps({**cfg, "resume": True, "model_ckpt": str(ws / "mt.pt")}))
    assert hf_export.tokenizer_source(continued) is None


# ---------------------------------------------------------------------------------------------- other encoders
SMALL = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
             max_position_embeddings=80)


def _random_model(config, ws: Path) -> MTDNNModel:
    torch.manual_seed(1)
    defs = select_tasks(load_task_defs(ws / "tasks.yml"), ["pairs", "score"])
    model = MTDNNModel(AutoModel.from_config(config), defs)
    with torch.no_grad():  # heads and pooler away from their zero-bias init, so a misplaced layer shows
        for p in list(model.heads.parameters()) + list((model.pooler or torch.nn.Linear(1, 1)).parameters()):
            p.normal_(0, 0.5)
    return model.eval()


@pytest.mark.parametrize("config", [RobertaConfig(**SMALL, type_vocab_size=1, pad_token_id=1),
                                    DebertaV2Config(**SMALL, type_vocab_size=0, relative_attention=True,
                                                    pos_att_type=["p2c", "c2p"])], ids=["roberta", "deberta-v2"])
@pytest.mark.parametrize("task", ["pairs", "score"])
def test_roberta_and_deberta_layouts_are_exact(config, task, ws, tmp_path):
    model = _random_model(config, ws)
    hf = hf_export.sequence_classifier(model, task)
    hf.save_pretrained(str(tmp_path / "m"))
    assert hf_export.self_check(model, tmp_path / "m", task) <= hf_export.TOLERANCE
    batch = hf_export.probe_batch(config)
    reloaded = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "m")).eval()
    with torch.no_grad():
        ours = model(task, **batch)
        torch.testing.assert_close(reloaded(**batch).logits.reshape(ours.shape), ours, rtol=0, atol=1e-5)


def test_electra_is_refused_with_the_reason(ws):
    model = _random_model(ElectraConfig(**SMALL, embedding_size=32), ws)
    with pytest.raises(hf_export.ExportError, match=r"cannot export task pairs as electra: HF's ELECTRA "
                                                    r"classification head applies GELU"):
        hf_export.sequence_classifier(model, "pairs")


def test_embedded_minilm_run_exports_with_its_registry_tokenizer(tmp_path):
    """A run on the offline default encoder: the tokenizer comes from the registry name, and text tokenized by the
    exported tokenizer gives plain transformers the logits the trained model gives."""
    from module import encoders
    from mt_dnn import checkpoint as ckpt
    from mt_dnn.config import TrainConfig
    glue_yml = str(Path(__file__).resolve().parents[1] / "experiments" / "glue" / "glue_task_def.yml")
    torch.manual_seed(0)
    model = MTDNNModel(encoders.load_encoder("minilm-l6"),
                       select_tasks(load_task_defs(glue_yml), ["rte"])).eval()
    cfg = TrainConfig(train_datasets=["rte"], task_def=glue_yml, init_checkpoint="minilm-l6")
    ckpt.save_checkpoint(tmp_path / "run" / "best", model, cfg.to_json(),
                         extra_files={ckpt.ENCODER_CONFIG: model.encoder.config.to_json_string()})
    assert export_cli.main(["--checkpoint", str(tmp_path / "run" / "best"), "--out", str(tmp_path / "hf"),
                            "--task", "rte"]) == 0
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    hf = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "hf")).eval()
    assert hf.config.id2label == {0: "not_entailment", 1: "entailment"}
    batch = tok(["A man is playing a guitar.", "Dogs run."], ["Someone makes music.", "Cats sleep."],
                padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(hf(**batch).logits, model("rte", **batch), rtol=0, atol=1e-5)


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.subprocess
def test_a_kill_between_the_two_renames_of_a_replace_restores_the_previous_export(ws, capsys):
    out = ws / "hf-killed"
    base = ["--checkpoint", str(ws / "run" / "best"), "--out", str(out)]
    assert export_cli.main(base) == 0
    capsys.readouterr()
    before = _snapshot(out)
    proc = run_with_fault("kill_between_renames", "export", base + ["--overwrite", "--task", "pairs"])
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not out.exists() and len(_leftovers(ws)) == 2  # the parked previous export and the new one
    assert export_cli.main(base) == 2  # the previous export is back, so it is refused as existing
    err = capsys.readouterr().err
    assert f"export.py: {ws}: restored hf-killed from .hf-killed.sage-tmp-" in err
    assert err.rstrip().endswith("hf-killed: already exists (pass --overwrite to replace it)")
    assert _snapshot(out) == before and _leftovers(ws) == []
    assert export_cli.main(base + ["--overwrite", "--task", "pairs"]) == 0
    assert AutoModelForSequenceClassification.from_pretrained(str(out)).config.num_labels == 2


@pytest.mark.subprocess
def test_a_killed_export_leaves_its_temp_folder_only_until_the_next_export(ws, capsys):
    proc = run_with_fault("kill_in_export", "export", ["--checkpoint", ws / "run" / "best", "--out",
                                                       ws / "hf-never"])
    assert proc.returncode == -9, proc.stderr[-2000:]
    (temp,) = _leftovers(ws)
    assert temp.startswith(".hf-never.sage-tmp-") and (ws / temp / "config.json").is_file()
    assert not (ws / "hf-never").exists()
    assert export_cli.main(["--checkpoint", str(ws / "run" / "best"), "--out", str(ws / "hf-next")]) == 0
    assert f"export.py: {ws}: removed {temp} (left by an interrupted run)" in capsys.readouterr().err
    assert _leftovers(ws) == [] and not (ws / "hf-never").exists()


# ---------------------------------------------------------------------------------------------- head layouts
def _layout_model(config, ws: Path, layout: str, actf=None) -> MTDNNModel:
    torch.manual_seed(1)
    defs = select_tasks(load_task_defs(ws / "tasks.yml"), ["pairs", "score"])
    model = MTDNNModel(AutoModel.from_config(config), defs, head_layout=layout, pooler_actf=actf)
    with torch.no_grad():  # the layout's poolers and heads away from the encoder's own pooler
        for name, p in model.named_parameters():
            if not name.startswith("encoder."):
                p.normal_(0, 0.5)
    return model.eval()


@pytest.mark.parametrize("config", [tiny_bert_config(), RobertaConfig(**SMALL, type_vocab_size=1, pad_token_id=1),
                                    DebertaV2Config(**SMALL, type_vocab_size=0, relative_attention=True,
                                                    pos_att_type=["p2c", "c2p"])],
                         ids=["bert", "roberta", "deberta-v2"])
@pytest.mark.parametrize("layout", ["sage", "mtdnn"])
def test_the_authors_layouts_export_exactly_with_a_tanh_pooler(config, layout, ws, tmp_path):
    """The layout's pooler dense goes where HF's head applies one (BERT: the base model's pooler, which the
    layout itself never reads), so the exported logits are the model's."""
    model = _layout_model(config, ws, layout, "tanh" if layout == "mtdnn" else None)
    for task in ("pairs", "score"):
        hf = hf_export.sequence_classifier(model, task)
        hf.save_pretrained(str(tmp_path / task))
        batch = hf_export.probe_batch(config)
        reloaded = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / task)).eval()
        with torch.no_grad():
            ours = model(task, **batch)
            torch.testing.assert_close(reloaded(**batch).logits.reshape(ours.shape), ours, rtol=0, atol=1e-5)


def test_a_pooler_without_tanh_is_refused_with_the_reason(ws):
    for layout, actf in (("mtdnn", None), ("sage", "relu")):
        model = _layout_model(tiny_bert_config(), ws, layout, actf)
        with pytest.raises(hf_export.ExportError, match=rf"cannot export task pairs: its pooler applies "
                                                        rf"{actf or 'linear'} \(--pooler_actf, {layout} head layout\) "
                                                        rf"where HF's bert classification head applies tanh"):
            hf_export.sequence_classifier(model, "pairs")


# ---------------------------------------------------------------------------------------------- model card
def _card(folder: Path) -> tuple[dict, str]:
    import yaml
    text = (folder / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    front, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(front), body


def test_the_model_card_names_the_metrics_of_best_metrics_json(ws, capsys):
    out = ws / "hf-card"
    assert export_cli.main(["--checkpoint", str(ws / "run" / "best"), "--out", str(out), "--task", "pairs"]) == 0
    assert json.loads(capsys.readouterr().out)["model_card"] == str(out / "README.md")
    best = json.loads((ws / "run" / "best" / "metrics.json").read_text())
    meta, body = _card(out)
    assert (meta["library_name"], meta["pipeline_tag"]) == ("transformers", "text-classification")
    (result,) = meta["model-index"][0]["results"]  # the exported task's dev set only
    assert result["dataset"] == {"name": "pairs_dev", "type": "pairs", "split": "dev"}
    assert {m["name"]: m["value"] for m in result["metrics"]} == best["dev"]["pairs_dev"]
    from huggingface_hub import ModelCard  # the Hub's own reader of the card
    card = ModelCard((out / "README.md").read_text(encoding="utf-8"))
    assert card.data.library_name == "transformers"
    assert {r.metric_name: r.metric_value for r in card.data.eval_results} == best["dev"]["pairs_dev"]
    assert {(r.dataset_name, r.dataset_split, r.metric_type) for r in card.data.eval_results} == {
        ("pairs_dev", "dev", "accuracy"), ("pairs_dev", "dev", "f1")}
    for dataset, values in best["dev"].items():  # the body's table: every dev metric, unrounded
        for metric, value in values.items():
            assert f"| {dataset} | {metric} | {value!r} |" in body
    assert f"| (average) | glue_average | {best['glue_average']!r} |" in body
    assert "| pairs | Classification | `not`, `same` |" in body
    assert "| pairs | train | 96 |" in body and "| score | train | 48 |" in body and "| pairs | dev | 24 |" in body
    assert "| pairs | dev | 24 | `pairs_dev.jsonl` |" in body and str(ws / "shards") not in body  # no local paths
    for row in ("| learning rate | 0.002 |", "| epochs | 1 |", "| batch size | 8 |", "| max sequence length | 64 |",
                "| optimizer | usadamax |", "| SAGE beta3 (sensitivity EMA) | 0.75 |", "| betas | 0.9, 0.999 |"):
        assert row in body, row
    assert f'AutoModelForSequenceClassification.from_pretrained("{out}")' in body


def test_the_model_card_of_an_epoch_folder_names_that_folder_s_metrics(ws, capsys):
    epoch = ws / "epochs" / "epoch-0"  # what --save_per_epoch writes: best/'s files with that epoch's record
    shutil.copytree(ws / "run" / "best", epoch)
    record = json.loads((epoch / "metrics.json").read_text())
    record["step"] = 7
    (epoch / "metrics.json").write_text(json.dumps(record), encoding="utf-8")
    out = ws / "hf-card-epoch"
    assert export_cli.main(["--checkpoint", str(epoch), "--out", str(out), "--task", "pairs"]) == 0
    capsys.readouterr()
    _, body = _card(out)
    assert f"From `epoch-0/metrics.json`: epoch {record['epoch']}, step 7;" in body
    assert "best/" not in body


def test_the_encoder_export_card_lists_every_dev_set_and_loads_with_automodel(ws, capsys):
    out = ws / "hf-card-encoder"
    assert export_cli.main(["--checkpoint", str(ws / "run" / "best"), "--out", str(out),
                            "--hub_model_id", "someone/tiny-sage"]) == 0
    capsys.readouterr()
    best = json.loads((ws / "run" / "best" / "metrics.json").read_text())
    meta, body = _card(out)
    assert meta["pipeline_tag"] == "feature-extraction"
    results = meta["model-index"][0]["results"]
    assert {r["dataset"]["name"]: {m["name"]: m["value"] for m in r["metrics"]} for r in results} == best["dev"]
    assert 'AutoModel.from_pretrained("someone/tiny-sage")' in body


# ---------------------------------------------------------------------------------------------- --push_to_hub
def _export_process(ws: Path, out: Path, *flags: str, **env) -> "subprocess.CompletedProcess":
    """export.py in a fresh process whose huggingface_hub reads the environment given here (never the network:
    the endpoint, when one is reached at all, is a closed local port)."""
    import os
    import subprocess
    import sys
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    environ.pop("TRANSFORMERS_OFFLINE", None)
    environ.update(PYTHONPATH=str(Path(__file__).resolve().parents[1]), HF_HUB_DISABLE_TELEMETRY="1",
                   HF_HOME=str(ws / "hf-home"), HF_ENDPOINT="http://127.0.0.1:9", **env)
    return subprocess.run([sys.executable, "export.py", "--checkpoint", str(ws / "run" / "best"), "--out", str(out),
                           *flags], cwd=Path(__file__).resolve().parents[1], env=environ, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.subprocess
def test_push_to_hub_without_a_token_is_refused_before_anything_is_written(ws):
    out = ws / "hf-no-token"
    proc = _export_process(ws, out, "--push_to_hub")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0  # nothing but the one line
    assert [text for text in proc.stderr.splitlines() if text.startswith("export.py:")] == [
        "export.py: error: --push_to_hub: no Hugging Face token found (pass --hub_token, set HF_TOKEN or run "
        "`hf auth login`); nothing was written"]
    assert not out.exists()


def test_push_to_hub_while_the_hub_is_offline_is_refused_before_anything_is_written(ws, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = ws / "hf-offline"
    assert export_cli.main(["--checkpoint", str(ws / "run" / "best"), "--out", str(out), "--push_to_hub",
                            "--hub_token", "hf_not_a_token"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "export.py: error: --push_to_hub: HF_HUB_OFFLINE is set, so nothing can reach the Hub; unset it to push "
        "(nothing was written)"]
    assert not out.exists()


@pytest.mark.parametrize("flags, repo", [(["--hub_model_id", "me//rte sage"], "me//rte sage"),
                                         ([], "rte sage")])  # no --hub_model_id: the --out folder's name
def test_push_to_hub_to_an_invalid_repo_id_is_refused_before_anything_is_written(ws, capsys, flags, repo):
    out = ws / "rte sage"
    assert export_cli.main(["--checkpoint", str(ws / "run" / "best"), "--out", str(out), "--push_to_hub",
                            "--hub_token", "hf_not_a_token", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"export.py: error: --push_to_hub: {repo!r} is not a Hub repository "
                                               "id (")
    assert err[0].endswith("; pass --hub_model_id NAMESPACE/NAME (nothing was written)")
    assert not out.exists()


def test_hub_flags_without_push_to_hub_are_refused(ws, capsys):
    out = ws / "hf-token-alone"
    assert export_cli.main(["--checkpoint", str(ws / "run" / "best"), "--out", str(out),
                            "--hub_token", "hf_not_a_token"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "export.py: error: --hub_token: only used with --push_to_hub"]
    assert not out.exists()


@pytest.mark.subprocess
def test_a_push_that_cannot_reach_the_hub_fails_in_one_line_and_keeps_the_export(ws):
    out = ws / "hf-unreachable"
    proc = _export_process(ws, out, "--push_to_hub", "--hub_model_id", "someone/tiny-sage", "--hub_token",
                           "hf_not_a_token")
    assert proc.returncode == 1
    (line,) = [text for text in proc.stderr.splitlines() if text.startswith("export.py:")]
    assert line.startswith(f"export.py: error: --push_to_hub: uploading {out} to someone/tiny-sage failed (")
    assert line.endswith(f"); the export is complete in {out}")
    assert (out / "README.md").is_file() and (out / "model.safetensors").is_file()
