"""Cross-field rules for `model_loading`, `quantization` and `distributed` (see dpokit/scaling.py).

`scaling_problems` returns what stops a run; `scaling_warnings` what a run should say before it
starts; `device_scaling_problems` what this machine cannot do. Whether a package the sections need
(bitsandbytes, DeepSpeed, flash-attn) is installed, and the command that installs it, is
`dpokit.packages`' job, for these sections as for the optimizers. Each is a list of `Problem`s with
the dotted field path and the fix. What the pinned libraries support was read from their source
and documentation; the issue or document behind each refusal is named next to it.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import Problem
from .packages import FLASH_ATTENTION, missing
from .scaling import (DEEPSPEED, SHARDED, DistributedSection, ModelLoadingSection, QuantizationSection,
                      resolve_fsdp_version, resolve_model_dtype, resolve_quant_storage, resolve_strategy)

def scaling_problems(dist: DistributedSection, quant: QuantizationSection, loading: ModelLoadingSection, *,
                     use_ddp: bool, fp16: bool, bf16: bool) -> list[Problem]:
    """Problems that hold on any machine (empty = fine); missing packages are dpokit.packages' to report."""
    out: list[Problem] = []
    strategy = resolve_strategy(dist, use_ddp)
    out += _file_problems(dist)
    out += _machine_problems(dist)
    if dist.cpu_offload and strategy in ("single", "ddp") and not dist.accelerate_config:
        out.append(Problem("distributed.cpu_offload", f"needs a sharding strategy (strategy is {strategy})",
                           "set distributed.strategy: zero3 (parameters and optimizer state to CPU), zero2 or fsdp"))
    if dist.fsdp_version is not None and strategy != "fsdp":
        out.append(Problem("distributed.fsdp_version", f"only applies to strategy fsdp (strategy is {strategy})",
                           "remove fsdp_version, or set distributed.strategy: fsdp"))
    out += _precision_problems(loading, quant, fp16=fp16, bf16=bf16)
    if quant.load_in != "none":
        out += _quantization_problems(dist, quant, loading, strategy, fp16=fp16, bf16=bf16)
    return out


def _file_problems(dist: DistributedSection) -> list[Problem]:
    out = []
    if dist.accelerate_config:
        if not Path(dist.accelerate_config).is_file():
            out.append(Problem("distributed.accelerate_config", f"'{dist.accelerate_config}' does not exist",
                               "give the path of an accelerate config YAML (`accelerate config --config_file F`)"))
        overlap = [k for k in ("strategy", "deepspeed_config", "fsdp_version") if getattr(dist, k) is not None]
        overlap += ["cpu_offload"] if dist.cpu_offload else []
        overlap += ["num_machines"] if dist.num_machines != 1 else []
        for key in overlap:
            out.append(Problem(f"distributed.{key}", "is set together with distributed.accelerate_config, which is "
                               "used as is",
                               f"remove {key} (put it in your accelerate file) or remove accelerate_config"))
    if dist.deepspeed_config:
        path = Path(dist.deepspeed_config)
        if not path.is_file():
            out.append(Problem("distributed.deepspeed_config", f"'{path}' does not exist",
                               "give the path of a DeepSpeed JSON config"))
        else:
            try:
                stage = json.loads(path.read_text()).get("zero_optimization", {}).get("stage")
            except (ValueError, AttributeError) as e:
                out.append(Problem("distributed.deepspeed_config", f"'{path}' is not a JSON object ({e})",
                                   "fix the file; DeepSpeed reads it as JSON"))
                stage = None
            wanted = {"zero2": 2, "zero3": 3}.get(dist.strategy or "")
            if stage is not None and wanted is not None and stage != wanted:
                out.append(Problem("distributed.deepspeed_config", f"its zero_optimization.stage is {stage} but "
                                   f"strategy is {dist.strategy}", f"set strategy: zero{stage} (the file wins)"))
        if dist.strategy not in DEEPSPEED and not dist.accelerate_config:
            out.append(Problem("distributed.strategy", f"a DeepSpeed config needs strategy zero2 or zero3 "
                               f"(got {dist.strategy})", "set distributed.strategy: zero3 (or zero2)"))
    return out


def _machine_problems(dist: DistributedSection) -> list[Problem]:
    out = []
    if dist.machine_rank >= dist.num_machines:
        out.append(Problem("distributed.machine_rank", f"{dist.machine_rank} is not below num_machines "
                           f"({dist.num_machines})", f"use 0 .. {dist.num_machines - 1}, one per machine"))
    if dist.num_machines > 1 and not dist.main_process_ip and not dist.accelerate_config:
        out.append(Problem("distributed.main_process_ip", f"is required with num_machines: {dist.num_machines} "
                           "(every machine must reach machine 0)",
                           "set it to machine 0's address on the network the machines share, e.g. 10.0.0.1"))
    return out


