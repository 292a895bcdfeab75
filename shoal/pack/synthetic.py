"""Seeded synthetic profiles of BERT-base-size models with mixed demands.

Used by the pack benchmark, the tests, and ``shoal pack --synthetic N --seed S`` so a
planning figure can be reproduced with one command and no traced models. The numbers
mimic what ``shoal trace`` measures on the build CPU (2 threads, sequence length 128):
100-125 M parameters, fp32 or bf16 weights, about 100 ms per fp32 forward at batch 1,
and request rates with a long tail (most models cold, a few hot).
"""

from __future__ import annotations

import numpy as np

from shoal.store.manifest import Batching, Manifest, Profile

BATCH_EFFICIENCY = {1: 1.0, 2: 0.9, 4: 0.8, 8: 0.7}  # per-sequence time relative to batch 1


def synthetic_models(n: int, seed: int = 0, rps_median: float = 0.3, rps_sigma: float = 1.2,
                     rps_max: float = 30.0) -> list[tuple[Manifest, float]]:
    """``n`` (manifest, requests/s) pairs; the same ``seed`` gives the same models."""
    rng = np.random.default_rng(seed)
    params = rng.uniform(100e6, 125e6, n)
    bf16 = rng.random(n) < 0.4
    param_bytes = params * np.where(bf16, 2, 4)
    artifact = param_bytes * rng.uniform(1.0, 1.03, n)
    resident = param_bytes * rng.uniform(1.10, 1.35, n)
    b1_ms = 100.0 * params / 110e6 * np.where(bf16, 0.45, 1.0) * rng.uniform(0.9, 1.1, n)
    rps = np.minimum(rps_max, rps_median * np.exp(rps_sigma * rng.standard_normal(n)))
    width = max(5, len(str(n - 1)))
    out = []
    for i in range(n):
        latency = {b: round(float(b1_ms[i]) * b * eff, 3) for b, eff in BATCH_EFFICIENCY.items()}
        profile = Profile(param_bytes=int(param_bytes[i]), artifact_bytes=int(artifact[i]),
                          resident_bytes=int(resident[i]), latency_ms_p50=latency, threads=2,
                          measured_on="synthetic")
        manifest = Manifest(id=f"synth-bert-{i:0{width}d}", kind="text", task="classification",
                            precision="bf16" if bf16[i] else "fp32", seq_len=128, profile=profile,
                            batching=Batching(max_batch_size=8, max_delay_ms=2.0), source="synthetic",
                            created_at="synthetic")
        out.append((manifest, round(float(rps[i]), 4)))
    return out
