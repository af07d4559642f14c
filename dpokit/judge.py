"""A deterministic judge for the embedded task: does a response follow the prompt's instruction?

`judge(spec, response)` reads the row's ``spec`` (JSON made by `dpokit.tasks`) and returns a
`JudgeResult` with one boolean per check, e.g. ``{"format": False, "correct": True}`` for
"17 + 25 = 42." asked as "reply with just the number": right answer, wrong shape. A response
passes when every check holds.

What is forgiven (strict about the instruction, not pedantic about typography):

* surrounding whitespace, and end-of-text markers left in the text (``<|im_end|>``, ``</s>`` ...);
* for one-number / one-word answers: one trailing period or exclamation mark ("42." passes),
  and quotes, backticks or ``**bold**`` wrapped around the whole answer ('"cold"' passes);
* for words: letter case ("paris" passes for Paris), except where capitals are the instruction;
* for bullet lists: "-", "*" or "•" as the marker, blank lines, a period after an item;
* for JSON: key order, spacing and line breaks, numbers written as numeric strings ("31"),
  and letter case of string values.

What fails: anything else around the answer ("The answer is 42.", "Here is the JSON:"), a number
that is not the answer, a numbered list where bullets were asked for, a missing or renamed key.
A plain question (no instruction about the form) passes with a correct answer in a sentence of
at least three words; a bare word fails even when right.
A JSON answer must parse with ``json.loads`` as it is, so a markdown fence (```json ... ```)
around it fails the format: "output only the JSON" means a program can read the reply directly.

The ``correct`` check of a response that fails ``format`` is lenient on purpose (the right
answer appears somewhere as a whole word): it tells "knew it but rambled" from "wrong".
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

END_MARKERS = ("<|im_end|>", "<|endoftext|>", "</s>", "<|eot_id|>", "<|end|>")
_WORD = re.compile(r"[A-Za-z]+(?:[-'][A-Za-z]+)*")
_UPPER_WORD = re.compile(r"[A-Z]+(?:[-'][A-Z]+)*")
_NUMBER = re.compile(r"[-+]?\d+")
_BULLET = re.compile(r"^\s*[-*•]\s+(.*\S)\s*$")


@dataclass
class JudgeResult:
    """The verdict on one response: passed only if every check holds."""

    passed: bool
    checks: dict[str, bool] = field(default_factory=dict)
    family: str = ""
    reason: str = ""  # human-readable, empty when passed

    def __bool__(self) -> bool:
        return self.passed


def clean_response(response: str) -> str:
    """Strip surrounding whitespace and trailing end-of-text markers."""
    text = (response or "").strip()
    changed = True
    while changed:
        changed = False
        for marker in END_MARKERS:
            if text.endswith(marker):
                text, changed = text[: -len(marker)].rstrip(), True
    return text


def _core(text: str) -> str:
    """A single answer without the forgiven decoration: wrapping quotes/bold, one final . or !"""
    for _ in range(2):
        text = text.strip()
        for left, right in (("**", "**"), ('"', '"'), ("'", "'"), ("`", "`"), ("“", "”")):
            if len(text) > len(left) + len(right) and text.startswith(left) and text.endswith(right):
                text = text[len(left): -len(right)].strip()
        if text.endswith((".", "!")) and not text.endswith(("..", "!!")):
            text = text[:-1]
    return text.strip()


def contains_word(text: str, word: str) -> bool:
    """``word`` occurs in ``text`` as a whole word (or number), ignoring case."""
    return re.search(r"(?<![A-Za-z0-9])" + re.escape(word.lower()) + r"(?![A-Za-z0-9])", text.lower()) is not None


def _check_number(spec, text):
    core, answer = _core(text), int(spec["answer"])
    if _NUMBER.fullmatch(core):
        return {"format": True, "correct": int(core) == answer}
    return {"format": False, "correct": contains_word(text, str(answer))}


def _check_word(spec, text):
    core, accept = _core(text), [a.lower() for a in spec["accept"]]
    if _WORD.fullmatch(core):
        return {"format": True, "correct": core.lower() in accept}
    return {"format": False, "correct": any(contains_word(text, a) for a in accept)}


def _check_upper_word(spec, text):
    core, answer = _core(text), spec["answer"]
    if _WORD.fullmatch(core):
        return {"format": bool(_UPPER_WORD.fullmatch(core)), "correct": core.upper() == answer.upper()}
    return {"format": False, "correct": contains_word(text, answer)}


def _check_bullets(spec, text):
    lines = [line for line in text.splitlines() if line.strip()]
    items = [m.group(1).strip().rstrip(".").strip() for line in lines if (m := _BULLET.match(line))]
    max_words = spec.get("max_words", 4)
    ok_items = (bool(items) and len({i.lower() for i in items}) == len(items)
                and all(0 < len(i.split()) <= max_words for i in items))
    return {"format": bool(lines) and len(items) == len(lines), "count": len(items) == int(spec["n"]),
            "items": ok_items}


def _same_value(got: Any, want: Any) -> bool:
    if isinstance(want, bool) or isinstance(got, bool):
        return got is want
    if isinstance(want, (int, float)):
        if isinstance(got, str):
            got = got.strip()
            if not re.fullmatch(r"[-+]?\d+(\.\d+)?", got):
                return False
            got = float(got)
        return isinstance(got, (int, float)) and float(got) == float(want)
    return isinstance(got, str) and got.strip().lower() == str(want).strip().lower()


def _check_json(spec, text):
    want = spec["values"]
    obj, fmt = _parse_object(text), True
    if obj is None:  # not JSON as a whole: look inside for the diagnostics, but the format fails
        fmt = False
        start, end = text.find("{"), text.rfind("}")
        obj = _parse_object(text[start:end + 1]) if 0 <= start < end else None
    if obj is None:
        return {"format": False, "keys": False, "values": False}
    return {"format": fmt, "keys": set(obj) == set(want),
            "values": all(k in obj and _same_value(obj[k], v) for k, v in want.items())}


def _parse_object(text: str) -> dict | None:
    try:
        obj = json.loads(text)
    except (ValueError, TypeError):
        return None
    return obj if isinstance(obj, dict) else None


def _check_starts_with(spec, text):
    prefix = " ".join(spec["prefix"].split()).lower()
    flat = " ".join(text.split())
    words = [w for w in flat.split() if re.search(r"[A-Za-z0-9]", w)]
    return {"format": flat.lower().startswith(prefix), "length": 0 < len(words) <= int(spec["max_words"]),
            "topic": _on_topic(flat, spec["keywords"])}


def _check_ends_with(spec, text):
    flat = " ".join(text.split())
    end = lambda s: s.lower().rstrip(" .!?")  # noqa: E731 - final punctuation is forgiven
    words = [w for w in flat.split() if re.search(r"[A-Za-z0-9]", w)]
    return {"format": bool(end(flat)) and end(flat).endswith(end(" ".join(spec["suffix"].split()))),
            "length": 0 < len(words) <= int(spec["max_words"]), "topic": _on_topic(flat, spec["keywords"])}


def _on_topic(text: str, keywords) -> bool:
    return any(re.search(r"(?<![a-z])" + re.escape(k.lower()) + r"(s|es)?(?![a-z])", text.lower()) for k in keywords)


def _check_sentence(spec, text):
    words = [w for w in text.split() if re.search(r"[A-Za-z0-9]", w)]
    return {"format": len(words) >= int(spec.get("min_words", 3)),
            "correct": any(contains_word(text, a) for a in spec["accept"])}


_CHECKERS = {"sentence": _check_sentence, "number": _check_number, "word": _check_word, "upper_word": _check_upper_word,
             "bullets": _check_bullets, "json": _check_json, "starts_with": _check_starts_with,
             "ends_with": _check_ends_with}

_REASONS = {
    "sentence": {"format": "a bare word, not a sentence of {min_words}+ words", "correct": "wrong answer (expected {accept[0]})"},
    "number": {"format": "not just a number", "correct": "wrong number (expected {answer})"},
    "word": {"format": "not a single word", "correct": "wrong word (expected {accept[0]})"},
    "upper_word": {"format": "not a single word in capital letters", "correct": "wrong spelling (expected {answer})"},
    "bullets": {"format": "text other than bullet points", "count": "not exactly {n} bullet points",
                "items": "items empty, repeated or longer than {max_words} words"},
    "json": {"format": "not a JSON object alone", "keys": "keys are not exactly {keys}",
             "values": "values differ from {values}"},
    "starts_with": {"format": "does not start with {prefix!r}", "length": "more than {max_words} words (or empty)",
                    "topic": "not about the topic (none of {keywords})"},
    "ends_with": {"format": "does not end with {suffix!r}", "length": "more than {max_words} words (or empty)",
                  "topic": "not about the topic (none of {keywords})"},
}


def judge(spec: str | dict, response: str) -> JudgeResult:
    """Judge one response against its row's spec (JSON string or dict)."""
    spec = json.loads(spec) if isinstance(spec, str) else spec
    fmt = spec.get("format")
    if fmt not in _CHECKERS:
        raise ValueError(f"judge: unknown spec format {fmt!r}; known: {', '.join(_CHECKERS)}")
    text = clean_response(response)
    checks = _CHECKERS[fmt](spec, text) if text else {k: False for k in _REASONS[fmt]}
    failed = [k for k, ok in checks.items() if not ok]
    reason = ""
    if not text:
        reason = "empty response"
    elif failed:
        fields = {**spec, "keys": sorted(spec.get("values", {}))}
        reason = "; ".join(_REASONS[fmt][k].format(**fields) for k in failed)
    return JudgeResult(passed=not failed, checks=checks, family=spec.get("family", fmt), reason=reason)


