"""Multi-process training (`gpu.use_ddp`): one process per device via `accelerate launch` / torchrun.

dpokit never runs its own training loop across devices: the CLI re-launches itself under
accelerate (DDP; gloo on CPU), and inside the processes the HF Trainer does the rest. Only
the main process writes run files; the run directory is chosen once and shared.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from .schedule import world_size


def in_launched_process() -> bool:
    return "LOCAL_RANK" in os.environ or "ACCELERATE_LAUNCHED" in os.environ


def launch_command(config, argv: list[str], cuda_devices: int) -> tuple[list[str], dict[str, str]]:
    """The `accelerate launch` command that re-runs this CLI call in N processes, and its env."""
    n = world_size(config, cuda_devices)
    use_cpu = cuda_devices == 0
    port = str(_free_port())
    if use_cpu:  # accelerate needs MPI for several CPU processes; torchrun starts them with gloo
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--nnodes", "1",
               "--master_addr", "127.0.0.1", "--master_port", port]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(n), "--num_machines", "1",
               "--main_process_port", port, "--mixed_precision", "no", "--dynamo_backend", "no"]
        cmd += ["--multi_gpu"] if n > 1 else []
    cmd += ["-m", "dpokit", *argv]
    env = dict(os.environ, ACCELERATE_LAUNCHED="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")
               if use_cpu else os.environ.get("OMP_NUM_THREADS", ""))
    if not use_cpu and config.gpu.device_ids:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in config.gpu.device_ids)
    return cmd, {k: v for k, v in env.items() if v != ""}


def launch(config, argv: list[str], cuda_devices: int) -> int:
    cmd, env = launch_command(config, argv, cuda_devices)
    n = world_size(config, cuda_devices)
    where = "CPU processes (torchrun, gloo)" if cuda_devices == 0 else \
        f"GPU processes (accelerate, DDP) on {config.gpu.device_ids or list(range(n))}"
    print(f"== gpu.use_ddp: launching {n} {where}", flush=True)
    return subprocess.call(cmd, env=env)


def shared_value(value):
    """Broadcast the main process's `value` to every process (identity when not distributed)."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state = PartialState(cpu=not torch.cuda.is_available())  # gloo across CPU processes
    if state.num_processes == 1:
        return value
    box = [value if state.is_main_process else None]
    broadcast_object_list(box, from_process=0)
    return box[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
