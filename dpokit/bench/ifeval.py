"""IFEval offline: the 541 prompts shipped with dpokit, scored with the `if-verifiable` checkers.

Pure functions, no model: load the prompts, pick a seeded subset, score answers (strict and
loose, per instruction), aggregate the four IFEval accuracies and per-instruction-type accuracy,
and compare two sets of answers prompt by prompt. Every result is a JSON-ready dict.

Scoring follows the official harness (google-research instruction_following_eval, as ported to
lighteval): an instruction passes *strict* if its checker accepts the answer, *loose* if it
accepts any of eight relaxed variants (first/last line removed, ``*`` removed); a prompt passes
if all its instructions do; an empty answer fails every instruction. NLTK data is replaced by
offline tokenizers (:mod:`dpokit.bench.nltk_offline`); docs/ifeval.md lists every difference.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import DataError

DATA_DIR = Path(__file__).resolve().parent / "data" / "ifeval"
PROMPTS_FILE = DATA_DIR / "input_data.jsonl"
NUM_PROMPTS = 541
ACCURACIES = ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose")

# The published figure dpokit compares against (sources and caveats: docs/ifeval.md).
PUBLISHED = {
    "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "ifeval": 29.9,
    "label": "IFEval (Average prompt/inst)",
    "compare_with": "averages.strict",  # the usual reading; the card does not say strict or loose
    "source": "SmolLM2-135M-Instruct model card (Hugging Face Hub), evaluated with lighteval",
    "generation": {"harness": "lighteval db609f7, extended|ifeval|0|0, vLLM backend", "decoding": "greedy",
                   "max_new_tokens": 1280, "dtype": "bfloat16", "chat_template": True,
                   "system_prompt": "none given (the SmolLM2 template adds its default one)"},
}


@dataclass(frozen=True)
class IFEvalPrompt:
    """One IFEval prompt: its key, the text, and the instructions with their checker arguments."""

    key: int
    prompt: str
    instruction_ids: tuple[str, ...]
    kwargs: tuple[dict, ...]


def load_prompts(path: str | Path = PROMPTS_FILE) -> list[IFEvalPrompt]:
    """All prompts of an IFEval input file (default: the 541 shipped with dpokit), validated."""
    return list(_load(str(Path(path).resolve())))


@functools.lru_cache(maxsize=4)
def _load(path: str) -> tuple[IFEvalPrompt, ...]:
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise DataError(f"IFEval prompts: cannot read {path} ({e.strerror}); reinstall dpokit "
                        "(the file is package data: dpokit/bench/data/ifeval/input_data.jsonl)") from None
    prompts, seen = [], {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg}); each line must be one JSON object") from None
        prompts.append(_prompt(row, where, INSTRUCTION_DICT))
        if prompts[-1].key in seen:
            raise DataError(f"{where}: key {prompts[-1].key} already used on line {seen[prompts[-1].key]}; "
                            "keys must be unique")
        seen[prompts[-1].key] = number
    if not prompts:
        raise DataError(f"{path}: no prompts; expected one JSON object per line")
    return tuple(prompts)


def _prompt(row: Any, where: str, registry: dict) -> IFEvalPrompt:
    """One validated row; errors name the file, line and field."""
    fields = {"key": int, "prompt": str, "instruction_id_list": list, "kwargs": list}
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object with fields {', '.join(fields)}")
    for name, kind in fields.items():
        if not isinstance(row.get(name), kind) or isinstance(row.get(name), bool):
            raise DataError(f"{where}: field {name!r} must be a {kind.__name__}, got {row.get(name)!r}")
    ids, kwargs = row["instruction_id_list"], row["kwargs"]
    if len(ids) != len(kwargs) or not ids:
        raise DataError(f"{where}: 'instruction_id_list' has {len(ids)} entries and 'kwargs' {len(kwargs)}; "
                        "give one kwargs dict per instruction (at least one)")
    unknown = [i for i in ids if i not in registry]
    if unknown:
        raise DataError(f"{where}: instruction id(s) {', '.join(map(repr, unknown))} have no checker in "
                        "if_verifiable.ifeval.instructions_registry.INSTRUCTION_DICT")
    if not all(isinstance(k, dict) for k in kwargs):
        raise DataError(f"{where}: field 'kwargs' must be a list of JSON objects")
    return IFEvalPrompt(row["key"], row["prompt"], tuple(ids), tuple(kwargs))


def select_prompts(limit: int | None = None, seed: int = 0,
                   prompts: Sequence[IFEvalPrompt] | None = None) -> list[IFEvalPrompt]:
    """A fixed subset of `limit` prompts (all when None), in file order.

    The prompts are ranked by sha256(f"{seed}:{key}") and the first `limit` taken, so the subset
    depends only on (seed, limit), never on the Python version, and a smaller subset is contained
    in a larger one with the same seed (the 20-prompt subset is inside the 100-prompt one).
    """
    prompts = list(load_prompts() if prompts is None else prompts)
    if limit is None or limit >= len(prompts):
        return prompts
    if limit < 1:
        raise ValueError(f"IFEval limit must be at least 1 (or None for all {len(prompts)}), got {limit}")
    ranked = sorted(range(len(prompts)), key=lambda i: hashlib.sha256(f"{seed}:{prompts[i].key}".encode()).hexdigest())
    return [prompts[i] for i in sorted(ranked[:limit])]


def score_answer(prompt: IFEvalPrompt, answer: str) -> dict[str, Any]:
    """Strict and loose verdicts for each instruction of one prompt (call inside :func:`offline_nltk`).

    Two prompts (keys 1122 and 1129) ask for a count of "#" or "!", which the letter-frequency
    checker does not accept, so it draws a random letter instead, in the official harness too.
    dpokit draws it from `random.seed(key)` (the global random state is restored after), so a
    prompt's verdict is the same on every run and in every subset.
    """
    from if_verifiable.common import evaluate_instructions
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    n = len(prompt.instruction_ids)
    if not answer.strip():  # as the official harness: an empty answer follows no instruction
        strict = loose = [False] * n
    else:
        state = random.getstate()
        random.seed(prompt.key)
        try:
            results, _ = evaluate_instructions(answer, list(prompt.instruction_ids), [dict(k) for k in prompt.kwargs],
                                               prompt.prompt, INSTRUCTION_DICT)
        except Exception as e:
            raise RuntimeError(f"IFEval checkers failed on prompt key {prompt.key}: {type(e).__name__}: {e}") from e
        finally:
            random.setstate(state)
        if [r.instruction_id for r in results] != list(prompt.instruction_ids):
            raise RuntimeError(f"IFEval prompt key {prompt.key}: if-verifiable returned verdicts for "
                               f"{[r.instruction_id for r in results]}, expected {list(prompt.instruction_ids)}")
        strict, loose = [r.strict_pass for r in results], [r.loose_pass for r in results]
    return {"key": prompt.key, "instructions": list(prompt.instruction_ids), "strict": strict, "loose": loose,
            "prompt_strict": all(strict), "prompt_loose": all(loose)}


def score_answers(prompts: Sequence[IFEvalPrompt], answers: Sequence[str]) -> dict[str, Any]:
    """The four IFEval accuracies (percent), per-instruction-type accuracy, and one row per prompt."""
    from .nltk_offline import offline_nltk

    if len(prompts) != len(answers):
        raise ValueError(f"score_answers: {len(prompts)} prompts but {len(answers)} answers")
    with offline_nltk():
        rows = [score_answer(p, a) for p, a in zip(prompts, answers)]
    accuracy = accuracies(rows)
    return {"benchmark": "ifeval", "num_prompts": len(rows),
            "num_instructions": sum(len(r["instructions"]) for r in rows),
            "accuracy": accuracy, "interval95": intervals(rows), "averages": averages(accuracy),
            "per_instruction": per_instruction(rows), "rows": rows}


def accuracies(rows: Sequence[dict]) -> dict[str, float]:
    """Prompt-level and instruction-level accuracy, strict and loose, in percent."""
    flat = [(s, lo) for r in rows for s, lo in zip(r["strict"], r["loose"])]
    return {"prompt_strict": _pct(sum(r["prompt_strict"] for r in rows), len(rows)),
            "prompt_loose": _pct(sum(r["prompt_loose"] for r in rows), len(rows)),
            "instruction_strict": _pct(sum(s for s, _ in flat), len(flat)),
            "instruction_loose": _pct(sum(lo for _, lo in flat), len(flat))}


def intervals(rows: Sequence[dict], z: float = 1.96) -> dict[str, list[float]]:
    """95% confidence intervals (percent) of the four accuracies, treating the prompts as the sample.

    Prompt level: Wilson score interval. Instruction level: a ratio over prompts, so the standard
    error counts each prompt's instructions together (they share an answer, they are not independent).
    """
    m = len(rows)
    out: dict[str, list[float]] = {}
    for level in ("strict", "loose"):
        passed = sum(r[f"prompt_{level}"] for r in rows)
        if m:
            p, shrink = passed / m, 1 + z * z / m
            centre = (p + z * z / (2 * m)) / shrink
            half = z * math.sqrt(p * (1 - p) / m + z * z / (4 * m * m)) / shrink
            out[f"prompt_{level}"] = [round(100 * (centre - half), 2), round(100 * (centre + half), 2)]
        hits, sizes = [sum(r[level]) for r in rows], [len(r[level]) for r in rows]
        if m > 1 and sum(sizes):
            ratio, mean_size = sum(hits) / sum(sizes), sum(sizes) / m
            var = sum((a - ratio * n) ** 2 for a, n in zip(hits, sizes)) / (m - 1) / (m * mean_size ** 2)
            low, high = max(0.0, ratio - z * math.sqrt(var)), min(1.0, ratio + z * math.sqrt(var))
            out[f"instruction_{level}"] = [round(100 * low, 2), round(100 * high, 2)]
    return out


def averages(accuracy: dict[str, float]) -> dict[str, float]:
    """Prompt/instruction averages, the shape of the model card's "Average prompt/inst" (which of them: docs)."""
    return {"strict": round((accuracy["prompt_strict"] + accuracy["instruction_strict"]) / 2, 2),
            "loose": round((accuracy["prompt_loose"] + accuracy["instruction_loose"]) / 2, 2),
            "all_four": round(sum(accuracy[k] for k in ACCURACIES) / 4, 2)}


