"""--init_checkpoint from a trained model: a run of this project (best/ or step-N/) or an MT-DNN .pt checkpoint.

Asserts the encoder and the shared heads arrive bit for bit, new tasks get fresh heads, the log line names each,
shape mismatches and unreadable files fail with one line, and an MT-DNN layout written here maps ``bert.*`` and
``scoring_list.N`` as documented (checked against the original BertModel's own forward).
"""
from __future__ import annotations

import argparse
import enum
import shutil
import sys
import types
from collections import OrderedDict
from pathlib import Path
from typing import Optional

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, BertModel

import data_utils.metrics
from conftest import tiny_bert_config
from data_utils.task_def import DataFormat, TaskType
from mt_dnn import parallel, warm_start
from mt_dnn.trainer import Trainer
from mt_dnn.warm_start import StandIn, checkpoint_kind
from workspace import TASK_YAML, config, write_shards

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
    # data_utils.task_def.TaskType/DataFormat are MT-DNN's names too (this project's are pickled here under them)
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
    (ws / "junk.pt").write_bytes(b"not a checkpoint")  # the file is looked at before torch.load meets it
    with pytest.raises(ValueError, match=r"^--init_checkpoint \S*junk\.pt: expected an MT-DNN \.pt checkpoint \(a "
                                         r"file torch\.save wrote\); this is a text file$"):
        Trainer(config(ws, "bad", init_checkpoint=str(ws / "junk.pt"), train_datasets=["pairs"]))


def test_files_torch_save_did_not_write_are_refused_before_unpickling(ws, tmp_path):
    """A text file gave a KeyError traceback from torch's unpickler, random bytes an IndexError (by chance)."""
    import random
    import zipfile
    cases = {"notes.txt": b"hello world, not a model\n",
             "random.bin": bytes(random.Random(0).randrange(256) for _ in range(3000)),
             "empty.pt": b""}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        what = "a text file" if name == "notes.txt" else "neither a torch zip archive nor a torch pickle"
        with pytest.raises(ValueError) as info:
            Trainer(config(ws, "bad", init_checkpoint=str(tmp_path / name), train_datasets=["pairs"]))
        assert str(info.value) == (f"--init_checkpoint {tmp_path / name}: expected an MT-DNN .pt checkpoint (a file "
                                   f"torch.save wrote); this is {what}")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("readme.txt", "hi")
    with pytest.raises(ValueError, match=r"other\.zip: a zip archive, but not one torch\.save wrote \(no data\.pkl\)$"):
        Trainer(config(ws, "bad", init_checkpoint=str(tmp_path / "other.zip"), train_datasets=["pairs"]))
    legacy = tmp_path / "legacy.pt"
    torch.save({"state": {}}, legacy, _use_new_zipfile_serialization=False)
    legacy.write_bytes(legacy.read_bytes()[:40])  # torch's own start, then damage
    with pytest.raises(ValueError, match=rf"^{legacy}: not a readable torch checkpoint \(EOFError\)$"):
        Trainer(config(ws, "bad", init_checkpoint=str(legacy), train_datasets=["pairs"]))
    assert not (ws / "bad").exists()


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


# ---------------------------------------------------------------------------------------------- head layouts
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _dense(n_out: int, n_in: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"weight": torch.randn(n_out, n_in, generator=g) * 0.5, "bias": torch.randn(n_out, generator=g) * 0.5}


def _authors_file(ws: Path, name: str, monkeypatch, heads: dict[str, torch.Tensor], *, labels=("not", "same"),
                  options=None) -> tuple[Path, BertModel]:
    """A model_N.pt as the SAGE repository's or MT-DNN's train.py saves it, for tasks (score, pairs): ``heads`` is
    the network's non-encoder state (their names), the options carry the pickled task definitions."""
    registered = _mtdnn_task_defs(monkeypatch)  # MT-DNN's classes, under their module names for pickling
    TaskDef, Vocabulary = type(registered[0]), type(registered[1].label_vocab)  # noqa: N806
    defs = [TaskDef(label_vocab=None, n_class=1, task_type=TaskType.Regression, dropout_p=None, enable_san=False),
            TaskDef(label_vocab=Vocabulary(list(labels)), n_class=2, task_type=TaskType.Classification,
                    dropout_p=None, enable_san=False)]
    torch.manual_seed(5)
    bert = BertModel(tiny_bert_config(**NO_DROPOUT))
    state = {f"bert.{k}": v for k, v in bert.state_dict().items()}
    state.update(heads)
    conf = {**tiny_bert_config(**NO_DROPOUT).to_dict(), "encoder_type": 1, "train_datasets": ["score", "pairs"],
            "task_def_list": defs, "pooler_actf": "tanh", "optimizer": "usadamax", **(options or {})}
    torch.save({"state": state, "config": conf}, ws / name)
    monkeypatch.undo()
    return ws / name, bert


