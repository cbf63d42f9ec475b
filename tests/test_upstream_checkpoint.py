"""Continuing a ``model_N.pt`` written by the SAGE repository's train.py: ``--resume --model_ckpt`` and
``--init_checkpoint X.pt`` with its optimizer state (mt_dnn/upstream_checkpoint.py).

The checkpoints are built here the way their code builds them, written independently of the project: a network
registered in ``SANBertNetwork``'s order (which fixes ``named_parameters()``, hence the optimizer's parameter
indices), their parameter groups (``_get_usadam_param_groups`` / ``_get_param_groups``), a torch optimizer whose
``state_dict()`` numbers the parameters as theirs did, per-parameter state with the authors' key names and step
counts, and their options with the pickled task definitions. The end-to-end test runs ``train.py --resume
--model_ckpt`` on 32 real RTE rows and compares every epoch's dev probabilities with a plain re-implementation of
their training loop (their forward, cross-entropy, global clipping over all parameters, their optimizer step with
the schedule inside it from tests/sage_reference.py, evaluation after each epoch).
"""
from __future__ import annotations

import copy
import csv
import json
import math
from pathlib import Path
from typing import Optional

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModel, BertModel

import train as train_cli
from conftest import tiny_bert_config
from data_utils.task_def import TaskType
from mt_dnn.config import parse_args
from mt_dnn.trainer import Trainer
from sage_reference import RefParam, ReferenceOptimizer, warmup_linear
from workspace import TASK_YAML, config, write_shards
from test_warm_start import _mtdnn_task_defs

NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
MASK = ("attention.self", "attention.output.dense", "output.dense", "intermediate.dense")
NO_DECAY = ("bias", "gamma", "beta", "LayerNorm.bias", "LayerNorm.weight")


# ---------------------------------------------------------------------------------------------- their checkpoint
class TheirNetwork(nn.Module):
    """SANBertNetwork's modules in its registration order: dropout_list, bert, scoring_list, then the pooler (the
    SAGE repository's, shared by all tasks)."""

    def __init__(self, config, n_classes: list[int]):
        super().__init__()
        self.dropout_list = nn.ModuleList()
        self.bert = BertModel(config)
        hidden = config.hidden_size
        self.scoring_list = nn.ModuleList(nn.Linear(hidden, n) for n in n_classes)
        self.pooler = nn.Module()
        self.pooler.dense = nn.Linear(hidden, hidden)

    def logits(self, task: int, batch: dict) -> torch.Tensor:
        cls = self.bert(**batch).last_hidden_state[:, 0]
        return self.scoring_list[task](torch.tanh(self.pooler.dense(cls)))


class TheirOptimizer(torch.optim.Optimizer):
    """Only its state_dict() is used: torch numbers the parameters group by group, as for their optimizers."""

    def __init__(self, groups, **defaults):
        super().__init__(groups, defaults)


def their_groups(network: nn.Module, kind: str) -> list[dict]:
    """Their optimizer groups, from their code's rules: the SAGE optimizers split common/mask x decay/no-decay in
    the order common-decay, mask-decay, common-no-decay, mask-no-decay; the others decay/no-decay (0.01 decay)."""
    named = list(network.named_parameters())
    def decays(n):
        return not any(nd in n for nd in NO_DECAY)

    def mask(n):
        return any(m in n for m in MASK)
    if not kind.startswith("us"):
        return [{"params": [p for n, p in named if decays(n)], "weight_decay": 0.01},
                {"params": [p for n, p in named if not decays(n)], "weight_decay": 0.0}]
    def group(is_mask, decayed):
        return {"params": [p for n, p in named if mask(n) == is_mask and decays(n) == decayed],
                "weight_decay": 0.01 if decayed else 0, "params_type": "mask" if is_mask else "common"}
    return [group(False, True), group(True, True), group(False, False), group(True, False)]


