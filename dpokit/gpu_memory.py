"""Per-GPU training memory: dpokit.memory's terms, for GPU dtypes, quantization and sharding.

The same parts as the CPU estimate (weights, reference copy, LoRA + optimizer state, saved
activations, LM-head tiles, runtime), worked out for what sits on one GPU:

* weights in fp32/bf16/fp16, 4-bit (0.5 byte per weight plus the quantization constants: one
  fp32 absmax per 64 weights, or with double quantization one 8-bit absmax per 64 and one fp32
  per 256 of those — the QLoRA paper's 0.5 and 0.127 bits per parameter) or 8-bit (1 byte plus
  an fp32 scale per output row); the LM head, embeddings and norms are not quantized, and
  `prepare_model_for_kbit_training` casts them to fp32 when the model is not sharded;
* FSDP and ZeRO-3 divide weights, gradients and optimizer state by the number of GPUs and add
  the units gathered at a time (two decoder layers, plus FSDP's root unit: embeddings and head);
  ZeRO-2 divides gradients and optimizer state; CPU offload moves what is sharded to CPU RAM;
* the reference: a separate copy (full under DDP / ZeRO-2, sharded under FSDP / ZeRO-3, as TRL
  prepares it), or nothing when it is the adapter-disabled policy or precomputed log-probs;
* activations as measured on CPU (dpokit.memory.activation_bytes_per_token), with the residual
  stream in the weights' dtype and one shared attention mask (none with flash-attention).

Figures not measured here are assumptions, named where they are defined. The planner
(dpokit.planner) compares the total with a GPU's memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from .memory import (DTYPE_BYTES, GPU_TILE_COPIES, OPTIMIZER_STATES, RUNTIME_BYTES, TOKEN_TILE, VOCAB_TILE,
                     MemoryEstimate, activation_bytes_per_token, lora_parameter_count, lora_targets)

NF4_BYTES = 0.5 + 4 / 64  # 4-bit weight + fp32 absmax per block of 64 (QLoRA paper: 0.5 bit/param of constants)
NF4_DQ_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 8-bit absmax per 64, fp32 per 256 blocks (0.127 bit/param)
COMM_BYTES = 512 * 2**20  # assumption: NCCL communicators and buffers of one process in a multi-GPU run
GATHERED_LAYERS = 2  # FSDP / ZeRO-3: the layer being computed and the one prefetched
DEEPSPEED_TRAINABLE_BYTES = (2, 2, 12)  # ZeRO paper, mixed precision: 16-bit param, 16-bit grad, fp32 copy + Adam


@dataclass(frozen=True)
class GpuSetup:
    """Everything about a run that changes its memory on one GPU (resolved values, no 'auto')."""

    pairs_per_device: int
    seq_len: int
    completion_len: int
    lora_rank: int
    lora_target_modules: object = ("q_proj", "v_proj")
    use_dora: bool = False
    lora_dropout: float = 0.0
    gradient_checkpointing: bool = True
    reference: str = "adapter"  # separate | adapter | precomputed | none (reference-free methods)
    precision: str = "bf16"  # activations / mixed precision: fp32 | bf16 | fp16
    weights_dtype: str = "bf16"
    quantization: str = "none"  # none | 4bit | 8bit
    double_quant: bool = True
    optimizer: str = "adamw_torch"
    strategy: str = "single"  # single | ddp | fsdp | zero2 | zero3
    world_size: int = 1  # GPUs the state is sharded over
    cpu_offload: bool = False
    attn_implementation: str | None = None  # None = sdpa
    rows_per_pair: int = 2  # chosen and rejected in one batch (1 for single-sequence workloads)
    lm_head: str = "tiled"  # tiled: TRL's chunked head (DPO); full: full logits (e.g. SFT scripts, for comparisons)


@dataclass(frozen=True)
class ModelFacts:
    """What the planner needs of a model: `dpokit.memory.model_shape` and the layer shapes."""

    shape: dict
    linears: list  # (name, in_features, out_features), dpokit.memory.linear_shapes
    num_parameters: int

    @property
    def quantizable(self) -> list:
        """The linear layers bitsandbytes quantizes: every one but the LM head."""
        return [entry for entry in self.linears if entry[0].rsplit(".", 1)[-1] != "lm_head"]

    @property
    def layer_parameters(self) -> int:
        """Parameters of one decoder layer's linear layers (the unit FSDP wraps and gathers)."""
        return sum(i * o for _, i, o in self.quantizable) // self.shape["layers"]


