"""Memory estimator: each term checked against the real thing on tiny models (no mocks).

The end-to-end comparison with measured peak RSS on the real 135M model is benchmarks/bench_memory.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dpokit.config import load_config
from dpokit.memory import MemoryEstimate, estimate_memory, format_estimate

TARGETS = {"llama": ["q_proj", "v_proj"], "gpt2": ["c_attn"], "gpt_neox": ["query_key_value"]}


def config_for(model_dir, lora_dropout=0.0, **training):
    base = {"per_device_train_batch_size": 2, "max_seq_length": 96, "max_prompt_length": 64,
            "max_completion_length": 32, "gradient_checkpointing": False, "bf16": False}
    return load_config(data={
        "models": [{"name": "tiny", "huggingface_id": str(model_dir)}],
        "dataset": {"name": "unused.jsonl"},
        "post_training": {"use_ref_model": training.pop("use_ref_model", False)},
        "lora": {"r": training.pop("r", 4), "lora_alpha": 8, "lora_dropout": lora_dropout,
                 "target_modules": training.pop("targets", ["q_proj", "v_proj"])},
        "training": {**base, **training},
        "logging": {"report_to": ["none"]},
    })


def test_weights_and_lora_terms_count_what_transformers_and_peft_create(tiny_llama_dir, tiny_gpt2_dir, tiny_neox_dir):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from dpokit.models import count_parameters, lora_config

    for arch, model_dir in (("llama", tiny_llama_dir), ("gpt2", tiny_gpt2_dir), ("gpt_neox", tiny_neox_dir)):
        config = config_for(model_dir, targets=TARGETS[arch])
        est = estimate_memory(config, device="cpu")
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        total, _ = count_parameters(model)
        _, trainable = count_parameters(get_peft_model(model, lora_config(config.lora)))
        assert est.terms["weights"] == 4 * total, arch
        assert est.shape["lora_params"] == trainable, arch
        assert est.terms["LoRA adapter + optimizer state"] == 3 * 4 * trainable, arch  # params + AdamW's 2 states


@pytest.mark.parametrize("targets, use_dora", [
    (["q_proj", "v_proj"], False),
    (r"model\.layers\.0\.self_attn\.(q|v)_proj", False),  # a regex over the full name, as PEFT reads it
    ("all-linear", False),
    (["q_proj", "o_proj", "down_proj"], True),
])
def test_lora_count_without_peft_equals_peft(tiny_llama_dir, targets, use_dora):
    """The dry run counts LoRA parameters from layer shapes; PEFT must create exactly that many."""
    from peft import get_peft_model
    from transformers import AutoConfig

    from dpokit.memory import linear_shapes, lora_parameter_count
    from dpokit.models import count_parameters, lora_config, meta_model

    config = config_for(tiny_llama_dir, targets=targets, r=4)
    config.lora.use_dora = use_dora
    model = meta_model(AutoConfig.from_pretrained(tiny_llama_dir))
    counted = lora_parameter_count(linear_shapes(model), targets, 4, use_dora)
    _, trainable = count_parameters(get_peft_model(model, lora_config(config.lora)))
    assert counted == trainable > 0


@pytest.mark.parametrize("lora_dropout", [0.0, 0.05])
def test_activation_term_matches_the_tensors_a_real_step_saves_for_backward(tiny_llama_dir, lora_dropout):
    """Sum the distinct tensors autograd keeps during the policy forward (dpokit's LoRA model, TRL's head)."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from dpokit.models import lora_config
    from dpokit.trl_hooks import completion_tokens_only

    config = config_for(tiny_llama_dir, lora_dropout, targets=["q_proj", "k_proj", "v_proj", "o_proj"], r=8)
    est = estimate_memory(config, device="cpu")
    rows, seq, completion = est.shape["rows"], est.shape["seq_len"], 32
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    model = get_peft_model(model, lora_config(config.lora))
    model.train()
    ids = torch.randint(0, 1000, (rows, seq))
    mask = torch.ones_like(ids)
    mask[-1, -3:] = 0  # some padding, so the attention mask is materialised as in real batches
    labels = ids.clone()
    labels[:, :-completion] = -100
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def keep(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t), completion_tokens_only():
        model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    measured = sum(saved.values())
    assert est.terms["activations"] == pytest.approx(measured, rel=0.10)


def test_checkpointing_keeps_only_layer_inputs_and_a_reference_model_doubles_the_weights(tiny_llama_dir):
    plain = estimate_memory(config_for(tiny_llama_dir), device="cpu")
    checkpointed = estimate_memory(config_for(tiny_llama_dir, gradient_checkpointing=True), device="cpu")
    with_ref = estimate_memory(config_for(tiny_llama_dir, use_ref_model=True), device="cpu")
    assert checkpointed.terms["activations (checkpointed)"] < plain.terms["activations"] / 3
    assert with_ref.terms["reference copy"] == with_ref.terms["weights"] == plain.terms["weights"]
    assert plain.terms["reference copy"] == 0
    assert with_ref.total - plain.total == plain.terms["weights"]


