"""Preference data: load from anywhere, detect the format, map columns, clean, split.

Every source ends as a `datasets.Dataset` with `prompt`, `chosen`, `rejected` columns in one
of two shapes TRL understands: plain strings, or chat messages (lists of {role, content}).
The detected format and every row that was dropped are reported, never silent.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DataError

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".gz": "json", ".parquet": "parquet", ".csv": "csv"}
# Column names of well-known datasets, so a missing column can be answered with the mapping.
KNOWN_LAYOUTS = [
    ("question", "response_j", "response_k"),  # lvwerra/stack-exchange-paired
    ("instruction", "chosen_response", "rejected_response"),
    ("input", "preferred", "dispreferred"),
    ("prompt", "chosen", "rejected"),
]
ROLES = {"system", "user", "assistant", "tool"}
HH_TURN = re.compile(r"\n\n(Human|Assistant):")


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


# ----------------------------------------------------------------------------- loading


def load_raw(ds_cfg):
    """Load the configured split as a `datasets.Dataset` (no normalisation yet)."""
    import datasets

    name = ds_cfg.name
    path = Path(name).expanduser()
    if name.startswith("embedded:"):
        raise DataError("load_raw does not handle embedded datasets; use load_preference_data")
    if path.exists():
        return _load_local(path, ds_cfg)
    if _looks_like_path(name):
        raise DataError(f"dataset.name: '{name}' looks like a path but does not exist "
                        f"(relative paths are resolved from {Path.cwd()}). Check the path.")
    try:
        return datasets.load_dataset(name, ds_cfg.subset, split=ds_cfg.split)
    except ValueError as e:  # unknown split or subset
        raise DataError(f"dataset.split/subset: cannot load '{name}' (subset={ds_cfg.subset!r}, "
                        f"split={ds_cfg.split!r}): {_first_line(e)}") from None
    except Exception as e:  # offline, missing repo, auth ...
        offline = "offline" in str(e).lower() or _hub_offline()
        msg = (f"dataset.name: '{name}' is not a local file or directory and cannot be fetched from the "
               f"Hugging Face Hub ({type(e).__name__}: {_first_line(e)}).")
        if offline:
            msg += " HF_HUB_OFFLINE is set or there is no network: download it once on a machine with access " \
                   "(`datasets.load_dataset(...).save_to_disk(DIR)` or the hub cache), or use a local file."
        raise DataError(msg) from None


def _load_local(path: Path, ds_cfg):
    import datasets

    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists():
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if ds_cfg.split not in loaded:
                    raise DataError(f"dataset.split: '{ds_cfg.split}' is not in {path}; splits: {list(loaded)}")
                return loaded[ds_cfg.split]
            return loaded
        files = sorted(p for p in path.rglob("*") if p.is_file() and _builder_for(p))
        if not files:
            raise DataError(f"dataset.name: directory {path} has no .jsonl/.json/.jsonl.gz/.parquet/.csv files")
        split_files = [p for p in files if p.name.split(".")[0] == ds_cfg.split] or files
        builder = _builder_for(split_files[0])
        return _load_files(builder, [str(p) for p in split_files])
    builder = _builder_for(path)
    if builder is None:
        raise DataError(f"dataset.name: {path} has an unsupported extension; use .jsonl, .json, .jsonl.gz, "
                        ".parquet or .csv")
    return _load_files(builder, [str(path)])


def _load_files(builder: str, files: list[str]):
    import logging

    import datasets

    # datasets logs its own traceback for unreadable files; ours is the message the user needs
    ds_logger = logging.getLogger("datasets")
    level = ds_logger.level
    ds_logger.setLevel(logging.CRITICAL)
    try:
        return datasets.load_dataset(builder, data_files=files, split="train")
    except Exception as e:
        kind = "JSON lines (one JSON object per line)" if builder == "json" else builder
        raise DataError(f"dataset.name: could not read {files[0]} as {kind}: {_first_line(e)}. "
                        "Check the file format (a .jsonl file needs one object per line).") from None
    finally:
        ds_logger.setLevel(level)


def _builder_for(path: Path) -> str | None:
    suffixes = "".join(path.suffixes[-2:])
    if suffixes.endswith((".jsonl.gz", ".json.gz")):
        return "json"
    return FILE_BUILDERS.get(path.suffix) if path.suffix != ".gz" else None


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or _builder_for(Path(name)) is not None or name.count("/") > 1


def _hub_offline() -> bool:
    import os

    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


# ----------------------------------------------------------------------------- formats


def resolve_columns(columns: list[str], ds_cfg) -> tuple[str | None, str, str]:
    """The (prompt, chosen, rejected) column names, or a DataError suggesting the mapping."""
    missing = [(key, getattr(ds_cfg, key)) for key in ("chosen_column", "rejected_column")
               if getattr(ds_cfg, key) not in columns]
    if missing:
        hint = _suggest_mapping(columns)
        raise DataError(
            "dataset: column(s) " + ", ".join(f"{key}='{col}'" for key, col in missing)
            + f" not found. The dataset has columns: {columns}." + hint)
    return _prompt_column(columns, ds_cfg.prompt_column), ds_cfg.chosen_column, ds_cfg.rejected_column


def _prompt_column(columns: list[str], configured: str | None) -> str | None:
    """The prompt column, or None for data without one.

    null says so explicitly; the default name 'prompt' may be absent (implicit-prompt data); any
    other configured name must exist."""
    if configured is None:
        return None
    if configured in columns:
        return configured
    if configured != "prompt":
        close = difflib.get_close_matches(configured, columns, n=1)
        raise DataError(f"dataset.prompt_column: '{configured}' not found; columns: {columns}."
                        + (f" Did you mean '{close[0]}'?" if close else "")
                        + " Set prompt_column: null for data without a prompt column (implicit prompt as in "
                        "hh-rlhf, or conversational message lists).")
    return None


def _suggest_mapping(columns: list[str]) -> str:
    for p, c, r in KNOWN_LAYOUTS:
        if c in columns and r in columns:
            lines = [f"  chosen_column: {c}", f"  rejected_column: {r}"]
            if p in columns:
                lines.insert(0, f"  prompt_column: {p}")
            return " Map them in the config:\n dataset:\n" + "\n".join(lines)
    return " Set dataset.prompt_column / chosen_column / rejected_column to the right names."


def detect_format(example: dict[str, Any], prompt_col: str | None, chosen_col: str) -> str:
    """Name the layout of one row: explicit, implicit (hh-rlhf style), conversational (+ implicit)."""
    chosen = example[chosen_col]
    if _is_messages(chosen):
        return "conversational" if prompt_col else "conversational-implicit"
    if prompt_col is None:
        return "implicit"
    return "explicit"


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "role" in m for m in value)


def split_hh_dialogue(chosen: str, rejected: str) -> tuple[str, str, str] | None:
    """Split two hh-rlhf dialogues at the last shared "\\n\\nAssistant:" turn.

    The prompt is the longest common prefix that ends with "Assistant:"; chosen and rejected
    are what follows. None when the dialogues share no such prefix.
    """
    n = 0
    limit = min(len(chosen), len(rejected))
    while n < limit and chosen[n] == rejected[n]:
        n += 1
    cut = chosen.rfind("\n\nAssistant:", 0, n)
    if cut < 0:
        return None
    end = cut + len("\n\nAssistant:")
    return chosen[:end], chosen[end:], rejected[end:]


def hh_to_messages(prompt: str) -> list[dict[str, str]]:
    """"\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c\\n\\nAssistant:" -> chat messages."""
    parts = HH_TURN.split(prompt)
    messages = []
    for i in range(1, len(parts) - 1, 2):
        role = "user" if parts[i] == "Human" else "assistant"
        content = parts[i + 1].strip()
        if content:
            messages.append({"role": role, "content": content})
    return messages


def _normalise_row(row: dict[str, Any], fmt: str, cols: tuple[str | None, str, str], as_chat: bool) -> dict:
    """One raw row -> {prompt, chosen, rejected, problem}; `problem` names why it must be dropped."""
    p_col, c_col, r_col = cols
    chosen, rejected = row.get(c_col), row.get(r_col)
    prompt = row.get(p_col) if p_col else None
    out = {"prompt": None, "chosen": None, "rejected": None, "problem": ""}
    if chosen is None or rejected is None or (p_col and prompt is None):
        out["problem"] = "null value"
        return out
    if fmt == "implicit":
        split = split_hh_dialogue(str(chosen), str(rejected))
        if split is None:
            out["problem"] = "chosen and rejected share no prompt ending in 'Assistant:'"
            return out
        prompt, chosen, rejected = split
        if as_chat:
            prompt = hh_to_messages(prompt)
            chosen = [{"role": "assistant", "content": chosen.strip()}]
            rejected = [{"role": "assistant", "content": rejected.strip()}]
    elif fmt == "conversational-implicit":
        k = 0
        while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
            k += 1
        prompt, chosen, rejected = chosen[:k], chosen[k:], rejected[k:]
        if not prompt:
            out["problem"] = "chosen and rejected conversations share no prompt messages"
            return out
    elif fmt == "explicit" and as_chat:
        prompt = [{"role": "user", "content": str(prompt)}]
        chosen = [{"role": "assistant", "content": str(chosen)}]
        rejected = [{"role": "assistant", "content": str(rejected)}]
    elif fmt == "conversational":
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
    else:
        prompt, chosen, rejected = str(prompt), str(chosen), str(rejected)
    out.update(prompt=prompt, chosen=chosen, rejected=rejected)
    out["problem"] = _row_problem(prompt, chosen, rejected)
    return out


def _row_problem(prompt, chosen, rejected) -> str:
    if isinstance(chosen, list):
        for msgs in (prompt, chosen, rejected):
            bad = [m.get("role") for m in msgs if m.get("role") not in ROLES]
            if bad:
                return f"unknown role(s) {bad}"
        if not chosen or chosen[-1]["role"] != "assistant" or not rejected or rejected[-1]["role"] != "assistant":
            return "chosen/rejected must end with an assistant message"
        if prompt and prompt[-1]["role"] == "assistant":
            return "prompt ends with an assistant message"
        text_c = " ".join(str(m.get("content") or "") for m in chosen).strip()
        text_r = " ".join(str(m.get("content") or "") for m in rejected).strip()
    else:
        text_c, text_r = chosen.strip(), rejected.strip()
    if not text_c or not text_r:
        return "empty chosen or rejected"
    if text_c == text_r:
        return "chosen identical to rejected"
    return ""


def normalise(dataset, ds_cfg, as_chat: bool):
    """Map columns, convert to prompt/chosen/rejected, drop (and count) unusable rows."""
    columns = list(dataset.column_names)
    cols = resolve_columns(columns, ds_cfg)
    if len(dataset) == 0:
        raise DataError(f"dataset: '{ds_cfg.name}' split '{ds_cfg.split}' has no rows")
    fmt = detect_format(dataset[0], cols[0], cols[1])
    keep = [c for c in ("family", "spec") if c in columns]
    # never reuse datasets' cache here: its fingerprint does not see changes inside _normalise_row
    mapped = dataset.map(lambda row: _normalise_row(row, fmt, cols, as_chat), load_from_cache_file=False,
                         remove_columns=[c for c in columns if c not in keep], desc="Normalising pairs")
    problems = mapped["problem"]
    dropped: dict[str, int] = {}
    for p in problems:
        if p:
            dropped[p] = dropped.get(p, 0) + 1
    if dropped:
        mapped = mapped.filter(lambda row: not row["problem"], load_from_cache_file=False,
                               desc="Dropping unusable pairs")
    mapped = mapped.remove_columns("problem")
    if len(mapped) == 0:
        first = next(i for i, p in enumerate(problems) if p)
        raise DataError(f"dataset: every row of '{ds_cfg.name}' is unusable ({dropped}); "
                        f"e.g. row {first}: {problems[first]}. Check the column mapping and the data.")
    return mapped, fmt, dropped


def describe_format(fmt: str, cols: tuple[str | None, str, str], as_chat: bool) -> str:
    p, c, r = cols
    custom = (p not in (None, "prompt")) or c != "chosen" or r != "rejected"
    text = {
        "explicit": "explicit prompt (prompt / chosen / rejected text)",
        "implicit": "implicit prompt (whole dialogues in chosen/rejected, split at the last shared "
                    "'Assistant:' turn, as in Anthropic/hh-rlhf)",
        "conversational": "conversational (lists of chat messages with a prompt column)",
        "conversational-implicit": "conversational, implicit prompt (message lists; the prompt is the shared "
                                   "leading messages, as in trl-lib/ultrafeedback_binarized)",
    }[fmt]
    if custom:
        text += f"; custom columns mapped: {p or '-'} -> prompt, {c} -> chosen, {r} -> rejected"
    if as_chat and fmt in ("explicit", "implicit"):
        text += "; text wrapped as chat messages for the tokenizer's chat template"
    return text


def describe_prompt_column(configured: str | None, columns: list[str], prompt: str | None) -> str | None:
    """How the prompt column was resolved, for the format report (None when it was simply found)."""
    if configured is None:
        extra = " (the data's 'prompt' column is not used)" if "prompt" in columns else ""
        return f"prompt column: none (dataset.prompt_column: null){extra}"
    if prompt is None:
        return ("prompt column: none ('prompt' is not in the data, so the prompt comes from the shared start of "
                "chosen and rejected; `prompt_column: null` says so explicitly)")
    return None


def load_preference_data(config, tokenizer_has_chat_template: bool = True) -> PreferenceData:
    """Load, normalise, limit (max_samples) and split the configured dataset."""
    ds_cfg, seed = config.dataset, config.seed
    mode = ds_cfg.chat_template
    as_chat = mode == "always" or (mode == "auto" and tokenizer_has_chat_template)
    heldout = None
    if ds_cfg.name.startswith("embedded:"):
        task = embedded_task(ds_cfg, seed)
        raw, heldout = task["train"], task["heldout"]
    else:
        raw = load_raw(ds_cfg)
    cols = resolve_columns(list(raw.column_names), ds_cfg)
    data, fmt, dropped = normalise(raw, ds_cfg, as_chat)
    notes = [f"format: {describe_format(fmt, cols, as_chat)}"]
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


# ----------------------------------------------------------------------------- tokens


def _tokenize(tok, value, add_generation_prompt: bool = False) -> dict:
    """Token ids of a message list (through the chat template) or of plain text, as TRL tokenizes them."""
    if isinstance(value, list):
        return tok.apply_chat_template(value, tokenize=True, return_dict=True,
                                       **({"add_generation_prompt": True} if add_generation_prompt else {}))
    return tok(text=value)


def common_prefix_length(a: list[int], b: list[int]) -> int:
    """Number of leading ids `a` and `b` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def tokenize_pair(tokenizer, example: dict[str, Any]) -> dict[str, list[int]]:
    """Token ids of one pair as TRL's DPOTrainer builds them (tests check they are identical).

    The prompt is rendered with the chat template's generation prompt; the completion is what
    follows the longest common prefix of prompt and prompt+completion. Plain-text completions
    get the EOS token appended, as TRL does.

    Written with the tokenizer's public API rather than TRL's private ``trl.data_utils._tokenize``:
    the same two calls, without importing TRL (0.7 s of a 5 s dry run) or depending on a private
    name. tests/test_data.py checks the ids equal those DPOTrainer prepares, as chat messages and as text.
    """
    prompt, chosen, rejected = example["prompt"], example["chosen"], example["rejected"]
    if isinstance(chosen, list):
        prompt_ids = _tokenize(tokenizer, prompt, add_generation_prompt=True)["input_ids"]
        full_c = _tokenize(tokenizer, prompt + chosen)["input_ids"]
        full_r = _tokenize(tokenizer, prompt + rejected)["input_ids"]
    else:
        eos = tokenizer.eos_token or ""
        chosen = chosen if chosen.endswith(eos) else chosen + eos
        rejected = rejected if rejected.endswith(eos) else rejected + eos
        prompt_ids = _tokenize(tokenizer, prompt)["input_ids"]
        full_c = _tokenize(tokenizer, prompt + chosen)["input_ids"]
        full_r = _tokenize(tokenizer, prompt + rejected)["input_ids"]
    n = min(common_prefix_length(prompt_ids, full_c), common_prefix_length(prompt_ids, full_r))
    return {"prompt_ids": prompt_ids[:n], "chosen_ids": full_c[n:], "rejected_ids": full_r[n:]}


