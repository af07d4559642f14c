"""`dpokit train --dry-run`: explains a config without loading weights, training or writing runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from dpokit.testing import small_run_config, write_arithmetic_pairs

ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_explains_the_run_and_writes_nothing(tiny_llama_dir, tmp_path):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from dpokit.models import count_parameters, lora_config

    data = write_arithmetic_pairs(tmp_path / "pairs.jsonl", n_a=8, n_b=4)
    config = small_run_config(tiny_llama_dir, data, tmp_path / "out")
    path = tmp_path / "config.yaml"
    path.write_text(config.to_yaml())
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "dpokit", "train", "--config", str(path), "--dry-run"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    total, _ = count_parameters(model)
    _, trainable = count_parameters(get_peft_model(model, lora_config(config.lora)))
    assert f"{trainable:,} trainable" in out  # the same count PEFT gives when it wraps the model
    assert re.search(r"memory estimate \(CPU RAM, fp32, peak of a step\): ~[\d.]+ [MG]B", out)
    assert "one pair as the model sees it" in out and "⟦" in out
    assert "dry run: no weights loaded, nothing trained" in out
    assert not (tmp_path / "out").exists(), "a dry run must not create run directories"
