"""MTDNNModel, heads, pooler and losses on tiny random encoders: shapes, parity with a by-hand forward pass,
hand-computed losses, gradients, dropout, parameter names for the SAGE groups, safetensors round trip."""
from __future__ import annotations

import math
from typing import Optional

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, DebertaV2Config, ElectraConfig

from conftest import tiny_bert_config
from data_utils.task_def import DataFormat, TaskDef, TaskType
from module.bert_optim import DEFAULT_SAGE_PATTERNS, sage_param_groups
from module.heads import build_head
from mt_dnn.loss import LOSSES, build_loss
from mt_dnn.model import MTDNNModel, predict

NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


SPEC = {  # task type -> (data format, loss, metrics), as a task-def YAML would give them
    "Classification": (DataFormat.PremiseAndOneHypothesis, "CeCriterion", ("ACC",)),
    "Regression": (DataFormat.PremiseOnly, "MseCriterion", ("Pearson",)),
    "Ranking": (DataFormat.PremiseAndMultiHypothesis, "RankCeCriterion", ("ACC",)),
}


def make_task(name: str, kind: str, n_class: int = 1, dropout_p: float = 0.1, enable_san: bool = False) -> TaskDef:
    """A TaskDef built directly (the YAML loader would refuse some of the bad ones tested here)."""
    fmt, loss, metrics = SPEC[kind]
    labels = None if kind == "Regression" else tuple(str(i) for i in range(n_class))
    return TaskDef(name=name, task_type=TaskType[kind], data_format=fmt, n_class=n_class, labels=labels,
                   metric_meta=metrics, loss=loss, dropout_p=dropout_p, enable_san=enable_san)


def tasks(*defs: TaskDef) -> dict:
    return {td.name: td for td in defs}


THREE_TASKS = tasks(make_task("cls", "Classification", n_class=3), make_task("reg", "Regression"),
                    make_task("rank", "Ranking", n_class=3))  # Ranking: n_class = hypotheses per example


def tiny_bert(**overrides):
    torch.manual_seed(0)
    return AutoModel.from_config(tiny_bert_config(**overrides))


def tiny_deberta():
    torch.manual_seed(0)
    cfg = DebertaV2Config(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=64, type_vocab_size=2, **NO_DROPOUT)
    return AutoModel.from_config(cfg)


def tiny_electra():
    torch.manual_seed(0)
    cfg = ElectraConfig(vocab_size=128, embedding_size=16, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64, **NO_DROPOUT)
    return AutoModel.from_config(cfg)


