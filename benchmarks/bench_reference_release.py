"""Peak memory of a run with a separate reference model whose log-probs are precomputed.

Three runs of the embedded SmolLM2-135M (DPO, LoRA r=16 on q,k,v,o, 3 steps, batch 2), each in a
fresh process (`dpokit.measure.measure_run`, peak RSS = VmHWM):

    separate-precomputed   use_ref_model: true + precompute_ref_log_probs: the reference is freed
                           once its log-probs are cached (dpokit/trl_hooks.py:release_reference)
    separate-every-step    use_ref_model: true: the reference must stay, it scores every batch
    adapter-off            use_ref_model: false: no second copy (the base under the disabled adapter)

If the release works, the first peaks near the third, and the resident memory the run reports
dropping at the release is about the reference's weights (~513 MB in fp32).

    python benchmarks/bench_reference_release.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import bench_threads, child_env, preference_rows, say, write_rows  # noqa: E402

RUNS = {
    "separate-precomputed": {"use_ref_model": True, "precompute_ref_log_probs": True},
    "separate-every-step": {"use_ref_model": True, "precompute_ref_log_probs": False},
    "adapter-off": {"use_ref_model": False, "precompute_ref_log_probs": False},
}


def config_data(data: Path, work: Path) -> dict:
    return {
        "models": [{"name": "smollm2-135m", "huggingface_id": "embedded:smollm2-135m-instruct"}],
        "dataset": {"name": str(data), "validation_split": 0.0, "max_samples": None},
        "post_training": {"method": "dpo"},
        "lora": {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        "training": {"output_dir": str(work / "runs"), "max_steps": 3, "per_device_train_batch_size": 2,
                     "gradient_accumulation_steps": 1, "learning_rate": 5e-5, "warmup_steps": 0,
                     "max_seq_length": 128, "max_prompt_length": 96, "max_completion_length": 32,
                     "logging_steps": 1, "save_steps": 100, "gradient_checkpointing": False},
        "logging": {"report_to": ["none"], "logging_dir": str(work / "logs")},
        "evaluation": {"enabled": False},
        "seed": 0,
    }


def run() -> dict:
    import os

    from dpokit.config import load_config
    from dpokit.measure import measure_run

    os.environ.update({k: v for k, v in child_env().items() if k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")})
    work = Path(tempfile.mkdtemp(prefix="dpokit-bench-reference-"))
    data = write_rows(work / "pairs.jsonl", preference_rows(16))
    base = load_config(data=config_data(data, work))
    rows = {}
    for name, post_training in RUNS.items():
        result = measure_run(base, {f"post_training.{k}": v for k, v in post_training.items()},
                             output_dir=work / name, timeout=1800)
        if result["status"] != "completed":
            raise RuntimeError(f"{name}: {result.get('error')}")
        summary = json.loads((Path(result["run_dir"]) / "summary.json").read_text())
        rows[name] = {"peak_rss_mb": result["peak_rss_mb"], "rss_after_imports_mb": result["rss_after_imports_mb"],
                      "reference_released": summary.get("reference_released"),
                      "release_rss_change_mb": summary.get("reference_release_rss_change_mb"),
                      "step_s": result.get("step_s")}
        say(f"   {name:<22} peak RSS {result['peak_rss_mb']:>7.0f} MB   released: "
            f"{summary.get('reference_released')}   RSS change at release: "
            f"{summary.get('reference_release_rss_change_mb')} MB")
    saved = rows["separate-every-step"]["peak_rss_mb"] - rows["separate-precomputed"]["peak_rss_mb"]
    return {"reference_release": {"threads": bench_threads(), "runs": rows,
                                  "peak_saved_mb": round(saved, 1)}}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
