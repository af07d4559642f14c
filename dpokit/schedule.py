"""Derived numbers of a run, computed in one place: processes, effective batch, optimizer steps.

The advice, the dry run, the launcher and the run record all read them from here, so the number
of processes the launcher starts is the number the effective batch is computed with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def world_size(config, cuda_devices: int) -> int:
    """Training processes: one per requested device with `gpu.use_ddp` (all visible GPUs when
    `device_ids` is null, one CPU process when there are none), else one."""
    gpu = config.gpu
    if not gpu.use_ddp:
        return 1
    if gpu.device_ids:
        return len(gpu.device_ids)
    return max(cuda_devices, 1)


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