def _dev_probabilities(trainer: Trainer, ws: Path) -> tuple[torch.Tensor, dict]:
    """The project's dev probabilities for pairs in float64 (its evaluation path), and the collated dev batch."""
    from mt_dnn.batcher import collate, load_split
    from mt_dnn.evaluate import predict_split
    model = trainer.model.double().eval()
    data = load_split(str(ws / "shards"), trainer.task_defs["pairs"], "dev", 64)
    result = predict_split(model, data, 64, torch.device("cpu"), trainer.pad_id)
    return torch.tensor(result.scores, dtype=torch.float64), collate(data, list(range(len(data))), 0,
                                                                     with_labels=False)


def _their_probabilities(bert: BertModel, batch: dict, pooler: Optional[dict], head: dict, act) -> torch.Tensor:
    """The authors' forward, by hand: BertModel's last hidden state at [CLS], their pooler, the linear layer."""
    with torch.no_grad():
        cls = bert.double().eval()(**batch).last_hidden_state[:, 0]
        pooled = act(cls @ pooler["weight"].double().T + pooler["bias"].double()) if pooler else cls
        return torch.softmax(pooled @ head["weight"].double().T + head["bias"].double(), dim=-1)


def test_sage_repository_checkpoint_loads_its_pooler_and_matches_its_forward(ws, monkeypatch):
    pooler, head = _dense(32, 32, 11), _dense(2, 32, 12)
    path, bert = _authors_file(ws, "sage_model_0.pt", monkeypatch, {
        "scoring_list.0.weight": _linear(1, 13)["weight"], "scoring_list.0.bias": _linear(1, 13)["bias"],
        "scoring_list.1.weight": head["weight"], "scoring_list.1.bias": head["bias"],
        "pooler.dense.weight": pooler["weight"], "pooler.dense.bias": pooler["bias"]})
    trainer = Trainer(config(ws, "from-sage", init_checkpoint=str(path), train_datasets=["pairs"],
                             test_datasets=["pairs"]))
    assert trainer.cfg.head_layout == "sage" and trainer.model.head_layout == "sage"
    ours, batch = _dev_probabilities(trainer, ws)
    theirs = _their_probabilities(bert, batch, pooler, head, torch.tanh)
    assert ours.shape == (24, 2) and (ours - theirs).abs().max().item() <= 1e-6
    # the same weights through the encoder's own pooler (what was loaded before) are another model
    own_pooler = {"weight": bert.pooler.dense.weight, "bias": bert.pooler.dense.bias}
    assert (theirs - _their_probabilities(bert, batch, own_pooler, head, torch.tanh)).abs().max() > 1e-2
    line = [ln for ln in _log(ws, "from-sage").splitlines() if "init from" in ln][0]
    assert "heads loaded: pairs (scoring_list.1)" in line and line.endswith("not used: scoring_list.0 (score)")


def test_todays_mtdnn_checkpoint_loads_each_tasks_pooler_and_matches_its_forward(ws, monkeypatch):
    """scoring_list.N = Sequential(Pooler, Linear); MT-DNN's pooler applies no activation (its lookup of the
    activation by name always falls back to none)."""
    pooler, head = _dense(32, 32, 21), _dense(2, 32, 22)
    path, bert = _authors_file(ws, "mtdnn_today.pt", monkeypatch, {
        "scoring_list.0.0.dense.weight": _dense(32, 32, 23)["weight"], "scoring_list.0.0.dense.bias": _dense(
            32, 32, 23)["bias"], "scoring_list.0.1.weight": _linear(1, 24)["weight"],
        "scoring_list.0.1.bias": _linear(1, 24)["bias"],
        "scoring_list.1.0.dense.weight": pooler["weight"], "scoring_list.1.0.dense.bias": pooler["bias"],
        "scoring_list.1.1.weight": head["weight"], "scoring_list.1.1.bias": head["bias"]})
    trainer = Trainer(config(ws, "from-mtdnn-today", init_checkpoint=str(path), train_datasets=["pairs", "score"],
                             test_datasets=["pairs"]))
    assert (trainer.cfg.head_layout, trainer.model.pooler_actf) == ("mtdnn", "linear")
    ours, batch = _dev_probabilities(trainer, ws)
    theirs = _their_probabilities(bert, batch, pooler, head, lambda x: x)
    assert (ours - theirs).abs().max().item() <= 1e-6
    assert torch.equal(trainer.model.state_dict()["heads.score.pooler.dense.weight"].float(),
                       _dense(32, 32, 23)["weight"])
    with pytest.raises(ValueError, match=r"--pooler_actf tanh: .*mtdnn_today\.pt was trained with pooler activation "
                                         r"linear; drop the flag"):
        Trainer(config(ws, "bad", init_checkpoint=str(path), train_datasets=["pairs"], pooler_actf="tanh"))
    with pytest.raises(ValueError, match=r"--head_layout sage: .*mtdnn_today\.pt was trained with the mtdnn head "
                                         r"layout; drop the flag to continue it as it was trained"):
        Trainer(config(ws, "bad", init_checkpoint=str(path), train_datasets=["pairs"], head_layout="sage"))


