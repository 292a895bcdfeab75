"""Which accepted precision a model is stored at: the fastest at the batch sizes the server really runs.

Why not the largest profiled batch: a multi-model server lives at batch 1-2 (40 clients over 24
models keep fewer than two requests per model queued, and the fair scheduler rarely merges more),
and the ranking can flip with the batch size (on the issue's AMX machine int8 led bf16 at batch 1
and trailed it at batch 8). So a model is chosen at its *serving* batch sizes: the catalog's
``serving_batch_sizes`` when given, else the profiled sizes up to ``FAIR_BATCH_MAX`` (the smallest
profiled size if none is that small). The profile records the sizes used.

The figure compared is the one ``precision.fastest`` uses (one compute thread's own time, which a
busy machine does not change; ``measure`` times the serving sizes on one thread), with the same
rule: a less exact precision must be faster by ``precision.CHOICE_MARGIN``.
"""

from __future__ import annotations

import math
from typing import Sequence, TypeVar

from shoal.trace.precision import CHOICE_MARGIN, Measured, speed_figure

FAIR_BATCH_MAX = 2  # the batch a fair multi-model server forms (docs/BENCHMARKS.md `## server`: mean ~1.2)
# Most exact first (precision.EXACTNESS extended with shoal/trace/quantize.py's precisions).
EXACTNESS = ("fp32", "fp32-int8emb", "fp16", "bf16", "bf16-int8emb", "int8", "int8-bf16")
# A variant that only holds fewer bytes (int8 embedding tables: the lookup dequantises a few rows) is kept
# unless it is measurably slower: within this band the difference is the profile's own noise.
SMALLER_SPEED_BAND = 0.95

M = TypeVar("M", bound=Measured)


def serving_batch_sizes(profiled: Sequence[int], declared: Sequence[int] | None = None) -> list[int]:
    """The batch sizes to choose at: ``declared`` (the spec checks they are profiled), else the small profiled ones."""
    sizes = sorted(set(profiled))
    if declared:
        return sorted(set(declared) & set(sizes)) or sizes[:1]
    small = [b for b in sizes if b <= FAIR_BATCH_MAX]
    return small or sizes[:1]


def throughput_score(candidate: Measured, batch_sizes: Sequence[int]) -> float:
    """Geometric mean of sequences per second over ``batch_sizes`` (each size counts the same, whatever its scale)."""
    rates = [b * 1000.0 / speed_figure(candidate, b) for b in batch_sizes]
    return math.exp(sum(math.log(r) for r in rates) / len(rates))


def pick(accepted: Sequence[M], batch_sizes: Sequence[int]) -> M:
    """The most exact accepted precision unless a less exact one is faster by ``CHOICE_MARGIN``."""
    ranked = sorted(accepted, key=lambda c: EXACTNESS.index(c.precision) if c.precision in EXACTNESS else 99)
    best = ranked[0]
    for c in ranked[1:]:
        if throughput_score(c, batch_sizes) * (1 - CHOICE_MARGIN) > throughput_score(best, batch_sizes):
            best = c
    return best


def prefer_smaller(chosen: Measured, smaller: Measured, batch_sizes: Sequence[int]) -> bool:
    """Whether ``smaller`` (fewer bytes, accepted by the gate) should replace ``chosen``: not slower beyond noise."""
    return throughput_score(smaller, batch_sizes) >= SMALLER_SPEED_BAND * throughput_score(chosen, batch_sizes)
