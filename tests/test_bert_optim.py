"""SAGE optimizers: parity with the plain spec re-implementation, implementation parity, torch conventions."""
from __future__ import annotations

import copy
import io
import logging
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from torch import nn
from transformers import AutoModel

from conftest import tiny_bert_config
from module.bert_optim import (OPTIMIZERS, AdamaxSAGE, AdamWSAGE, SGDSAGE, build_optimizer, build_schedule,
                               sage_param_groups)
from sage_kernel_cases import HostReads, assert_half_follows_float64, run_half_pair
from sage_reference import ReferenceOptimizer, linear_decay, warmup_linear

STEPS = 12
LR = 2e-3
ALGO = {"usadamax": "adamax", "adamax": "adamax", "usadamw": "adamw", "adamw": "adamw",
        "usadam": "adam", "adam": "adam", "ussgd": "sgd", "sgd": "sgd"}
SAGE_FAMILY = [n for n in OPTIMIZERS if n in ALGO]  # radam is plain torch.optim.RAdam: no spec to compare with
SCHEDULE = {"adamax": "warmup_linear", "adamw": "warmup_linear", "adam": "linear", "sgd": "linear"}
REF_SCHEDULE = {"warmup_linear": warmup_linear, "linear": linear_decay}
EXTRA = {"sgd": dict(momentum=0.9)}
SAGE_NAMES = ("attention.self", "attention.output.dense", "output.dense", "intermediate.dense")
NO_DECAY_NAMES = ("bias", "gamma", "beta", "LayerNorm.bias", "LayerNorm.weight")


class TinyBert(nn.Module):
    """A 2-layer random BERT (float64) with a frozen embedding table and a zero-size SAGE parameter."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.bert = AutoModel.from_config(tiny_bert_config()).double().eval()  # no dropout: deterministic
        self.bert.embeddings.word_embeddings.weight.requires_grad_(False)
        self.empty = nn.Module()
        self.empty.register_parameter("weight", nn.Parameter(torch.zeros(0, 4, dtype=torch.float64)))
        # Names the reference grouping must see as SAGE: make the empty tensor one of them.
        self.bert.encoder.layer[0].output.dense.register_parameter(
            "empty", self.empty.weight)

    def loss(self, step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(100 + step)
        ids = torch.randint(1, 128, (4, 10), generator=g)
        target = torch.randn(4, 10, 32, generator=g, dtype=torch.float64)
        out = self.bert(input_ids=ids).last_hidden_state
        return (out - target).pow(2).mean() + self.empty.weight.sum()  # the empty tensor gets a (0, 4) grad


def named_params(model: TinyBert):
    return [(n, p) for n, p in model.bert.named_parameters()]


def drop_some_grads(model: TinyBert, step: int) -> None:
    """None gradients at some steps: one SAGE weight at steps 3 and 7, one common weight at step 5."""
    if step in (3, 7):
        model.bert.encoder.layer[1].intermediate.dense.weight.grad = None
    if step == 5:
        model.bert.pooler.dense.weight.grad = None


def train(model: TinyBert, opt, sched) -> None:
    for step in range(STEPS):
        opt.zero_grad(set_to_none=True)
        model.loss(step).backward()
        drop_some_grads(model, step)
        opt.step()
        if sched is not None:
            sched.step()


def reference_groups(model: TinyBert, wd: float, sage_on: bool):
    """The authors' grouping, written independently: (params, sage, weight_decay) tuples."""
    groups = {}
    for name, p in named_params(model):
        is_sage = sage_on and any(s in name for s in SAGE_NAMES)
        decay = 0.0 if any(n in name for n in NO_DECAY_NAMES) else wd
        groups.setdefault((is_sage, decay), []).append(p)
    return [(ps, s, d) for (s, d), ps in groups.items()]


def run_ours(name, formula=None, impl="forloop", lr=LR, fused_backend=None):
    model = TinyBert()
    kw = dict(lr=lr, beta3=0.75, **EXTRA.get(ALGO[name], {}))
    if formula:
        kw["formula"] = formula
    kw.update(foreach=(impl == "foreach"), fused=(impl == "fused") or None)
    opt = build_optimizer(name, sage_param_groups(named_params(model), weight_decay=0.01), **kw)
    opt.fused_backend = fused_backend
    sched = build_schedule(opt, SCHEDULE[ALGO[name]], STEPS, warmup=0.1)
    train(model, opt, sched)
    return model, opt


def run_reference(name, formula, lr=LR):
    model = TinyBert()
    algo = ALGO[name]
    default_formula = "reference" if algo in ("adamax", "adamw") else "paper"
    ref = ReferenceOptimizer(algo, reference_groups(model, 0.01, name.startswith("us")), lr,
                             REF_SCHEDULE[SCHEDULE[algo]], STEPS, 0.1, beta3=0.75,
                             formula=formula or default_formula, **EXTRA.get(algo, {}))
    train(model, ref, None)
    return model


def params_of(model):
    return {n: p.detach().clone() for n, p in model.bert.named_parameters()}


def assert_same(a: dict, b: dict, atol: float, rtol: float = 0.0):
    for n in a:
        torch.testing.assert_close(a[n], b[n], atol=atol, rtol=rtol, msg=lambda m: f"{n}: {m}")


