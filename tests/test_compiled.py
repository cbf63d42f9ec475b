"""--compile (mt_dnn/compiled.py, mt_dnn/static_shapes.py): static shapes, parity of the compiled forward with
eager over several steps and length buckets, a bounded number of compiles, and the eager fallback."""
from __future__ import annotations

import pytest
import torch

from data_utils.task_def import load_task_defs
from mt_dnn.batcher import collate, load_split
from mt_dnn.static_shapes import StaticShapes, pad_batch, real_rows
from mt_dnn.trainer import Trainer
from workspace import config, make_workspace

NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


@pytest.fixture(scope="module")
def cws(tmp_path_factory):
    return make_workspace(tmp_path_factory, "compile", **NO_DROPOUT)


def test_bucket_lengths():
    shapes = StaticShapes.for_run(100, 8, 0)
    assert shapes.lengths == (32, 64, 96, 100)
    assert [shapes.length_for(n) for n in (1, 32, 33, 97, 100)] == [32, 32, 64, 100, 100]
    assert StaticShapes.for_run(64, 8, 0).lengths == (32, 64)
    with pytest.raises(ValueError, match="--compile: a sequence of 101 tokens is longer than the longest bucket 100"):
        shapes.length_for(101)


def test_padding_rows_copy_the_first_row_and_keep_labels(cws):
    defs = load_task_defs(cws / "tasks.yml")
    for task, k in (("pairs", None), ("pick", 3)):
        data = load_split(cws / "shards", defs[task], "train", 64)
        batch = collate(data, [0, 1, 2], pad_id=0)
        padded = pad_batch(batch, StaticShapes.for_run(64, 8, 0), defs[task])
        ids, mask = padded["input_ids"], padded["attention_mask"]
        length = batch["input_ids"].shape[-1]
        assert ids.shape == ((8,) if k is None else (8, k)) + (32 if length <= 32 else 64,)
        assert torch.equal(ids[:3, ..., :length], batch["input_ids"])
        assert torch.equal(mask[:3].sum(), batch["attention_mask"].sum())  # nothing real lost, no new tokens
        assert all(torch.equal(ids[r], ids[0]) and torch.equal(mask[r], mask[0]) for r in range(3, 8))
        assert torch.equal(padded["labels"], batch["labels"])
        out = torch.arange(8.0)
        assert torch.equal(real_rows(padded["labels"], out), torch.arange(3.0))


def _log_warnings(trainer) -> list[str]:
    return [line for line in (trainer.output_dir / "train.log").read_text().splitlines() if "WARNING" in line]


