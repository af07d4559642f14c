"""The method registry: each of the guide's methods -> the TRL trainer that runs it.

One table, read by the config validator (which loss types a method accepts), the trainer
builder (which TRL classes to use) and the docs. Importing this module does not import TRL.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

# Every loss type TRL 1.16's DPOTrainer offers (DPOConfig.loss_type); tests check this list
# against the installed TRL so a TRL upgrade that adds or removes one is noticed.
DPO_LOSS_TYPES: tuple[str, ...] = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard",
    "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)
KTO_LOSS_TYPES: tuple[str, ...] = ("kto", "apo_zero_unpaired")

# Names older tutorials (and the config guide) use that TRL no longer has, with what to do.
RENAMED_LOSS_TYPES: dict[str, str] = {
    "kto_pair": "KTO is no longer a DPO loss type in TRL; it has its own trainer on unpaired data. "
    "Set `post_training.method: kto` (dpokit unpairs your chosen/rejected pairs for KTOTrainer) "
    "and remove `loss_type` (or set it to `kto`).",
    "aot_pair": "TRL renamed `aot_pair` to `aot_unpaired`; use `loss_type: aot_unpaired`.",
}

# Losses on which `label_smoothing` has an effect in TRL; with any other it would be ignored.
LABEL_SMOOTHING_LOSSES = frozenset({"robust", "exo_pair", "aot", "aot_unpaired"})


@dataclass(frozen=True)
class Method:
    """How one `post_training.method` is run."""

    name: str
    summary: str
    trainer: str  # "module:Class" of the TRL trainer
    config: str  # "module:Class" of its config
    loss_types: tuple[str, ...]  # accepted `loss_type` values (empty: the method has none)
    default_loss: str | None
    paired: bool  # needs chosen+rejected pairs (KTO takes unpaired rows; dpokit converts)
    uses_reference: bool  # has a reference model term (ORPO is reference-free)
    metrics: tuple[str, ...] = field(default=())  # metric names the trainer logs

    def trainer_class(self):
        return _load(self.trainer)

    def config_class(self):
        return _load(self.config)


_DPO_METRICS = (
    "loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
    "logps/chosen", "logps/rejected", "entropy", "mean_token_accuracy",
)

METHODS: dict[str, Method] = {
    "dpo": Method(
        name="dpo",
        summary="Direct Preference Optimization (TRL DPOTrainer); `loss_type` picks the variant.",
        trainer="trl:DPOTrainer",
        config="trl:DPOConfig",
        loss_types=DPO_LOSS_TYPES,
        default_loss="sigmoid",
        paired=True,
        uses_reference=True,
        metrics=_DPO_METRICS,
    ),
    "ipo": Method(
        name="ipo",
        summary="Identity Preference Optimization: DPOTrainer with `loss_type: ipo`.",
        trainer="trl:DPOTrainer",
        config="trl:DPOConfig",
        loss_types=("ipo",),
        default_loss="ipo",
        paired=True,
        uses_reference=True,
        metrics=_DPO_METRICS,
    ),
    "kto": Method(
        name="kto",
        summary="Kahneman-Tversky Optimization (TRL KTOTrainer) on unpaired desirable/undesirable rows.",
        trainer="trl:KTOTrainer",
        config="trl:KTOConfig",
        loss_types=KTO_LOSS_TYPES,
        default_loss="kto",
        paired=False,
        uses_reference=True,
        metrics=("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen",
                 "logps/rejected", "kl"),
    ),
    "orpo": Method(
        name="orpo",
        summary="Odds Ratio Preference Optimization (trl.experimental.orpo): SFT + odds-ratio term, "
        "no reference model.",
        trainer="trl.experimental.orpo:ORPOTrainer",
        config="trl.experimental.orpo:ORPOConfig",
        loss_types=(),
        default_loss=None,
        paired=True,
        uses_reference=False,
        metrics=("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                 "logps/chosen", "logps/rejected", "nll_loss", "log_odds_ratio", "log_odds_chosen"),
    ),
}


def _load(path: str):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)
