"""Taking a trained model away: exported adapters and merged models load with plain PEFT/transformers."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from dpokit.testing import small_run_config as tiny_config

from dpokit.cli import main
from dpokit.errors import DpokitError
from dpokit.export import ChatModel, chat, export_run
from dpokit.run import train

PROMPT = "What is 4 + 3? Reply with just the number."


@pytest.fixture(scope="module")
def trained_run(tiny_llama_dir, pairs_file, tmp_path_factory) -> Path:
    """A tiny DPO run whose adapter moved far enough from zero to change the logits."""
    config = tiny_config(tiny_llama_dir, pairs_file, tmp_path_factory.mktemp("export"),
                         training={"max_steps": 4, "learning_rate": 2e-2})
    [result] = train(config)
    assert result.status == "completed", result.error
    return Path(result.run_dir)


def next_token_logits(model, tokenizer) -> torch.Tensor:
    text = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                         tokenize=False)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        return model(**ids).logits[0, -1]


def test_exported_adapter_loads_with_peft_from_pretrained(trained_run, tiny_llama_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = export_run(trained_run, tmp_path / "adapter")
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "dpokit_export.json"):
        assert (out / name).exists(), name
    assert json.loads((out / "dpokit_export.json").read_text())["merged"] is False
    tokenizer = AutoTokenizer.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    base_logits = next_token_logits(base, tokenizer)
    model = PeftModel.from_pretrained(base, out).eval()
    assert not torch.allclose(next_token_logits(model, tokenizer), base_logits, atol=1e-6)  # the adapter acts


def test_merged_model_loads_with_plain_transformers_and_answers_like_the_trained_run(trained_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    out = tmp_path / "merged"
    assert main(["export", str(trained_run), "--out", str(out), "--merge"]) == 0
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    tokenizer = AutoTokenizer.from_pretrained(out)
    trained = ChatModel(trained_run, max_new_tokens=12)
    assert torch.allclose(next_token_logits(merged, tokenizer), next_token_logits(trained.model, trained.tokenizer),
                          atol=1e-5)
    generator = pipeline("text-generation", model=str(out))
    reply = generator([{"role": "user", "content": PROMPT}], max_new_tokens=12, do_sample=False)
    assert reply[0]["generated_text"][-1]["content"].strip() == trained.answer(PROMPT)


def test_export_refuses_a_non_empty_directory_and_a_folder_that_is_not_a_run(trained_run, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(DpokitError, match="not empty"):
        export_run(trained_run, taken)
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]
    with pytest.raises(DpokitError, match="no trained adapter"):
        export_run(tmp_path, tmp_path / "out")


def test_chat_answers_each_typed_prompt_next_to_the_base_model(trained_run, monkeypatch, capsys):
    expected = ChatModel(trained_run, max_new_tokens=8).compare(PROMPT)
    out = io.StringIO()
    answered = chat(trained_run, compare=True, max_new_tokens=8, stdin=io.StringIO(f"{PROMPT}\n\nexit\nignored\n"),
                    stdout=out)
    assert answered == 1
    lines = out.getvalue().splitlines()
    assert f"base>    {expected['base']}" in lines and f"trained> {expected['trained']}" in lines
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{PROMPT}\n"))  # the CLI reads prompts from stdin
    assert main(["chat", str(trained_run), "--max-new-tokens", "8"]) == 0
    assert f"model> {expected['trained']}" in capsys.readouterr().out.splitlines()