def test_compile_failure_falls_back_to_eager_with_one_warning(cws, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("backend exploded\nsecond line of a long traceback")
    monkeypatch.setattr(torch, "compile", broken)
    trainer = Trainer(config(cws, "fallback-build", train_datasets=["pairs"], test_datasets=[], compile=True,
                             epochs=1))
    trainer.fit(stop_after_steps=3)
    assert not trainer.train_forward.active and trainer.global_step == 3
    warnings = _log_warnings(trainer)
    assert len(warnings) == 1 and "--compile: compiling the model failed (RuntimeError: backend exploded)" \
        in warnings[0] and "training continues eagerly" in warnings[0]


def test_first_call_failure_falls_back_and_redoes_the_batch_eagerly(cws, monkeypatch):
    calls = []

    def compiled_that_fails(module, **kwargs):
        def run(*args, **kw):
            calls.append(kwargs)
            raise RuntimeError("inductor: no C++ compiler")
        return run
    monkeypatch.setattr(torch, "compile", compiled_that_fails)
    # 92 examples: one micro-batch of 4 rows, padded to 8 under --compile
    common = dict(train_datasets=["pairs"], test_datasets=[], epochs=1, dropout_p=0.0, log_every=1,
                  max_train_samples=92)
    failed = Trainer(config(cws, "fallback-call", compile=True, **common))
    failed.fit()
    assert len(calls) == 1 and calls[0] == {"mode": None, "dynamic": False}  # CPU: default mode, static shapes
    assert len(_log_warnings(failed)) == 1 and "RuntimeError: inductor: no C++ compiler" in _log_warnings(failed)[0]
    eager = Trainer(config(cws, "fallback-eager", **common))
    eager.fit()
    # same steps, same losses: the failed call's batch was trained on (eagerly), padding rows carry no weight
    assert [s for s, _ in failed.loss_log] == [s for s, _ in eager.loss_log] == list(range(1, 13))
    assert [v for _, v in failed.loss_log] == pytest.approx([v for _, v in eager.loss_log], rel=1e-5)


class _BackwardFails(torch.autograd.Function):
    """Identity whose backward raises, as a compiled graph whose backward fails to compile."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("inductor: backward graph failed to lower\ndetails")


def test_backward_compile_failure_falls_back_and_redoes_the_batch_eagerly(cws, monkeypatch):
    calls = []

    def compiled_backward_fails(module, **kwargs):
        def run(*args, **kw):
            calls.append(1)
            return _BackwardFails.apply(module(*args, **kw))
        return run
    monkeypatch.setattr(torch, "compile", compiled_backward_fails)
    common = dict(train_datasets=["pairs"], test_datasets=[], epochs=1, dropout_p=0.0, log_every=1,
                  max_train_samples=92, grad_accumulation_step=2)
    failed = Trainer(config(cws, "fallback-backward", compile=True, **common))
    failed.fit()
    assert len(calls) == 1 and not failed.train_forward.active
    warnings = _log_warnings(failed)
    assert len(warnings) == 1 and ("--compile: compiling the backward pass failed (RuntimeError: inductor: "
                                   "backward graph failed to lower); training continues eagerly") in warnings[0]
    eager = Trainer(config(cws, "fallback-backward-eager", **common))
    eager.fit()
    # the failed micro-batch (the first of an accumulated step) was trained on once, eagerly: same weights
    assert [s for s, _ in failed.loss_log] == [s for s, _ in eager.loss_log] == list(range(1, 7))
    assert [v for _, v in failed.loss_log] == pytest.approx([v for _, v in eager.loss_log], rel=1e-5)
    for (name, a), b in zip(failed.model.named_parameters(), eager.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_errors_of_an_eager_backward_are_not_swallowed(cws, monkeypatch):
    trainer = Trainer(config(cws, "backward-error", train_datasets=["pairs"], test_datasets=[], epochs=1))
    monkeypatch.setattr(trainer.model, "loss", lambda task, out, labels: _BackwardFails.apply(out.sum()))
    with pytest.raises(RuntimeError, match="inductor: backward graph failed to lower"):
        trainer.fit(stop_after_steps=1)  # no --compile: the trainer does not retry a backward it did not compile


@pytest.mark.compile
def test_compiled_matches_eager_over_steps_and_buckets_with_bounded_compiles(cws):
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    # 92 examples at batch 8: eleven full micro-batches and one of 4 (padded with 4 weightless rows)
    common = dict(train_datasets=["pairs"], test_datasets=[], epochs=1, dropout_p=0.0, max_train_samples=92)
    eager = Trainer(config(cws, "parity-eager", **common))
    compiled = Trainer(config(cws, "parity-compiled", compile=True, **common))
    assert compiled.train_forward.active and compiled.shapes.lengths == (32, 64)
    plan = eager.epoch_plan(0)
    assert plan == compiled.epoch_plan(0) and sorted(len(i) for _, i in plan)[0] == 4
    seen = set()
    for task_idx, indices in plan:
        keys = [(task_idx, i) for i in indices]
        results = []
        for trainer in (eager, compiled):
            trainer.model.train()
            batch = trainer.micro_batch_set.__getitems__(keys)
            if trainer is compiled:
                assert batch["input_ids"].shape[0] == 8
                seen.add(batch["input_ids"].shape[1])
            loss = trainer.micro_batch_loss(task_idx, indices, batch)
            loss.backward()
            grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
            results.append((loss.detach(), grads))
            trainer.optimizer_step()
        (loss_e, grads_e), (loss_c, grads_c) = results
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-4, atol=1e-6)
        assert grads_c.keys() == grads_e.keys() and len(grads_e) > 30
        for name in grads_e:
            torch.testing.assert_close(grads_c[name], grads_e[name], rtol=1e-3, atol=1e-5, msg=name)
    assert seen == {32, 64}  # both length buckets were compiled and compared
    assert counters["stats"]["unique_graphs"] <= len(compiled.shapes.lengths) * len(compiled.train_sets)
    assert counters["graph_break"] == {} or sum(counters["graph_break"].values()) == 0
    assert compiled.train_forward.active  # no silent fallback
    for a, b in zip(eager.model.parameters(), compiled.model.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5)


def test_cuda_graph_mode_gives_trained_parameters_stable_grads_only(cws, monkeypatch):
    """Under CUDA graphs a .grad must not be a graph output (the next replay overwrites it); the trainer gives the
    parameters a step trains zero .grad buffers first. Checked on CPU with an identity 'compile': the other
    tasks' heads keep no gradient (so the optimizer skips them) and the step equals the eager step."""
    monkeypatch.setattr(torch, "compile", lambda module, **kw: module)
    common = dict(train_datasets=["pairs", "score"], test_datasets=[], epochs=1, dropout_p=0.0)
    graphed = Trainer(config(cws, "graphs", compile=True, **common))
    graphed.train_forward.cuda_graphs = True
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: None)
    eager = Trainer(config(cws, "graphs-eager", **common))
    task_idx, indices = eager.epoch_plan(0)[0]
    for trainer in (eager, graphed):
        trainer.model.train()
        trainer.micro_batch_loss(task_idx, indices).backward()
    task = eager.train_sets[task_idx].task_def.name
    other = next(n for n in eager.model.heads if n != task)
    assert all(p.grad is None for p in graphed.model.heads[other].parameters())
    for (name, a), b in zip(eager.model.named_parameters(), graphed.model.parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------------ graphs per bucket
def _counting_compile(monkeypatch):
    """torch.compile with dynamo's real tracing and guards but a backend that only counts graphs (no inductor)."""
    from torch._dynamo.testing import CompileCounter
    counter, real = CompileCounter(), torch.compile
    monkeypatch.setattr(torch, "compile", lambda module, mode=None, dynamic=None: real(module, backend=counter,
                                                                                         dynamic=dynamic))
    torch._dynamo.reset()
    return counter


def _task_buckets(trainer) -> set[tuple[str, int]]:
    """(task, padded length) of every micro-batch of the first epoch."""
    seen = set()
    for task_idx, indices in trainer.epoch_plan(0):
        batch = trainer.micro_batch_set.__getitems__([(task_idx, i) for i in indices])
        seen.add((trainer.train_sets[task_idx].task_def.name, batch["input_ids"].shape[-1]))
    return seen


def test_one_encoder_graph_per_length_bucket_shared_by_the_tasks(cws, monkeypatch):
    """Two tasks over two length buckets: the encoder is compiled once per bucket (not per task and bucket), each
    graph says its compile time in one line, and the run matches eager training."""
    counter = _counting_compile(monkeypatch)
    common = dict(train_datasets=["pairs", "score"], test_datasets=[], epochs=1, dropout_p=0.0, log_every=1)
    compiled = Trainer(config(cws, "graphs-two-tasks", compile=True, **common))
    compiled.fit()
    combos = _task_buckets(compiled)
    buckets = {length for _, length in combos}
    assert buckets == {32, 64} and len(combos) > len(buckets)  # e.g. pairs@32, pairs@64, score@32
    assert counter.frame_count == len(buckets) == compiled.train_forward.bound
    assert compiled.train_forward.active and not compiled.train_forward.eager_shapes
    lines = [line for line in (compiled.output_dir / "train.log").read_text().splitlines()
             if "--compile: encoder graph" in line]
    assert len(lines) == 2 and all("first call (compile and run)" in line for line in lines)
    assert {line.split(" for ")[1].split(":")[0] for line in lines} == {"8x32 tokens (pooled)", "8x64 tokens (pooled)"}
    assert sorted(compiled.train_forward.compiled_shapes) == [(True, (8, 32)), (True, (8, 64))]
    eager = Trainer(config(cws, "graphs-two-tasks-eager", **common))
    eager.fit()
    assert [v for _, v in compiled.loss_log] == pytest.approx([v for _, v in eager.loss_log], rel=1e-5)


def test_encoder_graph_bound_counts_ranking_rows_and_token_heads(cws):
    from mt_dnn.compiled import encoder_shapes
    trainer = Trainer(config(cws, "graph-bound", test_datasets=[], epochs=1))
    model = trainer.model
    assert encoder_shapes(model, ["pairs", "score"], 8, (32, 64)) == 2          # both pooled, 8 rows
    assert encoder_shapes(model, ["pairs", "score", "pick"], 8, (32, 64)) == 4  # pick: 8 x 3 hypotheses


def test_recompile_limit_hit_is_said_and_that_shape_runs_eagerly(cws, monkeypatch, caplog):
    """dynamo's limit hit (here set to 1 graph): one warning line naming the limit and the shape; that shape runs
    eagerly from then on, the compiled one stays compiled, and training matches eager."""
    counter = _counting_compile(monkeypatch)
    common = dict(train_datasets=["pairs"], test_datasets=[], epochs=1, dropout_p=0.0, log_every=1)
    compiled = Trainer(config(cws, "limit-hit", compile=True, **common))
    with torch._dynamo.config.patch(recompile_limit=1):
        compiled.fit()
    warnings = _log_warnings(compiled)
    assert len(warnings) == 1, warnings
    assert ("--compile: torch._dynamo's recompile limit (1) was hit at a batch of 8x" in warnings[0]
            and "batches of that shape run eagerly, the 1 shape(s) compiled so far stay compiled" in warnings[0])
    assert counter.frame_count == 1 and len(compiled.train_forward.eager_shapes) == 1
    assert compiled.train_forward.active
    eager = Trainer(config(cws, "limit-hit-eager", **common))
    eager.fit()
    assert [v for _, v in compiled.loss_log] == pytest.approx([v for _, v in eager.loss_log], rel=1e-5)


@pytest.mark.parametrize("wrapped", [False, True])
def test_out_of_memory_in_the_compiled_forward_is_raised_not_taken_for_a_compile_failure(cws, monkeypatch, wrapped):
    """An OOM (raised by the graph, or wrapped by the compiler in another error) ends the run as the OOM it is:
    an eager retry would run out of memory too, and a silent switch to eager would hide it."""
    def compiled_that_runs_out(module, **kwargs):
        def run(*args, **kw):
            oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            if not wrapped:
                raise oom
            try:
                raise oom
            except torch.OutOfMemoryError as exc:
                raise RuntimeError("backend compiler failed") from exc
        return run
    monkeypatch.setattr(torch, "compile", compiled_that_runs_out)
    trainer = Trainer(config(cws, f"oom-{wrapped}", train_datasets=["pairs"], test_datasets=[], compile=True,
                             epochs=1))
    with pytest.raises(torch.OutOfMemoryError, match="Tried to allocate 2.00 GiB"):
        trainer.fit(stop_after_steps=1)
    assert trainer.train_forward.active and not _log_warnings(trainer)
