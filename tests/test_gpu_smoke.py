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
    from dpokit.scaling import DistributedSection, ModelLoadingSection, QuantizationSection
    from dpokit.scaling_rules import scaling_problems

    config = smoke.smoke_config(str(tiny_llama_dir), tmp_path / "rows.jsonl", tmp_path, steps=3, bf16=True)
    load_config(data=config)  # the smoke config is valid as a whole
    estimates = {}
    for name, (strategy, quant, offload, _) in smoke.STRATEGIES.items():
        dist = DistributedSection(strategy=None if strategy == "single" else strategy, cpu_offload=offload)
        found = scaling_problems(dist, QuantizationSection(load_in=quant), ModelLoadingSection(), use_ddp=False,
                                 fp16=False, bf16=True)
        assert found == [], (name, found)
        estimates[name] = smoke.estimate(config, name, 2, bundled_model_config("qwen2.5-0.5b"))
    assert estimates["qlora"] < estimates["single"]  # 4-bit linear weights
    assert estimates["zero3"] < estimates["ddp"]  # sharded weights
    assert estimates["zero3-offload"] < estimates["zero3"]
