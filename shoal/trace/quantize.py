"""int8 precisions as plain tensors, so a quantised model is a shared graph plus a weights file like any other.

Why not a library's quantised modules: the server swaps a model in by binding the tensors of its
``weights.safetensors`` to its architecture's shared graph (``shoal/graphs.py``), so every weight
must be a plain tensor input of a TorchScript graph. ``torch.ao``'s packed params are baked into a
frozen module (and deprecated); torchao's int8 tensor subclasses do not trace to TorchScript (its
dynamic-activation config fails inside the tracer, its weight-only config traces to fp32 weights:
docs/BENCHMARKS.md ``## precision``). So the weights are stored as int8 tensors with per-row scales
and the graph calls the aten kernels torchao itself uses on CPU: ``torch._int_mm`` (int8 x int8 ->
int32) for dynamically quantised activations, ``aten._weight_int8pack_mm`` for weight-only.

Precisions (the names a manifest records):
  int8       Linear layers: int8 weights per output channel x int8 activations per token (dynamic);
             word/position embeddings int8 per row; the rest (LayerNorm, attention, head) fp32.
  int8-bf16  the same with the rest in bf16.
  fp32-int8emb, bf16-int8emb
             only the embedding tables int8 (per row), everything else at fp32 / bf16: for a model
             whose matmuls the gate keeps in float, its largest tensors still shrink (tried after
             the float precision is chosen, see ``embedding_variant``).
Weight-only int8 (``WEIGHT_ONLY``: bf16 activations, ``aten._weight_int8pack_mm``) is measured by
``benchmarks/precision_int8.py`` but not offered: in torch 2.13 that kernel crashes (SIGSEGV) on an
int8 weight memory-mapped from a safetensors file at an unaligned offset (the same tensor copied to
fresh memory works), and it is slower than plain bf16 on the dev CPU anyway.
Heads (classifier, QA outputs, pooler) keep the float weights: they are small, they set the
probabilities directly, and ``shoal models synth`` re-initialises them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

INT8_MAX = 127
HEAD_MARKERS = ("classifier", "qa_outputs", "pooler")  # the same modules `shoal models synth` treats as heads


@dataclass(frozen=True)
class Scheme:
    float_dtype: torch.dtype  # what every unquantised part runs in
    linear: Literal["dynamic", "weight-only", "float"]


SCHEMES: dict[str, Scheme] = {
    "int8": Scheme(torch.float32, "dynamic"),
    "int8-bf16": Scheme(torch.bfloat16, "dynamic"),
    "fp32-int8emb": Scheme(torch.float32, "float"),
    "bf16-int8emb": Scheme(torch.bfloat16, "float"),
}
WEIGHT_ONLY = Scheme(torch.bfloat16, "weight-only")  # benchmark only, see above
FLOAT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def offered(processor: str, fast_bf16: bool) -> list[str]:
    """int8 candidates for ``precision: auto`` on this processor (the gate and the profile then decide).

    CPU only: on a GPU ``torch._int_mm`` needs more than 16 rows (batch 1 of a short text has
    fewer), and no GPU was there to measure it. int8-bf16 needs native bf16 (AVX-512-BF16 or AMX).
    """
    if processor != "cpu":
        return []
    return ["int8", "int8-bf16"] if fast_bf16 else ["int8"]


def embedding_variant(precision: str, processor: str) -> str | None:
    """The precision that keeps ``precision``'s compute but holds the embedding tables in int8, if any."""
    variant = f"{precision}-int8emb"
    return variant if processor == "cpu" and variant in SCHEMES else None


