"""Derived numbers of a run, computed in one place: processes, effective batch, optimizer steps.

The advice, the dry run, the launcher and the run record all read them from here, so the number
of processes the launcher starts is the number the effective batch is computed with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def world_size(config, cuda_devices: int) -> int:
    """Training processes over all machines: processes per machine x distributed.num_machines.

    A multi-process run (gpu.use_ddp, a distributed.strategy, several machines) starts one process per
    requested GPU, every visible GPU when `gpu.device_ids` is null, or one CPU process when there are
    none (dpokit.scaling.processes_per_machine, what dpokit.launch starts); a user's accelerate file says
    its own `num_processes` (over all machines). Otherwise one process."""
    from .scaling import is_multi_process, processes_per_machine

    gpu, dist = config.gpu, config.distributed
    if dist.accelerate_config:
        counted = accelerate_file_processes(dist.accelerate_config)
        if counted:
            return counted
    multi = is_multi_process(dist, gpu.use_ddp) or dist.num_machines > 1
    return processes_per_machine(gpu.device_ids, cuda_devices, multi) * dist.num_machines


def accelerate_file_processes(path) -> int | None:
    """`num_processes` of a user's accelerate config (all machines), None when it cannot be read."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return None
    value = data.get("num_processes") if isinstance(data, dict) else None
    return value if isinstance(value, int) and value > 0 else None


@dataclass(frozen=True)
class Schedule:
    """How a run's rows become optimizer steps."""

    world_size: int
    per_device_batch: int
    accumulation: int
    rows: int | None  # training rows the trainer iterates (KTO: two per pair), None if unknown
    total_steps: int | None  # optimizer steps of the whole run, None if unknown

    @property
    def effective_batch(self) -> int:
        """Rows per optimizer step: per-device batch x accumulation x processes (the guide's formula)."""
        return self.per_device_batch * self.accumulation * self.world_size

    @property
    def steps_per_epoch(self) -> int | None:
        """Optimizer steps per pass over the data, as transformers' Trainer counts them."""
        if self.rows is None:
            return None
        per_process = math.ceil(self.rows / self.world_size)  # the distributed sampler pads the last round
        batches = math.ceil(per_process / self.per_device_batch)
        return max(math.ceil(batches / self.accumulation), 1)

    def describe(self) -> str:
        return (f"effective batch {self.effective_batch} = {self.per_device_batch} per device x "
                f"{self.accumulation} accumulation x {self.world_size} process(es)")


def schedule(config, cuda_devices: int = 0, n_train_pairs: int | None = None) -> Schedule:
    """The schedule of `config` on a machine with `cuda_devices` GPUs, for `n_train_pairs` training pairs."""
    from .methods import get_method

    t = config.training
    rows = None if n_train_pairs is None else n_train_pairs * get_method(config.post_training.method).rows_per_pair
    n_proc = world_size(config, cuda_devices)
    partial = Schedule(n_proc, t.per_device_train_batch_size, t.gradient_accumulation_steps, rows, None)
    if t.max_steps is not None:
        total = t.max_steps
    elif partial.steps_per_epoch is not None:
        total = math.ceil(t.num_epochs * partial.steps_per_epoch)
    else:
        total = None
    return Schedule(n_proc, t.per_device_train_batch_size, t.gradient_accumulation_steps, rows, total)
