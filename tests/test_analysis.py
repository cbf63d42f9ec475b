"""analysis/: block naming, sensitivity accumulation vs a by-hand loop, one-shot pruning counts and choice, and
the deterministic two-spiral generator. The CLI and figures are in test_analysis_cli.py."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import AutoModel

from analysis import spiral
from mt_dnn.blocks import ATTENTION, FFN, Block, block_of, layer_index, prunable
from analysis.pruning import apply_pruning, prune_order, pruned_count, pruning_curve
from analysis.sensitivity import Summary, accumulate_sensitivity, sample_per_layer, select_params
from conftest import tiny_bert_config
from data_utils.task_def import DataFormat, TaskDef, TaskType
from mt_dnn.model import MTDNNModel


def tiny_model(seed: int = 0) -> MTDNNModel:
    torch.manual_seed(seed)
    encoder = AutoModel.from_config(tiny_bert_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    td = TaskDef(name="cls", task_type=TaskType.Classification, data_format=DataFormat.PremiseOnly, n_class=2,
                 labels=("a", "b"), metric_meta=("ACC",), loss="CeCriterion", dropout_p=0.0)
    return MTDNNModel(encoder, {"cls": td})


def random_batches(n: int, seed: int = 0) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(5, 120, (4, 9), generator=gen)
        mask = torch.ones_like(ids)
        mask[0, 6:] = 0
        out.append({"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 2, (4,), generator=gen)})
    return out


def loss_fn(model):
    return lambda b: model.loss("cls", model("cls", b["input_ids"], b["attention_mask"]), b["labels"])


# ---------------------------------------------------------------------------------------------------- blocks
@pytest.mark.parametrize("name, block", [
    ("encoder.encoder.layer.3.attention.self.query.weight", Block(3, ATTENTION)),
    ("encoder.encoder.layer.3.attention.output.dense.bias", Block(3, ATTENTION)),
    ("encoder.encoder.layer.11.intermediate.dense.weight", Block(11, FFN)),
    ("encoder.encoder.layer.0.output.dense.weight", Block(0, FFN)),
    ("encoder.encoder.layer.0.output.LayerNorm.weight", None),
    ("encoder.encoder.layer.0.attention.output.LayerNorm.bias", None),
    ("encoder.encoder.layer.2.attention.self.query_proj.weight", Block(2, ATTENTION)),  # DeBERTa
    ("encoder.embeddings.word_embeddings.weight", None),
    ("encoder.pooler.dense.weight", None),
    ("heads.cls.proj.weight", None),
    ("transformer.h.5.attn.c_attn.weight", Block(5, ATTENTION)),  # GPT-2
    ("transformer.h.5.mlp.c_fc.weight", Block(5, FFN)),
    ("transformer.h.5.ln_1.weight", None),
    ("encoder.block.1.layer.0.SelfAttention.q.weight", Block(1, ATTENTION)),  # T5
    ("encoder.block.1.layer.1.DenseReluDense.wi.weight", Block(1, FFN)),
    ("decoder.layers.4.self_attn.k_proj.weight", Block(4, ATTENTION)),  # fairseq / BART
    ("decoder.layers.4.fc2.weight", Block(4, FFN)),
])
def test_block_of_names(name, block):
    assert block_of(name) == block


def test_every_tiny_bert_layer_weight_has_a_block_and_keys_read_well():
    model = tiny_model()
    blocks = {block_of(n) for n, _ in model.named_parameters()} - {None}
    assert blocks == {Block(i, k) for i in range(2) for k in (ATTENTION, FFN)}
    assert Block(1, FFN).key == "layer1.ffn"
    assert layer_index("encoder.encoder.layer.1.output.LayerNorm.weight") == 1
    assert layer_index("encoder.pooler.dense.weight") is None


def test_prunable_excludes_embeddings_heads_biases_and_norms():
    names = {n for n, p in tiny_model().named_parameters() if prunable(n, p.ndim)}
    assert names and all(n.endswith(".weight") for n in names)
    assert not any("embeddings" in n or n.startswith("heads.") or "LayerNorm" in n for n in names)
    assert "encoder.pooler.dense.weight" in names
    assert sum("encoder.encoder.layer.0." in n for n in names) == 6  # Q, K, V, attn out, FFN in, FFN out


# ---------------------------------------------------------------------------------------------------- sensitivity
def test_sensitivity_equals_a_by_hand_per_batch_loop():
    model, batches = tiny_model(), random_batches(3)
    params = select_params(model)
    got = accumulate_sensitivity(model, loss_fn(model), batches, params)
    # Independent reference: autograd.grad per batch, |θ·g| in float64, plain average.
    ref = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
    model.eval()
    for b in batches:
        grads = torch.autograd.grad(loss_fn(model)(b), list(params.values()))
        for (n, p), g in zip(params.items(), grads):
            ref[n] += (p.double() * g.double()).abs() / len(batches)
    assert list(got) == list(params)
    for n in params:
        torch.testing.assert_close(got[n].double(), ref[n], rtol=1e-5, atol=1e-12)
    assert all(p.grad is None for p in model.parameters())


def test_sensitivity_restores_training_mode_and_checks_input():
    model = tiny_model()
    model.train()
    accumulate_sensitivity(model, loss_fn(model), random_batches(1), select_params(model))
    assert model.training
    with pytest.raises(ValueError, match="no batches"):
        accumulate_sensitivity(model, loss_fn(model), [], select_params(model))


def test_a_parameter_without_gradient_counts_as_zero():
    lin = torch.nn.Linear(3, 1)
    unused = torch.nn.Parameter(torch.ones(2, 2))
    params = {"w": lin.weight, "unused": unused}
    x = torch.tensor([[1.0, 2.0, -1.0]])
    got = accumulate_sensitivity(lin, lambda b: lin(b).sum(), [x, 2 * x], params)
    # d(sum)/dw = x, so the mean of |w·x| and |w·2x| is 1.5·|w·x|
    torch.testing.assert_close(got["w"], 1.5 * (lin.weight.detach() * x).abs())
    assert torch.equal(got["unused"], torch.zeros(2, 2))


def test_sample_per_layer_sizes_membership_and_seed():
    sens = {"m.layer.0.a.weight": torch.arange(100.0).view(10, 10), "m.layer.0.b.weight": torch.arange(5.0) + 1000,
            "m.layer.1.a.weight": torch.arange(8.0) + 2000, "m.pooler.dense.weight": torch.ones(3)}
    s = sample_per_layer(sens, 20, seed=3)
    assert sorted(s) == [0, 1] and len(s[0]) == 20 and len(s[1]) == 8  # layer 1 has only 8 values
    assert set(s[0]) <= set(range(100)) | set(range(1000, 1005)) and len(set(s[0])) == 20
    np.testing.assert_array_equal(s[0], sample_per_layer(sens, 20, seed=3)[0])
    assert not np.array_equal(s[0], sample_per_layer(sens, 20, seed=4)[0])


def test_summary_statistics_by_hand():
    s = Summary.of({"a": torch.tensor([1e-9, 1e-7]), "b": torch.tensor([0.0, 1e-5])})
    assert s.count == 4 and s.median == pytest.approx(1e-9, rel=1e-6, abs=0) and s.frac_below_1e_8 == 0.5
    assert s.mean == pytest.approx((1e-9 + 1e-7 + 1e-5) / 4, rel=1e-6, abs=0)
    assert s.log10_std == pytest.approx(np.std([-9, -7, -5], ddof=1))


# ---------------------------------------------------------------------------------------------------- pruning
@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.4, 1.0])
def test_pruning_zeroes_exactly_the_lowest_round_pn(fraction):
    model = tiny_model()
    params = select_params(model)
    gen = torch.Generator().manual_seed(1)
    sens = {n: torch.rand(p.shape, generator=gen) for n, p in params.items()}
    embeddings = {n: p.detach().clone() for n, p in model.named_parameters() if "embeddings" in n}
    before = {n: p.detach().clone() for n, p in params.items()}
    total = sum(p.numel() for p in params.values())
    assert all((p != 0).all() for p in before.values())
    apply_pruning(params, prune_order(sens), pruned_count(fraction, total))
    zeroed = torch.cat([(p == 0).flatten() for p in params.values()])
    flat_sens = torch.cat([s.flatten() for s in sens.values()])
    assert int(zeroed.sum()) == round(fraction * total)
    if 0 < fraction < 1:
        assert flat_sens[zeroed].max() < flat_sens[~zeroed].min()
    kept = torch.cat([p.flatten() for p in params.values()])[~zeroed]
    torch.testing.assert_close(kept, torch.cat([p.flatten() for p in before.values()])[~zeroed], rtol=0, atol=0)
    for n, p in model.named_parameters():
        if n in embeddings:
            assert torch.equal(p, embeddings[n]), n


def test_pruning_breaks_ties_by_position_and_nests():
    sens = {"a": torch.tensor([0.5, 0.1, 0.1]), "b": torch.tensor([[0.1, 0.9]])}
    assert prune_order(sens).tolist() == [1, 2, 3, 0, 4]
    w = {"a": torch.ones(3), "b": torch.ones(1, 2)}
    apply_pruning(w, prune_order(sens), 2)
    assert w["a"].tolist() == [1, 0, 0] and w["b"].tolist() == [[1, 1]]


def test_pruning_curve_restores_weights_and_scores_each_fraction():
    w = {"x": torch.nn.Parameter(torch.tensor([4.0, 3.0, 2.0, 1.0]))}
    sens = {"x": torch.tensor([4.0, 3.0, 2.0, 1.0])}
    curve = pruning_curve(w, sens, [0.0, 0.25, 0.5], lambda: float(w["x"].sum()))
    assert curve == [(0.0, 10.0), (0.25, 9.0), (0.5, 7.0)]
    assert w["x"].tolist() == [4.0, 3.0, 2.0, 1.0]


def test_pruning_bad_inputs():
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\], got 1.5"):
        pruned_count(1.5, 10)
    with pytest.raises(ValueError, match="refusing to prune embedding parameter 'enc.embeddings.word.weight'"):
        apply_pruning({"enc.embeddings.word.weight": torch.ones(2)}, torch.arange(2), 1)
    with pytest.raises(ValueError, match="covers 3 weights, the parameters have 2"):
        apply_pruning({"w": torch.ones(2)}, torch.arange(3), 1)
    with pytest.raises(ValueError, match="same tensors"):
        pruning_curve({"w": torch.ones(2)}, {"v": torch.ones(2)}, [0.1], lambda: 0.0)


# ---------------------------------------------------------------------------------------------------- spiral
def test_two_spirals_deterministic_per_seed_and_balanced():
    x, y = spiral.two_spirals(50, seed=5)
    x2, y2 = spiral.two_spirals(50, seed=5)
    assert x.shape == (100, 2) and x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    assert not np.array_equal(x, spiral.two_spirals(50, seed=6)[0])
    assert (y == 0).sum() == (y == 1).sum() == 50
    assert np.abs(x).max() == pytest.approx(1.0)


def test_two_spirals_without_noise_are_point_reflections():
    x, y = spiral.two_spirals(40, turns=1.5, noise=0.0, seed=0)
    np.testing.assert_allclose(x[y == 1], -x[y == 0])
    r = np.hypot(x[y == 0, 0], x[y == 0, 1])
    theta = np.unwrap(np.arctan2(x[y == 0, 1], x[y == 0, 0])[np.argsort(r)])
    assert np.all(np.diff(theta) > -1e-6)  # the radius grows with the angle: one arm, no crossing
    assert (theta.max() - theta.min()) <= 1.5 * 2 * math.pi


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_spiral_training_is_reproducible_and_learns(one_thread):
    cfg = spiral.SpiralConfig(points_per_class=40, hidden=16, steps=60, lr=1e-2, seed=2)
    x, y = map(torch.from_numpy, spiral.two_spirals(40, seed=2))
    m1, l1 = spiral.train(cfg, "usadam", x, y)
    m2, l2 = spiral.train(cfg, "usadam", x, y)
    assert l1 == l2 and l1[-1] < l1[0]
    gx, gy, prob = spiral.probability_grid(m1, resolution=7)
    assert prob.shape == (7, 7) and ((prob >= 0) & (prob <= 1)).all()
    _, l3 = spiral.train(cfg, "adam", x, y)
    assert l3[0] == l1[0] and l3[-1] != l1[-1]  # same start, different optimizer


def test_spiral_config_errors():
    with pytest.raises(ValueError, match="--hidden: must be >= 1, got 0"):
        spiral.SpiralConfig(hidden=0).validate()
    with pytest.raises(ValueError, match="--beta3"):
        spiral.SpiralConfig(beta3=1.0).validate()
