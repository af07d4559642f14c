"""The embedded task dataset: deterministic, balanced, split by value, every pair judged right."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from dpokit.judge import judge
from dpokit.tasks import (DEFAULT_FAMILIES, FAMILIES, OUTSIDE_TASK_PROMPTS, REGISTRY, build_task_dataset,
                          build_task_rows, outside_answer_ok)

SEEDS = (0, 1, 2, 7)


@pytest.fixture(scope="module")
def rows_by_seed():
    """Rows of every family (the default set and the others), for a few seeds."""
    return {seed: build_task_rows(seed=seed, n_train=45 * len(FAMILIES), n_heldout=7 * len(FAMILIES),
                                  families=list(FAMILIES)) for seed in SEEDS}


def test_dataset_has_train_and_heldout_splits_with_the_documented_columns():
    dd = build_task_dataset(seed=0)
    assert set(dd) == {"train", "heldout"}
    assert dd["train"].num_rows == 360 and dd["heldout"].num_rows == 60
    for split in dd.values():
        assert split.column_names == ["prompt", "chosen", "rejected", "family", "spec"]
    row = dd["heldout"][0]
    assert all(isinstance(row[c], str) for c in row)
    assert json.loads(row["spec"])["family"] == row["family"]


def test_same_seed_gives_identical_rows():
    assert build_task_rows(seed=3) == build_task_rows(seed=3)
    a, b = build_task_dataset(seed=3), build_task_dataset(seed=3)
    assert a["train"].to_list() == b["train"].to_list() and a["heldout"].to_list() == b["heldout"].to_list()


def test_different_seeds_give_different_rows(rows_by_seed):
    train0, held0 = rows_by_seed[0]
    train1, held1 = rows_by_seed[1]
    assert train0 != train1 and held0 != held1
    assert {r["prompt"] for r in held0} != {r["prompt"] for r in held1}


@pytest.mark.parametrize("seed", SEEDS)
def test_train_and_heldout_share_no_prompt(rows_by_seed, seed):
    train, held = rows_by_seed[seed]
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}
    assert len({r["prompt"] for r in held}) == len(held), "held-out prompts repeat"


def _values(row: dict) -> str:
    """The value a prompt is about (country, word, category, JSON subject, topic, operand pair)."""
    spec = json.loads(row["spec"])
    fam = REGISTRY[row["family"]]
    for item in fam.items():
        for variant in range(fam.n_variants):
            probe = fam.render(item, variant, __import__("random").Random(0))
            if probe.prompt == row["prompt"] or (spec["format"] in ("json", "bullets")
                                                 and _same_frame(probe.prompt, row["prompt"])):
                return item["group"]
    raise AssertionError(f"no item renders {row['prompt']!r}")


def _same_frame(a: str, b: str) -> bool:
    strip = lambda s: "".join(ch for ch in s if not ch.isdigit())  # noqa: E731 - ages/prices are drawn per row
    return strip(a) == strip(b)


def test_heldout_values_are_disjoint_from_training_values():
    train, held = build_task_rows(seed=5, n_train=120, n_heldout=24)
    train_groups = {(r["family"], _values(r)) for r in train}
    held_groups = {(r["family"], _values(r)) for r in held}
    assert not train_groups & held_groups


def test_default_families_are_balanced_in_both_splits():
    train, held = build_task_rows(seed=0)
    for rows, total in ((train, 360), (held, 60)):
        counts = Counter(r["family"] for r in rows)
        assert set(counts) == set(DEFAULT_FAMILIES)
        assert sum(counts.values()) == total
        assert max(counts.values()) - min(counts.values()) <= 1


def test_families_argument_restricts_and_balances():
    dd = build_task_dataset(seed=0, n_train=40, n_heldout=10, families=["capital", "arithmetic"])
    assert Counter(dd["train"]["family"]) == {"capital": 20, "arithmetic": 20}
    assert Counter(dd["heldout"]["family"]) == {"capital": 5, "arithmetic": 5}


def test_unknown_family_is_refused_with_the_list_of_known_ones():
    with pytest.raises(ValueError, match="available: .*arithmetic"):
        build_task_rows(families=["haiku"])


def test_at_least_six_families_with_descriptions():
    assert len(DEFAULT_FAMILIES) >= 6 and set(DEFAULT_FAMILIES) <= set(FAMILIES) == set(REGISTRY)
    assert all(isinstance(d, str) and d for d in FAMILIES.values())


@pytest.mark.parametrize("seed", SEEDS)
def test_chosen_passes_and_rejected_fails_the_judge_on_every_row(rows_by_seed, seed):
    train, held = rows_by_seed[seed]
    for row in train + held:
        good, bad = judge(row["spec"], row["chosen"]), judge(row["spec"], row["rejected"])
        assert good.passed, (row, good)
        assert not bad.passed, (row, bad)


def test_every_family_mixes_verbose_but_right_and_compliant_but_wrong_rejections():
    train, _ = build_task_rows(seed=0, n_train=90 * len(FAMILIES), n_heldout=0, families=list(FAMILIES))
    by_family: dict[str, Counter] = {}
    for row in train:
        res = judge(row["spec"], row["rejected"])
        content = [k for k in res.checks if k != "format"]
        kind = ("right_content" if all(res.checks[k] for k in content) else
                "right_format" if res.checks["format"] else "both_wrong")
        by_family.setdefault(row["family"], Counter())[kind] += 1
    plain = by_family.pop("plain_question")  # the contrast family: a bare or a full answer, always wrong
    assert plain["right_content"] == 0 and plain["right_format"] >= 10 and plain["both_wrong"] >= 10, plain
    for fam, kinds in by_family.items():
        assert kinds["right_content"] >= 10, (fam, kinds)  # e.g. "The capital of Peru is Lima."
        assert kinds["right_format"] >= 10, (fam, kinds)  # e.g. "Cusco"


def test_chosen_answers_are_short(rows_by_seed):
    train, held = rows_by_seed[0]
    for row in train + held:
        assert len(row["chosen"].split()) <= 16, row  # ~25 tokens at most
        assert len(row["rejected"].split()) <= 40, row


def test_large_train_sets_repeat_prompts_only_after_using_all_distinct_ones():
    train, held = build_task_rows(seed=0, n_train=2400, n_heldout=40, families=["capital"])
    assert len(train) == 2400
    distinct = {r["prompt"] for r in train}
    assert len(distinct) < 2400 and not distinct & {r["prompt"] for r in held}


def test_too_many_heldout_prompts_is_a_clear_error():
    with pytest.raises(ValueError, match="held-out"):
        build_task_rows(n_heldout=2000, families=["bullets"])


def test_outside_prompts_are_questions_with_expected_answers_outside_the_families():
    assert 10 <= len(OUTSIDE_TASK_PROMPTS) <= 20
    train, held = build_task_rows(seed=0)
    task_prompts = {r["prompt"] for r in train + held}
    for question, expected in OUTSIDE_TASK_PROMPTS:
        assert question.endswith("?") and expected and question not in task_prompts
        assert not outside_answer_ok(expected, question)


@pytest.mark.parametrize("expected, answer, ok", [
    ("three|3", "A triangle has 3 sides.", True),
    ("three|3", "Three.", True),
    ("three|3", "It has 13 sides.", False),
    ("7|seven", "12", False),
    ("100", "100.0 degrees Celsius", True),
    ("carbon dioxide", "Plants absorb Carbon Dioxide.", True),
    ("Milky Way", "The Galaxy of Zorvath", False),
    ("heart", "", False),
])
def test_outside_answers_are_checked_by_whole_word_alternatives(expected, answer, ok):
    assert outside_answer_ok(expected, answer) is ok
