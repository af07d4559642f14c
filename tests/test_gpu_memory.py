"""The per-GPU memory terms (dpokit/gpu_memory.py) against hand computations from published configs.

Shapes are written out from each model's config.json numbers, independently of the code under test."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dpokit.gpu_memory import (COMM_BYTES, NF4_BYTES, NF4_DQ_BYTES, GpuSetup, activation_terms, gpu_estimate,
                               optimizer_state_bytes)
from dpokit.memory import RUNTIME_BYTES, activation_bytes_per_token
from dpokit.plan_inputs import bundled_model_config, model_facts

ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]


@pytest.fixture(scope="module")
def qwen7b():
    return model_facts(bundled_model_config("qwen2.5-7b"), layout=None)


@pytest.fixture(scope="module")
def llama8b():
    return model_facts(bundled_model_config("llama-3.1-8b"))


def setup(**kw):
    base = dict(pairs_per_device=2, seq_len=512, completion_len=256, lora_rank=16, lora_target_modules=ATTN,
                gradient_checkpointing=True, reference="adapter", precision="bf16", weights_dtype="bf16")
    return GpuSetup(**{**base, **kw})


def linear_params(h, kv, inter, layers):
    """Weights of the decoder layers' linear layers: q and o (h x h), k and v (h x kv), gate/up/down (h x inter)."""
    return layers * (2 * h * h + 2 * h * kv + 3 * h * inter)


@pytest.mark.parametrize("name, published, digits", [("qwen2.5-0.5b", 0.49e9, 2), ("qwen2.5-7b", 7.61e9, 2),
                                                     ("llama-3.1-8b", 8.03e9, 2), ("llama-3.1-70b", 70.6e9, 1)])
def test_bundled_configs_have_the_published_parameter_counts(name, published, digits):
    """The model cards' counts, given to 2 (or 1) decimals of a billion."""
    count = model_facts(bundled_model_config(name)).num_parameters
    assert count == pytest.approx(published, abs=10.0 ** (9 - digits))


def test_the_4bit_constants_are_the_qlora_papers():
    assert (NF4_BYTES - 0.5) * 8 == pytest.approx(0.5)  # 32-bit absmax per 64 weights: 0.5 bit per parameter
    assert (NF4_DQ_BYTES - 0.5) * 8 == pytest.approx(0.127, abs=5e-4)  # 8/64 + 32/(64*256) bits


def test_weights_in_16_bits_4_bits_and_8_bits(qwen7b):
    total = qwen7b.num_parameters
    linear = linear_params(3584, 512, 18944, 28)
    assert gpu_estimate(qwen7b, setup()).terms["weights"] == 2 * total
    assert gpu_estimate(qwen7b, setup(weights_dtype="fp32")).terms["weights"] == 4 * total
    # 4-bit: packed linear weights; embeddings, head and norms cast to fp32 by prepare_model_for_kbit_training.
    four = gpu_estimate(qwen7b, setup(quantization="4bit")).terms["weights"]
    assert four == int(linear * (0.5 + 1 / 64 + 4 / 16384) + (total - linear) * 4)
    no_dq = gpu_estimate(qwen7b, setup(quantization="4bit", double_quant=False)).terms["weights"]
    assert no_dq == int(linear * (0.5 + 4 / 64) + (total - linear) * 4)
    rows = 28 * (3584 + 512 + 512 + 3584 + 18944 + 18944 + 3584)  # output features: one fp32 scale each
    eight = gpu_estimate(qwen7b, setup(quantization="8bit")).terms["weights"]
    assert eight == linear + 4 * rows + (total - linear) * 4


def test_zero3_and_fsdp_shard_the_weights_and_gather_two_layers(qwen7b):
    total, layer = qwen7b.num_parameters, linear_params(3584, 512, 18944, 1)
    z3 = gpu_estimate(qwen7b, setup(strategy="zero3", world_size=8))
    assert z3.terms["weights (shard)"] == 2 * total // 8
    assert z3.terms["gathered layers"] == 2 * layer * 2 + 152064 * 3584 * 2  # + one embedding matrix
    fsdp = gpu_estimate(qwen7b, setup(strategy="fsdp", world_size=8))
    assert fsdp.terms["gathered layers"] == 2 * layer * 2 + (total - 28 * layer) * 2  # + the root unit
    offloaded = gpu_estimate(qwen7b, setup(strategy="fsdp", world_size=8, cpu_offload=True))
    assert offloaded.terms["weights (shard)"] == 0 and offloaded.shape["cpu_offload_bytes"] == 2 * total // 8
    assert z3.terms["runtime"] == RUNTIME_BYTES["cuda"] + COMM_BYTES


def test_a_separate_reference_is_full_under_ddp_and_zero2_and_sharded_under_zero3(qwen7b):
    weights = 2 * qwen7b.num_parameters
    assert gpu_estimate(qwen7b, setup(reference="separate")).terms["reference copy"] == weights
    assert gpu_estimate(qwen7b, setup(reference="separate", strategy="zero2", world_size=4)
                        ).terms["reference copy"] == weights
    assert gpu_estimate(qwen7b, setup(reference="separate", strategy="zero3", world_size=4)
                        ).terms["reference copy"] == weights // 4
    for reference in ("adapter", "precomputed", "none"):
        assert gpu_estimate(qwen7b, setup(reference=reference)).terms["reference copy"] == 0


