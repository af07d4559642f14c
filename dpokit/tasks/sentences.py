"""Families asking for one short on-topic sentence with a required opening or closing phrase."""

from __future__ import annotations

from . import vocab
from .base import Family, capitalize

# appended to make a "verbose" rejection: always pushes the reply past the word limit
_MORE = "There is much more to say about {topic}, and many people love to read and talk about it every day."


class _Sentence(Family):
    rejected_kinds = {"verbose": 0.25, "wrong": 0.3, "format": 0.45}

    def make_items(self):
        return [{"group": topic, "topic": topic, "keywords": list(keys), "body": body}
                for topic, keys, body in vocab.TOPICS]

    @staticmethod
    def off_topic_body(item, rng) -> str:
        """The sentence of another topic that mentions none of this topic's words."""
        keys = tuple(item["keywords"])
        return rng.choice([b for t, _, b in vocab.TOPICS if t != item["topic"] and not any(k in b for k in keys)])


class StartsWith(_Sentence):
    name = "starts_with"
    description = "one short on-topic sentence (at most 20 words) that starts with a given phrase"
    n_variants = 3 * len(vocab.OPENINGS)
    max_words = 20

    def prompt_and_answer(self, item, variant, rng):
        phrase, cap = vocab.OPENINGS[variant // 3]
        topic = item["topic"]
        prompt = [f'Write one short sentence about {topic}. Start your reply with "{phrase}"',
                  f'Tell me one thing about {topic} in a single sentence of at most {self.max_words} words. '
                  f'Begin with "{phrase}"',
                  f'Start your answer with "{phrase}" and then say something about {topic} in one short sentence.'
                  ][variant % 3]
        chosen = f"{phrase} {self._after(phrase, item['body'])}"
        return prompt, chosen, {"format": "starts_with", "prefix": phrase, "keywords": item["keywords"],
                                "max_words": self.max_words}

    def rejected(self, item, kind, chosen, rng):
        phrase = next(p for p, _ in vocab.OPENINGS if chosen.startswith(p))
        topic, body = item["topic"], item["body"]
        other_phrase = rng.choice([p for p, _ in vocab.OPENINGS if p != phrase])
        other_body = self.off_topic_body(item, rng)
        if kind == "format":
            return rng.choice([capitalize(body), f"Sure! Here is a sentence about {topic}: {capitalize(body)}",
                               f"{other_phrase} {self._after(other_phrase, body)}"])
        if kind == "verbose":
            return f"{chosen} {_MORE.format(topic=topic)}"
        return f"{phrase} {self._after(phrase, other_body)}"  # wrong: right opening, another topic

    @staticmethod
    def _after(phrase: str, body: str) -> str:
        return capitalize(body) if dict(vocab.OPENINGS)[phrase] else body


class EndsWith(_Sentence):
    name = "ends_with"
    description = "one short on-topic sentence (at most 25 words in all) that ends with a given phrase"
    n_variants = 3 * len(vocab.CLOSINGS)
    max_words = 25

    def prompt_and_answer(self, item, variant, rng):
        closing = vocab.CLOSINGS[variant // 3]
        topic = item["topic"]
        prompt = [f'Write one short sentence about {topic}. End your reply with "{closing}"',
                  f'Tell me one thing about {topic} in a single short sentence, then finish with the exact words '
                  f'"{closing}"',
                  f'In one sentence, say something about {topic}. Your reply must end with "{closing}"'][variant % 3]
        chosen = f"{capitalize(item['body'])} {closing}"
        return prompt, chosen, {"format": "ends_with", "suffix": closing, "keywords": item["keywords"],
                                "max_words": self.max_words}

    def rejected(self, item, kind, chosen, rng):
        closing = next(c for c in vocab.CLOSINGS if chosen.endswith(c))
        topic, body = item["topic"], capitalize(item["body"])
        other_closing = rng.choice([c for c in vocab.CLOSINGS if c != closing])
        other_body = capitalize(self.off_topic_body(item, rng))
        if kind == "format":
            return rng.choice([body, f"Sure! Here is a sentence about {topic}: {body}",
                               f"{body} {closing} Let me know if you want to hear more.",
                               f"{closing} {body}", f"{body} {other_closing}"])
        if kind == "verbose":
            return f"{body} {_MORE.format(topic=topic)} {closing}"
        return f"{other_body} {closing}"  # wrong: right closing, another topic
