"""The paper's analyses, as functions and one CLI (``python -m analysis <command>``).

- ``sensitivity``: distribution of per-parameter sensitivity |θ⊙∇L| over a training set (paper Fig. 2);
- ``prune``: one-shot pruning of the lowest-sensitivity weights, dev score vs fraction kept (Fig. 3);
- ``trajectory``: local temporal variation U and per-block sensitivity over training steps, from the JSONL log
  of :class:`mt_dnn.sensitivity_log.SensitivityTracker` (Fig. 4, Fig. 6);
- ``spiral``: decision boundaries of a small MLP on two spirals, Adam vs Adam-SAGE (Fig. 5).
"""
