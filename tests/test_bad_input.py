"""The bad-input catalogue: each case exits with status 2, names the field/column/file/row,
says what to do, shows no traceback, and (for config problems) loads no model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dpokit.cli import main
from dpokit.run import batch_records

GOOD_ROWS = [{"prompt": f"What is {a} + 1?", "chosen": str(a + 1), "rejected": f"Maybe {a + 5}, I think."}
             for a in range(20)]


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fail the test if any model weights are loaded."""
    import dpokit.models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded although the input was bad")

    monkeypatch.setattr(dpokit.models, "load_model", refuse)


def write(tmp_path: Path, name: str, rows) -> Path:
    path = tmp_path / name
    if isinstance(rows, str):
        path.write_text(rows)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def base_config(model_dir, data_path, tmp_path) -> dict:
    return {
        "models": [{"name": "tiny", "huggingface_id": str(model_dir)}],
        "dataset": {"name": str(data_path), "validation_split": 0.0, "max_samples": None},
        "post_training": {"use_ref_model": False},
        "lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]},
        "training": {"output_dir": str(tmp_path / "runs"), "max_steps": 1, "per_device_train_batch_size": 2,
                     "gradient_accumulation_steps": 1, "warmup_steps": 0, "gradient_checkpointing": False,
                     "max_seq_length": 128, "max_prompt_length": 96, "max_completion_length": 32},
        "logging": {"report_to": ["none"]},
        "evaluation": {"enabled": False},
    }


def set_path(config: dict, dotted: str, value):
    node = config
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
    if value is DELETE:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value


DELETE = object()

# (case id, {dotted key: value} changes to a good config, extra CLI args, words the message must contain)
CONFIG_CASES = [
    ("unknown-key", {"training.lerning_rate": 1e-6}, [], ["training.lerning_rate", "did you mean 'learning_rate'"]),
    ("misspelled-section", {"post_traning": {"beta": 0.1}}, [], ["post_traning", "did you mean 'post_training'"]),
    ("wrong-type", {"training.learning_rate": "fast"}, [], ["training.learning_rate", "valid number"]),
    ("zero-beta", {"post_training.beta": 0}, [], ["post_training.beta", "greater than 0"]),
    ("negative-beta", {"post_training.beta": -0.5}, [], ["post_training.beta", "greater than 0"]),
    ("validation-split-1.5", {"dataset.validation_split": 1.5}, [], ["dataset.validation_split", "less than 1"]),
    ("orpo-with-hinge", {"post_training.method": "orpo", "post_training.loss_type": "hinge"}, [],
     ["post_training.loss_type", "remove `loss_type`"]),
    ("fp16-and-bf16", {"training.fp16": True, "training.bf16": True}, [], ["training.fp16", "pick one"]),
    ("fp16-on-cpu", {"training.fp16": True}, [], ["training.fp16", "CUDA", "fp16: false"]),
    ("wandb-without-key", {"logging.report_to": ["wandb"]}, [], ["logging.report_to", "WANDB_MODE=offline"]),
    ("empty-models", {"models": []}, [], ["models", "empty"]),
    ("model-index-out-of-range", {}, ["--model-index", "5"], ["--model-index", "out of range"]),
    ("kto-pair-loss", {"post_training.loss_type": "kto_pair"}, [], ["post_training.loss_type", "method: kto"]),
    ("label-smoothing-ignored", {"post_training.label_smoothing": 0.2}, [], ["post_training.label_smoothing",
                                                                             "would be ignored"]),
    ("prompt-limit-fills-sequence", {"training.max_prompt_length": 200}, [], ["training.max_prompt_length",
                                                                               "no room"]),
    ("best-model-without-eval", {"finetuning.load_best_model_at_end": True}, [],
     ["finetuning.load_best_model_at_end", "validation_split"]),
    ("early-stopping-without-eval", {"finetuning.early_stopping_patience": 3}, [],
     ["finetuning.early_stopping_patience", "evaluation"]),
    ("missing-huggingface-id", {"models.0.huggingface_id": DELETE}, [], ["models.0.huggingface_id", "missing"]),
    ("gpus-not-here", {"gpu.device_ids": [0, 1], "gpu.use_ddp": True}, [], ["gpu.device_ids", "on_missing: cpu"]),
    ("one-gpu-not-here", {"gpu.device_ids": [3]}, [], ["gpu.device_ids", "[3]", "on_missing: cpu"]),
    ("several-gpus-one-process", {"gpu.device_ids": [0, 1]}, [], ["gpu.device_ids", "nn.DataParallel",
                                                                  "gpu.use_ddp: true"]),
    ("zero3-without-gpus", {"distributed.strategy": "zero3", "training.bf16": True}, [],
     ["distributed.strategy", "needs CUDA GPUs", "--dry-run"]),
    ("4bit-under-fsdp2", {"quantization.load_in": "4bit", "distributed.strategy": "fsdp",
                          "distributed.fsdp_version": 2}, [], ["distributed.fsdp_version", "FSDP2"]),
    ("two-machines-without-address", {"distributed.num_machines": 2}, [], ["distributed.main_process_ip"]),
    ("bad-optimizer", {"training.optim": "adamw_fast"}, [], ["training.optim", "unknown optimizer"]),
    ("unknown-method", {"post_training.method": "ppo"}, [], ["post_training.method", "dpo"]),
    ("resume-path-missing", {"finetuning.resume_from_checkpoint": "/no/such/checkpoint-9"}, [],
     ["finetuning.resume_from_checkpoint", "does not exist"]),
]


