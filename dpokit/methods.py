"""Preference methods as strategies: one object per `post_training.method`.

A method knows its TRL trainer and config classes, the TRL arguments only it takes, the checks
of what TRL resolved, its own config rules and advice, and how many training rows a pair becomes.
Adding a method means writing one subclass here and registering it (`register`); the schema,
the rules, the dry run and the trainer builder all read the registry. Importing this module does
not import TRL.
"""

from __future__ import annotations

import difflib
import importlib

from .errors import Problem

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

_DPO_METRICS = (
    "loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
    "logps/chosen", "logps/rejected", "entropy", "mean_token_accuracy",
)


class Method:
    """How one `post_training.method` is run. Subclasses override what differs."""

    name: str = ""
    summary: str = ""
    trainer: str = ""  # "module:Class" of the TRL trainer
    config: str = ""  # "module:Class" of its config
    loss_types: tuple[str, ...] = ()  # accepted `loss_type` values (empty: the method has none)
    default_loss: str | None = None
    loss_aliases: dict[str, str] = {}  # old names this method maps to one of its loss types
    combines_losses: bool = False  # several loss types with `loss_weights`
    uses_reference: bool = True  # has a reference model term
    rows_per_pair: int = 1  # training rows one preference pair becomes
    metrics: tuple[str, ...] = ()  # metric names the trainer logs (without `eval_`)
    # What one batch row costs in a training step (the memory and time estimates read these):
    sequences_per_row: int = 2  # sequences the policy runs with gradients (a pair: chosen and rejected)
    no_grad_sequences_per_row: int = 0  # extra policy sequences without gradients (KTO's KL completions)
    full_logits: bool = False  # scores whole sequences through the full LM head (else TRL's fused head, completions)

    # ------------------------------------------------------------------ TRL classes
    def trainer_class(self):
        return _load(self.trainer)

    def config_class(self):
        return _load(self.config)

    def hooks(self) -> type:
        """The mixin with dpokit's hooks into this trainer (dpokit/trl_hooks.py)."""
        from .trl_hooks import TruncationHooks

        return TruncationHooks

    # ------------------------------------------------------------------ config -> TRL
    def loss_types_of(self, post_training) -> list[str]:
        """The configured loss types as a list (the method's default when none is set)."""
        lt = post_training.loss_type
        if lt is None:
            return [self.default_loss] if self.default_loss else []
        return [lt] if isinstance(lt, str) else list(lt)

    def trl_kwargs(self, config) -> dict:
        """Arguments of this method's TRL config class that only it takes."""
        return {}

    def check_resolved(self, trainer, config) -> None:
        """Raise if TRL resolved this method's settings differently from the config (no silent fallback)."""

    def trainer_rows(self, dataset, config):
        """The rows handed to the TRL trainer for a split of preference pairs (most methods: the pairs as they are)."""
        return dataset

    # ------------------------------------------------------------------ rules and advice
    def rules(self, config) -> list[Problem]:
        """Problems of the config for this method (they stop a run before anything loads)."""
        pt = config.post_training
        out = []
        requested = [pt.loss_type] if isinstance(pt.loss_type, str) else (pt.loss_type or [])
        for lt in requested:
            if lt in self.loss_types or lt in self.loss_aliases:
                continue
            if lt in RENAMED_LOSS_TYPES:
                out.append(Problem("post_training.loss_type", f"'{lt}' is not available", RENAMED_LOSS_TYPES[lt]))
            elif not self.loss_types:
                out.append(Problem("post_training.loss_type", f"method '{self.name}' has no loss_type (got '{lt}')",
                                   f"remove `loss_type` ({self.fixed_loss_note()})"))
            else:
                owner = next((m.name for m in METHODS.values() if lt in m.loss_types and m.name != self.name), None)
                hint = f"method '{self.name}' accepts: {', '.join(self.loss_types)}"
                if owner:
                    hint += f"; '{lt}' is a loss of method '{owner}': set `method: {owner}`"
                out.append(Problem("post_training.loss_type", f"'{lt}' is not a loss type of method '{self.name}'",
                                   hint))
        if pt.loss_weights is not None and not self.combines_losses:
            out.append(Problem("post_training.loss_weights", f"only DPO combines loss types; method is '{self.name}'",
                               "remove `loss_weights`"))
        types = self.loss_types_of(pt)
        if pt.label_smoothing > 0 and not LABEL_SMOOTHING_LOSSES.intersection(types):
            out.append(Problem("post_training.label_smoothing",
                               f"{pt.label_smoothing} would be ignored: TRL applies label smoothing only to the "
                               f"robust, exo_pair and aot losses, and the loss is {types or self.name}",
                               "set `loss_type: robust` (conservative DPO under label noise) or set label_smoothing: 0"))
        if not self.uses_reference:
            if pt.ref_model_id:
                out.append(Problem("post_training.ref_model_id", f"{self.name} is reference-free, so a reference "
                                   "model would not be used", "remove `ref_model_id`"))
            if pt.precompute_ref_log_probs:
                out.append(Problem("post_training.precompute_ref_log_probs", f"{self.name} has no reference model",
                                   "remove precompute_ref_log_probs"))
        return out

    def advice(self, config) -> list[str]:
        """The method's own tips for this config (nothing here stops a run)."""
        return []

    def fixed_loss_note(self) -> str:
        return f"{self.name}'s loss is fixed"

    def reference_note(self, config, policy_id: str) -> str:
        """What the reference model is, in words, for the dry run and the run log."""
        pt = config.post_training
        if not self.uses_reference:
            return f"none ({self.name} is reference-free)"
        if pt.use_ref_model:
            return (f"a separate frozen copy of {pt.ref_model_id or policy_id} (costs its weights in memory; "
                    "use_ref_model: false reuses the base under the adapter)")
        return "the base model with the LoRA adapter switched off — not an SFT model; no second copy in memory"


