"""--init_checkpoint from a trained model: one of our runs (best/ or step-N/) or an MT-DNN .pt checkpoint.

Asserts the encoder and the shared heads arrive bit for bit, new tasks get fresh heads, the log line names each,
shape mismatches and unreadable files fail with one line, and an MT-DNN layout written here maps ``bert.*`` and
``scoring_list.N`` as documented (checked against the original BertModel's own forward).
"""
from __future__ import annotations

import argparse
import enum
import sys
import types
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, BertModel

import data_utils.metrics
from conftest import tiny_bert_config
from data_utils.task_def import DataFormat, TaskType
from mt_dnn import warm_start
from mt_dnn.trainer import Trainer
from mt_dnn.warm_start import StandIn, checkpoint_kind
from test_trainer import TASK_YAML, config, write_shards

OTHER_YAML = TASK_YAML.replace("n_class: 2\n  labels: [not, same]\n  metric_meta: [ACC, F1]",
                               "n_class: 3\n  labels: [not, same, odd]\n  metric_meta: [ACC]")


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("warm")
    torch.manual_seed(0)
    AutoModel.from_config(tiny_bert_config()).save_pretrained(root / "tiny-bert")
    (root / "tasks.yml").write_text(TASK_YAML, encoding="utf-8")
    (root / "other.yml").write_text(OTHER_YAML, encoding="utf-8")
    write_shards(root / "shards")
    Trainer(config(root, "first", train_datasets=["pairs", "score"], test_datasets=["pairs"], epochs=1)).fit()
    return root


def _log(ws: Path, out: str) -> str:
    return (ws / out / "train.log").read_text(encoding="utf-8")


def _same(a: dict, b: dict, prefix: str, strip: str = "") -> None:
    keys = [k for k in a if k.startswith(prefix)]
    assert keys, prefix
    for key in keys:
        assert torch.equal(a[key], b[strip + key[len(prefix):]] if strip else b[key]), key


def test_continue_from_best_loads_encoder_and_shared_heads(ws):
    saved = load_file(str(ws / "first" / "best" / "model.safetensors"))
    trainer = Trainer(config(ws, "second", init_checkpoint=str(ws / "first" / "best"),
                             train_datasets=["pairs", "pick"], test_datasets=["pairs"], epochs=1))
    now = trainer.model.state_dict()
    _same(now, saved, "encoder.")
    _same(now, saved, "heads.pairs.")
    assert torch.equal(now["heads.pick.proj.bias"], torch.zeros(1))  # fresh: the head's own init
    assert 0.01 < now["heads.pick.proj.weight"].std().item() < 0.04
    assert "heads.pick.proj.weight" not in saved
    line = [ln for ln in _log(ws, "second").splitlines() if "init from" in ln][0]
    assert "heads loaded: pairs (heads.pairs)" in line
    assert "fresh heads: pick" in line and "not used: score (heads.score)" in line
    trainer.fit()  # and it trains on from there; its own checkpoint restores like any other
    import predict as predict_cli
    assert predict_cli.main(["--checkpoint", str(ws / "second" / "best"), "--task", "pairs"]) == 0


def test_a_head_loaded_from_the_init_run_may_be_evaluated_without_training(ws):
    """score was trained by the first run: evaluating it after training only pairs is meaningful, pick is not."""
    trainer = Trainer(config(ws, "eval-warm", init_checkpoint=str(ws / "first" / "best"),
                             train_datasets=["pairs"], test_datasets=["pairs", "score"], epochs=1))
    assert list(dict.fromkeys(d.task_def.name for d in trainer.eval_sets)) == ["pairs", "score"]
    with pytest.raises(ValueError, match=r"--test_datasets: pick not in --train_datasets; its head would be "
                                         r"untrained"):
        Trainer(config(ws, "eval-cold", init_checkpoint=str(ws / "first" / "best"),
                       train_datasets=["pairs"], test_datasets=["pairs", "pick"], epochs=1))


def test_continue_from_a_step_checkpoint(ws):
    step = next(p for p in (ws / "first").glob("step-*"))
    trainer = Trainer(config(ws, "from-step", init_checkpoint=str(step), train_datasets=["score"],
                             test_datasets=["score"]))
    _same(trainer.model.state_dict(), load_file(str(step / "model.safetensors")), "heads.score.")


