"""Tokenizers, models and LoRA: resolve where a model lives, load it, check LoRA targets."""

from __future__ import annotations

import re
from pathlib import Path

from .errors import ModelError

# The guide's LoRA target suggestions by model family (transformers `model_type`).
FAMILY_TARGETS: dict[str, list[str]] = {
    "gpt2": ["c_attn"],
    "gpt_neo": ["q_proj", "v_proj"],
    "gptj": ["q_proj", "v_proj"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "phi3": ["qkv_proj", "o_proj"],
    "gpt_neox": ["query_key_value"],
    "bloom": ["query_key_value"],
    "falcon": ["query_key_value"],
}


def resolve_model_path(model_id: str) -> str:
    """A local directory or hub id usable by `from_pretrained`; embedded ids are converted once."""
    from .embedded import ensure_embedded_model, is_embedded_id, parse_embedded_id

    if is_embedded_id(model_id):
        try:
            return str(ensure_embedded_model(parse_embedded_id(model_id)))
        except ValueError as e:
            raise ModelError(f"models[].huggingface_id: {e}") from None
    path = Path(model_id).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelError(f"models[].huggingface_id: directory {path} has no config.json; point it at a "
                             "directory written by save_pretrained")
        return str(path)
    if model_id.startswith((".", "/", "~")):
        raise ModelError(f"models[].huggingface_id: '{model_id}' looks like a path but does not exist")
    return model_id


def load_model_config(model_id: str, trust_remote_code: bool = False):
    """The model's transformers config only (no weights): fast, and enough for a dry run."""
    from transformers import AutoConfig

    path = resolve_model_path(model_id)
    try:
        return AutoConfig.from_pretrained(path, **_remote(trust_remote_code))
    except Exception as e:
        raise ModelError(_load_failure(model_id, e)) from None


def load_tokenizer(model_id: str, trust_remote_code: bool = False):
    """The tokenizer, with a pad token (EOS when it has none; TRL masks padding by attention, not id)."""
    from transformers import AutoTokenizer

    path = resolve_model_path(model_id)
    try:
        tok = AutoTokenizer.from_pretrained(path, **_remote(trust_remote_code))
    except Exception as e:
        raise ModelError(_load_failure(model_id, e)) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(model_id: str, trust_remote_code: bool = False, dtype=None, device: str | None = None, *,
               attn_implementation: str | None = None, quantization_config=None, strategy: str = "single",
               gradient_checkpointing: bool = False, prepare: bool = True):
    """The causal LM with weights, in `dtype` (fp32 | bf16 | fp16 or a torch dtype; default fp32), with
    `attn_implementation` (None: transformers' default), quantized by bitsandbytes when
    `quantization_config` is given (dpokit.quantization.load_policy: placed on this process's GPU and, with
    `prepare`, made trainable with prepare_model_for_kbit_training), then moved to `device` (not a
    quantized model: it is quantized where it is placed)."""
    from .quantization import load_policy

    path = resolve_model_path(model_id)
    try:
        model = load_policy(path, dtype=dtype_name(dtype), attn_implementation=attn_implementation,
                            quantization_config=quantization_config, strategy=strategy, local_rank=_local_rank(),
                            cuda=_cuda(), gradient_checkpointing=gradient_checkpointing,
                            trust_remote_code=trust_remote_code, prepare=prepare)
    except Exception as e:
        raise ModelError(_load_failure(model_id, e)) from None
    if device and quantization_config is None:
        model.to(device)
    return model


def load_for_config(config, model_id: str, trust_remote_code: bool, cuda_devices: int, *, reference: bool = False):
    """A model as `config` says to load it: model_loading.dtype (auto follows training.bf16 / fp16),
    model_loading.attn_implementation, and the quantization section (bitsandbytes). The policy is prepared
    for k-bit training; a separate reference (`reference=True`) is loaded the same way and left frozen."""
    from .quantization import bnb_config
    from .scaling import config_model_dtype, resolve_compute_dtype, resolve_quant_storage, resolve_strategy

    dtype = config_model_dtype(config, cuda_devices)
    strategy = resolve_strategy(config.distributed, config.gpu.use_ddp)
    quant = config.quantization
    quantization = bnb_config(quant.load_in, quant_type=quant.quant_type,
                              compute_dtype=resolve_compute_dtype(quant, dtype), double_quant=quant.double_quant,
                              quant_storage=resolve_quant_storage(quant, strategy, dtype))
    model = load_model(model_id, trust_remote_code, dtype=dtype,
                       attn_implementation=config.model_loading.attn_implementation,
                       quantization_config=quantization, strategy=strategy,
                       gradient_checkpointing=config.training.gradient_checkpointing and not reference,
                       prepare=not reference)
    if reference:
        model.eval().requires_grad_(False)
    return model


def dtype_name(dtype) -> str:
    """fp32 | bf16 | fp16 for a name or a torch dtype (None = fp32)."""
    if dtype is None:
        return "fp32"
    if isinstance(dtype, str):
        if dtype not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"dtype must be fp32, bf16 or fp16, got {dtype!r}")
        return dtype
    names = {"torch.float32": "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16"}
    if str(dtype) not in names:
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
    return names[str(dtype)]


