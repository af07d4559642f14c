"""The judge: pinned good and bad answers per family, what is forgiven, pass rates, degeneration."""

from __future__ import annotations

import json

import pytest

from dpokit.judge import JudgeResult, clean_response, degeneration_flags, judge, judge_many

ARITH = {"family": "arithmetic", "format": "number", "answer": 42}
CAPITAL = {"family": "capital", "format": "word", "accept": ["Lima"]}
OPPOSITE = {"family": "opposite", "format": "word", "accept": ["small", "little"]}
PLURAL = {"family": "plural", "format": "word", "accept": ["mice"]}
UPPER = {"family": "uppercase", "format": "upper_word", "answer": "MARBLE"}
BULLETS = {"family": "bullets", "format": "bullets", "n": 3, "max_words": 4}
JSON_SPEC = {"family": "json", "format": "json", "values": {"name": "Anna", "age": 31}}
ENDS = {"family": "ends_with", "format": "ends_with", "suffix": "That is all.", "keywords": ["cat"], "max_words": 25}
STARTS = {"family": "starts_with", "format": "starts_with", "prefix": "Fun fact:", "keywords": ["ocean", "sea"],
          "max_words": 20}


def verdict(spec, response) -> tuple[bool, dict]:
    res = judge(spec, response)
    return res.passed, res.checks


@pytest.mark.parametrize("response", ["42", "42.", " 42\n", "42<|im_end|>", '"42"', "**42**"])
def test_arithmetic_bare_number_passes_with_forgiven_decoration(response):
    assert judge(ARITH, response).passed


@pytest.mark.parametrize("response, checks", [
    ("The answer is 42.", {"format": False, "correct": True}),
    ("17 + 25 = 42", {"format": False, "correct": True}),
    ("41", {"format": True, "correct": False}),
    ("17 + 25 = 32.", {"format": False, "correct": False}),
    ("42 42", {"format": False, "correct": True}),
    ("forty-two", {"format": False, "correct": False}),
    ("420", {"format": True, "correct": False}),
])
def test_arithmetic_failures_say_which_instruction_was_broken(response, checks):
    assert verdict(ARITH, response) == (False, checks)


def test_capital_one_word_in_any_case_passes_and_a_sentence_fails():
    assert judge(CAPITAL, "Lima").passed and judge(CAPITAL, "lima").passed and judge(CAPITAL, "Lima.").passed
    assert verdict(CAPITAL, "The capital of Peru is Lima.") == (False, {"format": False, "correct": True})
    assert verdict(CAPITAL, "Cusco") == (False, {"format": True, "correct": False})
    assert verdict(CAPITAL, "Lima, Peru") == (False, {"format": False, "correct": True})
    assert verdict(CAPITAL, "Limassol") == (False, {"format": True, "correct": False})


def test_opposite_accepts_every_listed_alternative():
    for good in ("small", "Little", '"small"'):
        assert judge(OPPOSITE, good).passed, good
    assert verdict(OPPOSITE, "big") == (False, {"format": True, "correct": False})
    assert verdict(OPPOSITE, 'The opposite of "big" is "small".') == (False, {"format": False, "correct": True})


def test_plural_pins():
    assert judge(PLURAL, "mice").passed
    assert verdict(PLURAL, "mouses") == (False, {"format": True, "correct": False})
    assert verdict(PLURAL, "Mice. That is the plural of mouse.")[1]["format"] is False


def test_uppercase_needs_capitals_and_the_right_spelling():
    assert judge(UPPER, "MARBLE").passed and judge(UPPER, "MARBLE.").passed
    assert verdict(UPPER, "marble") == (False, {"format": False, "correct": True})
    assert verdict(UPPER, "Marble") == (False, {"format": False, "correct": True})
    assert verdict(UPPER, "MARABLE") == (False, {"format": True, "correct": False})
    assert verdict(UPPER, 'The word "marble" in capital letters is MARBLE.') == (False, {"format": False,
                                                                                         "correct": True})


