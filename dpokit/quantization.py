"""Loading the policy for QLoRA and in a chosen dtype: transformers' BitsAndBytesConfig + PEFT.

The frozen base is loaded quantized by bitsandbytes (4-bit NF4/FP4 or 8-bit) and prepared with
`peft.prepare_model_for_kbit_training`; TRL then puts the LoRA adapter on it. The reference of a
LoRA policy is the same quantized base with the adapter switched off, so no second quantized
copy is loaded (`reference_needs_copy`). The adapter is saved in the usual PEFT format and loads
on the unquantized base (it only holds the low-rank matrices).

bitsandbytes 0.50 has a CPU backend: 4-bit and 8-bit forward and backward, and its 8-bit
optimizers, run on a CPU (paged optimizers fall back to unpaged there), so the tests run a real
QLoRA DPO step without a GPU.
"""

from __future__ import annotations

TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "uint8": "uint8"}


def torch_dtype(name: str):
    """The torch dtype for fp32 | bf16 | fp16 | uint8."""
    import torch

    return getattr(torch, TORCH_DTYPES[name])


def bnb_config(load_in: str, *, quant_type: str = "nf4", compute_dtype: str = "fp32", double_quant: bool = True,
               quant_storage: str = "uint8"):
    """transformers' BitsAndBytesConfig for `load_in` (4bit | 8bit), or None for none.

    `compute_dtype` and `quant_storage` are resolved names (see dpokit.scaling.resolve_compute_dtype /
    resolve_quant_storage). The LM head stays unquantized (transformers keeps the output embedding out).
    """
    if load_in == "none":
        return None
    from transformers import BitsAndBytesConfig

    if load_in == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if load_in != "4bit":
        raise ValueError(f"quantization.load_in must be none, 4bit or 8bit, got {load_in!r}")
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                              bnb_4bit_compute_dtype=torch_dtype(compute_dtype),
                              bnb_4bit_use_double_quant=double_quant,
                              bnb_4bit_quant_storage=torch_dtype(quant_storage))


def device_map_for(*, quantized: bool, strategy: str, local_rank: int | None, cuda: bool):
    """Where `from_pretrained` puts the weights.

    Under FSDP / ZeRO-3 the engine places the (sharded) weights, so nothing is dispatched (None).
    A quantized model is quantized where it is placed: this process's GPU under DDP / ZeRO-2 or in
    one process (never `device_map="auto"`, which would split one model over every GPU of a
    multi-process run), the CPU without CUDA. Unquantized models are left to the trainer (None).
    """
    if strategy in ("fsdp", "zero3") or not quantized:
        return None
    if not cuda:
        return {"": "cpu"}
    return {"": local_rank or 0}


def model_load_kwargs(*, dtype: str, attn_implementation: str | None = None, quantization_config=None,
                      device_map=None) -> dict:
    """Keyword arguments for `AutoModelForCausalLM.from_pretrained` (transformers 5: `dtype=`)."""
    kwargs = {"dtype": torch_dtype(dtype)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    if device_map is not None:
        kwargs["device_map"] = device_map
    return kwargs


def prepare_quantized(model, *, gradient_checkpointing: bool, sharded: bool):
    """Make a quantized model trainable with LoRA: frozen base, input gradients for checkpointing.

    Outside FSDP / ZeRO-3 this is `peft.prepare_model_for_kbit_training`, which also casts the
    non-quantized weights (embeddings, norms, LM head) to fp32 for stable training. Under sharding
    that cast is skipped: FSDP needs one dtype per wrapped unit, the one the 4-bit weights are stored
    in (bitsandbytes' FSDP-QLoRA guide), so only the freezing and input gradients are applied.
    """
    if not sharded:
        import warnings

        from peft import prepare_model_for_kbit_training

        with warnings.catch_warnings():  # PEFT calls the name transformers 5 renamed (activation_checkpointing)
            warnings.filterwarnings("ignore", message=".*gradient_checkpointing_enable.*", category=FutureWarning)
            return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                   gradient_checkpointing_kwargs={"use_reentrant": False})
    for param in model.parameters():
        param.requires_grad = False
    if gradient_checkpointing:
        model.enable_input_require_grads()
    return model


def load_policy(path: str, *, dtype: str, attn_implementation: str | None = None, quantization_config=None,
                strategy: str = "single", local_rank: int | None = None, cuda: bool = False,
                gradient_checkpointing: bool = False, trust_remote_code: bool = False, prepare: bool = True):
    """The policy's base model, in `dtype`, quantized when `quantization_config` is given and (with
    `prepare`) prepared for k-bit training; a frozen reference is loaded with prepare=False.
    `path` is a local directory or hub id (dpokit.models.resolve_model_path)."""
    from transformers import AutoModelForCausalLM

    quantized = quantization_config is not None
    kwargs = model_load_kwargs(dtype=dtype, attn_implementation=attn_implementation,
                               quantization_config=quantization_config,
                               device_map=device_map_for(quantized=quantized, strategy=strategy,
                                                         local_rank=local_rank, cuda=cuda))
    if trust_remote_code:
        kwargs["trust_remote_code"] = True
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if quantized and prepare:
        model = prepare_quantized(model, gradient_checkpointing=gradient_checkpointing,
                                  sharded=strategy in ("fsdp", "zero3"))
    return model


def reference_needs_copy(*, method_uses_reference: bool, use_ref_model: bool, precompute_ref_log_probs: bool) -> bool:
    """Whether a second model must be loaded as the reference. With a LoRA policy the reference is
    the policy with its adapter disabled (TRL does this when no ref_model is passed), so only
    `use_ref_model: true` asks for a copy, and precomputed log-probs need none during training."""
    return method_uses_reference and use_ref_model and not precompute_ref_log_probs


def describe_quantization(model) -> dict:
    """What was loaded: counts of 4-bit / 8-bit linear layers and the model's memory footprint."""
    kinds: dict[str, int] = {}
    for module in model.modules():
        name = type(module).__name__
        if name in ("Linear4bit", "Linear8bitLt"):
            kinds[name] = kinds.get(name, 0) + 1
    return {"quantized_layers": kinds, "footprint_bytes": int(model.get_memory_footprint())}