def _san(prefix: str = "") -> dict:
    """The parameters of MT-DNN's / the SAGE repository's SANClassifier (module/san.py), hidden size 32."""
    names = {"alpha": (1, 1), "query_wsum.att.linear.weight": (1, 32), "query_wsum.att.linear.bias": (1,),
             "attn.score_func.linear.weight": (32, 32), "attn.score_func.linear.bias": (32,),
             "rnn.weight_ih": (96, 32), "rnn.weight_hh": (96, 32), "rnn.bias_ih": (96,), "rnn.bias_hh": (96,),
             "classifier.proj.weight": (2, 128), "classifier.proj.bias": (2,)}
    return {f"scoring_list.1.{prefix}{k}": torch.zeros(shape) for k, shape in names.items()}


def test_san_heads_of_either_repository_are_refused_saying_what_they_are(ws, monkeypatch):
    path, _ = _authors_file(ws, "sage_san.pt", monkeypatch, {**_san(), "pooler.dense.weight": torch.zeros(32, 32),
                                                            "pooler.dense.bias": torch.zeros(32)})
    with pytest.raises(ValueError, match=r"sage_san\.pt: task pairs: scoring_list\.1 has parameters .*, not one "
                                         r"linear layer: it is MT-DNN's stochastic answer network \(SAN: alpha, "
                                         r"query_wsum, attn, rnn, classifier\), which this project does not "
                                         r"implement .* rename the task here to train a fresh head$"):
        Trainer(config(ws, "bad", init_checkpoint=str(path), train_datasets=["pairs"]))
    path, _ = _authors_file(ws, "mtdnn_san.pt", monkeypatch, {
        **_san("1."), "scoring_list.1.0.dense.weight": torch.zeros(32, 32),
        "scoring_list.1.0.dense.bias": torch.zeros(32)})
    with pytest.raises(ValueError, match=r"mtdnn_san\.pt: task pairs: .*stochastic answer network \(SAN: alpha, "
                                         r"query_wsum, attn, rnn, classifier\) behind its own pooler"):
        Trainer(config(ws, "bad", init_checkpoint=str(path), train_datasets=["pairs"]))
    # a SAN head of a task this run does not use stays "not used"
    trainer = Trainer(config(ws, "san-unused", init_checkpoint=str(path), train_datasets=["score"],
                             test_datasets=["score"], allow_unused_weights=False))
    assert "scoring_list.1 (pairs)" in _log(ws, "san-unused")
    assert trainer.cfg.head_layout == "mtdnn"


def test_labels_saved_in_another_order_are_refused(ws, monkeypatch):
    path, _ = _authors_file(ws, "sage_swapped.pt", monkeypatch, {
        "scoring_list.1.weight": torch.zeros(2, 32), "scoring_list.1.bias": torch.zeros(2),
        "pooler.dense.weight": torch.zeros(32, 32), "pooler.dense.bias": torch.zeros(32)}, labels=("same", "not"))
    with pytest.raises(ValueError, match=r"sage_swapped\.pt \(its task_def_list\): task 'pairs' was trained as "
                                         r"Classification with labels \['same', 'not'\], but .*tasks\.yml defines it "
                                         r"as Classification with labels \['not', 'same'\]; the loaded head's "
                                         r"outputs follow the trained definition"):
        Trainer(config(ws, "bad", init_checkpoint=str(path), train_datasets=["pairs"]))