@pytest.mark.parametrize("case, changes, args, words", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_exits_2_with_a_clear_message_and_loads_no_model(
        case, changes, args, words, tmp_path, capsys, monkeypatch, no_model_loading):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    config = base_config("embedded:smollm2-135m-instruct", write(tmp_path, "d.jsonl", GOOD_ROWS), tmp_path)
    for key, value in changes.items():
        set_path(config, key, value)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(path), *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for w in words:
        assert w in err, f"{w!r} not in:\n{err}"
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


FILE_CASES = [
    ("config-file-missing", None, ["nope.yaml", "file not found"]),
    ("invalid-yaml", "models:\n  - name: m\n   huggingface_id: x\n", ["c.yaml:3", "not valid YAML"]),
    ("yaml-not-a-mapping", "- just\n- a list\n", ["expected a mapping"]),
]


@pytest.mark.parametrize("case, text, words", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_bad_config_file_exits_2(case, text, words, tmp_path, capsys, no_model_loading):
    path = tmp_path / ("nope.yaml" if text is None else "c.yaml")
    if text is not None:
        path.write_text(text)
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and all(w in err for w in words), err


def test_malformed_set_override_exits_2(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base_config("x", "y", tmp_path)))
    assert main(["train", "--config", str(path), "--set", "training.learning_rate"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_resume_of_a_directory_without_checkpoint_exits_2(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "--resume" in capsys.readouterr().err


HH_NO_PREFIX = [{"chosen": "\n\nHuman: a\n\nAssistant: yes", "rejected": "\n\nHuman: b\n\nAssistant: no"}] * 4
DATA_CASES = [
    ("path-does-not-exist", None, {}, ["dataset.name", "does not exist"]),
    ("not-json-lines", "this is { not json\n", {}, ["JSON lines", "d.jsonl"]),
    ("misnamed-column", [{"prompt": "p", "good": "a", "bad": "b"}] * 5, {},
     ["chosen_column='chosen'", "columns: ['prompt', 'good', 'bad']"]),
    ("column-mapping-suggested", [{"question": "q", "response_j": "a", "response_k": "b"}] * 5, {},
     ["chosen_column: response_j", "prompt_column: question"]),
    ("all-empty-or-null", [{"prompt": "p", "chosen": "", "rejected": "x"}, {"prompt": "p", "chosen": "a", "rejected": None}] * 3, {},
     ["every row", "empty chosen or rejected", "null value"]),
    ("chosen-identical-to-rejected", [{"prompt": "p", "chosen": "same", "rejected": "same"}] * 5, {},
     ["every row", "chosen identical to rejected", "row 0"]),
    ("implicit-without-shared-prefix", HH_NO_PREFIX, {"dataset.prompt_column": "prompt"},
     ["share no prompt ending in 'Assistant:'"]),
    ("eval-split-with-no-rows", GOOD_ROWS, {"dataset.validation_split": 0.01}, ["dataset.validation_split",
                                                                               "0 evaluation row"]),
    ("every-prompt-too-long", GOOD_ROWS, {"training.max_prompt_length": 4}, ["training.max_prompt_length",
                                                                             "every prompt"]),
    ("split-does-not-exist", "DISK", {"dataset.split": "validation"}, ["dataset.split", "'validation'",
                                                                       "splits: ['train']"]),
]


@pytest.mark.parametrize("case, rows, changes, words", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data_exits_2_naming_the_file_column_or_row(case, rows, changes, words, tiny_llama_dir, tmp_path,
                                                        capsys, no_model_loading):
    if rows is None:
        data = tmp_path / "missing.jsonl"
    elif rows == "DISK":
        import datasets

        data = tmp_path / "saved"
        datasets.DatasetDict({"train": datasets.Dataset.from_list(GOOD_ROWS)}).save_to_disk(str(data))
    else:
        data = write(tmp_path, "d.jsonl", rows)
    config = base_config(tiny_llama_dir, data, tmp_path)
    for key, value in changes.items():
        set_path(config, key, value)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for w in words:
        assert w in err, f"{w!r} not in:\n{err}"


def test_some_bad_rows_are_dropped_counted_and_said(tiny_llama_dir, tmp_path, capsys):
    rows = GOOD_ROWS + [{"prompt": "p", "chosen": "x", "rejected": "x"}, {"prompt": "p", "chosen": None,
                                                                          "rejected": "y"}]
    config = base_config(tiny_llama_dir, write(tmp_path, "d.jsonl", rows), tmp_path)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "dropped rows: 1 (chosen identical to rejected), 1 (null value)" in out


def test_a_broken_model_in_a_batch_is_recorded_and_the_others_still_run(tiny_llama_dir, tmp_path, capsys):
    config = base_config(tiny_llama_dir, write(tmp_path, "d.jsonl", GOOD_ROWS), tmp_path)
    config["models"] = [{"name": "broken", "huggingface_id": str(tmp_path / "no-such-model")},
                        {"name": "tiny", "huggingface_id": str(tiny_llama_dir)}]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(path)]) == 1
    [record] = batch_records(tmp_path / "runs")
    batch = json.loads((record / "batch_summary.json").read_text())
    status = {m["model"]: m for m in batch["models"]}
    assert status["broken"]["status"] == "failed" and "does not exist" in status["broken"]["error"]
    assert status["tiny"]["status"] == "completed"
    out = capsys.readouterr().out
    assert "broken" in out.split("== results")[-1] and "completed" in out.split("== results")[-1]