def batch(b: int = 4, length: int = 10, k: Optional[int] = None, seed: int = 0):
    """Random ids with right padding (varied lengths) and a two-segment token_type layout."""
    g = torch.Generator().manual_seed(seed)
    shape = (b, length) if k is None else (b, k, length)
    ids = torch.randint(5, 128, shape, generator=g)
    lengths = torch.randint(3, length + 1, shape[:-1], generator=g)
    mask = (torch.arange(length) < lengths.unsqueeze(-1)).long()
    types = (torch.arange(length) >= (lengths // 2).unsqueeze(-1)).long() * mask
    return ids * mask, mask, types


# ---------------------------------------------------------------- shapes and parity with a by-hand forward


def test_output_shape_per_task_type():
    model = MTDNNModel(tiny_bert(), THREE_TASKS).eval()
    assert model("cls", *batch(4, 10)).shape == (4, 3)
    assert model("reg", *batch(4, 10)).shape == (4,)
    assert model("rank", *batch(4, 10, k=3)).shape == (4, 3)


def test_bert_uses_its_own_pooler_output():
    enc = tiny_bert()
    model = MTDNNModel(enc, THREE_TASKS).eval()
    assert model.uses_encoder_pooler and model.pooler is None
    ids, mask, types = batch()
    with torch.no_grad():
        pooled = enc(input_ids=ids, attention_mask=mask, token_type_ids=types).pooler_output
        head = model.heads["cls"].proj
        expected = pooled @ head.weight.T + head.bias
        torch.testing.assert_close(model("cls", ids, mask, types), expected)


@pytest.mark.parametrize("build", [tiny_deberta, tiny_electra], ids=["deberta-v2", "electra"])
def test_encoder_without_pooler_gets_dense_tanh_over_first_token(build):
    enc = build()
    assert getattr(enc, "pooler", None) is None
    model = MTDNNModel(enc, THREE_TASKS).eval()
    assert not model.uses_encoder_pooler
    ids, mask, types = batch()
    with torch.no_grad():
        first = enc(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state[:, 0]
        pooled = torch.tanh(first @ model.pooler.dense.weight.T + model.pooler.dense.bias)
        head = model.heads["reg"].proj
        expected = (pooled @ head.weight.T + head.bias)[:, 0]
        torch.testing.assert_close(model("reg", ids, mask, types), expected)
    assert model("rank", *batch(2, 8, k=3)).shape == (2, 3)


def test_ranking_scores_each_pair_independently():
    model = MTDNNModel(tiny_bert(), THREE_TASKS).eval()
    ids, mask, types = batch(3, 9, k=3)
    head = model.heads["rank"].proj
    with torch.no_grad():
        scores = model("rank", ids, mask, types)
        for b in range(3):
            for k in range(3):
                pooled = model.encoder(input_ids=ids[b, k][None], attention_mask=mask[b, k][None],
                                       token_type_ids=types[b, k][None]).pooler_output
                torch.testing.assert_close(scores[b, k], (pooled @ head.weight.T + head.bias)[0, 0])


def test_token_type_ids_are_optional():
    model = MTDNNModel(tiny_bert(), THREE_TASKS).eval()
    ids, mask, _ = batch()
    with torch.no_grad():
        torch.testing.assert_close(model("cls", ids, mask), model("cls", ids, mask, torch.zeros_like(ids)))


# ---------------------------------------------------------------- dropout and gradients


def test_head_dropout_uses_task_dropout_p():
    defs = tasks(make_task("a", "Classification", n_class=2, dropout_p=0.0),
                 make_task("b", "Classification", n_class=2, dropout_p=0.3),
                 make_task("c", "Regression", dropout_p=1.0))
    model = MTDNNModel(tiny_bert(**NO_DROPOUT), defs).train()
    assert [model.heads[t].dropout.p for t in "abc"] == [0.0, 0.3, 1.0]
    x = batch()
    torch.testing.assert_close(model("a", *x), model("a", *x))  # p = 0: train mode is deterministic
    torch.manual_seed(1)
    assert not torch.equal(model("b", *x), model("b", *x))  # p = 0.3: it is not
    # p = 1 drops the whole pooled vector, leaving only the bias
    torch.testing.assert_close(model("c", *x), model.heads["c"].proj.bias.expand(4).detach())
    model.eval()
    torch.testing.assert_close(model("b", *x), model("b", *x))


@pytest.mark.parametrize("build", [tiny_bert, tiny_deberta], ids=["bert", "deberta-v2"])
@pytest.mark.parametrize("task", ["cls", "reg", "rank"])
def test_gradient_reaches_encoder_and_head(build, task):
    model = MTDNNModel(build(), THREE_TASKS).train()
    if task == "rank":
        x, labels = batch(2, 8, k=3), torch.tensor([0, 2])
    elif task == "reg":
        x, labels = batch(), torch.tensor([0.5, 1.0, 2.0, 4.5])
    else:
        x, labels = batch(), torch.tensor([0, 1, 2, 1])
    model.loss(task, model(task, *x), labels).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    layer0 = [n for n in grads if n.startswith("encoder.encoder.layer.0.attention.self.")]
    assert layer0 and all(grads[n] is not None and grads[n].abs().sum() > 0 for n in layer0)
    assert grads[f"heads.{task}.proj.weight"].abs().sum() > 0
    other = [n for n in grads if n.startswith("heads.") and not n.startswith(f"heads.{task}.")]
    assert other and all(grads[n] is None for n in other)  # only the batch's own head trains


# ---------------------------------------------------------------- parameter names for the SAGE groups

def _is_sage(name: str) -> bool:
    return any(p in name for p in DEFAULT_SAGE_PATTERNS)


def test_parameter_names_split_into_sage_and_plain_groups_on_bert():
    model = MTDNNModel(tiny_bert(), THREE_TASKS)
    names = [n for n, _ in model.named_parameters()]
    subs = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
            "intermediate.dense", "output.dense")
    expected = {f"encoder.encoder.layer.{i}.{s}.{w}" for i in range(2) for s in subs for w in ("weight", "bias")}
    assert {n for n in names if _is_sage(n)} == expected
    plain = {n for n in names if not _is_sage(n)}
    assert {"encoder.pooler.dense.weight", "encoder.embeddings.word_embeddings.weight",
            "encoder.encoder.layer.0.attention.output.LayerNorm.weight",
            "encoder.encoder.layer.1.output.LayerNorm.bias",
            "heads.cls.proj.weight", "heads.reg.proj.bias", "heads.rank.proj.weight"} <= plain
    # and the optimizer's own grouping agrees, tensor for tensor
    by_id = {id(p): n for n, p in model.named_parameters()}
    groups = sage_param_groups(model)
    assert {by_id[id(p)] for g in groups if g["sage"] for p in g["params"]} == expected


def test_own_pooler_and_heads_stay_plain_on_deberta():
    model = MTDNNModel(tiny_deberta(), tasks(make_task("output", "Regression"),
                                             make_task("intermediate", "Classification", n_class=2)))
    plain = {n for n, _ in model.named_parameters() if not _is_sage(n)}
    assert {"pooler.dense.weight", "pooler.dense.bias", "heads.output.proj.weight",
            "heads.intermediate.proj.weight"} <= plain
    assert any(_is_sage(n) and n.startswith("encoder.encoder.layer.1.") for n, _ in model.named_parameters())


# ---------------------------------------------------------------- losses, hand-computed


def test_ce_loss_hand_computed():
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])  # softmax = (1/4, 3/4)
    loss = build_loss("CeCriterion")(logits, torch.tensor([1, 0]))
    assert loss.item() == pytest.approx((math.log(4 / 3) + math.log(4)) / 2)


