"""Reference log-prob cache: the reference model's log-probs are computed once and reused across runs.

They depend on the reference weights, the token ids it reads (model, tokenizer, data, truncation),
how TRL cuts a batch (max_length, truncation_mode), the precision and the library code — not on
beta, the loss type or the learning rate. So a beta sweep, a loss comparison or a repeated run over
the same data pays for the reference forward pass once. Entries are
`$DPOKIT_CACHE/ref_logps/<key>.parquet` (default `~/.cache/dpokit/ref_logps`), written atomically,
with a `<key>.json` beside each saying what it was computed from. `DPOKIT_REF_CACHE=off` disables it.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime
from pathlib import Path

from .files import atomic_write_text

CACHE_FORMAT = 1
# DPOConfig fields that change the reference log-probs of a row (beta, loss_type, lr ... do not).
LOGP_ARGS = ("max_length", "truncation_mode", "padding_free", "ld_alpha", "bf16", "fp16", "disable_dropout")
# Model config entries that cannot change the log-probs a causal LM computes from given weights, so a
# reference whose config object differs only in them reuses the entry. tests/test_refcache.py changes
# each one on real models of three families and checks the logits stay bit-identical and the entry hits.
INCIDENTAL_CONFIG_FIELDS = frozenset({
    # where the model came from and what saved it
    "_name_or_path", "name_or_path", "_model_name_or_path", "_commit_hash", "transformers_version", "architectures",
    # dtype labels: the dtype the weights really have is part of `weights_fingerprint`
    "dtype", "torch_dtype",
    # the KV cache serves generation only (TRL's forward passes use_cache=False)
    "use_cache",
    # token ids read by generation and the tokenizer, not by the forward pass (pad_token_id stays in the
    # key: some families derive position ids from it)
    "bos_token_id", "eos_token_id", "unk_token_id", "sep_token_id", "decoder_start_token_id",
    # initialisation of new weights, and sequence-classification heads a causal LM does not have
    "initializer_range", "id2label", "label2id", "num_labels", "problem_type", "finetuning_task",
    "classifier_dropout", "summary_type", "summary_use_proj", "summary_activation", "summary_proj_to_labels",
    "summary_first_dropout",
    # generation defaults some older configs still carry
    "max_length", "min_length", "do_sample", "num_beams", "temperature", "top_k", "top_p", "repetition_penalty",
    "length_penalty", "no_repeat_ngram_size", "num_return_sequences", "early_stopping", "tokenizer_class",
    "prefix", "task_specific_params",
})


def logit_config(model_config) -> dict:
    """The model config's entries that can change its log-probs (INCIDENTAL_CONFIG_FIELDS left out)."""
    return {k: v for k, v in model_config.to_dict().items() if k not in INCIDENTAL_CONFIG_FIELDS}


def enabled() -> bool:
    """False when the environment switches the cache off (DPOKIT_REF_CACHE=off/0/false/no)."""
    return os.environ.get("DPOKIT_REF_CACHE", "on").strip().lower() not in ("off", "0", "false", "no")


def cache_dir() -> Path:
    """Where entries live: `<dpokit cache>/ref_logps` ($DPOKIT_CACHE or ~/.cache/dpokit)."""
    from .embedded import cache_root

    return cache_root() / "ref_logps"


# ----------------------------------------------------------------------------- fingerprints


def weights_fingerprint(named_tensors) -> str:
    """A content hash of (name, dtype, shape, bytes) of every tensor; tied tensors are hashed once.

    xxh3-128 reads ~15 GB/s, so a 135M-parameter model costs ~40 ms (SHA-256 would take ~1 s).
    """
    import torch
    import xxhash

    h = xxhash.xxh3_128()
    seen: dict[tuple, str] = {}
    for name, tensor in sorted(named_tensors, key=lambda item: item[0]):
        t = tensor.detach()
        ident = (t.data_ptr(), t.dtype, tuple(t.shape), t.device.type)
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        if ident in seen and t.numel():
            h.update(f"tied:{seen[ident]}".encode())
            continue
        seen[ident] = name
        t = t.to("cpu").contiguous()
        if t.numel():
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def reference_tensors(trainer) -> list[tuple[str, object]]:
    """The tensors that define the reference model TRL uses, with wrapper-independent names.

    A separate `ref_model` counts whole. Otherwise the reference is the policy with its adapters
    switched off (or its adapter named 'ref', when it has one): every other adapter's weights are
    left out, so the LoRA rank, its random init and the seed do not invalidate the cache.
    """
    model = trainer.ref_model if trainer.ref_model is not None else trainer.model
    model = trainer.accelerator.unwrap_model(model)
    adapters = set(getattr(model, "peft_config", {}) or {})
    keep = {"ref"} if trainer.ref_model is None and "ref" in adapters else set()
    out = []
    for name, tensor in model.state_dict().items():
        parts = name.split(".")
        hit = adapters.intersection(parts)
        if hit and not hit <= keep:
            continue
        parts = [p for p in parts if p not in ("base_layer", "original_module")]
        clean = ".".join(parts)
        clean = clean.removeprefix("base_model.model.")
        out.append((clean, tensor))
    return out


