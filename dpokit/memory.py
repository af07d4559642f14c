"""Peak training memory, estimated from the config and the model's config (no weights loaded).

The terms follow what the pinned libraries actually hold at the peak of a DPO step (the start
of the backward pass, when every saved activation is still alive): the weights (and a separate
reference copy), the LoRA parameters with their gradients and AdamW state, the activations saved
for backward (or only each layer's input with gradient checkpointing), and the LM-head tiles.
TRL >= 1.16 never holds the full (2·batch, seq, vocab) logits: its fused head projects at most
4096 tokens x 32768 vocabulary entries at a time. On CPU the tile is folded with plain torch ops
(about eight tile-sized temporaries in the backward); on GPUs a Triton kernel works in place.
The LoRA gradients are not counted: they fill up while the backward pass frees the activations.
The CPU figures are checked against measured peak RSS by benchmarks/bench_memory.py.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field

from .files import atomic_write_text

GIB = 2**30
TOKEN_TILE, VOCAB_TILE = 4096, 32768  # trl.kernels.chunked_logprob.TOKEN_CHUNK_SIZE, TRL's vocab chunk
CPU_TILE_COPIES = 8.25  # fp32 tile-sized temporaries alive in TRL's torch backward fold (measured in a step)
GPU_TILE_COPIES = 2.0  # the projection buffer and the gradient tile (Triton folds in place)
# ORPO (trl.experimental.orpo) computes the full logits of every position and keeps, at the start of its
# backward, the logits, the copy and log-softmax of the chosen half for its SFT term and the log-softmax
# statistics of its log-probs, then the logits' gradient: fp32 logit-sized tensors alive at the peak,
# per (sequence x position x vocabulary) entry (fitted to measured peaks, benchmarks/bench_memory.py).
FULL_LOGIT_COPIES = 3.5
RUNTIME_BYTES = {"cpu": 100 * 2**20, "cuda": 600 * 2**20}  # tokenizer, data, trainer / CUDA context
LIBRARIES_CPU_BYTES = 450 * 2**20  # Python + torch/transformers/TRL imported (not part of the estimate)
# glibc keeps freed activations in its heap: identical runs peaked up to 25% higher, and an hh-rlhf run of the
# embedded model 33% higher than with MALLOC_MMAP_THRESHOLD_=131072 (3.85 vs 2.90 GB over the same two steps)
ALLOCATOR_SLACK_CPU = 0.35
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
OPTIMIZER_STATES = {"adamw_torch": 2, "adamw_torch_fused": 2, "adamw_hf": 2, "adafactor": 1, "sgd": 0,
                    "adamw_8bit": 0.5, "paged_adamw_8bit": 0.5, "adamw_bnb_8bit": 0.5, "rmsprop": 1, "lion": 1}

# Which saved tensor a LoRA target adds per layer (its input; A's output is counted per module).
_ATTN_IN = {"q_proj", "k_proj", "v_proj", "qkv_proj", "c_attn", "query_key_value", "Wqkv", "query", "key", "value"}
_MLP_IN = {"gate_proj", "up_proj", "gate_up_proj", "c_fc", "dense_h_to_4h", "fc1", "w1", "w3"}
_MLP_OUT = {"down_proj", "dense_4h_to_h", "fc2", "w2", "c_proj"}


@dataclass
class MemoryEstimate:
    """Estimated peak bytes by term, for one model of a config on one device and precision."""

    terms: dict[str, int]
    device: str
    precision: str
    shape: dict = field(default_factory=dict)  # rows, seq_len, tokens, scored tokens, params ...

    @property
    def total(self) -> int:
        return sum(self.terms.values())


@dataclass
class ModelLayout:
    """What the dry run and the estimate need of a model's structure, read from a weightless meta model."""

    model_type: str
    num_parameters: int
    module_names: list[str]
    linears: list[tuple[str, int, int]]  # (module name, in_features, out_features), see `linear_shapes`

    @property
    def linear_names(self) -> list[str]:
        """Distinct leaf names of the linear-like layers (what LoRA can target)."""
        return sorted({_leaf(name) for name, _, _ in self.linears})

    @classmethod
    def of(cls, meta_model, model_type: str = "") -> "ModelLayout":
        """The layout of a built (meta) model."""
        from .models import count_parameters

        return cls(model_type or "", count_parameters(meta_model)[0], [n for n, _ in meta_model.named_modules()],
                   linear_shapes(meta_model))