def test_mse_loss_hand_computed():
    loss = build_loss("MseCriterion")(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0]))
    assert loss.item() == pytest.approx((1 + 4) / 2)


def test_rank_ce_loss_hand_computed():
    scores = torch.log(torch.tensor([[1.0, 2.0, 5.0], [1.0, 2.0, 5.0]]))  # softmax = (1, 2, 5) / 8
    loss = build_loss("RankCeCriterion")(scores, torch.tensor([2, 0]))
    assert loss.item() == pytest.approx((math.log(8 / 5) + math.log(8)) / 2)


def test_loss_is_float32_for_half_precision_outputs():
    logits = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.bfloat16)
    loss = build_loss("CeCriterion")(logits, torch.tensor([1]))
    assert loss.dtype == torch.float32
    assert build_loss("MseCriterion")(torch.ones(2, dtype=torch.float16), torch.zeros(2)).dtype == torch.float32


def test_model_loss_uses_the_task_yaml_loss():
    model = MTDNNModel(tiny_bert(), THREE_TASKS)
    assert {t: type(model.losses[t]).__name__ for t in THREE_TASKS} == {
        "cls": "CeCriterion", "reg": "MseCriterion", "rank": "RankCeCriterion"}
    assert set(LOSSES) == {"CeCriterion", "MseCriterion", "RankCeCriterion", "SpanCeCriterion", "SeqCeCriterion"}


def test_loss_bad_inputs():
    with pytest.raises(ValueError, match="unknown loss 'Ce'; known: CeCriterion, MseCriterion, RankCeCriterion"):
        build_loss("Ce")
    with pytest.raises(ValueError, match=r"MseCriterion: predictions \(4, 1\) and labels \(4,\) must have"):
        build_loss("MseCriterion")(torch.zeros(4, 1), torch.zeros(4))
    with pytest.raises(ValueError, match=r"CeCriterion: expects labels of shape \(4,\), got \(4, 2\)"):
        build_loss("CeCriterion")(torch.zeros(4, 2), torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="CeCriterion: labels must be integer class indices, got torch.float32"):
        build_loss("CeCriterion")(torch.zeros(4, 2), torch.zeros(4))
    with pytest.raises(ValueError, match=r"RankCeCriterion: expects scores of shape \(B, K\), got \(6,\)"):
        build_loss("RankCeCriterion")(torch.zeros(6), torch.zeros(2, dtype=torch.long))


