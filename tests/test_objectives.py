"""SMART adversarial regularization and multi-task knowledge distillation (mt_dnn/objectives.py): each divergence
and rescaling by hand, the ascent step against finite differences, adv_alpha 0 against a plain run bit for bit,
training with SMART on (loss goes down, mixed precision, accumulation, exact resume), and distillation from
teachers' soft targets written by prepare_distillation_data.py."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

import prepare_distillation_data as distill
from conftest import tiny_bert_config
from data_utils.shards import ShardError, read_shard
from data_utils.task_def import TaskDefError, parse_task_defs
from mt_dnn import objectives as obj
from mt_dnn.config import TrainConfig, parse_args
from mt_dnn.model import MTDNNModel
from mt_dnn.settings import SmartSettings
from mt_dnn.trainer import Trainer
from workspace import TASK_YAML, config, make_workspace

LN = math.log


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory, "objectives")


# ------------------------------------------------------------------------------------------ by hand
TWO_ROWS = torch.tensor([[0.0, LN(3)], [1.0, 1.0]])   # softmax rows: [1/4, 3/4] and [1/2, 1/2]
UNIFORM = torch.zeros(2, 2)                           # [1/2, 1/2] twice: row 2 contributes 0


@pytest.mark.parametrize("name,row1", [
    ("KlCriterion", 0.5 * LN(0.5 / 0.25) + 0.5 * LN(0.5 / 0.75)),                       # KL(q || p)
    ("SymKlCriterion", 0.5 * LN(2) + 0.5 * LN(2 / 3) + 0.25 * LN(0.5) + 0.75 * LN(1.5)),  # + KL(p || q)
    ("JSCriterion", 0.5 * (0.25 * LN(0.25 / 0.375) + 0.75 * LN(0.75 / 0.625))
     + 0.5 * (0.5 * LN(0.5 / 0.375) + 0.5 * LN(0.5 / 0.625))),                             # m = [3/8, 5/8]
])
def test_each_divergence_matches_a_hand_computation(name, row1):
    got = obj.DIVERGENCES[name](TWO_ROWS, UNIFORM)
    assert got.item() == pytest.approx(row1 / 2, rel=1e-6)  # mean over the batch
    assert obj.DIVERGENCES[name](UNIFORM, UNIFORM).item() == pytest.approx(0.0, abs=1e-7)


def test_mse_divergence_and_distillation_losses_by_hand():
    assert obj.DIVERGENCES["MseCriterion"](torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0])).item() == 2.5
    logits = torch.tensor([[0.0, LN(3)]])  # probabilities [1/4, 3/4]
    assert obj.kd_kl(logits, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(LN(4), rel=1e-6)
    assert obj.kd_kl(logits, torch.tensor([[0.5, 0.5]])).item() == pytest.approx(
        0.5 * LN(0.5 / 0.25) + 0.5 * LN(0.5 / 0.75), rel=1e-6)
    assert obj.kd_mse(logits, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(0.5625, rel=1e-6)
    assert obj.kd_mse(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0])).item() == 2.5
    # a one-hot teacher's KL is exactly the hard-label cross-entropy
    x, y = torch.randn(5, 3), torch.tensor([0, 2, 1, 1, 0])
    ce = torch.nn.functional.cross_entropy(x, y)
    assert obj.kd_kl(x, torch.nn.functional.one_hot(y, 3).float()).item() == pytest.approx(ce.item(), rel=1e-6)


def test_rescale_by_hand():
    tok = torch.tensor([[[3.0, -4.0], [0.0, 1.0]]])  # (B=1, L=2, H=2)
    torch.testing.assert_close(obj.rescale(tok, "inf", 0, 0.0), torch.tensor([[[0.75, -1.0], [0.0, 1.0]]]))
    torch.testing.assert_close(obj.rescale(tok, "l2", 0, 0.0), torch.tensor([[[0.6, -0.8], [0.0, 1.0]]]))
    torch.testing.assert_close(obj.rescale(tok, "l1", 0, 0.0), torch.tensor([[[3 / 7, -4 / 7], [0.0, 1.0]]]))
    torch.testing.assert_close(obj.rescale(tok, "l2", 1, 0.0), tok / math.sqrt(26))
    torch.testing.assert_close(obj.rescale(tok, "inf", 1, 0.0), tok / 4)
    assert obj.rescale(torch.zeros(1, 2, 2), "l2", 0, 1e-6).abs().max().item() == 0.0  # eps keeps 0 finite


def test_keyed_noise_depends_on_the_example_not_on_its_batch():
    """An example's noise is the same whatever else shares its batch and however far the batch is padded;
    padding gets none. This is what lets 2 ranks reproduce 1 process."""
    mask_long = torch.tensor([[1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0]])
    alone = obj.keyed_noise(torch.zeros(1, 8, 4), mask_long[1:, :8], [22], seed=5)
    mask_short = torch.tensor([[1, 1, 1, 1, 1, 0]])
    shorter = obj.keyed_noise(torch.zeros(1, 6, 4), mask_short, [22], seed=5)
    both = obj.keyed_noise(torch.zeros(2, 8, 4), mask_long, [21, 22], seed=5)
    torch.testing.assert_close(both[1:], alone, rtol=0, atol=0)
    torch.testing.assert_close(shorter[:, :5], alone[:, :5], rtol=0, atol=0)
    assert both[0, 3:].abs().max() == 0 and both[1, 5:].abs().max() == 0
    assert both[0, :3].abs().min() > 0 and not torch.equal(both[0, :3], both[1, :3])
    other_seed = obj.keyed_noise(torch.zeros(1, 8, 4), mask_long[1:], [22], seed=6)
    assert not torch.equal(other_seed, alone)


class _OpLog(torch.utils._python_dispatch.TorchDispatchMode):
    """Every aten op run inside, with the devices and sizes of the tensors it returns."""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple[str, list[tuple[str, int]]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        flat = out if isinstance(out, (tuple, list)) else [out]
        self.ops.append((str(func), [(t.device.type, t.numel()) for t in flat if isinstance(t, torch.Tensor)]))
        return out

    def host_reads(self) -> list[str]:
        return [name for name, _ in self.ops if "_local_scalar_dense" in name or "item" in name]

    def cpu_tensors_of_at_least(self, numel: int) -> list[str]:
        return [name for name, outs in self.ops if any(d == "cpu" and n >= numel for d, n in outs)]


def test_keyed_noise_is_drawn_on_the_target_device_with_nothing_read_back():
    """On the meta device (which holds no values, so any read back to the host would fail): every tensor of noise
    size is made there and nothing is read back; the CPU holds only a table of two words per sequence."""
    mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0]])
    embeds, mask_meta = torch.zeros(2, 8, 6, device="meta"), mask.to("meta")
    with _OpLog() as ops:
        noise = obj.keyed_noise(embeds, mask_meta, [21, 22], seed=5)
    assert noise.device.type == "meta" and noise.shape == (2, 8, 6)
    assert ops.host_reads() == []
    assert ops.cpu_tensors_of_at_least(5) == []  # the (2, 2) table of words is all the CPU holds
    assert any(d == "meta" and n >= 2 * 8 * 6 for _, outs in ops.ops for d, n in outs)


def test_keyed_noise_is_standard_gaussian_and_unrelated_across_rows_positions_and_units():
    noise = obj.keyed_noise(torch.zeros(16, 64, 97), torch.ones(16, 64, dtype=torch.long), list(range(100, 116)), 3)
    flat = noise.flatten()
    assert abs(flat.mean().item()) < 0.01 and abs(flat.std().item() - 1) < 0.01
    assert abs((flat ** 4).mean().item() - 3) < 0.05  # Gaussian kurtosis

    def corr(a, b):
        return torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].abs().item()
    assert corr(noise[:-1], noise[1:]) < 0.01 and corr(noise[:, :-1], noise[:, 1:]) < 0.01
    assert corr(noise[..., :-1], noise[..., 1:]) < 0.01 and corr(noise[..., :48], noise[..., 49:]) < 0.01


def test_smart_ascent_reads_nothing_back_to_the_host():
    """The whole perturbation (noise, adv_k ascent steps through the scaler's scale, rescaling, the padding mask)
    and the divergence on the meta device: nothing read back, nothing of the batch's size on the CPU. A SMART
    micro-batch therefore queues its work on the GPU without waiting for it."""
    ids = torch.tensor([[2, 11, 40, 50, 3, 0], [2, 10, 41, 3, 0, 0]])
    mask = (ids != 0).long().to("meta")
    weight = torch.randn(5, 3, device="meta", requires_grad=True)
    embeds = torch.randn(2, 6, 5, device="meta")
    forward = lambda e: (e * mask[..., None]).sum(1) @ weight  # noqa: E731
    clean = forward(embeds).detach()
    scale = torch.full((), 1024.0, device="meta")
    mb = obj.MicroBatch(None, clean, None, None, mask, [7, 8], forward, lambda: embeds, lambda v: v * scale)
    with _OpLog() as ops:
        delta = obj.Smart(_smart_cfg(adv_k=2), torch.device("cpu")).perturbation(
            mb, embeds, clean, obj.DIVERGENCES["SymKlCriterion"])
        total = obj.DIVERGENCES["SymKlCriterion"](forward(embeds + delta), clean)
    assert delta.device.type == "meta" and total.device.type == "meta"
    assert ops.host_reads() == []
    assert ops.cpu_tensors_of_at_least(5) == []


@pytest.mark.cuda
def test_keyed_noise_on_the_gpu_equals_the_cpu_draw_and_never_syncs():
    """On a real GPU: the same noise as on the CPU (same integer hash, float32 transcendental functions within a
    few ulps), and no synchronizing call (torch's sync debug mode set to raise)."""
    mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0]])
    want = obj.keyed_noise(torch.zeros(2, 8, 6), mask, [21, 22], seed=5)
    mask_gpu = mask.cuda()
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = obj.keyed_noise(torch.zeros(2, 8, 6, device="cuda"), mask_gpu, [21, 22], seed=5)
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------ ascent step
def _tiny_model(task_yaml: str, task: str):
    torch.manual_seed(1)
    encoder = AutoModel.from_config(tiny_bert_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    defs = parse_task_defs(task_yaml)
    model = MTDNNModel(encoder, {task: defs[task]}).double().eval()
    return model, defs[task]


def _smart_cfg(**kw):
    base = dict(seed=3, adv_noise_var=0.1, adv_k=1, adv_step_size=5.0, adv_p_norm="l2", adv_norm_level=0,
                adv_epsilon=1e-6, adv_alpha=1.0)
    base.update(kw)
    return SmartSettings(**base)


@pytest.mark.parametrize("p_norm,level", [("l2", 0), ("inf", 1)])
def test_ascent_step_matches_finite_differences(p_norm, level):
    """δ1 = rescale(δ0 + η ∇_δ Σ_i D_i) with the gradient estimated by central differences, coordinate by
    coordinate, on a float64 tiny BERT: the ascent direction SMART uses is the divergence's gradient."""
    model, td = _tiny_model(TASK_YAML, "pairs")
    ids = torch.tensor([[2, 11, 40, 50, 3, 0], [2, 10, 41, 3, 0, 0]])
    mask = (ids != 0).long()
    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    with torch.no_grad():
        clean = model("pairs", **inputs)
        embeds = model.embed(ids)
    forward = lambda e: model("pairs", **inputs, inputs_embeds=e)  # noqa: E731
    cfg = _smart_cfg(adv_p_norm=p_norm, adv_norm_level=level)
    mb = obj.MicroBatch(td, clean, torch.tensor([1, 0]), None, mask, [7, 8], forward, lambda: embeds,
                        lambda v: v)
    div = obj.DIVERGENCES["SymKlCriterion"]
    got = obj.Smart(cfg, torch.device("cpu")).perturbation(mb, embeds, clean, div)

    delta0 = obj.keyed_noise(embeds, mask, [7, 8], cfg.seed) * cfg.adv_noise_var
    total = lambda d: (div(forward(embeds + d), clean) * 2).item()  # noqa: E731  (sum over the 2 rows)
    grad, h = torch.zeros_like(delta0), 1e-6
    with torch.no_grad():
        for idx in mask.nonzero().tolist():
            for k in range(embeds.shape[-1]):
                step = torch.zeros_like(delta0)
                step[idx[0], idx[1], k] = h
                grad[idx[0], idx[1], k] = (total(delta0 + step) - total(delta0 - step)) / (2 * h)
    assert grad.abs().max() > 1e-4  # the noise is large enough for a real gradient
    want = obj.rescale(delta0 + cfg.adv_step_size * grad, p_norm, level, cfg.adv_epsilon) * mask[..., None]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    # and the step climbs: the divergence at δ1 exceeds that at a same-size step along the noise alone
    with torch.no_grad():
        along_noise = obj.rescale(delta0, p_norm, level, cfg.adv_epsilon) * mask[..., None]
        assert total(got) > total(along_noise)


# ------------------------------------------------------------------------------------------ training
def _weights_equal(a: Trainer, b: Trainer) -> bool:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def test_adv_alpha_zero_gives_bit_identical_weights(ws):
    """All three task types, dropout on: SMART's extra forwards (and their dropout, on the private stream) run
    but contribute nothing, so the weights are the plain run's bit for bit; adv_alpha 1 changes them."""
    plain = Trainer(config(ws, "plain", epochs=1))
    plain.fit()
    zero = Trainer(config(ws, "alpha0", epochs=1, adv_train=True, adv_alpha=0.0))
    zero.fit()
    assert [o.name for o in zero.objectives] == ["smart"]
    assert _weights_equal(plain, zero)
    assert not torch.equal(zero.objectives[0].rng.state["cpu"], obj.Smart(zero.cfg.smart_settings(), zero.device).rng.state["cpu"])
    one = Trainer(config(ws, "alpha1", epochs=1, adv_train=True))
    one.fit()
    assert not _weights_equal(plain, one)


def test_loss_goes_down_with_smart_on(ws):
    """The regression task of test_trainer's plain check, with the SMART term (MSE divergence) in the loss."""
    trainer = Trainer(config(ws, "smart-score", train_datasets=["score"], test_datasets=["score"], epochs=6,
                             learning_rate=0.03, adv_train=True))
    trainer.fit()
    losses = [loss for _, loss in trainer.loss_log]
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3, losses


def test_smart_term_is_added_to_the_task_loss(ws):
    """The first micro-batch's loss with SMART = plain loss + adv_alpha × divergence (> 0)."""
    def first_loss(out: str, **kw) -> torch.Tensor:  # each built right before its forward: same dropout masks
        trainer = Trainer(config(ws, out, train_datasets=["pairs"], test_datasets=["pairs"], **kw))
        return trainer.micro_batch_loss(*trainer.epoch_plan(0)[0])

    base = first_loss("first-plain")
    with_term = first_loss("first-smart", adv_train=True, adv_alpha=2.0)
    half = first_loss("first-half", adv_train=True, adv_alpha=1.0)
    assert with_term.item() > base.item()
    assert (with_term - base).item() == pytest.approx(2 * (half - base).item(), abs=1e-6)  # float32 sums


@pytest.mark.parametrize("flag", ["fp16", "bf16"])
def test_smart_with_mixed_precision_accumulation_and_sage(ws, flag, monkeypatch):
    monkeypatch.setattr("mt_dnn.precision.FP16_DEVICE_TYPES", ("cuda", "cpu"))  # the GradScaler path, on CPU
    trainer = Trainer(config(ws, f"smart-{flag}", epochs=1, grad_accumulation_step=2, adv_train=True,
                             **{flag: True}))
    trainer.fit()
    assert trainer.global_step == trainer.total_steps
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    state = trainer.optimizer.state_dict()["state"]
    assert state and all(torch.isfinite(v).all() for s in state.values() for v in s.values()
                         if torch.is_tensor(v))


def test_resume_with_smart_is_exact(ws):
    """Dropout on, so the private RNG stream of SMART's forwards must come back from the checkpoint too."""
    kw = dict(save_every_steps=3, adv_train=True, adv_k=2, train_datasets=["pairs", "score"],
              test_datasets=["pairs"], epochs=1)  # 18 steps
    full = Trainer(config(ws, "smart-full", **kw))
    full.fit()
    cut = Trainer(config(ws, "smart-cut", **kw))
    cut.fit(stop_after_steps=8)
    state = torch.load(ws / "smart-cut" / "step-6" / "training_state.pt", weights_only=True)
    assert set(state["objective_ranks"][0]) == {"smart"}
    resumed = Trainer(config(ws, "smart-cut", resume=True, **kw))
    resumed.fit()
    assert resumed.global_step == full.global_step
    assert _weights_equal(full, resumed)


def test_smart_and_distillation_flags_take_effect_without_warnings(capsys):
    cfg = parse_args(["--train_datasets", "rte", "--adv_train", "--adv_opt", "1", "--adv_norm_level", "1",
                      "--adv_p_norm", "l2", "--adv_alpha", "3", "--adv_k", "2", "--adv_step_size", "1e-3",
                      "--adv_noise_var", "1e-4", "--adv_epsilon", "1e-7", "--mkd-opt", "1", "--kd_loss",
                      "MseCriterion"])
    assert capsys.readouterr().err == ""
    assert (cfg.adv_train, cfg.adv_opt, cfg.adv_norm_level, cfg.adv_p_norm, cfg.adv_alpha, cfg.adv_k) == \
        (True, 1, 1, "l2", 3.0, 2)
    assert (cfg.adv_step_size, cfg.adv_noise_var, cfg.adv_epsilon, cfg.mkd_opt, cfg.kd_loss) == \
        (1e-3, 1e-4, 1e-7, 1, "MseCriterion")
    default = TrainConfig(train_datasets=["rte"])  # MT-DNN's defaults
    assert (default.adv_train, default.adv_opt, default.adv_norm_level, default.adv_p_norm, default.adv_alpha,
            default.adv_k, default.adv_step_size, default.adv_noise_var, default.adv_epsilon,
            default.mkd_opt) == (False, 0, 0, "inf", 1.0, 1, 1e-5, 1e-5, 1e-6, 0)


@pytest.mark.parametrize("kw,message", [
    (dict(adv_k=0), "--adv_k: must be >= 1"),
    (dict(adv_norm_level=2), "--adv_norm_level: must be 0 (per token) or 1 (per sequence)"),
    (dict(adv_p_norm="l3"), "--adv_p_norm: must be inf, l2 or l1"),
    (dict(adv_alpha=-1.0), "--adv_alpha: must be >= 0"),
    (dict(adv_train=True, fsdp=True), "--adv_train: not available with --fsdp"),
    (dict(kd_loss="CeCriterion"), "--kd_loss: unknown loss 'CeCriterion'"),
    (dict(kd_alpha=1.5), "--kd_alpha: must be in [0, 1]"),
    (dict(mkd_opt=-1), "--mkd_opt: must be >= 0"),
])
def test_bad_objective_settings_name_the_flag(kw, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        TrainConfig(train_datasets=["rte"], **kw).validate()


def test_task_def_adv_loss_and_kd_loss_fields():
    text = TASK_YAML.replace("  split_names: [train, dev, test]\n",
                             "  split_names: [train, dev, test]\n  adv_loss: JSCriterion\n  kd_loss: MseCriterion\n")
    defs = parse_task_defs(text)
    assert (defs["pairs"].adv_loss, defs["pairs"].kd_loss) == ("JSCriterion", "MseCriterion")
    assert defs["score"].adv_loss is None and obj.adv_loss_name(defs["score"]) == "MseCriterion"
    assert obj.adv_loss_name(defs["pick"]) == "SymKlCriterion" and obj.kd_loss_name(defs["pick"]) == "KlCriterion"
    bad = TASK_YAML.replace("  metric_meta: [Pearson, Spearman]\n",
                            "  metric_meta: [Pearson, Spearman]\n  adv_loss: SymKlCriterion\n")
    with pytest.raises(TaskDefError, match=r"<string>:\d+: task 'score', field 'adv_loss': SymKlCriterion does "
                                           r"not fit a Regression task; use MseCriterion"):
        parse_task_defs(bad)
    with pytest.raises(TaskDefError, match="field 'kd_loss': unknown loss 'Nope'"):
        parse_task_defs(TASK_YAML.replace("  metric_meta: [ACC]\n", "  metric_meta: [ACC]\n  kd_loss: Nope\n"))


# ------------------------------------------------------------------------------------------ distillation
def _with_soft(src: Path, dst: Path, soft_of) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for path in src.glob("*.jsonl"):
        lines = path.read_text().splitlines()
        if path.name.endswith("_train.jsonl"):
            rows = [json.loads(line) for line in lines]
            lines = [json.dumps({**r, "soft_label": soft_of(path.name, r)}) for r in rows]
        (dst / path.name).write_text("\n".join(lines) + "\n")


def _one_hot(name: str, row: dict):
    if name.startswith("score"):
        return row["label"]
    return [1.0 if k == row["label"] else 0.0 for k in range(2 if name.startswith("pairs") else 3)]


def test_distillation_from_a_one_hot_teacher_reproduces_the_plain_run(ws):
    """Teachers that output the gold labels: (1 - a) × CE + a × KL(one-hot || p) = CE, and MSE to the gold
    value = the plain MSE, so the mixed loss is the plain loss at every logged step (all task types)."""
    _with_soft(ws / "shards", ws / "onehot", _one_hot)
    plain = Trainer(config(ws, "kd-plain", epochs=1))
    plain.fit()
    kd = Trainer(config(ws, "kd-onehot", epochs=1, data_dir=str(ws / "onehot"), mkd_opt=1, kd_alpha=0.7))
    assert [o.name for o in kd.objectives] == ["mkd"]
    kd.fit()
    assert [s for s, _ in kd.loss_log] == [s for s, _ in plain.loss_log]
    for (_, a), (_, b) in zip(plain.loss_log, kd.loss_log):
        assert b == pytest.approx(a, rel=1e-5)
    sa, sb = plain.model.state_dict(), kd.model.state_dict()
    assert max((sa[k] - sb[k]).abs().max().item() for k in sa) < 1e-4


def test_distillation_loss_mixes_soft_and_hard_targets(ws):
    """A teacher that puts all mass on the *other* class: KL(one-hot || p) is the cross-entropy against the
    flipped label, so the first micro-batch's loss is (1 - a) × CE(gold) + a × CE(flipped), each term
    computed by a plain run on its own labels (same seed, so the same dropout masks)."""
    flipped = lambda name, r: [0.0, 1.0] if r["label"] == 0 else [1.0, 0.0]  # noqa: E731
    _with_soft(ws / "shards", ws / "flip-soft", flipped)
    (ws / "flip-hard").mkdir(exist_ok=True)
    for path in (ws / "shards").glob("pairs_*.jsonl"):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        if path.name == "pairs_train.jsonl":
            rows = [{**r, "label": 1 - r["label"]} for r in rows]
        (ws / "flip-hard" / path.name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    kw = dict(train_datasets=["pairs"], test_datasets=["pairs"])
    gold = Trainer(config(ws, "mix-gold", **kw))
    task, idx = gold.epoch_plan(0)[0]
    ce_gold = gold.micro_batch_loss(task, idx).item()
    ce_flip = Trainer(config(ws, "mix-flip", data_dir=str(ws / "flip-hard"), **kw)).micro_batch_loss(task, idx).item()
    kd = Trainer(config(ws, "mix-kd", data_dir=str(ws / "flip-soft"), mkd_opt=1, kd_alpha=0.25, **kw))
    assert kd.micro_batch_loss(task, idx).item() == pytest.approx(0.75 * ce_gold + 0.25 * ce_flip, rel=1e-5)
    assert abs(ce_gold - ce_flip) > 1e-3


def test_mkd_without_soft_labels_and_bad_soft_labels_fail_with_the_file(ws, tmp_path):
    with pytest.raises(ValueError, match="--mkd_opt: no training shard in .* has soft_label"):
        Trainer(config(ws, "kd-none", mkd_opt=1))
    _with_soft(ws / "shards", tmp_path / "bad", lambda name, r: [0.5, 0.5])  # wrong size for pick and score
    with pytest.raises(ValueError, match=r"score_train.jsonl:1: soft_label of task score must be one number"):
        Trainer(config(ws, "kd-bad", data_dir=str(tmp_path / "bad"), mkd_opt=1))
    (tmp_path / "x.jsonl").write_text('{"uid": "a", "label": 1, "token_id": [1], "type_id": [0], '
                                      '"soft_label": "high"}\n')
    with pytest.raises(ShardError, match="x.jsonl:1: soft_label must be a number or a non-empty list"):
        read_shard(tmp_path / "x.jsonl")


def test_prepare_distillation_data_averages_the_teachers(ws, tmp_path, capsys):
    """Two teacher runs: each row's soft_label is the mean of their dev-style predictions (probabilities,
    values); other shards are copied; a student trains on the result with --mkd_opt."""
    teachers = []
    for seed in (1, 2):
        t = Trainer(config(ws, f"teacher{seed}", epochs=1, seed=seed, train_datasets=["pairs", "score"],
                           test_datasets=["pairs", "score"]))
        t.fit()
        teachers.append(ws / f"teacher{seed}")
    out = tmp_path / "student_data"
    code = distill.main(["--runs", *map(str, teachers), "--tasks", "pairs,score", "--data_dir",
                         str(ws / "shards"), "--output_dir", str(out), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    from mt_dnn.batcher import load_split
    from mt_dnn.evaluate import predict_split
    from mt_dnn.restore import restore
    for task in ("pairs", "score"):
        rows = read_shard(out / f"{task}_train.jsonl")
        src = read_shard(ws / "shards" / f"{task}_train.jsonl")
        assert [{k: r[k] for k in src[0]} for r in rows] == src
        per_teacher = []
        for run in teachers:
            r = restore(run / "best")
            r.model.eval()
            data = load_split(ws / "shards", r.task_defs[task], "train", 64)
            per_teacher.append(torch.tensor(predict_split(r.model, data, 16, torch.device("cpu"), r.pad_id).scores))
        want = (per_teacher[0] + per_teacher[1]) / 2
        torch.testing.assert_close(torch.tensor([r["soft_label"] for r in rows]), want, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(per_teacher[0], per_teacher[1])
        assert (out / f"{task}_dev.jsonl").read_text() == (ws / "shards" / f"{task}_dev.jsonl").read_text()
    import train as train_cli  # the student trains end to end through train.py, MT-DNN's spelling of the flag
    assert train_cli.main(["--train_datasets", "pairs,score", "--task_def", str(ws / "tasks.yml"), "--data_dir",
                           str(out), "--init_checkpoint", str(ws / "tiny-bert"), "--output_dir",
                           str(ws / "student"), "--epochs", "1", "--batch_size", "8", "--max_seq_len", "64",
                           "--optim_impl", "foreach", "--no_tensorboard", "--device", "cpu", "--mkd-opt", "1",
                           "--kd_loss", "MseCriterion"]) == 0
    log = (ws / "student" / "train.log").read_text()
    assert "--mkd_opt: distilling from soft targets on pairs, score" in log
    assert json.loads((ws / "student" / "metrics.jsonl").read_text().splitlines()[-1])["dev"]["pairs_dev"]
    assert distill.main(["--runs", str(ws / "nope"), "--tasks", "pairs", "--data_dir", str(ws / "shards"),
                         "--output_dir", str(tmp_path / "x")]) == 2
    assert "nope: neither a checkpoint folder" in capsys.readouterr().err


def test_task_def_names_are_the_registries_and_mtdnn_names_fall_back_with_a_warning(caplog):
    from data_utils.task_def import ADV_LOSSES, KD_LOSSES
    assert {n for names in ADV_LOSSES.values() for n in names} == set(obj.DIVERGENCES)
    assert {n for names in KD_LOSSES.values() for n in names} == set(obj.KD_CRITERIA)
    text = TASK_YAML.replace("  metric_meta: [ACC]\n", "  metric_meta: [ACC]\n  adv_loss: NsSymKlCriterion\n")
    import logging
    with caplog.at_level(logging.WARNING, logger="sage.task_def"):
        defs = parse_task_defs(text)
    assert defs["pick"].adv_loss == "SymKlCriterion"
    assert any("field 'adv_loss': MT-DNN's NsSymKlCriterion is not available as adv_loss here; SymKlCriterion is "
               "used" in r.getMessage() for r in caplog.records)


def test_the_grad_scalers_scale_does_not_change_the_perturbation():
    """fp16 takes the ascent gradient through the GradScaler's scale (no underflow) and divides it out."""
    model, td = _tiny_model(TASK_YAML, "pairs")
    model = model.float()
    ids = torch.tensor([[2, 11, 40, 50, 3, 0], [2, 10, 41, 3, 0, 0]])
    mask = (ids != 0).long()
    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    with torch.no_grad():
        clean, embeds = model("pairs", **inputs), model.embed(ids)
    forward = lambda e: model("pairs", **inputs, inputs_embeds=e)  # noqa: E731
    deltas = []
    for scale in (1.0, 65536.0):
        mb = obj.MicroBatch(td, clean, None, None, mask, [1, 2], forward, lambda: embeds,
                            lambda v, s=scale: v * s)
        deltas.append(obj.Smart(_smart_cfg(), torch.device("cpu")).perturbation(
            mb, embeds, clean, obj.DIVERGENCES["SymKlCriterion"]))
    torch.testing.assert_close(deltas[0], deltas[1], rtol=1e-6, atol=1e-7)
