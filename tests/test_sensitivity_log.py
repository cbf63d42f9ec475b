"""SensitivityTracker: per-block statistics against torch.mean/var over the concatenated block tensors, U against
the optimizer's own SAGE state, the baseline EMA against a by-hand EMA, hand-computed values, and the log reader."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from mt_dnn.sensitivity_log import SensitivityTracker, read_log
from module.bert_optim import build_optimizer, sage_param_groups
from test_analysis import random_batches, tiny_model, loss_fn

BLOCK_PATTERNS = {  # an independent statement of which tiny-BERT tensors form each block
    "attention": ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"),
    "ffn": ("intermediate.dense", ".output.dense"),
}


def block_names(model, layer: int, kind: str) -> list[str]:
    prefix = f"encoder.encoder.layer.{layer}."
    names = [n for n, _ in model.named_parameters() if n.startswith(prefix)]
    picked = [n for n in names if any(pat in n for pat in BLOCK_PATTERNS[kind])]
    if kind == "ffn":
        picked = [n for n in picked if ".attention." not in n]
    return picked


def lines(path):
    return [json.loads(t) for t in path.read_text().splitlines()]


def run_steps(model, optimizer, tracker, steps: int):
    """Train ``steps`` steps; return per step (I per param name, Ī_prev per name, Ī after the step per name)."""
    named = dict(model.named_parameters())
    record = []
    for t, batch in enumerate(random_batches(steps, seed=3), start=1):
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model)(batch).backward()
        ipt = {n: (p.detach() * p.grad).abs().double() for n, p in named.items() if p.grad is not None}
        prev = {n: optimizer.state.get(p, {}).get("exp_avg_ipt") for n, p in named.items()}
        prev = {n: (v.clone().double() if v is not None else None) for n, v in prev.items()}
        tracker.observe(t)
        optimizer.step()
        after = {n: optimizer.state.get(p, {}).get("exp_avg_ipt") for n, p in named.items()}
        record.append((ipt, prev, {n: v.clone().double() for n, v in after.items() if v is not None}))
    return record


def test_sage_run_block_stats_and_u_match_the_optimizer_state(tmp_path):
    model = tiny_model()
    opt = build_optimizer("usadamax", sage_param_groups(model), lr=1e-3, foreach=False)
    path = tmp_path / "sage.jsonl"
    with SensitivityTracker(model, opt, path, every=2) as tracker:
        record = run_steps(model, opt, tracker, 4)
    logged = lines(path)
    assert [r["step"] for r in logged] == [2, 4]
    for rec in logged:
        ipt, _, after = record[rec["step"] - 1]
        assert set(rec["blocks"]) == {f"layer{i}.{k}" for i in range(2) for k in ("attention", "ffn")}
        for i in range(2):
            for kind in ("attention", "ffn"):
                names = block_names(model, i, kind)
                values = torch.cat([ipt[n].flatten() for n in names])
                # U = |I − Ī| with Ī the optimizer's EMA after it folded in this step (the authors' order)
                u = torch.cat([(ipt[n] - after[n]).abs().flatten() for n in names])
                got = rec["blocks"][f"layer{i}.{kind}"]
                assert got["numel"] == values.numel()
                assert got["ipt_mean"] == pytest.approx(float(torch.mean(values)), rel=2e-5, abs=0)
                assert got["ipt_var"] == pytest.approx(float(torch.var(values)), rel=2e-5, abs=0)
                assert got["u_mean"] == pytest.approx(float(u.mean()), rel=2e-5, abs=0)


def test_baseline_gets_its_own_ema_updated_every_step(tmp_path):
    model = tiny_model()
    beta = 0.6
    opt = build_optimizer("adamax", sage_param_groups(model), lr=1e-3, foreach=True)
    path = tmp_path / "base.jsonl"
    with SensitivityTracker(model, opt, path, every=3, beta3=beta) as tracker:
        record = run_steps(model, opt, tracker, 6)
    assert all("exp_avg_ipt" not in s for s in opt.state.values())
    logged = {r["step"]: r for r in lines(path)}
    assert sorted(logged) == [3, 6]
    names = block_names(model, 1, "ffn")
    ema = {n: torch.zeros_like(record[0][0][n]) for n in names}
    for t, (ipt, _, _) in enumerate(record, start=1):
        new = {n: beta * ema[n] + (1 - beta) * ipt[n] for n in names}
        if t in logged:
            u = torch.cat([(ipt[n] - new[n]).abs().flatten() for n in names])
            assert logged[t]["blocks"]["layer1.ffn"]["u_mean"] == pytest.approx(float(u.mean()), rel=2e-5, abs=0)
        ema = new


class TwoLayer(nn.Module):
    """Parameters named layer.{i}.attention.weight / layer.{i}.mlp.weight, with values set by hand."""

    def __init__(self):
        super().__init__()
        self.layer = nn.ModuleList(nn.ModuleDict({"attention": nn.Linear(2, 1, bias=False),
                                                  "mlp": nn.Linear(2, 1, bias=False)}) for _ in range(2))


def test_hand_computed_first_and_second_step(tmp_path):
    model = TwoLayer()
    attn = model.layer[0]["attention"].weight
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: θ stays put, the numbers stay simple
    path = tmp_path / "hand.jsonl"
    tracker = SensitivityTracker(model, opt, path, every=1, beta3=0.5)
    with torch.no_grad():
        attn.copy_(torch.tensor([[1.0, -2.0]]))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    attn.grad = torch.tensor([[0.5, 0.5]])           # I = [0.5, 1.0]
    tracker.observe(1)
    attn.grad = torch.tensor([[1.5, 0.0]])           # I = [1.5, 0.0]; Ī_prev = 0.5·I₁ = [0.25, 0.5]
    tracker.observe(2)
    tracker.close()
    first, second = (r["blocks"]["layer0.attention"] for r in lines(path))
    assert first == {"numel": 2, "ipt_mean": 0.75, "ipt_var": 0.125, "u_mean": pytest.approx(0.375)}
    # U = β·|I − Ī_prev| = 0.5·[|1.5 − 0.25|, |0 − 0.5|] = [0.625, 0.25]
    assert second == {"numel": 2, "ipt_mean": 0.75, "ipt_var": 1.125, "u_mean": pytest.approx(0.4375)}
    assert lines(path)[0]["lr"] == 0.0


def test_constructor_errors(tmp_path):
    model = TwoLayer()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="every must be a positive int, got 0"):
        SensitivityTracker(model, opt, tmp_path / "x.jsonl", every=0)
    with pytest.raises(ValueError, match=r"beta3 must be in \[0, 1\), got 1.0"):
        SensitivityTracker(model, opt, tmp_path / "x.jsonl", every=1, beta3=1.0)
    lin = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="no attention/FFN layer parameters"):
        SensitivityTracker(lin, torch.optim.SGD(lin.parameters(), lr=0.1), tmp_path / "x.jsonl", every=1)
    assert not (tmp_path / "x.jsonl").exists()


# ---------------------------------------------------------------------------------------------------- read_log
def write(path, *records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def rec(step, **blocks):
    blocks = blocks or {"layer0.attention": 1.0, "layer0.ffn": 2.0}
    return {"step": step, "lr": 0.1, "blocks": {k: {"numel": 4, "ipt_mean": v, "ipt_var": v / 10, "u_mean": v / 2}
                                                for k, v in blocks.items()}}


def test_read_log_round_trip_and_resume_duplicates(tmp_path):
    log = read_log(write(tmp_path / "a.jsonl", rec(4), rec(2), rec(4, **{"layer0.attention": 3.0, "layer0.ffn": 1.0})))
    assert log.steps.tolist() == [2, 4] and log.layers == [0]
    assert log.stats["layer0.attention"]["ipt_mean"].tolist() == [1.0, 3.0]  # the later step-4 record wins
    assert log.weighted("u_mean").tolist() == [0.75, 1.0]
    assert log.blocks_of("ffn") == ["layer0.ffn"]


@pytest.mark.parametrize("bad, message", [
    ("{not json", r"bad.jsonl:2: not valid JSON"),
    ({"step": "3", "blocks": {}}, r"bad.jsonl:2: expected an object with an integer 'step'"),
    ({"step": 3, "blocks": {}}, r"bad.jsonl:2: expected a non-empty 'blocks' object"),
    ({"step": 3, "blocks": {"layer0.pooler": {}}}, r"bad.jsonl:2: block key 'layer0.pooler' is not"),
    ({"step": 3, "blocks": {"layer0.ffn": {"numel": 4, "ipt_mean": 1.0}}},
     r"bad.jsonl:2: block 'layer0.ffn' lacks numeric field\(s\) ipt_var, u_mean"),
])
def test_read_log_errors_name_file_and_line(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        read_log(write(tmp_path / "bad.jsonl", rec(1), bad))


def test_read_log_file_level_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl: tracker log not found"):
        read_log(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="empty.jsonl: tracker log is empty"):
        read_log(write(tmp_path / "empty.jsonl", ""))
    with pytest.raises(ValueError, match="step 2 logs blocks"):
        read_log(write(tmp_path / "mixed.jsonl", rec(1), rec(2, **{"layer0.ffn": 1.0})))
