"""Preference pairs in any layout -> one shape: `prompt`, `chosen`, `rejected` as text or chat messages.

Every value is checked row by row: text is used as is, a number becomes its decimal text
(3 -> "3", 2.5 -> "2.5"), a list of `{role, content}` messages is a conversation, and a ShareGPT-style
list of `{from, value}` messages is mapped (human/user -> user, gpt/assistant/model -> assistant,
system -> system, tool/function/observation -> tool). Anything else (an object, a list of numbers,
true/false) is refused with its row and column, never trained on as the text of a Python object. The
layout (explicit prompt, implicit prompt, conversational) must be the same on every row.
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Any

from .errors import DataError

# Column names of well-known datasets, so a missing column can be answered with the mapping.
KNOWN_LAYOUTS = [
    ("question", "response_j", "response_k"),  # lvwerra/stack-exchange-paired
    ("instruction", "chosen_response", "rejected_response"),
    ("input", "preferred", "dispreferred"),
    ("prompt", "chosen", "rejected"),
]

ROLES = {"system", "user", "assistant", "tool"}

HH_TURN = re.compile(r"\n\n(Human|Assistant):")

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "model": "assistant", "chatgpt": "assistant", "system": "system", "tool": "tool",
                  "function": "tool", "observation": "tool"}


class ValueRefused(ValueError):
    """A value that is neither text, a number, nor a list of chat messages."""


def as_text_or_messages(value: Any) -> str | list[dict[str, Any]] | None:
    """`value` by the rules in the module docstring (None stays None), or ValueRefused saying what it is."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        raise ValueRefused(f"true/false ({value})")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueRefused(f"the number {value}")
        return str(value) if isinstance(value, int) else repr(value)
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        return [_message(m) for m in value]
    raise ValueRefused(_describe(value))


def _message(m: dict) -> dict[str, Any]:
    if m.get("role") is not None:
        role, content = m["role"], m.get("content")
    elif m.get("from") is not None:
        role, content = SHAREGPT_ROLES.get(str(m["from"]).lower(), m["from"]), m.get("value")
    else:
        raise ValueRefused(f"a list of objects with keys {sorted(m)}, not chat messages ({{role, content}} or "
                           "ShareGPT {from, value})")
    if content is not None and not isinstance(content, str):
        if isinstance(content, (int, float)) and not isinstance(content, bool) and math.isfinite(content):
            content = str(content) if isinstance(content, int) else repr(content)
        else:
            raise ValueRefused(f"a message whose content is {_describe(content)}, not text")
    return {"role": role, "content": content}


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return f"an object with keys {sorted(value)[:6]}"
    if isinstance(value, list):
        if not value:
            return "an empty list"
        kinds = sorted({type(v).__name__ for v in value})
        return f"a list of {'/'.join(kinds)} values"
    return f"a {type(value).__name__} value"


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


def detect_format(chosen: Any, prompt_col: str | None) -> str:
    """Name the layout from a row's (converted) chosen value: explicit, implicit (hh-rlhf style),
    conversational, or conversational with the prompt inside the conversation."""
    if isinstance(chosen, list):
        return "conversational" if prompt_col else "conversational-implicit"
    if prompt_col is None:
        return "implicit"
    return "explicit"


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


def _normalise_row(row: dict[str, Any], index: int, fmt: str, cols: tuple[str | None, str, str],
                   as_chat: bool) -> dict:
    """One raw row -> {prompt, chosen, rejected, problem, refused}: `problem` names why the row is dropped,
    `refused` why the data cannot be used at all."""
    p_col, c_col, r_col = cols
    out = {"prompt": None, "chosen": None, "rejected": None, "problem": "", "refused": ""}
    values = {}
    for col in (p_col, c_col, r_col):
        if col is None:
            continue
        try:
            values[col] = as_text_or_messages(row.get(col))
        except ValueRefused as e:
            out["refused"] = f"row {index}, column '{col}': {e}"
            return out
    chosen, rejected, prompt = values[c_col], values[r_col], values.get(p_col)
    if chosen is None or rejected is None or (p_col and prompt is None):
        out["problem"] = "null value"
        return out
    expected = "a list of chat messages" if fmt.startswith("conversational") else "text"
    for col, value in ((c_col, chosen), (r_col, rejected)):
        if isinstance(value, list) != fmt.startswith("conversational"):
            got = "a list of chat messages" if isinstance(value, list) else "text"
            out["refused"] = (f"row {index}, column '{col}': {got}, but the first rows hold {expected}; every row "
                              "must have the same layout")
            return out
    if fmt == "explicit" and isinstance(prompt, list):
        out["refused"] = (f"row {index}, column '{p_col}': a list of chat messages, but the answers are text; "
                          "give the prompt as text, or the answers as messages too")
        return out
    if fmt == "implicit":
        split = split_hh_dialogue(chosen, rejected)
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
        prompt = [{"role": "user", "content": prompt}]
        chosen = [{"role": "assistant", "content": chosen}]
        rejected = [{"role": "assistant", "content": rejected}]
    elif fmt == "conversational" and isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
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