def per_instruction(rows: Sequence[dict]) -> dict[str, dict[str, float | int]]:
    """For each instruction type: how many times it occurs and its strict/loose accuracy (percent)."""
    tally: dict[str, list[int]] = {}
    for r in rows:
        for name, s, lo in zip(r["instructions"], r["strict"], r["loose"]):
            t = tally.setdefault(name, [0, 0, 0])
            t[0], t[1], t[2] = t[0] + 1, t[1] + s, t[2] + lo
    return {name: {"n": n, "strict": _pct(s, n), "loose": _pct(lo, n)} for name, (n, s, lo) in sorted(tally.items())}


def compare(base: dict[str, Any], trained: dict[str, Any]) -> dict[str, Any]:
    """Trained vs base, prompt by prompt: wins, losses and ties (strict and loose), with the keys."""
    b_rows, t_rows = base["rows"], trained["rows"]
    if [r["key"] for r in b_rows] != [r["key"] for r in t_rows]:
        raise ValueError("compare: base and trained were scored on different prompts (keys differ)")
    out: dict[str, Any] = {}
    for level in ("strict", "loose"):
        field = f"prompt_{level}"
        wins = [t["key"] for b, t in zip(b_rows, t_rows) if t[field] and not b[field]]
        losses = [t["key"] for b, t in zip(b_rows, t_rows) if b[field] and not t[field]]
        out[level] = {"wins": len(wins), "losses": len(losses), "ties": len(b_rows) - len(wins) - len(losses),
                      "win_keys": wins, "loss_keys": losses,
                      "change": {k: round(trained["accuracy"][k] - base["accuracy"][k], 2)
                                 for k in (field, f"instruction_{level}")}}
    return out


def _pct(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 2) if whole else 0.0