def test_bullets_pins():
    assert judge(BULLETS, "- apple\n- pear\n- plum").passed
    assert judge(BULLETS, "* apple\n\n* pear\n* plum.\n").passed  # other marker, blank line, final period
    assert verdict(BULLETS, "Here are three fruits:\n- apple\n- pear\n- plum") == (
        False, {"format": False, "count": True, "items": True})
    assert verdict(BULLETS, "- apple\n- pear") == (False, {"format": True, "count": False, "items": True})
    assert verdict(BULLETS, "- apple\n- apple\n- pear")[1]["items"] is False
    assert verdict(BULLETS, "1. Apple\n2. Pear\n3. Plum") == (False, {"format": False, "count": False, "items": False})
    assert not judge(BULLETS, "apple, pear and plum.").passed
    assert not judge(BULLETS, "- a very long description of one fruit\n- pear\n- plum").passed


def test_json_pins():
    assert judge(JSON_SPEC, '{"name": "Anna", "age": 31}').passed
    assert judge(JSON_SPEC, '{"age":31,"name":"Anna"}').passed
    assert judge(JSON_SPEC, '{\n  "name": "Anna",\n  "age": 31\n}').passed
    assert judge(JSON_SPEC, '{"name": "anna", "age": "31"}').passed
    assert verdict(JSON_SPEC, 'Here is the JSON:\n{"name": "Anna", "age": 31}') == (
        False, {"format": False, "keys": True, "values": True})
    assert verdict(JSON_SPEC, '```json\n{"name": "Anna", "age": 31}\n```') == (  # must parse as it is
        False, {"format": False, "keys": True, "values": True})
    assert verdict(JSON_SPEC, '{"name": "Anna", "age": 13}') == (False, {"format": True, "keys": True,
                                                                         "values": False})
    assert verdict(JSON_SPEC, '{"name": "Anna"}')[1]["keys"] is False
    assert verdict(JSON_SPEC, '{"Name": "Anna", "age": 31}')[1]["keys"] is False
    assert verdict(JSON_SPEC, "{'name': 'Anna', 'age': 31}")[1]["format"] is False
    assert not judge(JSON_SPEC, '["Anna", 31]').passed
    assert not judge(JSON_SPEC, "Anna is 31 years old.").passed


def test_starts_with_pins():
    assert judge(STARTS, "Fun fact: the ocean covers most of the Earth.").passed
    assert judge(STARTS, "fun fact:  the sea is salty.").passed  # case and spacing of the opening forgiven
    assert verdict(STARTS, "The ocean covers most of the Earth.")[1] == {"format": False, "length": True,
                                                                         "topic": True}
    assert verdict(STARTS, "Fun fact: chess is a game for two players.")[1]["topic"] is False
    long = "Fun fact: the ocean covers most of the Earth, and there is so much more to say about it than " \
           "anyone could fit in a single short sentence."
    assert verdict(STARTS, long)[1]["length"] is False
    assert not judge(STARTS, "Fun fact: the seasons change.").passed  # "sea" is not "seasons"


def test_ends_with_pins():
    assert judge(ENDS, "Cats sleep for most of the day. That is all.").passed
    assert judge(ENDS, "Cats sleep a lot. that is all").passed  # case and final punctuation forgiven
    assert verdict(ENDS, "Cats sleep for most of the day.") == (False, {"format": False, "length": True,
                                                                        "topic": True})
    assert verdict(ENDS, "Cats sleep a lot. That is all. Let me know if you want more.")[1]["format"] is False
    assert verdict(ENDS, "Dogs are loyal pets. That is all.")[1] == {"format": True, "length": True, "topic": False}
    long = "Cats sleep for most of the day, and there is so much more to say about them than anyone " \
           "could ever fit in one short sentence. That is all."
    assert verdict(ENDS, long)[1]["length"] is False
    assert not judge(ENDS, "That is all.").passed  # the closing alone is not a sentence about cats


def test_spec_may_be_a_json_string_and_result_reports_family_and_reason():
    res = judge(json.dumps(ARITH), "The answer is 42.")
    assert isinstance(res, JudgeResult) and res.family == "arithmetic" and not res
    assert "not just a number" in res.reason
    assert judge(ARITH, "41").reason == "wrong number (expected 42)"
    assert judge(ARITH, "42").reason == ""