def token_columns(dataset) -> list[str]:
    """The columns the reference reads: token ids (prompt, chosen/rejected or KTO's completions) and labels."""
    return sorted(c for c in dataset.column_names if c.endswith("_ids") or c == "label")


def token_fingerprint(dataset) -> str:
    """Hash of the token-id columns in row order: the tokenizer, the data and every truncation."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    columns = token_columns(dataset)
    if not columns:
        raise ValueError("the dataset has no token-id columns")
    table = dataset.select_columns(columns).with_format("arrow")[:]
    h = hashlib.sha256(f"rows={table.num_rows}".encode())
    for name in columns:
        arr = table.column(name).combine_chunks()
        h.update(name.encode())
        if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
            h.update(pc.list_value_length(arr).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64).tobytes())
            arr = pc.list_flatten(arr)
        h.update(arr.to_numpy(zero_copy_only=False).astype(np.int64).tobytes())
    return h.hexdigest()


def key_parts(trainer, dataset) -> dict:
    """Everything the reference log-probs of `dataset` depend on, as a JSON-able dict."""
    from .compat import installed_versions

    fingerprint = trainer.dpokit_reference_fingerprint
    if fingerprint is None:  # once per trainer (train and eval share it)
        fingerprint = weights_fingerprint(reference_tensors(trainer))
        trainer.dpokit_reference_fingerprint = fingerprint
    model = trainer.ref_model if trainer.ref_model is not None else trainer.model
    model = trainer.accelerator.unwrap_model(model)
    config = logit_config(model.config)
    versions = installed_versions(("trl", "transformers", "torch", "peft"))
    return {
        "format": CACHE_FORMAT,
        "reference_weights": fingerprint,
        "model_config": hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest(),
        "attention": getattr(model.config, "_attn_implementation", None),
        "tokens": token_fingerprint(dataset),
        "rows": len(dataset),
        "args": {k: getattr(trainer.args, k, None) for k in LOGP_ARGS},
        "trainer": next(c.__name__ for c in type(trainer).__mro__ if c.__module__.startswith("trl")),
        "kl_term": getattr(trainer, "calculate_KL", None),  # KTO: reference log-probs of mismatched pairs too
        "mixed_precision": str(trainer.accelerator.mixed_precision),
        "device": trainer.accelerator.device.type,
        "versions": versions,
    }


def cache_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


# ----------------------------------------------------------------------------- storage


def load_entry(path: Path, key: str, rows: int):
    """The cached columns as a pyarrow Table, or None if the entry is missing, unreadable or not ours."""
    import pyarrow.parquet as pq

    if not path.exists():
        return None
    try:
        table = pq.read_table(path)
    except Exception:  # a half-copied or foreign file: recompute and overwrite it
        return None
    meta = table.schema.metadata or {}
    if meta.get(b"dpokit_key", b"").decode() != key or table.num_rows != rows or not table.num_columns:
        return None
    return table.replace_schema_metadata(None)


def store_entry(path: Path, key: str, table, parts: dict) -> None:
    """Write the parquet entry and its JSON description atomically (temp file + rename)."""
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    table = table.replace_schema_metadata({"dpokit_key": key})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    info = {"key": key, "created": datetime.now().isoformat(timespec="seconds"), **parts}
    atomic_write_text(path.with_suffix(".json"), json.dumps(info, indent=2, default=str) + "\n")


# ----------------------------------------------------------------------------- the trainer hook


def precompute_with_cache(trainer, dataset, name: str, compute):
    """`dataset` with TRL's reference columns (DPO: ref_chosen_logps/ref_rejected_logps; KTO: ref_logps
    and ref_KL_logps), from the cache or from `compute()`.

    `compute` is TRL's own precompute pass; the columns it adds are stored for the next run. The outcome is
    recorded in `trainer.dpokit_ref_cache[name]` ('hit', 'miss' or 'off') and printed once.
    """
    from accelerate.utils import gather_object
    from datasets import Dataset, concatenate_datasets
    from datasets.table import InMemoryTable

    record = trainer.dpokit_ref_cache
    main = trainer.accelerator.is_main_process
    if not enabled():
        record[name] = {"status": "off"}
        return compute()
    parts = key_parts(trainer, dataset)
    key = cache_key(parts)
    path = cache_dir() / f"{key}.parquet"
    cached = load_entry(path, key, len(dataset))
    # Every process must take the same branch (TRL's pass gathers across processes): a hit only
    # when all of them can read the entry.
    if all(gather_object([cached is not None])):
        record[name] = {"status": "hit", "path": str(path)}
        if main:
            print(f"   reference log-probs ({name}, {len(dataset)} rows): reused from the cache {path.name}",
                  flush=True)
        return concatenate_datasets([dataset, Dataset(InMemoryTable(cached))], axis=1)
    result = compute()
    if main:
        added = [c for c in result.column_names if c not in dataset.column_names]
        store_entry(path, key, result.select_columns(added).with_format("arrow")[:], parts)
        print(f"   reference log-probs ({name}, {len(dataset)} rows): computed and cached as {path.name}",
              flush=True)
    trainer.accelerator.wait_for_everyone()
    record[name] = {"status": "miss", "path": str(path)}
    return result
