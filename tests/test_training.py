"""Real TRL trainers on tiny local models, through the same code path as `dpokit train`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpokit.cli import main
from dpokit.testing import small_run_config
from dpokit.run import batch_records, train

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(model_dir, data_path, out: Path, **sections):
    return small_run_config(model_dir, data_path, out, **sections)


@pytest.mark.parametrize("post_training", [
    {"method": "dpo", "loss_type": "sigmoid"},
    {"method": "dpo", "loss_type": "hinge"},
    {"method": "dpo", "loss_type": "ipo"},
    {"method": "dpo", "loss_type": "robust", "label_smoothing": 0.1},
    {"method": "dpo", "loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5]},
    {"method": "ipo"},
    {"method": "kto"},
    {"method": "orpo", "use_ref_model": False},
], ids=lambda p: "-".join(str(v) for v in p.values()))
def test_every_method_trains_and_writes_a_complete_run(tiny_llama_dir, pairs_file, tmp_path, post_training):
    config = tiny_config(tiny_llama_dir, pairs_file, tmp_path, post_training=post_training)
    [result] = train(config)
    assert result.status == "completed", result.error
    run = Path(result.run_dir)
    for name in ("resolved_config.yaml", "environment.json", "metrics.jsonl", "summary.json",
                 "adapter/adapter_config.json", "adapter/adapter_model.safetensors"):
        assert (run / name).exists(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 2
    assert summary["method"] == post_training["method"]
    assert {"model", "loss_type", "train_runtime_s", "final_metrics"} <= set(summary)
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert losses and all(v == v for v in losses)  # logged and not NaN
    env = json.loads((run / "environment.json").read_text())
    assert env["seed"] == 0 and env["dataset"]["fingerprint"] and env["versions"]["trl"]
    if post_training["method"] in ("dpo", "ipo"):
        assert summary["trl_settings"]["loss_type"] == config.post_training.loss_types


def test_dpo_loss_starts_at_ln2_and_moves(tiny_llama_dir, pairs_file, tmp_path):
    config = tiny_config(tiny_llama_dir, pairs_file, tmp_path, training={"max_steps": 6, "learning_rate": 5e-3})
    [result] = train(config)
    records = [json.loads(line) for line in (Path(result.run_dir) / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)  # adapter starts at zero: policy == reference
    assert min(losses[1:]) < losses[0] - 1e-3


def test_runs_never_overwrite_an_earlier_run(tiny_llama_dir, pairs_file, tmp_path):
    config = tiny_config(tiny_llama_dir, pairs_file, tmp_path, training={"max_steps": 1})
    first = train(config)[0].run_dir
    second = train(config)[0].run_dir
    assert first != second and Path(first, "summary.json").exists() and Path(second, "summary.json").exists()


def test_same_seed_gives_identical_adapter_init_and_first_loss(tiny_llama_dir, pairs_file, tmp_path):
    config = tiny_config(tiny_llama_dir, pairs_file, tmp_path, training={"max_steps": 1},
                         lora={"lora_dropout": 0.0})
    runs = [Path(train(config)[0].run_dir) for _ in range(2)]
    first = [json.loads((r / "metrics.jsonl").read_text().splitlines()[0]) for r in runs]
    assert first[0]["loss"] == first[1]["loss"]
    from safetensors.torch import load_file

    a, b = (load_file(str(r / "adapter" / "adapter_model.safetensors")) for r in runs)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_multi_model_config_trains_each_model_and_model_index_selects_one(
        tiny_llama_dir, tiny_gpt2_dir, pairs_file, tmp_path):
    config_path = tmp_path / "multi.yaml"
    config_path.write_text(f"""
models:
  - name: tiny-llama
    huggingface_id: {tiny_llama_dir}
  - name: tiny-gpt2
    huggingface_id: {tiny_gpt2_dir}
dataset: {{name: {pairs_file}, validation_split: 0.0}}
post_training: {{use_ref_model: false}}
lora: {{r: 4, target_modules: all-linear}}
training: {{output_dir: {tmp_path / 'out'}, max_steps: 1, per_device_train_batch_size: 2,
           gradient_accumulation_steps: 1, warmup_steps: 0, logging_steps: 1, gradient_checkpointing: false}}
logging: {{report_to: [none]}}
evaluation: {{enabled: false}}
""")
    assert main(["train", "--config", str(config_path)]) == 0
    [record] = batch_records(tmp_path / "out")
    batch = json.loads((record / "batch_summary.json").read_text())
    assert [m["model"] for m in batch["models"]] == ["tiny-llama", "tiny-gpt2"]
    assert all(m["status"] == "completed" for m in batch["models"])
    assert main(["train", "--config", str(config_path), "--model-index", "1",
                 "--output-dir", str(tmp_path / "only")]) == 0
    runs = sorted(p.name for p in (tmp_path / "only").iterdir() if p.is_dir())
    assert len(runs) == 1 and runs[0].startswith("tiny-gpt2-dpo-")


def test_model_index_out_of_range_exits_2(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("models:\n  - name: m\n    huggingface_id: x\n")
    assert main(["train", "--config", str(path), "--model-index", "3"]) == 2
    assert "--model-index" in capsys.readouterr().err


def test_unknown_lora_target_lists_the_model_layers_and_family_suggestion(tiny_gpt2_dir, pairs_file, tmp_path):
    from dpokit.errors import ConfigError

    config = tiny_config(tiny_gpt2_dir, pairs_file, tmp_path)  # q_proj/v_proj do not exist in GPT-2
    with pytest.raises(ConfigError) as info:  # before any weights load: no run directory at all
        train(config)
    assert "c_attn" in str(info.value) and "match no module" in str(info.value)
    assert not Path(config.training.output_dir).exists()


def test_implicit_prompt_hh_rlhf_rows_train(tiny_llama_dir, tmp_path):
    config = tiny_config(tiny_llama_dir, ROOT / "data" / "hh-rlhf-harmless-sample" / "sample.jsonl", tmp_path,
                         dataset={"max_samples": 8}, training={"max_steps": 1})
    [result] = train(config)
    assert result.status == "completed", result.error
    env = json.loads((Path(result.run_dir) / "environment.json").read_text())
    assert env["dataset"]["format"] == "implicit"


def test_tokens_from_the_environment_never_reach_run_records(tiny_llama_dir, pairs_file, tmp_path, monkeypatch):
    secret = "hf_SECRETtoken0123456789"
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(var, secret)
    config = tiny_config(tiny_llama_dir, pairs_file, tmp_path, training={"max_steps": 1})
    [result] = train(config)
    assert result.status == "completed"
    for path in Path(result.run_dir).rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl", ".yaml", ".md", ".txt", ""):
            assert secret not in path.read_text(errors="ignore"), path


def test_trust_remote_code_is_off_unless_the_yaml_says_so(tiny_llama_dir, pairs_file, tmp_path, capsys):
    config = tiny_config(tiny_llama_dir, pairs_file, tmp_path, training={"max_steps": 1})
    assert config.models[0].trust_remote_code is False
    train(config)
    assert "trust_remote_code: true" not in capsys.readouterr().out
    config = tiny_config(tiny_llama_dir, pairs_file, tmp_path, training={"max_steps": 1},
                         models=[{"name": "tiny", "huggingface_id": str(tiny_llama_dir), "trust_remote_code": True}])
    train(config)
    assert "trust_remote_code: true" in capsys.readouterr().out
