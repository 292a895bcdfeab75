"""Text models (BERT family, TorchScript or Neuron): classification, embedding, extractive QA.

The graph takes (input_ids, attention_mask) int64 [B, L]; a batch is padded only to
its longest sequence unless the graph is static (Neuron), then to static_batch x seq_len.
"""

from __future__ import annotations

import importlib
import threading
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from shoal.family.keys import family_key
from shoal.family.members import FamilyMember
from shoal.graphs import BoundGraph
from shoal.artifacts import load_torchscript
from shoal.server.swapin import bind_weights
from shoal.server.errors import Unprocessable
from shoal.server.codecs.text import TextCodec
from shoal.server.handlers.base import Handler, LoadContext, StageTimes
from shoal.store.manifest import Manifest

MAX_ANSWER_TOKENS = 30
TOP_K = 20
_NEURON_MODULES = {"neuron": "torch_neuron", "neuronx": "torch_neuronx"}


CODEC = TextCodec


def create(manifest: Manifest, folder: Path, ctx: LoadContext) -> "TextHandler":
    return TextHandler(manifest, folder, ctx)


_TOKENIZERS: "weakref.WeakValueDictionary[tuple, Tokenizer]" = weakref.WeakValueDictionary()
_TOKENIZERS_LOCK = threading.Lock()


def _tokenizer(folder: Path, manifest: Manifest, seq_len: int) -> Tokenizer:
    """One tokenizer object per (file hash, settings), shared by every model using it.

    Synthesised or fine-tuned copies of one base share their tokenizer file; at ~6.6 MB
    each in memory, 24 copies would cost 150 MB for nothing. Encoding only reads it.
    """
    assert manifest.tokenizer is not None
    entry = manifest.files.get(manifest.tokenizer)
    strategy = "only_second" if manifest.task == "question-answering" else "longest_first"
    key = (entry.sha256 if entry else str(folder), seq_len, strategy, bool(manifest.static_batch))
    with _TOKENIZERS_LOCK:
        tok = _TOKENIZERS.get(key)
        if tok is None:
            tok = Tokenizer.from_file(str(folder / manifest.tokenizer))
            tok.enable_truncation(seq_len, strategy=strategy)
            padding = tok.padding or {}
            tok.enable_padding(pad_id=padding.get("pad_id", 0), pad_token=padding.get("pad_token", "[PAD]"),
                               length=seq_len if manifest.static_batch else None)
            _TOKENIZERS[key] = tok
        return tok


def _check_device(manifest: Manifest, ctx: LoadContext) -> None:
    """Refuse artifacts compiled for another processor, with the reason the registry reports."""
    if manifest.format in _NEURON_MODULES:
        if ctx.device_kind != "neuron":
            raise RuntimeError(f"artifact compiled for {manifest.processor} (Neuron); this server runs on "
                               f"{ctx.device_kind}")
        importlib.import_module(_NEURON_MODULES[manifest.format])  # registers the Neuron ops with TorchScript
    elif manifest.processor == "gpu" and ctx.device_kind != "cuda":
        raise RuntimeError(f"artifact traced for gpu; this server runs on {ctx.device_kind}")


