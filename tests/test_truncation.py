"""The guide's max_prompt_length / max_completion_length, applied to what each TRL trainer trains on."""

from __future__ import annotations

import json

import pytest

from dpokit.data import load_preference_data
from dpokit.models import load_model, load_tokenizer
from dpokit.testing import small_run_config
from dpokit.trainers import build_trainer

MAX_PROMPT, MAX_COMPLETION = 12, 5


@pytest.fixture(scope="module")
def long_pairs(tmp_path_factory):
    path = tmp_path_factory.mktemp("long") / "pairs.jsonl"
    rows = [{"prompt": f"Question {i}: " + "tell me about the weather in the mountains today " * 3,
             "chosen": f"It is sunny {i}. " + "The sky is clear and the wind is calm. " * 3,
             "rejected": f"No idea {i}. " + "I cannot know that, sorry, maybe check a forecast. " * 4}
            for i in range(8)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("method", ["dpo", "kto", "orpo"])
def test_length_limits_cut_prompts_keeping_the_end_and_completions_keeping_the_start(
        tiny_llama_dir, long_pairs, tmp_path, method):
    config = small_run_config(tiny_llama_dir, long_pairs, tmp_path, post_training={"method": method},
                              training={"max_prompt_length": MAX_PROMPT, "max_completion_length": MAX_COMPLETION,
                                        "max_seq_length": 128, "per_device_train_batch_size": 2})
    spec = config.models[0]
    tokenizer = load_tokenizer(spec.huggingface_id)
    data = load_preference_data(config, tokenizer.chat_template is not None)
    trainer = build_trainer(config, model=load_model(spec.huggingface_id), tokenizer=tokenizer, data=data,
                            run_dir=tmp_path / "run")
    ds = trainer.train_dataset
    if method == "orpo":  # ORPO stores prompt + completion sequences with -100 on the prompt
        for row in ds:
            assert len(row["prompt_input_ids"]) == MAX_PROMPT
            for side in ("chosen", "rejected"):
                answer = [t for t in row[f"{side}_labels"] if t != -100]
                assert len(answer) == MAX_COMPLETION
                assert row[f"{side}_input_ids"][:MAX_PROMPT] == row["prompt_input_ids"]
        return
    keys = {"dpo": ["chosen_ids", "rejected_ids"], "kto": ["completion_ids", "KL_completion_ids"]}[method]
    for row in ds:
        assert len(row["prompt_ids"]) == MAX_PROMPT
        for k in keys:
            assert len(row[k]) == MAX_COMPLETION, (k, len(row[k]))
    # completions keep their start: the first tokens of an answer are what the preference is about
    first = ds[0]
    text = tokenizer.decode(first[keys[0]])
    assert text.strip().split()[0] in {"It", "No"}, text
    # the prompt keeps its end: the question's last words stay next to the answer
    assert "today" in tokenizer.decode(first["prompt_ids"])


@pytest.mark.parametrize("method", ["dpo", "kto"])
def test_a_prompt_longer_than_max_seq_length_loses_its_start_instead_of_its_row(
        tiny_llama_dir, long_pairs, tmp_path, method):
    # every prompt (~40 tokens) fills max_seq_length=30: TRL alone would drop every row before the cut
    config = small_run_config(tiny_llama_dir, long_pairs, tmp_path, post_training={"method": method},
                              training={"max_prompt_length": MAX_PROMPT, "max_completion_length": MAX_COMPLETION,
                                        "max_seq_length": 30, "per_device_train_batch_size": 2})
    spec = config.models[0]
    tokenizer = load_tokenizer(spec.huggingface_id)
    data = load_preference_data(config, tokenizer.chat_template is not None)
    trainer = build_trainer(config, model=load_model(spec.huggingface_id), tokenizer=tokenizer, data=data,
                            run_dir=tmp_path / "run")
    assert len(trainer.train_dataset) == len(data.train) * (2 if method == "kto" else 1)
    assert all(len(ids) == MAX_PROMPT for ids in trainer.train_dataset["prompt_ids"])
    assert trainer.args.max_length == 30  # restored after TRL's dataset preparation