def their_state(network: nn.Module, kind: str, steps: dict[str, int], seed: int) -> dict[str, dict]:
    """Per-parameter optimizer state with non-zero moments, for the parameters ``steps`` names (their names)."""
    g = torch.Generator().manual_seed(seed)
    second = "exp_inf" if "adamax" in kind else "exp_avg_sq"
    out = {}
    for name, p in network.named_parameters():
        if name not in steps:
            continue
        state = {"step": steps[name], "exp_avg": torch.randn(p.shape, generator=g) * 1e-3,
                 second: torch.rand(p.shape, generator=g) * 1e-3 + (1e-3 if second == "exp_inf" else 1e-7)}
        if kind.startswith("us") and any(m in name for m in MASK):
            state["exp_avg_ipt"] = torch.rand(p.shape, generator=g) * 1e-4
        out[name] = state
    return out


def save_their_checkpoint(path: Path, network: nn.Module, kind: str, states: dict[str, dict], options: dict,
                          edit=None, **group_values) -> Path:
    """``{'state', 'optimizer', 'config'}`` as their MTDNNModel.save writes it (``edit``: a change to make to it
    first, for the bad cases)."""
    betas = (0.9, 0.999, options.get("beta3", 0.75)) if kind.startswith("us") else (0.9, 0.999)
    defaults = dict(lr=options["learning_rate"], schedule="warmup_linear", warmup=options.get("warmup", 0.1),
                    t_total=-1, betas=betas, eps=1e-6, weight_decay=0.01, max_grad_norm=0.0)
    if "adamw" in kind:
        defaults["correct_bias"] = True
    defaults.update(group_values)
    opt = TheirOptimizer(their_groups(network, kind), **defaults)
    for name, p in network.named_parameters():
        if name in states:
            opt.state[p] = states[name]
    blob = {"state": {k: v.detach().clone() for k, v in network.state_dict().items()},
            "optimizer": opt.state_dict(), "config": options}
    if edit is not None:
        edit(blob)
    torch.save(blob, path)
    return path


def their_options(monkeypatch, tasks: list[tuple[str, TaskType, Optional[list[str]]]], config, **values) -> dict:
    """Their ``opt``: the options, the encoder's config merged in, the pickled task definitions."""
    registered = _mtdnn_task_defs(monkeypatch)
    TaskDef, Vocabulary = type(registered[0]), type(registered[1].label_vocab)  # noqa: N806
    defs = [TaskDef(label_vocab=Vocabulary(labels) if labels else None, n_class=len(labels) if labels else 1,
                    task_type=task_type, dropout_p=None, enable_san=False) for _, task_type, labels in tasks]
    return {**config.to_dict(), "encoder_type": 1, "train_datasets": [t for t, _, _ in tasks], "task_def_list": defs,
            "pooler_actf": "tanh", "optimizer": "usadamax", "learning_rate": 1e-3, "beta3": 0.75, "warmup": 0.1,
            "warmup_schedule": "warmup_linear", "global_grad_clipping": 1.0, "grad_clipping": 0.0,
            "grad_accumulation_step": 1, "epochs": 2, "dropout_p": 0.0, "bert_dropout_p": 0.0, "adam_eps": 1e-6,
            "weight_decay": 0.0, **values}


# ---------------------------------------------------------------------------------------------- the small workspace
@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("upstream")
    torch.manual_seed(0)
    AutoModel.from_config(tiny_bert_config()).save_pretrained(root / "tiny-bert")
    (root / "tasks.yml").write_text(TASK_YAML, encoding="utf-8")
    write_shards(root / "shards")
    return root


TASKS = [("score", TaskType.Regression, None), ("pairs", TaskType.Classification, ["not", "same"])]


def _network(seed: int = 3) -> TheirNetwork:
    torch.manual_seed(seed)
    return TheirNetwork(tiny_bert_config(**NO_DROPOUT), [1, 2])


