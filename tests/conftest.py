"""Shared test fixtures: where ../shared lives, and a tiny random BERT for fast tests."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED = Path(os.environ.get("SAGE_SHARED_DIR", ROOT.parent / "shared"))
GLUE_DIR = SHARED / "glue"


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    """The read-only real GLUE copy in ../shared/glue; tests that need it skip with a reason if absent."""
    if not GLUE_DIR.is_dir():
        pytest.skip(f"real GLUE data not found at {GLUE_DIR} (set SAGE_SHARED_DIR to the shared/ folder)")
    return GLUE_DIR


def tiny_bert_config(**overrides):
    """A 2-layer BERT small enough for CPU unit tests; random weights, never for accuracy claims."""
    from transformers import BertConfig
    kw = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
              intermediate_size=64, max_position_embeddings=64, type_vocab_size=2)
    kw.update(overrides)
    return BertConfig(**kw)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` skip, with the reason, where no CUDA GPU is visible."""
    import torch
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (make gpu-check runs the cuda-marked tests)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
