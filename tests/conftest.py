"""Shared fixtures: tiny models built from configs (no downloads), offline W&B, a small task."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(1)  # tiny models: threads cost more than they give


@pytest.fixture(scope="session")
def tokenizer():
    from circuitkit.testing_models import gpt2_tokenizer

    return gpt2_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(tokenizer):
    """2 layers, 4 heads, d_model 32, float32."""
    from circuitkit.testing_models import tiny_gpt2

    return tiny_gpt2(tokenizer=tokenizer)


@pytest.fixture(scope="session")
def tiny_model64(tokenizer):
    """The same architecture in float64, for finite-difference checks."""
    from circuitkit.testing_models import tiny_gpt2

    return tiny_gpt2(n_layers=2, n_heads=3, d_model=24, dtype=torch.float64, tokenizer=tokenizer, seed=1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """A tiny model saved with save_pretrained (model + tokenizer), for CLI tests."""
    from circuitkit.testing_models import tiny_gpt2

    path = tmp_path_factory.mktemp("tiny-model")
    tiny_gpt2(tokenizer=tokenizer, save_to=path)
    return str(path)


@pytest.fixture(autouse=True)
def _wandb_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    # Each test gets its own attribution cache, so no test can pass on another test's results.
    monkeypatch.setenv("CIRCUITKIT_CACHE_DIR", str(tmp_path / "circuitkit-cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