class TextHandler(Handler):
    """Tokenise, run the graph (its own, or its family's), and turn logits into labels, vectors or spans."""

    codec_class = TextCodec

    def __init__(self, manifest: Manifest, folder: Path, ctx: LoadContext) -> None:
        super().__init__(manifest, folder, ctx)
        _check_device(manifest, ctx)
        if manifest.tokenizer is None:
            raise RuntimeError("text model has no tokenizer file in its manifest")
        self.task = manifest.task
        self.seq_len = manifest.seq_len or 512
        self.tokenizer = _tokenizer(folder, manifest, self.seq_len)
        self.member: FamilyMember | None = None
        self.family: str | None = None
        key = family_key(manifest)
        if key is not None and key in ctx.family_keys and not manifest.static_batch:
            # a member of a family served together: its own tensors beside the family's shared ones. Its own
            # graph is loaded too (once per graph in the process): a model whose artifact is bad fails, whichever
            # graph serves it
            ctx.graphs.get(manifest.files[manifest.artifact].sha256, folder / manifest.artifact, ctx.torch_device)
            self.member = ctx.families.join(manifest, folder, ctx.torch_device)
            self.family = f"{key}:{manifest.files[manifest.tokenizer].sha256[:16]}:{manifest.task}:{self.seq_len}"
            self.module: Any = None
        elif manifest.adapter is not None:
            raise RuntimeError("a LoRA adapter is served through its family graph, and this model has none "
                               "(re-trace its base)")
        elif manifest.weights:  # a shared graph bound to this model's mapped weights: the swap-in path
            self.module = bind_weights(manifest, folder, ctx)
        else:
            self.module = load_torchscript(folder / manifest.artifact, ctx.torch_device)  # never a pickle
        self.labels = manifest.labels

    def warmup(self) -> None:
        """A graph another model already ran is optimised: a new model of it needs no warm-up forward."""
        if self.member is not None:
            if not self.member.group.warm:
                super().warmup()
                self.member.group.warm = True
            return
        bound = self.module if isinstance(self.module, BoundGraph) else None
        if bound is not None and self.ctx.graphs.is_warm(bound.graph, bound.weights):
            return
        super().warmup()  # also refuses weights that do not fit the graph, before any request sees them
        if bound is not None:
            self.ctx.graphs.mark_warm(bound.graph, bound.weights)

    def close(self) -> None:
        self.module = None  # the mapped weights are unmapped with their last reference
        if self.member is not None:
            self.ctx.families.leave(self.member)
            self.member = None

    @property
    def batch_group(self) -> str | None:
        return self.family

    def run_rows(self, owners: list[Handler], inputs: list[Any], chunk: int) -> tuple[list[Any], StageTimes]:
        """One family batch: the shared forward once, each row with its member's tensors and its labels."""
        members = [o.member for o in owners]  # type: ignore[attr-defined]
        if any(m is None or m.group is not self.member.group for m in members):  # type: ignore[union-attr]
            raise RuntimeError("models of different families cannot share a batch")

        def infer(batch: Any, start: int) -> Any:
            rows = members[start:start + len(batch[2])]
            return self._forward(batch, rows)

        def postprocess(out: Any, batch: Any, part: list[Any], start: int) -> list[Any]:
            return [owners[start + i].postprocess(_row(out, i), _batch_row(batch, i), [item])[0]  # type: ignore[arg-type]
                    for i, item in enumerate(part)]

        return self._run_stages(inputs, chunk, infer, postprocess)

    # -- batch side --
    def sample_inputs(self) -> list[Any]:
        if self.task == "question-answering":
            return [("What was warmed up?", "The model was warmed up before serving.")]
        return ["The model was warmed up before serving."]

    def preprocess(self, inputs: list[Any]) -> Any:
        failures: dict[int, str] = {}
        try:
            encodings = self.tokenizer.encode_batch(inputs)
        except Exception:  # one bad input (e.g. a question longer than seq_len) must not fail its batch-mates
            encodings = []
            for i, item in enumerate(inputs):
                try:
                    encodings.append(self._encode_one(item))
                except Exception as exc:
                    failures[i] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    encodings.append(self._encode_one(self.sample_inputs()[0]))
            encodings = _pad(encodings, self.tokenizer)
        rows = self.manifest.static_batch or len(encodings)
        width = len(encodings[0].ids)
        ids = np.zeros((rows, width), dtype=np.int64)
        mask = np.zeros((rows, width), dtype=np.int64)
        for i, enc in enumerate(encodings):
            ids[i] = enc.ids
            mask[i] = enc.attention_mask
        if rows > len(encodings):  # static graph: padding rows still need one real token
            ids[len(encodings):, 0] = ids[0, 0]
            mask[len(encodings):, 0] = 1
        return torch.from_numpy(ids), torch.from_numpy(mask), encodings, failures

    def _encode_one(self, item: Any) -> Any:
        return self.tokenizer.encode(*item) if isinstance(item, tuple) else self.tokenizer.encode(item)

    def infer(self, batch: Any) -> Any:
        if self.member is not None:
            return self._forward(batch, [self.member] * batch[0].shape[0])
        ids, mask = batch[0], batch[1]
        device = self.ctx.torch_device
        with torch.inference_mode():
            out = self.module(ids.to(device), mask.to(device))
        if isinstance(out, (tuple, list)):
            return tuple(o.float().cpu().numpy() for o in out)
        return out.float().cpu().numpy()

    def _forward(self, batch: Any, members: list[FamilyMember]) -> Any:
        assert self.member is not None
        device = self.ctx.torch_device
        with torch.inference_mode():
            out = self.member.group.forward(batch[0].to(device), batch[1].to(device), members)
        if isinstance(out, (tuple, list)):
            return tuple(o.float().cpu().numpy() for o in out)
        return out.float().cpu().numpy()

    def postprocess(self, outputs: Any, batch: Any, inputs: list[Any]) -> list[Any]:
        n = len(inputs)
        results: list[Any]
        if self.task == "embedding":
            results = [{"embedding": row.tolist()} for row in outputs[:n]]
        elif self.task == "classification":
            results = _classify(outputs[:n], self.labels)
        else:
            start, end = outputs
            results = [_answer(start[i], end[i], batch[2][i], inputs[i][1]) for i in range(n)]
        for i, reason in batch[3].items():
            results[i] = Unprocessable(f"input {i} cannot be tokenized: {reason}")
        return results