def judge_many(specs: Iterable[str | dict], responses: Iterable[str]) -> dict[str, Any]:
    """Pass rates (percent) over many responses, overall and per family.

    Returns ``n``, ``num_passed``, ``pass_rate``; ``passed`` (one bool per response, in order);
    ``per_family`` (family -> pass rate); ``counts`` (family -> {"n", "passed"});
    ``check_rates`` (family -> check -> percent of responses where that check holds);
    ``reasons`` (one string per response, empty when passed).
    """
    specs, responses = list(specs), list(responses)
    if len(specs) != len(responses):
        raise ValueError(f"judge_many: {len(specs)} specs but {len(responses)} responses")
    results = [judge(s, r) for s, r in zip(specs, responses)]
    counts: dict[str, dict[str, int]] = {}
    check_hits: dict[str, Counter] = {}
    for res in results:
        c = counts.setdefault(res.family, {"n": 0, "passed": 0})
        c["n"] += 1
        c["passed"] += res.passed
        check_hits.setdefault(res.family, Counter()).update({k: int(v) for k, v in res.checks.items()})
    n, passed = len(results), sum(r.passed for r in results)
    return {
        "n": n,
        "num_passed": passed,
        "pass_rate": _pct(passed, n),
        "passed": [r.passed for r in results],
        "per_family": {f: _pct(c["passed"], c["n"]) for f, c in sorted(counts.items())},
        "counts": dict(sorted(counts.items())),
        "check_rates": {f: {k: _pct(v, counts[f]["n"]) for k, v in sorted(hits.items())}
                        for f, hits in sorted(check_hits.items())},
        "reasons": [r.reason for r in results],
    }


