"""dpokit's memory estimate against the measured peak memory of real training runs on CPU.

Each configuration trains two steps (the second holds the AdamW state) of the embedded
SmolLM2-135M through `dpokit.train` in a fresh process and reads its peak RSS (VmHWM) minus
the RSS after importing the libraries.
Every sequence is exactly max_prompt_length + max_completion_length tokens, the worst case the
estimate describes. glibc's default allocator makes the peak of identical runs differ by up to
~0.7 GB (its mmap threshold moves at run time and freed activations stay in the heap), so the
children fix it (MALLOC_MMAP_THRESHOLD_=131072): the peak is then what the process really holds.

    memory_estimate_error  max over configurations of |estimate - measured| / measured
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import merge_results, run_python, say, write_rows  # noqa: E402

# name: (pairs per batch, max_prompt_length, max_completion_length, LoRA rank, checkpointing, separate reference,
#        method)
CONFIGS = {
    "b1-s128": (1, 96, 32, 16, False, False, "dpo"),
    "b4-s128": (4, 96, 32, 16, False, False, "dpo"),
    "b2-s256-r64": (2, 192, 64, 64, False, False, "dpo"),
    "b2-s256-checkpointing": (2, 192, 64, 16, True, False, "dpo"),
    "b2-s128-reference-model": (2, 96, 32, 16, False, True, "dpo"),
    "b4-s128-ipo": (4, 96, 32, 16, False, False, "ipo"),
    "b4-s128-kto": (4, 96, 32, 16, False, False, "kto"),
    "b4-s256-kto-reference-model": (4, 192, 64, 16, False, True, "kto"),
    "b2-s128-orpo": (2, 96, 32, 16, False, False, "orpo"),
    "b2-s256-orpo": (2, 192, 64, 16, False, False, "orpo"),
    "b3-s192-orpo": (3, 144, 48, 16, False, False, "orpo"),
}
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def fixed_length_rows(tokenizer, n: int, prompt_tokens: int) -> list[dict]:
    """Chat rows whose prompt is as close to `prompt_tokens` as possible (never over) and whose
    completions are far longer than any limit, so truncation makes every sequence full length."""
    from dpokit.tokens import tokenize_pair

    words = "the quick brown fox jumps over a lazy dog while seven wizards hex every jolly zebra".split()

    def text(k: int, shift: int) -> str:
        return " ".join(words[(i * 7 + shift) % len(words)] for i in range(k))

    def row(k: int, i: int) -> dict:
        return {"prompt": [{"role": "user", "content": text(k, i)}],
                "chosen": [{"role": "assistant", "content": text(300, i + 1)}],
                "rejected": [{"role": "assistant", "content": text(300, i + 2)}]}

    rows, k = [], 1
    for i in range(n):
        while len(tokenize_pair(tokenizer, row(k + 1, i))["prompt_ids"]) <= prompt_tokens:
            k += 1
        while k > 1 and len(tokenize_pair(tokenizer, row(k, i))["prompt_ids"]) > prompt_tokens:
            k -= 1
        rows.append(row(k, i))
    return rows


def config_for(name: str, model_dir: str, data: Path, work: Path) -> dict:
    batch, prompt, completion, rank, checkpointing, reference, method = CONFIGS[name]
    return {
        "models": [{"name": "smollm2-135m", "huggingface_id": model_dir}],
        "dataset": {"name": str(data), "validation_split": 0.0, "max_samples": None},
        "post_training": {"method": method, "beta": 0.1, "use_ref_model": reference},
        "lora": {"r": rank, "lora_alpha": 2 * rank, "lora_dropout": 0.0,
                 "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        "training": {"output_dir": str(work / "runs"), "max_steps": 2, "per_device_train_batch_size": batch,
                     "gradient_accumulation_steps": 1, "learning_rate": 5e-5, "warmup_steps": 0,
                     "max_seq_length": prompt + completion, "max_prompt_length": prompt,
                     "max_completion_length": completion, "logging_steps": 1, "save_steps": 1,
                     "gradient_checkpointing": checkpointing, "bf16": False},
        "logging": {"report_to": ["none"], "logging_dir": str(work / "logs")},
        "evaluation": {"enabled": False},
        "seed": 0,
    }


def run(parallel: int = 2) -> dict:
    import yaml
    from transformers import AutoTokenizer

    from dpokit.config import load_config
    from dpokit.embedded import ensure_embedded_model
    from dpokit.memory import estimate_memory

    model_dir = str(ensure_embedded_model(progress=False))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    work = Path(tempfile.mkdtemp(prefix="dpokit-bench-memory-"))
    jobs = {}
    for name, (batch, prompt, *_rest) in CONFIGS.items():
        data = work / f"rows-{prompt}.jsonl"
        if not data.exists():
            write_rows(data, fixed_length_rows(tokenizer, 8, prompt))
        config = config_for(name, model_dir, data, work / name)
        path = work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        jobs[name] = path

    def measure(name: str) -> dict:
        out = work / f"{name}.json"
        run_python(["benchmarks/bench_memory.py", "--child", str(jobs[name]), str(out)], env=MALLOC_ENV)
        return json.loads(out.read_text())

    say(f"memory: {len(jobs)} configurations, two training steps each in a fresh process ({parallel} at a time)")
    with ThreadPoolExecutor(parallel) as pool:
        measured = dict(zip(jobs, pool.map(measure, jobs)))
    rows, worst = [], 0.0
    for name, m in measured.items():
        est = estimate_memory(load_config(jobs[name]), device="cpu")
        error = abs(est.total - m["measured_bytes"]) / m["measured_bytes"]
        worst = max(worst, error)
        rows.append({"config": name, "estimate_mb": round(est.total / 2**20),
                     "measured_mb": round(m["measured_bytes"] / 2**20),
                     "error": round(error, 3), "terms_mb": {k: round(v / 2**20) for k, v in est.terms.items()},
                     "baseline_mb": round(m["baseline_bytes"] / 2**20), "step_shape": m.get("shape")})
        say(f"   {name:<26} estimate {rows[-1]['estimate_mb']:>5} MB, measured {rows[-1]['measured_mb']:>5} MB "
            f"({100 * error:.1f}%)")
    shutil.rmtree(work, ignore_errors=True)
    return {"memory_estimate_error": round(worst, 3), "memory_configs": rows,
            "memory_setup": {"model": "SmolLM2-135M-Instruct (embedded)", "steps": 2, "allocator": MALLOC_ENV,
                             "measured": "peak RSS (VmHWM) minus RSS after imports"}}


def child(config_path: str, out_path: str) -> None:
    """Train and write {baseline_bytes, peak_bytes, measured_bytes, shape of the longest batch}."""
    import resource

    import psutil
    import torch  # noqa: F401  (the libraries count as baseline, not as training memory)
    import transformers  # noqa: F401
    import trl  # noqa: F401

    import dpokit.trainers as trainers
    from dpokit.config import load_config
    from dpokit.run import train

    baseline = psutil.Process().memory_info().rss
    shape = {}
    build = trainers.build_trainer

    def build_recorded(*args, **kwargs):
        trainer = build(*args, **kwargs)
        step = trainer.training_step

        def training_step(model, inputs, *a, **k):
            if "input_ids" in inputs:  # DPO, KTO
                rows, seq_len = (int(n) for n in inputs["input_ids"].shape)
            else:  # ORPO: chosen and rejected, padded to one length when concatenated
                sides = [inputs[f"{side}_input_ids"].shape for side in ("chosen", "rejected")]
                rows, seq_len = sum(int(n) for n, _ in sides), max(int(w) for _, w in sides)
            if seq_len >= shape.get("seq_len", 0):
                shape.update(rows=rows, seq_len=seq_len)
            return step(model, inputs, *a, **k)

        trainer.training_step = training_step
        return trainer

    trainers.build_trainer = build_recorded
    [result] = train(load_config(config_path))
    if result.status != "completed":
        raise SystemExit(f"training failed: {result.error}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    Path(out_path).write_text(json.dumps({"baseline_bytes": baseline, "peak_bytes": peak,
                                          "measured_bytes": peak - baseline, "shape": shape}))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
    else:
        print(json.dumps(merge_results(run()), indent=2))