def test_head_shape_mismatch_names_the_task(ws):
    with pytest.raises(ValueError, match=r"first/best: task pairs: head heads\.pairs: heads\.pairs\.proj\.weight has "
                                         r"shape \(2, 32\) in the checkpoint, \(3, 32\) here"):
        Trainer(config(ws, "mismatch", init_checkpoint=str(ws / "first" / "best"), task_def=str(ws / "other.yml"),
                       train_datasets=["pairs"], test_datasets=["pairs"]))


def test_run_output_folder_points_to_best(ws):
    with pytest.raises(ValueError, match=r"a run's output folder; pass .*first/best or one of its step-N"):
        checkpoint_kind(str(ws / "first"))
    assert checkpoint_kind(str(ws / "tiny-bert")) == "encoder"


def test_cli_continues_from_best(ws, capsys):
    import train as train_cli
    args = ["--train_datasets", "pairs", "--task_def", str(ws / "tasks.yml"), "--data_dir", str(ws / "shards"),
            "--init_checkpoint", str(ws / "first" / "best"), "--output_dir", str(ws / "cli"), "--epochs", "1",
            "--batch_size", "16", "--max_seq_len", "64", "--no_tensorboard", "--optim_impl", "foreach"]
    assert train_cli.main(args) == 0
    assert "heads loaded: pairs (heads.pairs)" in _log(ws, "cli")


# ---------------------------------------------------------------------------------------------- MT-DNN layout
def _mtdnn_file(ws: Path, name: str, with_config: dict, heads: dict[int, dict], extra_state=None) -> tuple:
    """An MT-DNN checkpoint as its MTDNNModel.save writes one: network state, optimizer state, options dict."""
    torch.manual_seed(3)
    bert = BertModel(tiny_bert_config())
    state = {f"bert.{k}": v for k, v in bert.state_dict().items()}
    state["bert.embeddings.position_ids"] = torch.arange(64).unsqueeze(0)  # older transformers saved it
    for new, old in (("weight", "gamma"), ("bias", "beta")):  # pytorch-pretrained-bert's names, one LayerNorm
        state[f"bert.embeddings.LayerNorm.{old}"] = state.pop(f"bert.embeddings.LayerNorm.{new}")
    for index, parts in heads.items():
        state.update({f"scoring_list.{index}.{k}": v for k, v in parts.items()})
    state.update(extra_state or {})
    options = {**tiny_bert_config().to_dict(), "learning_rate": 5e-5, "optimizer": "adamax", "dropout_p": 0.1,
               "answer_opt": 0, "multi_gpu_on": False, **with_config}
    options.pop("model_type")
    blob = {"state": state, "config": options, "updates": 120,
            "optimizer": {"state": {}, "param_groups": [{"lr": 5e-5, "params": [0, 1]}]}}
    path = ws / name
    torch.save(blob, path)
    return path, bert


def _linear(n_out: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"weight": torch.randn(n_out, 32, generator=g), "bias": torch.randn(n_out, generator=g)}


def _mtdnn_task_defs(monkeypatch) -> list:
    """MT-DNN's ``opt['task_def_list']`` as its train.py saves it: TaskDef objects (a dict subclass whose items are
    reprs, with attributes) holding a label Vocabulary and enums, all from MT-DNN's module paths."""
    class TaskDef(dict):
        def __init__(self, **fields):
            super().__init__(**{k: repr(v) for k, v in fields.items()})
            self.__dict__.update(fields)

    class Vocabulary:
        def __init__(self, labels):
            self.tok2ind = {label: i for i, label in enumerate(labels)}

    class Metric(enum.Enum):
        ACC = 0

    for cls, module in ((TaskDef, "experiments.exp_def"), (Vocabulary, "data_utils.vocab"),
                        (Metric, "data_utils.metrics")):
        cls.__module__, cls.__qualname__ = module, cls.__name__
        if module not in sys.modules:
            monkeypatch.setitem(sys.modules, module, types.ModuleType(module))
        monkeypatch.setattr(sys.modules[module], cls.__name__, cls, raising=False)
    # data_utils.task_def.TaskType/DataFormat are MT-DNN's names too (ours are pickled here under them)
    return [TaskDef(label_vocab=Vocabulary(labels) if labels else None, n_class=n, task_type=task_type,
                    data_type=DataFormat.PremiseAndOneHypothesis, metric_meta=(Metric.ACC,),
                    split_names=["train", "dev", "test"], enable_san=False, dropout_p=0.1, loss=None, kd_loss=None,
                    adv_loss=None)
            for n, labels, task_type in ((1, None, TaskType.Regression), (2, ["0", "1"], TaskType.Classification),
                                         (3, ["a", "b", "c"], TaskType.Classification))]