def _precision_problems(loading: ModelLoadingSection, quant: QuantizationSection, *, fp16: bool,
                        bf16: bool) -> list[Problem]:
    out = []
    if loading.dtype == "fp16" and bf16:
        out.append(Problem("model_loading.dtype", "fp16 weights with training.bf16: two half precisions at once",
                           "set model_loading.dtype: bf16 (or auto)"))
    if loading.dtype == "bf16" and fp16:
        out.append(Problem("model_loading.dtype", "bf16 weights with training.fp16: fp16 autocast would cast every "
                           "bf16 weight to fp16", "set training.bf16: true and fp16: false, or dtype: auto"))
    if quant.load_in == "none":
        for key, default in (("quant_type", "nf4"), ("compute_dtype", "auto"), ("quant_storage", "auto")):
            if getattr(quant, key) != default:
                out.append(Problem(f"quantization.{key}", "is set but quantization.load_in is none, so it would "
                                   "be ignored", f"set quantization.load_in: 4bit, or remove {key}"))
    return out


def _quantization_problems(dist, quant, loading, strategy: str, *, fp16: bool, bf16: bool) -> list[Problem]:
    out = []
    if quant.load_in == "8bit":
        if strategy in SHARDED:
            # FSDP flattens only floating tensors and ZeRO-3 partitions them; 8-bit weights are int8:
            # bitsandbytes#1709, accelerate#1415, peft#2833 (closed without support).
            out.append(Problem("quantization.load_in", f"8-bit weights cannot be sharded by {strategy} (they are "
                               "int8 tensors; bitsandbytes supports sharding only for 4-bit weights)",
                               "use load_in: 4bit with that strategy, or strategy: ddp / zero2 with 8-bit"))
        for key, default in (("quant_type", "nf4"), ("compute_dtype", "auto"), ("quant_storage", "auto")):
            if getattr(quant, key) != default:
                out.append(Problem(f"quantization.{key}", "only applies to load_in: 4bit", f"remove {key}"))
        return out
    model_dtype = resolve_model_dtype(loading.dtype, fp16=fp16, bf16=bf16)
    storage = resolve_quant_storage(quant, strategy, model_dtype)
    if strategy in SHARDED and storage != model_dtype:
        # FSDP/ZeRO-3 + QLoRA: the packed weights must share the dtype of the other weights
        # (bitsandbytes docs "FSDP-QLoRA", PEFT docs accelerate/fsdp.md and deepspeed.md).
        out.append(Problem("quantization.quant_storage", f"{storage} under {strategy}: sharding needs the 4-bit "
                           f"weights stored in the model dtype ({model_dtype})",
                           "set quant_storage: auto (or the model dtype)"))
    if strategy == "fsdp" and resolve_fsdp_version(dist, quant) == 2:
        # accelerate 1.15 leaves uint8 4-bit weights unsharded under FSDP2 and float-stored ones lose their
        # quantization state when gathered (accelerate#3874 open, axolotl#2992); FSDP1 is the documented path.
        out.append(Problem("distributed.fsdp_version", "FSDP2 cannot shard bitsandbytes 4-bit weights at the "
                           "pinned accelerate (1.15)", "set fsdp_version: 1 (or leave it null)"))
    if fp16 and quant.compute_dtype == "bf16":
        out.append(Problem("quantization.compute_dtype", "bf16 with training.fp16", "use compute_dtype: auto"))
    return out


