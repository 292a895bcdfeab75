"""Deterministic English-like sentences for probes, profiles and load tests (no downloads)."""

from __future__ import annotations

import random

_SUBJECTS = ["the customer", "our team", "a small startup", "the new model", "my neighbour", "the service",
             "this product", "the support agent", "the delivery driver", "every user", "the manager", "a reviewer"]
_VERBS = ["recommended", "returned", "praised", "criticised", "ordered", "described", "compared", "tested",
          "ignored", "repaired", "reviewed", "cancelled", "explained", "shipped", "liked", "disliked"]
_OBJECTS = ["the blue running shoes", "a refurbished laptop", "the annual subscription", "an espresso machine",
            "the hotel room near the station", "a pair of noise cancelling headphones", "the garden furniture",
            "a children's book about dinosaurs", "the quarterly report", "an electric bicycle", "the kitchen knives"]
_TAILS = ["because the quality was far better than expected", "after waiting almost three weeks for delivery",
          "although the price seemed a little high at first", "and wrote a long message to the company about it",
          "while travelling across the country last summer", "since nothing else on the market came close",
          "even though the instructions were confusing and incomplete", "before the end of the month",
          "with help from a friend who knows a lot about these things", "and would happily do so again"]


def sentence(rng: random.Random, min_words: int = 25, max_words: int = 35) -> str:
    """One sentence of roughly ``min_words``..``max_words`` words."""
    words: list[str] = []
    target = rng.randint(min_words, max_words)
    while len(words) < target:
        clause = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TAILS)}"
        words.extend(clause.split())
    text = " ".join(words[:target])
    return text[0].upper() + text[1:] + "."


def sentences(n: int, seed: int = 0, min_words: int = 25, max_words: int = 35) -> list[str]:
    rng = random.Random(seed)
    return [sentence(rng, min_words, max_words) for _ in range(n)]


def qa_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """(question, context) pairs whose context is a few sentences."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        context = " ".join(sentence(rng, 15, 25) for _ in range(3))
        out.append((f"What did {rng.choice(_SUBJECTS)} {rng.choice(_VERBS)[:-1]}?", context))
    return out
