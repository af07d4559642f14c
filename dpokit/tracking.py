"""Tracking backends (TensorBoard, MLflow, W&B): their callbacks, and the environment they read.

TensorBoard writes under `logging.logging_dir/<run name>` (transformers 5 dropped `logging_dir`).
MLflow and W&B read their settings from environment variables; dpokit supplies defaults under
`logging_dir` only for the duration of a run (`tracking_environment`) and restores the process
environment afterwards, so nothing leaks into the user's session. A value the user set wins.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from transformers import TrainerCallback


def default_environment(config) -> dict[str, str]:
    """Environment defaults for the configured backends (used where the user has not set them)."""
    logging_dir = Path(config.logging.logging_dir).expanduser().resolve()
    env = {}
    if "mlflow" in config.logging.report_to:
        uri = os.environ.get("MLFLOW_TRACKING_URI") or (logging_dir / "mlruns").as_uri()
        env["MLFLOW_TRACKING_URI"] = uri
        if uri.startswith("file:"):  # MLflow 3 refuses its local file store unless asked for explicitly
            env["MLFLOW_ALLOW_FILE_STORE"] = "true"
    if "wandb" in config.logging.report_to:
        env["WANDB_DIR"] = str(logging_dir)  # offline runs land in logging_dir/wandb/
        env["WANDB_PROJECT"] = "dpokit"
    return env


@contextmanager
def tracking_environment(config):
    """Set the backends' environment defaults (unless the user set them) while a run trains, then restore."""
    defaults = {k: v for k, v in default_environment(config).items() if not os.environ.get(k)}
    if "wandb" in config.logging.report_to:
        Path(defaults.get("WANDB_DIR", os.environ.get("WANDB_DIR", "."))).mkdir(parents=True, exist_ok=True)
    saved = {k: os.environ.get(k) for k in defaults}
    os.environ.update(defaults)
    try:
        yield defaults
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def tracking_callbacks(config, run_name: str) -> list:
    """Callbacks the HF Trainer does not add itself from `report_to`: TensorBoard into logging_dir/<run>,
    and closing the W&B run at the end of training."""
    out = []
    logging_dir = Path(config.logging.logging_dir).expanduser().resolve()
    if "tensorboard" in config.logging.report_to:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        out.append(TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(logging_dir / run_name))))
    if "wandb" in config.logging.report_to:
        out.append(FinishWandbRun())
    return out


def trainer_report_to(config) -> list[str] | str:
    """The `report_to` the HF Trainer gets (TensorBoard is added by `tracking_callbacks` instead)."""
    return [b for b in config.logging.report_to if b != "tensorboard"] or "none"


class FinishWandbRun(TrainerCallback):
    """Close the W&B run when training ends (transformers leaves it open), so each model of a batch
    gets its own run instead of logging into the first one."""

    def on_train_end(self, args, state, control, **kwargs):
        import wandb

        if state.is_world_process_zero and wandb.run is not None:
            wandb.finish()
