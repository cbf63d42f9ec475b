"""Strict JSON for every file the project writes: a non-finite float becomes ``null``.

``json.dumps`` writes bare ``NaN``/``Infinity`` by default, which is not JSON and breaks other readers (jq,
JavaScript, pandas with strict parsers). A NaN metric (Pearson of constant predictions) is legitimate, so it is
written as ``null`` rather than refused.
"""
from __future__ import annotations

import json
import math
from typing import Any


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float (also inside dicts, lists and tuples) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def none_to_nan(value: Any) -> Any:
    """For readers of metric records: every None (a metric written as null) back to NaN."""
    if value is None:
        return math.nan
    if isinstance(value, dict):
        return {k: none_to_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [none_to_nan(v) for v in value]
    return value


def dumps(value: Any, **kwargs) -> str:
    return json.dumps(finite_or_none(value), allow_nan=False, **kwargs)


def dump(value: Any, handle, **kwargs) -> None:
    handle.write(dumps(value, **kwargs))
