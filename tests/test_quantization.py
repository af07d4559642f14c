"""QLoRA for real on a CPU: bitsandbytes 0.50's CPU backend runs 4-bit and 8-bit forward and backward,
so a DPO step through dpokit's TRL trainer is run on a tiny quantized model, with a bitsandbytes
8-bit paged optimizer and the adapter-disabled reference."""

from __future__ import annotations


import pytest

from dpokit.quantization import (bnb_config, describe_quantization, device_map_for, load_policy, model_load_kwargs,
                                 reference_needs_copy)

bnb = pytest.importorskip("bitsandbytes")


def test_the_bitsandbytes_config_carries_every_setting():
    import torch

    q = bnb_config("4bit", quant_type="fp4", compute_dtype="bf16", double_quant=False, quant_storage="bf16")
    assert q.load_in_4bit and not q.load_in_8bit and q.bnb_4bit_quant_type == "fp4"
    assert q.bnb_4bit_compute_dtype == torch.bfloat16 and q.bnb_4bit_quant_storage == torch.bfloat16
    assert q.bnb_4bit_use_double_quant is False
    assert bnb_config("8bit").load_in_8bit and bnb_config("none") is None
    with pytest.raises(ValueError, match="none, 4bit or 8bit"):
        bnb_config("3bit")


def test_where_weights_go_depends_on_strategy_and_quantization():
    assert device_map_for(quantized=True, strategy="zero3", local_rank=3, cuda=True) is None
    assert device_map_for(quantized=True, strategy="fsdp", local_rank=3, cuda=True) is None
    assert device_map_for(quantized=True, strategy="ddp", local_rank=3, cuda=True) == {"": 3}
    assert device_map_for(quantized=True, strategy="single", local_rank=None, cuda=False) == {"": "cpu"}
    assert device_map_for(quantized=False, strategy="ddp", local_rank=3, cuda=True) is None
    kwargs = model_load_kwargs(dtype="bf16", attn_implementation="sdpa", device_map={"": 0})
    assert set(kwargs) == {"dtype", "attn_implementation", "device_map"}


def test_only_use_ref_model_true_loads_a_second_copy():
    assert reference_needs_copy(method_uses_reference=True, use_ref_model=True, precompute_ref_log_probs=False)
    assert not reference_needs_copy(method_uses_reference=True, use_ref_model=False, precompute_ref_log_probs=False)
    assert not reference_needs_copy(method_uses_reference=True, use_ref_model=True, precompute_ref_log_probs=True)
    assert not reference_needs_copy(method_uses_reference=False, use_ref_model=True, precompute_ref_log_probs=False)


def _trainer(config, **kwargs):
    from dpokit.trainers import build_trainer

    return build_trainer(config, **kwargs)


@pytest.mark.parametrize("load_in", ["4bit", "8bit"])
def test_a_quantized_dpo_step_trains_the_adapter_and_leaves_the_base_alone(tiny_llama_dir, tmp_path, load_in):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from dpokit.data import load_preference_data
    from dpokit.models import load_tokenizer
    from dpokit.testing import small_run_config, write_arithmetic_pairs

    data = write_arithmetic_pairs(tmp_path / "pairs.jsonl")
    config = small_run_config(tiny_llama_dir, data, tmp_path, training={"max_steps": 3, "save_steps": 100,
                                                                        "optim": "paged_adamw_8bit"})
    quant = bnb_config(load_in, quant_type="nf4", compute_dtype="fp32", double_quant=True, quant_storage="uint8")
    model = load_policy(str(tiny_llama_dir), dtype="fp32", quantization_config=quant, cuda=False)
    kind = {"4bit": "Linear4bit", "8bit": "Linear8bitLt"}[load_in]
    loaded = describe_quantization(model)
    assert loaded["quantized_layers"] == {kind: 2 * 7}  # every linear of the 2 layers; the LM head stays
    full = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert loaded["footprint_bytes"] < full.get_memory_footprint()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if "layers" in n and "proj" in n}

    trainer = _trainer(config, model=model, tokenizer=load_tokenizer(str(tiny_llama_dir)),
                       data=load_preference_data(config, True), run_dir=tmp_path / "run")
    assert trainer.ref_model is None  # the reference is this model with the adapter off: no second copy
    trainable = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    assert len(losses) == 3 and losses[0] == pytest.approx(0.6931, abs=1e-3) and losses[-1] < losses[0]
    assert type(trainer.optimizer.optimizer).__module__.startswith("bitsandbytes")
    after = dict(trainer.model.named_parameters())
    assert all(not torch.equal(before, after[n]) for n, before in trainable.items())
    base = {n.replace("base_model.model.", "").replace(".base_layer", ""): p
            for n, p in trainer.model.named_parameters() if "lora_" not in n}
    assert frozen and all(torch.equal(before, base[n]) for n, before in frozen.items())

    # The adapter is saved in PEFT format and loads on the unquantized base model.
    trainer.model.save_pretrained(tmp_path / "adapter")
    on_full = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), tmp_path / "adapter")
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.isfinite(on_full(input_ids=ids).logits).all()
    saved = {n.replace(".default", ""): p for n, p in on_full.named_parameters() if "lora_" in n}
    trained = {n.replace(".default", ""): p for n, p in trainer.model.named_parameters() if "lora_" in n}
    assert saved.keys() == trained.keys()
    assert all(torch.allclose(saved[n].float(), trained[n].float()) for n in saved)


def test_a_4bit_base_saves_the_same_activations_as_the_unquantized_one(tiny_llama_dir):
    """What the planner assumes: quantization changes the weights, not what a step keeps for backward."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from dpokit.trl_hooks import completion_tokens_only

    def saved_bytes(model) -> int:
        add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
        model = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                                 lora_dropout=0.0, task_type="CAUSAL_LM"))
        model.train()
        ids = torch.randint(0, 1000, (4, 96), generator=torch.Generator().manual_seed(0))
        mask = torch.ones_like(ids)
        mask[-1, -3:] = 0
        labels = ids.clone()
        labels[:, :-32] = -100
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        saved: dict[int, int] = {}

        def keep(t):
            if t.untyped_storage().data_ptr() not in params:
                saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t), completion_tokens_only():
            model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
        return sum(saved.values())

    quantized = load_policy(str(tiny_llama_dir), dtype="fp32", cuda=False,
                            quantization_config=bnb_config("4bit", compute_dtype="fp32"))
    assert saved_bytes(quantized) == saved_bytes(AutoModelForCausalLM.from_pretrained(tiny_llama_dir)) > 0
