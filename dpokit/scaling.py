"""Config sections for training past one GPU: model dtype, QLoRA quantization, distributed strategy.

Three sections in the style of `dpokit.config` (strict, every field described) that `Config`
can hold as `model_loading`, `quantization` and `distributed`. Everything here is carried out by
existing engines: transformers + bitsandbytes load the model, `accelerate launch` starts the
processes, and DDP, PyTorch FSDP or DeepSpeed ZeRO shard the work. The cross-field rules are in
`dpokit.scaling_rules`; the values that follow from several fields are resolved by the functions
at the bottom of this module, so the loader, the launcher and the planner agree on them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DTYPES = ("fp32", "bf16", "fp16")
SHARDED = ("fsdp", "zero3")  # strategies that shard the weights themselves
DEEPSPEED = ("zero2", "zero3")


class _Section(BaseModel):
    """Strict base, as `dpokit.config.Section`: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelLoadingSection(_Section):
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Dtype the weights are loaded in: auto = bf16 with training.bf16, fp16 with "
        "training.fp16 on a GPU, else fp32.")
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"] | None = \
        Field(None, description="Attention kernel passed to transformers; null = its default (sdpa). "
              "flash_attention_2/3 need a CUDA GPU and the flash-attn package.")


class QuantizationSection(_Section):
    load_in: Literal["none", "4bit", "8bit"] = Field(
        "none", description="Load the frozen base weights quantized with bitsandbytes (4bit = QLoRA); the LoRA "
        "adapter stays in 16/32 bits and works on the unquantized base after training.")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type: nf4 (NormalFloat, the QLoRA "
                                              "paper's) or fp4.")
    compute_dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Dtype 4-bit weights are dequantized to for each matmul; auto = the model dtype.")
    double_quant: bool = Field(True, description="Quantize the 4-bit quantization constants too: 0.127 instead "
                               "of 0.5 bits per parameter (the QLoRA paper's double quantization).")
    quant_storage: Literal["auto", "uint8", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Dtype the packed 4-bit weights are stored in; auto = uint8, or the model dtype under "
        "FSDP / ZeRO-3 (which can only shard floating-point tensors).")


class DistributedSection(_Section):
    strategy: Literal["ddp", "fsdp", "zero2", "zero3"] | None = Field(
        None, description="How processes share the work: ddp (a full copy per GPU), fsdp (PyTorch FSDP shards "
        "weights, gradients, optimizer state), zero2 (DeepSpeed shards optimizer state and gradients), zero3 "
        "(DeepSpeed shards everything); null = ddp when gpu.use_ddp is true, else one process.")
    cpu_offload: bool = Field(False, description="Keep sharded state in CPU RAM: optimizer state (zero2), "
                              "optimizer state and parameters (zero3), parameters and gradients (fsdp).")
    fsdp_version: Literal[1, 2] | None = Field(
        None, description="PyTorch FSDP API: null = 2, or 1 with 4-bit quantization (FSDP2 cannot shard "
        "bitsandbytes 4-bit weights at the pinned accelerate).")
    num_machines: int = Field(1, ge=1, description="Machines taking part; each runs the same dpokit command with "
                              "its own machine_rank.")
    machine_rank: int = Field(0, ge=0, description="This machine's rank, 0 .. num_machines - 1 (0 is the main "
                              "machine, which writes the run directory).")
    main_process_ip: str | None = Field(None, description="Address of machine 0 that every machine can reach "
                                        "(needed when num_machines > 1).")
    main_process_port: int | None = Field(None, ge=1, le=65535, description="Port on machine 0 for the "
                                          "rendezvous; null = 29500 on several machines, a free port on one.")
    accelerate_config: str | None = Field(None, description="Your own accelerate config YAML, used as is "
                                          "(replaces strategy, cpu_offload and the machine settings).")
    deepspeed_config: str | None = Field(None, description="Your own DeepSpeed JSON, used as is (strategy must "
                                         "be zero2 or zero3).")


# ----------------------------------------------------------------------------- resolved values


def resolve_model_dtype(dtype: str, *, fp16: bool, bf16: bool, on_gpu: bool = True) -> str:
    """The dtype the weights are loaded in: `dtype` unless auto, which follows the precision flags."""
    if dtype != "auto":
        return dtype
    if bf16:
        return "bf16"
    if fp16 and on_gpu:
        return "fp16"
    return "fp32"


def config_model_dtype(config, cuda_devices: int) -> str:
    """The dtype a Config's model is loaded in on a machine with `cuda_devices` GPUs: model_loading.dtype,
    auto following training.bf16 / fp16; fp16 weights fall back to fp32 on a CPU (gpu.on_missing: cpu)."""
    t = config.training
    dtype = resolve_model_dtype(config.model_loading.dtype, fp16=t.fp16, bf16=t.bf16, on_gpu=cuda_devices > 0)
    return "fp32" if dtype == "fp16" and not cuda_devices else dtype


def resolve_compute_dtype(quant: QuantizationSection, model_dtype: str) -> str:
    """The dtype bitsandbytes computes 4-bit matmuls in."""
    return model_dtype if quant.compute_dtype == "auto" else quant.compute_dtype


def resolve_quant_storage(quant: QuantizationSection, strategy: str | None, model_dtype: str) -> str:
    """The storage dtype of packed 4-bit weights: FSDP and ZeRO-3 need the model's floating dtype."""
    if quant.quant_storage != "auto":
        return quant.quant_storage
    return model_dtype if strategy in SHARDED else "uint8"


def resolve_strategy(dist: DistributedSection, use_ddp: bool) -> str:
    """single | ddp | fsdp | zero2 | zero3, from the section and gpu.use_ddp (with a user's accelerate
    file the file decides how processes share the work; the launcher passes it on as is)."""
    if dist.strategy:
        return dist.strategy
    return "ddp" if use_ddp or dist.num_machines > 1 else "single"


def resolve_fsdp_version(dist: DistributedSection, quant: QuantizationSection) -> int:
    """FSDP2 unless 4-bit quantization needs FSDP1 (see `DistributedSection.fsdp_version`)."""
    if dist.fsdp_version is not None:
        return dist.fsdp_version
    return 1 if quant.load_in == "4bit" else 2


def is_multi_process(dist: DistributedSection, use_ddp: bool) -> bool:
    """Whether the run is started through a launcher (several processes, or a strategy engine)."""
    return resolve_strategy(dist, use_ddp) != "single" or dist.accelerate_config is not None


def processes_per_machine(device_ids: list[int] | None, cuda_devices: int, multi_process: bool) -> int:
    """One process per requested GPU (all visible ones when device_ids is null; one CPU process with
    none) when the run is multi-process, else one (what dpokit.launch starts on each machine)."""
    if not multi_process:
        return 1
    if device_ids:
        return len(device_ids)
    return max(cuda_devices, 1)
