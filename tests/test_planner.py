"""The planner (dpokit/planner.py): targets, verdicts, and the cheapest change that fits."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dpokit.config import Config, load_config
from dpokit.gpu_memory import GpuSetup, gpu_estimate
from dpokit.plan_inputs import bundled_model_config, model_facts, setup_from_config
from dpokit.planner import GIB, HEADROOM, TIPS, Context, GpuTarget, _replay, format_verdict, parse_target, plan
from dpokit.scaling import DistributedSection, ModelLoadingSection, QuantizationSection


@pytest.fixture(scope="module")
def facts():
    return {name: model_facts(bundled_model_config(name)) for name in ("qwen2.5-0.5b", "qwen2.5-7b", "llama-3.1-70b")}


@pytest.fixture(scope="module")
def example():
    """configs/dpo_example.yaml: batch 2, 512 tokens, r=16 on q/k/v/o, bf16, checkpointing, separate reference."""
    return setup_from_config(load_config("configs/dpo_example.yaml", overrides={"logging.report_to": ["none"]}))


@pytest.mark.parametrize("text, count, gib, name", [
    ("1xA10G-24GB", 1, 24, "A10G"), ("8x80GB", 8, 80, ""), ("1x24GB", 1, 24, ""), ("2xH100", 2, 80, "H100"),
    ("A100-40GB", 1, 40, "A100"), ("4 x RTX4090", 4, 24, "RTX4090"), ("2x40.5GiB", 2, 40.5, ""),
])
def test_targets_are_read_from_the_usual_spellings(text, count, gib, name):
    assert parse_target(text) == GpuTarget(count, gib, name)


@pytest.mark.parametrize("bad", ["8xFOO", "", "0x80GB", "lots"])
def test_unreadable_targets_say_which_forms_work(bad):
    with pytest.raises(ValueError, match="1xA10G-24GB|at least one GPU"):
        parse_target(bad)


def test_the_example_config_becomes_the_setup_it_describes(example):
    setup, ctx = example
    assert (setup.pairs_per_device, setup.seq_len, setup.completion_len, setup.lora_rank) == (2, 512, 256, 16)
    assert setup.reference == "separate" and setup.weights_dtype == "bf16" and setup.strategy == "single"
    assert ctx == Context(accumulation=8, max_prompt_length=256, max_completion_length=256, ref_is_base=True)


def test_new_sections_change_the_setup():
    config = load_config("configs/dpo_example.yaml", overrides={"logging.report_to": ["none"]})
    setup, _ = setup_from_config(config, quantization=QuantizationSection(load_in="4bit"),
                                 distributed=DistributedSection(strategy="zero3", cpu_offload=True),
                                 model_loading=ModelLoadingSection(attn_implementation="flash_attention_2"))
    assert (setup.quantization, setup.strategy, setup.cpu_offload) == ("4bit", "zero3", True)
    assert setup.attn_implementation == "flash_attention_2"


def test_verdicts_for_the_example_config(facts, example):
    setup, ctx = example
    small = plan(facts["qwen2.5-0.5b"], setup, parse_target("1x24GB"), ctx)
    assert small.fits and small.changes == ()
    seven = plan(facts["qwen2.5-7b"], setup, parse_target("1x24GB"), ctx)
    assert not seven.fits and [c.overrides for c in seven.changes] == [{"post_training.use_ref_model": False}]
    assert seven.fixed.total <= parse_target("1x24GB").usable_bytes
    assert plan(facts["qwen2.5-7b"], setup, parse_target("1x80GB"), ctx).fits
    big = plan(facts["llama-3.1-70b"], setup, parse_target("8x80GB"), ctx)
    assert not big.fits and big.fixable
    overrides = {k: v for c in big.changes for k, v in c.overrides.items()}
    assert overrides == {"post_training.use_ref_model": False, "quantization.load_in": "4bit"}


def test_the_suggested_changes_are_each_needed(facts, example):
    """Dropping any suggested change breaks the fit (or puts more into CPU RAM)."""
    setup, ctx = example
    for name, target in (("llama-3.1-70b", "1x24GB"), ("llama-3.1-70b", "8x80GB"), ("qwen2.5-7b", "1x24GB")):
        t = parse_target(target)
        verdict = plan(facts[name], setup, t, ctx)
        chosen = list(verdict.tips)
        assert len(chosen) == len(verdict.changes) > 0 and all(tip in TIPS for tip in chosen)
        for tip in chosen:
            fewer, _ = _replay([c for c in chosen if c is not tip], verdict.setup, ctx, facts[name], t.usable_bytes, t)
            est, fixed = gpu_estimate(facts[name], fewer), verdict.fixed
            assert est.total > t.usable_bytes or est.shape["cpu_offload_bytes"] > fixed.shape["cpu_offload_bytes"]


def test_a_70b_model_on_one_24gb_gpu_needs_qlora_and_offload(facts, example):
    setup, ctx = example
    verdict = plan(facts["llama-3.1-70b"], setup, parse_target("1x24GB"), ctx)
    overrides = {k: v for c in verdict.changes for k, v in c.overrides.items()}
    assert overrides["quantization.load_in"] == "4bit" and overrides["distributed.cpu_offload"] is True
    assert overrides["distributed.strategy"] == "fsdp"  # the FSDP-QLoRA offload setup PEFT documents
    assert verdict.fixed.shape["cpu_offload_bytes"] > 30 * GIB


def test_the_batch_tip_keeps_the_effective_batch(facts):
    s = GpuSetup(pairs_per_device=16, seq_len=2048, completion_len=1024, lora_rank=16, reference="adapter",
                 gradient_checkpointing=False)
    verdict = plan(facts["qwen2.5-7b"], s, parse_target("1x80GB"), Context(accumulation=2))
    [change] = verdict.changes
    batch = change.overrides["training.per_device_train_batch_size"]
    assert batch < 16 and batch * change.overrides["training.gradient_accumulation_steps"] == 32


def test_every_suggested_override_names_a_real_config_field(facts, example):
    sections = {"quantization": QuantizationSection, "distributed": DistributedSection,
                "model_loading": ModelLoadingSection}
    setup, ctx = example
    seen = set()
    for name in facts:
        for target in ("1x16GB", "1x24GB", "1x80GB", "8x80GB"):
            for change in plan(facts[name], replace(setup, gradient_checkpointing=False, precision="fp32",
                                                    weights_dtype="fp32", lora_rank=64), parse_target(target),
                               ctx).changes:
                seen.update(change.overrides)
    assert {"training.gradient_checkpointing", "training.bf16", "quantization.load_in"} <= seen
    for key in seen:
        section, field = key.split(".")
        model = sections.get(section) or Config.model_fields[section].annotation
        assert field in model.model_fields, key


def test_tight_is_between_the_usable_memory_and_the_gpu_size(facts):
    s = GpuSetup(pairs_per_device=1, seq_len=512, completion_len=256, lora_rank=16, reference="adapter")
    total = gpu_estimate(facts["qwen2.5-7b"], s).total
    gib = total / GIB / (1 - HEADROOM / 2)  # the estimate uses 95% of this GPU: over 90% usable, under 100%
    verdict = plan(facts["qwen2.5-7b"], s, GpuTarget(1, gib), Context())
    assert verdict.tight and not verdict.fits
    assert "tight" in format_verdict(verdict)[0]


def test_the_dry_run_lines_name_the_target_the_terms_and_the_fix(facts, example):
    setup, ctx = example
    lines = format_verdict(plan(facts["qwen2.5-7b"], setup, parse_target("1xA10G-24GB"), ctx))
    assert lines[0].startswith("plan for 1xA10G-24GB (21.6 GB usable per GPU, 10% kept free): does not fit")
    text = "\n".join(lines)
    assert "reference copy" in text and "--set post_training.use_ref_model=false" in text
