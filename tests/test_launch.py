"""dpokit/launch.py: the accelerate configs it writes are read by accelerate's own loader and launcher
code, the DeepSpeed ones pass DeepSpeed's own config parser, and the commands are the ones each
machine must run. On CPU, the DDP command trains for real in two processes; FSDP is shown to be
refused by accelerate itself (which is why dpokit's rules refuse it without GPUs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import yaml

from dpokit.launch import (CONFIG_ENV, LAUNCHED_ENV, accelerate_config, format_plan, plan_launch,
                           processes_per_machine, record_launch_config, write_accelerate_config)

ROOT = Path(__file__).resolve().parents[1]


def launcher_args(config: dict, tmp_path: Path, extra=()):
    """What `accelerate launch --config_file F` makes of F: accelerate's parser and its validation
    (a private function of accelerate.commands.launch, the first thing `accelerate launch` calls)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    path = tmp_path / "accelerate.yaml"
    path.write_text(yaml.safe_dump(config))
    args = launch_command_parser().parse_args(["--config_file", str(path), *extra, "-m", "dpokit", "train"])
    return _validate_launch_command(args)


def test_each_strategy_is_read_back_by_accelerates_config_loader(tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file

    expected = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED", "single": "NO"}
    for strategy, kind in expected.items():
        config = accelerate_config(strategy, num_processes=4 if strategy != "single" else 1, mixed_precision="bf16")
        path = tmp_path / f"{strategy}.yaml"
        path.write_text(yaml.safe_dump(config))
        loaded = load_config_from_file(str(path))
        assert str(loaded.distributed_type).endswith(kind), strategy
        assert loaded.mixed_precision == "bf16" and loaded.num_processes == config["num_processes"]


def test_ddp_with_one_process_is_a_plain_single_process_config(tmp_path):
    config = accelerate_config("ddp", num_processes=1, gpu_ids=[3])
    assert config["distributed_type"] == "NO" and config["gpu_ids"] == "3"
    args, _, _ = launcher_args(config, tmp_path)  # MULTI_GPU with one GPU id would raise here
    assert not args.multi_gpu and args.gpu_ids == "3"


@pytest.mark.parametrize("version", [1, 2])
def test_fsdp_config_becomes_the_plugin_lora_needs(tmp_path, version):
    """accelerate's launcher turns the file into FSDP_* variables; its FSDP plugin reads them.
    (sync_module_states / cpu_ram_efficient_loading are overridden only because the plugin checks
    for a GPU when they are on; their values are checked in the environment instead.)"""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    config = accelerate_config("fsdp", num_processes=8, mixed_precision="bf16", cpu_offload=True,
                               fsdp_version=version)
    args, _, _ = launcher_args(config, tmp_path)
    env = prepare_multi_gpu_env(args)
    assert args.nproc_per_node == "8"
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true"
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
    with mock.patch.dict(os.environ, env):
        plugin = FullyShardedDataParallelPlugin(cpu_ram_efficient_loading=False, sync_module_states=None if
                                                version == 2 else False)
    assert plugin.fsdp_version == version
    assert str(plugin.state_dict_type).endswith("SHARDED_STATE_DICT")
    assert "offload" in repr(plugin.cpu_offload).lower() and "True" in repr(plugin.cpu_offload)
    if version == 1:
        assert str(plugin.sharding_strategy).endswith("FULL_SHARD") and plugin.use_orig_params is False
        assert env["FSDP_SYNC_MODULE_STATES"] == "true"
    else:
        assert plugin.reshard_after_forward is True


@pytest.mark.parametrize("strategy, offload", [("zero2", False), ("zero2", True), ("zero3", False), ("zero3", True)])
def test_deepspeed_configs_pass_deepspeeds_own_parser(tmp_path, strategy, offload):
    """File -> accelerate launcher env -> accelerate's DeepSpeedPlugin -> transformers fills the "auto"
    values from the training arguments -> DeepSpeed's DeepSpeedConfig validates it."""
    pytest.importorskip("deepspeed")
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    config = accelerate_config(strategy, num_processes=8, mixed_precision="bf16", cpu_offload=offload)
    args, defaults, from_config = launcher_args(config, tmp_path)
    fields = list(defaults.deepspeed_config) + (["mixed_precision"] if from_config else [])
    args.deepspeed_fields_from_accelerate_config = ",".join(fields)  # as accelerate's launch_command sets it
    _, env = prepare_deepspeed_cmd_env(args)
    with mock.patch.dict(os.environ, env):
        plugin = DeepSpeedPlugin()
        plugin.set_mixed_precision(env["ACCELERATE_MIXED_PRECISION"])
    ds = json.loads(json.dumps(plugin.deepspeed_config))
    assert "auto" in json.dumps(ds)  # batch sizes and clipping come from the trainer
    training = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2,
                                 gradient_accumulation_steps=4, bf16=True, use_cpu=True, report_to=[])
    filled = HfTrainerDeepSpeedConfig(ds)
    filled.trainer_config_process(training)
    model = type("Model", (), {"config": type("Config", (), {"hidden_size": 4096})()})()
    filled.trainer_config_finalize(training, model, 100)
    parsed = DeepSpeedConfig(filled.config)
    assert parsed.zero_optimization_stage == int(strategy[-1])
    assert parsed.bfloat16_config.enabled and parsed.train_micro_batch_size_per_gpu == 2
    assert _device(parsed.zero_config.offload_optimizer) == ("cpu" if offload else "none")
    assert _device(parsed.zero_config.offload_param) == ("cpu" if offload and strategy == "zero3" else "none")
    if strategy == "zero3":
        assert env["ACCELERATE_DEEPSPEED_ZERO3_INIT"] == "true"