def test_activations_grow_with_batch_and_sequence_and_the_head_with_completion_tokens(tiny_llama_dir):
    small = estimate_memory(config_for(tiny_llama_dir), device="cpu")
    double_batch = estimate_memory(config_for(tiny_llama_dir, per_device_train_batch_size=4), device="cpu")
    longer = estimate_memory(config_for(tiny_llama_dir, max_seq_length=192, max_prompt_length=160), device="cpu")
    longer_answers = estimate_memory(config_for(tiny_llama_dir, max_seq_length=128, max_completion_length=64),
                                     device="cpu")
    assert double_batch.terms["activations"] == 2 * small.terms["activations"]
    assert double_batch.terms["LM-head tiles"] == 2 * small.terms["LM-head tiles"]
    assert longer.terms["activations"] > 2 * small.terms["activations"]  # the attention mask grows with seq^2
    assert longer.terms["LM-head tiles"] == small.terms["LM-head tiles"]  # same completion tokens scored
    assert longer_answers.terms["LM-head tiles"] == 2 * small.terms["LM-head tiles"]


def test_each_method_has_its_own_terms_kto_one_sequence_per_row_and_orpo_the_full_logits(tiny_llama_dir):
    from dpokit.memory import FULL_LOGIT_COPIES

    def estimate(method, **extra):
        config = config_for(tiny_llama_dir, **extra)
        config.post_training.method = method
        return estimate_memory(config, device="cpu")

    dpo, ipo, kto, orpo = (estimate(m) for m in ("dpo", "ipo", "kto", "orpo"))
    assert ipo.terms == dpo.terms  # IPO is DPOTrainer with another loss
    # KTO runs one sequence per row with gradients (its KL completions run without): half DPO's saved activations
    assert kto.terms["activations"] == dpo.terms["activations"] // 2 and kto.shape["rows"] == 2
    assert kto.terms["LM-head tiles"] < dpo.terms["LM-head tiles"]
    # ORPO scores every position through the full head and keeps the logits and their log-softmax
    assert "LM-head tiles" not in orpo.terms
    rows, seq, vocab, hidden = 4, orpo.shape["seq_len"], 49152, 64
    assert orpo.terms["full logits (SFT + odds-ratio terms)"] == int(FULL_LOGIT_COPIES * rows * seq * vocab * 4) \
        + rows * seq * hidden * 4
    assert orpo.total > dpo.total and kto.total < dpo.total
    assert any("full logits of all" in line for line in format_estimate(orpo))
    assert any("KTO's KL completions run without gradients" in line for line in format_estimate(kto))


def test_gpu_bf16_halves_matmul_activations_and_uses_the_in_place_head(tiny_llama_dir):
    fp32 = estimate_memory(config_for(tiny_llama_dir), device="cuda")
    bf16 = estimate_memory(config_for(tiny_llama_dir, bf16=True), device="cuda")
    cpu = estimate_memory(config_for(tiny_llama_dir), device="cpu")
    assert bf16.precision == "bf16" and 0.5 < bf16.terms["activations"] / fp32.terms["activations"] < 0.7
    assert fp32.terms["LM-head tiles"] < cpu.terms["LM-head tiles"] / 3  # Triton folds in place
    assert fp32.terms["runtime"] > cpu.terms["runtime"]  # the CUDA context


def test_the_estimate_needs_only_the_model_config(tiny_llama_dir, tmp_path):
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    shutil.copy(Path(tiny_llama_dir) / "config.json", config_only / "config.json")
    assert not list(config_only.glob("*.safetensors"))
    est = estimate_memory(config_for(config_only), device="cpu")
    assert est.total == estimate_memory(config_for(tiny_llama_dir), device="cpu").total


def test_dry_run_lines_give_the_total_and_the_main_terms(tiny_llama_dir):
    est = estimate_memory(config_for(tiny_llama_dir, use_ref_model=True), device="cpu")
    lines = format_estimate(est)
    assert lines[0].startswith("memory estimate (CPU RAM, fp32") and ("GB" in lines[0] or "MB" in lines[0])
    text = "\n".join(lines)
    for term in ("weights", "reference copy", "activations", "LM-head tiles", "LoRA adapter"):
        assert term in text
    assert "4 sequences (chosen + rejected) x 96 tokens" in text
    empty = MemoryEstimate(terms={"weights": 2**30, "reference copy": 0}, device="cuda", precision="bf16",
                           shape=est.shape)
    assert not any("reference copy" in line for line in format_estimate(empty))


