"""KTO on paired data: dpokit unpairs the pairs so every batch mixes desirable and undesirable rows."""

from __future__ import annotations

import json
from pathlib import Path

from dpokit.methods import unpair_interleaved
from dpokit.run import train
from dpokit.testing import small_run_config


def kto_config(model_dir, data_path, out: Path, **training):
    return small_run_config(model_dir, data_path, out, post_training={"method": "kto"},
                            training={"per_device_train_batch_size": 2, **training})


def test_unpairing_keeps_every_answer_once_and_alternates_labels_in_a_seeded_order():
    from datasets import Dataset

    pairs = Dataset.from_dict({"prompt": [f"p{i}" for i in range(9)], "chosen": [f"c{i}" for i in range(9)],
                               "rejected": [f"r{i}" for i in range(9)], "family": [f"f{i}" for i in range(9)]})
    rows = unpair_interleaved(pairs, seed=0)
    assert len(rows) == 18 and set(rows.column_names) == {"prompt", "completion", "label", "family"}
    assert rows["label"] == [True, False] * 9
    assert sorted(rows["completion"]) == sorted([f"c{i}" for i in range(9)] + [f"r{i}" for i in range(9)])
    for row in rows:  # each answer keeps its own prompt and extra columns
        assert row["completion"][1:] == row["prompt"][1:] == row["family"][1:]
    for i in range(0, 18, 2):  # neighbours come from different pairs
        assert rows[i]["prompt"] != rows[i + 1]["prompt"]
    assert unpair_interleaved(pairs, seed=0)["completion"] == rows["completion"]
    assert unpair_interleaved(pairs, seed=1)["completion"] != rows["completion"]


def test_the_first_batches_of_a_kto_run_contain_both_labels(tiny_llama_dir, pairs_file, tmp_path):
    from dpokit.data import load_preference_data
    from dpokit.models import load_model, load_tokenizer
    from dpokit.trainers import build_trainer

    config = kto_config(tiny_llama_dir, pairs_file, tmp_path)
    tokenizer = load_tokenizer(str(tiny_llama_dir))
    data = load_preference_data(config, tokenizer.chat_template is not None)
    trainer = build_trainer(config, model=load_model(str(tiny_llama_dir)), tokenizer=tokenizer, data=data,
                            run_dir=tmp_path / "run")
    batches = list(trainer.get_train_dataloader())  # the sampler TRL uses: sequential, in dataset order
    assert len(batches) == len(data.train)  # 2 rows per pair, 2 rows per batch
    for batch in batches[:8]:
        labels = batch["label"].tolist()
        assert sorted(labels) == [False, True], labels
        prompt_tokens = (batch["attention_mask"] == 1) & (batch["completion_mask"] == 0)
        prompts = [tuple(ids[keep].tolist()) for ids, keep in zip(batch["input_ids"], prompt_tokens)]
        assert prompts[0] != prompts[1]  # the KL term pairs each prompt with the other row's completion


def test_a_kto_run_logs_both_reward_curves_from_the_first_logging_step(tiny_llama_dir, pairs_file, tmp_path):
    [result] = train(kto_config(tiny_llama_dir, pairs_file, tmp_path, max_steps=3))
    assert result.status == "completed", result.error
    records = [json.loads(line) for line in (Path(result.run_dir) / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert steps and steps[0]["step"] == 1
    for record in steps:
        assert "rewards/chosen" in record and "rewards/rejected" in record and "rewards/margins" in record, record
