"""The scaling sections (dpokit/scaling.py) and their rules (dpokit/scaling_rules.py): strict schema,
resolved values, and one test per refusal with the field path and fix it names."""

from __future__ import annotations

import importlib.util
import json

import pytest
from pydantic import ValidationError

from dpokit.scaling import (DistributedSection, ModelLoadingSection, QuantizationSection, resolve_compute_dtype,
                            resolve_fsdp_version, resolve_model_dtype, resolve_quant_storage, resolve_strategy)
from dpokit.scaling_rules import (checkpoint_precision_warnings, device_scaling_problems, scaling_problems,
                                  scaling_warnings)


def problems(dist=None, quant=None, loading=None, *, use_ddp=False, fp16=False, bf16=True):
    return scaling_problems(DistributedSection(**(dist or {})), QuantizationSection(**(quant or {})),
                            ModelLoadingSection(**(loading or {})), use_ddp=use_ddp, fp16=fp16, bf16=bf16)


def warnings_for(dist=None, quant=None, *, use_ddp=False, world_size=2, use_ref_model=True, ref_model_id=None,
                 precompute=False, optim="adamw_torch", use_dora=False):
    return scaling_warnings(DistributedSection(**(dist or {})), QuantizationSection(**(quant or {})),
                            use_ddp=use_ddp, world_size=world_size, method_uses_reference=True,
                            use_ref_model=use_ref_model, ref_model_id=ref_model_id,
                            precompute_ref_log_probs=precompute, optim=optim, use_dora=use_dora)


def where(found) -> list[str]:
    return [p.where for p in found]


@pytest.mark.parametrize("section", [DistributedSection, QuantizationSection, ModelLoadingSection])
def test_sections_refuse_unknown_keys_and_describe_every_field(section):
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        section(no_such_key=1)
    for name, field in section.model_fields.items():
        assert field.description and len(field.description) > 20, name


def test_the_defaults_change_nothing_for_an_existing_config():
    assert problems() == []
    assert resolve_strategy(DistributedSection(), use_ddp=False) == "single"
    assert resolve_strategy(DistributedSection(), use_ddp=True) == "ddp"
    assert resolve_strategy(DistributedSection(num_machines=2, main_process_ip="10.0.0.1"), use_ddp=False) == "ddp"
    assert QuantizationSection().load_in == "none"


@pytest.mark.parametrize("dtype, fp16, bf16, on_gpu, expected", [
    ("auto", False, True, True, "bf16"), ("auto", True, False, True, "fp16"), ("auto", True, False, False, "fp32"),
    ("auto", False, False, True, "fp32"), ("fp16", False, False, True, "fp16"), ("bf16", False, False, False, "bf16"),
])
def test_model_dtype_auto_follows_the_precision_flags(dtype, fp16, bf16, on_gpu, expected):
    assert resolve_model_dtype(dtype, fp16=fp16, bf16=bf16, on_gpu=on_gpu) == expected


def test_4bit_storage_and_fsdp_version_follow_the_strategy():
    q = QuantizationSection(load_in="4bit")
    assert resolve_quant_storage(q, "zero3", "bf16") == "bf16" and resolve_quant_storage(q, "fsdp", "bf16") == "bf16"
    assert resolve_quant_storage(q, "ddp", "bf16") == "uint8" and resolve_quant_storage(q, "zero2", "fp16") == "uint8"
    assert resolve_compute_dtype(q, "bf16") == "bf16"
    assert resolve_fsdp_version(DistributedSection(strategy="fsdp"), q) == 1
    assert resolve_fsdp_version(DistributedSection(strategy="fsdp"), QuantizationSection()) == 2


def test_8bit_with_weight_sharding_is_refused():
    for strategy in ("fsdp", "zero3"):
        found = problems({"strategy": strategy}, {"load_in": "8bit"})
        assert where(found) == ["quantization.load_in"], found
        assert "int8" in found[0].message and "4bit" in found[0].hint
    assert problems({"strategy": "zero2"}, {"load_in": "8bit"}) == []
    assert problems({"strategy": "ddp"}, {"load_in": "8bit"}) == []


def test_4bit_with_fsdp2_is_refused_and_fsdp1_is_the_default():
    found = problems({"strategy": "fsdp", "fsdp_version": 2}, {"load_in": "4bit"})
    assert where(found) == ["distributed.fsdp_version"] and "fsdp_version: 1" in found[0].hint
    assert problems({"strategy": "fsdp"}, {"load_in": "4bit"}) == []
    assert problems({"strategy": "zero3"}, {"load_in": "4bit"}) == []


def test_sharded_4bit_weights_must_be_stored_in_the_model_dtype():
    found = problems({"strategy": "zero3"}, {"load_in": "4bit", "quant_storage": "uint8"})
    assert where(found) == ["quantization.quant_storage"] and "bf16" in found[0].message
    assert problems({"strategy": "ddp"}, {"load_in": "4bit", "quant_storage": "uint8"}) == []


def test_multi_node_needs_an_address_and_a_rank_below_the_machine_count():
    found = problems({"num_machines": 2})
    assert where(found) == ["distributed.main_process_ip"]
    found = problems({"num_machines": 2, "machine_rank": 2, "main_process_ip": "10.0.0.1"})
    assert where(found) == ["distributed.machine_rank"] and "0 .. 1" in found[0].hint
    assert problems({"num_machines": 2, "machine_rank": 1, "main_process_ip": "10.0.0.1"}) == []


def test_offload_and_fsdp_version_need_the_strategy_they_belong_to():
    assert where(problems({"cpu_offload": True})) == ["distributed.cpu_offload"]
    assert where(problems({"strategy": "zero3", "fsdp_version": 1})) == ["distributed.fsdp_version"]