# ---------------------------------------------------------------- predict


def test_predict_per_task_type():
    cls, reg, rank = (THREE_TASKS[t] for t in ("cls", "reg", "rank"))
    logits = torch.tensor([[0.0, math.log(3.0), 0.0], [2.0, 0.0, 0.0]])
    preds, scores = predict(cls, logits)
    assert preds.tolist() == [1, 0]
    torch.testing.assert_close(scores[0], torch.tensor([0.2, 0.6, 0.2]))
    values = torch.tensor([0.25, 3.5])
    preds, scores = predict(reg, values)
    assert preds.tolist() == [0.25, 3.5] and scores.tolist() == [0.25, 3.5]
    preds, scores = predict(rank, torch.tensor([[0.1, 0.9, 0.3], [2.0, -1.0, 0.0]]))
    assert preds.tolist() == [1, 0]
    torch.testing.assert_close(scores.sum(-1), torch.ones(2))


def test_predict_gives_float32_scores_from_half_precision_outputs():
    for task, shape in (("cls", (2, 3)), ("reg", (2,)), ("rank", (2, 3))):
        _, scores = predict(THREE_TASKS[task], torch.ones(shape, dtype=torch.bfloat16))
        assert scores.dtype == torch.float32, task


# ---------------------------------------------------------------- safetensors round trip


def test_state_round_trips_through_safetensors(tmp_path):
    model = MTDNNModel(tiny_deberta(), THREE_TASKS).eval()
    path = tmp_path / "model.safetensors"
    save_file(model.state_dict(), str(path))
    torch.manual_seed(123)
    fresh = MTDNNModel(tiny_deberta(), THREE_TASKS).eval()
    for p in fresh.parameters():
        torch.nn.init.normal_(p)  # make sure nothing matches by accident
    fresh.load_state_dict(load_file(str(path)), strict=True)
    x = batch()
    with torch.no_grad():
        for task in ("cls", "reg"):
            torch.testing.assert_close(fresh(task, *x), model(task, *x), rtol=0, atol=0)
    assert {"pooler.dense.weight", "heads.rank.proj.bias"} <= set(load_file(str(path)))


# ---------------------------------------------------------------- bad inputs


def test_model_bad_inputs():
    model = MTDNNModel(tiny_bert(), THREE_TASKS)
    with pytest.raises(ValueError, match="unknown task 'mnli'; this model has: cls, reg, rank"):
        model("mnli", *batch())
    with pytest.raises(ValueError, match=r"task rank: expects input_ids of shape \(B, K, L\), got \(4, 10\)"):
        model("rank", *batch())
    with pytest.raises(ValueError, match=r"task cls: expects input_ids of shape \(B, L\), got \(4, 2, 10\)"):
        model("cls", *batch(k=2))
    ids, mask, _ = batch()
    with pytest.raises(ValueError, match=r"task cls: attention_mask \(4, 9\) does not match input_ids \(4, 10\)"):
        model("cls", ids, mask[:, :9])
    with pytest.raises(ValueError, match=r"task rank: expects 3 hypotheses per example \(n_class\), got 4"):
        model("rank", *batch(k=4))


def test_model_construction_errors():
    with pytest.raises(ValueError, match="MTDNNModel: no task definitions given"):
        MTDNNModel(tiny_bert(), {})
    with pytest.raises(ValueError, match="key 'rte' differs from its TaskDef name 'mrpc'"):
        MTDNNModel(tiny_bert(), {"rte": make_task("mrpc", "Classification", n_class=2)})
    with pytest.raises(ValueError, match="task name 'a.b' must be non-empty and contain no '.'"):
        MTDNNModel(tiny_bert(), tasks(make_task("a.b", "Regression")))
    with pytest.raises(ValueError, match="task name 'training' is reserved by torch.nn.ModuleDict"):
        MTDNNModel(tiny_bert(), tasks(make_task("training", "Regression")))
    with pytest.raises(ValueError, match="task x: a Classification head needs n_class >= 2, got 1"):
        build_head(make_task("x", "Classification", n_class=1), 32)
    # enable_san: the SAN head only when the run asks for it (--answer_opt 1 passes SanOptions), as in MT-DNN
    from module.heads import ClassificationHead, SANClassifier, SanOptions
    san_task = make_task("x", "Classification", n_class=2, enable_san=True)
    assert type(build_head(san_task, 32)) is ClassificationHead
    assert type(build_head(san_task, 32, san=SanOptions())) is SANClassifier
    with pytest.raises(ValueError, match="task x: the SAN head is for Classification tasks, not Regression"):
        build_head(make_task("x", "Regression", enable_san=True), 32, san=SanOptions())


