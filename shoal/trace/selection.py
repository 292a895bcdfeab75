"""Which accepted precision a model is stored at: the fastest at the batch sizes the server really runs.

Why not the largest profiled batch: a multi-model server lives at batch 1-2 (40 clients over 24
models keep fewer than two requests per model queued, and the fair scheduler rarely merges more),
and the ranking flips with the batch size: on the dev CPU int8 leads bf16 at batch 1 and trails it
at batch 8. So a model is chosen by its measured throughput at its *serving* batch sizes: the
catalog's ``serving_batch_sizes`` when given, else the profiled sizes up to ``FAIR_BATCH_MAX``
(the smallest profiled size if none is that small). The profile records the sizes used.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, Sequence

FAIR_BATCH_MAX = 2  # the batch a fair multi-model server forms (docs/BENCHMARKS.md `## server`: mean ~1.2)
# A variant that only holds fewer bytes (int8 embedding tables: the lookup dequantises a few rows) is kept
# unless its profile is measurably slower: within this band the difference is the profile's own noise.
SMALLER_SPEED_BAND = 0.95


class Profiled(Protocol):
    precision: str
    profile: dict[str, Any]


def serving_batch_sizes(profiled: Sequence[int], declared: Sequence[int] | None = None) -> list[int]:
    """The batch sizes to choose at: ``declared`` (the spec checks they are profiled), else the small profiled ones."""
    sizes = sorted(set(profiled))
    if declared:
        return sorted(set(declared) & set(sizes)) or sizes[:1]
    small = [b for b in sizes if b <= FAIR_BATCH_MAX]
    return small or sizes[:1]


def throughput_score(profile: dict[str, Any], batch_sizes: Sequence[int]) -> float:
    """Geometric mean of sequences per second over ``batch_sizes`` (each size counts the same, whatever its scale)."""
    latency = {int(b): float(ms) for b, ms in profile["latency_ms_p50"].items()}
    rates = [b * 1000.0 / latency[b] for b in batch_sizes]
    return math.exp(sum(math.log(r) for r in rates) / len(rates))


def pick(accepted: Sequence[Profiled], batch_sizes: Sequence[int]) -> Profiled:
    """The accepted candidate with the highest throughput score (on a tie, the earlier, i.e. wider, precision)."""
    return max(accepted, key=lambda c: throughput_score(c.profile, batch_sizes))


def prefer_smaller(chosen: Profiled, smaller: Profiled, batch_sizes: Sequence[int]) -> bool:
    """Whether ``smaller`` (fewer bytes, accepted by the gate) should replace ``chosen``: not slower beyond noise."""
    return throughput_score(smaller.profile, batch_sizes) >= SMALLER_SPEED_BAND * throughput_score(chosen.profile,
                                                                                                   batch_sizes)