def test_mtdnn_checkpoint_maps_bert_and_scoring_list(ws, monkeypatch):
    heads = {0: _linear(1, 1), 1: _linear(2, 2), 2: _linear(3, 3)}
    path, bert = _mtdnn_file(ws, "mtdnn.pt", {"encoder_type": 1, "train_datasets": ["score", "pairs_x", "qqp"],
                                              "task_def_list": _mtdnn_task_defs(monkeypatch)}, heads)
    monkeypatch.undo()  # MT-DNN's classes are gone again: loading must not need them
    assert "experiments.exp_def" not in sys.modules
    task_defs = warm_start._torch_load(path)["config"]["task_def_list"]
    assert type(task_defs[1]) is OrderedDict and task_defs[1].n_class == 2 and task_defs[1]["n_class"] == "2"
    assert isinstance(task_defs[1].task_type, StandIn) and task_defs[1].task_type.args == (1,)
    assert task_defs[2].label_vocab.state == {"tok2ind": {"a": 0, "b": 1, "c": 2}}
    trainer = Trainer(config(ws, "from-mtdnn", init_checkpoint=str(path), train_datasets=["pairs", "pick"],
                             test_datasets=["pairs"]))
    model = trainer.model.eval()
    now = model.state_dict()
    assert torch.equal(now["heads.pairs.proj.weight"], heads[1]["weight"])
    assert torch.equal(now["heads.pairs.proj.bias"], heads[1]["bias"])
    # parity with the original BertModel: pooled output, then the scoring_list.1 linear layer by hand
    ids = torch.tensor([[2, 11, 40, 3, 50, 3]])
    mask, types = torch.ones_like(ids), torch.tensor([[0, 0, 0, 0, 1, 1]])
    with torch.no_grad():
        pooled = bert.eval()(input_ids=ids, attention_mask=mask, token_type_ids=types).pooler_output
        ours = model("pairs", ids, mask, types)
    torch.testing.assert_close(ours, pooled @ heads[1]["weight"].T + heads[1]["bias"], rtol=0, atol=1e-6)
    line = [ln for ln in _log(ws, "from-mtdnn").splitlines() if "init from" in ln][0]
    assert line.endswith("mtdnn.pt (scoring_list order from the checkpoint's train_datasets: 0=score, 1=pairs, "
                         "2=qqp): encoder loaded; heads loaded: pairs (scoring_list.1); fresh heads: pick; in the "
                         "checkpoint, not used: scoring_list.0 (score), scoring_list.2 (qqp), 'updates', 'optimizer'")


def test_mtdnn_checkpoint_without_task_list_uses_this_runs_order(ws):
    heads = {0: _linear(2, 4), 1: _linear(1, 5)}
    path, _ = _mtdnn_file(ws, "mtdnn-noorder.pt", {}, heads)
    with pytest.raises(ValueError, match=r"mtdnn-noorder\.pt: its config names no encoder_type or model_type; "
                                         r"pass --encoder_type"):
        Trainer(config(ws, "noorder", init_checkpoint=str(path), train_datasets=["pairs", "score"],
                       test_datasets=["pairs", "score"]))
    trainer = Trainer(config(ws, "noorder", init_checkpoint=str(path), train_datasets=["pairs", "score"],
                             test_datasets=["pairs", "score"], encoder_type=1))
    assert torch.equal(trainer.model.state_dict()["heads.score.proj.weight"], heads[1]["weight"])
    assert "this run's --train_datasets" in _log(ws, "noorder")
    with pytest.raises(ValueError, match=r"--encoder_type 2: .*mtdnn\.pt was trained with encoder_type 1"):
        Trainer(config(ws, "noorder-type2", init_checkpoint=str(ws / "mtdnn.pt"), train_datasets=["pairs"],
                       encoder_type=2))


