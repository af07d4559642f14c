"""Expected time of a run: the floating-point work of its steps, from the data's token counts, divided
by what this machine does per second (measured once, cached).

The work of one optimizer step is counted from the method's shape (dpokit/methods.py: sequences per
row, KTO's KL pass, ORPO's full LM head), the padded batch lengths the trainer will see (simulated
from the token counts the dry run computes, after the length limits), LoRA, checkpointing and the
reference forward pass. The machine's figure is the best fp32 (or bf16) matmul rate with the threads
training will use, measured once (~1 s) and kept in `$DPOKIT_CACHE/machine/`. A training step reaches
only part of that rate (small matrices, attention, norms, the optimizer, Python): `STEP_EFFICIENCY`,
calibrated on real runs (README: "How long a run takes").
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import random
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime

from .files import atomic_write_text

# Share of the measured matmul rate a LoRA training step achieves, and seconds of fixed cost per forward
# pass (Python, data collation, the optimizer), fitted to the measured step times of the quickstart and of
# an hh-rlhf run of the embedded model (README: "How long a run takes").
STEP_EFFICIENCY = 0.55
SECONDS_PER_FORWARD = 0.0
MATMUL_SIZE = 1024


@dataclass(frozen=True)
class MachineRate:
    """Best matmul rate of this machine for one device, dtype and thread count: GFLOP/s of wall time when the
    run has the machine to itself (on a CPU: the rate per CPU-second of the process times its threads)."""

    gflops: float
    device: str
    dtype: str
    threads: int
    measured: str  # ISO time of the measurement
    load_average: float | None  # the 1-minute load average then (None where unknown)
    path: str = ""  # the cache file


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def measure_matmul_rate(device: str = "cpu", dtype: str = "fp32", seconds: float = 1.0) -> float:
    """Best GFLOP/s of a 1024 x 1024 matmul over `seconds` on the current torch threads, as wall time would
    be on an otherwise idle machine.

    On a CPU the matmuls are timed in CPU time of this process (divided by the threads), not wall time: on a
    shared machine other processes take the cores now and then, which says nothing about the hardware (and
    a figure measured at a busy moment would be cached for every later estimate). The best window is kept."""
    import torch

    threads = torch.get_num_threads() if device == "cpu" else 1
    clock = time.process_time if device == "cpu" else time.perf_counter

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    n = MATMUL_SIZE
    a = torch.randn(n, n, device=device, dtype=torch_dtype)
    b = torch.randn(n, n, device=device, dtype=torch_dtype)
    out = torch.empty(n, n, device=device, dtype=torch_dtype)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(2):
        torch.mm(a, b, out=out)
    sync()
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = clock()
        for _ in range(4):
            torch.mm(a, b, out=out)
        sync()
        best = max(best, 4 * 2 * n**3 / max((clock() - start) / threads, 1e-9) / 1e9)
    return best


def machine_rate(device: str = "cpu", dtype: str = "fp32", use_cache: bool = True) -> MachineRate:
    """This machine's matmul rate for `device`/`dtype` with torch's current threads: from the cache, or
    measured once (~1 s) and cached under `$DPOKIT_CACHE/machine/` (delete the file to measure again)."""
    import torch

    from .embedded import cache_root

    threads = torch.get_num_threads() if device == "cpu" else 0
    gpu = torch.cuda.get_device_name() if device == "cuda" else ""
    ident = {"cpu": _cpu_name(), "gpu": gpu, "cores": os.cpu_count(), "threads": threads, "device": device,
             "dtype": dtype, "torch": torch.__version__}
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_root() / "machine" / f"matmul-{device}-{dtype}-{threads}t-{key}.json"
    if use_cache and path.exists():
        try:
            data = json.loads(path.read_text())
            return MachineRate(float(data["gflops"]), device, dtype, threads, data["measured"],
                               data.get("load_average"), str(path))
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a damaged entry is measured again
    rate = MachineRate(round(measure_matmul_rate(device, dtype), 1), device, dtype, threads,
                       datetime.now().isoformat(timespec="seconds"), _load_average(), str(path))
    if use_cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps({**asdict(rate), "machine": ident}, indent=2))
        except OSError:
            pass  # a read-only cache only costs the measurement next time
    return rate


# ----------------------------------------------------------------------------- tokens per batch


@dataclass(frozen=True)
class BatchShape:
    """Expected shape of one forward pass of the policy (with gradients), and its extra no-grad pass."""

    sequences: int  # sequences per forward
    length: float  # expected padded length
    length_sq: float  # expected padded length squared (attention)
    scored: float  # expected positions through the LM head
    no_grad_sequences: int = 0  # KTO: the KL completions
    no_grad_length: float = 0.0
    no_grad_length_sq: float = 0.0
    no_grad_scored: float = 0.0


def cut_lengths(stats: dict, limits: tuple[int | None, int | None, int]) -> list[tuple[int, int, int]]:
    """(prompt, chosen, rejected) token counts of each measured row after the guide's limits and max_length."""
    max_prompt, max_completion, max_length = limits
    out = []
    for p, c, r in zip(stats["prompt_len"], stats["chosen_len"], stats["rejected_len"]):
        p = min(p, max_prompt) if max_prompt else p
        room = max(max_length - p, 0)
        c = min(c, max_completion, room) if max_completion else min(c, room)
        r = min(r, max_completion, room) if max_completion else min(r, room)
        out.append((p, c, r))
    return out


