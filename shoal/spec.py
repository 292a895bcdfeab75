"""Model catalog entries (``models/*.yaml``): what to trace and how.

A source is one of: a model bundled in an installed package (``package:``), a local
Hugging Face folder (``path:``), a random initialisation from a config
(``config:`` = a named preset or a folder/JSON with a config, plus ``seed:``), or a PEFT
LoRA adapter folder over a catalog model already in the store (``adapter:`` + ``base:``;
the folder is relative to the YAML file, shoal/trace/adapters.py).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from shoal.ids import check_model_id
from shoal.store.manifest import Batching, Kind, Task
from shoal.yaml_models import load_yaml_model

PrecisionChoice = Literal["auto", "fp32", "bf16", "fp16", "int8", "int8-bf16", "fp32-int8emb", "bf16-int8emb"]


class Source(BaseModel):
    model_config = ConfigDict(extra="forbid")

    package: str | None = Field(None, description="importable package that bundles a HF model folder")
    path: str | None = Field(None, description="local Hugging Face model folder")
    config: str | None = Field(None, description="preset name (bert-base, bert-tiny, minilm) or a config.json path")
    seed: int = 0
    overrides: dict[str, int | float | str] = Field(default_factory=dict, description="config fields to override")
    adapter: str | None = Field(None, description="PEFT adapter folder (adapter_config.json + "
                                "adapter_model.safetensors), relative to the catalog file")
    base: str | None = Field(None, description="with adapter: id of the catalog model it adapts (traced first)")
    _catalog_dir: Path | None = PrivateAttr(None)  # the YAML file's folder: where `adapter` and `base` are found

    @model_validator(mode="after")
    def _exactly_one(self) -> "Source":
        given = [n for n in ("package", "path", "config", "adapter") if getattr(self, n)]
        if len(given) != 1:
            raise ValueError("source needs exactly one of: package, path, config, adapter")
        if self.adapter:
            if not self.base:
                raise ValueError("an adapter source needs base: the id of the catalog model it adapts")
            check_model_id(self.base)
            extra = sorted(self.model_fields_set - {"adapter", "base"})
            if extra:
                raise ValueError(f"an adapter source takes only adapter and base (not {', '.join(extra)}): "
                                 "the rest comes from the base")
        elif self.base:
            raise ValueError("base goes with adapter (source: {adapter: ./folder, base: <model id>})")
        return self

    @property
    def catalog_dir(self) -> Path:
        """Folder of the catalog file this source came from (the working directory if built in code)."""
        return self._catalog_dir or Path.cwd()

    def adapter_folder(self) -> Path:
        assert self.adapter
        return self.catalog_dir / Path(self.adapter).expanduser()

    def describe(self) -> str:
        if self.adapter:
            return f"adapter:{self.adapter} over {self.base}"
        if self.package:
            return f"package:{self.package}"
        if self.path:
            return f"path:{self.path}"
        return f"random:{self.config}:seed={self.seed}"


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    kind: Kind = "text"
    task: Task
    source: Source
    tokenizer: Source | None = Field(None, description="where the tokenizer comes from (default: the source)")
    seq_len: int = Field(128, ge=8, le=4096)
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 8])
    serving_batch_sizes: list[int] | None = Field(None, description="batch sizes `precision: auto` chooses at "
                                                  "(default: the profiled ones up to 2, what a fair multi-model "
                                                  "server runs)")
    precision: PrecisionChoice = "auto"
    labels: list[str] | None = None
    pooling: Literal["mean", "cls"] = "mean"
    batching: Batching = Field(default_factory=Batching)
    image_size: int | None = None

    @model_validator(mode="after")
    def _check(self) -> "ModelSpec":
        check_model_id(self.id)
        if self.source.adapter:
            if self.kind != "text":
                raise ValueError("adapters are served over text models (kind: text)")
            if self.source.base == self.id:
                raise ValueError("an adapter's base must be another model than itself")
            if self.tokenizer is not None:
                raise ValueError("an adapter is served with its base's tokenizer: drop `tokenizer:`")
        elif self.task == "classification" and not self.labels:
            raise ValueError("a classification model needs labels")
        if any(b < 1 for b in self.batch_sizes):
            raise ValueError("batch_sizes must be positive")
        if self.serving_batch_sizes and not set(self.serving_batch_sizes) <= set(self.batch_sizes):
            raise ValueError("serving_batch_sizes must be among batch_sizes (the precision is chosen on their profile)")
        if (self.kind == "detector") != (self.task == "detection"):
            raise ValueError("kind detector and task detection go together")
        return self

    def digest(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()

    def given(self, name: str) -> bool:
        """The catalog file set this field itself (an adapter takes the rest from its base)."""
        return name in self.model_fields_set


def trace_order(specs: list[ModelSpec]) -> list[ModelSpec]:
    """Adapters after every other model, so a base listed in the same run is traced before them."""
    return [s for s in specs if not s.source.adapter] + [s for s in specs if s.source.adapter]


def load_spec(path: Path | str) -> ModelSpec:
    """Parse one catalog YAML, with one clear error line for every kind of bad input."""
    p = Path(path)
    spec = load_yaml_model(p, ModelSpec, what="model file", shape="(id, task, source, ...)",
                           invalid="is not valid YAML")
    spec.source._catalog_dir = p.resolve().parent
    return spec
