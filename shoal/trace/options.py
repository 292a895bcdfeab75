"""What a trace run is asked for (``TraceOptions``) and the key that says when an artifact is stale.

Apart from ``stage.py`` so that per-kind tracers (``detector.py``, ``adapters.py``) can take the
options without importing the stage that dispatches to them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from shoal import cache_dirs
from shoal.spec import ModelSpec

Log = Callable[[str], None]
ARTIFACT_FORM = 3  # 3: + family graph; 2: shared graph + weights file; 1: frozen model.pt (a change re-traces)


@dataclass
class TraceOptions:
    """What to trace for and how; ``trace_key`` covers the fields that shape the artifact."""

    processor: str = "cpu"
    precision: str | None = None  # None: the spec's (default auto)
    batch_sizes: list[int] | None = None
    seq_len: int | None = None
    pipeline_cores: int = 1
    threads: int | None = None
    isolated_profile: bool = True  # measure in a fresh process (accurate memory); False for quick tests
    force: bool = False
    build_dir: Path = field(default_factory=cache_dirs.build_dir)  # SHOAL_CACHE_DIR/trace_build
    log: Log = field(default=lambda msg: None)


def trace_key(spec: ModelSpec, opts: TraceOptions) -> str:
    """Changes whenever the catalog entry or an option that shapes the artifact changes."""
    key = {"spec": spec.model_dump(mode="json"), "processor": opts.processor, "precision": opts.precision,
           "batch_sizes": opts.batch_sizes, "seq_len": opts.seq_len, "pipeline_cores": opts.pipeline_cores,
           "torch": torch.__version__, "artifact_form": ARTIFACT_FORM}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
