"""The manifest (``shoal.json``) stored beside every model's files.

It is the contract between trace (writes it), pack (reads the profile), and the
server (reads format, task, shapes and batching, and checks every sha256).
"""

from __future__ import annotations

import hashlib
import re
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from shoal.devices import Processor
from shoal.store.digests import file_sha256
from shoal.store.dtypes import dtype_size

MANIFEST_NAME = "shoal.json"
_FILE_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*$")


def check_file_name(name: str) -> str:
    """A file name from a manifest must stay inside the model's folder: relative, no '..', no '\\'.

    Stores join these names onto local folders (fetch writes there), so a name such as
    ``../../x`` or ``/etc/x`` from a tampered manifest would read or write outside them.
    """
    if not _FILE_NAME.match(name) or ".." in name or len(name) > 255:
        raise ValueError(f"file name {name[:80]!r} is not a plain relative path inside the model folder")
    return name

# The kinds the trace stage builds (catalog entries name one). A manifest may name any other kind whose
# handler module a server has (``shoal.server.handlers.register_kind``): it names a module, so only a
# plain lowercase identifier.
Kind = Literal["text", "detector", "tensor"]
KIND_NAME = r"^[a-z][a-z0-9_]{0,31}$"
Task = Literal["embedding", "classification", "question-answering", "detection"]
ArtifactFormat = Literal["torchscript", "neuron", "neuronx"]
# int8 and *-int8emb: shoal/trace/quantize.py
Precision = Literal["fp32", "bf16", "fp16", "int8", "int8-bf16", "fp32-int8emb", "bf16-int8emb"]


class FileEntry(BaseModel):
    sha256: str
    size: int


class GateFigures(BaseModel):
    """What the accuracy gate measured for one candidate precision against fp32 (shoal/trace/precision.py)."""

    accepted: bool
    max_probability_change: float | None = Field(None, description="classification: largest class probability change")
    argmax_agreement: float | None = Field(None, description="fraction of probes with the same predicted class / span")
    min_cosine: float | None = Field(None, description="lowest cosine of any probe's output to fp32's")
    weight_bytes: int | None = Field(None, description="bytes of the candidate's weights")
    seq_per_s: dict[int, float] = Field(default_factory=dict, description="throughput by batch size the choice "
                                        "compared: one thread's own time where measured, else the profile's latency")


class Profile(BaseModel):
    """Measured on the processor the model was traced for; pack plans with these figures."""

    param_bytes: int
    artifact_bytes: int
    resident_bytes: int = Field(description="process RSS added by loading the artifact")
    latency_ms_p50: dict[int, float] = Field(description="batch size -> median ms for one forward")
    threads: int
    measured_on: str = ""
    precisions_tried: dict[str, str] = Field(default_factory=dict, description="precision -> verdict")
    unstable: str | None = Field(None, description="why the latency figures could not be measured stably (a busy "
                                 "machine); they are the best estimate, not a reproduced one. Re-trace with --force "
                                 "on a quiet machine")
    gate: dict[str, GateFigures] = Field(default_factory=dict, description="precision -> the gate's figures")
    serving_batch_sizes: list[int] = Field(default_factory=list, description="batch sizes the precision was "
                                           "chosen at (the ones the server runs; shoal/trace/selection.py)")

class TensorEntry(BaseModel):
    """One weight tensor, addressed by its content: identical tensors share one digest, so a family of
    fine-tunes stores, fetches and holds each tensor it shares with its base once (docs/ARCHITECTURE.md
    `## Model families`)."""

    sha256: str = Field(description="sha256 of the tensor's dtype, shape and bytes (shoal/store/tensors.py)")
    file: str = Field(description="the safetensors file in `files` that holds it")
    key: str | None = Field(None, description="its name inside that file, when not the tensor's own name")
    dtype: str
    shape: list[int]

    @property
    def nbytes(self) -> int:
        n = dtype_size(self.dtype)
        for d in self.shape:
            n *= d
        return n