def test_mtdnn_head_shape_and_layout_errors(ws):
    path, _ = _mtdnn_file(ws, "mtdnn-3.pt", {"encoder_type": 1, "train_datasets": ["pairs"]}, {0: _linear(3, 1)})
    with pytest.raises(ValueError, match=r"mtdnn-3\.pt: task pairs: head scoring_list\.0: heads\.pairs\.proj\.weight "
                                         r"has shape \(3, 32\) in the checkpoint, \(2, 32\) here \(another n_class"):
        Trainer(config(ws, "bad", init_checkpoint=str(path), train_datasets=["pairs"]))
    san = {"answer.proj.weight": torch.zeros(2, 32), "answer.proj.bias": torch.zeros(2)}
    path, _ = _mtdnn_file(ws, "mtdnn-san.pt", {"encoder_type": 1, "train_datasets": ["pairs"]}, {0: san})
    with pytest.raises(ValueError, match=r"task pairs: scoring_list\.0 has parameters .* not one linear layer"):
        Trainer(config(ws, "bad", init_checkpoint=str(path), train_datasets=["pairs"]))


def test_unreadable_mtdnn_files_fail_with_one_line(ws):
    torch.save({"state": {}, "config": argparse.Namespace(encoder_type=1)}, ws / "namespace.pt")
    with pytest.raises(ValueError, match=r"namespace\.pt: 'config' is a argparse\.Namespace, expected MT-DNN's "
                                         r"options dict"):
        Trainer(config(ws, "bad", init_checkpoint=str(ws / "namespace.pt"), train_datasets=["pairs"]))
    torch.save([1, 2], ws / "list.pt")
    with pytest.raises(ValueError, match=r"list\.pt: not an MT-DNN checkpoint \(expected a dict with 'state'"):
        Trainer(config(ws, "bad", init_checkpoint=str(ws / "list.pt"), train_datasets=["pairs"]))
    (ws / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.pt: not a checkpoint torch\.load\(weights_only=True\) can read "
                                         r"\(Unsupported operand"):
        Trainer(config(ws, "bad", init_checkpoint=str(ws / "junk.pt"), train_datasets=["pairs"]))


class _Calls:
    """Pickles as a call of ``func(*args)`` (what a hostile checkpoint would carry)."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def test_stand_ins_run_nothing_from_the_file(ws):
    """A pickled call becomes an inert record of the call; os/sys calls stay blocked by torch itself."""
    import os
    import shutil
    victim = ws / "victim"
    victim.mkdir()
    torch.save({"state": {}, "config": {"x": _Calls(shutil.rmtree, str(victim))}}, ws / "call.pt")
    assert warm_start.pickle_globals(ws / "call.pt") == ["shutil.rmtree"]
    loaded = warm_start._torch_load(ws / "call.pt")["config"]["x"]
    assert isinstance(loaded, StandIn) and loaded.name == "shutil.rmtree" and loaded.args == (str(victim),)
    assert victim.is_dir()
    torch.save({"state": {}, "config": {"x": _Calls(os.system, "true")}}, ws / "os.pt")
    with pytest.raises(ValueError, match=r"os\.pt: not a checkpoint .* GLOBAL posix\.system whose module posix is "
                                         r"blocked"):
        warm_start._torch_load(ws / "os.pt")


def test_legacy_torch_format_with_task_defs_loads(ws, monkeypatch):
    """MT-DNN's released checkpoints predate torch's zip format; their pickles are read the same way."""
    blob = {"state": {"scoring_list.0.weight": torch.ones(2, 32)}, "config": {"task_def_list": _mtdnn_task_defs(
        monkeypatch)}}
    torch.save(blob, ws / "legacy.pt", _use_new_zipfile_serialization=False)
    monkeypatch.undo()
    assert {"experiments.exp_def.TaskDef", "data_utils.task_def.TaskType"} <= set(
        warm_start.pickle_globals(ws / "legacy.pt"))
    loaded = warm_start._torch_load(ws / "legacy.pt")
    assert torch.equal(loaded["state"]["scoring_list.0.weight"], torch.ones(2, 32))
    assert [d.n_class for d in loaded["config"]["task_def_list"]] == [1, 2, 3]