def test_lora_state_by_optimizer_and_sharding(llama8b):
    lora = 32 * 16 * ((4096 + 4096) * 2 + (4096 + 1024) * 2)  # q, o: h -> h; k, v: h -> 8 heads x 128
    est = gpu_estimate(llama8b, setup())
    assert est.shape["lora_params"] == lora
    assert est.terms["LoRA adapter + optimizer state"] == lora * (4 + 4 + 8)  # fp32 adapter, gradient, AdamW
    assert gpu_estimate(llama8b, setup(optimizer="adamw_8bit")).terms["LoRA adapter + optimizer state"] == \
        lora * (4 + 4 + 2)
    # On a 4-bit base TRL keeps the adapter in bf16; torch's AdamW keeps its states in the parameter dtype.
    assert gpu_estimate(llama8b, setup(quantization="4bit")).terms["LoRA adapter + optimizer state"] == lora * 8
    assert gpu_estimate(llama8b, setup(strategy="zero2", world_size=8)).terms["LoRA adapter + optimizer state"] == \
        int(lora * 2 + lora * (2 + 12) / 8)  # ZeRO paper: 16-bit param kept, gradient and fp32 states sharded
    assert gpu_estimate(llama8b, setup(strategy="zero3", world_size=8)).terms["LoRA adapter + optimizer state"] == \
        lora * 16 // 8
    assert optimizer_state_bytes("paged_adamw_32bit", 2) == 8 and optimizer_state_bytes("adamw_torch", 2) == 4


def test_paged_optimizer_state_makes_room_for_the_activations(llama8b):
    plain = gpu_estimate(llama8b, setup(optimizer="adamw_bnb_8bit", gradient_checkpointing=False))
    paged = gpu_estimate(llama8b, setup(optimizer="paged_adamw_8bit", gradient_checkpointing=False))
    lora = plain.shape["lora_params"]
    assert plain.terms["LoRA adapter + optimizer state"] - paged.terms["LoRA adapter + optimizer state"] == 2 * lora


def test_gpu_activations_are_the_measured_cpu_layout_with_one_mask_and_16_bit_residuals(llama8b):
    fp32 = setup(weights_dtype="fp32", precision="fp32", gradient_checkpointing=False, attn_implementation="sdpa")
    shape, rows, seq = llama8b.shape, 4, 512
    targeted = {"q_proj", "k_proj", "v_proj", "o_proj"}
    cpu = activation_bytes_per_token(shape, True, targeted, 4, 16, seq, 4, 0)  # mask per layer, fp32
    gpu = activation_terms(llama8b, fp32)["activations"]
    assert gpu == 32 * rows * seq * (cpu - 4 * seq) + rows * seq * seq  # one bool mask, shared
    bf16 = activation_terms(llama8b, replace(fp32, weights_dtype="bf16", precision="bf16"))["activations"]
    per16 = activation_bytes_per_token(shape, True, targeted, 4, 16, 0, 2, 0) - 2 * (2 * 4096 + 2)
    assert bf16 == 32 * rows * seq * per16 + rows * seq * seq
    flash = activation_terms(llama8b, replace(fp32, attn_implementation="flash_attention_2"))["activations"]
    assert gpu - flash == rows * seq * seq
    eager = activation_terms(llama8b, replace(fp32, attn_implementation="eager"))["activations"]
    assert eager - gpu == 32 * rows * seq * 32 * seq * 8 + rows * seq * seq * 3  # fp32 probs twice, a float mask


def test_checkpointing_keeps_layer_inputs_and_recomputes_one_layer(llama8b):
    s = setup(attn_implementation="flash_attention_2")
    acts = activation_terms(llama8b, s)
    plain = activation_terms(llama8b, replace(s, gradient_checkpointing=False))["activations"]
    tokens = 4 * 512
    one_layer = plain // 32
    assert acts["activations"] == 33 * tokens * 4096 * 2 + one_layer - acts["LM-head tiles"]


def test_the_lm_head_is_tiled_for_dpo_and_full_for_comparisons(llama8b):
    tiled = activation_terms(llama8b, setup())["LM-head tiles"]
    assert tiled == (4 * 256) * 32768 * 2 * 2 + 4 * 256 * 4096 * 4  # TRL's tile: bf16 buffer + gradient
    full = activation_terms(llama8b, setup(lm_head="full"))["LM-head tiles"]
    assert full == 4 * 256 * 128256 * (2 + 4 + 4)


def held_bytes(model) -> int:
    """Bytes a loaded model holds: every distinct parameter and buffer, plus bitsandbytes' quantization
    constants (4-bit absmax, and its second level with double quantization; 8-bit row scales)."""
    seen, total = set(), 0

    def add(t):
        nonlocal total
        key = None if t is None else (t.untyped_storage().data_ptr(), t.storage_offset())
        if key is not None and key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()

    for t in [*model.parameters(), *model.buffers()]:
        add(t)
        state = getattr(t, "quant_state", None)
        if state is not None:
            add(state.absmax)
            add(state.state2.absmax if state.state2 is not None else None)
        add(getattr(t, "SCB", None))
    return total


@pytest.mark.parametrize("load_in, double_quant", [("4bit", True), ("4bit", False), ("8bit", True)])
def test_quantized_weight_terms_are_what_bitsandbytes_holds(embedded_model_dir, load_in, double_quant):
    """SmolLM2-135M loaded by bitsandbytes' CPU backend and prepared for k-bit training, against the term."""
    pytest.importorskip("bitsandbytes")
    from transformers import AutoConfig

    from dpokit.gpu_memory import weight_bytes
    from dpokit.quantization import bnb_config, load_policy

    quant = bnb_config(load_in, compute_dtype="bf16", double_quant=double_quant)
    model = load_policy(str(embedded_model_dir), dtype="bf16", quantization_config=quant, cuda=False)
    facts = model_facts(AutoConfig.from_pretrained(embedded_model_dir))
    expected, _ = weight_bytes(facts, setup(quantization=load_in, double_quant=double_quant))
    assert expected == pytest.approx(held_bytes(model), abs=4096)  # the rotary buffer is not a weight
