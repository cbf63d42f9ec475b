"""SAGE optimizer implementation: the update math, the for-loop/foreach/fused paths and the fused kernels.

The public face is :mod:`module.bert_optim`; the update rule is stated in ``docs/sage_update_rule.md``.
"""