def model_dtype_name(model) -> str:
    """The dtype a loaded model's unquantized weights are in (fp32 | bf16 | fp16), from its parameters."""
    import torch

    names = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    counts: dict[str, int] = {}
    for param in model.parameters():
        if param.dtype in names:
            counts[names[param.dtype]] = counts.get(names[param.dtype], 0) + param.numel()
    return max(counts, key=counts.get) if counts else "fp32"


def _local_rank() -> int | None:
    import os

    value = os.environ.get("LOCAL_RANK")
    return int(value) if value is not None and value.isdigit() else None


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def meta_model(model_config):
    """The model's modules with no memory behind them (device 'meta'): names and parameter counts."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(model_config)


def _remote(trust: bool) -> dict:
    # Passed only when true, so a repo's own code never runs unless the YAML says so.
    return {"trust_remote_code": True} if trust else {}


def _load_failure(model_id: str, e: Exception) -> str:
    import os

    text = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
    msg = f"models[].huggingface_id: cannot load '{model_id}' ({type(e).__name__}: {text})."
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    if offline or "offline" in text.lower() or "connect" in text.lower():
        msg += (" It is not in the local Hugging Face cache and the hub cannot be reached (HF_HUB_OFFLINE=1 "
                "or no network). Download it once where you have access (`hf download ORG/MODEL`), point "
                "huggingface_id at a local directory, or use `embedded:smollm2-135m-instruct`.")
    return msg


def lora_config(lora_cfg):
    """The PEFT LoraConfig for the `lora` section, every key passed through."""
    from peft import LoraConfig

    return LoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.lora_alpha,
        lora_dropout=lora_cfg.lora_dropout,
        bias=lora_cfg.bias,
        target_modules=lora_cfg.target_modules,
        task_type=lora_cfg.task_type,
        use_rslora=lora_cfg.use_rslora,
        use_dora=lora_cfg.use_dora,
    )


def linear_module_names(model) -> list[str]:
    """Distinct leaf names of the model's linear-like layers (what LoRA can target)."""
    import torch

    names = set()
    for full, module in model.named_modules():
        kind = type(module).__name__
        if isinstance(module, torch.nn.Linear) or kind in ("Conv1D", "Linear8bitLt", "Linear4bit"):
            names.add(full.rsplit(".", 1)[-1])
    return sorted(names)


def check_target_modules(model, targets, model_type: str | None = None, where: str = "lora.target_modules",
                         model_name: str | None = None) -> None:
    """Raise ModelError if a LoRA target matches no module, listing what the model has.

    `where` is the config path the targets came from (`models.N.lora.target_modules` for a model's
    own setting); `model_name` names the model in the message."""
    check_target_names([n for n, _ in model.named_modules()], linear_module_names(model), targets,
                       model_type or getattr(getattr(model, "config", None), "model_type", None), where, model_name)


def check_target_names(module_names: list[str], linear_names: list[str], targets,
                       model_type: str | None = None, where: str = "lora.target_modules",
                       model_name: str | None = None) -> None:
    """`check_target_modules` on a model's module names (e.g. from a cached `memory.ModelLayout`)."""
    problem = target_problem(module_names, linear_names, targets, model_type, model_name)
    if problem:
        raise ModelError(f"{where}: {problem}")


def target_problem(module_names: list[str], linear_names: list[str], targets, model_type: str | None = None,
                   model_name: str | None = None) -> str | None:
    """What is wrong with LoRA `targets` for a model with these modules (None: they all match), with the fix."""
    if isinstance(targets, str):
        if targets == "all-linear":
            return None
        if any(re.fullmatch(targets, n) for n in module_names):
            return None
        missing = [targets]
    else:
        leaves = {n.rsplit(".", 1)[-1] for n in module_names}
        missing = [t for t in targets if t not in leaves]
    if not missing:
        return None
    available = [n for n in linear_names if n != "lm_head"]
    suggestion = FAMILY_TARGETS.get(model_type or "", None)
    model = f"{model_name} ({model_type or 'model'})" if model_name else f"this {model_type or 'model'}"
    msg = f"{missing} match no module of {model}. Its linear layers are: {available}."
    if suggestion:
        msg += f" For this family the guide suggests target_modules: {suggestion}."
    else:
        msg += " Or use target_modules: all-linear."
    value = suggestion or "all-linear"
    msg += (f" Models of different families in one config can each have their own: in this model's `models` "
            f"entry, `lora: {{target_modules: {value}}}` (the shared `lora` section stays for the others).")
    return msg


def count_parameters(model) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
