"""Kill and resume: a run killed with SIGKILL and resumed ends like an uninterrupted run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from dpokit.rundir import RunDir, checkpoint_is_complete
from dpokit.testing import small_run_config, write_arithmetic_pairs

ROOT = Path(__file__).resolve().parents[1]


def final_loss(run: Path) -> tuple[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "loss" in r and "train_runtime" not in r][-1]
    return last["step"], last["loss"]


def test_sigkill_then_resume_matches_uninterrupted_run(tiny_llama_dir, tmp_path):
    data = write_arithmetic_pairs(tmp_path / "pairs.jsonl", n_a=8, n_b=4)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    paths = {}
    for name in ("straight", "killed"):
        config = small_run_config(tiny_llama_dir, data, tmp_path / name, lora={"lora_dropout": 0.0},
                                  training={"max_steps": 10, "learning_rate": 5e-3, "save_steps": 3,
                                            "save_total_limit": None})
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(config.to_yaml())

    cmd = [sys.executable, "-m", "dpokit", "train", "--config"]
    subprocess.run(cmd + [str(paths["straight"])], env=env, check=True, capture_output=True, timeout=600)

    proc = subprocess.Popen(cmd + [str(paths["killed"])], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list((tmp_path / "killed" / "runs").glob("*/checkpoint-6/trainer_state.json")):
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    [run] = list((tmp_path / "killed" / "runs").iterdir())
    assert not (run / "adapter").exists(), "the run finished before it could be killed"
    # killed outright, the summary still says running: every command must see it is not
    assert json.loads((run / "summary.json").read_text())["status"] == "running"
    assert RunDir(run).effective_status() == "stale" and "is gone" in RunDir(run).stale_reason()
    report = subprocess.run([sys.executable, "-m", "dpokit", "report", str(run)], env=env, capture_output=True,
                            text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    assert "| tiny | stale" in (run / "report.md").read_text(), (run / "report.md").read_text()[:2000]
    evaluated = subprocess.run([sys.executable, "-m", "dpokit", "eval", "--run", str(run)], env=env,
                               capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 2 and "was not finished" in evaluated.stderr and "Traceback" not in evaluated.stderr
    last_good = RunDir(run).latest_checkpoint()
    # A kill can land while the Trainer is writing the next checkpoint: leave such a half-written
    # folder (weights, no trainer_state.json) so the resume has to skip it.
    partial = run / f"checkpoint-{int(last_good.name.split('-')[1]) + 3}"
    if not partial.exists():
        shutil.copytree(last_good, partial)
        (partial / "trainer_state.json").unlink()

    resumed = subprocess.run([sys.executable, "-m", "dpokit", "train", "--resume", str(run)], env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "was not finished" in resumed.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_from"] == str(last_good)
    assert (run / f"incomplete-{partial.name}").is_dir()
    assert f"did not finish writing: incomplete-{partial.name}" in resumed.stdout
    [straight] = list((tmp_path / "straight" / "runs").iterdir())
    step_a, loss_a = final_loss(straight)
    step_b, loss_b = final_loss(run)
    assert step_a == step_b == 10
    print(f"final loss at step 10: uninterrupted {loss_a:.6f}, killed+resumed {loss_b:.6f}")
    assert abs(loss_a - loss_b) < 1e-4, (loss_a, loss_b)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line) and "train_runtime" not in json.loads(line)]
    assert steps == sorted(set(steps)), "metrics.jsonl has repeated steps after the resume"


def test_latest_checkpoint_skips_half_written_ones(tmp_path):
    run = tmp_path / "run"
    for step, state in ((3, '{"global_step": 3}'), (6, '{"global_step": 6}'), (9, None), (12, '{"global_')):
        ckpt = run / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        (ckpt / "adapter_model.safetensors").write_bytes(b"weights")
        if state is not None:
            (ckpt / "trainer_state.json").write_text(state)
    assert [checkpoint_is_complete(run / f"checkpoint-{s}") for s in (3, 6, 9, 12)] == [True, True, False, False]
    assert RunDir(run).latest_checkpoint() == run / "checkpoint-6"

    moved = RunDir(run).set_aside_incomplete_checkpoints()
    assert sorted(p.name for p in moved) == ["incomplete-checkpoint-12", "incomplete-checkpoint-9"]
    assert (run / "incomplete-checkpoint-9" / "adapter_model.safetensors").read_bytes() == b"weights"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-3", "checkpoint-6", "incomplete-checkpoint-12",
                                                    "incomplete-checkpoint-9"]
