"""What the hand-written SAGE kernels (Triton on CUDA, C on CPU) are given: float arguments and checked tensors.

Both kernels take the same float scalars in the same order (``SCALAR_NAMES``), built here from the step scalars
and hyperparameters that :mod:`module.sage.updates`' ``single_*`` functions take, so the two backends cannot
drift apart on what, say, AdamW's step size is.
"""
from __future__ import annotations

from typing import Callable, Optional

from torch import Tensor

from module.sage.updates import state_dtype

#: Float arguments of the kernels, in order (unused ones are 0 for a given algorithm).
SCALAR_NAMES = ("lr", "beta1", "one_minus_beta1", "beta2", "one_minus_beta2", "beta3", "one_minus_beta3", "eps",
                "eps_sq", "weight_decay", "step_size", "decay", "bias_correction1", "bias_correction2_sqrt",
                "ipt_correction", "momentum", "one_minus_dampening", "grad_factor")

#: Names of the tensor columns of a bucket, for error messages: θ, g, state 0, state 1, Ī.
COLUMN_NAMES = ("parameter", "gradient", "state 0", "state 1", "exp_avg_ipt")


def _common_args(scalars: dict, hyper: dict) -> dict:
    b3, eps = float(hyper["beta3"]), float(hyper["eps"])
    return dict(lr=float(scalars["lr"]), beta3=b3, one_minus_beta3=1 - b3, eps=eps, eps_sq=eps * eps,
                grad_factor=float(scalars.get("grad_factor", 1.0)),
                weight_decay=float(hyper["weight_decay"]), ipt_correction=float(scalars["ipt_correction"]))


def _moment_args(hyper: dict) -> dict:
    b1, b2 = float(hyper["beta1"]), float(hyper["beta2"])
    return dict(beta1=b1, one_minus_beta1=1 - b1, beta2=b2, one_minus_beta2=1 - b2)


def _adamax_args(scalars: dict, hyper: dict) -> dict:
    return dict(_common_args(scalars, hyper), **_moment_args(hyper))


def _adamw_args(scalars: dict, hyper: dict) -> dict:
    # Products of Python floats, as single_adamw forms them before touching the tensor.
    return dict(_common_args(scalars, hyper), **_moment_args(hyper),
                step_size=float(scalars["lr"]) * float(scalars["step_correction"]),
                decay=float(scalars["decay_lr"]) * float(hyper["weight_decay"]))


def _adam_args(scalars: dict, hyper: dict) -> dict:
    return dict(_common_args(scalars, hyper), **_moment_args(hyper),
                bias_correction1=float(scalars["bias_correction1"]),
                bias_correction2_sqrt=float(scalars["bias_correction2_sqrt"]))


def _sgd_args(scalars: dict, hyper: dict) -> dict:
    return dict(_common_args(scalars, hyper), momentum=float(hyper["momentum"]),
                one_minus_dampening=1 - float(hyper["dampening"]))


#: algorithm name -> builder of the kernel's float arguments from (step scalars, hyperparameters).
ALGORITHMS: dict[str, Callable[[dict, dict], dict]] = {
    "adamax": _adamax_args, "adamw": _adamw_args, "adam": _adam_args, "sgd": _sgd_args,
}


def kernel_floats(algorithm: str, scalars: dict, hyper: dict) -> list[float]:
    """The kernel's float arguments in ``SCALAR_NAMES`` order."""
    floats = dict.fromkeys(SCALAR_NAMES, 0.0)
    floats.update(ALGORITHMS[algorithm](scalars, hyper))
    return [floats[name] for name in SCALAR_NAMES]


def bucket_columns(algorithm: str, params: list[Tensor], grads: list[Tensor], states: list[list[Tensor]],
                   ipt_avgs: Optional[list[Tensor]], hyper: dict) -> list[Optional[list[Tensor]]]:
    """θ, g, state 0, state 1, Ī columns (None = absent) of a bucket, after the checks every kernel needs."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; expected one of {', '.join(ALGORITHMS)}")
    if hyper["sage"] and ipt_avgs is None:
        raise ValueError("sage=True needs the sensitivity EMA tensors (ipt_avgs)")
    if len(states) > 2:
        raise ValueError(f"at most 2 state buffers per tensor besides Ī, got {len(states)}")
    return [params, grads, *states, *([None] * (2 - len(states))), ipt_avgs if hyper["sage"] else None]


def check_bucket(columns: list[Optional[list[Tensor]]], dtypes) -> None:
    """A one-line error naming the first tensor a kernel supporting ``dtypes`` cannot take.

    One launch runs on one device: a bucket with tensors on two devices is refused (the kernel would read one
    device's addresses on the other). State and Ī are ``state_dtype`` of the parameters (float32 for half).
    """
    p0, g0 = columns[0][0], columns[1][0]
    if p0.dtype not in dtypes or g0.dtype not in dtypes:
        raise ValueError(f"fused SAGE step supports {', '.join(map(str, dtypes))}; "
                         f"got parameters {p0.dtype}, gradients {g0.dtype}")
    for name, col in zip(COLUMN_NAMES, columns):
        if col is None:
            continue
        if len(col) != len(columns[0]):
            raise ValueError(f"fused SAGE step: {len(col)} {name} tensors for {len(columns[0])} parameters")
        dtype = {"parameter": p0.dtype, "gradient": g0.dtype}.get(name, state_dtype(p0.dtype))
        for i, (t, p) in enumerate(zip(col, columns[0])):
            if t.device != p0.device:
                raise ValueError(f"fused SAGE step: one launch updates tensors on one device; {name} {i} is on "
                                 f"{t.device}, parameter 0 on {p0.device}")
            if t.dtype != dtype or not t.is_contiguous() or t.numel() != p.numel():
                raise ValueError(f"fused SAGE step: {name} {i} must be a contiguous {dtype} tensor on "
                                 f"{p0.device} with the parameter's size; got {t.dtype} {tuple(t.shape)} "
                                 f"on {t.device} (contiguous={t.is_contiguous()})")


def is_momentum(algorithm: str, hyper: dict) -> bool:
    return algorithm == "sgd" and float(hyper["momentum"]) != 0