def _device(offload) -> str:
    """The device of a DeepSpeed offload setting ('none' when absent)."""
    if offload is None:
        return "none"
    return str(getattr(offload.device, "value", offload.device)).rsplit(".", 1)[-1]


def test_a_users_deepspeed_json_is_referenced_and_accepted_by_accelerate(tmp_path):
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    mine = tmp_path / "ds.json"
    mine.write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                                "bf16": {"enabled": "auto"}, "zero_optimization": {"stage": 3}}))
    config = accelerate_config("zero3", num_processes=8, mixed_precision="bf16", deepspeed_config_file=str(mine))
    assert "mixed_precision" not in config  # accelerate refuses it next to a DeepSpeed file
    args, defaults, from_config = launcher_args(config, tmp_path)
    args.deepspeed_fields_from_accelerate_config = ",".join(list(defaults.deepspeed_config) +
                                                            (["mixed_precision"] if from_config else []))
    _, env = prepare_deepspeed_cmd_env(args)
    assert env["ACCELERATE_DEEPSPEED_CONFIG_FILE"] == str(mine)
    with mock.patch.dict(os.environ, env):
        plugin = DeepSpeedPlugin()
    assert plugin.deepspeed_config["zero_optimization"]["stage"] == 3


def test_a_deepspeed_typo_is_caught_by_deepspeeds_parser():
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.config import DeepSpeedConfig

    with pytest.raises(Exception, match="stagee"):
        DeepSpeedConfig({"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
                         "zero_optimization": {"stagee": 3}})


def test_two_machines_get_one_command_each_and_the_same_rendezvous(tmp_path):
    plan = plan_launch(strategy="zero3", argv=["train", "--config", "c.yaml"], device_ids=None, cuda_devices=8,
                       num_machines=2, machine_rank=1, main_process_ip="10.0.0.1", precision="bf16",
                       config_dir=tmp_path)
    assert plan.world_size == 16 and plan.processes_per_machine == 8 and len(plan.commands) == 2
    assert plan.command == plan.commands[1]
    for rank, command in enumerate(plan.commands):
        assert command[1:5] == ("-m", "accelerate.commands.launch", "--config_file", str(tmp_path /
                                                                                         "accelerate_zero3.yaml"))
        assert command[5:7] == ("--machine_rank", str(rank))
        assert command[-5:] == ("-m", "dpokit", "train", "--config", "c.yaml")
    assert plan.accelerate_config["num_processes"] == 16 and plan.accelerate_config["main_process_port"] == 29500
    write_accelerate_config(plan)
    for rank in (0, 1):
        args, _, _ = launcher_args(plan.accelerate_config, tmp_path, ("--machine_rank", str(rank)))
        from accelerate.utils.launch import prepare_multi_gpu_env

        prepare_multi_gpu_env(args)
        assert (args.nnodes, args.node_rank, args.nproc_per_node) == ("2", rank, "8")
        assert args.rdzv_endpoint == "10.0.0.1:29500"
    assert plan.machine_commands[1] == ("dpokit", "train", "--config", "c.yaml", "--set", "distributed.machine_rank=1")
    text = "\n".join(format_plan(plan))
    assert "on machine 1 run: dpokit train --config c.yaml --set distributed.machine_rank=1" in text
    assert "zero_stage: 3" in text


