"""Data: the four formats the guide's datasets use, column mapping, cleaning, splits, tokens."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from dpokit.config import load_config
from dpokit.data import load_preference_data
from dpokit.pairs import split_hh_dialogue
from dpokit.tokens import tokenize_pair
from dpokit.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
HH = ROOT / "data" / "hh-rlhf-harmless-sample" / "sample.jsonl"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def cfg(name, **dataset):
    return load_config(data={"models": [{"name": "m", "huggingface_id": "x"}],
                             "dataset": {"name": str(name), "validation_split": 0.0, "max_samples": None, **dataset},
                             "seed": 3})


EXPLICIT = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(20)]


def test_explicit_prompt_format_is_detected_and_wrapped_for_chat(tmp_path):
    data = load_preference_data(cfg(write_jsonl(tmp_path / "d.jsonl", EXPLICIT)), tokenizer_has_chat_template=True)
    assert data.format == "explicit"
    row = data.train[0]
    assert row["prompt"][0]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
    plain = load_preference_data(cfg(tmp_path / "d.jsonl"), tokenizer_has_chat_template=False)
    assert isinstance(plain.train[0]["prompt"], str)


def test_implicit_prompt_hh_rlhf_is_split_at_the_last_shared_assistant_turn():
    data = load_preference_data(cfg(HH, chat_template="never"), tokenizer_has_chat_template=False)
    assert data.format == "implicit"
    for row in data.train.select(range(50)):
        assert row["prompt"].endswith("\n\nAssistant:")
        assert row["chosen"] != row["rejected"]
    chat = load_preference_data(cfg(HH), tokenizer_has_chat_template=True)
    first = chat.train[0]
    assert first["prompt"][-1]["role"] == "user" and first["chosen"][-1]["role"] == "assistant"


def test_split_hh_dialogue_does_not_cut_inside_a_shared_answer_start():
    chosen = "\n\nHuman: hi\n\nAssistant: I can help with that."
    rejected = "\n\nHuman: hi\n\nAssistant: I cannot."
    prompt, c, r = split_hh_dialogue(chosen, rejected)
    assert prompt == "\n\nHuman: hi\n\nAssistant:" and c == " I can help with that." and r == " I cannot."


def test_real_hh_rlhf_rows_all_split(tmp_path):
    rows = [json.loads(line) for line in gzip.open(ROOT.parent / "shared/data/hh-rlhf-harmless-base/test.jsonl.gz", "rt")] \
        if (ROOT.parent / "shared/data/hh-rlhf-harmless-base/test.jsonl.gz").exists() else \
        [json.loads(line) for line in HH.read_text().splitlines()]
    ok = sum(split_hh_dialogue(r["chosen"], r["rejected"]) is not None for r in rows)
    assert ok / len(rows) > 0.99


def test_conversational_implicit_prompt_is_extracted(tmp_path):
    rows = [{"chosen": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": "hello"}],
             "rejected": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": "go away"}],
             "score_chosen": 8.0, "score_rejected": 2.0} for i in range(10)]
    data = load_preference_data(cfg(write_jsonl(tmp_path / "uf.jsonl", rows)))
    assert data.format == "conversational-implicit"
    assert data.train[0]["prompt"][0]["role"] == "user" and len(data.train[0]["chosen"]) == 1


def test_prompt_column_null_means_no_prompt_column_and_the_format_report_says_so(tmp_path):
    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text(f"models: [{{name: m, huggingface_id: x}}]\ndataset:\n  name: {HH}\n  prompt_column: null\n"
                         "  validation_split: 0.0\n  max_samples: null\n")
    config = load_config(yaml_path)  # YAML null is accepted (it used to be "Input should be a valid string")
    assert config.dataset.prompt_column is None
    data = load_preference_data(config, tokenizer_has_chat_template=False)
    assert data.format == "implicit" and data.train[0]["prompt"].endswith("\n\nAssistant:")
    assert any("prompt column: none (dataset.prompt_column: null)" in n for n in data.notes), data.notes
    # conversational message lists without a prompt column: the prompt is the shared leading messages
    rows = [{"chosen": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": "hello"}],
             "rejected": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": "no"}]}
            for i in range(6)]
    conv = load_preference_data(cfg(write_jsonl(tmp_path / "conv.jsonl", rows), prompt_column=None))
    assert conv.format == "conversational-implicit"
    # the default name, absent from the data, is reported as implicit too (and how to say it explicitly)
    default = load_preference_data(cfg(HH), tokenizer_has_chat_template=False)
    assert any("`prompt_column: null` says so explicitly" in n for n in default.notes), default.notes


def test_a_configured_prompt_column_that_is_missing_is_an_error_with_a_suggestion(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", EXPLICIT)
    with pytest.raises(DataError) as info:
        load_preference_data(cfg(path, prompt_column="promt"))
    message = str(info.value)
    assert "dataset.prompt_column: 'promt' not found" in message and "Did you mean 'prompt'?" in message
    assert "prompt_column: null" in message


def test_custom_columns_are_mapped_and_reported(tmp_path):
    rows = [{"question": f"q{i}", "response_j": f"good {i}", "response_k": f"bad {i}"} for i in range(10)]
    path = write_jsonl(tmp_path / "se.jsonl", rows)
    with pytest.raises(DataError) as info:
        load_preference_data(cfg(path))
    assert "response_j" in str(info.value) and "chosen_column: response_j" in str(info.value)
    data = load_preference_data(cfg(path, prompt_column="question", chosen_column="response_j",
                                    rejected_column="response_k"))
    assert "custom columns mapped: question -> prompt" in " ".join(data.notes)


def test_bad_rows_are_counted_and_dropped_with_the_reason(tmp_path):
    rows = EXPLICIT + [{"prompt": "p", "chosen": "same", "rejected": "same"},
                       {"prompt": "p", "chosen": "", "rejected": "x"},
                       {"prompt": "p", "chosen": None, "rejected": "x"}]
    data = load_preference_data(cfg(write_jsonl(tmp_path / "d.jsonl", rows)), tokenizer_has_chat_template=False)
    assert len(data.train) == 20
    assert data.dropped == {"chosen identical to rejected": 1, "empty chosen or rejected": 1, "null value": 1}


def test_max_samples_and_validation_split_are_seeded(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", EXPLICIT)
    a = load_preference_data(cfg(path, max_samples=10, validation_split=0.2), False)
    b = load_preference_data(cfg(path, max_samples=10, validation_split=0.2), False)
    assert (len(a.train), len(a.eval)) == (8, 2)
    assert a.train["prompt"] == b.train["prompt"] and a.fingerprint == b.fingerprint


@pytest.mark.parametrize("ext", [".jsonl.gz", ".parquet", ".csv", ".json"])
def test_local_file_formats_load(tmp_path, ext):
    import pandas as pd

    path = tmp_path / f"d{ext}"
    frame = pd.DataFrame(EXPLICIT)
    if ext == ".jsonl.gz":
        with gzip.open(path, "wt") as f:
            f.writelines(json.dumps(r) + "\n" for r in EXPLICIT)
    elif ext == ".parquet":
        frame.to_parquet(path)
    elif ext == ".csv":
        frame.to_csv(path, index=False)
    else:
        path.write_text(json.dumps(EXPLICIT))
    assert len(load_preference_data(cfg(path), False).train) == 20


def test_missing_file_and_not_jsonl_give_clear_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_preference_data(cfg(tmp_path / "nope.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text("this is not json\n")
    with pytest.raises(DataError, match="JSON lines"):
        load_preference_data(cfg(bad))


def test_tokenize_pair_matches_the_ids_trl_trains_on(tiny_llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    for as_chat in (True, False):
        data = load_preference_data(cfg(HH, max_samples=6, chat_template="always" if as_chat else "never"), as_chat)
        args = DPOConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, bf16=False, max_length=None)
        trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=data.train, processing_class=tok)
        for raw, prepared in zip(data.train, trainer.train_dataset):
            assert tokenize_pair(tok, raw) == {k: prepared[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")}


def test_embedded_task_families_are_picked_with_dataset_subset():
    config = load_config(data={"models": [{"name": "m", "huggingface_id": "embedded:smollm2-135m-instruct"}],
                               "dataset": {"name": "embedded:instruct-tasks", "subset": "capital, plain_question",
                                           "max_samples": None, "validation_split": 0.0}})
    data = load_preference_data(config)
    assert set(data.train["family"]) == set(data.heldout["family"]) == {"capital", "plain_question"}

    from dpokit.evaluate import heldout_prompts

    prompts, specs = heldout_prompts(config, 1000)
    assert prompts == list(data.heldout["prompt"])  # evaluation judges the very held-out set of the run

    bad = config.model_copy(update={"dataset": config.dataset.model_copy(update={"subset": "capital,jsn"})})
    with pytest.raises(DataError, match=r"dataset.subset: unknown task families \['jsn'\].*did you mean json"):
        load_preference_data(bad)
