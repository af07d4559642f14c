"""Families whose answer has a shape to follow: bullet lists and JSON objects."""

from __future__ import annotations

import json

from . import vocab
from .base import Family, capitalize

NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}


class Bullets(Family):
    name = "bullets"
    description = "exactly N items of a category as a bulleted list, nothing else"
    n_variants = 9  # 3 phrasings x N in (2, 3, 4)
    rejected_kinds = {"verbose": 0.3, "wrong": 0.35, "format": 0.35}

    def make_items(self):
        return [{"group": cat, "category": cat, "words": words} for cat, words in vocab.BULLET_CATEGORIES.items()]

    def prompt_and_answer(self, item, variant, rng):
        cat, n = item["category"], 2 + variant // 3
        nw = NUMBER_WORDS[n]
        prompt = [f"List exactly {n} {cat} as bullet points. Write nothing else.",
                  f"Name {nw} {cat}. Use a bulleted list with exactly {nw} items and no other text.",
                  f"Give me exactly {nw} {cat}, one per bullet point, with no introduction."][variant % 3]
        chosen = "\n".join("- " + w for w in rng.sample(item["words"], n))
        return prompt, chosen, {"format": "bullets", "n": n, "max_words": 4}

    def rejected(self, item, kind, chosen, rng):
        cat = item["category"]
        picked = [line[2:] for line in chosen.splitlines()]
        n = len(picked)
        if kind == "verbose":
            return rng.choice([f"Here are {NUMBER_WORDS[n]} {cat}:\n{chosen}", f"Sure! Here is the list:\n{chosen}",
                               f"{chosen}\nThese are some well-known {cat}."])
        if kind == "format":
            if rng.random() < 0.6:
                return "\n".join(f"{i}. {capitalize(w)}" for i, w in enumerate(picked, 1))
            return f"{', '.join(picked[:-1])} and {picked[-1]}."
        # wrong: the shape is right but the list is not: one item too many or too few, or a repeat
        rest = [w for w in item["words"] if w not in picked]
        how = rng.choice(["more", "fewer", "repeat"] if n > 2 else ["more", "repeat"])
        if how == "more":
            items = picked + [rng.choice(rest)]
        elif how == "fewer":
            items = picked[:-1]
        else:
            items = picked[:-1] + [picked[0]]
        return "\n".join("- " + w for w in items)


class JsonObject(Family):
    name = "json"
    description = "a JSON object with the given keys and values, and no other text"
    n_variants = 2
    rejected_kinds = {"verbose": 0.3, "wrong": 0.35, "format": 0.35}

    def make_items(self):
        items = [{"group": f"person:{p}", "schema": "person", "name": p} for p in vocab.PEOPLE]
        items += [{"group": f"city:{c}", "schema": "city", "city": c, "country": k} for c, k in vocab.CITY_COUNTRY]
        items += [{"group": f"item:{p}", "schema": "product", "item": p} for p in vocab.PRODUCTS]
        return items

    def prompt_and_answer(self, item, variant, rng):
        schema = item["schema"]
        if schema == "person":
            name, age = item["name"], rng.randint(18, 79)
            values = {"name": name, "age": age}
            prompt = [f'Return a JSON object with the keys "name" and "age" for {name}, who is {age} years old. '
                      "Output only the JSON.",
                      f'{name} is {age} years old. Write this as JSON with the keys "name" and "age", and nothing else.'
                      ][variant]
        elif schema == "city":
            city, country = item["city"], item["country"]
            values = {"city": city, "country": country}
            prompt = [f'Return a JSON object with the keys "city" and "country" for {city}, which is in {country}. '
                      "Output only the JSON.",
                      f'Write JSON with the keys "city" and "country" for the city of {city} in {country}. '
                      "Reply with the JSON only."][variant]
        else:
            thing, price = item["item"], rng.randint(3, 99)
            values = {"item": thing, "price": price}
            prompt = [f'Return a JSON object with the keys "item" and "price" for a {thing} that costs {price} dollars. '
                      "Output only the JSON.",
                      f'A {thing} costs {price} dollars. Give this as a JSON object with the keys "item" and "price" '
                      "and no other text."][variant]
        return prompt, json.dumps(values), {"format": "json", "values": values}

    def rejected(self, item, kind, chosen, rng):
        values = json.loads(chosen)
        k1, k2 = list(values)
        v1, v2 = values[k1], values[k2]
        if kind == "verbose":
            return rng.choice([f"Here is the JSON object:\n{chosen}", f"Sure! {chosen}",
                               f"{chosen}\nThis object stores the {k1} and the {k2}."])
        if kind == "format":
            prose = {"person": f"{v1} is {v2} years old.", "city": f"{v1} is a city in {v2}.",
                     "product": f"The {v1} costs {v2} dollars."}[item["schema"]]
            fenced = f"```json\n{json.dumps(values, indent=2)}\n```"
            return rng.choice([prose, f"json_data = {chosen}", repr(values), fenced, fenced])
        # wrong: valid JSON, but a value is wrong, a key is missing, or a key is misnamed
        how = rng.choice(["value", "missing", "key"])
        if how == "missing":
            return json.dumps({k1: v1})
        if how == "key":
            return json.dumps({capitalize(k1): v1, k2: v2})
        if isinstance(v2, int):
            wrong = v2 + rng.choice([-10, -2, -1, 1, 2, 10])
        else:
            wrong = rng.choice(sorted({k for _, k in vocab.CITY_COUNTRY} - {v2}))
        return json.dumps({k1: v1, k2: wrong})