def weight_bytes(facts: ModelFacts, setup: GpuSetup) -> tuple[float, float]:
    """(bytes of the whole model's weights, bytes of one decoder layer) as loaded for `setup`."""
    if setup.quantization == "none":
        per = DTYPE_BYTES[setup.weights_dtype]
        return facts.num_parameters * per, facts.layer_parameters * per
    quantized = sum(i * o for _, i, o in facts.quantizable)
    if setup.quantization == "4bit":
        per_weight = NF4_DQ_BYTES if setup.double_quant else NF4_BYTES
        packed = quantized * per_weight
    else:  # 8-bit: int8 weights and an fp32 scale per output row
        per_weight = 1.0
        packed = quantized + 4 * sum(o for _, _, o in facts.quantizable)
    sharded = setup.strategy in ("fsdp", "zero3")
    rest_dtype = setup.weights_dtype if sharded else "fp32"  # prepare_model_for_kbit_training upcasts
    rest = (facts.num_parameters - quantized) * DTYPE_BYTES[rest_dtype]
    return packed + rest, facts.layer_parameters * per_weight


def trainable_bytes(lora_params: int, setup: GpuSetup) -> dict[str, float]:
    """LoRA parameters, their gradients and optimizer state on one GPU, after sharding and offload."""
    n = max(1, setup.world_size)
    if setup.strategy in ("zero2", "zero3"):
        param, grad, state = (b * lora_params for b in DEEPSPEED_TRAINABLE_BYTES)
    else:
        # PEFT keeps adapters in fp32; TRL casts them to bf16 on a quantized base.
        pb = 2 if setup.quantization != "none" else 4
        param = grad = lora_params * pb
        state = lora_params * optimizer_state_bytes(setup.optimizer, pb)
    if setup.strategy in ("zero2", "zero3", "fsdp"):
        grad, state = grad / n, state / n
    if setup.strategy in ("zero3", "fsdp"):
        param = param / n
    if setup.cpu_offload and setup.strategy in ("zero2", "zero3", "fsdp"):
        state = 0.0
        if setup.strategy == "fsdp":
            param = grad = 0.0  # FSDP's CPUOffload keeps parameters and gradients on the CPU
    return {"adapter": param, "gradients": grad, "optimizer state": state}


def optimizer_state_bytes(optimizer: str, param_bytes: int) -> float:
    """Bytes of optimizer state per trainable parameter. bitsandbytes' 8-bit optimizers keep 1-byte
    states and its 32-bit ones fp32 states whatever the parameter dtype; torch's keep the parameter dtype."""
    states = OPTIMIZER_STATES.get(optimizer, 2)
    if "8bit" in optimizer:
        return states * 4  # OPTIMIZER_STATES lists 8-bit Adam as 0.5 fp32 states = 2 bytes
    if optimizer.startswith(("paged_", "lion_", "rmsprop_bnb", "ademamix")):
        return (2 if "adam" in optimizer else 1) * 4
    return states * param_bytes


