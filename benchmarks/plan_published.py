"""The GPU planner next to published memory figures, and its verdicts for three model sizes.

    python benchmarks/plan_published.py            # markdown tables (the ones in docs/scaling.md)

Each published workload is described with the settings its source states (model, sequence length,
batch, LoRA rank and targets, quantization, sharding, optimizer, attention kernel). Training in
those sources is SFT, which scores every token and (in the TRL/transformers of the time) held the
full logits, so they are planned with `rows_per_pair=1` and `lm_head="full"`. Nothing here runs a
GPU: the planner works from each model's published config.json (dpokit/model_configs/).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GIB = 2**30

# (label, bundled model, planner settings, GPUs, what the source says, source)
SFT = dict(rows_per_pair=1, lm_head="full", reference="none", precision="bf16", weights_dtype="bf16",
           gradient_checkpointing=True)
QLORA_PAPER = dict(SFT, pairs_per_device=1, seq_len=528, completion_len=512, lora_rank=64,
                   lora_target_modules="all-linear", lora_dropout=0.05, quantization="4bit", double_quant=True,
                   optimizer="paged_adamw_32bit", attn_implementation="eager")
ZEPHYR_QLORA_DPO = dict(pairs_per_device=4, seq_len=1024, completion_len=512, lora_rank=128,
                        lora_target_modules="all-linear", lora_dropout=0.05, quantization="4bit",
                        reference="adapter", precision="bf16", weights_dtype="bf16", gradient_checkpointing=True,
                        optimizer="paged_adamw_32bit", attn_implementation="flash_attention_2")
PEFT_70B = dict(SFT, seq_len=2048, completion_len=2048, lora_rank=8, lora_target_modules="all-linear",
                lora_dropout=0.1, attn_implementation="flash_attention_2", optimizer="adamw_torch")
PUBLISHED = [
    ("QLoRA paper, Guanaco-65B recipe (1 x 16+512 tokens, r=64 all linear, NF4+DQ, paged AdamW)", "llama-65b",
     QLORA_PAPER, 1, "fits one 48 GB GPU", "Dettmers et al. 2023, arXiv:2305.14314 (abstract); "
     "artidoro/qlora scripts/finetune_guanaco_65b.sh"),
    ("QLoRA paper recipe on LLaMA-7B (guanaco-7b script)", "llama-7b", dict(QLORA_PAPER, lora_dropout=0.1), 1,
     "one GPU (no separate figure in the text)", "artidoro/qlora scripts/finetune_guanaco_7b.sh"),
    ("zephyr-7b-beta QLoRA DPO (Mistral-7B, 4 pairs x 1024 tokens, r=128 all linear, flash-attn 2)",
     "mistral-7b-v0.1", ZEPHYR_QLORA_DPO, 1, "one consumer 24 GB GPU (RTX 4090)",
     "alignment-handbook recipes/zephyr-7b-beta/dpo/config_qlora.yaml, scripts/README.md"),
    ("Llama-2-70B FSDP + QLoRA, 2 GPUs (2 x 2048 tokens, r=8 all linear)", "llama-2-70b",
     dict(PEFT_70B, pairs_per_device=2, quantization="4bit", strategy="fsdp"), 2, "35.6 GB per GPU",
     "PEFT docs, accelerate/fsdp.md"),
    ("same, with CPU offload", "llama-2-70b",
     dict(PEFT_70B, pairs_per_device=2, quantization="4bit", strategy="fsdp", cpu_offload=True), 2,
     "19.6 GB per GPU (107 GB CPU RAM)", "PEFT docs, accelerate/fsdp.md"),
    ("Llama-2-70B ZeRO-3 + QLoRA, 2 GPUs", "llama-2-70b",
     dict(PEFT_70B, pairs_per_device=2, quantization="4bit", strategy="zero3"), 2, "36.6 GB per GPU",
     "PEFT docs, accelerate/deepspeed.md"),
    ("Llama-2-70B ZeRO-3 + LoRA bf16, 8 GPUs (8 x 2048 tokens)", "llama-2-70b",
     dict(PEFT_70B, pairs_per_device=8, strategy="zero3"), 8, "64 GB per GPU", "PEFT docs, accelerate/deepspeed.md"),
    ("Llama-2-70B FSDP + LoRA bf16, 8 GPUs (8 x 2048 tokens)", "llama-2-70b",
     dict(PEFT_70B, pairs_per_device=8, strategy="fsdp"), 8, "72-80 GB per GPU", "PEFT docs, accelerate/fsdp.md"),
]


def published_rows() -> list[str]:
    from dpokit.gpu_memory import GpuSetup, gpu_estimate
    from dpokit.plan_inputs import bundled_model_config, model_facts

    lines = ["| workload | planner, per GPU | published | source |", "|---|---|---|---|"]
    for label, model, settings, gpus, claim, source in PUBLISHED:
        facts = model_facts(bundled_model_config(model))
        est = gpu_estimate(facts, GpuSetup(**settings, world_size=gpus))
        ram = est.shape["cpu_offload_bytes"]
        extra = f" (+{ram / GIB:.0f} GB CPU RAM)" if ram else ""
        lines.append(f"| {label} | {est.total / GIB:.1f} GB{extra} | {claim} | {source} |")
    return lines


def verdict_rows(config_path: str = "configs/dpo_example.yaml") -> list[str]:
    """The planner's verdicts for `config_path` with three model sizes on three targets."""
    from dpokit.config import load_config
    from dpokit.plan_inputs import bundled_model_config, model_facts, setup_from_config
    from dpokit.planner import parse_target, plan

    setup, ctx = setup_from_config(load_config(ROOT / config_path, overrides={"logging.report_to": ["none"]}))
    targets = ["1x24GB", "1x80GB", "8x80GB"]
    lines = ["| model | " + " | ".join(targets) + " |", "|---|" + "---|" * len(targets)]
    for name in ("qwen2.5-0.5b", "qwen2.5-7b", "llama-3.1-70b"):
        facts = model_facts(bundled_model_config(name))
        cells = []
        for target in targets:
            v = plan(facts, replace(setup), parse_target(target), ctx)
            if v.fits:
                cells.append(f"fits ({v.estimate.total / GIB:.1f} GB)")
            elif v.fixable:
                sets = ", ".join(f"`{k}={str(val).lower() if isinstance(val, bool) else val}`"
                                 for c in v.changes for k, val in c.overrides.items())
                ram = v.fixed.shape["cpu_offload_bytes"]
                cells.append(f"no ({v.estimate.total / GIB:.0f} GB); fits with {sets} "
                             f"({v.fixed.total / GIB:.1f} GB" + (f", +{ram / GIB:.0f} GB CPU RAM)" if ram else ")"))
            else:
                cells.append(f"no ({v.estimate.total / GIB:.0f} GB), nothing fits")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


if __name__ == "__main__":
    print("\n".join(published_rows()))
    print()
    print("\n".join(verdict_rows()))
