"""Data-parallel settings (mt_dnn/parallel.py): which DDP options each run gets and why they are correct, and the
FSDP optimizer step on local shards against the same step on the DTensors (one gloo rank in this process; the
2-rank runs are in test_distributed.py)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from torch import nn
from transformers import AutoModel

from conftest import tiny_bert_config
from data_utils.task_def import parse_task_defs
from module.bert_optim import build_optimizer, sage_param_groups
from module.heads import SanOptions
from mt_dnn import parallel
from mt_dnn.model import MTDNNModel
from workspace import TASK_YAML

DEFS = parse_task_defs(TASK_YAML + """
sanpairs:
  task_type: Classification
  data_format: PremiseAndOneHypothesis
  n_class: 2
  metric_meta: [ACC]
  enable_san: true
""")


def _model(tasks, san=None) -> MTDNNModel:
    torch.manual_seed(0)
    return MTDNNModel(AutoModel.from_config(tiny_bert_config()), {t: DEFS[t] for t in tasks}, san)


def test_multi_task_runs_search_for_unused_parameters_single_task_runs_use_a_static_graph():
    model = _model(["pairs", "score"])
    assert parallel.ddp_settings(model, ["pairs", "score"], compiled=False) == parallel.DDPSettings(True, False, False)
    assert parallel.ddp_settings(model, ["pairs"], compiled=False) == parallel.DDPSettings(False, True, False)
    assert parallel.ddp_settings(model, ["pairs"], compiled=True) == parallel.DDPSettings(True, False, False)


def test_accumulating_single_task_runs_search_only_where_a_parameter_is_idle():
    """DDP's static graph cannot start under no_sync: with accumulation the search goes off only where the task
    trains every parameter (here: not with an evaluation-only head, nor under a SAN head, whose pooler is idle)."""
    alone, with_eval_head = _model(["pairs"]), _model(["pairs", "score"])
    san = _model(["sanpairs"], SanOptions())
    assert parallel.ddp_settings(alone, ["pairs"], False, accumulation=2) == parallel.DDPSettings(False, False, False)
    assert parallel.ddp_settings(with_eval_head, ["pairs"], False, 2) == parallel.DDPSettings(True, False, False)
    assert parallel.ddp_settings(san, ["sanpairs"], False, 2) == parallel.DDPSettings(True, False, False)
    assert parallel.DDPSettings(False, False, False).describe() == "DDP: every parameter used, buffers not broadcast"
    assert parallel.DDPSettings(False, True, False).describe() == "DDP: static graph, buffers not broadcast"
    assert parallel.DDPSettings(True, False, False).describe() == \
        "DDP: searching each step for unused parameters, buffers not broadcast"


def test_buffers_are_broadcast_only_where_a_forward_changes_them():
    model = _model(["pairs"])
    assert list(model.buffers()) and not parallel.buffers_change_in_forward(model)  # position ids: constant
    before = {k: v.clone() for k, v in model.named_buffers()}
    model.train()
    model("pairs", torch.randint(1, 100, (2, 9)), torch.ones(2, 9, dtype=torch.long))
    assert all(torch.equal(v, before[k]) for k, v in model.named_buffers())
    model.extra = nn.BatchNorm1d(4)
    assert parallel.buffers_change_in_forward(model)


def _grads_of_one_step(model, task, ids, mask):
    model.zero_grad(set_to_none=True)
    model(task, ids, mask, torch.zeros_like(ids)).float().sum().backward()
    return {id(p) for p in model.parameters() if p.grad is not None}


@pytest.mark.parametrize("tasks,task,san", [(["pairs", "score"], "pairs", None), (["sanpairs"], "sanpairs",
                                                                                  SanOptions())])
def test_trained_parameters_are_exactly_those_a_step_gives_gradients(tasks, task, san):
    """Checked against autograd: the other tasks' heads, and under a head that reads every token (SAN) the
    encoder's own pooler, get no gradient; everything else does."""
    model = _model(tasks, san)
    ids = torch.randint(5, 100, (3, 10))
    ids[:, 0] = 2
    mask = torch.ones_like(ids)
    got = {id(p) for p in parallel.trained_parameters(model, task)}
    assert got == _grads_of_one_step(model, task, ids, mask)
    pooler = {id(p) for p in model.encoder.pooler.parameters()}
    assert (pooler <= got) == (san is None)