def test_embedded_minilm_encoder_plugs_in():
    """The offline default encoder: its pretrained pooler is used, and its 6 layers land in the SAGE groups."""
    from module.encoders import load_encoder, load_tokenizer
    tok, enc = load_tokenizer("minilm-l6"), load_encoder("minilm-l6")
    model = MTDNNModel(enc, THREE_TASKS).eval()
    assert model.uses_encoder_pooler
    sage = [n for n, _ in model.named_parameters() if _is_sage(n)]
    assert len(sage) == 6 * 12 and all(n.startswith("encoder.encoder.layer.") for n in sage)
    enc_in = tok(["a fine film", "dull"], ["it was good", "very"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model("cls", enc_in["input_ids"], enc_in["attention_mask"], enc_in["token_type_ids"])
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()


def test_every_task_type_has_a_head_and_unknown_types_fail():
    from dataclasses import replace
    from module.heads import HEADS
    assert set(HEADS) == set(TaskType)
    with pytest.raises(ValueError, match="task x: no head for task type 'Span'; known: Classification, Regression"):
        build_head(replace(make_task("x", "Regression"), task_type="Span"), 32)


def test_builds_from_the_glue_and_demo_task_def_files():
    """Every task of the project's own YAML files gets a head of the right size and the right loss."""
    from pathlib import Path
    from data_utils.task_def import load_task_defs
    root = Path(__file__).resolve().parents[1]
    defs = {**load_task_defs(root / "experiments/glue/glue_task_def.yml"),
            **load_task_defs(root / "experiments/demo/demo_task_def.yml")}
    model = MTDNNModel(tiny_bert(), defs)
    for name, td in defs.items():
        out = model.heads[name].proj.out_features
        assert out == (td.n_class if td.task_type is TaskType.Classification else 1), name
        assert type(model.losses[name]).__name__ == td.loss


# ---------------------------------------------------------------- head layouts (mt_dnn/head_layout.py)
ACTS = {"tanh": torch.tanh, "relu": torch.relu, "linear": lambda x: x,
        "gelu": lambda x: x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))}  # MT-DNN's and SAGE's bertgelu


def _double_model(layout: str, actf: Optional[str] = None, defs=THREE_TASKS) -> MTDNNModel:
    torch.manual_seed(0)
    model = MTDNNModel(AutoModel.from_config(tiny_bert_config(**NO_DROPOUT)), defs, head_layout=layout,
                       pooler_actf=actf)
    with torch.no_grad():  # away from any init, so a misplaced or skipped layer shows
        for name, p in model.named_parameters():
            if not name.startswith("encoder."):
                p.normal_(0, 0.5)
    return model.double().eval()


