"""Which precisions a processor offers, and whether a candidate's outputs agree with fp32.

This is the CPU/GPU counterpart of the Neuron compiler's automatic cast to bf16: a
lower precision is kept only if it agrees with fp32 on a probe set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence, TypeVar

import torch

COSINE_MIN = 0.999  # embeddings and span logits: per probe, between the candidate's and fp32's outputs
ARGMAX_AGREEMENT_MIN = 0.995  # fraction of confident probes with the same predicted class / span edge
PROBABILITY_DIFF_MAX = 0.01  # classification: largest change of any class probability (the guard)
# A probe whose fp32 top-two probabilities differ by less than this is a tie: fp32 itself cannot tell the
# two answers apart, so a lower precision that flips it within the probability guard is not disagreeing.
# Half the guard, so a flip on a probe with a clear margin still counts against the candidate.
TIE_MARGIN = PROBABILITY_DIFF_MAX / 2

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
EXACTNESS = ("fp32", "fp16", "bf16")  # most exact first: more mantissa bits
# A less exact precision is chosen only when it is at least this much faster: a near tie keeps the exact one,
# and noise left in the figures cannot flip the choice.
CHOICE_MARGIN = 0.10


class Measured(Protocol):
    precision: str
    profile: dict[str, Any]


def cpu_has_fast_bf16() -> bool:
    """AVX-512-BF16 or AMX: bf16 matmuls run natively instead of being emulated."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def offered_precisions(processor: str) -> list[str]:
    if processor == "cpu":
        return ["fp32", "bf16"] if cpu_has_fast_bf16() else ["fp32"]
    if processor == "gpu":
        out = ["fp32", "fp16"]
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            out.append("bf16")
        return out
    return ["fp32"]  # inf1/inf2: the Neuron compiler casts to bf16 itself


@dataclass
class Agreement:
    min_cosine: float
    argmax_agreement: float
    accepted: bool
    max_probability_diff: float | None = None
    probes: int = 0
    ties: int = 0  # probes whose fp32 top-two margin is under TIE_MARGIN: not counted in argmax_agreement

    def verdict(self) -> str:
        state = "kept" if self.accepted else "rejected"
        first = (f"max probability change {self.max_probability_diff:.4f}" if self.max_probability_diff is not None
                 else f"min cosine {self.min_cosine:.5f}")
        if not self.probes:
            return f"{state}: {first}"
        return (f"{state}: {first}, argmax agreement {self.argmax_agreement:.3%} on {self.probes - self.ties} "
                f"confident probes ({self.ties} of {self.probes} were ties: fp32 top-two probability margin "
                f"< {TIE_MARGIN:g})")


def _as_rows(output: torch.Tensor | tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    return list(output) if isinstance(output, tuple) else [output]


def ties(probabilities: torch.Tensor) -> torch.Tensor:
    """Per probe: True where the fp32 top-two probabilities are closer than TIE_MARGIN."""
    if probabilities.shape[-1] < 2:
        return torch.zeros(probabilities.shape[:-1], dtype=torch.bool)
    top = probabilities.topk(2, dim=-1).values
    return (top[..., 0] - top[..., 1]) < TIE_MARGIN


def confident_agreement(ref_p: torch.Tensor, cand_p: torch.Tensor) -> tuple[float, torch.Tensor]:
    """(fraction of non-tie probes whose argmax is the same, the tie mask); 1.0 when every probe is a tie."""
    tie = ties(ref_p)
    same = ref_p.argmax(-1) == cand_p.argmax(-1)
    confident = ~tie
    rate = same[confident].float().mean().item() if confident.any() else 1.0
    return rate, tie


def agreement(task: str, reference: torch.Tensor | tuple, candidate: torch.Tensor | tuple,
              mask: torch.Tensor | None = None) -> Agreement:
    if task == "classification":
        # Cosine of a 2-class logit vector says little; compare what users read: probabilities and the label.
        ref_p = torch.softmax(reference.float(), -1)  # type: ignore[union-attr]
        cand_p = torch.softmax(candidate.float(), -1)  # type: ignore[union-attr]
        diff = (ref_p - cand_p).abs().max().item()
        agree_rate, tie = confident_agreement(ref_p, cand_p)
        cos = torch.nn.functional.cosine_similarity(ref_p, cand_p, dim=-1).min().item()
        return Agreement(cos, agree_rate, diff <= PROBABILITY_DIFF_MAX and agree_rate >= ARGMAX_AGREEMENT_MIN, diff,
                         probes=len(ref_p), ties=int(tie.sum().item()))
    cosines: list[float] = []
    agree: list[float] = []
    any_tie: torch.Tensor | None = None
    for ref, cand in zip(_as_rows(reference), _as_rows(candidate)):
        ref, cand = ref.float(), cand.float()
        if mask is not None and ref.dim() == 2 and ref.shape == mask.shape:
            ref = ref.masked_fill(mask == 0, -1e4)
            cand = cand.masked_fill(mask == 0, -1e4)
        cosines.append(torch.nn.functional.cosine_similarity(ref, cand, dim=-1).min().item())
        if task != "embedding":  # span edges: a tie is two positions fp32 finds equally likely
            rate, tie = confident_agreement(torch.softmax(ref, -1), torch.softmax(cand, -1))
            agree.append(rate)
            any_tie = tie if any_tie is None else any_tie | tie
    min_cos = min(cosines)
    agreement_rate = min(agree) if agree else 1.0
    probes = len(any_tie) if any_tie is not None else 0
    return Agreement(min_cos, agreement_rate, min_cos >= COSINE_MIN and agreement_rate >= ARGMAX_AGREEMENT_MIN,
                     probes=probes, ties=int(any_tie.sum().item()) if any_tie is not None else 0)


def max_abs_diff(a: torch.Tensor | tuple, b: torch.Tensor | tuple) -> float:
    return max((x.float() - y.float()).abs().max().item() for x, y in zip(_as_rows(a), _as_rows(b)))


M = TypeVar("M", bound=Measured)


def speed_figure(candidate: Measured, batch: int) -> float:
    """Milliseconds per forward at ``batch``: one compute thread's own time when measured, else the profile's."""
    one_thread = candidate.profile.get("one_thread_ms") or {}
    value = one_thread.get(batch, one_thread.get(str(batch)))
    return float(value) if value is not None else float(candidate.profile["latency_ms_p50"][batch])


def fastest(accepted: Sequence[M], batch: int) -> M:
    """The precision to keep among those that passed the accuracy gate.

    Compared on one compute thread's own time at the top batch size (``measure.one_thread_ms``):
    unlike wall time on several threads, it does not grow when a neighbour takes a core, so the
    choice is the same on a quiet and a busy machine. A less exact precision must win by
    ``CHOICE_MARGIN``.
    """
    ranked = sorted(accepted, key=lambda c: EXACTNESS.index(c.precision) if c.precision in EXACTNESS else 99)
    best = ranked[0]
    for c in ranked[1:]:
        if speed_figure(c, batch) < speed_figure(best, batch) * (1 - CHOICE_MARGIN):
            best = c
    return best
