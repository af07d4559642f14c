"""Batched greedy generation gives one-by-one greedy answers, in prompt order."""

from __future__ import annotations

import pytest

from dpokit.generation import chat_texts, generate_greedy, stop_token_ids

PROMPTS = [
    "Hi",
    "Write a long and detailed story about a lighthouse keeper who finds a message in a bottle.",
    "What is 2 + 2?",
    "List three colours.",
    "Explain, in one short paragraph, why the sky looks blue on a clear day at noon.",
    "Say yes.",
    "Name a fruit that is yellow and curved, and say where it grows.",
]


def varied(model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    # A freshly initialised tiny model repeats the prompt's last token forever; larger weights make its
    # greedy answers depend on the prompt, so a mix-up of answers between prompts would show.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for weight in (p for p in model.parameters() if p.dim() == 2):
            weight.copy_(torch.randn(weight.shape, generator=generator) * 0.3)
    return model, AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    return varied(tiny_llama_dir)


def one_by_one(model, tokenizer, prompts, max_new_tokens):
    """The reference: each prompt alone (no padding), plain `generate`, cut at the first stop token."""
    import torch

    stops = stop_token_ids(model, tokenizer)
    answers = []
    for text in chat_texts(tokenizer, prompts):
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)
        new = out[0, ids.shape[1]:].tolist()
        new = new[:next((k for k, t in enumerate(new) if t in stops), len(new))]
        answers.append(tokenizer.decode(new, skip_special_tokens=True).strip())
    return answers


@pytest.mark.parametrize("drop_finished", [True, False], ids=["dpokit-loop", "transformers-generate"])
def test_batched_answers_equal_one_by_one_greedy_answers_in_prompt_order(tiny, drop_finished):
    model, tokenizer = tiny
    reference = one_by_one(model, tokenizer, PROMPTS, max_new_tokens=12)
    stats: dict = {}
    batched = generate_greedy(model, tokenizer, PROMPTS, max_new_tokens=12, batch_size=3, stats=stats,
                              drop_finished=drop_finished)
    assert batched == reference
    assert len(set(reference)) > 1  # the prompts give different answers, so order is really checked
    assert stats["prompts"] == len(PROMPTS) and 0 < stats["new_tokens"] <= 12 * len(PROMPTS)
    assert generate_greedy(model, tokenizer, PROMPTS[::-1], max_new_tokens=12, batch_size=4,
                           drop_finished=drop_finished) == reference[::-1]


def test_sequences_leaving_the_batch_early_do_not_disturb_the_others(tiny):
    """Half the answers stop after a few tokens (a stop token made likely for them): the rest must
    still equal their one-by-one answers, and the early ones must be cut at the stop token."""
    import torch

    model, tokenizer = tiny
    reference = one_by_one(model, tokenizer, PROMPTS, max_new_tokens=10)
    # Declare as an extra stop token the 3rd token of some prompts' answers: those finish early.
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in chat_texts(tokenizer, PROMPTS)]
    with torch.no_grad():
        third = []
        for row in ids[::2]:
            out = model.generate(torch.tensor([row]), max_new_tokens=3, do_sample=False,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            third.append(out[0, -1].item())
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, *third]
    try:
        loop = generate_greedy(model, tokenizer, PROMPTS, max_new_tokens=10, batch_size=7)
        library = generate_greedy(model, tokenizer, PROMPTS, max_new_tokens=10, batch_size=7, drop_finished=False)
        expected = one_by_one(model, tokenizer, PROMPTS, max_new_tokens=10)
    finally:
        model.generation_config.eos_token_id = saved
    assert loop == library == expected
    assert sum(len(a) < len(r) for a, r in zip(expected, reference)) >= 2  # some really stopped early


def test_other_architectures_decode_the_same_way(tiny_gpt2_dir, tiny_neox_dir):
    for model_dir in (tiny_gpt2_dir, tiny_neox_dir):
        model, tokenizer = varied(model_dir)
        reference = one_by_one(model, tokenizer, PROMPTS[:5], max_new_tokens=8)
        assert generate_greedy(model, tokenizer, PROMPTS[:5], max_new_tokens=8, batch_size=5) == reference


