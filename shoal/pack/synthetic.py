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


# all-MiniLM-L6-v2's tensors (name -> shape): 22.7 M parameters, ~45 MB in bf16.
MINILM_HIDDEN, MINILM_FFN, MINILM_LAYERS, MINILM_VOCAB = 384, 1536, 6, 30522


def minilm_tensors() -> dict[str, list[int]]:
    h, ffn, p = MINILM_HIDDEN, MINILM_FFN, "model.bert."
    out = {f"{p}embeddings.word_embeddings.weight": [MINILM_VOCAB, h],
           f"{p}embeddings.position_embeddings.weight": [512, h],
           f"{p}embeddings.token_type_embeddings.weight": [2, h],
           f"{p}embeddings.LayerNorm.weight": [h], f"{p}embeddings.LayerNorm.bias": [h]}
    for i in range(MINILM_LAYERS):
        layer = f"{p}encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            out[f"{layer}{name}.weight"], out[f"{layer}{name}.bias"] = [h, h], [h]
        out[f"{layer}intermediate.dense.weight"], out[f"{layer}intermediate.dense.bias"] = [ffn, h], [ffn]
        out[f"{layer}output.dense.weight"], out[f"{layer}output.dense.bias"] = [h, ffn], [h]
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            out[f"{layer}{norm}.weight"], out[f"{layer}{norm}.bias"] = [h], [h]
    out[f"{p}pooler.dense.weight"], out[f"{p}pooler.dense.bias"] = [h, h], [h]
    out["model.classifier.weight"], out["model.classifier.bias"] = [2, h], [2]
    return out


def synthetic_family(n: int, seed: int = 0, rps_median: float = 0.3, rps_sigma: float = 1.2,
                     rps_max: float = 30.0, lora_share: float = 0.5) -> list[tuple[Manifest, float]]:
    """``n`` members of one bf16 MiniLM family: the base's matrices shared, own vectors and head each,
    and (for ``lora_share`` of them) rank-8 LoRA factors on every layer's query and value.

    Latency is what ``shoal trace`` measures for bf16 MiniLM on the build CPU (2 threads, 128
    tokens: ~170 seq/s at batch 1, ~330 at batch 8); request rates have the same long tail as
    :func:`synthetic_models`. Digests are made up, equal exactly where the family shares a tensor.
    """
    import hashlib

    from shoal.store.manifest import FileEntry, TensorEntry

    rng = np.random.default_rng(seed)
    rps = np.minimum(rps_max, rps_median * np.exp(rps_sigma * rng.standard_normal(n)))
    lora = rng.random(n) < lora_share
    shapes = minilm_tensors()
    graph = FileEntry(sha256=hashlib.sha256(b"synthetic minilm family graph").hexdigest(), size=1 << 20)
    shared = {name: TensorEntry(sha256=hashlib.sha256(f"base:{name}".encode()).hexdigest(), file="base.safetensors",
                                dtype="BF16", shape=shape) for name, shape in shapes.items()}
    from shoal.family.keys import is_own

    own_names = [name for name, t in shared.items() if is_own(name, t)]
    base_bytes = sum(t.nbytes for t in shared.values())
    lora_bytes = MINILM_LAYERS * 2 * 2 * (8 * MINILM_HIDDEN) * 2  # layers x (query, value) x (A, B) x bf16
    width = max(5, len(str(n - 1)))
    out = []
    for i in range(n):
        tensors = dict(shared)
        for name in own_names:
            tensors[name] = TensorEntry.model_construct(sha256=hashlib.sha256(f"{i}:{name}".encode()).hexdigest(),
                                                        file="own.safetensors", key=None, dtype="BF16",
                                                        shape=shared[name].shape)
        if lora[i]:
            for layer in range(MINILM_LAYERS):
                for target in ("query", "value"):
                    stem = f"model.bert.encoder.layer.{layer}.attention.self.{target}"
                    for suffix, shape in ((".lora_A", [8, MINILM_HIDDEN]), (".lora_B", [MINILM_HIDDEN, 8])):
                        tensors[stem + suffix] = TensorEntry.model_construct(
                            sha256=hashlib.sha256(f"{i}:{stem}{suffix}".encode()).hexdigest(),
                            file="own.safetensors", key=None, dtype="BF16", shape=shape)
        weight_bytes = base_bytes + (lora_bytes if lora[i] else 0)
        latency = {1: 5.9, 2: 9.5, 4: 15.0, 8: 24.2}
        profile = Profile(param_bytes=weight_bytes, artifact_bytes=weight_bytes, resident_bytes=int(weight_bytes * 1.2),
                          latency_ms_p50=latency, threads=2, measured_on="synthetic")
        # built without validation: the fields are ours, and the shared entries are already one object each
        manifest = Manifest.model_construct(
            id=f"synth-minilm-{i:0{width}d}", kind="text", task="classification", precision="bf16", seq_len=128,
            profile=profile, batching=Batching(max_batch_size=8, max_delay_ms=2.0), tensors=tensors,
            family_graph="family.pt", files={"family.pt": graph}, source="synthetic", created_at="synthetic")
        out.append((manifest, round(float(rps[i]), 4)))
    return out
