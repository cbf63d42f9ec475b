"""Per-task training scripts, written by ``python -m scripts.generate`` from experiments/glue/paper_settings.yml."""