def batch_shape(rows: list[tuple[int, int, int]], method, batch_size: int, samples: int = 256,
                seed: int = 0) -> BatchShape:
    """Padded lengths of the trainer's batches, averaged over `samples` batches drawn from `rows`."""
    rng = random.Random(seed)
    lengths, squares, scored = [], [], []
    kl_lengths, kl_squares, kl_scored = [], [], []
    for _ in range(samples):
        batch = [rows[rng.randrange(len(rows))] for _ in range(batch_size)]
        if method.sequences_per_row == 2:  # chosen and rejected of every pair, padded together
            width = max(p + max(c, r) for p, c, r in batch)
            positions = 2 * batch_size * width if method.full_logits else sum(c + r for _, c, r in batch)
        else:  # KTO: one answer per row (alternately chosen and rejected)
            answers = [(p, c if i % 2 == 0 else r) for i, (p, c, r) in enumerate(batch)]
            width = max(p + a for p, a in answers)
            positions = sum(a for _, a in answers)
            kl = [(p, answers[i - 1][1]) for i, (p, _) in enumerate(answers)]  # another row's answer
            kl_width = max(p + a for p, a in kl)
            kl_lengths.append(kl_width)
            kl_squares.append(kl_width**2)
            kl_scored.append(sum(a for _, a in kl))
        lengths.append(width)
        squares.append(width**2)
        scored.append(positions)

    def mean(values):
        return sum(values) / len(values) if values else 0.0

    sequences = method.sequences_per_row * batch_size
    return BatchShape(sequences, mean(lengths), mean(squares), mean(scored),
                      method.no_grad_sequences_per_row * batch_size, mean(kl_lengths), mean(kl_squares),
                      mean(kl_scored))


# ----------------------------------------------------------------------------- work


@dataclass(frozen=True)
class ModelCost:
    """The model sizes the work depends on."""

    body_params: int  # parameters outside the embeddings and LM head
    hidden: int
    vocab: int
    layers: int
    attn_dim: int
    lora_params: int


def forward_flops(cost: ModelCost, sequences: int, length: float, length_sq: float, scored: float,
                  lora: bool = True) -> float:
    """Matmul FLOPs of one forward pass (2 per multiply-add): linear layers, attention, LM head, LoRA."""
    tokens = sequences * length
    body = 2 * cost.body_params * tokens + 2 * cost.layers * sequences * length_sq * cost.attn_dim
    return body + 2 * cost.hidden * cost.vocab * scored + (2 * cost.lora_params * tokens if lora else 0)


def step_terms(cost: ModelCost, shape: BatchShape, *, reference_forward: bool, checkpointing: bool) -> dict:
    """FLOPs of one forward+backward of the policy on a batch, by term (a frozen base: the backward needs
    the gradient of every activation, about one more forward, and LoRA's own weight gradients)."""
    s = shape
    fwd = forward_flops(cost, s.sequences, s.length, s.length_sq, s.scored)
    attention = 2 * cost.layers * s.sequences * s.length_sq * cost.attn_dim
    head = 2 * cost.hidden * cost.vocab * s.scored
    lora = 2 * cost.lora_params * s.sequences * s.length
    terms = {"policy forward": fwd, "policy backward": fwd + attention + head + lora}
    if checkpointing:
        terms["recomputed activations"] = fwd - head
    if s.no_grad_sequences:
        terms["KL completions (no gradients)"] = forward_flops(cost, s.no_grad_sequences, s.no_grad_length,
                                                               s.no_grad_length_sq, s.no_grad_scored)
    if reference_forward:
        terms["reference forward"] = forward_flops(cost, s.sequences, s.length, s.length_sq, s.scored, lora=False)
        if s.no_grad_sequences:
            terms["reference forward"] += forward_flops(cost, s.no_grad_sequences, s.no_grad_length,
                                                        s.no_grad_length_sq, s.no_grad_scored, lora=False)
    return terms


def model_cost(model_config, layout, lora_cfg) -> ModelCost:
    """The sizes `step_terms` needs, from the model's config and layout (no weights)."""
    from .memory import lora_parameter_count, model_shape

    shape = model_shape(model_config)
    text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    embeddings = shape["vocab"] * shape["hidden"] * (1 if getattr(text, "tie_word_embeddings", True) else 2)
    return ModelCost(layout.num_parameters - embeddings, shape["hidden"], shape["vocab"], shape["layers"],
                     shape["heads"] * shape["head_dim"],
                     lora_parameter_count(layout.linears, lora_cfg.target_modules, lora_cfg.r, lora_cfg.use_dora))


# ----------------------------------------------------------------------------- the estimate