def model_layout(model_config, use_cache: bool = True) -> ModelLayout:
    """The layout of the model `model_config` describes, cached on disk by the config's content.

    Building the meta model imports the model's transformers code (~0.4 s of a ~4.5 s dry run);
    the layout depends only on the config and the transformers version, so it is kept under
    ``$DPOKIT_CACHE/model_layouts/`` (written atomically; an unreadable entry is rebuilt).
    """
    import transformers

    from .embedded import cache_root
    from .models import meta_model

    blob = json.dumps({"config": model_config.to_dict(), "transformers": transformers.__version__},
                      sort_keys=True, default=str)
    path = cache_root() / "model_layouts" / f"{hashlib.sha256(blob.encode()).hexdigest()[:32]}.json"
    if use_cache and path.exists():
        try:
            data = json.loads(path.read_text())
            return ModelLayout(data["model_type"], int(data["num_parameters"]), list(data["module_names"]),
                               [(str(n), int(i), int(o)) for n, i, o in data["linears"]])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a damaged entry is rebuilt below
    layout = ModelLayout.of(meta_model(model_config), getattr(model_config, "model_type", ""))
    if use_cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(asdict(layout)))
        except OSError:
            pass  # a read-only cache only costs time
    return layout


def model_shape(model_config) -> dict:
    """The sizes the estimate needs, read from a transformers config (any decoder family)."""
    text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    hidden = text.hidden_size
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    inter = getattr(text, "intermediate_size", None) or getattr(text, "n_inner", None) or 4 * hidden
    return {"hidden": hidden, "layers": text.num_hidden_layers, "heads": heads, "head_dim": head_dim,
            "intermediate": inter, "vocab": text.vocab_size, "model_type": getattr(text, "model_type", "")}


def linear_shapes(meta_model) -> list[tuple[str, int, int]]:
    """(module name, in_features, out_features) of every linear-like layer of a (meta) model."""
    out = []
    for name, module in meta_model.named_modules():
        weight = getattr(module, "weight", None)
        if type(module).__name__ == "Conv1D" and weight is not None:  # GPT-2: weight is (in, out)
            out.append((name, weight.shape[0], weight.shape[1]))
        elif hasattr(module, "in_features") and hasattr(module, "out_features"):
            out.append((name, module.in_features, module.out_features))
    return out


