"""Questions outside the task families, to detect damage done by training.

Each entry is ``(question, expected)``: the answer counts as right when one of the ``|``-separated
alternatives in ``expected`` occurs in it as a whole word or phrase, in any case ("3" or "three"
sides; "13" does not count as "3"). Only questions the *base* model (SmolLM2-135M-Instruct, greedy,
48 new tokens) answers right are kept, so any loss after training is damage, not noise.
`benchmarks/base_model_on_task.py` re-checks them.
"""

from __future__ import annotations

import re

OUTSIDE_TASK_PROMPTS: tuple[tuple[str, str], ...] = (
    ("What is the chemical symbol for water?", "H2O"),
    ("How many days are in a week?", "7|seven"),
    ("What color is the sky on a clear day?", "blue"),
    ("What is the largest ocean on Earth?", "Pacific"),
    ("Who wrote Romeo and Juliet?", "Shakespeare"),
    ("What gas do plants absorb from the air?", "carbon dioxide"),
    ("What is the main language spoken in Brazil?", "Portuguese"),
    ("Who painted the Mona Lisa?", "Leonardo"),
    ("What is the boiling point of water in Celsius?", "100"),
    ("What is the tallest mountain in the world?", "Everest"),
    ("What is the currency of Japan?", "yen|JPY"),
    ("Which organ pumps blood through the body?", "heart"),
    ("What language is spoken in Spain?", "Spanish"),
    ("What is the name of our galaxy?", "Milky Way"),
    ("How many hours are in a day?", "24|twenty-four"),
    ("Who discovered penicillin?", "Fleming"),
    ("Which country is home to the kangaroo?", "Australia"),
    ("How many sides does a triangle have?", "three|3"),
)


def outside_answer_ok(expected: str, response: str) -> bool:
    """The check used for OUTSIDE_TASK_PROMPTS: an alternative of ``expected`` occurs as a word (any case)."""
    return any(re.search(rf"(?<!\w){re.escape(alt)}(?!\w)", response or "", re.IGNORECASE)
               for alt in expected.split("|"))
