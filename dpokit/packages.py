"""Optional packages a config needs, found before anything loads, with the command that installs them.

transformers imports an optimizer's package only when the trainer builds the optimizer, after the
model is loaded; a missing one would fail the run minutes in. `package_problems(config)` names
every package the config's choices need that this environment lacks (located with
`importlib.util.find_spec`, never imported), so `load_config` refuses the config up front, like
the tracking backends (`rules._tracking_rules`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass

from .errors import Problem


@dataclass(frozen=True)
class Package:
    """An importable module, the pip requirement that provides it, and the minimum version needed."""

    module: str
    pip: str
    min_version: str | None = None
    extra: str | None = None  # dpokit's extra that installs it
    env: str = ""  # environment the install command needs (e.g. DeepSpeed without building its kernels)
    pip_flags: str = ""  # e.g. --no-build-isolation for packages that compile against the installed torch

    @property
    def name(self) -> str:
        return self.pip.rsplit("/", 1)[-1]

    def required_version(self) -> str | None:
        return _bitsandbytes_min_version() if self.module == "bitsandbytes" else self.min_version

    def install_command(self) -> str:
        minimum = self.required_version()
        if self.pip.startswith("git+"):
            text = f"pip install {self.pip}"
        else:
            text = f"pip install '{self.pip}>={minimum}'" if minimum else f"pip install {self.pip}"
        if self.pip_flags:
            text += f" {self.pip_flags}"
        if self.env:
            text = f"{self.env} {text}"
        return text + (f"  (or: pip install 'dpokit[{self.extra}]')" if self.extra else "")


def _bitsandbytes_min_version() -> str:
    """The oldest bitsandbytes transformers accepts (it refuses older ones when building the optimizer)."""
    try:
        from transformers.utils.import_utils import BITSANDBYTES_MIN_VERSION

        return BITSANDBYTES_MIN_VERSION
    except ImportError:
        return "0.46.1"


BITSANDBYTES = Package("bitsandbytes", "bitsandbytes", extra="qlora")
# DeepSpeed builds its CUDA kernels on first use with DS_BUILD_OPS=0 (no compiler needed to install it)
DEEPSPEED = Package("deepspeed", "deepspeed", env="DS_BUILD_OPS=0", pip_flags="--no-build-isolation")
FLASH_ATTENTION = {"flash_attention_2": Package("flash_attn", "flash-attn", pip_flags="--no-build-isolation"),
                   "flash_attention_3": Package("flash_attn_interface",
                                                "git+https://github.com/Dao-AILab/flash-attention#subdirectory=hopper")}
# transformers 5.24's optimizers (`training.optim`) that need a package of their own
# (transformers/trainer_optimizer.py); tests/test_packages.py checks every OptimizerNames value is
# either here or in OPTIMIZERS_WITHOUT_PACKAGES, so a transformers upgrade that adds one is noticed.
OPTIMIZER_PACKAGES: dict[str, Package] = {
    **dict.fromkeys(("adamw_bnb_8bit", "adamw_8bit", "paged_adamw_32bit", "paged_adamw_8bit", "ademamix",
                     "ademamix_8bit", "paged_ademamix_32bit", "paged_ademamix_8bit", "lion_32bit", "lion_8bit",
                     "paged_lion_32bit", "paged_lion_8bit", "rmsprop_bnb", "rmsprop_bnb_8bit",
                     "rmsprop_bnb_32bit"), BITSANDBYTES),
    **dict.fromkeys(("galore_adamw", "galore_adamw_8bit", "galore_adafactor", "galore_adamw_layerwise",
                     "galore_adamw_8bit_layerwise", "galore_adafactor_layerwise"),
                    Package("galore_torch", "git+https://github.com/jiaweizzhao/GaLore")),
    **dict.fromkeys(("apollo_adamw", "apollo_adamw_layerwise"),
                    Package("apollo_torch", "git+https://github.com/zhuhanqing/APOLLO")),
    **dict.fromkeys(("lomo", "adalomo"), Package("lomo_optim", "lomo-optim")),
    "grokadamw": Package("grokadamw", "grokadamw"),
    **dict.fromkeys(("adamw_torch_4bit", "adamw_torch_8bit"), Package("torchao", "torchao", "0.4.0")),
    **dict.fromkeys(("schedule_free_radam", "schedule_free_adamw", "schedule_free_sgd"),
                    Package("schedulefree", "schedulefree", "1.2.6")),
    "stable_adamw": Package("optimi", "torch-optimi"),
    "adamw_anyprecision": Package("torchdistx", "git+https://github.com/pytorch/torchdistx"),
    "adamw_torch_xla": Package("torch_xla", "torch_xla"),
    "adamw_torch_npu_fused": Package("torch_npu", "torch_npu"),
}
# The optimizers transformers builds from bitsandbytes (its trainer_optimizer._BITSANDBYTES_OPTIMIZERS;
# tests/test_packages.py turns a difference into a failing test).
BNB_OPTIMIZERS = frozenset(name for name, package in OPTIMIZER_PACKAGES.items() if package is BITSANDBYTES)
OPTIMIZERS_WITHOUT_PACKAGES = frozenset({"adamw_torch", "adamw_torch_fused", "adafactor", "sgd", "adagrad",
                                         "rmsprop"})


def missing(package: Package) -> str | None:
    """Why `package` cannot be used here (not installed, or older than needed), or None when it can."""
    if importlib.util.find_spec(package.module) is None:
        return "is not installed"
    minimum = package.required_version()
    if minimum:
        from packaging.version import Version

        try:
            installed = importlib.metadata.version(package.pip)
        except importlib.metadata.PackageNotFoundError:
            return None  # importable under another distribution name: let the library judge
        if Version(installed) < Version(minimum):
            return f"is {installed}, older than the {minimum} needed"
    return None


def needed_packages(config) -> list[tuple[str, str, Package]]:
    """(config path, what needs it, package) for every optional package the config's choices need."""
    from .scaling import DEEPSPEED as DEEPSPEED_STRATEGIES
    from .scaling import resolve_strategy

    out = []
    optim = config.training.optim
    if optim in OPTIMIZER_PACKAGES:
        out.append(("training.optim", f"optimizer '{optim}'", OPTIMIZER_PACKAGES[optim]))
    load_in = config.quantization.load_in
    if load_in != "none":
        out.append(("quantization.load_in", f"{load_in} loading (bitsandbytes quantizes the weights)", BITSANDBYTES))
    strategy = resolve_strategy(config.distributed, config.gpu.use_ddp)
    if strategy in DEEPSPEED_STRATEGIES and not config.distributed.accelerate_config:
        out.append(("distributed.strategy", f"strategy {strategy} (DeepSpeed ZeRO)", DEEPSPEED))
    return out


def package_problems(config) -> list[Problem]:
    """A Problem for each package the config needs that this environment lacks, with its install command."""
    problems = []
    for where, what, package in needed_packages(config):
        why = missing(package)
        if why is None:
            continue
        hint = package.install_command()
        if where == "training.optim":
            hint += "; or an optimizer that needs no extra package, e.g. optim: adamw_torch"
        problems.append(Problem(where, f"{what} needs the {package.name} package, which {why}", hint))
    return problems