def _leaf(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def lora_targets(linears, targets) -> list[tuple[str, int, int]]:
    """The linear layers a LoRA `target_modules` setting adapts (as PEFT matches them)."""
    import re

    if targets == "all-linear":
        return [entry for entry in linears if _leaf(entry[0]) != "lm_head"]
    if isinstance(targets, str):  # PEFT: a regular expression over the full module name
        return [entry for entry in linears if re.fullmatch(targets, entry[0])]
    return [entry for entry in linears if _leaf(entry[0]) in set(targets)]


def lora_parameter_count(linears, targets, rank: int, use_dora: bool = False) -> int:
    """Trainable parameters PEFT's LoRA adds for `targets` (A: rank x in, B: out x rank; DoRA: + out)."""
    return sum(rank * (i + o) + (o if use_dora else 0) for _, i, o in lora_targets(linears, targets))


def activation_bytes_per_token(shape: dict, gated_mlp: bool, targeted: set[str], lora_modules_per_layer: int,
                               rank: int, seq_len: int, act_bytes: int, dropout_inputs: int = 0) -> int:
    """Bytes one token leaves saved for backward in one layer (measured layout of transformers 5 + PEFT).

    `dropout_inputs`: summed input width of the LoRA modules of a layer when lora_dropout > 0 (each
    keeps its own dropped-out input and mask: ~1.4 input widths, measured)."""
    h, inter, attn = shape["hidden"], shape["intermediate"], shape["heads"] * shape["head_dim"]
    residual = 2 * h + 2  # the two norms' inputs and their 1/rms, kept in fp32 (the weights' dtype)
    saved = 4 * attn + shape["heads"]  # q, k, v (GQA heads expanded), attention output, logsumexp
    saved += (3 if gated_mlp else 1) * inter  # gate, up, act(gate) | the pre-activation
    saved += seq_len  # the (rows, 1, seq, seq) attention mask each layer keeps
    saved += h * bool(targeted & _ATTN_IN) + h * bool(targeted & _MLP_IN) + inter * bool(targeted & _MLP_OUT)
    saved += rank * lora_modules_per_layer  # every LoRA A output (input of B)
    saved += 1.375 * dropout_inputs
    return int(4 * residual + act_bytes * saved)


def estimate_from_shape(shape: dict, linears, *, batch_size: int, seq_len: int, completion_len: int,
                        lora_rank: int, lora_target_modules, gradient_checkpointing: bool,
                        separate_reference: bool, num_parameters: int, precision: str = "fp32",
                        device: str = "cpu", optimizer: str = "adamw_torch", weights_dtype: str = "fp32",
                        use_dora: bool = False, lora_dropout: float = 0.0, sequences_per_row: int = 2,
                        full_logits: bool = False) -> MemoryEstimate:
    """The estimate from model sizes and run settings (pure arithmetic; `estimate_memory` fills it in).

    `sequences_per_row` and `full_logits` are the method's (dpokit/methods.py): DPO and ORPO run chosen and
    rejected as one batch (2 per row), KTO one sequence per row (its KL pass runs without gradients, so its
    activations are not kept); ORPO holds full logits instead of TRL's completion-only LM-head tiles."""
    act_bytes = DTYPE_BYTES[precision]
    w_bytes = DTYPE_BYTES[weights_dtype]
    rows = sequences_per_row * batch_size  # sequences that go through the policy with gradients
    layers = shape["layers"]
    adapted = lora_targets(linears, lora_target_modules)
    lora_params = lora_parameter_count(linears, lora_target_modules, lora_rank, use_dora)
    per_layer = max(1, round(len(adapted) / layers))
    gated = any(_leaf(name) in ("gate_proj", "gate_up_proj", "w1") for name, _, _ in linears)
    targeted = {_leaf(name) for name, _, _ in adapted}
    dropout_inputs = round(sum(i for _, i, _ in adapted) / layers) if lora_dropout > 0 else 0
    per_token = activation_bytes_per_token(shape, gated, targeted, per_layer, lora_rank, seq_len, act_bytes,
                                           dropout_inputs)
    tokens = rows * seq_len
    if full_logits:  # ORPO: every position through the full head, logits and their log-softmax kept
        scored = tokens
        tiles = int(FULL_LOGIT_COPIES * scored * shape["vocab"] * 4) + scored * shape["hidden"] * 4
    else:  # The fused LM head scores only the completion tokens (dpokit on CPU, see trainers.py; TRL with Triton).
        scored = rows * completion_len
        tile = min(scored, TOKEN_TILE) * min(shape["vocab"], VOCAB_TILE)
        tiles = tile * (4 * CPU_TILE_COPIES if device == "cpu" else act_bytes * GPU_TILE_COPIES)
        tiles += scored * shape["hidden"] * 4  # the fp32 gradient of the head's input
    if gradient_checkpointing:  # only each layer's input stays; one layer at a time is recomputed later
        activations = (layers + 1) * tokens * shape["hidden"] * 4 + max(0, tokens * per_token - tiles)
    else:
        activations = layers * tokens * per_token
    optimizer_states = OPTIMIZER_STATES.get(optimizer, 2)
    terms = {
        "weights": num_parameters * w_bytes,
        "reference copy": num_parameters * w_bytes if separate_reference else 0,
        "LoRA adapter + optimizer state": int(lora_params * 4 * (1 + optimizer_states)),
        "activations" + (" (checkpointed)" if gradient_checkpointing else ""): int(activations),
        ("full logits (SFT + odds-ratio terms)" if full_logits else "LM-head tiles"): int(tiles),
        "runtime": RUNTIME_BYTES["cpu" if device == "cpu" else "cuda"],
    }
    logits_bytes = rows * seq_len * shape["vocab"] * 4
    return MemoryEstimate(terms=terms, device=device, precision=precision, shape={
        "rows": rows, "seq_len": seq_len, "tokens": tokens, "scored_tokens": scored, "lora_params": lora_params,
        "num_parameters": num_parameters, "full_logits_bytes": logits_bytes, "layers": layers,
        "sequences_per_row": sequences_per_row, "full_logits": full_logits})


def estimate_memory(config, model_index: int = 0, *, device: str | None = None, model_config=None,
                    meta_model=None, layout: ModelLayout | None = None) -> MemoryEstimate:
    """Peak training memory of `config.models[model_index]` on `device` ('cpu'/'cuda'; default: this machine).

    Loads only the model's config and its `model_layout` (a weightless 'meta' model, for exact
    parameter counts); pass `model_config` and `layout` (or a `meta_model`) when the caller has them.
    """
    from .models import load_model_config

    config = config.for_model(model_index)  # the model's own lora/precision, when its entry sets them
    spec = config.models[0]
    t, pt, lora = config.training, config.post_training, config.lora
    if model_config is None:
        model_config = load_model_config(spec.huggingface_id, spec.trust_remote_code)
    if layout is None:
        model_type = getattr(model_config, "model_type", "")
        layout = ModelLayout.of(meta_model, model_type) if meta_model is not None else model_layout(model_config)
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = "bf16" if t.bf16 else "fp16" if (t.fp16 and device != "cpu") else "fp32"
    prompt, completion = t.max_prompt_length, t.max_completion_length
    seq_len = min(t.max_seq_length, (prompt or t.max_seq_length) + (completion or t.max_seq_length))
    completion_len = min(seq_len - 1, completion or seq_len)
    if prompt is not None and completion is None:
        completion_len = max(1, seq_len - prompt)
    from .methods import get_method

    from .scaling import config_model_dtype

    method = get_method(pt.method)
    separate = method.uses_reference and pt.use_ref_model
    weights_dtype = config_model_dtype(config, 0 if device == "cpu" else 1)  # model_loading.dtype, auto: the flags
    return estimate_from_shape(
        model_shape(model_config), layout.linears, batch_size=t.per_device_train_batch_size,
        seq_len=seq_len, completion_len=completion_len, lora_rank=lora.r,
        lora_target_modules=lora.target_modules, gradient_checkpointing=t.gradient_checkpointing,
        separate_reference=separate, num_parameters=layout.num_parameters, precision=precision, device=device,
        optimizer=t.optim, use_dora=lora.use_dora, lora_dropout=lora.lora_dropout, weights_dtype=weights_dtype,
        sequences_per_row=method.sequences_per_row, full_logits=method.full_logits)


def _size(n: float) -> str:
    return f"{n / GIB:.2f} GB" if n >= 0.1 * GIB else f"{n / 2**20:.0f} MB"


def format_estimate(estimate: MemoryEstimate) -> list[str]:
    """Lines for `--dry-run`: the total and its main terms, largest first, with what they assume."""
    s = estimate.shape
    where = "CPU RAM" if estimate.device == "cpu" else "GPU memory"
    lines = [f"memory estimate ({where}, {estimate.precision}, peak of a step): ~{_size(estimate.total)}"
             + (f" + ~{_size(LIBRARIES_CPU_BYTES)} for Python and the libraries" if estimate.device == "cpu" else "")]
    for name, value in sorted(estimate.terms.items(), key=lambda kv: -kv[1]):
        if value:
            lines.append(f"     {name:<34} {_size(value):>9}")
    if estimate.device == "cpu":
        lines.append(f"     (glibc's allocator can keep ~{ALLOCATOR_SLACK_CPU:.0%} more: freed activations stay in its "
                     "heap; MALLOC_MMAP_THRESHOLD_=131072 in the environment returns them)")
    what = "chosen + rejected" if s.get("sequences_per_row", 2) == 2 else "one per row; KTO's KL completions " \
        "run without gradients"
    head = (f"the full logits of all {s['scored_tokens']} positions are held (ORPO's SFT and odds-ratio terms, "
            f"{_size(s['full_logits_bytes'])} each copy)" if s.get("full_logits") else
            f"TRL's LM head scores the {s['scored_tokens']} completion tokens in tiles instead of holding the full "
            f"logits ({_size(s['full_logits_bytes'])})")
    lines.append(f"     for {s['rows']} sequences ({what}) x {s['seq_len']} tokens, {s['lora_params']:,} LoRA "
                 f"parameters; {head}")
    return lines


def relative_error(estimate: MemoryEstimate, measured_bytes: float) -> float:
    """Relative error |estimate - measured| / measured."""
    return abs(estimate.total - measured_bytes) / measured_bytes if measured_bytes else math.inf


def machine_memory_bytes(device: str) -> int | None:
    """Memory of this machine's training device: the first GPU's, or the CPU's RAM; None if unknown."""
    if device == "cpu":
        import psutil

        return psutil.virtual_memory().total
    import torch

    return torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None


def fit_on_this_machine(estimate: MemoryEstimate, available: int | None = None) -> str | None:
    """A plain warning when the estimated peak (plus the libraries, on CPU) exceeds this machine's memory."""
    available = available if available is not None else machine_memory_bytes(estimate.device)
    if not available:
        return None
    need = estimate.total + (LIBRARIES_CPU_BYTES if estimate.device == "cpu" else 0)
    where = "RAM" if estimate.device == "cpu" else "GPU memory"
    if need > available:
        return (f"will not fit: this run needs ~{_size(need)} and this machine has {_size(available)} of {where}; "
                "follow the memory tips (smaller batch, shorter lengths, gradient checkpointing, use_ref_model: false)")
    if need > 0.8 * available:
        return f"tight: this run needs ~{_size(need)} of the {_size(available)} of {where} this machine has"
    return None

