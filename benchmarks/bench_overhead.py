"""Step time of `dpokit train` against the plain TRL script doing the same work, and throughput.

Three training processes take turns one optimizer step at a time (common.Turnstile), so each
step of each sees the same machine load: `dpokit train` as shipped, `dpokit train` with TRL's
default LM head (scores every position), and benchmarks/plain_trl.py. Same model (the embedded
SmolLM2-135M), data, batch, LoRA, precision, steps, logging and checkpoints. The first WARMUP
steps of each are left out.

    overhead_ratio            median step of dpokit / median step of plain TRL
    overhead_ratio_same_head  the same with dpokit's LM-head change undone: dpokit's own cost
    tokens_per_s             tokens dpokit's model reads per second of a step (wall time)
    achieved_gflops          matmul FLOPs of dpokit's steps per second of their CPU time (comparable with
                             matmul_peak_gflops, measured the same way; `_wall` is per second of wall time)
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Turnstile, median, merge_results, preference_rows, say, write_rows  # noqa: E402

WARMUP, STEPS, BATCH = 2, 8, 2


def conversational(rows: list[dict]) -> list[dict]:
    """The rows as chat messages (what dpokit feeds TRL for a model with a chat template)."""
    return [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows]


def dpokit_config(model_dir: str, data: Path, work: Path, steps: int) -> dict:
    """The quickstart's settings (LoRA r=16 on q,k,v,o, sigmoid+sft, fp32) on the benchmark data."""
    return {
        "models": [{"name": "smollm2-135m", "huggingface_id": model_dir}],
        "dataset": {"name": str(data), "validation_split": 0.0, "max_samples": None},
        "post_training": {"method": "dpo", "beta": 0.1, "loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 1.0],
                          "use_ref_model": False},
        "lora": {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0,
                 "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        "training": {"output_dir": str(work / "runs"), "max_steps": steps, "per_device_train_batch_size": BATCH,
                     "gradient_accumulation_steps": 1, "learning_rate": 5e-5, "warmup_steps": 2,
                     "max_seq_length": 192, "max_prompt_length": 128, "max_completion_length": 64,
                     "logging_steps": 5, "save_steps": steps, "gradient_checkpointing": False, "bf16": False},
        "logging": {"report_to": ["tensorboard"], "logging_dir": str(work / "logs")},
        "evaluation": {"enabled": False},
        "seed": 0,
    }


def run(steps: int = STEPS, warmup: int = WARMUP) -> dict:
    import yaml

    from dpokit.embedded import ensure_embedded_model
    from flops import model_sizes, step_flops

    model_dir = str(ensure_embedded_model(progress=False))
    work = Path(tempfile.mkdtemp(prefix="dpokit-bench-overhead-"))
    data = write_rows(work / "pairs.jsonl", conversational(preference_rows(64)))
    total = warmup + steps
    (work / "config.yaml").write_text(yaml.safe_dump(dpokit_config(model_dir, data, work, total)))
    dpokit = ["benchmarks/dpokit_timed.py", "train", "--config", str(work / "config.yaml")]
    plain = ["benchmarks/plain_trl.py", "--model", model_dir, "--data", str(data), "--out", str(work / "plain"),
             "--steps", str(total), "--batch", str(BATCH), "--max-length", "192",
             "--logging-dir", str(work / "logs" / "plain")]
    say(f"overhead: {total} steps x 3 processes taking turns (dpokit, dpokit with TRL's LM head, plain TRL)")
    steps_by = Turnstile({"dpokit": dpokit, "dpokit_full_head": dpokit, "trl": plain},
                         env={"dpokit_full_head": {"BENCH_FULL_LM_HEAD": "1"}}).run()
    kept = {name: s[warmup:] for name, s in steps_by.items()}
    wall = {name: median([x["wall_s"] for x in s]) for name, s in kept.items()}
    cpu = {name: median([x["cpu_s"] for x in s]) for name, s in kept.items()}
    paired = median([a["wall_s"] / b["wall_s"] for a, b in zip(kept["dpokit"], kept["trl"])])

    sizes = model_sizes(model_dir)
    lora = sum(16 * (i + o) for i, o in _lora_linears(model_dir))
    ours = [x for x in kept["dpokit"] if "tokens" in x]
    seconds, cpu_seconds = sum(x["wall_s"] for x in ours), sum(x["cpu_s"] for x in ours)
    flops = sum(step_flops(sizes, x["rows"], x["seq_len"], x["scored"], lora) for x in ours)
    padded = sum(x["rows"] * x["seq_len"] for x in ours)
    figures = {
        "overhead_ratio": round(wall["dpokit"] / wall["trl"], 3),
        "overhead_ratio_paired": round(paired, 3),
        "overhead_ratio_cpu": round(cpu["dpokit"] / cpu["trl"], 3),
        "overhead_ratio_same_head": round(wall["dpokit_full_head"] / wall["trl"], 3),
        "overhead_ratio_same_head_cpu": round(cpu["dpokit_full_head"] / cpu["trl"], 3),
        "step_s": {name: round(v, 3) for name, v in wall.items()},
        "step_cpu_s": {name: round(v, 3) for name, v in cpu.items()},
        "tokens_per_s": round(sum(x["tokens"] for x in ours) / seconds, 1),
        "achieved_gflops": round(flops / cpu_seconds / 1e9, 2),
        "achieved_gflops_wall": round(flops / seconds / 1e9, 2),
        "padding_share": round(1 - sum(x["tokens"] for x in ours) / padded, 3),
        "overhead_setup": {"model": "SmolLM2-135M-Instruct (embedded)", "batch": BATCH, "warmup_steps": warmup,
                           "measured_steps": steps, "lora": "r=16 q,k,v,o", "precision": "fp32",
                           "loss": "sigmoid+sft"},
    }
    say(f"   median step: dpokit {wall['dpokit']:.2f} s, dpokit with TRL's LM head {wall['dpokit_full_head']:.2f} s, "
        f"plain TRL {wall['trl']:.2f} s -> overhead_ratio {figures['overhead_ratio']} "
        f"(same head {figures['overhead_ratio_same_head']}, CPU time {figures['overhead_ratio_cpu']})")
    shutil.rmtree(work, ignore_errors=True)
    say(f"   dpokit: {figures['tokens_per_s']} tokens/s, {figures['achieved_gflops']} GFLOP/s per CPU second, "
        f"{100 * figures['padding_share']:.0f}% of the batch is padding")
    return figures


def _lora_linears(model_dir: str) -> list[tuple[int, int]]:
    from transformers import AutoConfig

    from dpokit.memory import linear_shapes, lora_targets
    from dpokit.models import meta_model

    linears = linear_shapes(meta_model(AutoConfig.from_pretrained(model_dir)))
    return [(i, o) for _, i, o in lora_targets(linears, ["q_proj", "k_proj", "v_proj", "o_proj"])]


if __name__ == "__main__":
    import json

    print(json.dumps(merge_results(run()), indent=2))
