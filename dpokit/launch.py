"""Starting a run in several processes: the accelerate config and the exact command for each machine.

dpokit never starts or coordinates training processes itself. On GPUs it writes an accelerate
config (DDP, FSDP or DeepSpeed ZeRO-2/3, shaped like the ones TRL and the alignment-handbook ship)
and re-runs the same dpokit command under `accelerate launch`; a user's own accelerate file is
used as is. On a CPU, DDP goes through torchrun with the gloo backend, because accelerate needs
MPI to start several CPU processes. `gpu.device_ids` becomes CUDA_VISIBLE_DEVICES of the child
processes, with one process or several. Everything here is a pure function of its arguments
except `write_accelerate_config` and `run_launch`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .scaling import processes_per_machine

LAUNCHED_ENV = "DPOKIT_LAUNCHED"  # set in children: do not launch again
CONFIG_ENV = "DPOKIT_ACCELERATE_CONFIG"  # the accelerate config the run should copy into its run directory
DEFAULT_MULTI_NODE_PORT = 29500
MIXED_PRECISION = {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}


@dataclass(frozen=True)
class LaunchPlan:
    """How a run starts: the launcher, its processes, the accelerate config, one command per machine."""

    launcher: str  # "accelerate", "torchrun" or "python" (one process, re-run only to apply device_ids)
    strategy: str  # single | ddp | fsdp | zero2 | zero3 | custom (a user's accelerate file)
    processes_per_machine: int
    num_machines: int
    machine_rank: int
    accelerate_config: dict | None  # what `write_accelerate_config` writes; None for a user's file / torchrun
    config_file: str | None  # the accelerate config path passed to `accelerate launch`
    env: dict[str, str] = field(default_factory=dict)  # added to the environment of every launcher
    commands: tuple[tuple[str, ...], ...] = ()  # commands[r] runs on machine r
    machine_commands: tuple[tuple[str, ...], ...] = ()  # what the user types on machine r (several machines)

    @property
    def world_size(self) -> int:
        return self.processes_per_machine * self.num_machines

    @property
    def command(self) -> tuple[str, ...]:
        """The command this machine runs."""
        return self.commands[self.machine_rank]


def in_launched_process() -> bool:
    """True inside a process started by `run_launch` (or any torchrun / accelerate launch)."""
    return LAUNCHED_ENV in os.environ or "LOCAL_RANK" in os.environ


def device_env(device_ids: list[int] | None) -> dict[str, str]:
    """The environment that restricts CUDA to `device_ids` (empty = every visible GPU)."""
    return {"CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in device_ids)} if device_ids else {}


def accelerate_config(strategy: str, *, num_processes: int, num_machines: int = 1, machine_rank: int = 0,
                      main_process_ip: str | None = None, main_process_port: int | None = None,
                      mixed_precision: str = "no", cpu_offload: bool = False, fsdp_version: int = 2,
                      gpu_ids: list[int] | None = None, deepspeed_config_file: str | None = None) -> dict:
    """The accelerate config for `strategy` (ddp | fsdp | zero2 | zero3 | single); `num_processes` counts
    the processes of every machine, as accelerate does. LoRA-specific choices:

    * FSDP wraps each decoder layer (TRANSFORMER_BASED_WRAP reads the model's `_no_split_modules`;
      transformers' Trainer then adds PEFT's policy so the LoRA layers get their own units), keeps
      SHARDED_STATE_DICT checkpoints (each rank writes its shard; gathering a 70B model on rank 0 for
      every checkpoint would need its full size in CPU RAM), and loads weights on rank 0 only
      (cpu_ram_efficient_loading, which the FSDP-QLoRA path requires). FSDP1 gets use_orig_params:
      false, the setting PEFT documents for LoRA memory savings.
    * DeepSpeed leaves batch sizes, accumulation and clipping to transformers ("auto" from the
      trainer's arguments); ZeRO-3 builds the model sharded (zero3_init_flag) and saves 16-bit weights.
    """
    if strategy == "ddp" and num_processes == 1:
        strategy = "single"  # accelerate refuses MULTI_GPU with one process (and there is nothing to replicate)
    config = {
        "compute_environment": "LOCAL_MACHINE",
        "debug": False,
        "distributed_type": {"single": "NO", "ddp": "MULTI_GPU", "fsdp": "FSDP", "zero2": "DEEPSPEED",
                             "zero3": "DEEPSPEED"}[strategy],
        "downcast_bf16": "no",
        "machine_rank": machine_rank,
        "main_training_function": "main",
        "mixed_precision": mixed_precision,
        "num_machines": num_machines,
        "num_processes": num_processes,
        "rdzv_backend": "static",
        "same_network": True,
        "tpu_env": [],
        "tpu_use_cluster": False,
        "tpu_use_sudo": False,
        "use_cpu": False,
    }
    if strategy in ("single", "ddp"):
        config["gpu_ids"] = ",".join(str(i) for i in gpu_ids) if gpu_ids else "all"
    if num_machines > 1:
        config["main_process_ip"] = main_process_ip
        config["main_process_port"] = main_process_port or DEFAULT_MULTI_NODE_PORT
    elif main_process_port:
        config["main_process_port"] = main_process_port
    if strategy == "fsdp":
        fsdp = {
            "fsdp_version": fsdp_version,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_offload_params": cpu_offload,
            "fsdp_state_dict_type": "SHARDED_STATE_DICT",
            "fsdp_cpu_ram_efficient_loading": True,
            "fsdp_activation_checkpointing": False,  # transformers' gradient checkpointing does it (the config's key)
        }
        if fsdp_version == 1:
            fsdp.update(fsdp_sharding_strategy="FULL_SHARD", fsdp_backward_prefetch="BACKWARD_PRE",
                        fsdp_forward_prefetch=False, fsdp_sync_module_states=True, fsdp_use_orig_params=False)
        else:
            fsdp["fsdp_reshard_after_forward"] = True
        config["fsdp_config"] = fsdp
    if strategy in ("zero2", "zero3"):
        if deepspeed_config_file:  # the file decides precision too: accelerate refuses both
            ds = {"deepspeed_config_file": deepspeed_config_file}
            config.pop("mixed_precision")
        else:
            ds = {"zero_stage": int(strategy[-1]),
                  "offload_optimizer_device": "cpu" if cpu_offload else "none",
                  "offload_param_device": "cpu" if cpu_offload and strategy == "zero3" else "none",
                  "zero3_init_flag": strategy == "zero3"}
            if strategy == "zero3":
                ds["zero3_save_16bit_model"] = True
        ds["deepspeed_multinode_launcher"] = "standard"  # each machine runs its own command
        config["deepspeed_config"] = ds
    return config


def plan_launch(*, strategy: str, argv: list[str], device_ids: list[int] | None, cuda_devices: int,
                num_machines: int = 1, machine_rank: int = 0, main_process_ip: str | None = None,
                main_process_port: int | None = None, precision: str = "fp32", cpu_offload: bool = False,
                fsdp_version: int = 2, user_accelerate_config: str | None = None,
                deepspeed_config_file: str | None = None, config_dir: str | os.PathLike = ".",
                python: str = sys.executable, program: tuple[str, ...] = ("-m", "dpokit")) -> LaunchPlan:
    """How `dpokit <argv>` runs for a resolved `strategy` (see dpokit.scaling.resolve_strategy).

    `config_dir` is where the generated accelerate config will be written (`write_accelerate_config`);
    `precision` is the training precision (fp32 | bf16 | fp16). With `strategy == "single"` and no
    device_ids there is nothing to launch: the plan has no commands. `program` is what each process
    runs before `argv` (dpokit's CLI, or a script path).
    """
    multi = strategy != "single" or user_accelerate_config is not None or num_machines > 1
    n = processes_per_machine(device_ids, cuda_devices, multi)
    env = {LAUNCHED_ENV: "1", **device_env(device_ids if cuda_devices else None)}
    module_args = (*program, *argv)
    if not multi:
        commands = ((python, *module_args),) if env.get("CUDA_VISIBLE_DEVICES") else ()
        return LaunchPlan("python", "single", 1, 1, 0, None, None, env, commands)
    if cuda_devices == 0 and user_accelerate_config is None:
        # accelerate needs MPI for several CPU processes; torchrun starts them with gloo.
        env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1")
        port = str(main_process_port or (DEFAULT_MULTI_NODE_PORT if num_machines > 1 else _free_port()))
        address = main_process_ip if num_machines > 1 else "127.0.0.1"
        commands = tuple((python, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--nnodes",
                          str(num_machines), "--node_rank", str(rank), "--master_addr", str(address),
                          "--master_port", port, *module_args) for rank in range(num_machines))
        return LaunchPlan("torchrun", strategy, n, num_machines, machine_rank, None, None, env, commands,
                          _machine_commands(program, argv, num_machines))
    if user_accelerate_config is not None:
        config, path, custom = None, str(user_accelerate_config), "custom"
    else:
        port = main_process_port or (None if num_machines > 1 else _free_port())
        config = accelerate_config(strategy, num_processes=n * num_machines, num_machines=num_machines,
                                   machine_rank=machine_rank, main_process_ip=main_process_ip,
                                   main_process_port=port, mixed_precision=MIXED_PRECISION[precision],
                                   cpu_offload=cpu_offload, fsdp_version=fsdp_version, gpu_ids=device_ids,
                                   deepspeed_config_file=deepspeed_config_file)
        path, custom = str(Path(config_dir) / f"accelerate_{strategy}.yaml"), strategy
    env[CONFIG_ENV] = str(Path(path).resolve())
    base = (python, "-m", "accelerate.commands.launch", "--config_file", path)
    if user_accelerate_config is not None:
        commands = ((*base, *module_args),)
        return LaunchPlan("accelerate", custom, n, 1, 0, None, path, env, commands)
    commands = tuple((*base, *(("--machine_rank", str(rank)) if num_machines > 1 else ()), *module_args)
                     for rank in range(num_machines))
    return LaunchPlan("accelerate", custom, n, num_machines, machine_rank, config, path, env, commands,
                      _machine_commands(program, argv, num_machines))


def plan_for_config(config, argv: list[str], cuda_devices: int, *, output_dir: str | None = None,
                    python: str = sys.executable, program: tuple[str, ...] = ("-m", "dpokit")) -> LaunchPlan:
    """The LaunchPlan of a dpokit Config run as `dpokit <argv>` on a machine with `cuda_devices` GPUs.

    The generated accelerate config goes to `<output_dir>/launch/` (each run directory gets a copy,
    `record_launch_config`); a user's accelerate file is used as is. One process on a machine with
    several GPUs and no `gpu.device_ids` is given GPU 0 (a process that sees several GPUs would be
    wrapped in nn.DataParallel, which TRL's trainers refuse). `program`: what each process runs before
    `argv` (dpokit's CLI; benchmarks/gpu_smoke.py runs its own worker under the same plan)."""
    from .scaling import resolve_fsdp_version, resolve_strategy

    gpu, dist, t = config.gpu, config.distributed, config.training
    strategy = resolve_strategy(dist, gpu.use_ddp)
    device_ids = gpu.device_ids
    if strategy == "single" and not device_ids and cuda_devices > 1 and not dist.accelerate_config:
        device_ids = [0]
    precision = "bf16" if t.bf16 else "fp16" if t.fp16 and cuda_devices else "fp32"
    deepspeed_file = str(Path(dist.deepspeed_config).resolve()) if dist.deepspeed_config else None
    return plan_launch(strategy=strategy, argv=argv, device_ids=device_ids, cuda_devices=cuda_devices,
                       num_machines=dist.num_machines, machine_rank=dist.machine_rank,
                       main_process_ip=dist.main_process_ip, main_process_port=dist.main_process_port,
                       precision=precision, cpu_offload=dist.cpu_offload,
                       fsdp_version=resolve_fsdp_version(dist, config.quantization),
                       user_accelerate_config=dist.accelerate_config, deepspeed_config_file=deepspeed_file,
                       config_dir=Path(output_dir or t.output_dir).expanduser() / "launch", python=python,
                       program=program)


def _machine_commands(program: tuple[str, ...], argv: list[str], num_machines: int) -> tuple[tuple[str, ...], ...]:
    """The dpokit command to type on each machine: the same one, with that machine's rank."""
    if num_machines == 1 or program != ("-m", "dpokit"):
        return ()
    return tuple(("dpokit", *argv, "--set", f"distributed.machine_rank={rank}") for rank in range(num_machines))


def write_accelerate_config(plan: LaunchPlan) -> Path | None:
    """Write the plan's generated accelerate config (atomically); None when there is none to write."""
    import yaml

    from .files import atomic_write_text

    if plan.accelerate_config is None or plan.config_file is None:
        return None
    path = Path(plan.config_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, yaml.safe_dump(plan.accelerate_config, sort_keys=False))
    return path


def record_launch_config(run_dir: str | os.PathLike, environ=os.environ) -> Path | None:
    """Copy the accelerate config this process was launched with into `run_dir` (call it on the main
    process only), so the run directory says how the run was started. None when not launched by dpokit."""
    from .files import atomic_write_text

    source = environ.get(CONFIG_ENV)
    if not source or not Path(source).is_file():
        return None
    target = Path(run_dir) / "accelerate_config.yaml"
    atomic_write_text(target, Path(source).read_text())
    return target


def run_launch(plan: LaunchPlan) -> int:
    """Write the accelerate config and run this machine's command; the exit status of the launcher."""
    write_accelerate_config(plan)
    env = {**os.environ, **plan.env}
    return subprocess.call(list(plan.command), env=env)


def format_plan(plan: LaunchPlan) -> list[str]:
    """Lines for `--dry-run`: what starts where, the exact command(s), the accelerate config."""
    import shlex

    import yaml

    if not plan.commands:
        return ["launch: one process (no launcher)"]
    visible = plan.env.get("CUDA_VISIBLE_DEVICES")
    what = {"torchrun": "torchrun (gloo, CPU)", "accelerate": "accelerate launch", "python": "one process"}
    lines = [f"launch: {plan.strategy}, {plan.world_size} process(es) = {plan.processes_per_machine} per machine x "
             f"{plan.num_machines} machine(s), via {what[plan.launcher]}"
             + (f", CUDA_VISIBLE_DEVICES={visible}" if visible else "")]
    shown = {k: v for k, v in plan.env.items() if k in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")}
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in shown.items())
    for rank, command in enumerate(plan.commands):
        where = f"machine {rank}" if plan.num_machines > 1 else "command"
        if plan.machine_commands:
            lines.append(f"   on machine {rank} run: {shlex.join(plan.machine_commands[rank])}")
            where = "   which starts"
        lines.append(f"   {where}: {(prefix + ' ') if prefix else ''}{shlex.join(command)}")
    if plan.accelerate_config is not None:
        lines.append(f"   accelerate config ({plan.config_file}):")
        lines += ["      " + line for line in yaml.safe_dump(plan.accelerate_config, sort_keys=False).splitlines()]
    elif plan.config_file:
        lines.append(f"   accelerate config: {plan.config_file} (yours, used as is)")
    return lines


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
