"""Stops that must not lose work: Ctrl-C saves a checkpoint first; a NaN loss keeps the last good one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dpokit.rundir import RunDir, checkpoint_is_complete
from dpokit.testing import small_run_config, write_arithmetic_pairs

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))


def logged_steps(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("signum, exit_code, name", [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")],
                         ids=["ctrl-c", "sigterm"])
def test_a_stop_signal_saves_a_checkpoint_then_stops(tiny_llama_dir, tmp_path, signum, exit_code, name):
    """Ctrl-C in a terminal, and SIGTERM (what `timeout`, Docker, Slurm and Kubernetes send)."""
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
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=300)
    [run] = list(runs.iterdir())

    assert proc.returncode == exit_code, out[-2000:] + err[-2000:]
    assert f"{name}: saving a checkpoint and stopping after this step" in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    ckpt = RunDir(run).latest_checkpoint()
    assert ckpt is not None and checkpoint_is_complete(ckpt), sorted(p.name for p in run.iterdir())
    step = int(ckpt.name.split("-")[1])
    assert 3 <= step < 5000 and step == summary["steps"]  # saved at the step it stopped on, long before the end
    assert (ckpt / "adapter_model.safetensors").exists() and (ckpt / "optimizer.pt").exists()


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_llama_dir, tmp_path, monkeypatch, capsys):
    """A numeric blow-up mid-run (simulated: a LoRA weight becomes NaN after step 3, as after an fp16
    overflow) must stop the real run at the next logged loss, save nothing from that step on, and
    keep checkpoints 1-3."""
    import torch
    from transformers import TrainerCallback

    import dpokit.trainers
    from dpokit.run import train

    class BlowUpAfterStep3(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == 3:
                with torch.no_grad():
                    next(p for n, p in model.named_parameters() if "lora_A" in n).fill_(float("nan"))

    real_build = dpokit.trainers.build_trainer

    def build_with_blow_up(*args, **kwargs):
        trainer = real_build(*args, **kwargs)
        trainer.add_callback(BlowUpAfterStep3())
        return trainer

    monkeypatch.setattr(dpokit.trainers, "build_trainer", build_with_blow_up)
    data = write_arithmetic_pairs(tmp_path / "pairs.jsonl", n_a=8, n_b=4)
    config = small_run_config(tiny_llama_dir, data, tmp_path, training={
        "max_steps": 10, "save_steps": 1, "save_total_limit": None, "logging_steps": 1})
    [result] = train(config)
    out = capsys.readouterr().out
    run = Path(result.run_dir)
    summary = json.loads((run / "summary.json").read_text())

    assert result.status == "stopped" and summary["status"] == "stopped"
    assert summary["stopped_reason"] == "non-finite loss (nan) at step 4"
    assert any("NaN/inf" in alarm for alarm in summary["health"])
    assert f"last good checkpoint: {run / 'checkpoint-3'}" in out
    assert not (run / "adapter").exists(), "weights that produced a NaN loss must not be saved as the result"
    assert [p.name for p in sorted(run.glob("checkpoint-*"))] == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    assert RunDir(run).latest_checkpoint() == run / "checkpoint-3"