def _steps(network: nn.Module, encoder: int, score: int, pairs: int) -> dict[str, int]:
    """Per-parameter steps of a two-task run: the encoder and pooler step every time, each head on its task's."""
    steps = {}
    for name, _ in network.named_parameters():
        if name.startswith("bert.pooler."):
            continue  # the encoder's own pooler never had a gradient in their network
        steps[name] = score if name.startswith("scoring_list.0.") else pairs if name.startswith(
            "scoring_list.1.") else encoder
    return steps


def _continue_cfg(ws: Path, out: str, path: Path, **kw):
    """This run's flags as the saved options give them: 2 optimizer steps per epoch (score 48 rows, pairs 96)."""
    base = dict(train_datasets=["score", "pairs"], test_datasets=["pairs"], resume=True, model_ckpt=str(path),
                batch_size=96, epochs=2, learning_rate=1e-3, beta3=0.75, warmup=0.1, dropout_p=0.0,
                bert_dropout_p=0.0, optimizer="usadamax")
    base.update(kw)
    return config(ws, out, **base)


def _their_file(ws: Path, name: str, monkeypatch, kind: str = "usadamax", steps=(3, 1, 2), edit=None,
                **options) -> tuple:
    network = _network()
    states = their_state(network, kind, _steps(network, *steps), seed=9)
    opts = their_options(monkeypatch, TASKS, tiny_bert_config(**NO_DROPOUT), optimizer=kind, **options)
    path = save_their_checkpoint(ws / name, network, kind, states, opts, edit, t_total=4)
    monkeypatch.undo()
    return path, network, states


def _state_of(trainer: Trainer, name: str) -> dict:
    return trainer.optimizer.state[dict(trainer.model.named_parameters())[name]]


def test_optimizer_state_is_placed_by_parameter_name(ws, monkeypatch):
    path, network, states = _their_file(ws, "model_1.pt", monkeypatch)
    trainer = Trainer(_continue_cfg(ws, "cont", path))
    assert (trainer.first_step, trainer.total_steps, trainer.last_step) == (3, 4, 7)
    for theirs, ours in (("bert.encoder.layer.1.attention.self.query.weight",
                          "encoder.encoder.layer.1.attention.self.query.weight"),
                         ("bert.embeddings.LayerNorm.weight", "encoder.embeddings.LayerNorm.weight"),
                         ("pooler.dense.weight", "pooler.dense.weight"),
                         ("scoring_list.0.bias", "heads.score.proj.bias"),
                         ("scoring_list.1.weight", "heads.pairs.proj.weight")):
        state = _state_of(trainer, ours)
        assert float(state["step"]) == states[theirs]["step"] and state["step"].ndim == 0, ours
        for key in ("exp_avg", "exp_inf", "exp_avg_ipt"):
            if key in states[theirs]:
                assert torch.equal(state[key], states[theirs][key]), (ours, key)
            else:
                assert key not in state, (ours, key)
    assert "encoder.pooler.dense.weight" in dict(trainer.model.named_parameters())
    assert not _state_of(trainer, "encoder.pooler.dense.weight")  # never stepped there: starts fresh
    # the schedule goes on from step 3 of 4: warmup_linear(3/4) for Adamax, whose step reads the count before moving
    assert trainer.scheduler.get_last_lr()[0] == pytest.approx(1e-3 * warmup_linear(3 / 4, 0.1))
    log = (ws / "cont" / "train.log").read_text()
    assert f"--model_ckpt {path}: continuing {path}" in log and "'optimizer'" not in log.split("continuing")[1]
    assert "--model_ckpt: optimizer state restored for" in log
    assert "steps 1..3 per parameter (the schedule counts 3); the schedule goes on from step 3 of 4" in log
    # trains on past the schedule's end, as their loop does: 4 more steps, the last two with lr <= 0; the pairs
    # head, one batch an epoch, steps twice more
    trainer.fit()
    assert trainer.global_step == 7 and float(_state_of(trainer, "heads.pairs.proj.weight")["step"]) == 4


