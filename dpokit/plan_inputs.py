"""The planner's inputs: a model's shape from its transformers config, the run's settings from a Config.

`bundled_model_config` builds the published configs of a few well-known models offline
(dpokit/model_configs/, each file names its source), so plans need no download and no weights.
"""

from __future__ import annotations

import json
from pathlib import Path

from .gpu_memory import GpuSetup, ModelFacts
from .planner import Context

BUNDLED = Path(__file__).with_name("model_configs")


def bundled_model_config(name: str):
    """A transformers config for a bundled model (qwen2.5-0.5b, qwen2.5-7b, llama-3.1-8b, llama-3.1-70b, ...),
    built offline from its published config.json (dpokit/model_configs/, each file names its source)."""
    from transformers import AutoConfig

    path = BUNDLED / f"{name.lower()}.json"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in BUNDLED.glob("*.json")))
        raise ValueError(f"no bundled config {name!r}; bundled: {known}")
    data = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
    data.pop("architectures", None)
    return AutoConfig.for_model(data.pop("model_type"), **data)


def model_facts(model_config, layout=None) -> ModelFacts:
    """ModelFacts from a transformers config (a weightless meta model gives exact parameter counts)."""
    from .memory import model_layout, model_shape

    layout = layout or model_layout(model_config)
    return ModelFacts(model_shape(model_config), layout.linears, layout.num_parameters)


def setup_from_config(config, *, model_loading=None, quantization=None, distributed=None,
                      cuda: bool = True) -> tuple[GpuSetup, Context]:
    """The GpuSetup and Context of a dpokit Config (sections default to the config's own, then to defaults)."""
    from . import methods
    from .scaling import (DistributedSection, ModelLoadingSection, QuantizationSection, resolve_model_dtype,
                          resolve_strategy)

    t, pt, lora = config.training, config.post_training, config.lora
    loading = model_loading or getattr(config, "model_loading", None) or ModelLoadingSection()
    quant = quantization or getattr(config, "quantization", None) or QuantizationSection()
    dist = distributed or getattr(config, "distributed", None) or DistributedSection()
    prompt, completion = t.max_prompt_length, t.max_completion_length
    seq_len = min(t.max_seq_length, (prompt or t.max_seq_length) + (completion or t.max_seq_length))
    completion_len = min(seq_len - 1, completion or seq_len)
    if prompt is not None and completion is None:
        completion_len = max(1, seq_len - prompt)
    method = methods.get_method(pt.method) if hasattr(methods, "get_method") else methods.METHODS[pt.method]
    uses_ref = method.uses_reference
    reference = "none" if not uses_ref else "precomputed" if pt.precompute_ref_log_probs else \
        "separate" if pt.use_ref_model else "adapter"
    precision = "bf16" if t.bf16 else "fp16" if t.fp16 else "fp32"
    strategy = resolve_strategy(dist, config.gpu.use_ddp)
    setup = GpuSetup(
        pairs_per_device=t.per_device_train_batch_size, seq_len=seq_len, completion_len=completion_len,
        lora_rank=lora.r, lora_target_modules=lora.target_modules, use_dora=lora.use_dora,
        lora_dropout=lora.lora_dropout, gradient_checkpointing=t.gradient_checkpointing, reference=reference,
        precision=precision, weights_dtype=resolve_model_dtype(loading.dtype, fp16=t.fp16, bf16=t.bf16, on_gpu=cuda),
        quantization=quant.load_in, double_quant=quant.double_quant, optimizer=t.optim,
        strategy=strategy, cpu_offload=dist.cpu_offload,
        attn_implementation=loading.attn_implementation)
    ctx = Context(accumulation=t.gradient_accumulation_steps, max_prompt_length=prompt,
                  max_completion_length=completion, ref_is_base=pt.ref_model_id is None)
    return setup, ctx
