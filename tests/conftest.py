"""Shared test setup: offline hub, one torch thread (2-core CI machines), tiny models."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest


@pytest.fixture(scope="session")
def torch_one_thread():
    import torch

    torch.set_num_threads(1)
    return torch


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny Qwen2 model + tokenizer built offline once per test session."""
    from cgrpo.model.tiny import create_tiny_model

    return create_tiny_model(
        tmp_path_factory.mktemp("tiny") / "model",
        hidden_size=64,
        num_heads=2,
        num_kv_heads=1,
        intermediate_size=128,
    )


@pytest.fixture(scope="session")
def tiny(tiny_model_dir, torch_one_thread):
    """(model, tokenizer) loaded from :func:`tiny_model_dir`, float32 on CPU."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch_one_thread.float32)
    return model, tok