def test_adamw_state_continues_with_its_schedule_offset(ws, monkeypatch):
    path, _, states = _their_file(ws, "model_w.pt", monkeypatch, kind="usadamw", steps=(2, 2, 2))
    trainer = Trainer(_continue_cfg(ws, "cont-w", path, optimizer="usadamw"))
    assert torch.equal(_state_of(trainer, "heads.pairs.proj.weight")["exp_avg_sq"],
                       states["scoring_list.1.weight"]["exp_avg_sq"])
    # AdamW evaluates its schedule after its step counter moved: the next step reads 3 of 4
    assert trainer.scheduler.get_last_lr()[0] == pytest.approx(1e-3 * warmup_linear(3 / 4, 0.1))


def test_saved_options_that_differ_are_refused_listing_them(ws, monkeypatch):
    path, _, _ = _their_file(ws, "model_opts.pt", monkeypatch)
    with pytest.raises(ValueError, match=r"--model_ckpt .*model_opts\.pt: its saved options differ from this run's "
                                         r"flags: learning_rate \(saved 0\.001, here 0\.002\); epochs \(saved 2, here "
                                         r"3\); total steps \(t_total\) \(saved 4, here 6\); give the same flags, or "
                                         r"pass --allow_config_change to continue with this run's$"):
        Trainer(_continue_cfg(ws, "bad", path, learning_rate=2e-3, epochs=3))
    trainer = Trainer(_continue_cfg(ws, "allowed", path, learning_rate=2e-3, epochs=3, allow_config_change=True))
    assert (trainer.first_step, trainer.total_steps) == (3, 6)
    assert trainer.scheduler.get_last_lr()[0] == pytest.approx(2e-3 * warmup_linear(3 / 6, 0.1))
    assert "--model_ckpt with --allow_config_change: this run's flags are used: learning_rate (saved 0.001, " \
           "here 0.002)" in (ws / "allowed" / "train.log").read_text()


def test_optimizer_states_that_cannot_be_mapped_exactly_are_refused(ws, monkeypatch):
    def refused(path, match, **kw):
        with pytest.raises(ValueError, match=match):
            Trainer(_continue_cfg(ws, "bad", path, **kw))

    path, _, _ = _their_file(ws, "model_kind.pt", monkeypatch)
    refused(path, r"--model_ckpt: .*model_kind\.pt: its optimizer state is usadamax's, this run's --optimizer is "
                  r"adamax", optimizer="adamax")
    refused(path, r"this run trains heads\.pick\.proj\.weight, which its network does not have",
            train_datasets=["score", "pairs", "pick"])
    refused(path, r"it trained bert\.embeddings\.word_embeddings\.weight, .*which this run does not train \(frozen "
                  r"with --update_bert_opt\?\)", update_bert_opt=1)
    path, _, _ = _their_file(ws, "model_bertadam.pt", monkeypatch, kind="adam")
    refused(path, r"model_bertadam\.pt: its optimizer 'adam' has no exact counterpart here", optimizer="adam")
    # today's MT-DNN: a torch AdamW, its scheduler outside the optimizer and not in the file
    network = _network()
    opt = torch.optim.AdamW(their_groups(network, "adamw"), lr=1e-3)
    blob = {"state": network.state_dict(), "optimizer": opt.state_dict(),
            "config": their_options(monkeypatch, TASKS, tiny_bert_config(**NO_DROPOUT), optimizer="adam")}
    torch.save(blob, ws / "mtdnn_adamw.pt")
    monkeypatch.undo()
    refused(ws / "mtdnn_adamw.pt", r"mtdnn_adamw\.pt: its optimizer state \(adam\) is a torch-style optimizer's "
                                   r"\(today's MT-DNN's optimizers, SGD\), whose learning-rate scheduler lives "
                                   r"outside it and is not saved in the file")
    # groups that do not hold their network's parameters; no optimizer state at all
    path, _, _ = _their_file(ws, "model_groups.pt", monkeypatch,
                             edit=lambda blob: blob["optimizer"]["param_groups"][0]["params"].pop())
    refused(path, r"model_groups\.pt: its optimizer groups hold \[\d+, \d+, \d+, \d+\] parameters, its network's "
                  r"parameters make .* \(usadamax's grouping\): they do not correspond")
    path, _, _ = _their_file(ws, "model_noopt.pt", monkeypatch, edit=lambda blob: blob.pop("optimizer"))
    refused(path, r"model_noopt\.pt: it holds no optimizer state")


