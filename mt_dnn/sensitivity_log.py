"""Structured sensitivity and its local temporal variation, logged during training (paper Fig. 4 and Fig. 6).

The trainer calls :meth:`SensitivityTracker.observe` after every backward pass (gradients unscaled and clipped),
just before ``optimizer.step()``. Every ``every`` steps one JSON line is appended to the log with, per encoder
layer and block (attention: Q, K, V, attention output; FFN: intermediate and output dense):

- ``ipt_mean``, ``ipt_var``: mean and (unbiased) variance of the sensitivity I = |θ⊙g| over the block's elements;
- ``u_mean``: mean of the local temporal variation U = |I − Ī|, with Ī = β3·Ī_prev + (1−β3)·I the sensitivity
  EMA including this step (the authors' order), i.e. U = β3·|I − Ī_prev|, uncorrected for bias;
- ``numel``: the block's element count (for weighted averages over blocks).

Ī_prev is the optimizer's own SAGE state (``exp_avg_ipt``, with the group's β3) for parameters in SAGE groups,
so a SAGE run logs exactly the EMA it trains with. Other parameters (plain Adamax/AdamW baselines, non-SAGE
groups) get an EMA kept here with ``beta3``, updated at every step with a few ``torch._foreach`` ops and no host
sync, so baselines get a comparable U. Host syncs (one ``tolist``) happen at logging steps only.

The tracker's own EMA is not checkpointed: after ``--resume`` it restarts from zero (the first logged values of a
baseline are then transient). With fp16 loss scaling, skip ``observe`` on steps whose gradients overflowed.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from mt_dnn.blocks import BLOCK_KINDS, Block, block_of
from data_utils.safe_load import loads_json
from data_utils.safe_paths import append_line, open_output


class SensitivityTracker:
    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, path: Path, every: int,
                 beta3: float = 0.75):
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"SensitivityTracker: every must be a positive int, got {every!r}")
        if not 0.0 <= beta3 < 1.0:
            raise ValueError(f"SensitivityTracker: beta3 must be in [0, 1), got {beta3}")
        self.optimizer, self.every, self.beta3 = optimizer, every, beta3
        self.params: list[Tensor] = []
        self.blocks: list[Block] = []
        for name, p in model.named_parameters():
            block = block_of(name)
            if block is not None and p.requires_grad:
                self.params.append(p)
                self.blocks.append(block)
        if not self.params:
            raise ValueError("SensitivityTracker: the model has no attention/FFN layer parameters "
                             "(expected names like 'encoder.layer.0.attention.self.query.weight')")
        sage_group = {id(p): g for g in optimizer.param_groups if g.get("sage") for p in g["params"]}
        self._sage_group: list[Optional[dict]] = [sage_group.get(id(p)) for p in self.params]
        self._own_ema: dict[int, Tensor] = {}
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        open_output(self.path, "a").close()  # a link planted there, or a folder, is refused before training

    # ------------------------------------------------------------------------------------------------ per step
    def _ema(self, i: int) -> tuple[Tensor, float, bool]:
        """(Ī_prev, β3, whether the tracker owns and updates it) for tracked parameter ``i``."""
        p, group = self.params[i], self._sage_group[i]
        if group is not None:
            state_ema = self.optimizer.state.get(p, {}).get("exp_avg_ipt")
            prev = state_ema if state_ema is not None else torch.zeros_like(p)
            return prev, float(group["beta3"]), False
        if i not in self._own_ema:
            self._own_ema[i] = torch.zeros_like(p, dtype=torch.float32)
        return self._own_ema[i], self.beta3, True

    @torch.no_grad()
    def observe(self, step: int) -> None:
        """Update the tracker's EMAs with this step's gradients; at ``step % every == 0`` also write a line."""
        logging = step % self.every == 0
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not logging:
            live = [i for i in live if self._sage_group[i] is None]
        if not live:
            return
        ipt = torch._foreach_mul([self.params[i].float() for i in live], [self.params[i].grad.float() for i in live])
        torch._foreach_abs_(ipt)
        emas = [self._ema(i) for i in live]
        u = None
        if logging:
            u = torch._foreach_sub(ipt, [e for e, _, _ in emas])
            torch._foreach_abs_(u)
            torch._foreach_mul_(u, [b for _, b, _ in emas])
        own = [(e, b, x) for (e, b, mine), x in zip(emas, ipt) if mine]
        if own:
            for beta in sorted({b for _, b, _ in own}):
                es = [e for e, b, _ in own if b == beta]
                torch._foreach_mul_(es, beta)
                torch._foreach_add_(es, [x for e, b, x in own if b == beta], alpha=1.0 - beta)
        if logging:
            self._write(step, [self.blocks[i] for i in live], ipt, u)

    def _write(self, step: int, blocks: list[Block], ipt: list[Tensor], u: list[Tensor]) -> None:
        keys = sorted({b for b in blocks})
        stats, sizes = [], []
        for key in keys:
            idx = [j for j, b in enumerate(blocks) if b == key]
            values = torch.cat([ipt[j].flatten() for j in idx])
            var = values.var() if values.numel() > 1 else values.new_zeros(())
            stats.append(torch.stack([values.mean(), var, torch.cat([u[j].flatten() for j in idx]).mean()]))
            sizes.append(values.numel())
        rows = torch.stack(stats).double().cpu().tolist()
        record = {"step": int(step), "lr": float(self.optimizer.param_groups[0]["lr"]),
                  "blocks": {key.key: {"numel": n, "ipt_mean": r[0], "ipt_var": r[1], "u_mean": r[2]}
                             for key, n, r in zip(keys, sizes, rows)}}
        append_line(self.path, json.dumps(record) + "\n")  # whole lines only, even when the disk fills up

    def close(self) -> None:
        """Nothing stays open between records (each is appended on its own); kept for ``with`` and callers."""

    def __enter__(self) -> "SensitivityTracker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------------- reading
STAT_NAMES = ("ipt_mean", "ipt_var", "u_mean")


@dataclass
class TrackerLog:
    """A tracker log as arrays: ``stats[block_key][stat]`` is aligned with ``steps``."""
    path: Path
    steps: np.ndarray
    lr: np.ndarray
    numel: dict[str, int]
    stats: dict[str, dict[str, np.ndarray]]

    @property
    def layers(self) -> list[int]:
        return sorted({int(k.split(".")[0][len("layer"):]) for k in self.stats})

    def blocks_of(self, kind: str) -> list[str]:
        return sorted((k for k in self.stats if k.endswith("." + kind)), key=lambda k: int(k.split(".")[0][5:]))

    def weighted(self, stat: str, kind: Optional[str] = None) -> np.ndarray:
        """Element-weighted mean of a block statistic over all blocks (or all blocks of one kind)."""
        keys = self.blocks_of(kind) if kind else list(self.stats)
        weights = np.array([self.numel[k] for k in keys], dtype=np.float64)
        values = np.stack([self.stats[k][stat] for k in keys])
        return (weights[:, None] * values).sum(0) / weights.sum()


def _parse_line(path: Path, ln: int, text: str) -> dict:
    where = f"{path}:{ln}"
    record = loads_json(text, path, ln)
    if not isinstance(record, dict) or not isinstance(record.get("step"), int):
        raise ValueError(f"{where}: expected an object with an integer 'step'")
    blocks = record.get("blocks")
    if not isinstance(blocks, dict) or not blocks:
        raise ValueError(f"{where}: expected a non-empty 'blocks' object")
    for key, values in blocks.items():
        kind = key.split(".", 1)[-1]
        if not key.startswith("layer") or kind not in BLOCK_KINDS or not key.split(".")[0][5:].isdigit():
            raise ValueError(f"{where}: block key '{key}' is not 'layer<N>.attention' or 'layer<N>.ffn'")
        missing = [s for s in ("numel",) + STAT_NAMES if not isinstance(values.get(s), (int, float))]
        if missing:
            raise ValueError(f"{where}: block '{key}' lacks numeric field(s) {', '.join(missing)}")
    return record


def read_log(path: Path) -> TrackerLog:
    """Parse a tracker JSONL log; a step logged twice (a resumed run) keeps its last record."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: tracker log not found")
    by_step: dict[int, dict] = {}
    with path.open(encoding="utf-8") as handle:
        for ln, text in enumerate(handle, start=1):
            if text.strip():
                record = _parse_line(path, ln, text)
                by_step[record["step"]] = record
    if not by_step:
        raise ValueError(f"{path}: tracker log is empty")
    records = [by_step[s] for s in sorted(by_step)]
    keys = list(records[0]["blocks"])
    for rec in records:
        if list(rec["blocks"]) != keys:
            raise ValueError(f"{path}: step {rec['step']} logs blocks {sorted(rec['blocks'])}, "
                             f"step {records[0]['step']} logs {sorted(keys)}")
    stats = {k: {s: np.array([r["blocks"][k][s] for r in records], dtype=np.float64) for s in STAT_NAMES}
             for k in keys}
    return TrackerLog(path, np.array([r["step"] for r in records]),
                      np.array([r.get("lr", math.nan) for r in records], dtype=np.float64),
                      {k: int(records[-1]["blocks"][k]["numel"]) for k in keys}, stats)
