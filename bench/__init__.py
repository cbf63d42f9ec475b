"""Benchmarks and the first GPU check, run as modules from the repository root: ``python -m bench.<name>``."""
