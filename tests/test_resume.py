"""Kill and resume: a run killed with SIGKILL and resumed ends like an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def final_loss(run: Path) -> tuple[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "loss" in r and "train_runtime" not in r][-1]
    return last["step"], last["loss"]


def test_sigkill_then_resume_matches_uninterrupted_run(tiny_llama_dir, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Add {a} and {b}.", "chosen": str(a + b),
                                        "rejected": f"Adding gives {a * b + 1}."}) + "\n"
                            for a in range(8) for b in range(4)))
    config = {
        "models": [{"name": "tiny", "huggingface_id": str(tiny_llama_dir)}],
        "dataset": {"name": str(data), "validation_split": 0.0, "max_samples": None},
        "post_training": {"use_ref_model": False},
        "lora": {"r": 4, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        "training": {"max_steps": 10, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1,
                     "learning_rate": 5e-3, "warmup_steps": 0, "logging_steps": 1, "save_steps": 3,
                     "save_total_limit": None, "gradient_checkpointing": False},
        "logging": {"report_to": ["none"]},
        "evaluation": {"enabled": False},
        "seed": 0,
    }
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    paths = {}
    for name in ("straight", "killed"):
        c = json.loads(json.dumps(config))
        c["training"]["output_dir"] = str(tmp_path / name)
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(c))

    cmd = [sys.executable, "-m", "dpokit", "train", "--config"]
    subprocess.run(cmd + [str(paths["straight"])], env=env, check=True, capture_output=True, timeout=600)

    proc = subprocess.Popen(cmd + [str(paths["killed"])], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list((tmp_path / "killed").glob("*/checkpoint-6/trainer_state.json")):
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    [run] = list((tmp_path / "killed").iterdir())
    assert not (run / "adapter").exists(), "the run finished before it could be killed"

    resumed = subprocess.run([sys.executable, "-m", "dpokit", "train", "--resume", str(run)], env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_from"].endswith("checkpoint-6")
    [straight] = list((tmp_path / "straight").iterdir())
    step_a, loss_a = final_loss(straight)
    step_b, loss_b = final_loss(run)
    assert step_a == step_b == 10
    print(f"final loss at step 10: uninterrupted {loss_a:.6f}, killed+resumed {loss_b:.6f}")
    assert abs(loss_a - loss_b) < 1e-4, (loss_a, loss_b)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line) and "train_runtime" not in json.loads(line)]
    assert steps == sorted(set(steps)), "metrics.jsonl has repeated steps after the resume"
