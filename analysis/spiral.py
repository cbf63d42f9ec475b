"""The two-spiral toy (paper Fig. 5): a 3×100 MLP trained full-batch with Adam and with Adam-SAGE.

Both runs start from the same initial weights and see the same data; only the optimizer differs (``adam`` vs
``usadam`` from :mod:`module.bert_optim`, SAGE on every parameter). The figure shows each model's decision
boundary over the plane with the training points.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from module.bert_optim import build_optimizer


@dataclass
class SpiralConfig:
    points_per_class: int = 100
    turns: float = 2.0        # how many times each arm winds around the origin
    noise: float = 0.3        # std of the Gaussian jitter, in units of the arm spacing
    hidden: int = 100
    depth: int = 3            # hidden layers
    steps: int = 2000
    lr: float = 2e-3
    beta3: float = 0.75
    seed: int = 0

    def validate(self) -> "SpiralConfig":
        for name in ("points_per_class", "hidden", "depth", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name}: must be >= 1, got {getattr(self, name)}")
        if self.turns <= 0 or self.noise < 0 or self.lr <= 0:
            raise ValueError("--turns and --lr must be > 0, --noise >= 0")
        if not 0.0 <= self.beta3 < 1.0:
            raise ValueError(f"--beta3: must be in [0, 1), got {self.beta3}")
        return self


def two_spirals(points_per_class: int, turns: float = 1.75, noise: float = 0.15,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(x of shape (2n, 2) float32, y of shape (2n,) int64): two interleaved arms, class 1 = class 0 rotated by π.

    Radius grows linearly with the angle; points are spread uniformly along the arm length (angle ∝ √u).
    Deterministic for a given seed (its own numpy Generator, no global state).
    """
    rng = np.random.default_rng(seed)
    angle = np.sqrt(rng.uniform(0.02, 1.0, points_per_class)) * turns * 2 * math.pi
    radius = angle / (2 * math.pi)  # one arm spacing per turn
    arm = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    x = np.concatenate([arm, -arm]) + rng.normal(0.0, noise / 2, (2 * points_per_class, 2))
    y = np.concatenate([np.zeros(points_per_class), np.ones(points_per_class)]).astype(np.int64)
    return (x / np.abs(x).max()).astype(np.float32), y


def mlp(hidden: int = 100, depth: int = 3) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = 2
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, 2))
    return nn.Sequential(*layers)


def train(cfg: SpiralConfig, optimizer: str, x: torch.Tensor, y: torch.Tensor) -> tuple[nn.Module, list[float]]:
    """Full-batch training from the seed's initial weights; returns the model and its loss per step."""
    torch.manual_seed(cfg.seed)
    model = mlp(cfg.hidden, cfg.depth)
    kwargs = dict(lr=cfg.lr, beta3=cfg.beta3) if optimizer.startswith("us") else dict(lr=cfg.lr)
    opt = build_optimizer(optimizer, model.parameters(), **kwargs)
    losses = []
    for _ in range(cfg.steps):
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return model, losses


@torch.no_grad()
def probability_grid(model: nn.Module, resolution: int = 300, extent: float = 1.15
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(xs, ys, P(class 1)) on a square grid covering the data."""
    axis = np.linspace(-extent, extent, resolution, dtype=np.float32)
    gx, gy = np.meshgrid(axis, axis)
    pts = torch.from_numpy(np.stack([gx.ravel(), gy.ravel()], axis=1))
    prob = torch.softmax(model(pts), dim=1)[:, 1].numpy().reshape(gx.shape)
    return gx, gy, prob


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * float((model(x).argmax(1) == y).float().mean())
