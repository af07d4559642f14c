"""Stops that must not lose work: Ctrl-C saves a checkpoint first; a NaN loss keeps the last good one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from dpokit.run import checkpoint_is_complete, latest_checkpoint
from dpokit.testing import small_run_config, write_arithmetic_pairs

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))


def logged_steps(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


def test_ctrl_c_saves_a_checkpoint_then_stops(tiny_llama_dir, tmp_path):
    data = write_arithmetic_pairs(tmp_path / "pairs.jsonl", n_a=8, n_b=4)
    config = small_run_config(tiny_llama_dir, data, tmp_path, training={"max_steps": 5000, "save_steps": 100000})
    path = tmp_path / "config.yaml"
    path.write_text(config.to_yaml())
    proc = subprocess.Popen([sys.executable, "-m", "dpokit", "train", "--config", str(path)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs = tmp_path / "runs"
    deadline = time.time() + 300
    while time.time() < deadline and not any(len(logged_steps(r)) >= 3 for r in runs.glob("*")):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C in a terminal sends
    out, err = proc.communicate(timeout=300)
    [run] = list(runs.iterdir())

    assert proc.returncode == 130, out[-2000:] + err[-2000:]
    assert "Ctrl-C: saving a checkpoint and stopping after this step" in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    ckpt = latest_checkpoint(run)
    assert ckpt is not None and checkpoint_is_complete(ckpt), sorted(p.name for p in run.iterdir())
    step = int(ckpt.name.split("-")[1])
    assert 3 <= step < 5000 and step == summary["steps"]  # saved at the step it stopped on, long before the end
    assert (ckpt / "adapter_model.safetensors").exists() and (ckpt / "optimizer.pt").exists()


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_llama_dir, tmp_path):
    data = write_arithmetic_pairs(tmp_path / "pairs.jsonl", n_a=8, n_b=4)
    # A learning rate this large drives the tiny model's weights to inf within a few steps.
    config = small_run_config(tiny_llama_dir, data, tmp_path, training={
        "max_steps": 40, "learning_rate": 1e8, "save_steps": 1, "save_total_limit": None, "max_grad_norm": 1e9})
    path = tmp_path / "config.yaml"
    path.write_text(config.to_yaml())
    proc = subprocess.run([sys.executable, "-m", "dpokit", "train", "--config", str(path)], env=ENV,
                          capture_output=True, text=True, timeout=600)
    [run] = list((tmp_path / "runs").iterdir())
    summary = json.loads((run / "summary.json").read_text())

    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert summary["status"] == "stopped" and "non-finite loss" in summary["stopped_reason"]
    assert any("NaN/inf" in alarm for alarm in summary["health"])
    assert "last good checkpoint:" in proc.stdout
    assert not (run / "adapter").exists(), "weights that produced a NaN loss must not be saved as the result"
    bad_step = int(summary["stopped_reason"].rsplit(" ", 1)[-1])
    last = latest_checkpoint(run)
    assert last is not None and int(last.name.split("-")[1]) < bad_step