def _cls_states(model: MTDNNModel, ids, mask, types) -> torch.Tensor:
    return model.encoder(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state[:, 0]


@pytest.mark.parametrize("actf", ["tanh", "relu", "gelu"])
def test_sage_layout_is_the_sage_repositorys_network(actf):
    """[CLS] -> shared dense -> activation -> the task's linear layer, in float64; the encoder's pooler unused."""
    model = _double_model("sage", actf if actf != "tanh" else None)
    assert model.head_layout == "sage" and model.pooler_actf == actf and not model.uses_encoder_pooler
    assert {"pooler.dense.weight", "encoder.pooler.dense.weight"} <= set(model.state_dict())
    assert not any(".pooler." in n for n in model.state_dict() if n.startswith("heads."))
    ids, mask, types = batch()
    w, b = model.pooler.dense.weight, model.pooler.dense.bias
    with torch.no_grad():
        pooled = ACTS[actf](_cls_states(model, ids, mask, types) @ w.T + b)
        for task in ("cls", "reg"):
            head = model.heads[task].proj
            expected = pooled @ head.weight.T + head.bias
            expected = expected if task == "cls" else expected[:, 0]
            torch.testing.assert_close(model(task, ids, mask, types), expected, rtol=0, atol=1e-12)
        rids, rmask, rtypes = batch(2, 8, k=3)
        flat = [t.reshape(6, 8) for t in (rids, rmask, rtypes)]
        rank = (ACTS[actf](_cls_states(model, *flat) @ w.T + b) @ model.heads["rank"].proj.weight.T
                + model.heads["rank"].proj.bias).reshape(2, 3)
        torch.testing.assert_close(model("rank", rids, rmask, rtypes), rank, rtol=0, atol=1e-12)


def test_mtdnn_layout_gives_each_task_its_own_pooler_with_no_activation_by_default():
    """MT-DNN's Sequential(Pooler, Linear) per task; its activation lookup falls back to none, so the default is
    linear; --pooler_actf gelu gives the exact (erf) GELU."""
    for actf in ("linear", "gelu"):
        model = _double_model("mtdnn", None if actf == "linear" else actf)
        assert model.pooler is None and model.pooler_actf == actf
        ids, mask, types = batch()
        with torch.no_grad():
            cls = _cls_states(model, ids, mask, types)
            for task in ("cls", "reg"):
                pooler, proj = model.heads[task].pooler.dense, model.heads[task].proj
                expected = ACTS[actf](cls @ pooler.weight.T + pooler.bias) @ proj.weight.T + proj.bias
                expected = expected if task == "cls" else expected[:, 0]
                torch.testing.assert_close(model(task, ids, mask, types), expected, rtol=0, atol=1e-12)
    assert {"heads.cls.pooler.dense.weight", "heads.cls.proj.weight"} <= set(model.state_dict())


def test_layout_dropouts_sit_where_the_authors_put_them():
    """sage: --dropout_p on the pooler's input, the task's before its linear layer; mtdnn: the task's on its
    pooler's input, none between pooler and linear layer."""
    defs = tasks(make_task("cls", "Classification", n_class=3, dropout_p=0.3))
    sage = MTDNNModel(tiny_bert(), defs, head_layout="sage", pooler_dropout_p=0.2)
    assert (sage.pooler.dropout.p, sage.heads["cls"].dropout.p) == (0.2, 0.3)
    mtdnn = MTDNNModel(tiny_bert(), defs, head_layout="mtdnn", pooler_dropout_p=0.2)
    assert (mtdnn.heads["cls"].pooler.dropout.p, mtdnn.heads["cls"].dropout.p) == (0.3, 0.0)
    assert mtdnn.task_defs["cls"].dropout_p == 0.3


def test_layout_poolers_and_heads_start_from_torchs_default_init():
    """The authors' nn.Linear layers keep torch's init (uniform in ±1/sqrt(fan_in), non-zero biases); the encoder
    layout's heads keep the encoder's normal(0, 0.02) and zero bias."""
    bound = 1 / math.sqrt(32)
    for layout in ("sage", "mtdnn"):
        model = MTDNNModel(tiny_bert(), THREE_TASKS, head_layout=layout)
        pooler = model.pooler if layout == "sage" else model.heads["cls"].pooler
        for layer in (pooler.dense, model.heads["cls"].proj):
            assert layer.bias.abs().max() <= bound and layer.bias.abs().max() > 0
            assert layer.weight.abs().max() <= bound and layer.weight.std() > 0.6 * bound / math.sqrt(3)
    encoder = MTDNNModel(tiny_bert(), THREE_TASKS)
    assert torch.equal(encoder.heads["cls"].proj.bias, torch.zeros(3))


def test_layout_poolers_and_heads_fall_in_the_plain_sage_groups():
    """As the authors' pooler and scoring_list: common groups, even for tasks named like the SAGE patterns."""
    defs = tasks(make_task("output", "Regression"), make_task("intermediate", "Classification", n_class=2),
                 make_task("attention", "Classification", n_class=2))
    for layout in ("sage", "mtdnn"):
        model = MTDNNModel(tiny_bert(), defs, head_layout=layout)
        outside = [n for n, _ in model.named_parameters() if not n.startswith("encoder.")]
        assert len(outside) == (12 if layout == "mtdnn" else 8) and not any(_is_sage(n) for n in outside)
        by_id = {id(p): n for n, p in model.named_parameters()}
        plain = {by_id[id(p)] for g in sage_param_groups(model) if not g["sage"] for p in g["params"]}
        assert set(outside) <= plain


def test_encoder_layout_refuses_another_pooler_activation():
    with pytest.raises(ValueError, match=r"--pooler_actf relu: the encoder head layout reads the encoder's own "
                                         r"pooler, which applies tanh; use --head_layout sage or mtdnn"):
        MTDNNModel(tiny_bert(), THREE_TASKS, head_layout="encoder", pooler_actf="relu")
    with pytest.raises(ValueError, match=r"--head_layout: unknown layout 'san'"):
        MTDNNModel(tiny_bert(), THREE_TASKS, head_layout="san")


@pytest.mark.parametrize("layout", ["encoder", "sage", "mtdnn"])
def test_parameters_a_task_never_reads_get_no_gradient(layout):
    """What a backward of one task's loss gives a gradient is exactly parameters_used_by (which --compile's
    stable_grads zero-fills): never the encoder's pooler under sage/mtdnn, never another task's head."""
    defs = tasks(make_task("cls", "Classification", n_class=3), make_task("reg", "Regression"))
    model = MTDNNModel(tiny_bert(**NO_DROPOUT), defs, head_layout=layout)
    ids, mask, types = batch()
    model("cls", ids, mask, types).sum().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    used = {id(p) for p in model.parameters_used_by("cls")}
    assert with_grad == {n for n, p in model.named_parameters() if id(p) in used}
    assert not any(n.startswith("heads.reg.") for n in with_grad)
    assert any(n.startswith("encoder.pooler.") for n in with_grad) == (layout == "encoder")


def _albert(**overrides):
    from transformers import AlbertConfig
    kw = dict(vocab_size=128, embedding_size=16, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
              intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
              attention_probs_dropout_prob=0.0)
    kw.update(overrides)
    torch.manual_seed(0)
    return AutoModel.from_config(AlbertConfig(**kw)).eval()


def test_num_hidden_layers_on_shared_layer_albert_runs_the_first_repetitions():
    """ALBERT's 4 layers are one shared layer run 4 times, and count as 4 layers, not 1.
    Keeping 2 must give exactly the network with num_hidden_layers 2 and the same weights."""
    from mt_dnn.model import keep_first_layers
    short = _albert()
    keep_first_layers(short, 2)
    reference = _albert(num_hidden_layers=2)
    reference.load_state_dict(short.state_dict())
    ids = torch.randint(5, 128, (3, 9))
    got = short(input_ids=ids).last_hidden_state
    assert short.config.num_hidden_layers == 2
    assert torch.equal(got, reference(input_ids=ids).last_hidden_state)
    full = _albert()
    assert not torch.allclose(got, full(input_ids=ids).last_hidden_state)  # 2 repetitions are not 4
    with pytest.raises(ValueError, match=r"^--num_hidden_layers: the encoder has 4 layers, cannot keep 5$"):
        keep_first_layers(_albert(), 5)
    with pytest.raises(ValueError) as info:
        keep_first_layers(_albert(num_hidden_groups=2), 3)
    assert str(info.value) == ("--num_hidden_layers: the encoder's 4 layers share 2 weight groups; keeping 3 would "
                               "regroup them, so only the whole encoder (-1) is supported")
    keep_first_layers(_albert(num_hidden_groups=2), 4)  # all of them: nothing regrouped


def test_encoders_without_absolute_positions_have_no_position_limit():
    """XLNet reports max_position_embeddings -1: "has -1 positions; use --max_seq_len -1 or less" was the line."""
    from transformers import XLNetConfig
    from data_utils.shard_checks import encoder_limits, encoder_positions
    config = XLNetConfig(vocab_size=128, d_model=32, n_layer=1, n_head=2, d_inner=64)
    assert config.max_position_embeddings == -1
    assert encoder_positions(config) is None and encoder_limits(config, "xlnet").max_positions is None