def test_model_ckpt_is_read_only_under_resume_and_must_be_a_pt_file(ws, capsys, monkeypatch):
    cfg = parse_args(["--train_datasets", "rte", "--model_ckpt", "x.pt"])
    assert cfg.model_ckpt == "x.pt"
    assert "train.py: warning: --model_ckpt x.pt has no effect without --resume (MT-DNN reads it only under " \
           "--resume" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"--model_ckpt .*/nothing\.pt: no such file"):
        Trainer(_continue_cfg(ws, "bad", ws / "nothing.pt"))
    with pytest.raises(ValueError, match=r"--model_ckpt .*tiny-bert: a folder: to continue one of this project's "
                                         r"runs, --resume with its --output_dir"):
        Trainer(_continue_cfg(ws, "bad", ws / "tiny-bert"))
    path, _, _ = _their_file(ws, "model_init.pt", monkeypatch)
    other, _, _ = _their_file(ws, "model_other.pt", monkeypatch)
    with pytest.raises(ValueError, match=r"--init_checkpoint .*model_other\.pt is a trained model too; give one"):
        Trainer(_continue_cfg(ws, "bad", path, init_checkpoint=str(other)))
    Trainer(_continue_cfg(ws, "same-file", path, init_checkpoint=str(path)))  # as SAGE users run it


def test_init_checkpoint_pt_restores_its_optimizer_where_it_maps_and_says_so(ws, monkeypatch):
    path, _, states = _their_file(ws, "model_warm.pt", monkeypatch)
    trainer = Trainer(_continue_cfg(ws, "warm", path, resume=False, model_ckpt=None, init_checkpoint=str(path)))
    assert trainer.first_step == 3
    assert torch.equal(_state_of(trainer, "pooler.dense.weight")["exp_avg"], states["pooler.dense.weight"]["exp_avg"])
    log = (ws / "warm" / "train.log").read_text()
    assert "--init_checkpoint: optimizer state restored for" in log and "not used: scoring_list" not in log
    trainer = Trainer(_continue_cfg(ws, "warm-fresh", path, resume=False, model_ckpt=None,
                                    init_checkpoint=str(path), learning_rate=5e-4))
    assert trainer.first_step == 0 and not trainer.optimizer.state
    log = (ws / "warm-fresh" / "train.log").read_text()
    assert "in the checkpoint, not used: 'optimizer'" in log
    assert "--init_checkpoint: optimizer state not restored, the optimizer starts fresh at step 0 (" in log
    assert "its saved options differ from this run's flags: learning_rate (saved 0.001, here 0.0005))" in log


def test_a_continued_run_checkpoints_and_resumes_exactly(ws, monkeypatch):
    path, _, _ = _their_file(ws, "model_resume.pt", monkeypatch)
    whole = Trainer(_continue_cfg(ws, "whole", path))
    whole.fit()
    cut = Trainer(_continue_cfg(ws, "cut", path, save_every_steps=1))
    cut.fit(stop_after_steps=3)
    assert (cut.global_step, cut.epoch) == (6, 1)
    again = Trainer(_continue_cfg(ws, "cut", path, save_every_steps=1))  # the same command line again
    history = again.fit()
    assert again.global_step == 7 and [r["epoch"] for r in history] == [0, 1]
    last, uninterrupted = load_file(str(ws / "cut" / "step-7" / "model.safetensors")), whole.model.state_dict()
    assert last.keys() == uninterrupted.keys()
    for key, value in uninterrupted.items():
        assert torch.equal(last[key], value), key
    assert "resumed from" in (ws / "cut" / "train.log").read_text()


