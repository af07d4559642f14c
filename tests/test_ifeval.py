"""IFEval offline: the packaged prompts, dpokit's scoring through if-verifiable, and no NLTK download."""

from __future__ import annotations

import json

import pytest

from dpokit.bench import nltk_offline
from dpokit.bench.ifeval import (
    NUM_PROMPTS,
    PROMPTS_FILE,
    IFEvalPrompt,
    compare,
    load_prompts,
    score_answers,
    select_prompts,
)
from dpokit.errors import DataError, EnvironmentProblem


@pytest.fixture(autouse=True)
def no_nltk_data(tmp_path, monkeypatch):
    """No NLTK data anywhere, and any attempt to download or load some fails the test."""
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "empty_nltk_data")])

    def refuse(*args, **kwargs):
        raise AssertionError(f"NLTK tried to download/load data: {args} {kwargs}")

    monkeypatch.setattr(nltk, "download", refuse)
    monkeypatch.setattr(nltk.downloader, "download", refuse)
    monkeypatch.setattr(nltk.data, "load", refuse)


def by_key(key: int) -> IFEvalPrompt:
    return next(p for p in load_prompts() if p.key == key)


def verdicts(prompt: IFEvalPrompt, answer: str) -> tuple[bool, bool]:
    row = score_answers([prompt], [answer])["rows"][0]
    return row["prompt_strict"], row["prompt_loose"]


# --- the packaged prompt file ---------------------------------------------------------------


def test_packaged_prompt_file_has_541_rows_with_the_official_fields():
    rows = [json.loads(line) for line in PROMPTS_FILE.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == NUM_PROMPTS == 541
    assert all(set(r) == {"key", "prompt", "instruction_id_list", "kwargs"} for r in rows)
    prompts = load_prompts()
    assert len({p.key for p in prompts}) == 541
    assert sum(len(p.instruction_ids) for p in prompts) == 834
    assert len({i for p in prompts for i in p.instruction_ids}) == 25
    assert (PROMPTS_FILE.parent / "LICENSE").read_text().count("Apache License") >= 1


def test_a_broken_prompt_file_is_refused_with_file_line_and_field(tmp_path):
    bad = tmp_path / "input_data.jsonl"
    good = json.dumps({"key": 1, "prompt": "Hi", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]})
    bad.write_text(good + "\n" + json.dumps({"key": 2, "prompt": "Hi", "instruction_id_list": ["x:y"],
                                             "kwargs": [{}]}) + "\n")
    with pytest.raises(DataError, match=r"input_data.jsonl:2: instruction id\(s\) 'x:y'"):
        load_prompts(bad)
    bad.write_text(good + "\n" + json.dumps({"key": 3, "prompt": 5, "instruction_id_list": [], "kwargs": []}))
    with pytest.raises(DataError, match=r":2: field 'prompt' must be a str"):
        load_prompts(bad)


# --- the seeded subset ----------------------------------------------------------------------


def test_subset_selection_is_fixed_by_seed_and_nested_and_in_file_order():
    keys = [p.key for p in select_prompts(5, seed=0)]
    assert keys == [1265, 2292, 2534, 2691, 3089]  # pinned: the subset must never move
    assert keys == sorted(keys)
    assert [p.key for p in select_prompts(5, seed=0)] == keys
    assert {p.key for p in select_prompts(20, seed=0)} <= {p.key for p in select_prompts(100, seed=0)}
    assert [p.key for p in select_prompts(5, seed=1)] != keys
    assert len(select_prompts(None)) == len(select_prompts(10_000)) == 541
    with pytest.raises(ValueError, match="at least 1"):
        select_prompts(0)


# --- pinned answers through dpokit's harness ------------------------------------------------


