"""The embedded task: preference pairs the project generates itself, with a deterministic judge.

Prompts carry instructions a program can check (just a number, one word, all capitals, exactly N
bullets, a JSON object, a required opening ...). ``chosen`` follows the instruction; ``rejected``
fails it the way small chat models do (rambling, restating, wrong answer, wrong shape).

Usage::

    from dpokit.tasks import build_task_dataset, FAMILIES, DEFAULT_FAMILIES
    from dpokit.judge import judge, judge_many

    dd = build_task_dataset(seed=0)     # DatasetDict: "train" (360 rows) and "heldout" (60 rows)
    row = dd["heldout"][0]
    judge(row["spec"], row["chosen"]).passed      # True
    judge(row["spec"], row["rejected"]).passed    # False, and .checks / .reason say why
"""

from .base import Family, Row
from .builder import DEFAULT_FAMILIES, FAMILIES, REGISTRY, build_task_dataset, build_task_rows
from .outside import OUTSIDE_TASK_PROMPTS, outside_answer_ok

__all__ = ["DEFAULT_FAMILIES", "FAMILIES", "OUTSIDE_TASK_PROMPTS", "REGISTRY", "Family", "Row", "build_task_dataset",
           "build_task_rows", "outside_answer_ok"]
