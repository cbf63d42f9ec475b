"""The SAGE optimizers' logged statistics, right under FSDP too.

``sage_stats()`` of module.bert_optim sums each parameter's sensitivity EMA and divides by the element count. With
FSDP-sharded state a rank holds a shard of each tensor, while the element count is the whole tensor's, so the
logged mean came out near 1/world_size of the true one. Here the sum and the count are taken over the local
shards and summed over the ranks (every rank must call it then: it is a collective); unsharded state keeps the
optimizer's own computation.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

MEAN_SENSITIVITY = "sage/mean_sensitivity_ema"


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def _sharded(optimizer) -> bool:
    return any(hasattr(v, "to_local") for s in optimizer.state.values() for v in s.values())


@torch.no_grad()
def sage_stats(optimizer) -> dict[str, float]:
    """The optimizer's statistics (SAGE optimizers; {} for plain torch ones), with the mean sensitivity EMA over
    all ranks' shards when the state is sharded (then a collective: call it on every rank)."""
    own = getattr(optimizer, "sage_stats", None)
    if own is None:
        return {}
    if not (dist.is_available() and dist.is_initialized() and _sharded(optimizer)):
        return own()
    device = next((_local(v).device for s in optimizer.state.values() for v in s.values()
                   if torch.is_tensor(v) and v.dim() > 0), torch.device("cpu"))
    total = torch.zeros(2, dtype=torch.float64, device=device)  # (sum, count)
    for group in optimizer.param_groups:
        if not group.get("sage"):
            continue
        for p in group["params"]:
            ipt = optimizer.state.get(p, {}).get("exp_avg_ipt")
            if ipt is not None:
                local = _local(ipt)
                total[0] += local.double().sum()
                total[1] += local.numel()
    dist.all_reduce(total)
    total = total.tolist()
    return {MEAN_SENSITIVITY: total[0] / total[1]} if total[1] else {}
