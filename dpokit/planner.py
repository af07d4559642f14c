"""Will it fit? A target like `1xA10G-24GB` or `8x80GB`, a verdict, and the cheapest change that fits.

The per-GPU estimate is dpokit.gpu_memory's. When it does not fit, the planner tries the config
guide's memory tips in the guide's order — (1) a smaller per-device batch with more accumulation
(same effective batch), (2) shorter sequences, (3) gradient checkpointing, (4) a smaller LoRA rank,
(5) use_ref_model: false, (6) bf16 — and then QLoRA (4-bit), ZeRO-3 sharding over the target's GPUs
and CPU offload, one after another until the run fits. Then it drops every applied change the
others make unnecessary, the latest (most expensive) first, so what it suggests is small, prefers
the guide's early tips, and each item is a `--set` override. Everything works from a transformers config alone
(no weights): dpokit.plan_inputs turns a dpokit Config and a transformers config into its inputs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from .gpu_memory import GpuSetup, ModelFacts, gpu_estimate

GIB = 2**30
HEADROOM = 0.10  # assumption: kept free of a GPU's memory for the caching allocator's fragmentation and workspaces
MIN_SEQ_LEN = 256  # the shortest max_seq_length the planner suggests
NOMINAL_GB = {"T4": 16, "L4": 24, "A10": 24, "A10G": 24, "RTX3090": 24, "RTX4090": 24, "A6000": 48, "L40S": 48,
              "L40": 48, "A100": 80, "H100": 80, "H200": 141, "V100": 32, "A40": 48, "RTX5090": 32}


@dataclass(frozen=True)
class GpuTarget:
    """`count` GPUs of `memory_gib` each (a nominal size: "24GB" is read as 24 GiB)."""

    count: int
    memory_gib: float
    name: str = ""

    @property
    def usable_bytes(self) -> int:
        return int(self.memory_gib * GIB * (1 - HEADROOM))

    def __str__(self) -> str:
        return f"{self.count}x{self.name + '-' if self.name else ''}{self.memory_gib:g}GB"


def parse_target(text: str) -> GpuTarget:
    """`1xA10G-24GB`, `8x80GB`, `1x24GB`, `2xH100`, `A100-40GB` -> GpuTarget. Raises ValueError with the forms."""
    m = re.fullmatch(r"\s*(?:(\d+)\s*[x×*]\s*)?(.*?)\s*", text, flags=re.IGNORECASE)
    count = int(m.group(1)) if m and m.group(1) else 1
    rest = m.group(2) if m else ""
    size = re.search(r"(\d+(?:\.\d+)?)\s*(?:GB|GIB|G)\s*$", rest, flags=re.IGNORECASE)
    name = rest[: size.start()].rstrip("-_ ") if size else rest
    name = name.upper().replace(" ", "")
    if size:
        gib = float(size.group(1))
    elif name in NOMINAL_GB:
        gib = float(NOMINAL_GB[name])
    else:
        raise ValueError(f"cannot read GPU target {text!r}: write COUNTxNAME-SIZEGB (1xA10G-24GB), COUNTxSIZEGB "
                         f"(8x80GB) or COUNTxNAME with NAME one of {', '.join(sorted(NOMINAL_GB))}")
    if count < 1 or gib <= 0:
        raise ValueError(f"GPU target {text!r}: need at least one GPU with some memory")
    return GpuTarget(count, gib, name)


@dataclass(frozen=True)
class Change:
    """One suggested change: the guide's tip it comes from and the `--set` overrides that make it."""

    tip: str
    overrides: dict

    def __str__(self) -> str:
        sets = " ".join(f"--set {k}={_yaml(v)}" for k, v in self.overrides.items())
        return f"{self.tip}: {sets}"


@dataclass(frozen=True)
class Context:
    """What the setup alone does not say: the config values the overrides start from."""

    accumulation: int = 1
    max_prompt_length: int | None = None
    max_completion_length: int | None = None
    ref_is_base: bool = True  # the reference is the policy's base model (ref_model_id is null)


@dataclass(frozen=True)
class Verdict:
    target: GpuTarget
    setup: GpuSetup
    estimate: object  # MemoryEstimate of the setup as configured
    changes: tuple[Change, ...] = ()
    fixed: object = None  # MemoryEstimate after the changes (None when it fits as is, or nothing fits)
    fixed_setup: GpuSetup | None = None
    tips: tuple = ()  # the tip functions (TIPS) behind `changes`, in order

    @property
    def fits(self) -> bool:
        return self.estimate.total <= self.target.usable_bytes

    @property
    def tight(self) -> bool:
        """Over the usable memory but under the GPU's size: fits only if the allocator fragments little."""
        return not self.fits and self.estimate.total <= self.target.memory_gib * GIB

    @property
    def fixable(self) -> bool:
        return self.fixed is not None