def test_device_ids_are_applied_with_or_without_ddp(tmp_path):
    single = plan_launch(strategy="single", argv=["train"], device_ids=[2], cuda_devices=4, config_dir=tmp_path)
    assert single.launcher == "python" and single.env["CUDA_VISIBLE_DEVICES"] == "2" and single.command[-1] == "train"
    ddp = plan_launch(strategy="ddp", argv=["train"], device_ids=[1, 3], cuda_devices=4, config_dir=tmp_path)
    assert ddp.env["CUDA_VISIBLE_DEVICES"] == "1,3" and ddp.accelerate_config["gpu_ids"] == "1,3"
    assert ddp.processes_per_machine == 2 and ddp.env[CONFIG_ENV].endswith("accelerate_ddp.yaml")
    nothing = plan_launch(strategy="single", argv=["train"], device_ids=None, cuda_devices=4, config_dir=tmp_path)
    assert nothing.commands == () and format_plan(nothing) == ["launch: one process (no launcher)"]
    assert processes_per_machine(None, 8, True) == 8 and processes_per_machine(None, 0, True) == 1


def test_the_run_directory_gets_a_copy_of_the_config_it_was_launched_with(tmp_path):
    plan = plan_launch(strategy="fsdp", argv=["train"], device_ids=None, cuda_devices=2, config_dir=tmp_path / "l")
    written = write_accelerate_config(plan)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    copied = record_launch_config(run_dir, plan.env)
    assert copied == run_dir / "accelerate_config.yaml" and copied.read_text() == written.read_text()
    assert yaml.safe_load(copied.read_text())["distributed_type"] == "FSDP"
    assert record_launch_config(run_dir, {}) is None


def test_a_users_accelerate_file_is_passed_as_is(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("distributed_type: FSDP\n")
    plan = plan_launch(strategy="ddp", argv=["train"], device_ids=None, cuda_devices=2,
                       user_accelerate_config=str(mine), config_dir=tmp_path / "gen")
    assert plan.accelerate_config is None and plan.config_file == str(mine) and plan.strategy == "custom"
    assert write_accelerate_config(plan) is None and not (tmp_path / "gen").exists()
    assert "(yours, used as is)" in "\n".join(format_plan(plan))


def test_cpu_ddp_runs_through_torchrun_and_trains_in_two_processes(tiny_llama_dir, tmp_path):
    from dpokit.testing import small_run_config, write_arithmetic_pairs

    data = write_arithmetic_pairs(tmp_path / "pairs.jsonl", n_a=4, n_b=4)
    config = small_run_config(tiny_llama_dir, data, tmp_path, training={"max_steps": 2},
                              gpu={"device_ids": [0, 1], "use_ddp": True, "on_missing": "cpu"})
    path = tmp_path / "ddp.yaml"
    path.write_text(config.to_yaml())
    plan = plan_launch(strategy="ddp", argv=["train", "--config", str(path)], device_ids=[0, 1], cuda_devices=0,
                       config_dir=tmp_path)
    assert plan.launcher == "torchrun" and plan.accelerate_config is None
    assert "--nproc_per_node" in plan.command and plan.command[plan.command.index("--nproc_per_node") + 1] == "2"
    env = {**os.environ, **plan.env, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(list(plan.command), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [run] = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    assert proc.stdout.count("completed") >= 1 and plan.env[LAUNCHED_ENV] == "1"


PROBE = "from accelerate import Accelerator\nprint(f'[{Accelerator(cpu=%s).distributed_type}]', flush=True)\n"


def test_accelerate_refuses_fsdp_without_gpus_as_dpokits_rule_says(tmp_path):
    """Why `device_scaling_problems` refuses fsdp on a CPU-only machine: accelerate 1.15 cannot run it.
    If a later accelerate can, this test fails and the rule should be lifted."""
    config = accelerate_config("fsdp", num_processes=2, fsdp_version=1)
    path = tmp_path / "fsdp.yaml"
    path.write_text(yaml.safe_dump(config))
    script = tmp_path / "probe.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    script.write_text(PROBE % "False")
    launched = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(path),
                               str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert launched.returncode != 0
    assert "There are currently no available devices found" in launched.stderr
    # A CPU Accelerator under the same FSDP settings ignores them and runs plain DDP (MULTI_CPU):
    script.write_text(PROBE % "True")
    fsdp_env = {**env, "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1", "FSDP_SHARDING_STRATEGY": "FULL_SHARD"}
    ignored = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                              "--master_port", str(_port()), str(script)], env=fsdp_env, capture_output=True,
                             text=True, timeout=300)
    assert ignored.returncode == 0, ignored.stderr[-2000:]
    assert ignored.stdout.count("[DistributedType.MULTI_CPU]") == 2


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