def symmetric_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 rows and the float32 scale of each (absmax / 127): what torchao's per-row int8 weights hold."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / INT8_MAX
    q = torch.round(w / scale[:, None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale


def _frozen(t: torch.Tensor) -> nn.Parameter:
    # Parameters (not buffers), so the graph tracer takes them as weight inputs like any float weight;
    # a copy, so the quantised model never shares a tensor with the fp32 model it came from.
    return nn.Parameter(t.detach().clone().contiguous(), requires_grad=False)


class DynamicInt8Linear(nn.Module):
    """y = (int8(x) @ W_int8^T) * s_x * s_w + b, with s_x the absmax of each token's row (computed per call)."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype) -> None:
        super().__init__()
        q, scale = symmetric_rows(linear.weight)
        self.weight = _frozen(q)
        self.weight_scale = _frozen(scale)  # float32: the int32 accumulators are rescaled in float32
        self.bias = _frozen(linear.bias.detach().to(dtype)) if linear.bias is not None else None
        self.out_features = linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1]).float()
        x_scale = rows.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / INT8_MAX
        q = torch.round(rows / x_scale).to(torch.int8)  # |rows| <= absmax, so no clamp is needed
        y = (torch._int_mm(q, self.weight.t()).float() * (x_scale * self.weight_scale)).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(x.shape[:-1] + (self.out_features,))


class WeightOnlyInt8Linear(nn.Module):
    """y = x @ (W_int8 * s_w)^T + b in bf16, dequantised inside the kernel (``aten._weight_int8pack_mm``)."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype) -> None:
        super().__init__()
        q, scale = symmetric_rows(linear.weight)
        self.weight = _frozen(q)
        self.weight_scale = _frozen(scale.to(dtype))
        self.bias = _frozen(linear.bias.detach().to(dtype)) if linear.bias is not None else None
        self.out_features = linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        y = torch.ops.aten._weight_int8pack_mm(rows, self.weight, self.weight_scale)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(x.shape[:-1] + (self.out_features,))


class Int8Embedding(nn.Module):
    """An embedding table held as int8 rows plus a scale per row: only the looked-up rows are dequantised."""

    def __init__(self, embedding: nn.Embedding, dtype: torch.dtype) -> None:
        super().__init__()
        q, scale = symmetric_rows(embedding.weight)
        self.weight = _frozen(q)
        self.weight_scale = _frozen(scale.to(dtype)[:, None])
        self.dtype = dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = nn.functional.embedding(ids, self.weight).to(self.dtype)
        return rows * nn.functional.embedding(ids, self.weight_scale)


def _is_head(name: str) -> bool:
    return any(marker in name for marker in HEAD_MARKERS)


def quantize_model(model: nn.Module, scheme: Scheme) -> nn.Module:
    """A copy of ``model`` (fp32, eval) under ``scheme``: cast to its float dtype, then the Linear
    layers and embedding tables outside the heads replaced by their int8 counterparts."""
    out = copy.deepcopy(model).to(dtype=scheme.float_dtype)
    linear_cls = {"dynamic": DynamicInt8Linear, "weight-only": WeightOnlyInt8Linear}.get(scheme.linear)
    replacements: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():  # quantised from the fp32 weights, not from their cast
        if _is_head(name):
            continue
        if isinstance(module, nn.Linear) and linear_cls is not None:
            replacements.append((name, linear_cls(module, scheme.float_dtype)))
        elif isinstance(module, nn.Embedding) and module.weight.shape[0] > 2:  # token types (2 rows) stay float
            replacements.append((name, Int8Embedding(module, scheme.float_dtype)))
    for name, replacement in replacements:
        parent_name, _, child = name.rpartition(".")
        setattr(out.get_submodule(parent_name) if parent_name else out, child, replacement)
    return out.eval()


def model_at_precision(model: nn.Module, precision: str, device: str) -> nn.Module:
    """The eager model a candidate traces: a float cast, or the int8 model of :func:`quantize_model`."""
    if precision in SCHEMES:
        return quantize_model(model, SCHEMES[precision]).to(device=device)
    return copy.deepcopy(model).to(device=device, dtype=FLOAT_DTYPES[precision])


def parameter_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())

