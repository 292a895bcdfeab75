"""Which precisions a processor offers, and whether a candidate's outputs agree with fp32.

This is the CPU/GPU counterpart of the Neuron compiler's automatic cast to bf16: a
lower precision is kept only if it agrees with fp32 on a probe set.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

COSINE_MIN = 0.999  # embeddings and span logits: per probe, between the candidate's and fp32's outputs
ARGMAX_AGREEMENT_MIN = 0.995  # fraction of probes with the same predicted class / span edge
PROBABILITY_DIFF_MAX = 0.01  # classification: largest change of any class probability

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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

    def verdict(self) -> str:
        state = "kept" if self.accepted else "rejected"
        first = (f"max probability change {self.max_probability_diff:.4f}" if self.max_probability_diff is not None
                 else f"min cosine {self.min_cosine:.5f}")
        return f"{state}: {first}, argmax agreement {self.argmax_agreement:.3%}"


def _as_rows(output: torch.Tensor | tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    return list(output) if isinstance(output, tuple) else [output]


def agreement(task: str, reference: torch.Tensor | tuple, candidate: torch.Tensor | tuple,
              mask: torch.Tensor | None = None) -> Agreement:
    if task == "classification":
        # Cosine of a 2-class logit vector says little; compare what users read: probabilities and the label.
        ref_p = torch.softmax(reference.float(), -1)  # type: ignore[union-attr]
        cand_p = torch.softmax(candidate.float(), -1)  # type: ignore[union-attr]
        diff = (ref_p - cand_p).abs().max().item()
        agree_rate = (ref_p.argmax(-1) == cand_p.argmax(-1)).float().mean().item()
        cos = torch.nn.functional.cosine_similarity(ref_p, cand_p, dim=-1).min().item()
        return Agreement(cos, agree_rate, diff <= PROBABILITY_DIFF_MAX and agree_rate >= ARGMAX_AGREEMENT_MIN, diff)
    cosines: list[float] = []
    agree: list[float] = []
    for ref, cand in zip(_as_rows(reference), _as_rows(candidate)):
        ref, cand = ref.float(), cand.float()
        if mask is not None and ref.dim() == 2 and ref.shape == mask.shape:
            ref = ref.masked_fill(mask == 0, -1e4)
            cand = cand.masked_fill(mask == 0, -1e4)
        cosines.append(torch.nn.functional.cosine_similarity(ref, cand, dim=-1).min().item())
        if task != "embedding":
            agree.append((ref.argmax(-1) == cand.argmax(-1)).float().mean().item())
    min_cos = min(cosines)
    agreement_rate = min(agree) if agree else 1.0
    return Agreement(min_cos, agreement_rate, min_cos >= COSINE_MIN and agreement_rate >= ARGMAX_AGREEMENT_MIN)


def max_abs_diff(a: torch.Tensor | tuple, b: torch.Tensor | tuple) -> float:
    return max((x.float() - y.float()).abs().max().item() for x, y in zip(_as_rows(a), _as_rows(b)))
