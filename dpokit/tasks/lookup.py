"""Families whose answer is a single number or word: arithmetic, capital, opposite, plural, uppercase."""

from __future__ import annotations

import random
from typing import Any

from . import vocab
from .base import Family, alternatives, capitalize


class Arithmetic(Family):
    name = "arithmetic"
    description = "one-digit addition or multiplication; reply with just the number"
    n_variants = 6  # 3 phrasings x 2 operand orders
    _ops = {"+": ("+", "plus", "adding"), "*": ("times", "times", "multiplying")}

    def make_items(self):
        items = []
        for op, low in (("+", 1), ("*", 2)):
            for a in range(low, 10):
                for b in range(a, 10):
                    items.append({"group": f"{a}{op}{b}", "op": op, "a": a, "b": b,
                                  "answer": a + b if op == "+" else a * b})
        return items

    def variant_item(self, item, variant):
        return item if variant < 3 else {**item, "a": item["b"], "b": item["a"]}

    def prompt_and_answer(self, item, variant, rng):
        a, b = item["a"], item["b"]
        sym, word, _ = self._ops[item["op"]]
        prompt = [f"What is {a} {sym} {b}? Reply with just the number.",
                  f"Calculate {a} {'+' if item['op'] == '+' else '*'} {b}. Answer with only the number and no other words.",
                  f"{a} {word} {b} = ? Give just the number."][variant % 3]
        return prompt, str(item["answer"]), {"format": "number", "answer": item["answer"]}

    def rejected(self, item, kind, chosen, rng):
        a, b, ans, op = item["a"], item["b"], item["answer"], item["op"]
        sym = "+" if op == "+" else rng.choice(["x", "*", "×"])
        _, word, verb = self._ops[op]
        if kind == "verbose":
            return rng.choice([f"{a} {sym} {b} = {ans}.", f"The answer is {ans}.", f"{a} {word} {b} equals {ans}.",
                               f"Sure! {a} {word} {b} is {ans}.", f"{ans}. I got this by {verb} {a} and {b}."])
        wrong = self.wrong_answer(item, rng)
        if kind == "wrong":
            return str(wrong)
        return rng.choice([f"{a} {sym} {b} = {wrong}.", f"The answer is {wrong}."])

    @staticmethod
    def wrong_answer(item: dict[str, Any], rng: random.Random) -> int:
        a, b, ans = item["a"], item["b"], item["answer"]
        options = {ans + 1, ans - 1, ans + 2, ans + 10, a + b, a * b, int(str(ans)[::-1])}
        options = sorted(x for x in options if x != ans and x >= 0)
        return rng.choice(options)


class Capital(Family):
    name = "capital"
    description = "capital city of a country; answer with one word"
    n_variants = 3

    def make_items(self):
        return [{"group": country, "country": country, "accept": alternatives(cap), "distractor": other}
                for country, cap, other in vocab.CAPITALS]

    def prompt_and_answer(self, item, variant, rng):
        c = item["country"]
        prompt = [f"What is the capital of {c}? Answer with one word.",
                  f"Name the capital city of {c}. Reply with only the city name.",
                  f"Which city is the capital of {c}? Respond with a single word."][variant]
        return prompt, item["accept"][0], {"format": "word", "accept": item["accept"]}

    def rejected(self, item, kind, chosen, rng):
        c, cap, other = item["country"], chosen, item["distractor"]
        if kind == "verbose":
            return rng.choice([f"The capital of {c} is {cap}.", f"{cap} is the capital of {c}.",
                               f"{cap}. It is the capital city of {c}.", f"Sure! The capital of {c} is {cap}.",
                               f"The capital city is {cap}."])
        if kind == "wrong":
            return other
        return rng.choice([f"The capital of {c} is {other}.", f"{other} is the capital of {c}."])