CASES = [(n, None) for n in SAGE_FAMILY] + [
    ("usadamax", "paper"), ("usadamw", "paper"), ("usadam", "reference"), ("ussgd", "reference"),
] + [("usadamax", f"ablation{i}") for i in range(1, 6)] + [("usadam", f"ablation{i}") for i in (1, 2, 4)]


@pytest.mark.parametrize("name,formula", CASES)
def test_matches_spec_reimplementation(name, formula):
    # ablation4 multiplies steps by up to 1/ε = 1e6: scale lr down so the run is not chaotic.
    lr = LR * 1e-6 if formula == "ablation4" else LR
    ours, _ = run_ours(name, formula, lr=lr)
    ref = run_reference(name, formula, lr=lr)
    start = TinyBert().bert.parameters()
    moved = max((p - q).abs().max().item() for p, q in zip(ours.bert.parameters(), start) if p.numel())
    assert moved > 1e-5, "the optimizer did not move the model"
    assert_same(params_of(ours), params_of(ref), atol=1e-12, rtol=1e-10)


FUSED_CASES = [("usadamax", None), ("usadamax", "paper"), ("usadamw", None), ("adamax", None),
               ("usadam", None), ("ussgd", None)]


@pytest.mark.parametrize("name,formula", [(n, None) for n in SAGE_FAMILY] + [("usadamw", "ablation2")])
def test_foreach_equals_forloop(name, formula):
    a, opt_a = run_ours(name, formula, "forloop")
    b, opt_b = run_ours(name, formula, "foreach")
    assert_same(params_of(a), params_of(b), atol=1e-12)
    for (pa, sa), (pb, sb) in zip(opt_a.state.items(), opt_b.state.items()):
        for key in sa:
            torch.testing.assert_close(sa[key], sb[key], atol=1e-12, rtol=0)


@pytest.mark.compile
@pytest.mark.parametrize("cpu_kernel", [True, False], ids=["C-kernel", "torch.compile"])
@pytest.mark.parametrize("name,formula", FUSED_CASES)
def test_fused_equals_forloop(name, formula, cpu_kernel):
    """Both CPU fused paths: the C kernel (float32/float64) and torch.compile (bfloat16/float16, fallback)."""
    a, _ = run_ours(name, formula, "forloop")
    b, _ = run_ours(name, formula, "fused", fused_backend="c" if cpu_kernel else "compiled")
    assert_same(params_of(a), params_of(b), atol=1e-12)


def test_skipped_and_frozen_params():
    model, opt = run_ours("usadamax")
    frozen = model.bert.embeddings.word_embeddings.weight
    assert frozen not in opt.state and torch.equal(frozen, TinyBert().bert.embeddings.word_embeddings.weight)
    dropped = model.bert.encoder.layer[1].intermediate.dense.weight
    assert opt.state[dropped]["step"].item() == STEPS - 2  # skipped at steps 3 and 7
    assert model.empty.weight.numel() == 0 and opt.state[model.empty.weight]["step"].item() == STEPS


def test_reference_zero_weights_never_move():
    """Authors' factor |I-Ī|/(Ī+ε²) is 0 for a weight that is exactly 0: BERT's zero-initialised biases stay 0."""
    model, _ = run_ours("usadamax")
    bias = model.bert.encoder.layer[0].intermediate.dense.bias
    assert torch.count_nonzero(bias) == 0
    model_paper, _ = run_ours("usadamax", "paper")
    assert torch.count_nonzero(model_paper.bert.encoder.layer[0].intermediate.dense.bias) > 0


def test_usadamw_sage_params_do_not_move_on_step_one():
    model = TinyBert()
    before = params_of(model)
    opt = build_optimizer("usadamw", sage_param_groups(named_params(model)), lr=1e-2)
    model.loss(0).backward()
    opt.step()
    after = params_of(model)
    sage_w = "encoder.layer.0.attention.self.query.weight"
    # Only the decoupled decay acts on step 1 for SAGE parameters (Î₁ = I₁ makes U = 0).
    torch.testing.assert_close(after[sage_w], before[sage_w] * (1 - 1e-2 * 0.01), atol=1e-15, rtol=0)
    common_w = "embeddings.position_embeddings.weight"
    assert not torch.allclose(after[common_w], before[common_w] * (1 - 1e-2 * 0.01), atol=1e-9, rtol=0)


@pytest.mark.parametrize("impl", ["forloop", "foreach"])
@pytest.mark.parametrize("name", ["usadamax", "usadamw", "ussgd"])
def test_state_dict_round_trip_resumes_exactly(name, impl, tmp_path):
    def make():
        model = TinyBert()
        opt = build_optimizer(name, sage_param_groups(named_params(model)), lr=LR, foreach=impl == "foreach",
                              **EXTRA.get(ALGO[name], {}))
        return model, opt, build_schedule(opt, SCHEDULE[ALGO[name]], STEPS, 0.1)

    def steps(model, opt, sched, rng):
        for step in rng:
            opt.zero_grad()
            model.loss(step).backward()
            opt.step()
            sched.step()

    model, opt, sched = make()
    steps(model, opt, sched, range(STEPS))
    expected = params_of(model)

    model, opt, sched = make()
    steps(model, opt, sched, range(5))
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, path)
    ckpt = torch.load(path, weights_only=True)
    model2, opt2, sched2 = make()
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    sched2.load_state_dict(ckpt["sched"])
    steps(model2, opt2, sched2, range(5, STEPS))
    assert_same(params_of(model2), expected, atol=0.0)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_loss_goes_down_on_regression(name):
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = x @ torch.randn(8, 1) + 0.5
    net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    # SAGE on the hidden layer only (named like a BERT FFN), the output layer plain: both group kinds work.
    named = [(("intermediate.dense." if i < 2 else "head.") + n, p)
             for i, (n, p) in enumerate(net.named_parameters())]
    lr = 0.05 if "sgd" in name else 0.02
    opt = build_optimizer(name, sage_param_groups(named, weight_decay=0.0), lr=lr, **EXTRA.get(ALGO.get(name), {}))
    first = None
    for _ in range(150):
        opt.zero_grad()
        loss = nn.functional.mse_loss(net(x), y)
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert loss.item() < 0.2 * first, (first, loss.item())