def test_answers_stop_at_the_end_of_turn_token(tiny):
    import torch

    model, tokenizer = tiny
    head = model.get_output_embeddings()
    bias = torch.zeros(head.weight.shape[0])
    bias[tokenizer.eos_token_id] = 1e4  # the end-of-turn token becomes every step's argmax
    head.bias = torch.nn.Parameter(bias)
    try:
        stats: dict = {}
        answers = generate_greedy(model, tokenizer, PROMPTS[:3], max_new_tokens=8, batch_size=2, stats=stats)
    finally:
        head.bias = None
    assert answers == ["", "", ""] and stats["new_tokens"] == 0 and stats["answers_at_limit"] == 0
    stats = {}
    generate_greedy(model, tokenizer, PROMPTS[:3], max_new_tokens=8, batch_size=2, stats=stats)
    assert stats["new_tokens"] > 0


def test_nothing_to_answer_and_bad_arguments(tiny):
    model, tokenizer = tiny
    assert generate_greedy(model, tokenizer, [], max_new_tokens=4) == []
    with pytest.raises(ValueError, match="at least 1"):
        generate_greedy(model, tokenizer, PROMPTS, max_new_tokens=0)


def test_chat_messages_and_plain_strings_give_the_same_text(tiny):
    _, tokenizer = tiny
    assert chat_texts(tokenizer, ["Hi"]) == chat_texts(tokenizer, [[{"role": "user", "content": "Hi"}]])
    assert chat_texts(tokenizer, ["Hi"])[0].endswith("<|im_start|>assistant\n")


def test_ifeval_harness_answers_scores_and_compares_adapter_off_and_on(tiny, tmp_path):
    import json

    import torch
    from peft import LoraConfig, get_peft_model

    from dpokit.bench.harness import run_base_and_trained, run_ifeval, summary_lines, write_results
    from dpokit.bench.ifeval import select_prompts

    model, tokenizer = tiny
    prompts = select_prompts(3, seed=0)
    single = run_ifeval(model, tokenizer, prompts, max_new_tokens=4, batch_size=2)
    assert [a["key"] for a in single["answers"]] == [p.key for p in prompts]
    assert single["score"]["num_prompts"] == 3 and single["settings"]["dtype"] == "float32"
    assert single["generation"]["prompts"] == 3
    json.dumps(single)

    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    try:
        with torch.no_grad():  # a non-zero adapter, so "trained" really differs from "base"
            for name, weight in peft_model.named_parameters():
                if "lora_B" in name:
                    weight.copy_(torch.full_like(weight, 0.5))
        both = run_base_and_trained(peft_model, tokenizer, prompts, max_new_tokens=4, batch_size=2)
    finally:
        peft_model.unload()
    assert [a["answer"] for a in both["base"]["answers"]] == [a["answer"] for a in single["answers"]]
    assert [a["answer"] for a in both["trained"]["answers"]] != [a["answer"] for a in single["answers"]]
    assert set(both["comparison"]) == {"strict", "loose"}

    paths = write_results(tmp_path, both, prompts)
    summary = json.loads(paths["json"].read_text())
    assert summary["base"]["accuracy"] == both["base"]["score"]["accuracy"] and "rows" not in summary["base"]
    lines = [json.loads(line) for line in paths["answers"].read_text().splitlines()]
    assert [(x["key"], x["trained"]["answer"]) for x in lines] == [(a["key"], a["answer"])
                                                                   for a in both["trained"]["answers"]]
    text = "\n".join(summary_lines(both))
    assert "base" in text and "trained" in text and "wins" in text


def test_unsorted_batches_give_the_same_answers(tiny):
    model, tokenizer = tiny
    assert generate_greedy(model, tokenizer, PROMPTS, max_new_tokens=6, batch_size=3, sort_by_length=False) == \
        generate_greedy(model, tokenizer, PROMPTS, max_new_tokens=6, batch_size=3)


@pytest.mark.parametrize("setting, shown", [("1", False), ("", True)])
def test_tqdm_disable_turns_the_answer_progress_bar_off(tiny, capsys, monkeypatch, setting, shown):
    # a labelled bar passes disable= explicitly, which tqdm lets override TQDM_DISABLE: an executed notebook
    # then kept every bar as a frozen "0%" line
    model, tokenizer = tiny
    monkeypatch.setenv("TQDM_DISABLE", setting)
    generate_greedy(model, tokenizer, PROMPTS[:2], max_new_tokens=2, progress="Answering the test prompts")
    assert ("Answering the test prompts" in capsys.readouterr().err) is shown