class DPO(Method):
    name = "dpo"
    summary = "Direct Preference Optimization (TRL DPOTrainer); `loss_type` picks the variant."
    trainer, config = "trl:DPOTrainer", "trl:DPOConfig"
    loss_types, default_loss = DPO_LOSS_TYPES, "sigmoid"
    combines_losses = True
    metrics = _DPO_METRICS

    def trl_kwargs(self, config) -> dict:
        pt = config.post_training
        return dict(loss_type=self.loss_types_of(pt), loss_weights=pt.loss_weights,
                    label_smoothing=pt.label_smoothing, precompute_ref_log_probs=pt.precompute_ref_log_probs)

    def check_resolved(self, trainer, config) -> None:
        got = list(getattr(trainer, "loss_types", trainer.args.loss_type))
        want = self.loss_types_of(config.post_training)
        if got != want:
            raise RuntimeError(f"TRL resolved loss_type {got}, config asked for {want}")

    def rules(self, config) -> list[Problem]:
        pt, out = config.post_training, super().rules(config)
        types = self.loss_types_of(pt)
        if pt.loss_weights is not None and len(pt.loss_weights) != len(types):
            out.append(Problem("post_training.loss_weights", f"{len(pt.loss_weights)} weights for {len(types)} loss "
                               f"types {types}", "give one weight per loss type, e.g. loss_type: [sigmoid, sft] "
                               "with loss_weights: [1, 1]"))
        if pt.label_smoothing > 0 and "robust" in types and pt.label_smoothing >= 0.5:
            out.append(Problem("post_training.label_smoothing", f"{pt.label_smoothing} is not in [0, 0.5) for robust",
                               "it is the probability a label is flipped; the robust-DPO paper uses 0.1"))
        if pt.label_smoothing == 0 and "exo_pair" in types:
            out.append(Problem("post_training.label_smoothing", "exo_pair needs label_smoothing > 0",
                               "the EXO paper recommends label_smoothing: 0.001"))
        return out


class IPO(DPO):
    name = "ipo"
    summary = "Identity Preference Optimization: DPOTrainer with `loss_type: ipo`."
    loss_types, default_loss = ("ipo",), "ipo"


