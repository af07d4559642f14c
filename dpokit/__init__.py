"""dpokit: preference fine-tuning (DPO, IPO, KTO, ORPO) with LoRA, from one YAML config.

The public API; the CLI and the notebooks are thin front ends over these functions.
"""

from .config import Config, load_config
from .errors import ConfigError, DataError, DpokitError, ModelError

__version__ = "0.1.0"

# Functions and classes exported lazily: their modules import torch/TRL, which `import dpokit` should not.
# (Submodules such as dpokit.judge or dpokit.losses are imported as modules: `from dpokit import judge`.)
_LAZY = {
    "train": "run",
    "build_trainer": "trainers",
    "load_preference_data": "data",
    "dry_run": "dryrun",
    "evaluate_run": "evaluate",
    "RunDir": "rundir",
    "plot_run": "report",
    "write_report": "report",
    "export_run": "export",
    "ChatModel": "export",
    "chat": "export",
    "build_task_dataset": "tasks",
}

__all__ = ["Config", "ConfigError", "DataError", "DpokitError", "ModelError", "load_config", "__version__",
           *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(name)
