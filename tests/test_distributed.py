"""gpu.use_ddp: a real 2-process run (torchrun, gloo on CPU) matches a 1-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dpokit.testing import small_run_config, write_arithmetic_pairs

ROOT = Path(__file__).resolve().parents[1]


def run_cli(config, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(config.to_yaml())
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "dpokit", "train", "--config", str(path)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    [run] = [p for p in Path(config.training.output_dir).iterdir() if p.is_dir()]
    return run


def losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r and "train_runtime" not in r]


def test_two_process_ddp_run_matches_one_process_with_same_effective_batch(tiny_llama_dir, tmp_path):
    data = write_arithmetic_pairs(tmp_path / "pairs.jsonl", n_a=8, n_b=4)
    common = dict(lora={"lora_dropout": 0.0}, training={"max_steps": 4, "learning_rate": 5e-3, "save_steps": 100})
    single = small_run_config(tiny_llama_dir, data, tmp_path / "single", **common)
    single.training.per_device_train_batch_size = 4
    ddp = small_run_config(tiny_llama_dir, data, tmp_path / "ddp", **common,
                           gpu={"device_ids": [0, 1], "use_ddp": True, "on_missing": "cpu"})

    one, two = run_cli(single, tmp_path, "single"), run_cli(ddp, tmp_path, "ddp")
    assert json.loads((two / "summary.json").read_text())["status"] == "completed"
    a, b = losses(one), losses(two)
    assert len(a) == len(b) == 4
    # Same data, same global batch of 4 per step: the DDP run averages two per-process means of 2 pairs.
    print(f"losses 1 process {a}\nlosses 2 processes {b}")
    for x, y in zip(a, b):
        assert abs(x - y) < 1e-4, (a, b)