@pytest.mark.parametrize("name", ["usadamax", "usadamw", "usadam", "ussgd"])
def test_group_with_zero_lr_stays_put(name):
    model = TinyBert()
    groups = sage_param_groups(named_params(model))
    groups[0]["lr"] = 0.0
    opt = build_optimizer(name, groups, lr=LR, weight_decay=0.0, **EXTRA.get(ALGO[name], {}))
    frozen = [p.detach().clone() for p in groups[0]["params"]]
    for step in range(3):
        opt.zero_grad()
        model.loss(step).backward()
        opt.step()
    for p, q in zip(groups[0]["params"], frozen):
        assert torch.equal(p, q)


def test_param_groups_follow_reference_names():
    model = TinyBert()
    groups = {g["name"]: g for g in sage_param_groups(named_params(model))}
    ids = {k: {id(p) for p in g["params"]} for k, g in groups.items()}
    by_name = dict(named_params(model))
    assert id(by_name["encoder.layer.0.attention.self.query.weight"]) in ids["sage_decay"]
    assert id(by_name["encoder.layer.1.output.dense.bias"]) in ids["sage_no_decay"]
    assert id(by_name["encoder.layer.0.output.LayerNorm.weight"]) in ids["common_no_decay"]
    assert id(by_name["pooler.dense.weight"]) in ids["common_decay"]
    assert groups["sage_decay"]["weight_decay"] == 0.01 and groups["sage_no_decay"]["weight_decay"] == 0.0
    assert groups["sage_decay"]["sage"] and not groups["common_decay"]["sage"]
    custom = {g["name"] for g in sage_param_groups(named_params(model), sage_patterns=("pooler",))}
    assert custom == {"sage_decay", "sage_no_decay", "common_decay", "common_no_decay"}
    plain = build_optimizer("adamax", sage_param_groups(named_params(model)))
    assert not any(g["sage"] for g in plain.param_groups)


def test_schedule_offsets_and_warmup_linear_discontinuity():
    p = [nn.Parameter(torch.zeros(1))]
    adamax = AdamaxSAGE(p, lr=1.0)
    sched = build_schedule(adamax, "warmup_linear", total_steps=10, warmup=0.2)
    lrs = []
    for _ in range(5):
        lrs.append(adamax.param_groups[0]["lr"])
        sched.step()
    assert lrs == pytest.approx([0.0, 0.5, 0.8, 0.7, 0.6])  # x=0.2 jumps from 1.0 to 1-0.2
    adamw = AdamWSAGE([nn.Parameter(torch.zeros(1))], lr=1.0)
    assert build_schedule(adamw, "warmup_linear", 10, 0.2).get_last_lr() == pytest.approx([0.5])
    lin = build_schedule(SGDSAGE([nn.Parameter(torch.zeros(1))], lr=1.0), "linear", 10, 0.0)
    assert lin.get_last_lr() == pytest.approx([1.0])



def _lrs(optimizer, name: str, total: int, warmup: float, steps: int) -> list[float]:
    sched = build_schedule(optimizer, name, total_steps=total, warmup=warmup)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        sched.step()
    return lrs


def test_warmup_cosine_is_the_0_6_formula_with_its_jump_at_the_warmup():
    """pytorch-pretrained-bert 0.6: x/warmup while x < warmup, else 0.5(1 + cos(pi x)) over the whole progress.
    With 10 steps and warmup 0.2 the cosines are of multiples of pi/10: cos(pi/5) = (1 + sqrt5)/4,
    cos(2pi/5) = (sqrt5 - 1)/4, cos(3pi/10) = sqrt((5 - sqrt5)/8), cos(pi/10) = sqrt((5 + sqrt5)/8)."""
    r5 = 5 ** 0.5
    c36, c72, c54, c18 = (1 + r5) / 4, (r5 - 1) / 4, ((5 - r5) / 8) ** 0.5, ((5 + r5) / 8) ** 0.5
    by_hand = [0.0, 0.5,                        # x = 0, 0.1: warmup, x/0.2
               (1 + c36) / 2,                   # x = 0.2: 0.9045, down from ~1 just before (the jump)
               (1 + c54) / 2, (1 + c72) / 2,    # x = 0.3, 0.4
               0.5,                             # x = 0.5: cos(pi/2) = 0
               (1 - c72) / 2, (1 - c54) / 2, (1 - c36) / 2, (1 - c18) / 2,
               0.0]                             # x = 1
    adamax = AdamaxSAGE([nn.Parameter(torch.zeros(1))], lr=1.0)  # evaluated before its step count moves
    assert _lrs(adamax, "warmup_cosine", 10, 0.2, 11) == pytest.approx(by_hand, abs=1e-12)
    adamw = AdamWSAGE([nn.Parameter(torch.zeros(1))], lr=1.0)  # after: one step ahead
    assert _lrs(adamw, "warmup_cosine", 10, 0.2, 10) == pytest.approx(by_hand[1:], abs=1e-12)
    from module.bert_optim import warmup_cosine
    assert warmup_cosine(0.0999999, 0.1) == pytest.approx(0.999999) and warmup_cosine(0.1, 0.1) == pytest.approx(
        (1 + ((5 + r5) / 8) ** 0.5) / 2)  # the jump at x = warmup: ~1 -> 0.5(1 + cos(pi/10)) = 0.9755
    assert warmup_cosine(0.5, 0.0) == pytest.approx(0.5)  # no warmup: the cosine from step 0