@dataclass
class TimeEstimate:
    """Expected seconds of a run on this machine, and what they rest on."""

    step_s: float
    steps: int | None
    train_s: float | None
    extra_s: dict[str, float]  # one-time passes: precomputed reference, evaluations, validation scoring
    step_gflop: float
    rate: MachineRate
    terms_gflop: dict[str, float] = field(default_factory=dict)
    shape: BatchShape | None = None
    forwards_per_step: int = 1

    @property
    def total_s(self) -> float | None:
        return None if self.train_s is None else self.train_s + sum(self.extra_s.values())


def _seconds(flops: float, forwards: float, rate: MachineRate) -> float:
    return flops / (rate.gflops * 1e9 * STEP_EFFICIENCY) + forwards * SECONDS_PER_FORWARD


def estimate_time(config, model_config, layout, stats: dict, n_train: int, n_eval: int, total_steps: int | None,
                  device: str = "cpu", rate: MachineRate | None = None) -> TimeEstimate:
    """Expected time per optimizer step and for the run of `config` (one model's effective config).

    `stats` is `tokens.length_report` over training rows (token counts before the limits)."""
    from .methods import get_method

    t, pt = config.training, config.post_training
    method = get_method(pt.method)
    precision = "bf16" if t.bf16 else "fp16" if (t.fp16 and device != "cpu") else "fp32"
    rate = rate or machine_rate(device, precision)
    cost = model_cost(model_config, layout, config.lora)
    rows = cut_lengths(stats, (t.max_prompt_length, t.max_completion_length, t.max_seq_length))
    shape = batch_shape(rows, method, t.per_device_train_batch_size, seed=config.seed)
    reference_each_step = method.uses_reference and not pt.precompute_ref_log_probs
    terms = step_terms(cost, shape, reference_forward=reference_each_step, checkpointing=t.gradient_checkpointing)
    accumulation = t.gradient_accumulation_steps
    forwards = accumulation * (2 + bool(shape.no_grad_sequences) + reference_each_step)
    step_flops = accumulation * sum(terms.values())
    step_s = _seconds(step_flops, forwards, rate)
    extra: dict[str, float] = {}
    reference_pass = forward_flops(cost, shape.sequences, shape.length, shape.length_sq, shape.scored, lora=False)
    batches = math.ceil(n_train * method.rows_per_pair / method.sequences_per_row / t.per_device_train_batch_size)
    if method.uses_reference and pt.precompute_ref_log_probs:
        extra["reference log-probs (once)"] = _seconds(batches * reference_pass, batches, rate)
    if n_eval and total_steps:
        eval_batches = math.ceil(n_eval * method.rows_per_pair / method.sequences_per_row
                                 / t.per_device_eval_batch_size)
        per_eval = eval_batches * reference_pass * (2 if reference_each_step else 1)
        evaluations = total_steps // t.eval_steps
        if evaluations:
            extra[f"{evaluations} evaluation(s) on the validation split"] = evaluations * _seconds(
                per_eval, eval_batches * 2, rate)
        pairs_pass = math.ceil(n_eval / t.per_device_train_batch_size) * forward_flops(
            cost, 2 * t.per_device_train_batch_size, shape.length, shape.length_sq, shape.scored, lora=False)
        extra["validation pairs before/after (eval.json)"] = _seconds(2 * pairs_pass, 4 * math.ceil(n_eval / 4), rate)
    return TimeEstimate(step_s, total_steps, None if total_steps is None else total_steps * step_s, extra,
                        step_flops / 1e9, rate, {k: accumulation * v / 1e9 for k, v in terms.items()}, shape,
                        forwards)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def format_time_estimate(est: TimeEstimate) -> list[str]:
    """Lines for `--dry-run`: the step and run times, what they count, and the machine figure they rest on."""
    s, r = est.shape, est.rate
    lines = [f"time estimate: ~{est.step_s:.1f} s per optimizer step"
             + (f", ~{_duration(est.train_s)} for {est.steps} steps" if est.train_s is not None else "")
             + (f" + ~{_duration(sum(est.extra_s.values()))} once ({', '.join(est.extra_s)})" if est.extra_s else "")]
    if s is not None:
        kl = (f", + {s.no_grad_sequences} KL sequences x ~{s.no_grad_length:.0f} without gradients"
              if s.no_grad_sequences else "")
        lines.append(f"     per forward: {s.sequences} sequences x ~{s.length:.0f} tokens (padded){kl}; "
                     f"{est.step_gflop:,.0f} GFLOP per optimizer step: "
                     + ", ".join(f"{k} {v:,.0f}" for k, v in est.terms_gflop.items()))
    load = f", load average {r.load_average} then" if r.load_average is not None else ""
    now = _load_average()
    lines.append(f"     this machine: {r.gflops:.0f} GFLOP/s best {r.dtype} matmul on {r.threads or 'the GPU'}"
                 f"{' thread(s)' if r.threads else ''} (measured {r.measured}{load}; cached in {r.path}); a step "
                 f"reaches ~{STEP_EFFICIENCY:.0%} of it. Other work on the machine slows the run"
                 + (f" (load average now {now})" if now is not None else "") + "; generation for evaluation "
                 "is not included")
    return lines