# ------------------------------------------------------------------------------------------ FSDP local shards
@pytest.fixture()
def one_rank():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield dist.device_mesh.init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


def _sharded_net(mesh):
    """Two linear layers with DTensor parameters, named so that the first is a SAGE layer, the second a head."""
    from torch.distributed.tensor import Shard, distribute_tensor
    torch.manual_seed(0)
    net = nn.ModuleList([nn.Linear(6, 5), nn.Linear(5, 2)])
    for module in net:
        for name, p in list(module.named_parameters()):
            setattr(module, name, nn.Parameter(distribute_tensor(p.detach(), mesh, [Shard(0)])))
    return net


def _named(net):
    prefixes = ("attention.self.query", "head.proj")
    return [(f"{prefixes[i]}.{n}", p) for i, m in enumerate(net) for n, p in m.named_parameters()]


@pytest.mark.parametrize("name", ["usadamw", "usadamax"])
def test_local_shard_step_equals_the_dtensor_step_and_dispatches_no_dtensor_op(one_rank, name):
    from torch.distributed.tensor import DTensor
    nets = [_sharded_net(one_rank) for _ in range(2)]
    opts = [build_optimizer(name, sage_param_groups(_named(net)), lr=1e-2, foreach=True)
            for net in nets]
    calls = {"n": 0}

    class DTensorOps(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            flat = torch.utils._pytree.tree_leaves((args, kwargs))
            calls["n"] += any(isinstance(t, DTensor) for t in flat)
            return func(*args, **(kwargs or {}))
    for step in range(3):
        grads = [torch.randn(p.shape, generator=torch.Generator().manual_seed(10 * step + i))
                 for i, p in enumerate(nets[0].parameters())]
        for net in nets:
            for p, g in zip(net.parameters(), grads):
                p.grad = DTensor.from_local(g, one_rank, p.placements)
        with DTensorOps():
            opts[0].step()
            on_dtensors, calls["n"] = calls["n"], 0
            with parallel.local_shards(opts[1]):
                opts[1].step()
        assert on_dtensors > 0 and calls["n"] == 0  # the local-shard step ran on plain tensors only
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        assert isinstance(b, DTensor) and torch.equal(a.to_local(), b.to_local())
    for pa, pb in zip(nets[0].parameters(), nets[1].parameters()):
        sa, sb = opts[0].state[pa], opts[1].state[pb]
        assert sa.keys() == sb.keys() and len(opts[1].state) == len(opts[0].state)
        for key in sa:
            if sa[key].dim() > 0:
                assert isinstance(sb[key], DTensor) and sb[key].placements == pb.placements
                assert torch.equal(sa[key].to_local(), sb[key].to_local()), key
            else:
                assert torch.equal(sa[key], sb[key]), key
    assert all(p.grad is not None for p in nets[1].parameters())  # the DTensor gradients are left as they were
    copy.deepcopy(opts[1].state_dict())  # the state is whole again after the block


def test_ddp_keyword_arguments_use_the_current_buffer_flag():
    import inspect
    from torch.nn.parallel import DistributedDataParallel
    kwargs = parallel.DDPSettings(False, True, False).kwargs()
    accepted = inspect.signature(DistributedDataParallel.__init__).parameters
    assert set(kwargs) <= set(accepted)
    assert kwargs["find_unused_parameters"] is False and kwargs["static_graph"] is True
    assert kwargs.get("forward_sync_buffers", kwargs.get("broadcast_buffers")) is False