def _row(outputs: Any, i: int) -> Any:
    return tuple(o[i:i + 1] for o in outputs) if isinstance(outputs, tuple) else outputs[i:i + 1]


def _batch_row(batch: Any, i: int) -> Any:
    """Row ``i`` of a preprocessed batch, as the batch of its one input (failures re-indexed)."""
    ids, mask, encodings, failures = batch
    return ids[i:i + 1], mask[i:i + 1], encodings[i:i + 1], ({0: failures[i]} if i in failures else {})


def _classify(logits: np.ndarray, labels: list[str] | None) -> list[dict[str, Any]]:
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=1, keepdims=True)
    names = labels if labels and len(labels) == logits.shape[1] else [f"LABEL_{i}" for i in range(logits.shape[1])]
    out = []
    for row in probs.tolist():
        best = max(range(len(row)), key=row.__getitem__)
        out.append({"label": names[best], "score": row[best], "scores": dict(zip(names, row))})
    return out


def _answer(start: np.ndarray, end: np.ndarray, enc: Any, context: str) -> dict[str, Any]:
    """Best span with start <= end inside the context and at most MAX_ANSWER_TOKENS tokens."""
    ctx_idx = np.array([i for i, s in enumerate(enc.sequence_ids) if s == 1], dtype=np.int64)
    if ctx_idx.size == 0:
        return {"answer": "", "score": 0.0, "start": 0, "end": 0}
    s_logits, e_logits = start[ctx_idx], end[ctx_idx]
    s_prob = np.exp(s_logits - s_logits.max())
    s_prob /= s_prob.sum()
    e_prob = np.exp(e_logits - e_logits.max())
    e_prob /= e_prob.sum()
    k = min(TOP_K, ctx_idx.size)
    best, best_score = (0, 0), -1.0
    top_end = np.argsort(-e_prob)[:k]
    for i in np.argsort(-s_prob)[:k]:
        for j in top_end:
            if i <= j < i + MAX_ANSWER_TOKENS and s_prob[i] * e_prob[j] > best_score:
                best, best_score = (int(i), int(j)), float(s_prob[i] * e_prob[j])
    char_start = enc.offsets[ctx_idx[best[0]]][0]
    char_end = enc.offsets[ctx_idx[best[1]]][1]
    return {"answer": context[char_start:char_end], "score": best_score, "start": char_start, "end": char_end}


def _pad(encodings: list[Any], tokenizer: Tokenizer) -> list[Any]:
    """Pad individually encoded inputs to a common length (what encode_batch does for a batch)."""
    padding = tokenizer.padding or {}
    length = padding.get("length") or max(len(e.ids) for e in encodings)
    for enc in encodings:
        enc.pad(length, pad_id=padding.get("pad_id", 0), pad_token=padding.get("pad_token", "[PAD]"))
    return encodings
