"""The one place that knows which library versions dpokit is tested with and how their APIs differ.

TRL and transformers rename arguments between releases; every such difference is handled here
so the rest of dpokit is written against one API, and an untested version fails fast with the
supported range instead of a confusing error deep in training.
"""

from __future__ import annotations

import dataclasses
from importlib import metadata

from packaging.version import Version

from .errors import EnvironmentProblem

# Tested ranges (keep in step with pyproject.toml).
SUPPORTED = {
    "trl": (">=1.16", "<1.17"),
    "transformers": (">=5.0", "<6"),
    "peft": (">=0.21", "<0.22"),
    "datasets": (">=5.0", "<6"),
    "accelerate": (">=1.15", "<1.16"),
}


def installed_versions(packages=("torch", "transformers", "trl", "peft", "datasets", "accelerate", "gguf",
                                 "pydantic", "dpokit")) -> dict[str, str | None]:
    out = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def check_versions() -> None:
    """Raise EnvironmentProblem naming every package outside its tested range."""
    bad = []
    for name, (low, high) in SUPPORTED.items():
        try:
            v = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            bad.append(f"{name} is not installed (need {low},{high})")
            continue
        lo, hi = Version(low[2:]), Version(high[1:])
        if not (lo <= v < hi):
            bad.append(f"{name} {v} is outside the tested range {low},{high}")
    if bad:
        raise EnvironmentProblem("installed versions dpokit is not tested with:\n  - " + "\n  - ".join(bad)
                                 + "\nReinstall the project's pins: `make setup` (or pip install -e . in a fresh venv).")


def _fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def checkpointing_kwargs(config_cls, enabled: bool) -> dict:
    """transformers 5.24 renamed gradient_checkpointing to activation_checkpointing (old name warns)."""
    if "activation_checkpointing" in _fields(config_cls):
        return {"activation_checkpointing": enabled, "gradient_checkpointing": None}
    return {"gradient_checkpointing": enabled}


def supported_kwargs(config_cls, kwargs: dict) -> tuple[dict, list[str]]:
    """Split kwargs into those the config class accepts and the names it does not have."""
    names = _fields(config_cls)
    return {k: v for k, v in kwargs.items() if k in names}, [k for k in kwargs if k not in names]


class _BelowError:
    """logging filter: keep only ERROR and above (for loggers whose level a library resets on import)."""

    @staticmethod
    def filter(record) -> bool:
        import logging

        return record.levelno >= logging.ERROR


def quiet_import_noise() -> None:
    """Silence what optional libraries print while being imported, before they are: bitsandbytes' note
    about an optional CPU kernel package, DeepSpeed's "Setting accelerator to CPU". Errors still show."""
    import logging

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    deepspeed = logging.getLogger("DeepSpeed")  # DeepSpeed sets this logger's level when it is imported
    if not any(isinstance(f, _BelowError) for f in deepspeed.filters):
        deepspeed.addFilter(_BelowError())


def quiet_library_noise(log_level: str = "info") -> None:
    """Keep deprecation chatter of the pinned libraries out of the user's console.

    `logging.log_level` sets dpokit's own verbosity; transformers/TRL are kept one step quieter
    (their `info` prints whole model configs), except at `debug`, where everything shows.
    """
    import logging
    import warnings

    for pattern in (r".*is_gradient_checkpointing.*", r".*gradient_checkpointing.* is deprecated.*",
                    r".*fan_in_fan_out is set to False.*"):
        warnings.filterwarnings("ignore", message=pattern)
    library_level = {"debug": "info", "info": "warning"}.get(log_level, log_level)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity(getattr(logging, library_level.upper()))
    logging.getLogger("dpokit").setLevel(getattr(logging, log_level.upper()))
