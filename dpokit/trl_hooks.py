"""Every place dpokit reaches into TRL's private surface, in one module.

TRL 1.16 has no public option for the guide's `max_prompt_length` / `max_completion_length`, for
reusing reference log-probs across runs, or for scoring only completion tokens on CPU; dpokit gets
them by overriding a few of TRL's internal methods. Each override is marked `@override`, and every
private name relied on is checked when this module is imported: if a TRL upgrade renames one, the
user gets an error naming the TRL version instead of a hook that silently does nothing.
"""

from __future__ import annotations

import importlib

from typing_extensions import override

from .compat import check_versions, installed_versions
from .tokens import truncate_ids
from .errors import EnvironmentProblem

# (module, attribute path) of every private name the hooks below rely on.
PRIVATE_SURFACE: tuple[tuple[str, str], ...] = (
    ("trl", "DPOTrainer._prepare_dataset"),
    ("trl", "DPOTrainer._precompute_ref_logps"),
    ("trl", "KTOTrainer._prepare_dataset"),
    ("trl", "KTOTrainer._precompute_ref_logps"),
    ("trl.experimental.orpo", "ORPOTrainer.tokenize_row"),
    ("trl.trainer.utils", "_use_triton"),  # switches the fused LM head to completion tokens only
)


def missing_private_names(surface=PRIVATE_SURFACE) -> list[str]:
    """The names of `surface` the installed TRL does not have."""
    missing = []
    for module_name, path in surface:
        try:
            obj = importlib.import_module(module_name)
            for part in path.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError):
            missing.append(f"{module_name}.{path}")
    return missing


def check_private_surface(surface=PRIVATE_SURFACE) -> None:
    """Raise EnvironmentProblem if the installed TRL lacks a name dpokit's hooks override or call."""
    missing = missing_private_names(surface)
    if missing:
        raise EnvironmentProblem(
            f"TRL {installed_versions(('trl',))['trl']} does not have {', '.join(missing)}, which dpokit hooks into "
            "(dpokit/trl_hooks.py); its prompt/completion truncation or reference cache would silently not apply. "
            "Install the tested versions: `make setup` (or pip install -e . in a fresh venv).")


check_versions()
check_private_surface()


class TruncationHooks:
    """Mixed into TRL's DPO/KTO trainers: the guide's length limits, the reference cache, CPU scoring."""

    dpokit_limits: tuple[int | None, int | None] = (None, None)  # (max_prompt_length, max_completion_length)

    def __init__(self, *args, **kwargs):
        self.dpokit_ref_cache: dict[str, dict] = {}  # outcome of the reference cache per split (refcache.py)
        self.dpokit_reference_fingerprint: str | None = None  # hash of the reference weights, once per trainer
        super().__init__(*args, **kwargs)

    @override
    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        max_prompt, max_completion = self.dpokit_limits
        if max_prompt is None and max_completion is None:
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        # TRL drops every row whose tokenized prompt alone reaches max_length, before these limits apply: a
        # multi-turn hh-rlhf prompt longer than max_seq_length would vanish instead of losing its start, as
        # max_prompt_length says. TRL reads args.max_length in its _prepare_dataset only for that filter, so it
        # is unset for the call and the filter applied below, after the cut.
        max_length, args.max_length = args.max_length, None
        try:
            dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        finally:
            args.max_length = max_length
        # KTO's KL_completion_ids are the batch's completions rotated by one: cut them the same way, or
        # the KL estimate would see longer answers than the loss does.
        completion_keys = [k for k in ("chosen_ids", "rejected_ids", "completion_ids", "KL_completion_ids")
                           if k in dataset.column_names]
        bos = getattr(getattr(processing_class, "tokenizer", processing_class), "bos_token_id", None)

        def cut(example):
            out = {"prompt_ids": truncate_ids(example["prompt_ids"], max_prompt, "end", bos)}
            for k in completion_keys:
                out[k] = truncate_ids(example[k], max_completion, "start")
            return out

        dataset = dataset.map(cut, desc=f"Truncating {dataset_name} prompts/completions (max_prompt_length, "
                                        "max_completion_length)")
        if max_length is not None:  # TRL's filter, on the cut prompts (keeps all when max_prompt_length < max_length)
            dataset = dataset.filter(lambda example: len(example["prompt_ids"]) < max_length,
                                     desc=f"Dropping {dataset_name} prompts that fill max_length")
        return dataset

    @override
    def _precompute_ref_logps(self, dataset, name, batch_size):
        """TRL's reference pass (precompute_ref_log_probs), through dpokit's on-disk cache (refcache.py)."""
        from .refcache import precompute_with_cache

        parent = super()._precompute_ref_logps

        def compute():
            # TRL keeps its own precompute file, keyed by the dataset's fingerprint and a hash of the
            # policy's weights only: a run in bf16 after one in fp32 on the same data would read the fp32
            # log-probs back. dpokit's cache (refcache.py) keys on everything that sets them, so TRL's
            # pass always computes (with datasets' caching off, TRL's file gets a fresh temporary name).
            import datasets

            was_enabled = datasets.is_caching_enabled()
            datasets.disable_caching()
            try:
                with completion_tokens_only():
                    return parent(dataset, name, batch_size)
            finally:
                if was_enabled:
                    datasets.enable_caching()

        return precompute_with_cache(self, dataset, name, compute)

    @override
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        with completion_tokens_only():
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)


