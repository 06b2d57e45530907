"""Shared fixtures: tiny models built from configs (no downloads), offline W&B, a small task."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(1)  # tiny models: threads cost more than they give


# The tiny models are circuitkit's plugin-author fixtures (circuitkit/testing.py: ck_tokenizer, ck_tiny_model,
# ck_tiny_model64, ck_tiny_model_dir), registered through the pytest11 entry point; the short names below
# are the same objects.


@pytest.fixture(scope="session")
def tokenizer(ck_tokenizer):
    """``ck_tokenizer``: the GPT-2 tokenizer shipped with circuitkit."""
    return ck_tokenizer


@pytest.fixture(scope="session")
def tiny_model(ck_tiny_model):
    """``ck_tiny_model``: 2 layers, 4 heads, d_model 32, float32."""
    return ck_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(ck_tiny_model_dir):
    """``ck_tiny_model_dir``: ``tiny_model`` saved with save_pretrained (model + tokenizer), for CLI tests."""
    return ck_tiny_model_dir


@pytest.fixture(scope="session")
def tiny_model64(ck_tokenizer):
    """A second architecture in float64 (3 heads, d_model 24, other weights), for finite-difference and
    exact-patching checks: a head count other than ``tiny_model``'s, and fewer edges to patch one by one.
    (``ck_tiny_model64`` is ``tiny_model`` itself in float64.)"""
    from circuitkit.testing_models import tiny_gpt2

    return tiny_gpt2(n_layers=2, n_heads=3, d_model=24, dtype=torch.float64, tokenizer=ck_tokenizer, seed=1)


@pytest.fixture(autouse=True)
def _wandb_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    # Each test gets its own attribution cache, so no test can pass on another test's results.
    monkeypatch.setenv("CIRCUITKIT_CACHE_DIR", str(tmp_path / "circuitkit-cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