def _fits(facts: ModelFacts, setup: GpuSetup, usable: int) -> bool:
    return gpu_estimate(facts, setup).total <= usable


def _offloaded(facts: ModelFacts, setup: GpuSetup) -> int:
    return gpu_estimate(facts, setup).shape["cpu_offload_bytes"]


# Each tip: (setup, context, facts, usable, target) -> (new setup, new context, Change) or None if it does not apply.
def _tip_batch(s, ctx, facts, usable, target):
    if s.pairs_per_device <= 1:
        return None
    batch = s.pairs_per_device // 2
    while batch > 1 and not _fits(facts, replace(s, pairs_per_device=batch), usable):
        batch //= 2
    factor = s.pairs_per_device / batch
    accumulation = max(1, round(ctx.accumulation * factor))
    return (replace(s, pairs_per_device=batch), replace(ctx, accumulation=accumulation),
            Change("smaller batch, more accumulation (same effective batch)",
                   {"training.per_device_train_batch_size": batch,
                    "training.gradient_accumulation_steps": accumulation}))


def _tip_lengths(s, ctx, facts, usable, target):
    if s.seq_len <= MIN_SEQ_LEN:
        return None

    def shorter(seq):
        scale = seq / s.seq_len
        return replace(s, seq_len=seq, completion_len=max(1, int(s.completion_len * scale)))

    seq = max(MIN_SEQ_LEN, s.seq_len // 2)
    while seq > MIN_SEQ_LEN and not _fits(facts, shorter(seq), usable):
        seq = max(MIN_SEQ_LEN, seq // 2)
    new = shorter(seq)
    overrides = {"training.max_seq_length": seq}
    if ctx.max_prompt_length is not None:
        overrides["training.max_prompt_length"] = max(1, int(ctx.max_prompt_length * seq / s.seq_len))
    if ctx.max_completion_length is not None:
        overrides["training.max_completion_length"] = new.completion_len
    return new, ctx, Change("shorter sequences (what is cut is not trained on)", overrides)


def _tip_checkpointing(s, ctx, facts, usable, target):
    if s.gradient_checkpointing:
        return None
    return (replace(s, gradient_checkpointing=True), ctx,
            Change("gradient checkpointing (~30% more compute)", {"training.gradient_checkpointing": True}))


def _tip_rank(s, ctx, facts, usable, target):
    if s.lora_rank <= 8:
        return None
    return replace(s, lora_rank=8), ctx, Change("smaller LoRA rank", {"lora.r": 8, "lora.lora_alpha": 16})


def _tip_reference(s, ctx, facts, usable, target):
    if s.reference != "separate":
        return None
    if ctx.ref_is_base:
        return (replace(s, reference="adapter"), ctx,
                Change("the reference is the policy with its adapter off (same numbers, no copy)",
                       {"post_training.use_ref_model": False}))
    return (replace(s, reference="precomputed"), ctx,
            Change("reference log-probs computed once before training",
                   {"post_training.precompute_ref_log_probs": True}))


def _tip_bf16(s, ctx, facts, usable, target):
    if s.precision == "bf16" and s.weights_dtype != "fp32":
        return None
    weights = s.weights_dtype if s.weights_dtype != "fp32" else "bf16"
    return (replace(s, precision="bf16", weights_dtype=weights), ctx,
            Change("bf16 (GPUs from Ampere on)", {"training.bf16": True, "training.fp16": False}))


def _tip_4bit(s, ctx, facts, usable, target):
    if s.quantization == "4bit":
        return None
    return (replace(s, quantization="4bit", double_quant=True), ctx,
            Change("QLoRA: 4-bit NF4 base weights", {"quantization.load_in": "4bit"}))


def _tip_shard(s, ctx, facts, usable, target):
    if target.count < 2 or s.strategy in ("zero3", "fsdp"):
        return None
    return (replace(s, strategy="zero3", world_size=target.count), ctx,
            Change(f"ZeRO-3: shard weights, gradients and optimizer state over {target.count} GPUs",
                   {"distributed.strategy": "zero3"}))


def _tip_offload(s, ctx, facts, usable, target):
    if s.cpu_offload:
        return None
    # FSDP with offload is the FSDP-QLoRA setup PEFT documents; ZeRO-3 otherwise.
    strategy = s.strategy if s.strategy in ("zero3", "fsdp") else "fsdp" if s.quantization == "4bit" else "zero3"
    world = s.world_size if s.strategy in ("zero3", "fsdp") else target.count
    return (replace(s, strategy=strategy, world_size=world, cpu_offload=True), ctx,
            Change(f"{strategy} with CPU offload (slow: weights stream from CPU RAM)",
                   {"distributed.strategy": strategy, "distributed.cpu_offload": True}))


TIPS = (_tip_batch, _tip_lengths, _tip_checkpointing, _tip_rank, _tip_reference, _tip_bf16,
        _tip_4bit, _tip_shard, _tip_offload)


def _replay(tips, setup, ctx, facts, usable, target):
    changes = []
    for tip in tips:
        result = tip(setup, ctx, facts, usable, target)
        if result is not None:
            setup, ctx, change = result
            changes.append(change)
    return setup, changes


def cheapest_change(facts: ModelFacts, setup: GpuSetup, target: GpuTarget, ctx: Context = Context()):
    """(changes, setup after them, tips applied) that make `setup` fit `target`, or None when even all
    of them do not."""
    usable = target.usable_bytes
    applied, current, current_ctx = [], setup, ctx
    for tip in TIPS:
        result = tip(current, current_ctx, facts, usable, target)
        if result is None:
            continue
        current, current_ctx, _ = result
        applied.append(tip)
        if _fits(facts, current, usable):
            break
    else:
        return None
    # Drop what the others make unnecessary, the most expensive first, unless dropping it would put
    # more into CPU RAM (4-bit weights offload a quarter of what bf16 ones do).
    for tip in reversed(applied):
        trial = [t for t in applied if t is not tip]
        kept, _ = _replay(applied, setup, ctx, facts, usable, target)
        fixed, _ = _replay(trial, setup, ctx, facts, usable, target)
        if _fits(facts, fixed, usable) and _offloaded(facts, fixed) <= _offloaded(facts, kept):
            applied = trial
    fixed, changes = _replay(applied, setup, ctx, facts, usable, target)
    return changes, fixed, tuple(applied)


def plan(facts: ModelFacts, setup: GpuSetup, target: GpuTarget, ctx: Context = Context()) -> Verdict:
    """The verdict for `setup` on `target` (sharded setups are spread over all of the target's GPUs)."""
    if setup.strategy != "single":
        setup = replace(setup, world_size=target.count)
    estimate = gpu_estimate(facts, setup)
    if estimate.total <= target.usable_bytes:
        return Verdict(target, setup, estimate)
    found = cheapest_change(facts, setup, target, ctx)
    if found is None:
        return Verdict(target, setup, estimate)
    changes, fixed_setup, tips = found
    return Verdict(target, setup, estimate, tuple(changes), gpu_estimate(facts, fixed_setup), fixed_setup, tips)


def format_verdict(verdict: Verdict) -> list[str]:
    """Lines for `--dry-run --plan TARGET`."""
    t, est = verdict.target, verdict.estimate
    usable = t.usable_bytes
    where = f"{t} ({_size(usable)} usable per GPU, {HEADROOM:.0%} kept free)"
    if verdict.fits:
        lines = [f"plan for {where}: fits, ~{_size(est.total)} per GPU"]
    elif verdict.tight:
        lines = [f"plan for {where}: tight, ~{_size(est.total)} per GPU (within the {HEADROOM:.0%} kept free; "
                 "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True reduces fragmentation)"]
    else:
        lines = [f"plan for {where}: does not fit, ~{_size(est.total)} per GPU"]
    for name, value in sorted(est.terms.items(), key=lambda kv: -kv[1]):
        if value:
            lines.append(f"     {name:<34} {_size(value):>9}")
    offload = est.shape.get("cpu_offload_bytes", 0)
    if offload:
        lines.append(f"     (+ {_size(offload)} of CPU RAM per process for what is offloaded)")
    if not verdict.fits:
        if verdict.fixable:
            ram = verdict.fixed.shape.get("cpu_offload_bytes", 0)
            lines.append(f"   cheapest change that fits (~{_size(verdict.fixed.total)} per GPU"
                         + (f", + {_size(ram)} of CPU RAM per process" if ram else "") + "):")
            lines += [f"     - {change}" for change in verdict.changes]
        else:
            lines.append("   nothing dpokit can change fits this target: use more or larger GPUs")
    return lines


def _size(n: float) -> str:
    return f"{n / GIB:.1f} GB" if n >= 0.1 * GIB else f"{n / 2**20:.0f} MB"


def _yaml(value) -> str:
    return {True: "true", False: "false"}.get(value, str(value)) if isinstance(value, bool) else str(value)