@pytest.mark.parametrize("total,warmup", [(10, 0.2), (25, 0.1), (7, 0.1), (5, 0.0), (3, 0.3)])
def test_constant_is_the_0_6_warmup_constant_at_every_step(total, warmup):
    """The 0.6 name warmup_constant selects transformers' constant schedule: the same value at every step,
    including a warmup shorter than one step (7 x 0.1) and none at all."""
    def warmup_constant(x, w):  # pytorch-pretrained-bert 0.6, written out
        return x / w if x < w else 1.0
    sgd = SGDSAGE([nn.Parameter(torch.zeros(1))], lr=1.0)
    expected = [warmup_constant(step / total, warmup) for step in range(total + 1)]
    assert _lrs(sgd, "constant", total, warmup, total + 1) == pytest.approx(expected, abs=1e-12)

@pytest.mark.parametrize("kwargs,message", [
    (dict(lr=-1.0), "invalid learning rate"),
    (dict(eps=-1e-6), "invalid eps"),
    (dict(betas=(1.0, 0.999)), "beta1"),
    (dict(betas=(0.9, -0.1)), "beta2"),
    (dict(beta3=1.0), "beta3"),
    (dict(beta3=-0.5), "beta3"),
    (dict(weight_decay=-0.01), "weight_decay"),
    (dict(formula="sage++"), "formula"),
    (dict(foreach=True, fused=True), "foreach and fused"),
])
def test_invalid_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdamaxSAGE([nn.Parameter(torch.zeros(2))], **kwargs)


def test_invalid_group_override_and_names():
    with pytest.raises(ValueError, match="beta3"):
        AdamaxSAGE([{"params": [nn.Parameter(torch.zeros(2))], "beta3": 1.5}])
    with pytest.raises(ValueError, match="unknown optimizer 'adamq'"):
        build_optimizer("adamq", [nn.Parameter(torch.zeros(2))])
    with pytest.raises(ValueError, match="unknown schedule"):
        build_schedule(AdamaxSAGE([nn.Parameter(torch.zeros(2))]), "wamup", 10)
    with pytest.raises(ValueError, match="Nesterov"):
        SGDSAGE([nn.Parameter(torch.zeros(2))], nesterov=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_and_grad_scaler(dtype):
    torch.manual_seed(0)
    model = AutoModel.from_config(tiny_bert_config())
    opt = build_optimizer("usadamax", sage_param_groups(model), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=dtype == torch.float16)
    ids = torch.randint(1, 128, (4, 12))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(3):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=dtype):
            loss = model(input_ids=ids).last_hidden_state.float().pow(2).mean()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert "encoder.layer.0.attention.self.query.weight" in moved
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_works_as_hf_trainer_optimizer(tmp_path):
    pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate (requirements-dev.txt)")
    from transformers import BertForSequenceClassification, Trainer, TrainingArguments
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(num_labels=2))
    data = [{"input_ids": torch.randint(1, 128, (8,)), "labels": torch.tensor(i % 2)} for i in range(16)]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4,
                             report_to=[], save_strategy="no", use_cpu=True, learning_rate=1e-3)
    trainer = Trainer(model=model, args=args, train_dataset=data,
                      optimizer_cls_and_kwargs=(AdamaxSAGE, {"lr": 1e-3, "beta3": 0.8}))
    before = model.bert.encoder.layer[0].attention.self.query.weight.detach().clone()
    trainer.train()
    assert isinstance(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer")
                      else trainer.optimizer, AdamaxSAGE)
    assert not torch.equal(before, model.bert.encoder.layer[0].attention.self.query.weight)


def test_sage_stats_reports_mean_sensitivity():
    model, opt = run_ours("usadamax")
    stats = opt.sage_stats()
    ipts = torch.cat([opt.state[p]["exp_avg_ipt"].flatten() for g in opt.param_groups if g["sage"]
                      for p in g["params"] if p in opt.state])
    assert stats["sage/mean_sensitivity_ema"] == pytest.approx(ipts.mean().item())


def test_state_dict_loads_with_weights_only():
    model, opt = run_ours("usadamw")
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    assert sd["param_groups"][0]["formula"] == "reference"
    fresh = build_optimizer("usadamw", sage_param_groups(named_params(copy.deepcopy(model))))
    fresh.load_state_dict(sd)
    assert fresh.param_groups[0]["beta3"] == 0.75


