"""Reference log-prob cache: computed once, reused when only beta/loss/lr change, recomputed when an input changes.

Real TRL trainers on a tiny Llama; "computed" vs "reused" is observed by counting forward passes
of the model while the trainer is built (TRL's precompute pass runs in its constructor).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpokit.config import load_config

ROWS = [{"prompt": f"What is {a} + {b}? Reply with just the number.", "chosen": str(a + b),
         "rejected": f"Sure! {a} plus {b} equals {a + b + 1}, because addition combines the numbers."}
        for a in range(4) for b in range(3)]


@pytest.fixture
def cache(tmp_path, monkeypatch, tiny_llama_dir):
    """An empty dpokit cache for this test (set after the session's model fixtures exist)."""
    root = tmp_path / "cache"
    monkeypatch.setenv("DPOKIT_CACHE", str(root))
    monkeypatch.delenv("DPOKIT_REF_CACHE", raising=False)
    return root / "ref_logps"


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config_for(model_dir, data_path, out: Path, post_training=None, training=None, lora=None):
    return load_config(data={
        "models": [{"name": "tiny", "huggingface_id": str(model_dir)}],
        "dataset": {"name": str(data_path), "validation_split": 0.0, "max_samples": None},
        "post_training": {"use_ref_model": False, "precompute_ref_log_probs": True, **(post_training or {})},
        "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], **(lora or {})},
        "training": {"output_dir": str(out / "runs"), "max_steps": 2, "per_device_train_batch_size": 4,
                     "gradient_accumulation_steps": 1, "learning_rate": 1e-3, "warmup_steps": 0,
                     "logging_steps": 1, "save_steps": 2, "gradient_checkpointing": False,
                     "max_seq_length": 128, "max_prompt_length": 64, "max_completion_length": 32,
                     **(training or {})},
        "logging": {"report_to": ["none"], "logging_dir": str(out / "logs")},
        "evaluation": {"enabled": False},
        "seed": 0,
    })


def build(config, tmp_path: Path):
    """(trainer, forward passes of the model during construction) through dpokit's build_trainer."""
    from transformers import set_seed

    from dpokit.data import load_preference_data
    from dpokit.models import load_model, load_tokenizer
    from dpokit.trainers import build_trainer

    spec = config.models[0]
    tokenizer = load_tokenizer(spec.huggingface_id)
    data = load_preference_data(config, tokenizer.chat_template is not None)
    set_seed(config.seed)
    model = load_model(spec.huggingface_id)
    calls = []
    model.model.embed_tokens.register_forward_hook(lambda *a: calls.append(1))
    run_dir = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
    run_dir.mkdir()
    trainer = build_trainer(config, model=model, tokenizer=tokenizer, data=data, run_dir=run_dir)
    return trainer, len(calls)


def ref_logps(trainer) -> list[float]:
    """The reference log-probs TRL will train with: chosen then rejected, row by row."""
    ds = trainer.train_dataset
    return list(ds["ref_chosen_logps"]) + list(ds["ref_rejected_logps"])


def test_another_beta_loss_rank_or_seed_reuses_the_cached_reference_logps(tiny_llama_dir, cache, tmp_path):
    data = write_rows(tmp_path / "pairs.jsonl", ROWS)
    first, forwards = build(config_for(tiny_llama_dir, data, tmp_path), tmp_path)
    assert first.dpokit_ref_cache["train"]["status"] == "miss" and forwards > 0
    entry = Path(first.dpokit_ref_cache["train"]["path"])
    assert entry.parent == cache and entry.exists() and entry.with_suffix(".json").exists()

    config = config_for(tiny_llama_dir, data, tmp_path, post_training={"beta": 0.5, "loss_type": "ipo"},
                        training={"learning_rate": 5e-4}, lora={"r": 8, "lora_alpha": 16})
    config.seed = 7
    second, forwards = build(config, tmp_path)
    assert second.dpokit_ref_cache["train"] == {"status": "hit", "path": str(entry)}
    assert forwards == 0  # no reference forward pass at all
    assert ref_logps(second) == ref_logps(first)
    second.train()  # TRL trains on the cached columns
    assert second.state.global_step == 2


def test_cached_logps_equal_a_fresh_computation(tiny_llama_dir, cache, tmp_path, monkeypatch):
    data = write_rows(tmp_path / "pairs.jsonl", ROWS)
    config = config_for(tiny_llama_dir, data, tmp_path)
    build(config, tmp_path)
    cached, _ = build(config, tmp_path)
    monkeypatch.setenv("DPOKIT_REF_CACHE", "off")
    fresh, forwards = build(config, tmp_path)
    assert cached.dpokit_ref_cache["train"]["status"] == "hit"
    assert fresh.dpokit_ref_cache["train"] == {"status": "off"} and forwards > 0
    assert ref_logps(cached) == pytest.approx(ref_logps(fresh), abs=1e-5)


CHANGES = {
    "data": dict(rows=ROWS[:-1] + [{**ROWS[-1], "rejected": "Sure! The answer is 7."}]),
    "max_completion_length": dict(training={"max_completion_length": 6}),
    "max_prompt_length": dict(training={"max_prompt_length": 20}),
    "max_seq_length": dict(training={"max_seq_length": 70}),
    "precision": dict(training={"bf16": True}),
    "model": dict(model_seed=1),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_changing_an_input_of_the_reference_logps_invalidates_the_entry(
        change, tiny_llama_dir, tiny_models_root, cache, tmp_path):
    from dpokit.testing import build_tiny_model

    data = write_rows(tmp_path / "pairs.jsonl", ROWS)
    base, _ = build(config_for(tiny_llama_dir, data, tmp_path), tmp_path)
    spec = CHANGES[change]
    model_dir = tiny_llama_dir
    if "model_seed" in spec:
        model_dir = build_tiny_model(tmp_path / "other", arch="llama", seed=spec["model_seed"],
                                     tokenizer_dir=tiny_llama_dir)
    if "rows" in spec:
        data = write_rows(tmp_path / "changed.jsonl", spec["rows"])
    changed, forwards = build(config_for(model_dir, data, tmp_path, training=spec.get("training")), tmp_path)
    assert changed.dpokit_ref_cache["train"]["status"] == "miss" and forwards > 0
    assert changed.dpokit_ref_cache["train"]["path"] != base.dpokit_ref_cache["train"]["path"]
    assert len(list(cache.glob("*.parquet"))) == 2


def test_an_unreadable_entry_is_recomputed_and_replaced(tiny_llama_dir, cache, tmp_path):
    data = write_rows(tmp_path / "pairs.jsonl", ROWS)
    config = config_for(tiny_llama_dir, data, tmp_path)
    first, _ = build(config, tmp_path)
    entry = Path(first.dpokit_ref_cache["train"]["path"])
    entry.write_bytes(b"not parquet")
    second, forwards = build(config, tmp_path)
    assert second.dpokit_ref_cache["train"]["status"] == "miss" and forwards > 0
    assert ref_logps(second) == ref_logps(first)
    third, forwards = build(config, tmp_path)
    assert third.dpokit_ref_cache["train"]["status"] == "hit" and forwards == 0


def test_repeated_training_runs_share_the_entry(tiny_llama_dir, cache, tmp_path, capsys):
    from dpokit.run import train

    data = write_rows(tmp_path / "pairs.jsonl", ROWS)
    for beta in (0.1, 0.3):
        [result] = train(config_for(tiny_llama_dir, data, tmp_path, post_training={"beta": beta}))
        assert result.status == "completed", result.error
    out = capsys.readouterr().out
    assert out.count("computed and cached") == 1 and out.count("reused from the cache") == 1
    assert len(list(cache.glob("*.parquet"))) == 1


def test_kto_reference_logps_are_cached_too(tiny_llama_dir, cache, tmp_path):
    data = write_rows(tmp_path / "pairs.jsonl", ROWS)
    first, _ = build(config_for(tiny_llama_dir, data, tmp_path, post_training={"method": "kto"}), tmp_path)
    second, forwards = build(config_for(tiny_llama_dir, data, tmp_path, post_training={"method": "kto", "beta": 0.3}),
                             tmp_path)
    assert first.dpokit_ref_cache["train"]["status"] == "miss"
    assert second.dpokit_ref_cache["train"]["status"] == "hit" and forwards == 0
    assert {"ref_logps", "ref_KL_logps"} <= set(second.train_dataset.column_names)
    assert second.train_dataset["ref_KL_logps"] == first.train_dataset["ref_KL_logps"]