def test_trained_tensors_of_this_runs_tasks_are_never_dropped_quietly(ws, monkeypatch):
    # a top-level pooler in a run whose layout reads the encoder's: pairs reads it, so it cannot be left out
    folder = ws / "odd-run"
    shutil.copytree(ws / "first" / "best", folder)
    weights = load_file(str(folder / "model.safetensors"))
    weights.update({"pooler.dense.weight": torch.ones(32, 32), "pooler.dense.bias": torch.ones(32)})
    save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=r"odd-run: trained tensors would not be loaded into this run's model: "
                                         r"pooler\.dense\.bias \(read by pairs\), pooler\.dense\.weight \(read by "
                                         r"pairs\); pass --allow_unused_weights to start without them$"):
        Trainer(config(ws, "bad", init_checkpoint=str(folder), train_datasets=["pairs"], test_datasets=["pairs"]))
    # a tensor of no task at all in an MT-DNN file
    path, _ = _authors_file(ws, "sage_extra.pt", monkeypatch, {
        "scoring_list.1.weight": torch.zeros(2, 32), "scoring_list.1.bias": torch.zeros(2),
        "pooler.dense.weight": torch.zeros(32, 32), "pooler.dense.bias": torch.zeros(32),
        "mask_lm.decoder.weight": torch.zeros(4, 32)})
    with pytest.raises(ValueError, match=r"sage_extra\.pt: trained tensors would not be loaded .*: "
                                         r"mask_lm\.decoder\.weight \(no task\); pass --allow_unused_weights"):
        Trainer(config(ws, "bad", init_checkpoint=str(path), train_datasets=["pairs"], test_datasets=["pairs"]))
    Trainer(config(ws, "allowed", init_checkpoint=str(folder), train_datasets=["pairs"], test_datasets=["pairs"],
                   allow_unused_weights=True))
    assert "pooler.dense.weight (trained, left out: --allow_unused_weights)" in _log(ws, "allowed")
    # tensors of tasks this run does not use stay a log entry
    Trainer(config(ws, "score-unused", init_checkpoint=str(ws / "sage_model_0.pt"), train_datasets=["pairs"],
                   test_datasets=["pairs"]))
    assert "not used: scoring_list.0 (score)" in _log(ws, "score-unused")


def test_layout_is_recorded_and_a_continued_run_keeps_it(ws):
    import json

    import predict as predict_cli
    from mt_dnn.restore import restore
    Trainer(config(ws, "sage-first", train_datasets=["pairs"], test_datasets=["pairs"], epochs=1,
                   head_layout="sage", pooler_actf="relu")).fit()
    saved = json.loads((ws / "sage-first" / "best" / "train_config.json").read_text())
    assert (saved["head_layout"], saved["pooler_actf"]) == ("sage", "relu")
    restored = restore(ws / "sage-first" / "best").model
    assert (restored.head_layout, restored.pooler_actf) == ("sage", "relu")
    trainer = Trainer(config(ws, "sage-second", init_checkpoint=str(ws / "sage-first" / "best"),
                             train_datasets=["pairs", "score"], test_datasets=["pairs"], epochs=1))
    assert (trainer.cfg.head_layout, trainer.cfg.pooler_actf) == ("sage", "relu")
    # the encoder's own pooler is never read: no micro-batch gives it a gradient, zero-filled or not
    encoder_pooler = {id(p) for p in trainer.model.encoder.pooler.parameters()}
    assert not encoder_pooler & {id(p) for t in ("pairs", "score") for p in parallel.trained_parameters(trainer.model, t)}
    _same(trainer.model.state_dict(), load_file(str(ws / "sage-first" / "best" / "model.safetensors")), "pooler.")
    with pytest.raises(ValueError, match=r"--head_layout mtdnn: .*sage-first/best was trained with the sage head "
                                         r"layout"):
        Trainer(config(ws, "bad", init_checkpoint=str(ws / "sage-first" / "best"), head_layout="mtdnn"))
    with pytest.raises(ValueError, match=r"--pooler_actf gelu: .*sage-first/best was trained with pooler "
                                         r"activation relu"):
        Trainer(config(ws, "bad", init_checkpoint=str(ws / "sage-first" / "best"), pooler_actf="gelu"))
    # a config written before head layouts existed reads as the encoder layout
    old = json.loads((ws / "first" / "best" / "train_config.json").read_text())
    assert restore(ws / "first" / "best").model.head_layout == "encoder" and old["head_layout"] == "encoder"
    assert predict_cli.main(["--checkpoint", str(ws / "sage-first" / "best"), "--task", "pairs"]) == 0
