"""The scaling sections wired into a run: world size, launch plans from a Config, the dry run's launch and
--plan, how models load (dtype, attention, 4-bit), and runs whose records and exports say how they loaded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from dpokit.cli import main
from dpokit.config import load_config
from dpokit.launch import CONFIG_ENV, plan_for_config
from dpokit.machine import DeviceInfo
from dpokit.schedule import schedule

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "configs" / "scaling").glob("*.yaml"))
BASE = {"models": [{"name": "m", "huggingface_id": "x"}], "logging": {"report_to": ["none"]},
        "training": {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2, "bf16": True}}
CPU = DeviceInfo(cuda_devices=0, bf16_ok=False, cpu_bf16_native=True)


def config_with(**sections):
    data = json.loads(json.dumps(BASE))
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return load_config(data=data)


# ----------------------------------------------------------------------------- world size


@pytest.mark.parametrize("sections, gpus, expected", [
    ({"gpu": {"use_ddp": True}}, 8, 8),  # device_ids null: every visible GPU (was 1: "effective batch 4")
    ({"gpu": {"use_ddp": True, "device_ids": [2, 5]}}, 8, 2),
    ({"gpu": {"use_ddp": False}}, 8, 1),
    ({"distributed": {"strategy": "fsdp"}}, 4, 4),
    ({"distributed": {"strategy": "zero3", "num_machines": 2, "main_process_ip": "10.0.0.1"}}, 8, 16),
    ({"distributed": {"num_machines": 2, "main_process_ip": "10.0.0.1"}}, 8, 16),  # several machines: DDP
    ({"gpu": {"use_ddp": True, "device_ids": [0, 1], "on_missing": "cpu"}}, 0, 2),  # CPU processes (torchrun)
])
def test_world_size_is_the_processes_the_launcher_starts(sections, gpus, expected):
    config = config_with(**sections)
    plan = schedule(config, gpus)
    assert plan.world_size == expected and plan.effective_batch == 2 * 2 * expected
    launch = plan_for_config(config, ["train", "--config", "c.yaml"], gpus, output_dir="out")
    assert launch.world_size == expected


def test_a_users_accelerate_file_counts_its_own_processes(tmp_path):
    mine = tmp_path / "accelerate.yaml"
    mine.write_text(yaml.safe_dump({"distributed_type": "MULTI_GPU", "num_processes": 6, "num_machines": 1}))
    config = config_with(distributed={"accelerate_config": str(mine)})
    assert schedule(config, 8).world_size == 6
    launch = plan_for_config(config, ["train"], 8, output_dir=str(tmp_path))
    assert launch.config_file == str(mine) and launch.accelerate_config is None


# ----------------------------------------------------------------------------- launch plans from a config


def test_device_ids_become_cuda_visible_devices_with_or_without_ddp(tmp_path):
    argv = ["train", "--config", "c.yaml"]
    one = plan_for_config(config_with(gpu={"device_ids": [2]}), argv, 4, output_dir=str(tmp_path))
    assert one.launcher == "python" and one.env["CUDA_VISIBLE_DEVICES"] == "2"
    assert one.command[-4:] == ("dpokit", *argv)
    ddp = plan_for_config(config_with(gpu={"device_ids": [1, 3], "use_ddp": True}), argv, 4, output_dir=str(tmp_path))
    assert ddp.env["CUDA_VISIBLE_DEVICES"] == "1,3" and ddp.accelerate_config["gpu_ids"] == "1,3"
    assert ddp.accelerate_config["mixed_precision"] == "bf16"
    assert ddp.env[CONFIG_ENV] == str((tmp_path / "launch" / "accelerate_ddp.yaml").resolve())
    # one process on a machine with several GPUs and no device_ids: GPU 0, never nn.DataParallel over all
    several = plan_for_config(config_with(), argv, 8, output_dir=str(tmp_path))
    assert several.env["CUDA_VISIBLE_DEVICES"] == "0" and several.world_size == 1
    # no GPU: nothing to apply, the run starts right here
    assert plan_for_config(config_with(gpu={"device_ids": [0], "on_missing": "cpu"}), argv, 0).commands == ()


def test_several_gpus_for_one_process_are_refused_before_anything_loads():
    from dpokit.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        config_with(gpu={"device_ids": [0, 1]})
    [problem] = info.value.problems
    assert problem.where == "gpu.device_ids" and "nn.DataParallel" in problem.message
    assert "gpu.use_ddp: true" in problem.hint


def test_cpu_fallback_of_several_gpus_says_what_it_starts():
    from dpokit.rules import advise

    config = config_with(gpu={"device_ids": [0, 1, 2, 3], "use_ddp": True, "on_missing": "cpu"})
    notes = [n for n in advise(config, CPU) if n.startswith("gpu.on_missing: cpu")]
    assert len(notes) == 1 and "starts 4 CPU processes" in notes[0] and "full copy of the model" in notes[0]
    assert "gpu.use_ddp: false" in notes[0]


def test_fp16_weights_on_a_cpu_are_refused_or_fall_back():
    from dpokit.rules import device_problems
    from dpokit.scaling import config_model_dtype

    stop = config_with(model_loading={"dtype": "fp16"}, training={"bf16": False})
    assert [p.where for p in device_problems(stop, CPU)] == ["model_loading.dtype"]
    fallback = config_with(model_loading={"dtype": "fp16"}, training={"bf16": False}, gpu={"on_missing": "cpu"})
    assert device_problems(fallback, CPU) == [] and config_model_dtype(fallback, 0) == "fp32"
    assert config_model_dtype(fallback, 1) == "fp16"


@pytest.mark.parametrize("bf16, fp16, dtype, gpus, expected", [
    (True, False, "auto", 0, "bf16"), (False, True, "auto", 1, "fp16"), (False, True, "auto", 0, "fp32"),
    (False, False, "auto", 1, "fp32"), (True, False, "fp32", 1, "fp32"),
])
def test_the_model_dtype_follows_the_precision_flags(bf16, fp16, dtype, gpus, expected):
    from dpokit.scaling import config_model_dtype

    config = config_with(training={"bf16": bf16, "fp16": fp16}, model_loading={"dtype": dtype},
                         gpu={"on_missing": "cpu"})
    assert config_model_dtype(config, gpus) == expected


def test_fp16_on_a_model_published_in_bfloat16_is_advised_against():
    from transformers import LlamaConfig

    from dpokit.rules import model_precision_advice

    config = config_with(training={"bf16": False, "fp16": True})
    gpu = DeviceInfo(cuda_devices=1, bf16_ok=True)
    assert "published in bfloat16" in model_precision_advice(config, LlamaConfig(dtype="bfloat16"), gpu)[0]
    assert model_precision_advice(config, LlamaConfig(dtype="float16"), gpu) == []


def test_zero3_training_arguments_built_first_make_transformers_load_partitioned(tmp_path):
    """What dpokit.run relies on: its training arguments, created in a process accelerate launched with
    ZeRO-3, register the DeepSpeed config, so `from_pretrained` afterwards builds the model with zero.Init."""
    pytest.importorskip("deepspeed")
    from accelerate.utils.launch import prepare_deepspeed_cmd_env
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    from dpokit.launch import accelerate_config
    from dpokit.trainers import build_training_args
    from test_launch import launcher_args

    args, defaults, from_config = launcher_args(accelerate_config("zero3", num_processes=2, mixed_precision="bf16"),
                                                tmp_path)
    args.deepspeed_fields_from_accelerate_config = ",".join(list(defaults.deepspeed_config)
                                                            + (["mixed_precision"] if from_config else []))
    _, env = prepare_deepspeed_cmd_env(args)
    config = config_with(distributed={"strategy": "zero3"})
    saved = dict(os.environ)
    try:
        os.environ.update(env)
        assert not is_deepspeed_zero3_enabled()
        training_args = build_training_args(config, tmp_path / "run", False, True)  # no GPU here
        assert is_deepspeed_zero3_enabled()
        del training_args
    finally:
        os.environ.clear()
        os.environ.update(saved)


# ----------------------------------------------------------------------------- the dry run


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_each_scaling_example_loads_and_dry_runs_offline_with_its_launch_and_plan(path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the examples read data/hh-rlhf-harmless-sample from the repository
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = load_config(path)
    launch_dir = ROOT / "outputs" / "launch"
    before = sorted(launch_dir.iterdir()) if launch_dir.exists() else []
    target = {"ddp": "4x80GB", "fsdp": "8x80GB", "zero3": "8x80GB", "qlora": "1xA10G-24GB",
              "two_machines": "16x80GB"}[path.stem]
    status = main(["train", "--config", str(path.relative_to(ROOT)), "--dry-run", "--plan", target])
    out = capsys.readouterr().out
    assert status == 0, out[-3000:]
    assert f"plan for {target}" in out and "per GPU" in out
    assert "(from the published config of" in out  # the hub model is not here: its bundled config
    assert "== launch" in out
    launch = out[out.index("== launch"):]
    strategy = {"ddp": "ddp", "fsdp": "fsdp", "zero3": "zero3", "qlora": "single", "two_machines": "zero3"}[path.stem]
    assert f"launch: {strategy}," in launch
    assert "--config " + str(path.relative_to(ROOT)) in launch and "--dry-run" not in launch.split("\n   (")[0]
    kind = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "zero3": "DEEPSPEED", "two_machines": "DEEPSPEED"}.get(path.stem)
    if kind:
        assert f"distributed_type: {kind}" in launch and "accelerate.commands.launch --config_file" in launch
    if config.distributed.num_machines > 1:
        assert "on machine 0 run: dpokit train" in launch and "--machine_rank 1" in launch
        assert "16 process(es) = 8 per machine x 2 machine(s)" in launch
    if config.gpu.device_ids:
        ids = ",".join(map(str, config.gpu.device_ids))
        assert f"CUDA_VISIBLE_DEVICES={ids}" in launch
    if config.quantization.load_in == "4bit":
        assert "quantization: 4-bit nf4 with double quantization (QLoRA), computed in bf16" in out
    assert (sorted(launch_dir.iterdir()) if launch_dir.exists() else []) == before  # a dry run writes nothing


def test_the_dry_run_of_a_local_model_plans_from_its_own_config(tiny_llama_dir, tmp_path, capsys):
    from dpokit.testing import write_arithmetic_pairs

    data = write_arithmetic_pairs(tmp_path / "pairs.jsonl")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"models": [{"name": "tiny", "huggingface_id": str(tiny_llama_dir)}],
                                    "dataset": {"name": str(data)}, "logging": {"report_to": ["none"]},
                                    "training": {"output_dir": str(tmp_path / "out")},
                                    "model_loading": {"attn_implementation": "eager"}}))
    assert main(["train", "--config", str(path), "--dry-run", "--plan", "1x24GB"]) == 0
    out = capsys.readouterr().out
    assert "plan for 1x24GB (21.6 GB usable per GPU, 10% kept free): fits" in out
    assert "published config" not in out
    assert "loading: weights in fp32 (auto: no half precision set), attention eager" in out
    assert "launch: one process (no launcher)" in out


@pytest.mark.parametrize("argv, message", [
    (["--plan", "8x80GB"], "--plan: only goes with --dry-run"),
    (["--dry-run", "--plan", "3xWHATEVER"], "cannot read GPU target"),
    (["--dry-run", "--plan"], "it has none"),
])
def test_plan_targets_that_cannot_be_used_exit_2_with_the_reason(argv, message, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    status = main(["train", "--config", "configs/scaling/qlora.yaml", *argv])
    err = capsys.readouterr().err
    assert status == 2 and message in err, err


# ----------------------------------------------------------------------------- loading


@pytest.mark.parametrize("sections, dtype, attn", [
    ({"training": {"bf16": True}}, "bf16", "sdpa"),
    ({"training": {"bf16": True}, "model_loading": {"dtype": "fp32"}}, "fp32", "sdpa"),
    ({"model_loading": {"attn_implementation": "eager"}}, "fp32", "eager"),
])
def test_models_load_in_the_configured_dtype_and_attention(tiny_llama_dir, sections, dtype, attn):
    from dpokit.models import load_for_config, model_dtype_name

    config = config_with(**{"training": {"bf16": False}, **sections})
    model = load_for_config(config, str(tiny_llama_dir), False, 0)
    assert model_dtype_name(model) == dtype and model.config._attn_implementation == attn


def test_a_4bit_policy_is_quantized_and_prepared_and_a_reference_is_left_frozen(tiny_llama_dir):
    from dpokit.models import load_for_config
    from dpokit.quantization import describe_quantization

    config = config_with(quantization={"load_in": "4bit"}, training={"bf16": False})
    policy = load_for_config(config, str(tiny_llama_dir), False, 0)
    layers = describe_quantization(policy)["quantized_layers"]
    assert layers.get("Linear4bit", 0) > 0
    assert policy.get_input_embeddings().weight.dtype.is_floating_point
    reference = load_for_config(config, str(tiny_llama_dir), False, 0, reference=True)
    assert not reference.training and not any(p.requires_grad for p in reference.parameters())


# ----------------------------------------------------------------------------- runs


@pytest.mark.parametrize("name, sections, dtype", [
    ("bf16", {"training": {"bf16": True}}, "bf16"),
    ("qlora", {"quantization": {"load_in": "4bit"}, "training": {"optim": "paged_adamw_8bit"}}, "fp32"),
])
def test_a_run_records_how_it_loaded_and_exports_in_that_dtype(name, sections, dtype, tiny_llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from dpokit.export import export_run
    from dpokit.models import model_dtype_name
    from dpokit.run import train
    from dpokit.rundir import RunDir
    from dpokit.testing import small_run_config, write_arithmetic_pairs

    data = write_arithmetic_pairs(tmp_path / "pairs.jsonl", n_a=4, n_b=4)
    config = small_run_config(tiny_llama_dir, data, tmp_path / name, **sections)
    [result] = train(config)
    assert result.status == "completed", result.error
    scaling = result.summary["scaling"]
    assert scaling["model_dtype"] == dtype and scaling["world_size"] == 1 and scaling["strategy"] == "single"
    assert scaling["quantization"] == config.quantization.load_in
    model, _ = RunDir(result.run_dir).load_trained(device="cpu")  # evaluation and chat load it as it trained
    assert model_dtype_name(model) == dtype
    out = export_run(result.run_dir, tmp_path / f"{name}-merged", merge=True)
    info = json.loads((out / "dpokit_export.json").read_text())
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert info["dtype"] == dtype and model_dtype_name(merged) == dtype
    assert ("quantization_note" in info) == (name == "qlora")
    if name == "qlora":
        assert "merged into the unquantized base" in info["quantization_note"]
        assert not any(type(m).__name__ == "Linear4bit" for m in merged.modules())


@pytest.mark.parametrize("device_ids, gpus, hint", [([0, 1, 2, 3], 2, "device_ids: [0, 1]"),
                                                    ([4, 5], 2, "device_ids: [0, 1]")])
def test_the_cpu_fallback_does_not_cover_a_machine_with_fewer_gpus(device_ids, gpus, hint):
    """on_missing: cpu is for a machine without GPUs; with some of the requested GPUs present the run would
    start one process per requested GPU on too few devices: refused before anything loads, with the fix."""
    from dpokit.rules import advise, device_problems

    config = config_with(gpu={"device_ids": device_ids, "use_ddp": True, "on_missing": "cpu"})
    machine = DeviceInfo(cuda_devices=gpus, bf16_ok=True)
    [problem] = [p for p in device_problems(config, machine) if p.where == "gpu.device_ids"]
    assert "falls back to the CPU only on a machine with no GPU" in problem.message
    assert hint in problem.hint and "gradient_accumulation_steps" in problem.hint
    assert not any("falling back to the CPU" in n for n in advise(config, machine))
    assert device_problems(config, CPU) == []  # no GPU at all: the fallback applies (and advise says what starts)