def _pct(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 2) if whole else 0.0


def degeneration_flags(response: str) -> list[str]:
    """Signs of a broken generation, whatever the task; an empty list means none found.

    ``empty``; ``repeated_ngram`` (a 3-word sequence three times or more, or a word four times in
    a row); ``repeated_line`` (the same non-empty line three times or more); ``repeated_chars``
    (one character ten times in a row); ``special_tokens`` (chat markup inside the text);
    ``not_text`` (mostly symbols: under 40% letters or digits).
    """
    text = clean_response(response)
    if not text:
        return ["empty"]
    flags = []
    words = re.findall(r"\w+", text.lower())
    trigrams = Counter(zip(words, words[1:], words[2:]))
    if (trigrams and max(trigrams.values()) >= 3) or re.search(r"\b(\w+)(?:\W+\1\b){3,}", text.lower()):
        flags.append("repeated_ngram")
    lines = Counter(line.strip().lower() for line in text.splitlines() if line.strip())
    if lines and max(lines.values()) >= 3:
        flags.append("repeated_line")
    if re.search(r"(\S)\1{9,}", text):
        flags.append("repeated_chars")
    if re.search(r"<\|[a-z_]+\|>|</s>|<s>", text):
        flags.append("special_tokens")
    visible = [ch for ch in text if not ch.isspace()]
    if visible and sum(ch.isalnum() for ch in visible) / len(visible) < 0.4:
        flags.append("not_text")
    return flags


def form_and_content(spec: str | dict, response: str) -> tuple[bool | None, bool | None]:
    """(right form, right content) of a response, for the families whose checks split that way
    (`format` and `correct`: numbers and words); (None, None) for the others."""
    result = judge(spec, response)
    if set(result.checks) != {"format", "correct"}:
        return None, None
    return result.checks["format"], result.checks["correct"]


def form_content_changes(specs, base_answers, trained_answers) -> list[dict[str, Any]]:
    """Per prompt, how the base answer and the trained answer stood on form and content, and which
    change it was: "gained form, kept content", "gained form, lost content" (right content in the wrong
    form before, right form with the wrong content after), "lost content", ... Prompts of families
    without that split are left out."""
    names = {(True, True): "right form, right content", (True, False): "right form, wrong content",
             (False, True): "wrong form, right content", (False, False): "wrong form, wrong content"}
    rows = []
    for spec, base, trained in zip(specs, base_answers, trained_answers):
        b, t = form_and_content(spec, base), form_and_content(spec, trained)
        if b[0] is None:
            continue
        rows.append({"family": (json.loads(spec) if isinstance(spec, str) else spec).get("family"),
                     "base": base, "trained": trained, "before": names[b], "after": names[t],
                     "gained form, lost content": b == (False, True) and t == (True, False)})
    return rows