def release_reference(trainer) -> bool | None:
    """Drop the separate reference model once TRL has precomputed its log-probs (`precompute_ref_log_probs`).

    TRL keeps `trainer.ref_model` for the whole run although, with the log-probs in the dataset, no training
    or evaluation step reads it again: for a 7B model that is ~28 GB held for nothing. Its references are the
    trainer's attribute and the list of models accelerate prepared (`Accelerator._models`); the caller must
    drop its own. Returns True when the model was garbage-collected (checked with a weak reference), False
    when something still holds it, None when there was nothing to release.
    """
    import gc
    import weakref

    reference = getattr(trainer, "ref_model", None)  # ORPO has none
    if reference is None or not getattr(trainer.args, "precompute_ref_log_probs", False):
        return None
    probe = weakref.ref(reference)
    prepared = getattr(trainer.accelerator, "_models", None)  # accelerate keeps every prepared model here
    if isinstance(prepared, list):
        prepared[:] = [m for m in prepared if m is not reference]
    trainer.ref_model = None
    del reference
    gc.collect()
    return probe() is None


class completion_tokens_only:
    """Context in which TRL's fused LM head scores only the completion tokens on CPU too (same log-probs).

    TRL projects every position through the LM head (prompt and padding too, then zeroes them)
    unless the device runs Triton, to keep tile shapes fixed for compilers. Eager CPU has no such
    constraint: skipping the positions it throws away made a CPU step ~27% faster and shrank the
    head's temporaries by the prompt's share (benchmarks/bench_overhead.py).
    """

    def __enter__(self):
        import trl.trainer.utils as trl_utils

        self._original = trl_utils._use_triton
        original = self._original
        trl_utils._use_triton = lambda device: device.type == "cpu" or original(device)
        return self

    def __exit__(self, *exc):
        import trl.trainer.utils as trl_utils

        trl_utils._use_triton = self._original
        return False


class OrpoTruncationHooks:
    """Mixed into TRL's ORPO trainer, which tokenizes row by row: cut the prompt (keep its end) and the
    completions (keep their start)."""

    dpokit_limits: tuple[int | None, int | None] = (None, None)

    @override
    def tokenize_row(self, feature, model=None):
        row = super().tokenize_row(feature, model)
        max_prompt, max_completion = self.dpokit_limits
        n_prompt = len(row["prompt_input_ids"])
        bos = getattr(self.processing_class, "bos_token_id", None)
        prompt = truncate_ids(row["prompt_input_ids"], max_prompt, "end", bos)
        row["prompt_input_ids"], row["prompt_attention_mask"] = prompt, [1] * len(prompt)
        for side in ("chosen", "rejected"):
            answer = truncate_ids(row[f"{side}_input_ids"][n_prompt:], max_completion, "start")
            labels = truncate_ids(row[f"{side}_labels"][n_prompt:], max_completion, "start")
            row[f"{side}_input_ids"] = prompt + answer
            row[f"{side}_attention_mask"] = [1] * (len(prompt) + len(answer))
            row[f"{side}_labels"] = [-100] * len(prompt) + labels
        return row
