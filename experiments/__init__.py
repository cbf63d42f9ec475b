"""Experiments on top of the product: the GLUE data chain, the demo and the sweeps. Their scripts run as modules
from the repository root, e.g. ``python -m experiments.glue.glue_prepro``."""
