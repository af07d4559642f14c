"""Per-model overrides in a batch: each `models` entry may set its own LoRA and precision keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dpokit.cli import main
from dpokit.config import load_config
from dpokit.errors import ConfigError
from dpokit.run import train
from dpokit.testing import small_run_config


def batch_config(tmp_path, pairs_file, models, **sections):
    return small_run_config(models[0]["huggingface_id"], pairs_file, tmp_path, models=models,
                            training={"max_steps": 1}, **sections)


def test_each_model_of_a_batch_trains_with_its_own_lora_and_precision(
        tiny_llama_dir, tiny_gpt2_dir, tiny_neox_dir, pairs_file, tmp_path):
    models = [{"name": "llama", "huggingface_id": str(tiny_llama_dir)},  # the shared lora section
              {"name": "gpt2", "huggingface_id": str(tiny_gpt2_dir), "lora": {"target_modules": ["c_attn"], "r": 2}},
              {"name": "neox", "huggingface_id": str(tiny_neox_dir), "lora": {"target_modules": ["query_key_value"]},
               "training": {"bf16": True}}]
    results = train(batch_config(tmp_path, pairs_file, models))
    assert [r.status for r in results] == ["completed"] * 3, [r.error for r in results]
    expected = {"llama": ({"q_proj", "v_proj"}, 4, False), "gpt2": ({"c_attn"}, 2, False),
                "neox": ({"query_key_value"}, 4, True)}
    for result in results:
        run = Path(result.run_dir)
        targets, rank, bf16 = expected[result.model]
        saved = yaml.safe_load((run / "resolved_config.yaml").read_text())  # that model's effective config
        assert [m["name"] for m in saved["models"]] == [result.model]
        assert set(saved["lora"]["target_modules"]) == targets and saved["lora"]["r"] == rank
        assert saved["training"]["bf16"] is bf16 and saved["lora"]["lora_alpha"] == 8  # shared key kept
        adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
        assert set(adapter["target_modules"]) == targets and adapter["r"] == rank
        assert json.loads((run / "summary.json").read_text())["trl_settings"]["bf16"] is bf16
        assert load_config(run / "resolved_config.yaml").lora.r == rank  # the record loads back as it ran


def test_override_problems_are_reported_at_the_model_path_with_a_suggestion(tmp_path):
    models = [{"name": "a", "huggingface_id": "x"},
              {"name": "b", "huggingface_id": "y", "lora": {"targte_modules": ["c_attn"], "r": 0},
               "training": {"learning_rate": 1e-5}}]
    with pytest.raises(ConfigError) as info:
        load_config(data={"models": models})
    text = str(info.value)
    assert "models.1.lora.targte_modules: unknown key" in text and "did you mean 'target_modules'?" in text
    assert "models.1.lora.r: Input should be greater than 0" in text
    assert "models.1.training.learning_rate: unknown key" in text and "fp16, bf16, gradient_checkpointing" in text
    # cross-field rules run on each model's merged config, located where the model set the key
    models[1] = {"name": "b", "huggingface_id": "y", "lora": {"use_dora": True, "bias": "all"},
                 "training": {"bf16": True}}
    with pytest.raises(ConfigError) as info:
        load_config(data={"models": models, "training": {"fp16": True}})
    text = str(info.value)
    assert "models.1.lora.bias: DoRA does not support training biases" in text
    assert "fp16 and bf16 are both true" in text and "for models.1 'b'" in text
    assert "models.0" not in text  # model a trains with the shared sections, which are fine alone


def test_a_lora_target_missing_from_one_model_stops_the_batch_before_any_weights_load(
        tiny_llama_dir, tiny_gpt2_dir, pairs_file, tmp_path, monkeypatch):
    import dpokit.models

    monkeypatch.setattr(dpokit.models, "load_model", lambda *a, **k: pytest.fail("weights loaded"))
    models = [{"name": "llama", "huggingface_id": str(tiny_llama_dir)},
              {"name": "gpt2", "huggingface_id": str(tiny_gpt2_dir)}]
    with pytest.raises(ConfigError) as info:
        train(batch_config(tmp_path, pairs_file, models))
    text = str(info.value)
    assert "lora.target_modules: ['q_proj', 'v_proj'] match no module of gpt2 (gpt2)" in text
    assert "['c_attn']" in text and "lora: {target_modules: ['c_attn']}" in text  # the family's list, per model
    assert "llama" not in text.replace("match no module of gpt2", "")  # the Llama targets are fine
    models[1]["lora"] = {"target_modules": ["c_atn"]}
    with pytest.raises(ConfigError) as info:
        train(batch_config(tmp_path, pairs_file, models))
    assert "models.1.lora.target_modules: ['c_atn'] match no module of gpt2" in str(info.value)
    assert not Path(tmp_path / "runs").exists()


def test_the_dry_run_checks_each_model_against_its_own_layers(tiny_llama_dir, tiny_gpt2_dir, pairs_file, tmp_path,
                                                              capsys):
    models = [{"name": "llama", "huggingface_id": str(tiny_llama_dir)},
              {"name": "gpt2", "huggingface_id": str(tiny_gpt2_dir), "lora": {"target_modules": ["c_attn"]}}]
    path = tmp_path / "batch.yaml"
    path.write_text(batch_config(tmp_path, pairs_file, models).to_yaml())
    assert main(["train", "--config", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "its own settings (models[1]): lora.target_modules=['c_attn']" in out
    assert "LoRA r=4 on ['c_attn']" in out and "LoRA r=4 on ['q_proj', 'v_proj']" in out
    models[1]["lora"] = {"target_modules": ["q_proj"]}
    path.write_text(batch_config(tmp_path, pairs_file, models).to_yaml())
    assert main(["train", "--config", str(path), "--dry-run"]) == 2
    out = capsys.readouterr().out
    assert "ERROR: models.1.lora.target_modules: ['q_proj'] match no module of gpt2" in out


def test_train_prints_the_guides_advice_once_per_model_and_keeps_it_in_the_summary(
        tiny_llama_dir, tiny_gpt2_dir, pairs_file, tmp_path, capsys):
    models = [{"name": "llama", "huggingface_id": str(tiny_llama_dir)},
              {"name": "gpt2", "huggingface_id": str(tiny_gpt2_dir), "lora": {"target_modules": ["c_attn"]}}]
    results = train(batch_config(tmp_path, pairs_file, models))  # lr 1e-3, effective batch 2, 24 pairs
    out = capsys.readouterr().out
    assert out.count("! advice: learning_rate 0.001 > 1e-5") == 2
    assert out.count("! advice: effective batch size 2") == 2
    for result in results:
        block = out.split(f"== {result.model} (")[1].split("\n== ")[0]  # printed in that model's own block
        assert "! advice: learning_rate 0.001" in block
        advice = json.loads((Path(result.run_dir) / "summary.json").read_text())["advice"]
        assert any(a.startswith("learning_rate 0.001 > 1e-5") for a in advice)
        assert any(a.startswith("24 training rows (< 1K)") for a in advice)