class KTO(Method):
    name = "kto"
    summary = ("Kahneman-Tversky Optimization (TRL KTOTrainer) on unpaired rows: each pair becomes a desirable and "
               "an undesirable row, interleaved (seeded) so every batch holds both.")
    trainer, config = "trl:KTOTrainer", "trl:KTOConfig"
    loss_types, default_loss = KTO_LOSS_TYPES, "kto"
    loss_aliases = {"kto_pair": "kto"}
    rows_per_pair = 2  # each pair becomes a desirable and an undesirable row
    sequences_per_row, no_grad_sequences_per_row = 1, 1  # a row, and its KL completion (prompt + another answer)
    metrics = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected", "kl")

    def trl_kwargs(self, config) -> dict:
        pt = config.post_training
        loss = self.loss_types_of(pt)[0]
        return dict(loss_type=self.loss_aliases.get(loss, loss), precompute_ref_log_probs=pt.precompute_ref_log_probs)

    def trainer_rows(self, dataset, config):
        """Unpaired rows, alternating desirable and undesirable, from a seeded shuffle (`unpair_interleaved`).

        TRL's own unpairing puts each block of up to 1000 pairs as all chosen rows, then all rejected ones,
        and KTOTrainer reads its data in order (its KL estimate pairs each row with a neighbour of the
        same batch): a short run would see only desirable rows."""
        return unpair_interleaved(dataset, config.seed)

    def rules(self, config) -> list[Problem]:
        out = super().rules(config)
        if config.training.per_device_train_batch_size < 2:
            out.append(Problem("training.per_device_train_batch_size", "KTO needs at least 2 rows per device batch "
                               "(its KL term pairs each prompt with another row's completion)",
                               "set per_device_train_batch_size: 2 or more"))
        return out


class ORPO(Method):
    name = "orpo"
    summary = "Odds Ratio Preference Optimization (trl.experimental.orpo): SFT + odds-ratio term, no reference model."
    trainer, config = "trl.experimental.orpo:ORPOTrainer", "trl.experimental.orpo:ORPOConfig"
    uses_reference = False
    full_logits = True  # its trainer computes the full (2·batch, sequence, vocabulary) logits, and an SFT term on them
    metrics = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
               "logps/chosen", "logps/rejected", "nll_loss", "log_odds_ratio", "log_odds_chosen")

    def hooks(self) -> type:
        from .trl_hooks import OrpoTruncationHooks

        return OrpoTruncationHooks

    def trl_kwargs(self, config) -> dict:
        return dict(max_completion_length=config.training.max_completion_length)

    def fixed_loss_note(self) -> str:
        return "ORPO's loss is fixed: SFT + odds-ratio term"

    def advice(self, config) -> list[str]:
        pt = config.post_training
        if pt.use_ref_model or pt.beta != 0.1:
            return ["orpo is reference-free: use_ref_model is not used, and beta is ORPO's λ "
                    "(weight of the odds-ratio term)"]
        return []


def unpair_interleaved(pairs, seed: int):
    """Preference pairs -> unpaired rows (prompt, completion, label) in the order desirable, undesirable, ...

    The pairs are shuffled with `seed`; row 2i is the chosen answer of the i-th shuffled pair and row
    2i+1 the rejected answer of the pair half the dataset further on. So any run of two or more
    consecutive rows (a batch, read in order) holds both labels, and the two halves of one pair are
    never in the same batch: the KL term, which scores each prompt with another row's completion of
    the batch, sees completions written for other prompts. Other columns are kept on both rows.
    """
    import numpy as np
    from datasets import interleave_datasets

    n = len(pairs)
    if n == 0:
        return pairs
    order = np.random.default_rng(seed).permutation(n)
    others = [c for c in pairs.column_names if c not in ("chosen", "rejected")]

    def side(indices, column: str, label: bool):
        rows = pairs.select(indices).select_columns([*others, column]).rename_column(column, "completion")
        return rows.add_column("label", [label] * len(rows))

    desirable = side(order, "chosen", True)
    undesirable = side(np.roll(order, -(n // 2)), "rejected", False)
    return interleave_datasets([desirable, undesirable])


METHODS: dict[str, Method] = {}


def register(method: Method, replace: bool = False) -> Method:
    """Add a method to the registry (config validation, rules, dry run and trainers read it)."""
    if not method.name:
        raise ValueError("a method needs a name")
    if method.name in METHODS and not replace:
        raise ValueError(f"method '{method.name}' is already registered")
    METHODS[method.name] = method
    return method


def unregister(name: str) -> None:
    METHODS.pop(name, None)


def get_method(name: str) -> Method:
    """The registered method called `name` (KeyError with a did-you-mean otherwise)."""
    try:
        return METHODS[name]
    except KeyError:
        close = difflib.get_close_matches(name, METHODS, n=1)
        raise KeyError(f"unknown method '{name}'" + (f"; did you mean '{close[0]}'?" if close else "")
                       + f" Choose from {', '.join(METHODS)}") from None


for _method in (DPO(), IPO(), KTO(), ORPO()):
    register(_method)


def _load(path: str):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)
