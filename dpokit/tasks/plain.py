"""A contrast family: plain questions with no format instruction, answered correctly in a sentence.

Every other family rewards short, exact answers because the prompt asks for them. Trained on those
alone, a small model learns "always answer in one word" and starts answering *every* question that
way, often wrongly ("How many days are in a week?" -> "12"). This family shows the other side of
the same skill: with no instruction about the form, the preferred answer is a correct sentence and
the rejected one a bare wrong word (or a wrong sentence). The judge checks both the sentence and the
fact, so the held-out score also measures whether the model kept answering plain questions well.
"""

from __future__ import annotations

from . import vocab
from .base import Family, alternatives


class PlainQuestion(Family):
    name = "plain_question"
    description = "a question with no format instruction; answer correctly in a full sentence"
    n_variants = 1
    rejected_kinds = {"wrong": 0.6, "wrong_verbose": 0.4}
    min_words = 3

    def make_items(self):
        return [{"group": q, "question": q, "sentence": s, "accept": alternatives(acc), "wrong": wrong}
                for q, s, acc, wrong in vocab.PLAIN_FACTS]

    def prompt_and_answer(self, item, variant, rng):
        return item["question"], item["sentence"], {"format": "sentence", "accept": item["accept"],
                                                    "min_words": self.min_words}

    def rejected(self, item, kind, chosen, rng):
        wrong = item["wrong"]
        if kind == "wrong":  # the failure a model trained only on one-word answers makes
            return rng.choice([wrong, f"{wrong}."])
        # the full sentence with the fact replaced by the wrong answer
        for accepted in item["accept"]:
            for form in (accepted, accepted.capitalize()):
                if form in chosen.split() or f"{form}." in chosen.split():
                    return chosen.replace(form, wrong if form == accepted else wrong.capitalize(), 1)
        return f"I think it is {wrong}."