# ---------------------------------------------------------------------------------------------- end to end
def _rte_rows(glue_dir: Path, split: str, n: int) -> list[dict]:
    with open(glue_dir / "RTE" / f"{split}.tsv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    return rows[:n]


def _rte_shards(glue_dir: Path, folder: Path) -> dict[str, list[dict]]:
    """32 train and 16 dev RTE rows tokenized with the embedded MiniLM tokenizer, as MT-DNN .json shards."""
    from module import encoders
    tok = encoders.load_tokenizer("minilm-l6")
    folder.mkdir(parents=True, exist_ok=True)
    labels = {"not_entailment": 0, "entailment": 1}
    out = {}
    for split, n in (("train", 32), ("dev", 16)):
        rows = []
        for row in _rte_rows(glue_dir, split, n):
            enc = tok(row["sentence1"], row["sentence2"], truncation=True, max_length=128)
            rows.append({"uid": row["index"], "label": labels[row["label"]], "token_id": enc["input_ids"],
                         "type_id": enc["token_type_ids"], "attention_mask": enc["attention_mask"]})
        (folder / f"rte_{split}.json").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        out[split] = rows
    return out


def _padded(rows: list[dict]) -> dict[str, torch.Tensor]:
    length = max(len(r["token_id"]) for r in rows)
    def pad(key):
        return torch.tensor([r[key] + [0] * (length - len(r[key])) for r in rows])
    return {"input_ids": pad("token_id"), "token_type_ids": pad("type_id"), "attention_mask": pad("attention_mask")}


def their_loop(network: TheirNetwork, states: dict[str, dict], rows: dict, *, lr: float, step: int, t_total: int,
               epochs: int, fresh_optimizer: bool = False) -> list[torch.Tensor]:
    """Their train.py after ``--resume --model_ckpt``, written plainly in float64: each epoch one batch of the 32
    rows (their CE loss, clip_grad_norm_ of all the network's parameters to 1.0, their UnstructAwareAdamax step
    with the schedule inside it at the loaded step, t_total from the saved groups), then the dev softmax in eval
    mode. Returns each epoch's dev probabilities."""
    net = copy.deepcopy(network).double()
    groups = [([p for p in g["params"]], g.get("params_type") == "mask", g["weight_decay"])
              for g in their_groups(net, "usadamax")]
    ref = ReferenceOptimizer("adamax", groups, lr=lr, schedule=warmup_linear, t_total=t_total, warmup=0.1,
                             beta1=0.9, beta2=0.999, beta3=0.75, eps=1e-6)
    if not fresh_optimizer:
        ref.global_step = step
        for name, p in net.named_parameters():
            if name in states:
                st = ref.state.setdefault(p, RefParam(p))
                st.step, st.m, st.v = states[name]["step"], states[name]["exp_avg"].double(), \
                    states[name]["exp_inf"].double()
                if "exp_avg_ipt" in states[name]:
                    st.ipt = states[name]["exp_avg_ipt"].double()
    train, dev = _padded(rows["train"]), _padded(rows["dev"])
    labels = torch.tensor([r["label"] for r in rows["train"]])
    out = []
    for _ in range(epochs):
        net.train()
        loss = torch.nn.functional.cross_entropy(net.logits(0, train), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        ref.step()
        ref.zero_grad()
        net.eval()
        with torch.no_grad():
            out.append(torch.softmax(net.logits(0, dev), dim=-1))
    return out


RTE_YAML = """
rte:
  data_format: PremiseAndOneHypothesis
  enable_san: false
  labels:
  - not_entailment
  - entailment
  metric_meta:
  - ACC
  loss: CeCriterion
  kd_loss: MseCriterion
  adv_loss: SymKlCriterion
  n_class: 2
  task_type: Classification
"""


@pytest.mark.training
def test_resume_model_ckpt_follows_the_authors_training_loop_epoch_by_epoch(glue_dir, tmp_path, monkeypatch):
    """From one checkpoint in the SAGE repository's model_0.pt format (step 2 of t_total 4, non-zero moments),
    train.py --resume --model_ckpt with their flags gives their loop's dev probabilities at every epoch, through
    the schedule's end and past it (their warmup_linear goes negative there)."""
    from module import encoders
    rows = _rte_shards(glue_dir, tmp_path / "shards")
    (tmp_path / "rte.yml").write_text(RTE_YAML, encoding="utf-8")
    vocab = len(encoders.load_tokenizer("minilm-l6"))
    bert_config = tiny_bert_config(vocab_size=vocab, max_position_embeddings=128, **NO_DROPOUT)
    torch.manual_seed(11)
    network = TheirNetwork(bert_config, [2])
    steps = {n: 2 for n, _ in network.named_parameters() if not n.startswith("bert.pooler.")}
    states = their_state(network, "usadamax", steps, seed=12)
    opts = their_options(monkeypatch, [("rte", TaskType.Classification, ["not_entailment", "entailment"])],
                         bert_config, epochs=4, batch_size=32)
    path = save_their_checkpoint(tmp_path / "model_0.pt", network, "usadamax", states, opts, t_total=4)
    monkeypatch.undo()
    args = ["--task_def", str(tmp_path / "rte.yml"), "--data_dir", str(tmp_path / "shards"),
            "--init_checkpoint", str(path), "--encoder_type", "1", "--train_datasets", "rte", "--test_datasets", "rte",
            "--resume", "--model_ckpt", str(path), "--optimizer", "usadamax", "--learning_rate", "1e-3",
            "--beta3", "0.75", "--epochs", "4", "--batch_size", "32", "--batch_size_eval", "32", "--warmup", "0.1",
            "--dropout_p", "0", "--bert_dropout_p", "0", "--global_grad_clipping", "1.0", "--grad_clipping", "0",
            "--seed", "2018", "--output_dir", str(tmp_path / "out"), "--no_tensorboard"]
    assert train_cli.main(args) == 0
    expected = their_loop(network, states, rows, lr=1e-3, step=2, t_total=4, epochs=4)
    fresh = their_loop(network, states, rows, lr=1e-3, step=2, t_total=4, epochs=4, fresh_optimizer=True)
    with torch.no_grad():
        start = torch.softmax(copy.deepcopy(network).double().eval().logits(0, _padded(rows["dev"])), dim=-1)
    for epoch in range(4):
        scores = json.loads((tmp_path / "out" / f"rte_dev_scores_{epoch}.json").read_text())
        ours = torch.tensor(scores["scores"], dtype=torch.float64).view(-1, 2)  # MT-DNN's flat layout
        assert ours.shape == (16, 2)
        assert (ours - expected[epoch]).abs().max().item() <= 1e-4, epoch
    # the comparison can tell: the probabilities moved, and a fresh optimizer state (whose first step, at step 0,
    # has lr 0) would have moved them elsewhere
    assert max((e - start).abs().max().item() for e in expected) > 2e-3
    assert all((expected[e] - fresh[e]).abs().max().item() > 1e-3 for e in (1, 2, 3))
    log = (tmp_path / "out" / "train.log").read_text()
    assert "optimizer state restored for" in log and "the schedule goes on from step 2 of 4" in log
    assert math.isclose(warmup_linear(5 / 4, 0.1), -0.25)  # the last epoch's step runs at lr -0.25 x 1e-3