def test_empty_response_fails_every_check():
    res = judge(CAPITAL, "  <|im_end|>")
    assert not res.passed and res.reason == "empty response" and not any(res.checks.values())


def test_unknown_spec_format_is_an_error():
    with pytest.raises(ValueError, match="unknown spec format"):
        judge({"format": "haiku"}, "x")


def test_clean_response_strips_whitespace_and_end_markers():
    assert clean_response("  Lima <|im_end|></s>\n") == "Lima"
    assert clean_response(None) == ""


def test_judge_many_reports_overall_and_per_family_rates_and_counts():
    specs = [ARITH, ARITH, CAPITAL, json.dumps(UPPER)]
    scores = judge_many(specs, ["42", "41", "Lima", "marble"])
    assert scores["n"] == 4 and scores["num_passed"] == 2 and scores["pass_rate"] == 50.0
    assert scores["passed"] == [True, False, True, False]
    assert scores["per_family"] == {"arithmetic": 50.0, "capital": 100.0, "uppercase": 0.0}
    assert scores["counts"]["arithmetic"] == {"n": 2, "passed": 1}
    assert scores["check_rates"]["uppercase"] == {"correct": 100.0, "format": 0.0}
    assert scores["reasons"][1] == "wrong number (expected 42)"
    json.dumps(scores)  # serialisable for run records


def test_judge_many_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="2 specs but 1 responses"):
        judge_many([ARITH, ARITH], ["42"])


@pytest.mark.parametrize("response, flag", [
    ("", "empty"),
    ("<|im_end|>", "empty"),
    ("The capital of the capital of the capital of the city", "repeated_ngram"),
    ("no no no no", "repeated_ngram"),
    ("- apple\n- apple\n- apple", "repeated_line"),
    ("Wow!!!!!!!!!!!!", "repeated_chars"),
    ("Lima<|im_start|>assistant", "special_tokens"),
    ("{}[]()!?;:", "not_text"),
])
def test_degeneration_flags_catch_broken_generations(response, flag):
    assert flag in degeneration_flags(response)


@pytest.mark.parametrize("response", ["42", "Lima", "MARBLE", '{"name": "Anna", "age": 31}',
                                      "- apple\n- pear\n- plum", "Fun fact: the ocean covers most of the Earth.",
                                      "The capital of Peru is Lima. It is a large city on the coast."])
def test_degeneration_flags_leave_normal_answers_alone(response):
    assert degeneration_flags(response) == []


PLAIN = {"family": "plain_question", "format": "sentence", "accept": ["seven", "7"], "min_words": 3}


@pytest.mark.parametrize("response, passed, checks", [
    ("There are seven continents.", True, {"format": True, "correct": True}),
    ("The world has 7 continents: Africa, Asia ...", True, {"format": True, "correct": True}),
    ("Seven.", False, {"format": False, "correct": True}),  # right, but a bare word where no format was asked
    ("5", False, {"format": False, "correct": False}),  # the damage a one-word habit does
    ("There are five continents.", False, {"format": True, "correct": False}),
    ("There are 17 continents.", False, {"format": True, "correct": False}),  # 17 is not 7
])
def test_plain_question_wants_a_correct_sentence(response, passed, checks):
    res = judge(PLAIN, response)
    assert (res.passed, res.checks) == (passed, checks), res.reason


def test_form_content_changes_find_answers_that_gained_form_and_lost_content():
    from dpokit.judge import form_content_changes

    spec = {"format": "number", "family": "arithmetic", "answer": 81}
    rows = form_content_changes([spec, spec, spec], ["9 * 9 = 81", "9 * 9 = 81", "I do not know"], ["9", "81", "81"])
    assert [r["gained form, lost content"] for r in rows] == [True, False, False]
    assert rows[0]["before"] == "wrong form, right content" and rows[0]["after"] == "right form, wrong content"
    assert rows[1]["after"] == "right form, right content"


def test_form_content_changes_skip_families_without_that_split():
    from dpokit.judge import form_content_changes

    spec = {"format": "bullets", "family": "bullets", "n": 2, "max_words": 4}
    assert form_content_changes([spec], ["- a\n- b"], ["- a"]) == []
