"""dpokit: preference fine-tuning (DPO, IPO, KTO, ORPO) with LoRA, from one YAML config.

The public API; the CLI and the notebooks are thin front ends over these functions.
"""

from .config import Config, load_config
from .errors import ConfigError, DataError, DpokitError, ModelError

__version__ = "0.1.0"

__all__ = ["Config", "ConfigError", "DataError", "DpokitError", "ModelError", "load_config",
           "load_preference_data", "build_trainer", "train", "explain", "__version__"]


def __getattr__(name):  # heavy imports (torch, TRL) only when used
    if name == "train":
        from .run import train

        return train
    if name == "build_trainer":
        from .trainers import build_trainer

        return build_trainer
    if name == "load_preference_data":
        from .data import load_preference_data

        return load_preference_data
    if name == "explain":
        from .explain import explain

        return explain
    raise AttributeError(name)
