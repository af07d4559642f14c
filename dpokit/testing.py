"""Tiny random models with a real tokenizer, for tests and CI smoke runs.

Training code paths (tokenization, chat templates, LoRA target modules, DPO losses) are the same
for a 64-wide, 2-layer model as for a real one, but run in seconds on a CPU. The tokenizer is the
embedded model's (SmolLM2: chat template, ``<|im_end|>`` as eos/pad), so the data side is real.
Three architectures cover the usual LoRA target module names:

* ``llama``    -> ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` (+ ``gate/up/down_proj``)
* ``gpt2``     -> ``c_attn`` (fused qkv, a ``Conv1D``), ``c_proj``, ``c_fc``
* ``gpt_neox`` -> ``query_key_value`` (fused qkv), ``dense``, ``dense_h_to_4h``
"""

from __future__ import annotations

import os
from pathlib import Path

TINY_ARCHS = ("llama", "gpt2", "gpt_neox")
TINY_MAX_POSITIONS = 2048


def _tiny_config(arch: str, vocab_size: int, hidden_size: int, num_layers: int, special: dict):
    """A transformers config for a tiny model of ``arch`` (4 heads of hidden_size // 4)."""
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig

    heads = 4
    if hidden_size % heads:
        raise ValueError(f"hidden_size must be a multiple of {heads}, got {hidden_size}")
    if arch == "llama":  # like SmolLM2: grouped-query attention, tied embeddings
        return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size,
                           intermediate_size=2 * hidden_size, num_hidden_layers=num_layers,
                           num_attention_heads=heads, num_key_value_heads=heads // 2,
                           max_position_embeddings=TINY_MAX_POSITIONS, tie_word_embeddings=True,
                           **special)
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_embd=hidden_size, n_layer=num_layers, n_head=heads,
                          n_positions=TINY_MAX_POSITIONS, **special)
    if arch == "gpt_neox":
        return GPTNeoXConfig(vocab_size=vocab_size, hidden_size=hidden_size,
                             intermediate_size=4 * hidden_size, num_hidden_layers=num_layers,
                             num_attention_heads=heads, max_position_embeddings=TINY_MAX_POSITIONS,
                             **special)
    raise ValueError(f"unknown tiny model arch {arch!r}; choose one of {', '.join(TINY_ARCHS)}")


def build_tiny_model(
    out_dir: str | os.PathLike,
    arch: str = "llama",
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    tokenizer_dir: str | os.PathLike | None = None,
) -> Path:
    """Save a tiny randomly initialised causal LM plus a real tokenizer into ``out_dir``.

    ``AutoModelForCausalLM.from_pretrained(out_dir)`` and ``AutoTokenizer.from_pretrained(out_dir)``
    then work offline. The weights depend only on ``seed`` and the sizes (the global RNG state is
    left untouched). The vocab size is the tokenizer's, and bos/eos/pad ids in the model config and
    generation config are the tokenizer's. ``tokenizer_dir`` defaults to the embedded model's
    converted cache (converting it first if needed, ~20 s once).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if tokenizer_dir is None:
        from dpokit.embedded import ensure_embedded_model

        tokenizer_dir = ensure_embedded_model()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.model_max_length = TINY_MAX_POSITIONS
    special = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = _tiny_config(arch, len(tokenizer), hidden_size, num_layers, special)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    for key, value in special.items():
        setattr(model.generation_config, key, value)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def write_arithmetic_pairs(path: str | os.PathLike, n_a: int = 6, n_b: int = 4) -> Path:
    """A small explicit-prompt JSONL file: short right answers vs verbose wrong ones."""
    import json

    rows = [{"prompt": f"What is {a} + {b}? Reply with just the number.", "chosen": str(a + b),
             "rejected": f"Sure! {a} plus {b} equals {a + b + 1}, because addition combines the numbers."}
            for a in range(n_a) for b in range(n_b)]
    path = Path(path)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def small_run_config(model_dir, data_path, out: str | os.PathLike, **sections):
    """A validated config for a seconds-long run of a tiny model (tests, CI smoke runs).

    Keyword arguments are sections whose keys update the defaults here (a non-dict replaces them).
    """
    from .config import load_config

    out = Path(out)
    data = {
        "models": [{"name": "tiny", "huggingface_id": str(model_dir)}],
        "dataset": {"name": str(data_path), "validation_split": 0.0, "max_samples": None},
        "post_training": {"use_ref_model": False},
        "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "training": {"output_dir": str(out / "runs"), "max_steps": 2, "per_device_train_batch_size": 2,
                     "gradient_accumulation_steps": 1, "learning_rate": 1e-3, "warmup_steps": 0,
                     "logging_steps": 1, "save_steps": 2, "gradient_checkpointing": False,
                     "max_seq_length": 128, "max_prompt_length": 96, "max_completion_length": 32},
        "logging": {"report_to": ["none"], "logging_dir": str(out / "logs")},
        "evaluation": {"enabled": False},
        "seed": 0,
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    return load_config(data=data)
