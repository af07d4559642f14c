"""Inside a multi-process run: the values every process must agree on.

dpokit never runs its own training loop across devices: the CLI re-launches itself under
`accelerate launch` or torchrun (dpokit/launch.py), and inside the processes the HF Trainer does
the rest. Only the main process writes run files; the run directory is chosen once and shared.
"""

from __future__ import annotations


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