class Opposite(Family):
    name = "opposite"
    description = "opposite (antonym) of a word; answer with one word"
    n_variants = 3

    def make_items(self):
        return [{"group": "|".join(sorted([w, alternatives(opp)[0]])), "word": w, "accept": alternatives(opp)}
                for w, opp in vocab.OPPOSITES]

    def prompt_and_answer(self, item, variant, rng):
        w = item["word"]
        prompt = [f'What is the opposite of "{w}"? Reply with one word.',
                  f'Give the antonym of "{w}". Answer with a single word and nothing else.',
                  f"One word only: what is the opposite of {w}?"][variant]
        return prompt, item["accept"][0], {"format": "word", "accept": item["accept"]}

    def rejected(self, item, kind, chosen, rng):
        w, a = item["word"], chosen
        if kind == "verbose":
            return rng.choice([f'The opposite of "{w}" is "{a}".', f'{capitalize(a)}. It is the opposite of "{w}".',
                               f'"{capitalize(a)}" is the opposite of "{w}".', f"The antonym of {w} is {a}."])
        others = sorted({alternatives(o)[0] for x, o in vocab.OPPOSITES} - set(item["accept"]) - {w})
        wrong = w if rng.random() < 0.4 else rng.choice(others)
        if kind == "wrong":
            return wrong
        return f'The opposite of "{w}" is "{wrong}".'


class Plural(Family):
    name = "plural"
    description = "plural form of a noun; answer with one word"
    n_variants = 3

    def make_items(self):
        return [{"group": w, "word": w, "accept": alternatives(p)} for w, p in vocab.PLURALS]

    def prompt_and_answer(self, item, variant, rng):
        w = item["word"]
        prompt = [f'What is the plural of "{w}"? Reply with one word.',
                  f'Write the plural form of "{w}". Answer with just that word.',
                  f'Plural of "{w}"? One word only.'][variant]
        return prompt, item["accept"][0], {"format": "word", "accept": item["accept"]}

    def rejected(self, item, kind, chosen, rng):
        w, p = item["word"], chosen
        if kind == "verbose":
            return rng.choice([f'The plural of "{w}" is "{p}".', f'{capitalize(p)}. That is the plural of "{w}".',
                               f"The plural form of {w} is {p}.", f"Sure! One {w}, two {p}."])
        wrong = rng.choice(self.naive_plurals(w, item["accept"]))
        if kind == "wrong":
            return wrong
        return f'The plural of "{w}" is "{wrong}".'

    @staticmethod
    def naive_plurals(word: str, accept: list[str]) -> list[str]:
        """Plurals a small model gets wrong: a rule applied where it does not hold, or no change."""
        options = [word + "s", word + "es", word]
        if word.endswith("y"):
            options.append(word[:-1] + "ies")
        return [o for o in options if o not in accept]


class Uppercase(Family):
    name = "uppercase"
    description = "write a given word in capital letters and nothing else"
    n_variants = 3
    rejected_kinds = {"verbose": 0.35, "format": 0.3, "wrong": 0.35}

    def make_items(self):
        return [{"group": w, "word": w} for w in vocab.UPPERCASE_WORDS]

    def prompt_and_answer(self, item, variant, rng):
        w = item["word"]
        prompt = [f'Write the word "{w}" in capital letters. Reply with only that word.',
                  f'Convert "{w}" to all caps. Output nothing but the converted word.',
                  f'Spell "{w}" in uppercase letters, with no other text.'][variant]
        return prompt, w.upper(), {"format": "upper_word", "answer": w.upper()}

    def rejected(self, item, kind, chosen, rng):
        w, big = item["word"], chosen
        if kind == "verbose":
            return rng.choice([f'The word "{w}" in capital letters is {big}.', f"Sure! Here it is: {big}",
                               f'{big} is "{w}" written in capital letters.'])
        if kind == "format":
            return rng.choice([w, capitalize(w)])
        return self.misspell(big, rng)

    @staticmethod
    def misspell(word: str, rng: random.Random) -> str:
        """A near miss: two letters swapped, one dropped, or one doubled (never the word itself)."""
        while True:
            i = rng.randrange(1, len(word) - 1)
            how = rng.choice(["swap", "drop", "double"])
            if how == "swap":
                out = word[:i] + word[i + 1] + word[i] + word[i + 2:]
            elif how == "drop":
                out = word[:i] + word[i + 1:]
            else:
                out = word[:i] + word[i] + word[i:]
            if out != word:
                return out