def test_lm_head_scores_only_completion_tokens_with_the_same_loss(tiny_llama_dir, tmp_path, monkeypatch):
    """dpokit's trainer projects only completion positions through the LM head on CPU; TRL's own
    compute_loss on the same batch projects every position and gets the same loss and metrics."""
    import torch
    import trl.trainer.utils as trl_utils
    from trl import DPOTrainer

    from dpokit.data import load_preference_data
    from dpokit.models import load_model, load_tokenizer
    from dpokit.trainers import build_trainer

    data_path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"What is {a} + 2? Reply with just the number.", "chosen": str(a + 2),
             "rejected": f"I think {a} plus two is {a + 3}, as far as I can tell."} for a in range(8)]
    data_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = config_for(tiny_llama_dir)
    config.dataset.name, config.dataset.validation_split, config.dataset.max_samples = str(data_path), 0.0, None
    config.training.output_dir = str(tmp_path / "runs")
    tokenizer = load_tokenizer(str(tiny_llama_dir))
    data = load_preference_data(config, True)
    trainer = build_trainer(config, model=load_model(str(tiny_llama_dir)), tokenizer=tokenizer,
                            data=data, run_dir=tmp_path / "run")
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])

    projected: list[int] = []
    real = trl_utils._ChunkedLogProbFunction

    class Recording(real):
        @staticmethod
        def forward(ctx, hidden, *args):
            projected.append(hidden.shape[0])
            return real.forward(ctx, hidden, *args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", Recording)
    trainer.model.eval()
    with torch.no_grad():
        ours = trainer.compute_loss(trainer.model, batch)
        ours_metrics = {k: v[-1] for k, v in trainer._metrics["eval"].items()}
        theirs = DPOTrainer.compute_loss(trainer, trainer.model, batch)
        theirs_metrics = {k: v[-1] for k, v in trainer._metrics["eval"].items()}
    completion_tokens = int(batch["completion_mask"].sum())
    positions = batch["input_ids"].shape[0] * (batch["input_ids"].shape[1] - 1)
    assert projected == [completion_tokens, completion_tokens, positions, positions]  # policy + reference, twice
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)
    for key, value in theirs_metrics.items():
        assert ours_metrics[key] == pytest.approx(value, abs=1e-4), key


def test_model_layout_is_cached_by_config_and_rebuilt_when_damaged(tiny_llama_dir, tmp_path, monkeypatch):
    from transformers import AutoConfig

    import dpokit.models
    from dpokit.memory import linear_shapes, model_layout
    from dpokit.models import count_parameters, meta_model

    monkeypatch.setenv("DPOKIT_CACHE", str(tmp_path))
    mc = AutoConfig.from_pretrained(tiny_llama_dir)
    first = model_layout(mc)
    meta = meta_model(mc)
    assert first.num_parameters == count_parameters(meta)[0]
    assert first.linears == linear_shapes(meta) and "q_proj" in first.linear_names
    [entry] = list((tmp_path / "model_layouts").iterdir())

    def no_meta_model(*args, **kwargs):
        raise AssertionError("a cache hit must not build the model")

    monkeypatch.setattr(dpokit.models, "meta_model", no_meta_model)
    assert model_layout(mc) == first  # hit

    monkeypatch.undo()
    monkeypatch.setenv("DPOKIT_CACHE", str(tmp_path))
    wider = AutoConfig.from_pretrained(tiny_llama_dir, intermediate_size=2 * mc.intermediate_size)
    other = model_layout(wider)  # another config: another entry
    assert other.num_parameters > first.num_parameters and len(list((tmp_path / "model_layouts").iterdir())) == 2

    entry.write_text('{"model_type": "llama", "num_par')  # half-written
    assert model_layout(mc) == first  # rebuilt
    assert model_layout(mc, use_cache=False) == first


def test_a_measured_run_is_training_only(tiny_llama_dir, tmp_path):
    """measure_run (notebook 04, benchmarks) trains in a fresh process and reports its peak: a config that
    asks for end-of-run answers and IFEval (as the quickstart's does) is measured without them."""
    from dpokit.measure import measure_run

    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"Say {w}.", "chosen": w, "rejected": "No."}) + "\n"
                            for w in ("yes", "maybe", "sure", "fine", "ok", "right", "good", "well")))
    config = load_config(data={
        "models": [{"name": "tiny", "huggingface_id": str(tiny_llama_dir)}],
        "dataset": {"name": str(rows), "validation_split": 0.25},
        "post_training": {"use_ref_model": False},
        "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "training": {"max_steps": 2, "per_device_train_batch_size": 2, "save_steps": 2, "logging_steps": 1,
                     "max_seq_length": 112, "max_prompt_length": 96, "max_completion_length": 16},
        "logging": {"report_to": ["none"]},
        "evaluation": {"enabled": True, "benchmarks": ["ifeval"], "benchmark_limit": 2}})
    result = measure_run(config, output_dir=tmp_path / "runs")
    assert result["status"] == "completed", result.get("error")
    assert result["steps"] == 2 and result["peak_rss_mb"] > result["rss_after_imports_mb"] > 0
    written = {p.name for p in Path(result["run_dir"]).iterdir()}
    assert "adapter" in written and "bench_ifeval.json" not in written
