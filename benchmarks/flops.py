"""Floating-point work of one DPO + LoRA training step, and the machine's matmul peak.

Matmul FLOPs only (2 per multiply-add); norms, softmax and optimizer updates are a small rest.
With a frozen base model the backward needs the gradient of every activation (about one
forward's matmuls) but not of the base weights; LoRA's own weight gradients are counted.
"""

from __future__ import annotations

import time


def model_sizes(model_dir) -> dict:
    """Body parameters (without embeddings and LM head) and the sizes the attention term needs."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    embed = model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings().weight
    total = sum(p.numel() for p in model.parameters())
    body = total - embed - (0 if getattr(config, "tie_word_embeddings", False) else head.numel())
    return {"body_params": body, "hidden": config.hidden_size, "vocab": config.vocab_size,
            "layers": config.num_hidden_layers,
            "attn_dim": config.num_attention_heads * (getattr(config, "head_dim", None)
                                                      or config.hidden_size // config.num_attention_heads)}


def step_flops(sizes: dict, rows: int, seq_len: int, scored: int, lora_params: int,
               reference_forward: bool = True) -> float:
    """FLOPs of one step: policy forward + backward (+ reference forward) on a padded batch."""
    tokens = rows * seq_len
    linear = 2 * sizes["body_params"] * tokens
    attention = 2 * sizes["layers"] * rows * seq_len * seq_len * sizes["attn_dim"]  # QK^T and PV, causal half
    head = 2 * sizes["hidden"] * sizes["vocab"] * scored
    lora = 2 * lora_params * tokens
    forward = linear + attention + head + lora
    backward = linear + 2 * attention + 2 * head + 2 * lora  # input grads; head tile recomputed; LoRA weights
    return forward + backward + (linear + attention + head if reference_forward else 0)


def matmul_peak_gflops(n: int = 1024, seconds: float = 3.0) -> float:
    """Best fp32 GFLOP/s of an n x n matmul per second of CPU time on this process' threads.

    CPU time, not wall time: on a shared machine the process is descheduled now and then, which
    says nothing about what the hardware can do (the training steps are compared the same way).
    """
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    for _ in range(3):
        torch.mm(a, b, out=out)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.process_time()
        for _ in range(4):
            torch.mm(a, b, out=out)
        best = max(best, 4 * 2 * n**3 / max(time.process_time() - start, 1e-9) / 1e9)
    return best
