"""How many threads or processes a flag may ask for.

``--num_threads 100000`` would have torch start 100,000 OpenMP threads (and die of a MemoryError); a worker or
parallel-run count of that size forks as many processes. A count beyond a few per CPU never runs faster, so each
such flag is checked here against the CPUs this process may use, with room for deliberate oversubscription.
"""
from __future__ import annotations

import os

PER_CPU = 4  # oversubscription allowed per usable CPU
FLOOR = 8    # a small machine still accepts a handful


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask; the machine's count where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def parallelism_limit() -> int:
    return max(FLOOR, PER_CPU * usable_cpus())


def check_parallelism(flag: str, value: int, what: str = "threads") -> int:
    """``value`` if it is at most :func:`parallelism_limit`, else a ValueError naming ``flag``."""
    limit = parallelism_limit()
    if value > limit:
        raise ValueError(f"{flag}: {value} {what} on {usable_cpus()} usable CPU(s); at most {limit} "
                         f"({PER_CPU} per CPU) are accepted")
    return value