class Adapter(BaseModel):
    """A LoRA adapter served unmerged over its base: y = W x + b + (alpha / rank) * B (A x) per target module.

    ``tensors`` then holds ``<target>.lora_A`` [rank, in] and ``<target>.lora_B`` [out, rank] for every
    target, beside the base's tensors (by digest: stored and held once for the whole family).
    """

    kind: Literal["lora"] = "lora"
    rank: int = Field(gt=0)
    alpha: float = Field(gt=0)
    targets: list[str] = Field(min_length=1, description="module names in the graph's naming, e.g. "
                               "model.bert.encoder.layer.0.attention.self.query")
    base: str = Field(description="id of the model the adapter was trained over")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class Batching(BaseModel):
    max_batch_size: int = 8
    max_delay_ms: float = 2.0


class Manifest(BaseModel):
    id: str
    kind: str = Field(pattern=KIND_NAME, description="the handler module that serves it: text, detector, or a "
                      "registered kind")
    task: Task
    format: ArtifactFormat = "torchscript"
    processor: Processor = "cpu"
    precision: Precision = "fp32"
    seq_len: int | None = None
    static_batch: int | None = Field(None, description="neuron graphs: pad every batch to this size and to seq_len")
    image_size: int | None = None
    labels: list[str] | None = None
    artifact: str = "model.pt"
    weights: str | None = Field(None, description="safetensors file of the weights the artifact takes as inputs: "
                                "set, the artifact is a graph shared by every model of its architecture; unset, "
                                "the artifact holds its weights (frozen)")
    tokenizer: str | None = "tokenizer.json"
    tensors: dict[str, TensorEntry] = Field(default_factory=dict, description="the model's weights by "
                                            "content digest, each read from a file in `files`; set, it is what "
                                            "the server loads (the graph's weights, plus an adapter's)")
    adapter: Adapter | None = None
    family_graph: str | None = Field(None, description="TorchScript graph in `files` that runs a batch "
                                     "mixing members of one family (shoal/family/graph.py)")
    files: dict[str, FileEntry] = Field(default_factory=dict)
    profile: Profile | None = None
    batching: Batching = Field(default_factory=Batching)
    source: str = ""
    base: str | None = Field(None, description="id this model was synthesised from, if any")
    spec_sha256: str = Field("", description="hash of the catalog entry that produced it (up-to-date check)")
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @field_validator("files")
    @classmethod
    def _safe_file_names(cls, files: dict[str, FileEntry]) -> dict[str, FileEntry]:
        for name in files:
            check_file_name(name)
        return files

    @field_validator("artifact", "tokenizer", "weights", "family_graph")
    @classmethod
    def _safe_name(cls, name: str | None) -> str | None:
        return None if name is None else check_file_name(name)

    @field_validator("tensors")
    @classmethod
    def _safe_tensor_files(cls, tensors: dict[str, TensorEntry]) -> dict[str, TensorEntry]:
        for t in tensors.values():
            check_file_name(t.file)
        return _interned(tensors)

    @property
    def weight_bytes(self) -> int:
        """Bytes of the model's weights: its tensors (shared ones included) when listed, else the weights
        file (0 for a frozen artifact, whose weights are inside it)."""
        if self.tensors:
            return sum(t.nbytes for t in self.tensors.values())
        entry = self.files.get(self.weights) if self.weights else None
        return entry.size if entry else 0

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files.values())


_INTERNED: dict[tuple, TensorEntry] = {}
_INTERN_LOCK = threading.Lock()
MAX_INTERNED = 1 << 20


def _interned(tensors: dict[str, TensorEntry]) -> dict[str, TensorEntry]:
    """The same entry object for the same tensor in every manifest read by this process.

    10,000 members of a family list the same ~140 shared tensors: without this, a server holding
    their manifests keeps 1.4 M identical entries (hundreds of MB); with it, one per tensor.
    """
    out: dict[str, TensorEntry] = {}
    with _INTERN_LOCK:
        if len(_INTERNED) > MAX_INTERNED:
            _INTERNED.clear()
        for name, t in tensors.items():
            key = (t.sha256, t.file, t.key, t.dtype, tuple(t.shape))
            out[sys.intern(name)] = _INTERNED.setdefault(key, t)
    return out


def describe_files(folder: Path, names: list[str]) -> dict[str, FileEntry]:
    """sha256 and size of each named file in ``folder`` (remembered per inode, so a push's check is free)."""
    return {n: FileEntry(sha256=file_sha256(folder / n), size=(folder / n).stat().st_size) for n in names}