def scaling_warnings(dist: DistributedSection, quant: QuantizationSection, *, use_ddp: bool, world_size: int,
                     method_uses_reference: bool, use_ref_model: bool, ref_model_id: str | None,
                     precompute_ref_log_probs: bool, optim: str, use_dora: bool) -> list[Problem]:
    """What a run should say before it starts (nothing here stops it)."""
    out: list[Problem] = []
    strategy = resolve_strategy(dist, use_ddp)
    separate_ref = method_uses_reference and use_ref_model and not precompute_ref_log_probs
    if separate_ref:
        where = {"zero3": "ZeRO-3 shards the separate reference like the policy (TRL's prepare_deepspeed runs it as a "
                          "stage-3 inference engine): one more all-gather of every layer per step, and ZeRO-3 with "
                          "a reference model has a history of bugs (trl#669)",
                 "zero2": "under ZeRO-2 every GPU holds a full reference copy (TRL prepares it with ZeRO disabled)",
                 "ddp": "every GPU holds a full reference copy",
                 "fsdp": "FSDP shards the separate reference like the policy (TRL's prepare_fsdp)"}.get(strategy)
        if where:
            out.append(Problem("post_training.use_ref_model", where,
                               "with a LoRA policy, use_ref_model: false gives the same reference (the base with the "
                               "adapter switched off) without a copy; or precompute_ref_log_probs: true"))
        if quant.load_in != "none" and ref_model_id is None:
            out.append(Problem("post_training.use_ref_model", f"loads a second {quant.load_in} copy of the base model "
                               "as the reference", "use_ref_model: false computes the same reference from the "
                               "policy with its adapter off (identical quantized weights)"))
    if strategy == "zero2" and dist.cpu_offload:
        out.append(Problem("distributed.cpu_offload", "ZeRO-2 offloads only optimizer state, which for a LoRA "
                           "adapter is small: the saving is the planner's 'optimizer state' line",
                           "zero3 with cpu_offload also moves the frozen weights"))
    if strategy in ("zero3", "fsdp") and world_size == 1 and not dist.cpu_offload:
        out.append(Problem("distributed.strategy", f"{strategy} with one process shards nothing",
                           "use it with several GPUs, or with cpu_offload: true"))
    if strategy == "zero3" and quant.load_in == "4bit" and dist.cpu_offload:
        out.append(Problem("distributed.cpu_offload", "ZeRO-3 parameter offload with 4-bit weights is not among "
                           "the combinations PEFT documents as tested", "check the first steps' loss, or use "
                           "strategy: fsdp with cpu_offload (the documented FSDP-QLoRA setup)"))
    if strategy == "fsdp" and quant.load_in == "4bit" and optim.startswith("paged_") and "8bit" in optim:
        out.append(Problem("training.optim", "paged_adamw_8bit with FSDP-QLoRA fails when saving a checkpoint "
                           "(PEFT docs, FSDP caveats)", "use paged_adamw_32bit or adamw_torch"))
    if use_dora and quant.load_in == "8bit":
        out.append(Problem("lora.use_dora", "DoRA on 8-bit weights has known issues (PEFT docs)",
                           "use load_in: 4bit for QDoRA"))
    return out


def device_scaling_problems(dist: DistributedSection, loading: ModelLoadingSection, *, use_ddp: bool,
                            cuda_devices: int, on_missing: str) -> list[Problem]:
    """What this machine cannot do of the config (errors for training, notes for a dry run)."""
    out = []
    strategy = resolve_strategy(dist, use_ddp)
    if cuda_devices == 0 and strategy in ("fsdp", "zero2", "zero3") and not dist.accelerate_config:
        # accelerate 1.15 on CPU: `launch --use_fsdp --cpu` is refused, FSDP settings are ignored by a CPU
        # Accelerator (it runs DDP), and DeepSpeed gets no process group (see docs/scaling.md).
        out.append(Problem("distributed.strategy", f"{strategy} needs CUDA GPUs: accelerate 1.15 runs FSDP and "
                           "DeepSpeed only on accelerators, and this machine has none",
                           "run it on a GPU machine (`--dry-run` shows the command), or strategy: ddp on CPU"))
    if loading.attn_implementation in ("flash_attention_2", "flash_attention_3"):
        if cuda_devices == 0 and on_missing == "stop":
            out.append(Problem("model_loading.attn_implementation", f"{loading.attn_implementation} needs a CUDA "
                               "GPU", "use sdpa (or null) here"))
        package = FLASH_ATTENTION[loading.attn_implementation]
        why = missing(package) if cuda_devices else None
        if why:
            out.append(Problem("model_loading.attn_implementation", f"{loading.attn_implementation} needs the "
                               f"{package.name} package, which {why}", package.install_command() + ", or use sdpa"))
    return out


def checkpoint_precision_warnings(checkpoint_dtype: str | None, model_dtype: str, fp16: bool) -> list[Problem]:
    """fp16 on a model published in bfloat16: activations can exceed fp16's range (65504) and give NaN losses."""
    if checkpoint_dtype in ("bfloat16", "bf16") and (fp16 or model_dtype == "fp16"):
        return [Problem("training.fp16", "this model was published in bfloat16; in fp16 its activations can "
                        "overflow (inf/NaN loss)", "use bf16 on GPUs that have it (Ampere and newer), else fp32")]
    return []
