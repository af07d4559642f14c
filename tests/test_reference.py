"""The reference model: freed once its log-probs are precomputed; cached by what determines its log-probs."""

from __future__ import annotations

import json
import shutil
import weakref
from pathlib import Path

import pytest
import torch

from dpokit.refcache import INCIDENTAL_CONFIG_FIELDS

ROWS = [{"prompt": f"What is {a} + {b}? Reply with just the number.", "chosen": str(a + b),
         "rejected": f"Sure! {a} plus {b} equals {a + b + 1}, because addition combines the numbers."}
        for a in range(4) for b in range(3)]


@pytest.fixture
def cache(tmp_path, monkeypatch, tiny_llama_dir):
    root = tmp_path / "cache"
    monkeypatch.setenv("DPOKIT_CACHE", str(root))
    monkeypatch.delenv("DPOKIT_REF_CACHE", raising=False)
    return root / "ref_logps"


def write_rows(path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def changed_value(value):
    """A different value of the same kind (what another save of the same weights might write)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 7
    if isinstance(value, float):
        return value * 3 + 0.5
    if isinstance(value, str):
        return {"float32": "bfloat16", "bfloat16": "float16"}.get(value, value + "-copy")
    if isinstance(value, list):
        return [*value, "OtherForCausalLM"]
    if isinstance(value, dict):
        return {**value, "7": "LABEL_7"} if value else {"0": "NEGATIVE", "1": "POSITIVE"}
    return "set"


def copy_with_incidental_changes(model_dir: Path, out: Path) -> list[str]:
    """A copy of the model whose config.json differs from the original in every incidental field it has
    (plus the token-id, dtype and naming fields every config can carry); returns the fields changed."""
    shutil.copytree(model_dir, out)
    config = json.loads((out / "config.json").read_text())
    defaults = {"architectures": ["LlamaForCausalLM"], "dtype": "float32", "use_cache": True, "bos_token_id": 1,
                "eos_token_id": 2, "unk_token_id": 0, "initializer_range": 0.02, "_name_or_path": str(model_dir),
                "id2label": {}, "problem_type": "regression", "tokenizer_class": "GPT2TokenizerFast"}
    changed = []
    for field in sorted(INCIDENTAL_CONFIG_FIELDS):
        if field in config or field in defaults:
            config[field] = changed_value(config.get(field, defaults.get(field)))
            changed.append(field)
    (out / "config.json").write_text(json.dumps(config))
    return changed


def logits(model_dir) -> torch.Tensor:
    from dpokit.models import load_model

    model = load_model(str(model_dir)).eval()
    ids = torch.tensor([[5, 17, 301, 42, 9, 1200, 77, 3]])
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox"])
def test_incidental_config_fields_cannot_change_the_logits(arch, tiny_llama_dir, tiny_gpt2_dir, tiny_neox_dir,
                                                           tmp_path):
    from dpokit.refcache import logit_config
    from transformers import AutoConfig

    model_dir = {"llama": tiny_llama_dir, "gpt2": tiny_gpt2_dir, "gpt_neox": tiny_neox_dir}[arch]
    changed = copy_with_incidental_changes(model_dir, tmp_path / "copy")
    assert len(changed) >= 10, changed
    assert torch.equal(logits(model_dir), logits(tmp_path / "copy"))  # bit for bit
    original, copy = (AutoConfig.from_pretrained(d) for d in (model_dir, tmp_path / "copy"))
    assert original.to_dict() != copy.to_dict() and logit_config(original) == logit_config(copy)


def build_with_reference(config, reference_dir, tmp_path):
    """A trainer built as `dpokit train` builds it, with a separate reference model loaded from `reference_dir`."""
    from transformers import set_seed

    from dpokit.data import load_preference_data
    from dpokit.models import load_model, load_tokenizer
    from dpokit.trainers import build_trainer

    spec = config.models[0]
    tokenizer = load_tokenizer(spec.huggingface_id)
    data = load_preference_data(config, tokenizer.chat_template is not None)
    set_seed(config.seed)
    run_dir = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
    return build_trainer(config, model=load_model(spec.huggingface_id), tokenizer=tokenizer, data=data,
                         run_dir=run_dir, ref_model=load_model(str(reference_dir)))


def test_a_reference_whose_config_differs_only_in_incidental_fields_hits_the_cache_and_other_weights_miss(
        tiny_llama_dir, cache, tmp_path):
    from dpokit.testing import build_tiny_model, small_run_config

    data = write_rows(tmp_path / "pairs.jsonl")
    copy_with_incidental_changes(tiny_llama_dir, tmp_path / "same-weights")
    other = build_tiny_model(tmp_path / "other-weights", arch="llama", seed=1, tokenizer_dir=tiny_llama_dir)

    def config_with(reference):
        return small_run_config(tiny_llama_dir, data, tmp_path, post_training={
            "use_ref_model": True, "ref_model_id": str(reference), "precompute_ref_log_probs": True})

    first = build_with_reference(config_with(tiny_llama_dir), tiny_llama_dir, tmp_path)
    same = build_with_reference(config_with(tmp_path / "same-weights"), tmp_path / "same-weights", tmp_path)
    different = build_with_reference(config_with(other), other, tmp_path)
    assert first.dpokit_ref_cache["train"]["status"] == "miss"
    assert same.dpokit_ref_cache["train"] == {"status": "hit", "path": first.dpokit_ref_cache["train"]["path"]}
    assert different.dpokit_ref_cache["train"]["status"] == "miss"
    assert list(same.train_dataset["ref_chosen_logps"]) == list(first.train_dataset["ref_chosen_logps"])


@pytest.mark.parametrize("method", ["dpo", "kto"])
def test_a_separate_reference_is_freed_once_its_logps_are_precomputed(method, tiny_llama_dir, pairs_file, cache,
                                                                     tmp_path, monkeypatch, capsys):
    import dpokit.trainers
    from transformers import TrainerCallback

    from dpokit.run import train
    from dpokit.testing import small_run_config

    seen = {}
    build = dpokit.trainers.build_trainer

    class Check(TrainerCallback):  # what the trainer holds while it trains
        def on_step_end(self, args, state, control, **kwargs):
            seen.setdefault("alive_during_training", seen["probe"]() is not None)
            seen.setdefault("attribute", seen["trainer"].ref_model)

    def build_and_watch(*args, **kwargs):
        seen["probe"] = weakref.ref(kwargs["ref_model"])
        trainer = build(*args, **kwargs)
        seen["trainer"] = trainer
        trainer.add_callback(Check())
        return trainer

    monkeypatch.setattr(dpokit.trainers, "build_trainer", build_and_watch)
    config = small_run_config(tiny_llama_dir, pairs_file, tmp_path, dataset={"validation_split": 0.25},
                              post_training={"method": method, "use_ref_model": True,
                                             "precompute_ref_log_probs": True},
                              training={"max_steps": 2, "eval_steps": 1})
    [result] = train(config)
    assert result.status == "completed", result.error
    assert seen["alive_during_training"] is False and seen["attribute"] is None
    summary = json.loads((Path(result.run_dir) / "summary.json").read_text())
    assert summary["reference_released"] is True
    assert "reference model freed once its log-probs were precomputed" in capsys.readouterr().out
    metrics = [json.loads(line) for line in (Path(result.run_dir) / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_loss" in m for m in metrics)  # evaluation reads the precomputed eval log-probs


def test_without_precomputed_logps_the_reference_stays(tiny_llama_dir, pairs_file, cache, tmp_path):
    from dpokit.run import train
    from dpokit.testing import small_run_config

    config = small_run_config(tiny_llama_dir, pairs_file, tmp_path, post_training={"use_ref_model": True},
                              training={"max_steps": 1})
    [result] = train(config)
    assert result.status == "completed", result.error
    assert "reference_released" not in json.loads((Path(result.run_dir) / "summary.json").read_text())