@pytest.mark.parametrize("key, answer, passes", [
    (1019, "what are the two young boys with toy guns and horns doing?", True),  # english_lowercase
    (1019, "What are the two boys doing?", False),
    (1001, "Day one: Tokyo and its temples. Day two: Kyoto and its gardens.", True),  # no_comma
    (1001, "Day one: Tokyo, then Kyoto.", False),
    (102, "* Tom arrives\n* Ann laughs\n* They leave", True),  # exactly 3 bullets
    (102, "* Tom arrives\n* Ann laughs", False),
    (1128, "It is negative. Is there anything else I can help with?", True),  # end phrase
    (1128, "Is there anything else I can help with? It is negative.", False),
    (1246, "A soft shirt for you.\nP.P.S. Buy it today.", True),  # postscript P.P.S
    (1246, "A soft shirt for you.", False),
    (1075, '```json\n{"product": "diaper", "comfort": "high"}\n```', True),  # JSON format
    (1075, 'Here it is: {"product": "diaper"}', False),
])
def test_pinned_answers_pass_or_fail_their_instruction(key, answer, passes):
    assert verdicts(by_key(key), answer)[0] is passes


def test_sentence_counting_uses_punkt_not_a_split_on_periods():
    # key 1268: fewer than 6 sentences. Punkt knows "Dr.", "p.m.", "Jan." and "Mr.": 5 sentences,
    # where splitting on every period would count 12.
    answer = ("Dr. Smith wrote it at 3 p.m. on Jan. 5. I felt calm. I slept at 10 p.m. and woke rested. "
              "I walked. Mr. Lee agreed.")
    assert nltk_offline.sent_tokenize(answer) == ["Dr. Smith wrote it at 3 p.m. on Jan. 5.", "I felt calm.",
                                                  "I slept at 10 p.m. and woke rested.", "I walked.", "Mr. Lee agreed."]
    assert verdicts(by_key(1268), answer)[0] is True
    assert verdicts(by_key(1268), answer + " One. Two.")[0] is False


def test_capital_word_count_uses_the_offline_word_tokenizer():
    # key 1592: at least 3 words in capitals; NLTK's word tokenizer splits "NASA's" into NASA + 's.
    assert nltk_offline.word_tokenize("NASA's SUN, OK?") == ["NASA", "'s", "SUN", ",", "OK", "?"]
    assert verdicts(by_key(1592), "Use SOLAR and WIND power, says NASA's report.")[0] is True
    assert verdicts(by_key(1592), "Use SOLAR and wind power.")[0] is False


def test_word_count_and_loose_scoring_follow_the_official_rules():
    # key 1072: at least 400 words. Loose scoring also tries the answer without its first line.
    prompt = by_key(1072)
    assert verdicts(prompt, "word " * 400) == (True, True)
    assert verdicts(prompt, "word " * 399) == (False, False)
    lowercase = by_key(1019)
    assert verdicts(lowercase, "Sure!\nwhat are the boys doing?") == (False, True)


def test_the_random_letter_of_a_malformed_letter_count_is_fixed_per_prompt():
    """Key 1129 asks for 6 "!", which the letter checker replaces by a random letter: the verdict must not
    depend on the global random state, and scoring must leave that state as it found it."""
    import random

    prompt = by_key(1129)
    answer = "Sunny ice cream is gentle and sweet, a treat for every summer afternoon " * 3
    verdicts_seen = set()
    for seed in range(6):
        random.seed(seed)
        before = random.getstate()
        verdicts_seen.add(tuple(score_answers([prompt], [answer])["rows"][0]["strict"]))
        assert random.getstate() == before
    assert len(verdicts_seen) == 1


def test_an_empty_answer_follows_no_instruction():
    result = score_answers([by_key(1001), by_key(102)], ["", "   "])
    assert result["accuracy"] == {"prompt_strict": 0.0, "prompt_loose": 0.0,
                                  "instruction_strict": 0.0, "instruction_loose": 0.0}
    assert [r["strict"] for r in result["rows"]] == [[False], [False]]


def test_accuracies_per_type_and_comparison_are_counted_over_prompts_and_instructions():
    prompts = [by_key(1001), by_key(1000)]  # 1 instruction; 3 instructions (no comma, highlights, 300+ words)
    base = score_answers(prompts, ["A, B.", "Plain words without commas."])
    trained = score_answers(prompts, ["A and B.", "Plain words, with a comma."])
    assert base["accuracy"] == {"prompt_strict": 0.0, "prompt_loose": 0.0,
                                "instruction_strict": 25.0, "instruction_loose": 25.0}
    assert trained["accuracy"]["prompt_strict"] == 50.0 and trained["accuracy"]["instruction_strict"] == 25.0
    assert base["per_instruction"]["punctuation:no_comma"] == {"n": 2, "strict": 50.0, "loose": 50.0}
    assert base["averages"]["strict"] == 12.5
    diff = compare(base, trained)["strict"]
    assert (diff["wins"], diff["losses"], diff["ties"], diff["win_keys"]) == (1, 0, 1, [1001])
    assert diff["change"] == {"prompt_strict": 50.0, "instruction_strict": 0.0}
    json.dumps(base), json.dumps(diff)  # JSON-ready


