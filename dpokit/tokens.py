"""Token-level views of preference pairs: the ids TRL trains on, what the length limits cut, and whether
the limits leave anything to learn from. Used by the dry run, the run's length check and the trainer hooks."""

from __future__ import annotations

from typing import Any


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
             "prompt_len": [], "chosen_len": [], "rejected_len": [], "double_bos": 0, "no_completion_left": 0}
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
        stats["no_completion_left"] += p_cut >= max_total
    return stats


def length_verdict(training, stats: dict[str, Any]) -> tuple[str | None, list[str]]:
    """(error, notes) for a `length_report`: limits that leave nothing to learn from are an error (no
    prompt keeps its start, or no pair keeps a single completion token); most completions cut is a note."""
    t, n = training, stats["rows"]
    if not n:
        return None, []
    if t.max_prompt_length and stats["prompt_truncated"] == n:
        shortest = min(stats["prompt_len"])
        return (f"training.max_prompt_length: every prompt of the first {n} rows is longer than {t.max_prompt_length} "
                f"tokens (shortest {shortest}); all would lose their start. Raise max_prompt_length to at least "
                f"{shortest} (and max_seq_length with it), or shorten the prompts."), []
    if stats["no_completion_left"] == n:
        kept = [min(p, t.max_prompt_length or p) for p in stats["prompt_len"]]
        return (f"training.max_seq_length: {t.max_seq_length} tokens leave no room for a completion in any of the "
                f"first {n} pairs (their prompts keep {min(kept)} tokens or more), so nothing would be learned. "
                f"Raise max_seq_length above {min(kept)} (e.g. {min(kept) + (t.max_completion_length or 64)}) or lower "
                "max_prompt_length."), []
    notes = []
    if stats["completion_truncated"] > n / 2:
        notes.append(f"{stats['completion_truncated']} of {n} sampled pairs have a completion longer than "
                     f"max_completion_length={t.max_completion_length}: they are cut, and the model learns from "
                     "fragments; consider raising it")
    if stats["total_truncated"]:
        notes.append(f"{stats['total_truncated']} of {n} sampled pairs exceed max_seq_length={t.max_seq_length} "
                     "after the prompt/completion limits and lose their end")
    return None, notes
