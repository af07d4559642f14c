"""benchmarks/gpu_smoke.py: refuses politely without CUDA; what it would run is valid and estimated."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_smoke.py"


@pytest.fixture(scope="module")
def smoke():
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("gpu_smoke", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_cuda_it_refuses_politely_with_status_2():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "this machine has none" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_strategies_needing_more_gpus_than_there_are_are_skipped(smoke):
    run, skipped = smoke.plan_runs(list(smoke.STRATEGIES), gpus=1)
    assert run == ["single", "qlora", "zero3-offload"] and "ddp" in skipped and "fsdp-qlora" in skipped
    assert smoke.plan_runs(list(smoke.STRATEGIES), gpus=8) == (list(smoke.STRATEGIES), [])


def test_every_strategy_is_a_valid_config_with_an_estimate(smoke, tiny_llama_dir, tmp_path):
    from dpokit.config import load_config
    from dpokit.plan_inputs import bundled_model_config
    from dpokit.scaling_rules import scaling_problems

    estimates = {}
    for name in smoke.STRATEGIES:
        config = load_config(data=smoke.smoke_config(str(tiny_llama_dir), tmp_path / "rows.jsonl", tmp_path, steps=3,
                                                     bf16=True, name=name, gpus=2))
        found = scaling_problems(config.distributed, config.quantization, config.model_loading,
                                 use_ddp=config.gpu.use_ddp, fp16=False, bf16=True)
        assert found == [], (name, found)
        estimates[name] = smoke.estimate(config.model_dump(mode="json"), 2, bundled_model_config("qwen2.5-0.5b"))
    assert estimates["qlora"] < estimates["single"]  # 4-bit linear weights
    assert estimates["zero3"] < estimates["ddp"]  # sharded weights
    assert estimates["zero3-offload"] < estimates["zero3"]


@pytest.mark.parametrize("name, launcher, processes, distributed_type", [
    ("single", "python", 1, None), ("qlora", "python", 1, None), ("ddp", "accelerate", 2, "MULTI_GPU"),
    ("fsdp", "accelerate", 2, "FSDP"), ("fsdp-qlora", "accelerate", 2, "FSDP"),
    ("zero2", "accelerate", 2, "DEEPSPEED"), ("zero3", "accelerate", 2, "DEEPSPEED"),
])
def test_each_strategy_is_started_as_dpokit_would_start_its_config(smoke, tiny_llama_dir, tmp_path, name, launcher,
                                                                   processes, distributed_type):
    """The smoke script runs its worker under the launch plan `dpokit train` makes for the same config."""
    import yaml

    config_path = tmp_path / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(smoke.smoke_config(str(tiny_llama_dir), tmp_path / "rows.jsonl", tmp_path,
                                                              steps=3, bf16=True, name=name, gpus=2)))
    plan, out = smoke.launch_plan(config_path, name, 2, tmp_path)
    assert (plan.launcher, plan.processes_per_machine) == (launcher, processes)
    assert plan.command[-4:] == ("--worker", str(config_path), name, str(out))
    assert str(Path(smoke.__file__).resolve()) in plan.command
    assert plan.env["CUDA_VISIBLE_DEVICES"] == ("0" if processes == 1 else "0,1")
    if distributed_type:
        assert plan.accelerate_config["distributed_type"] == distributed_type and plan.accelerate_config["num_processes"] == 2


def test_the_worker_trains_through_dpokits_own_build_path(smoke, tiny_llama_dir, tmp_path):
    """The worker each GPU process runs, on the CPU: the config's model loading, the TRL trainer dpokit
    builds for a run, the step timer and this rank's figures file."""
    import json

    import yaml

    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"Say {w}.", "chosen": w, "rejected": "No."}) + "\n"
                            for w in ("yes", "maybe", "sure", "fine", "ok", "right")))
    config = smoke.smoke_config(str(tiny_llama_dir), rows, tmp_path, steps=2, bf16=False, name="single")
    config["training"].update(max_seq_length=128, max_prompt_length=96, max_completion_length=32)
    config["lora"]["target_modules"] = ["q_proj", "v_proj"]
    config_path = tmp_path / "single.yaml"
    config_path.write_text(yaml.safe_dump(config))
    out = tmp_path / "single.results"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--worker", str(config_path), "single", str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads((out / "rank0.json").read_text())
    assert figures["strategy"] == "single" and figures["steps"] == 2 and figures["step_s"] > 0
    assert (tmp_path / "runs" / "single" / "single-rank0" / "metrics.jsonl").is_file()