def test_a_users_accelerate_file_is_used_as_is(tmp_path):
    found = problems({"accelerate_config": str(tmp_path / "missing.yaml")})
    assert where(found) == ["distributed.accelerate_config"]
    mine = tmp_path / "mine.yaml"
    mine.write_text("distributed_type: MULTI_GPU\n")
    assert problems({"accelerate_config": str(mine)}) == []
    found = problems({"accelerate_config": str(mine), "strategy": "zero3", "cpu_offload": True})
    assert where(found) == ["distributed.strategy", "distributed.cpu_offload"]


def test_a_deepspeed_json_must_exist_parse_and_match_the_stage(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    assert problems({"strategy": "zero3", "deepspeed_config": str(ds)}) == []
    found = problems({"strategy": "zero2", "deepspeed_config": str(ds)})
    assert where(found) == ["distributed.deepspeed_config"] and "zero3" in found[0].hint
    assert where(problems({"strategy": "fsdp", "deepspeed_config": str(ds)})) == ["distributed.strategy"]
    ds.write_text("{not json")
    assert where(problems({"strategy": "zero3", "deepspeed_config": str(ds)})) == ["distributed.deepspeed_config"]


def test_two_half_precisions_at_once_are_refused():
    assert where(problems(loading={"dtype": "fp16"}, bf16=True)) == ["model_loading.dtype"]
    assert where(problems(loading={"dtype": "bf16"}, fp16=True, bf16=False)) == ["model_loading.dtype"]
    assert problems(loading={"dtype": "bf16"}, bf16=False) == []  # bf16 weights, fp32 autocast-free training


def test_quantization_details_without_quantization_would_be_ignored_and_are_refused():
    assert where(problems(quant={"quant_type": "fp4"})) == ["quantization.quant_type"]
    assert where(problems(quant={"load_in": "8bit", "quant_type": "fp4"})) == ["quantization.quant_type"]


def test_reference_warnings_say_how_each_strategy_holds_it():
    text = {s: " ".join(p.message for p in warnings_for({"strategy": s})) for s in ("zero3", "zero2", "ddp", "fsdp")}
    assert "shards the separate reference" in text["zero3"] and "trl#669" in text["zero3"]
    assert "full reference copy" in text["zero2"] and "full reference copy" in text["ddp"]
    assert "prepare_fsdp" in text["fsdp"]
    hints = [p.hint for p in warnings_for({"strategy": "zero3"})]
    assert all(h.startswith("with a LoRA policy, use_ref_model: false") for h in hints)
    assert warnings_for({"strategy": "zero3"}, use_ref_model=False) == []
    assert warnings_for({"strategy": "zero3"}, precompute=True) == []


def test_a_quantized_run_is_told_not_to_load_a_second_quantized_reference():
    found = warnings_for(quant={"load_in": "4bit"})
    assert any("second 4bit copy" in p.message for p in found)
    assert not any("second" in p.message for p in warnings_for(quant={"load_in": "4bit"}, ref_model_id="org/other"))


def test_documented_trouble_spots_are_warned_about():
    assert where(warnings_for({"strategy": "fsdp"}, {"load_in": "4bit"}, use_ref_model=False,
                              optim="paged_adamw_8bit")) == ["training.optim"]
    assert where(warnings_for({"strategy": "zero3"}, world_size=1, use_ref_model=False)) == ["distributed.strategy"]
    assert where(warnings_for({"strategy": "zero2", "cpu_offload": True}, use_ref_model=False)) == \
        ["distributed.cpu_offload"]
    assert where(warnings_for(quant={"load_in": "8bit"}, use_ref_model=False, use_dora=True)) == ["lora.use_dora"]


def test_sharding_strategies_need_gpus_here_and_ddp_does_not():
    for strategy in ("fsdp", "zero2", "zero3"):
        found = device_scaling_problems(DistributedSection(strategy=strategy), ModelLoadingSection(), use_ddp=True,
                                        cuda_devices=0, on_missing="stop")
        assert where(found) == ["distributed.strategy"] and "accelerate 1.15" in found[0].message
    assert device_scaling_problems(DistributedSection(strategy="ddp"), ModelLoadingSection(), use_ddp=True,
                                   cuda_devices=0, on_missing="stop") == []
    assert device_scaling_problems(DistributedSection(strategy="zero3"), ModelLoadingSection(), use_ddp=True,
                                   cuda_devices=8, on_missing="stop") == []


def test_flash_attention_needs_a_gpu_and_its_package():
    loading = ModelLoadingSection(attn_implementation="flash_attention_2")
    cpu = device_scaling_problems(DistributedSection(), loading, use_ddp=False, cuda_devices=0, on_missing="stop")
    assert where(cpu) == ["model_loading.attn_implementation"]
    # flash-attn is not installed here (it builds against CUDA): the real package check reports it
    assert importlib.util.find_spec("flash_attn") is None
    gpu = device_scaling_problems(DistributedSection(), loading, use_ddp=False, cuda_devices=1, on_missing="stop")
    assert "flash-attn" in gpu[0].hint and "is not installed" in gpu[0].message


def test_fp16_on_a_model_published_in_bfloat16_is_warned_about():
    assert where(checkpoint_precision_warnings("bfloat16", "fp32", fp16=True)) == ["training.fp16"]
    assert checkpoint_precision_warnings("float16", "fp16", fp16=True) == []
    assert checkpoint_precision_warnings("bfloat16", "bf16", fp16=False) == []
