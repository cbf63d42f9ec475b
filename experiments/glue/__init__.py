"""GLUE: raw files -> canonical TSVs (``python -m experiments.glue.glue_prepro``), task definitions, settings."""
