"""What a task family is: a pool of items, phrasings of a prompt, a compliant answer, failures.

A family knows

* ``items()``: its whole pool of values (a country, a word, a pair of operands ...). Each item has
  a ``group``: items of one group always land in the same split, so a held-out prompt never
  shares its values with a training prompt (e.g. "3 + 4" and "4 + 3", "hot/cold" and "cold/hot").
* ``n_variants``: how many prompts one item can produce (phrasings x numbers of bullets ...).
* ``render(item, variant, rng)``: one row: the prompt, a short compliant ``chosen`` answer, a
  realistic ``rejected`` failure of a kind drawn from ``rejected_kinds``, and the judge ``spec``.

Rejected kinds, shared vocabulary across families:

* ``verbose``: correct but not compliant ("The capital of Peru is Lima.", a preamble ...);
* ``wrong``: compliant but wrong ("Cusco", a list with one bullet too many ...);
* ``wrong_verbose``: both wrong and not compliant;
* ``format``: right content in the wrong shape (lowercase instead of capitals, numbered list ...).
"""

from __future__ import annotations

import json
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True)
class Row:
    """One preference pair with the judge spec for its prompt."""

    prompt: str
    chosen: str
    rejected: str
    spec: dict[str, Any]
    family: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected,
                "family": self.family, "spec": json.dumps(self.spec, sort_keys=True)}


@dataclass
class Family(ABC):
    """Base class of a task family; subclasses fill in the class attributes and three methods."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    n_variants: ClassVar[int] = 1
    # rejected kind -> weight; the kind of each row's rejected answer is drawn with these weights
    rejected_kinds: ClassVar[dict[str, float]] = {"verbose": 0.45, "wrong": 0.35, "wrong_verbose": 0.2}
    _items: list[dict[str, Any]] | None = field(default=None, repr=False)

    def items(self) -> list[dict[str, Any]]:
        if self._items is None:
            self._items = self.make_items()
        return self._items

    @abstractmethod
    def make_items(self) -> list[dict[str, Any]]:
        """The family's items (operands, words, countries ...), before prompts are rendered."""

    def render(self, item: dict[str, Any], variant: int, rng: random.Random) -> Row:
        kind = pick(rng, self.rejected_kinds)
        item = self.variant_item(item, variant)
        prompt, chosen, spec = self.prompt_and_answer(item, variant, rng)
        rejected = self.rejected(item, kind, chosen, rng)
        spec = {"family": self.name, **spec, "rejected_kind": kind}
        return Row(prompt, chosen, rejected, spec, self.name)

    def variant_item(self, item: dict[str, Any], variant: int) -> dict[str, Any]:
        """The item as this variant sees it (e.g. operands swapped); by default the item itself."""
        return item

    @abstractmethod
    def prompt_and_answer(self, item: dict[str, Any], variant: int,
                          rng: random.Random) -> tuple[str, str, dict[str, Any]]:
        """(prompt, chosen answer, judge spec) for one item and prompt variant."""

    @abstractmethod
    def rejected(self, item: dict[str, Any], kind: str, chosen: str, rng: random.Random) -> str:
        """A realistic failing answer of the given kind (verbose, wrong, wrong_verbose ...)."""


def pick(rng: random.Random, weights: dict[str, float]) -> str:
    """A key drawn with the given weights (deterministic for a seeded rng)."""
    keys = sorted(weights)
    return rng.choices(keys, weights=[weights[k] for k in keys])[0]


def capitalize(text: str) -> str:
    """First character upper-cased, the rest untouched ('the ocean' -> 'The ocean')."""
    return text[:1].upper() + text[1:]


def alternatives(answer: str) -> list[str]:
    """'small/little' -> ['small', 'little'] (the first one is used in chosen answers)."""
    return [a.strip() for a in answer.split("/") if a.strip()]