def activation_terms(facts: ModelFacts, setup: GpuSetup) -> dict[str, float]:
    """Saved activations and the LM-head tiles of one GPU's micro-batch (sharding does not divide them)."""
    shape = facts.shape
    act = DTYPE_BYTES[setup.precision]
    upcast = setup.quantization != "none" and setup.strategy not in ("fsdp", "zero3")
    residual_bytes = 4 if upcast or setup.weights_dtype == "fp32" else 2
    rows = setup.rows_per_pair * setup.pairs_per_device
    layers, h = shape["layers"], shape["hidden"]
    adapted = lora_targets(facts.linears, setup.lora_target_modules)
    per_layer = max(1, round(len(adapted) / layers))
    gated = any(name.rsplit(".", 1)[-1] in ("gate_proj", "gate_up_proj", "w1") for name, _, _ in facts.linears)
    targeted = {name.rsplit(".", 1)[-1] for name, _, _ in adapted}
    dropout_inputs = round(sum(i for _, i, _ in adapted) / layers) if setup.lora_dropout > 0 else 0
    residual = 2 * h + 2
    # dpokit.memory's per-token layout (measured on CPU, fp32 residual, a mask per layer), with the mask
    # taken out (counted once below) and the residual stream in the weights' dtype.
    per_token = activation_bytes_per_token(shape, gated, targeted, per_layer, setup.lora_rank, 0, act,
                                           dropout_inputs) - 4 * residual + residual_bytes * residual
    seq = setup.seq_len
    if setup.attn_implementation == "eager":
        per_token += shape["heads"] * seq * (4 + act)  # softmax kept in fp32 and in the compute dtype
    tokens = rows * seq
    flash = (setup.attn_implementation or "").startswith("flash_attention")
    mask = 0 if flash else rows * seq * seq * (act if setup.attn_implementation == "eager" else 1)
    scored = rows * setup.completion_len
    tile = min(scored, TOKEN_TILE) * min(shape["vocab"], VOCAB_TILE)
    tiles = tile * act * GPU_TILE_COPIES + scored * h * 4
    if setup.lm_head == "full":  # logits in the compute dtype, their fp32 copy for the loss, its gradient
        tiles = scored * shape["vocab"] * (act + 4 + 4)
    if setup.gradient_checkpointing:
        saved = (layers + 1) * tokens * h * residual_bytes + max(0, tokens * per_token - tiles)
    else:
        saved = layers * tokens * per_token
    return {"activations": saved + mask, "LM-head tiles": tiles}


def gpu_estimate(facts: ModelFacts, setup: GpuSetup) -> MemoryEstimate:
    """Peak bytes on one GPU, by term (shape: what was assumed, and CPU RAM needed by offload)."""
    n = max(1, setup.world_size)
    weights, layer = weight_bytes(facts, setup)
    gathered = 0.0
    cpu_ram = 0.0
    resident = weights
    if setup.strategy in ("fsdp", "zero3"):
        non_layer = weights - layer * facts.shape["layers"]
        root = non_layer if setup.strategy == "fsdp" else facts.shape["vocab"] * facts.shape["hidden"] * \
            DTYPE_BYTES[setup.weights_dtype]
        gathered = GATHERED_LAYERS * layer + root
        resident = weights / n
        if setup.cpu_offload:
            cpu_ram += resident
            resident = 0.0
    reference = 0.0
    if setup.reference == "separate":
        reference = weights / n if setup.strategy in ("fsdp", "zero3") else weights
        if setup.cpu_offload and setup.strategy in ("fsdp", "zero3"):
            cpu_ram += reference
            reference = 0.0
    lora_params = lora_parameter_count(facts.linears, setup.lora_target_modules, setup.lora_rank, setup.use_dora)
    trainable = trainable_bytes(lora_params, setup)
    acts = activation_terms(facts, setup)
    if setup.optimizer.startswith("paged_") and not setup.cpu_offload:
        # Paged states live in CUDA unified memory: the driver moves them to CPU RAM while the backward
        # pass needs the room, and they need it back only for the optimizer step, after the activations are freed.
        transient = acts["activations"] + acts["LM-head tiles"]
        trainable["optimizer state"] = max(0.0, trainable["optimizer state"] - transient)
    checkpointed = " (checkpointed)" if setup.gradient_checkpointing else ""
    terms = {
        "weights" + (" (shard)" if setup.strategy in ("fsdp", "zero3") else ""): resident,
        "gathered layers": gathered,
        "reference copy": reference,
        "LoRA adapter + optimizer state": sum(trainable.values()),
        "activations" + checkpointed: acts["activations"],
        "LM-head tiles": acts["LM-head tiles"],
        "runtime": RUNTIME_BYTES["cuda"] + (COMM_BYTES if n > 1 else 0),
    }
    rows = setup.rows_per_pair * setup.pairs_per_device
    return MemoryEstimate(terms={k: int(v) for k, v in terms.items()}, device="cuda", precision=setup.precision,
                          shape={"rows": rows, "seq_len": setup.seq_len, "tokens": rows * setup.seq_len,
                                 "scored_tokens": rows * setup.completion_len, "lora_params": lora_params,
                                 "num_parameters": facts.num_parameters, "layers": facts.shape["layers"],
                                 "full_logits_bytes": rows * setup.seq_len * facts.shape["vocab"] * 4,
                                 "weights_total_bytes": int(weights), "cpu_offload_bytes": int(cpu_ram),
                                 "trainable_bytes": {k: int(v) for k, v in trainable.items()}})
