"""The config schema: every guide key, strictness, all problems at once, overrides, rules."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from dpokit.config import Config, load_config, parse_override, schema_reference
from dpokit.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
MODELS = [{"name": "m", "huggingface_id": "embedded:smollm2-135m-instruct"}]


def problems_of(data=None, overrides=None, path=None) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, data=data, overrides=overrides)
    return {p.where: f"{p.message} | {p.hint}" for p in info.value.problems}


def guide_keys() -> set[str]:
    """Every `section.key` of the config guide's YAML blocks."""
    keys = set()
    text = (ROOT / "tests" / "guide_keys.txt").read_text()
    for line in text.split():
        keys.add(line.strip())
    return keys


def test_every_guide_key_is_a_schema_field():
    for dotted in guide_keys():
        section, key = dotted.split(".")
        model = Config.model_fields[section].annotation
        model = getattr(model, "__args__", (model,))[0]
        assert key in model.model_fields, f"{dotted} from the guide is missing in the schema"
        assert model.model_fields[key].description, f"{dotted} has no description"


def test_guide_configs_validate():
    for name in ("dpo_example", "simple_dpo", "multi_model_dpo", "quickstart"):
        config = load_config(ROOT / "configs" / f"{name}.yaml")
        assert config.models


def test_dpo_example_sets_every_guide_key_explicitly():
    data = yaml.safe_load((ROOT / "configs" / "dpo_example.yaml").read_text())
    for dotted in guide_keys():
        section, key = dotted.split(".")
        if section == "models":
            assert key in data["models"][0]
        else:
            assert key in data[section], f"dpo_example.yaml does not show {dotted}"


def test_unknown_key_suggests_closest_name():
    found = problems_of({"models": MODELS, "training": {"lerning_rate": 1e-6}})
    assert "training.lerning_rate" in found
    assert "did you mean 'learning_rate'" in found["training.lerning_rate"]


def test_unknown_section_is_refused_with_the_list_of_sections():
    found = problems_of({"models": MODELS, "trainig": {}})
    assert "did you mean 'training'" in found["trainig"]


def test_all_problems_are_reported_together_with_dotted_paths():
    found = problems_of({"models": MODELS, "training": {"learning_rate": "fast", "per_device_train_batch_size": 0},
                         "lora": {"r": -1, "bias": "some"}, "post_training": {"method": "orpo", "loss_type": "hinge"}})
    assert {"training.learning_rate", "training.per_device_train_batch_size", "lora.r", "lora.bias",
            "post_training.loss_type"} <= set(found)


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("models:\n  - name: m\n    huggingface_id: x\ntraining:\n  learning_rate: 5e-7\n")
    assert yaml.safe_load(path.read_text())["training"]["learning_rate"] == "5e-7"  # YAML 1.1 reads a string
    assert load_config(path).training.learning_rate == pytest.approx(5e-7)


def test_overrides_take_precedence_over_yaml_and_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("models:\n  - name: m\n    huggingface_id: x\ntraining:\n  learning_rate: 1.0e-6\n")
    assert load_config(path).training.warmup_steps == 100  # schema default
    assert load_config(path).training.learning_rate == pytest.approx(1e-6)  # YAML
    key, value = parse_override("training.learning_rate=3e-6")
    assert load_config(path, overrides={key: value}).training.learning_rate == pytest.approx(3e-6)
    assert load_config(path, overrides={"models.0.name": "other"}).models[0].name == "other"


def test_override_with_unknown_key_is_refused():
    found = problems_of({"models": MODELS}, overrides={"training.learnin_rate": 1})
    assert "did you mean 'learning_rate'" in found["training.learnin_rate"]


def test_empty_models_list_is_refused():
    found = problems_of({"models": []})
    assert "empty" in found["models"]