def first_layout(dataset, cols: tuple[str | None, str, str]) -> str:
    """The layout of the first row with a usable chosen value (every other row is checked against it)."""
    for index, value in enumerate(dataset[cols[1]]):
        try:
            converted = as_text_or_messages(value)
        except ValueRefused as e:
            raise DataError(refusal_message([f"row {index}, column '{cols[1]}': {e}"])) from None
        if converted is not None:
            return detect_format(converted, cols[0])
    return detect_format(None, cols[0])


def refusal_message(refused: list[str]) -> str:
    return (f"dataset: {len(refused)} row(s) hold values dpokit cannot train on; the first: {refused[0]}. "
            "Each prompt/chosen/rejected value must be text, a number (read as its decimal text) or a list of chat "
            "messages ({role, content}, or ShareGPT {from, value}); fix the data or map other columns "
            "(dataset.prompt_column / chosen_column / rejected_column). Rows are counted from 0 in file order.")


def _output_features(dataset, keep: list[str], fmt: str, as_chat: bool):
    """The normalised columns' types, given explicitly: a column that keeps its name must not keep its old
    type (numbers read as text would be cast back to numbers)."""
    from datasets import Features, List, Value

    text = Value("string")
    messages = List({"role": text, "content": text})
    chat = fmt.startswith("conversational") or (as_chat and fmt in ("explicit", "implicit"))
    features = {"prompt": messages if chat else text, "chosen": messages if chat else text,
                "rejected": messages if chat else text, "problem": text, "refused": text}
    return Features({**{k: dataset.features[k] for k in keep}, **features})


def normalise(dataset, ds_cfg, as_chat: bool):
    """Map columns, convert to prompt/chosen/rejected, drop (and count) unusable rows, refuse garbage."""
    columns = list(dataset.column_names)
    cols = resolve_columns(columns, ds_cfg)
    if len(dataset) == 0:
        raise DataError(f"dataset: '{ds_cfg.name}' split '{ds_cfg.split}' has no rows")
    fmt = first_layout(dataset, cols)
    keep = [c for c in ("family", "spec") if c in columns]
    # never reuse datasets' cache here: its fingerprint does not see changes inside _normalise_row
    mapped = dataset.map(lambda row, i: _normalise_row(row, i, fmt, cols, as_chat), with_indices=True,
                         load_from_cache_file=False, remove_columns=[c for c in columns if c not in keep],
                         features=_output_features(dataset, keep, fmt, as_chat), desc="Normalising pairs")
    refused = [r for r in mapped["refused"] if r]
    if refused:
        raise DataError(refusal_message(refused))
    problems = mapped["problem"]
    dropped: dict[str, int] = {}
    for p in problems:
        if p:
            dropped[p] = dropped.get(p, 0) + 1
    if dropped:
        mapped = mapped.filter(lambda row: not row["problem"], load_from_cache_file=False,
                               desc="Dropping unusable pairs")
    mapped = mapped.remove_columns(["problem", "refused"])
    if len(mapped) == 0:
        first = next(i for i, p in enumerate(problems) if p)
        raise DataError(f"dataset: every row of '{ds_cfg.name}' is unusable ({dropped}); "
                        f"e.g. row {first}: {problems[first]}. Check the column mapping and the data.")
    return mapped, fmt, dropped


def describe_prompt_column(configured: str | None, columns: list[str], prompt: str | None) -> str | None:
    """How the prompt column was resolved, for the format report (None when it was simply found)."""
    if configured is None:
        extra = " (the data's 'prompt' column is not used)" if "prompt" in columns else ""
        return f"prompt column: none (dataset.prompt_column: null){extra}"
    if prompt is None:
        return ("prompt column: none ('prompt' is not in the data, so the prompt comes from the shared start of "
                "chosen and rejected; `prompt_column: null` says so explicitly)")
    return None


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