def test_confidence_intervals_are_wilson_for_prompts_and_clustered_for_instructions():
    from dpokit.bench.ifeval import intervals

    def row(verdicts):
        return {"strict": verdicts, "loose": verdicts, "prompt_strict": all(verdicts), "prompt_loose": all(verdicts)}

    rows = [row([True]), row([False, False]), row([True, True]), row([False])]
    assert intervals(rows)["prompt_strict"] == [15.0, 85.0]  # Wilson, 2 of 4
    assert intervals([rows[0], rows[1], rows[1], rows[3]])["prompt_strict"] == [4.56, 69.94]  # Wilson, 1 of 4
    # 100 prompts, 150 instructions, 75 passed: the ratio's standard error counts each prompt's instructions
    # together: sqrt(sum((a_i - 0.5 n_i)^2) / 99 / (100 * 1.5^2)) = 0.05297, times 1.96.
    assert intervals(rows * 25)["instruction_strict"] == [39.62, 60.38]


# --- the hook into if_verifiable ------------------------------------------------------------


def test_without_the_hook_the_checkers_would_need_nltk_data():
    from if_verifiable.ifeval import instructions_util

    with pytest.raises((LookupError, AssertionError)):
        instructions_util.nltk.word_tokenize("Hello there. General Kenobi.")


def test_the_hook_is_scoped_and_restores_if_verifiable():
    import langdetect
    from if_verifiable.ifeval import instructions_util

    before = (instructions_util._get_sentence_tokenizer, instructions_util.nltk, langdetect.DetectorFactory.seed)
    with nltk_offline.offline_nltk():
        assert instructions_util.nltk is not before[1]
        assert instructions_util.count_sentences("One. Two! Three?") == 3
    assert (instructions_util._get_sentence_tokenizer, instructions_util.nltk,
            langdetect.DetectorFactory.seed) == before


def test_the_hook_fails_loudly_naming_the_version_when_if_verifiable_changes(monkeypatch):
    from if_verifiable.ifeval import instructions_util

    nltk_offline.check_hooks.cache_clear()
    monkeypatch.delattr(instructions_util, "_get_sentence_tokenizer")
    with pytest.raises(EnvironmentProblem, match=r"if-verifiable 0\.1\.2: .*_get_sentence_tokenizer.*"
                                                 r"if-verifiable==0\.1\.2"):
        nltk_offline.check_hooks()
    monkeypatch.undo()
    nltk_offline.check_hooks.cache_clear()
    known = dict(nltk_offline.KNOWN_NLTK_USES)
    known.pop(("instructions", "CapitalWordFrequencyChecker.check_following", "word_tokenize"))
    monkeypatch.setattr(nltk_offline, "KNOWN_NLTK_USES", known)
    with pytest.raises(EnvironmentProblem, match=r"CapitalWordFrequencyChecker.check_following calls "
                                                 r"nltk.word_tokenize"):
        nltk_offline.check_hooks()
    nltk_offline.check_hooks.cache_clear()


def test_offline_sentence_splits_equal_nltk_punkt_with_the_same_english_model():
    """NLTK's algorithm with the bundled parameters: the same splits NLTK itself would give."""
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    tokenizer = nltk_offline.english_sentence_tokenizer()
    assert type(tokenizer) is PunktSentenceTokenizer
    assert "dr" in tokenizer._params.abbrev_types and len(tokenizer._params.ortho_context) > 10_000
    assert nltk_offline.sent_tokenize("Mr. and Mrs. Smith went to Washington D.C. on Friday. They left.") == [
        "Mr. and Mrs. Smith went to Washington D.C. on Friday.", "They left."]