def truncate_ids(ids: list[int], limit: int | None, keep: str, bos_id: int | None = None) -> list[int]:
    """Keep the first (`keep='start'`) or last (`keep='end'`) `limit` tokens; a leading BOS stays."""
    if limit is None or len(ids) <= limit:
        return ids
    if keep == "start":
        return ids[:limit]
    if bos_id is not None and ids and ids[0] == bos_id and limit > 1:
        return [bos_id] + ids[-(limit - 1):]
    return ids[-limit:]


def length_report(tokenizer, dataset, max_prompt: int | None, max_completion: int | None,
                  max_total: int, limit: int = 2000) -> dict[str, Any]:
    """Token lengths over (up to `limit`) rows and how many the length limits cut."""
    rows = dataset.select(range(min(limit, len(dataset))))
    stats = {"rows": len(rows), "prompt_truncated": 0, "completion_truncated": 0, "total_truncated": 0,
             "prompt_len": [], "chosen_len": [], "rejected_len": [], "double_bos": 0}
    bos = tokenizer.bos_token_id
    for row in rows:
        ids = tokenize_pair(tokenizer, row)
        p, c, r = len(ids["prompt_ids"]), len(ids["chosen_ids"]), len(ids["rejected_ids"])
        stats["prompt_len"].append(p)
        stats["chosen_len"].append(c)
        stats["rejected_len"].append(r)
        if bos is not None and ids["prompt_ids"][:2] == [bos, bos]:
            stats["double_bos"] += 1
        p_cut = min(p, max_prompt) if max_prompt else p
        c_cut = min(max(c, r), max_completion) if max_completion else max(c, r)
        stats["prompt_truncated"] += bool(max_prompt and p > max_prompt)
        stats["completion_truncated"] += bool(max_completion and max(c, r) > max_completion)
        stats["total_truncated"] += p_cut + c_cut > max_total
    return stats
