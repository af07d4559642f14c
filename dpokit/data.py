"""Preference data for a run: load it (dpokit/sources.py), normalise it to prompt/chosen/rejected
(dpokit/pairs.py), limit it (max_samples) and split it; the embedded task and held-out rows.

Every source ends as a `datasets.Dataset` with `prompt`, `chosen`, `rejected` columns in one
of two shapes TRL understands: plain strings, or chat messages (lists of {role, content}).
The detected format and every row that was dropped are reported, never silent.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from .errors import DataError
from .pairs import describe_format, describe_prompt_column, normalise, resolve_columns
from .sources import load_raw


@dataclass
class PreferenceData:
    """Normalised splits plus what was detected and done, for reports and the dry run."""

    train: Any
    eval: Any | None
    format: str
    source: str
    notes: list[str] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    fingerprint: str = ""
    heldout: Any | None = None  # embedded task only: prompts never trained on, for judging


def load_preference_data(config, tokenizer_has_chat_template: bool = True) -> PreferenceData:
    """Load, normalise, limit (max_samples) and split the configured dataset."""
    ds_cfg, seed = config.dataset, config.seed
    mode = ds_cfg.chat_template
    as_chat = mode == "always" or (mode == "auto" and tokenizer_has_chat_template)
    heldout, notes = None, []
    if ds_cfg.name.startswith("embedded:"):
        task = embedded_task(ds_cfg, seed)
        raw, heldout = task["train"], task["heldout"]
    else:
        raw = load_raw(ds_cfg, notes)
    cols = resolve_columns(list(raw.column_names), ds_cfg)
    data, fmt, dropped = normalise(raw, ds_cfg, as_chat)
    notes.insert(0, f"format: {describe_format(fmt, cols, as_chat)}")
    prompt_note = describe_prompt_column(ds_cfg.prompt_column, list(raw.column_names), cols[0])
    if prompt_note:
        notes.append(prompt_note)
    if dropped:
        notes.append("dropped rows: " + ", ".join(f"{n} ({why})" for why, n in dropped.items()))
    if ds_cfg.max_samples and len(data) > ds_cfg.max_samples:
        notes.append(f"max_samples: kept {ds_cfg.max_samples} of {len(data)} rows (seeded shuffle, seed {seed})")
        data = data.shuffle(seed=seed).select(range(ds_cfg.max_samples))
    eval_split = None
    if ds_cfg.validation_split > 0:
        n_eval = int(round(len(data) * ds_cfg.validation_split))
        if n_eval == 0 or n_eval >= len(data):
            raise DataError(f"dataset.validation_split: {ds_cfg.validation_split} of {len(data)} rows leaves "
                            f"{n_eval} evaluation row(s) and {len(data) - n_eval} training row(s). "
                            "Use more rows (max_samples) or a different validation_split (0 = no evaluation).")
        parts = data.train_test_split(test_size=n_eval, seed=seed)
        data, eval_split = parts["train"], parts["test"]
    return PreferenceData(train=data, eval=eval_split, format=fmt, source=ds_cfg.name, notes=notes,
                          dropped=dropped, fingerprint=fingerprint(data, eval_split), heldout=heldout)


def heldout_rows(config, n: int):
    """Up to `n` rows never trained on: the embedded task's held-out prompts (with their judge `spec`),
    else the validation split (or, without one, the first training rows)."""
    if config.dataset.name.startswith("embedded:"):
        rows = embedded_task(config.dataset, config.seed)["heldout"]
    else:
        data = load_preference_data(config)
        rows = data.eval if data.eval is not None else data.train
    return rows.select(range(min(n, len(rows))))


def embedded_task(ds_cfg, seed: int):
    """The embedded task's DatasetDict ("train", "heldout") for a dataset section.

    ``dataset.subset`` picks task families, comma-separated ("capital, json"); null means
    `dpokit.tasks.DEFAULT_FAMILIES`.
    """
    from .tasks import FAMILIES, build_task_dataset

    if ds_cfg.name != "embedded:instruct-tasks":
        raise DataError(f"dataset.name: unknown embedded dataset '{ds_cfg.name}'; available: embedded:instruct-tasks")
    families = None
    if ds_cfg.subset:
        families = [f.strip() for f in ds_cfg.subset.split(",") if f.strip()]
        unknown = [f for f in families if f not in FAMILIES]
        if unknown or not families:
            close = [m for f in unknown for m in difflib.get_close_matches(f, FAMILIES, n=1)]
            raise DataError(f"dataset.subset: unknown task families {unknown or [ds_cfg.subset]} of "
                            f"embedded:instruct-tasks" + (f" (did you mean {', '.join(close)}?)" if close else "")
                            + f"; available: {', '.join(FAMILIES)}, or null for the default set")
    return build_task_dataset(seed=seed, families=families)


def fingerprint(*splits) -> str:
    """A short content hash of the splits (stable across processes), for run records and caches."""
    h = hashlib.sha256()
    for split in splits:
        if split is None:
            continue
        for row in split:
            h.update(json.dumps(row, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]