def test_radam_is_torch_radam():
    """--optimizer radam (the authors' repo had it): exactly torch.optim.RAdam, weight decay per param group."""
    torch.manual_seed(0)
    net_a = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 1))
    net_b, start = copy.deepcopy(net_a), copy.deepcopy(net_a)
    named = [("intermediate.dense." + n if i < 2 else "head." + n, p)
             for i, (n, p) in enumerate(net_a.named_parameters())]
    ours = build_optimizer("radam", sage_param_groups(named, weight_decay=0.01), lr=1e-2, beta3=0.75, eps=1e-6,
                           betas=(0.9, 0.98), foreach=False)
    decay = [p for n, p in net_b.named_parameters() if "bias" not in n]
    no_decay = [p for n, p in net_b.named_parameters() if "bias" in n]
    ref = torch.optim.RAdam([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-2, eps=1e-6, betas=(0.9, 0.98))
    x, y = torch.randn(32, 6), torch.randn(32, 1)
    for _ in range(8):
        for net, opt in ((net_a, ours), (net_b, ref)):
            opt.zero_grad()
            nn.functional.mse_loss(net(x), y).backward()
            opt.step()
    for a, b in zip(net_a.parameters(), net_b.parameters()):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.equal(net_a[0].weight, start[0].weight)  # it trained
    with pytest.raises(ValueError, match="radam has no SAGE variant"):
        OPTIMIZERS["radam"][0](net_a.parameters(), sage=True)


def test_schedules_follow_transformers_with_the_step_offset():
    """Standard schedules come from transformers; AdamW's offset 1 shifts them by one step (hand-computed)."""
    import math
    lrs = {}
    for name in ("cosine", "constant", "linear"):
        opt = AdamWSAGE([nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = build_schedule(opt, name, total_steps=10, warmup=0.2)  # 2 warmup steps; count starts at 1
        lrs[name] = []
        for _ in range(4):
            lrs[name].append(opt.param_groups[0]["lr"])
            sched.step()
    assert lrs["cosine"] == pytest.approx([0.5, 1.0, 0.5 * (1 + math.cos(math.pi / 8)),
                                           0.5 * (1 + math.cos(math.pi * 2 / 8))])
    assert lrs["constant"] == pytest.approx([0.5, 1.0, 1.0, 1.0])
    assert lrs["linear"] == pytest.approx([0.5, 1.0, 7 / 8, 6 / 8])


def test_functional_entry_is_what_the_class_runs():
    """sage_adamw on plain tensor lists (torch's functional shape) equals AdamWSAGE.step."""
    from module.sage.functional import sage_adamw
    torch.manual_seed(0)
    p_cls = [nn.Parameter(torch.randn(5, 3, dtype=torch.float64)), nn.Parameter(torch.randn(4, dtype=torch.float64))]
    p_fn = [p.detach().clone() for p in p_cls]
    state = [[torch.zeros_like(p) for p in p_fn] for _ in range(3)]
    steps = [torch.tensor(0.0) for _ in p_fn]
    opt = AdamWSAGE(p_cls, lr=1e-2, weight_decay=0.1, foreach=False)
    for _ in range(3):
        grads = [torch.randn_like(p) for p in p_fn]
        for p, g in zip(p_cls, grads):
            p.grad = g.clone()
        opt.step()
        sage_adamw(p_fn, grads, *state, steps, foreach=True, lr=1e-2, decay_lr=1e-2, beta1=0.9, beta2=0.999,
                   beta3=0.75, eps=1e-6, weight_decay=0.1, formula="reference", correct_bias=True)
    for a, b in zip(p_cls, p_fn):
        torch.testing.assert_close(a.detach(), b, atol=1e-12, rtol=0)
    assert [float(s) for s in steps] == [3.0, 3.0]


def test_implementation_choice_in_one_place():
    from module.sage.dispatch import implementation_kwargs
    cpu = torch.device("cpu")
    assert implementation_kwargs("auto", cpu) == dict(foreach=None, fused=True)
    assert implementation_kwargs("forloop", cpu) == dict(foreach=False, fused=None)
    assert implementation_kwargs("foreach", cpu) == dict(foreach=True, fused=None)
    with pytest.raises(ValueError, match="unknown optimizer implementation 'fast'"):
        implementation_kwargs("fast", cpu)
    opt = AdamaxSAGE([nn.Parameter(torch.zeros(2))], fused=True)
    assert opt._step_supports_amp_scaling and not AdamaxSAGE([nn.Parameter(torch.zeros(2))])._step_supports_amp_scaling


# ----------------------------------------------------------------------------------------------------------
# AMP: torch's fused-optimizer protocol (GradScaler sets grad_scale / found_inf on the optimizer)
# ----------------------------------------------------------------------------------------------------------
AMP_CASES = [(name, impl) if impl != "fused" else pytest.param(name, impl, marks=pytest.mark.compile)
             for name, impl in [("usadamw", "forloop"), ("usadamw", "foreach"), ("usadamw", "fused"),
                                ("usadamax", "fused"), ("ussgd", "foreach"), ("usadam", "forloop")]]


def _impl_kwargs(impl):
    return dict(foreach=impl == "foreach", fused=(impl == "fused") or None)


def _state_snapshot(opt):
    return {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}


@pytest.mark.parametrize("name,impl", AMP_CASES)
def test_amp_grad_scale_equals_unscale_then_step(name, impl):
    """Scaled gradients + grad_scale give the unscaled run: parameters and every state tensor (Ī included,
    so the sensitivity saw the unscaled gradient)."""
    scale = 2.0 ** 14
    runs = []
    for protocol in (True, False):
        model = TinyBert()
        opt = build_optimizer(name, sage_param_groups(named_params(model)), lr=LR, **_impl_kwargs(impl),
                              **EXTRA.get(ALGO[name], {}))
        for step in range(3):
            opt.zero_grad()
            model.loss(step).backward()
            if protocol:
                for p in model.parameters():
                    if p.grad is not None:
                        p.grad.mul_(scale)
                opt.grad_scale, opt.found_inf = torch.tensor(scale), torch.tensor(0.0)
            opt.step()
        runs.append((model, opt))
    (a, opt_a), (b, opt_b) = runs
    assert_same(params_of(a), params_of(b), atol=1e-12)
    for sa, sb in zip(opt_a.state.values(), opt_b.state.values()):
        assert sa.keys() == sb.keys()
        for key in sa:
            torch.testing.assert_close(sa[key], sb[key], atol=1e-12, rtol=0)


@pytest.mark.parametrize("impl", ["forloop", "foreach", "fused"])
def test_amp_skipped_step_leaves_all_state_untouched(impl):
    model = TinyBert()
    opt = build_optimizer("usadamw", sage_param_groups(named_params(model)), lr=LR, **_impl_kwargs(impl))
    for step in range(2):
        opt.zero_grad()
        model.loss(step).backward()
        opt.step()
    before, state_before = params_of(model), _state_snapshot(opt)
    opt.zero_grad()
    model.loss(2).backward()
    opt.grad_scale, opt.found_inf = torch.tensor(8.0), torch.tensor(1.0)
    opt.step()
    assert_same(params_of(model), before, atol=0.0)
    after = _state_snapshot(opt)
    assert after.keys() == state_before.keys()
    for pid, s in state_before.items():
        for key, value in s.items():
            assert torch.equal(after[pid][key], value), key  # steps included


@pytest.mark.compile
def test_grad_scaler_drives_the_fused_step_without_unscaling():
    """Real GradScaler with fp16 autocast: the fused optimizer gets grad_scale/found_inf (no unscale pass) and
    matches the for-loop optimizer that GradScaler unscales first; an inf gradient skips both alike."""
    results = []
    for impl in ("fused", "forloop"):
        torch.manual_seed(0)
        model = AutoModel.from_config(tiny_bert_config())
        opt = build_optimizer("usadamax", sage_param_groups(model), lr=1e-3, **_impl_kwargs(impl))
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
        ids = torch.randint(1, 128, (4, 12), generator=torch.Generator().manual_seed(1))
        seen = []
        opt.step = _recording(opt.step, opt, seen)
        for i in range(4):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                loss = model(input_ids=ids).last_hidden_state.float().pow(2).mean()
            scaler.scale(loss).backward()
            if i == 2:
                model.encoder.layer[0].output.dense.weight.grad[0, 0] = float("inf")
            scaler.step(opt)
            scaler.update()
        results.append((model, opt, scaler, seen))
    (fused, opt_f, scaler_f, seen_f), (loop, opt_l, scaler_l, seen_l) = results
    assert seen_f == [True, True, True, True] and seen_l == [False, False, False]  # the inf step never called it
    assert scaler_f.get_scale() == scaler_l.get_scale() == 2.0 ** 9
    for (n, p), q in zip(fused.named_parameters(), loop.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=lambda m: f"{n}: {m}")
    assert all(float(s["step"]) == 3 for s in opt_f.state.values())


def _recording(step, opt, seen):
    def wrapped(*args, **kwargs):
        seen.append(hasattr(opt, "grad_scale"))
        return step(*args, **kwargs)
    return wrapped


@pytest.mark.compile
@pytest.mark.parametrize("small_numel", [0, 2000])
def test_fused_per_tensor_and_flat_paths_equal_forloop(small_numel):
    """CPU fused, torch.compile path: large tensors get a compiled call each, small ones share one flat call;
    both paths (and the mix of them, with the zero-size parameter) match the for-loop."""
    from module.sage.dispatch import CompiledBackend
    a, opt_a = run_ours("usadamw", None, "forloop")
    b, opt_b = run_ours("usadamw", None, "fused", fused_backend=CompiledBackend(small_numel=small_numel))
    sizes = [p.numel() for p in opt_b.state]
    assert any(n >= small_numel for n in sizes) and (small_numel == 0 or any(0 < n < small_numel for n in sizes))
    assert_same(params_of(a), params_of(b), atol=1e-12)
    for sa, sb in zip(opt_a.state.values(), opt_b.state.values()):
        for key in sa:
            torch.testing.assert_close(sa[key], sb[key], atol=1e-12, rtol=0)


@pytest.mark.parametrize("capability,impl", [((6, 1), "foreach"), ((7, 0), "fused"), ((7, 5), "fused"),
                                             ((8, 0), "fused"), ((9, 0), "fused")])
def test_auto_takes_the_triton_kernel_from_volta_on(capability, impl):
    """V100 (sm_70) and T4 (sm_75) get the fused Triton kernel like A100/H100 (behind the same self-check and
    foreach fallback); pre-Volta GPUs and machines without Triton get foreach."""
    from module.sage.dispatch import TritonBackend, implementation_kwargs

    class NoTriton(TritonBackend):
        def load(self):
            raise ImportError("No module named 'triton'")
    cuda = torch.device("cuda", 1)
    expected = dict(foreach=None, fused=True) if impl == "fused" else dict(foreach=True, fused=None)
    with mock.patch("torch.cuda.get_device_capability", return_value=capability) as asked:
        assert implementation_kwargs("auto", cuda, backend=TritonBackend(module=SimpleNamespace())) == expected
    asked.assert_called_once_with(cuda)
    with mock.patch("torch.cuda.get_device_capability", return_value=capability):
        assert implementation_kwargs("auto", cuda, backend=NoTriton()) == dict(foreach=True, fused=None)


# ----------------------------------------------------------------------------------------------------------
# Half-precision parameters: float32 state on every implementation
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["forloop", "foreach"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_parameters_keep_float32_state_and_follow_float64(dtype, impl):
    """The for-loop and foreach paths compute half-precision updates as the fused kernel does: float32 state,
    float32 math from θ and g, θ rounded once (float16 state would underflow and make steps ~6× too large)."""
    assert_half_follows_float64(*run_half_pair(dtype, _impl_kwargs(impl)))


def test_half_precision_state_survives_a_weights_only_round_trip(tmp_path):
    """torch's load would cast the float32 state to the parameters' float16; it stays float32, and the resumed
    run equals the uninterrupted one exactly."""
    def make():
        torch.manual_seed(0)
        ps = [nn.Parameter((torch.randn(5, 3) * 0.05).half()), nn.Parameter((torch.randn(7) * 0.05).half())]
        return ps, SGDSAGE([{"params": ps[:1]}, {"params": ps[1:], "sage": False}], lr=1e-2, momentum=0.9)

    def steps(ps, opt, rng):
        for step in rng:
            gen = torch.Generator().manual_seed(step)
            for p in ps:
                p.grad = (torch.randn(p.shape, generator=gen) * 1e-3).half()
            opt.step()

    ps, opt = make()
    steps(ps, opt, range(4))
    expected = [p.detach().clone() for p in ps]
    ps, opt = make()
    steps(ps, opt, range(2))
    torch.save({"params": [p.detach() for p in ps], "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    ps2, opt2 = make()
    with torch.no_grad():
        for p, saved in zip(ps2, ckpt["params"]):
            p.copy_(saved)
    opt2.load_state_dict(ckpt["opt"])
    for p, q in zip(ps, ps2):
        for name in ("momentum_buffer", "exp_avg_ipt"):
            if name in opt.state[p]:
                assert opt2.state[q][name].dtype == torch.float32 and torch.equal(opt2.state[q][name],
                                                                                   opt.state[p][name])
    steps(ps2, opt2, range(2, 4))
    for p, e in zip(ps2, expected):
        assert torch.equal(p, e)


# ----------------------------------------------------------------------------------------------------------
# Resume: the loader's implementation, CPU step counts, no extra host reads
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("saved_impl", ["fused", "foreach"])
def test_load_keeps_the_loaders_implementation_and_cpu_step_counts(saved_impl):
    """A checkpoint's foreach/fused flags do not override the loading optimizer's (``--optim_impl`` on resume),
    and step counts stay on the CPU even for parameters on another device (meta stands in for a GPU: torch would
    move them there for fused groups, and every step would read each back, a device sync per tensor)."""
    ps = [nn.Parameter(torch.randn(3, 4)), nn.Parameter(torch.randn(5))]
    source = AdamWSAGE(ps, lr=1e-2, foreach=True)
    for p in ps:
        p.grad = torch.randn_like(p)
    source.step()
    saved = source.state_dict()
    for group in saved["param_groups"]:
        group.update(foreach=saved_impl == "foreach" or None, fused=saved_impl == "fused" or None)
    for own in (dict(foreach=True, fused=None), dict(foreach=None, fused=True)):
        meta = [nn.Parameter(torch.empty_like(p, device="meta")) for p in ps]
        opt = AdamWSAGE(meta, lr=1e-2, **own)
        opt.load_state_dict(saved)
        assert {k: opt.param_groups[0][k] for k in own} == own
        assert opt._step_supports_amp_scaling == bool(own["fused"])
        for p in meta:
            assert opt.state[p]["step"].device.type == "cpu" and float(opt.state[p]["step"]) == 1.0
            assert opt.state[p]["exp_avg"].device.type == "meta"


def test_resumed_fused_step_reads_no_more_on_the_host_than_a_fresh_one(tmp_path):
    """Count host reads (item/float/bool/tolist) of one fused step (the C kernel on CPU) on a running optimizer
    and on one resumed from its weights-only checkpoint: the same reads, one per stepped tensor's step count,
    all of CPU tensors."""
    def make():
        model = TinyBert()
        return model, build_optimizer("usadamw", sage_param_groups(named_params(model)), lr=LR, fused=True)

    model, opt = make()
    for step in range(2):
        opt.zero_grad(set_to_none=True)
        model.loss(step).backward()
        opt.step()
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    opt.zero_grad(set_to_none=True)
    model.loss(2).backward()
    with HostReads() as fresh:
        opt.step()
    model2, opt2 = make()
    opt2.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    model2.loss(2).backward()
    with HostReads() as resumed:
        opt2.step()
    stepped = sum(p.grad is not None for g in opt2.param_groups for p in g["params"])
    assert len(fresh.devices) == stepped
    assert resumed.devices == fresh.devices and {d.type for d in resumed.devices} == {"cpu"}


@pytest.mark.parametrize("impl", ["forloop", "foreach", "fused"])
def test_half_precision_state_of_half_parameters_is_refused_in_one_line(impl):
    """The functional entries take state from the caller: float16 state for float16 parameters (it underflows)
    is refused, not used."""
    from module.sage.functional import sage_adamw
    p = [torch.zeros(3, dtype=torch.float16)]
    g = [torch.ones(3, dtype=torch.float16)]
    state, steps = [[torch.zeros(3, dtype=torch.float16)], [torch.zeros(3)], [torch.zeros(3)]], [torch.tensor(0.0)]
    with pytest.raises(ValueError, match=r"^SAGE optimizer state of torch.float16 parameters must be float32 "
                                         r"\(module.sage.updates.state_dtype\); got a torch.float16 state tensor$"):
        sage_adamw(p, g, *state, steps, **_impl_kwargs(impl), lr=1e-2, decay_lr=1e-2, beta1=0.9,
                   beta2=0.999, beta3=0.75, eps=1e-6, weight_decay=0.0, formula="reference", correct_bias=True)
    assert torch.equal(p[0], torch.zeros(3, dtype=torch.float16)) and float(steps[0]) == 0.0  # nothing moved


@pytest.mark.subprocess
def test_optimizers_import_and_schedule_without_transformers():
    """transformers is needed only by its own schedules: with it blocked, the optimizers import and step, and the
    authors' schedules build; transformers' ``linear`` names the missing import when it is built."""
    import subprocess
    import sys

    from conftest import ROOT
    code = ("import sys; sys.modules['transformers'] = None\n"
            "import torch\n"
            "import module.bert_optim as bo\n"
            "p = torch.nn.Parameter(torch.ones(3))\n"
            "opt = bo.build_optimizer('usadamax', [p])\n"
            "sched = bo.build_schedule(opt, 'warmup_linear', 10)\n"
            "p.grad = torch.ones(3); opt.step(); sched.step()\n"
            "assert 'transformers' not in {m.split('.')[0] for m in sys.modules if sys.modules[m] is not None}\n"
            "try:\n"
            "    bo.build_schedule(opt, 'linear', 10)\n"
            "except ImportError as exc:\n"
            "    print('linear:', exc)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "linear:" in done.stdout and "transformers" in done.stdout


# ----------------------------------------------------------------------------------------------------------
# The one chooser: dispatch.select, its reasons, and the public ways to pick a fused backend
# ----------------------------------------------------------------------------------------------------------
def test_the_choice_and_its_reason_are_logged_once(caplog):
    """Each (choice, device, dtype, algorithm) is logged once on ``sage.optim``, however many steps follow."""
    from module.sage import dispatch
    dispatch.reset_self_checks()
    with caplog.at_level(logging.INFO, logger="sage.optim"):
        for _ in range(3):
            run_ours("usadamax", None, "foreach")
    records = [r.getMessage() for r in caplog.records if r.name == "sage.optim"]
    assert records == ["optimizer step (adamax cpu): foreach (requested)"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sage.optim"):
        for _ in range(2):
            run_ours("usadamax", None, "fused", fused_backend="c")
    records = [r.getMessage() for r in caplog.records if r.name == "sage.optim"]
    assert records == ["optimizer step (adamax cpu): fused (requested)",
                       "optimizer step (adamax cpu torch.float64): fused, c backend (requested)"]


def test_auto_on_sharded_parameters_is_foreach_and_radam_leaves_fused_to_torch():
    """The FSDP rule and RAdam's flag mapping are select's: auto on sharded parameters runs foreach; RAdam,
    which has no fused step, leaves a fused request to torch's own default (foreach=None)."""
    from module.sage.dispatch import implementation_kwargs, select
    cpu = torch.device("cpu")
    assert implementation_kwargs("auto", cpu, sharded=True) == dict(foreach=True, fused=None)
    assert implementation_kwargs("fused", cpu, sharded=True) == dict(foreach=None, fused=True)
    assert select("fused", fused_supported=False).impl == "default"
    p = nn.Parameter(torch.zeros(2))
    assert OPTIMIZERS["radam"][0]([p], fused=True).defaults["foreach"] is None
    assert OPTIMIZERS["radam"][0]([p], foreach=False).defaults["foreach"] is False
    assert OPTIMIZERS["radam"][0]([p], foreach=True).defaults["foreach"] is True


def test_fused_backend_from_the_environment(monkeypatch):
    """$SAGE_FUSED_BACKEND picks the backend of optimizers whose ``fused_backend`` is unset; an unknown name
    is one line naming the variable; the attribute wins over the variable."""
    from module.sage.dispatch import select
    cpu = torch.device("cpu")
    assert select("fused", cpu, torch.float64).backend.name == "c"
    monkeypatch.setenv("SAGE_FUSED_BACKEND", "compiled")
    assert select("fused", cpu, torch.float64).backend.name == "compiled"
    assert select("fused", cpu, torch.float64, backend="c").backend.name == "c"
    monkeypatch.setenv("SAGE_FUSED_BACKEND", "cuda")
    with pytest.raises(ValueError, match=r"^\$SAGE_FUSED_BACKEND: unknown fused backend 'cuda'; expected one of "
                                         r"triton, c, compiled$"):
        select("fused", cpu, torch.float64)
    opt = AdamaxSAGE([nn.Parameter(torch.zeros(2))], fused=True)
    assert opt.fused_backend is None and "fused_backend" not in opt.state_dict()["param_groups"][0]