@pytest.mark.parametrize("section, values, where, words", [
    ("post_training", {"method": "orpo", "loss_type": "hinge"}, "post_training.loss_type", "no loss_type"),
    ("post_training", {"method": "ipo", "loss_type": "sigmoid"}, "post_training.loss_type", "accepts: ipo"),
    ("post_training", {"loss_type": "kto_pair"}, "post_training.loss_type", "method: kto"),
    ("post_training", {"loss_type": "aot_pair"}, "post_training.loss_type", "aot_unpaired"),
    ("post_training", {"label_smoothing": 0.1}, "post_training.label_smoothing", "would be ignored"),
    ("post_training", {"loss_type": "robust", "label_smoothing": 0.6}, "post_training.label_smoothing", "[0, 0.5)"),
    ("post_training", {"loss_type": "exo_pair"}, "post_training.label_smoothing", "> 0"),
    ("post_training", {"beta": 0}, "post_training.beta", "greater than 0"),
    ("post_training", {"use_ref_model": False, "ref_model_id": "x"}, "post_training.ref_model_id", "use_ref_model"),
    ("post_training", {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0]}, "post_training.loss_weights", "weights"),
    ("training", {"fp16": True, "bf16": True}, "training.fp16", "pick one"),
    ("training", {"max_prompt_length": 600}, "training.max_prompt_length", "no room"),
    ("dataset", {"validation_split": 1.5}, "dataset.validation_split", "less than 1"),
    ("finetuning", {"load_best_model_at_end": True}, "finetuning.load_best_model_at_end", "validation_split"),
    ("finetuning", {"early_stopping_patience": 2}, "finetuning.early_stopping_patience", "evaluation"),
    ("finetuning", {"metric_for_best_model": "eval_rewards/acuracies"}, "finetuning.metric_for_best_model",
     "eval_rewards/accuracies"),
    ("finetuning", {"resume_from_checkpoint": "/nonexistent/checkpoint-3"}, "finetuning.resume_from_checkpoint",
     "does not exist"),
    ("logging", {"report_to": ["tensorbord"]}, "logging.report_to", "tensorboard"),
    ("lora", {"task_type": "SEQ_CLS"}, "lora.task_type", "CAUSAL_LM"),
    ("training", {"optim": "adamw"}, "training.optim", "adamw"),
])
def test_cross_field_and_value_rules_name_the_field(section, values, where, words):
    data = {"models": MODELS, "dataset": {"validation_split": 0.0}, section: values}
    if section == "dataset":
        data["dataset"] = values
    found = problems_of(data)
    assert where in found, found
    assert words in found[where]


def test_wandb_without_key_or_offline_mode_is_refused(monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    found = problems_of({"models": MODELS, "logging": {"report_to": ["wandb"]}})
    assert "WANDB_MODE=offline" in found["logging.report_to"]


def test_label_smoothing_is_accepted_where_trl_uses_it():
    config = load_config(data={"models": MODELS, "post_training": {"loss_type": "robust", "label_smoothing": 0.1}})
    assert config.post_training.loss_types == ["robust"]


def test_method_defaults_resolve_the_loss_type():
    assert load_config(data={"models": MODELS, "post_training": {"method": "ipo"}}).post_training.loss_types == ["ipo"]
    assert load_config(data={"models": MODELS, "post_training": {"method": "kto"}}).post_training.loss_types == ["kto"]
    assert load_config(data={"models": MODELS, "post_training": {"method": "orpo"}}).post_training.loss_types == []


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("models:\n  - name: m\n   huggingface_id: x\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert re.search(r"bad\.yaml:\d+:\d+", str(info.value))


def test_schema_reference_lists_every_key():
    table = schema_reference()
    for dotted in guide_keys():
        section, key = dotted.split(".")
        assert f"`{section}.{key}`" in table


X86_BF16 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
X86_PLAIN = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n"
ARM_BF16 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


def test_cpu_bf16_support_is_read_from_cpuinfo_flags():
    from dpokit.machine import cpu_has_native_bf16

    assert cpu_has_native_bf16(X86_BF16) is True
    assert cpu_has_native_bf16(X86_PLAIN) is False
    assert cpu_has_native_bf16(ARM_BF16) is True
    assert cpu_has_native_bf16("model name\t: some cpu mentioning bf16 in its name\n") is False


@pytest.mark.parametrize("bf16, native, expected", [
    (True, False, "emulated and usually much slower than fp32 (this CPU has none)"),
    (True, None, "emulated and usually much slower than fp32; set bf16: false"),
    (True, True, "native bfloat16 instructions: faster than fp32"),
    (False, True, "bf16: true can train about 2x faster"),
    (False, False, None),
])
def test_bf16_advice_on_cpu_follows_what_the_cpu_can_do(bf16, native, expected):
    from dpokit.machine import DeviceInfo
    from dpokit.rules import advise

    config = load_config(data={"models": [{"name": "m", "huggingface_id": "org/m"}],
                               "training": {"bf16": bf16}})
    notes = [n for n in advise(config, DeviceInfo(cuda_devices=0, bf16_ok=False, cpu_bf16_native=native))
             if "bf16" in n or "bfloat16" in n]
    if expected is None:
        assert notes == []
    else:
        assert len(notes) == 1 and expected in notes[0], notes


def test_readme_config_table_is_the_schema():
    """The README's key table is generated from the schema (dpokit.config.schema_reference): keep it so."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert schema_reference() in readme, "regenerate the README's config table from schema_reference()"


def test_optimizer_names_read_without_importing_transformers_are_the_ones_it_accepts():
    from transformers.training_args import OptimizerNames

    from dpokit.config import optimizer_names

    assert optimizer_names() == tuple(o.value for o in OptimizerNames)
    with pytest.raises(ConfigError, match="unknown optimizer 'adamw_torh'. Did you mean 'adamw_torch'"):
        load_config(data={"training": {"optim": "adamw_torh"}})
