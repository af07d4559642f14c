"""Shared pytest fixtures.

Tests never touch the network. Real-model fixtures use the embedded model (converted once into
the dpokit cache: ``$DPOKIT_CACHE`` or ``~/.cache/dpokit``); everything else uses tiny random
models (hidden size 64, 2 layers) with the embedded model's real tokenizer, built once per session.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub

import pytest  # noqa: E402

# --- the embedded model and tiny models ------------------------------------------------------


@pytest.fixture(scope="session")
def embedded_model_dir():
    """Directory of the converted SmolLM2-135M-Instruct (model + tokenizer), in the real cache."""
    from dpokit.embedded import ensure_embedded_model

    return ensure_embedded_model()


@pytest.fixture(scope="session")
def tiny_models_root(tmp_path_factory):
    """Session-wide folder the tiny models are built in."""
    return tmp_path_factory.mktemp("tiny_models")


def _tiny(root, arch, tokenizer_dir):
    from dpokit.testing import build_tiny_model

    return build_tiny_model(root / arch, arch=arch, seed=0, tokenizer_dir=tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_llama_dir(tiny_models_root, embedded_model_dir):
    """Tiny Llama (LoRA targets q_proj/k_proj/v_proj/o_proj) with the SmolLM2 tokenizer."""
    return _tiny(tiny_models_root, "llama", embedded_model_dir)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tiny_models_root, embedded_model_dir):
    """Tiny GPT-2 (LoRA target c_attn, a Conv1D) with the SmolLM2 tokenizer."""
    return _tiny(tiny_models_root, "gpt2", embedded_model_dir)


@pytest.fixture(scope="session")
def tiny_neox_dir(tiny_models_root, embedded_model_dir):
    """Tiny GPT-NeoX (LoRA target query_key_value) with the SmolLM2 tokenizer."""
    return _tiny(tiny_models_root, "gpt_neox", embedded_model_dir)


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    """24 explicit-prompt pairs: short arithmetic answers vs verbose wrong ones."""
    from dpokit.testing import write_arithmetic_pairs

    return write_arithmetic_pairs(tmp_path_factory.mktemp("data") / "pairs.jsonl")
