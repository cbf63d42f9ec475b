"""Sweeps of train.py over optimizers × learning rates × β3 × seeds, and the statistics SAGE's claims rest on.

Modules, one job each: ``spec`` (YAML -> typed grid), ``runner`` (resumable, N-at-a-time execution),
``results`` (metrics.jsonl -> best/last epoch), ``stats`` (mean ± std, best configuration, paired t-test),
``report`` (Table 2-style markdown, CSV, JSON), ``heatmap`` (lr × β3 PNG). The CLI is ``sweep.py``.
"""
