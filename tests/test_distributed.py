"""gpu.use_ddp: a real 2-process run (torchrun, gloo on CPU) matches a 1-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def run_cli(config: dict, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "dpokit", "train", "--config", str(path)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    [run] = [p for p in (tmp_path / name).iterdir() if p.is_dir()]
    return run


def losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r and "train_runtime" not in r]


def test_two_process_ddp_run_matches_one_process_with_same_effective_batch(tiny_llama_dir, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is {a} + {b}?", "chosen": str(a + b),
                                        "rejected": f"I think it is {a + b + 2}."}) + "\n"
                            for a in range(8) for b in range(4)))
    base = {
        "models": [{"name": "tiny", "huggingface_id": str(tiny_llama_dir)}],
        "dataset": {"name": str(data), "validation_split": 0.0, "max_samples": None},
        "post_training": {"use_ref_model": False},
        "lora": {"r": 4, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        "training": {"max_steps": 4, "gradient_accumulation_steps": 1, "learning_rate": 5e-3, "warmup_steps": 0,
                     "logging_steps": 1, "save_steps": 100, "gradient_checkpointing": False},
        "logging": {"report_to": ["none"]},
        "evaluation": {"enabled": False},
        "seed": 0,
    }
    single = json.loads(json.dumps(base))
    single["training"].update(output_dir=str(tmp_path / "single"), per_device_train_batch_size=4)
    ddp = json.loads(json.dumps(base))
    ddp["training"].update(output_dir=str(tmp_path / "ddp"), per_device_train_batch_size=2)
    ddp["gpu"] = {"device_ids": [0, 1], "use_ddp": True, "on_missing": "cpu"}

    one, two = run_cli(single, tmp_path, "single"), run_cli(ddp, tmp_path, "ddp")
    assert len([p for p in (tmp_path / "ddp").iterdir() if p.is_dir()]) == 1  # one run dir for both processes
    assert json.loads((two / "summary.json").read_text())["status"] == "completed"
    a, b = losses(one), losses(two)
    assert len(a) == len(b) == 4
    # Same data, same global batch of 4 per step: the DDP run averages two per-process means of 2 pairs.
    print(f"losses 1 process {a}\nlosses 2 processes {b}")
    for x, y in zip(a, b):
        assert abs(x - y) < 1e-4, (a, b)
