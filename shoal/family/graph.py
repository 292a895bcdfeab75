"""The family graph: one TorchScript forward for a batch whose rows belong to different members of a family.

Why: members of a family share their large tensors (the embedding tables and the encoder's
matrices), so a batch that mixes members can run those matrices once for every row, the way a
batch of one model does. What differs per member is small and is applied per row:
  - its vectors (every bias and LayerNorm scale/shift), one flat [D] tensor per member, gathered
    once per batch to [B, D] and sliced by each layer;
  - its head (pooler, classifier, QA outputs): a batched matmul with each row's own matrix;
  - its LoRA update on the slot modules: x A_row B_row added to the shared product (unmerged),
    with rank 0 for members without an adapter on that module.

``forward(input_ids, attention_mask, rows, shared, vectors, heads, lora_a, lora_b)``:
  rows     int64 [B]: index of each row's member in the stacked tensors below
  shared   the family's shared tensors, in the order of the extra file ``family.json``
  vectors  [M, D]: each member's flat vectors (layout in ``family.json``)
  heads    [M, *shape] per head tensor
  lora_a   [M, in, R] per slot; lora_b [M, R, out] per slot (alpha / rank folded into B)

On a GPU the same layout maps to grouped GEMMs (one per LoRA slot, segmented by member, as
Punica's and S-LoRA's kernels do) and a gather of the vectors; the CPU path uses bmm.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shoal.family.keys import is_head

FAMILY_FILE = "family.pt"
_ZEROS: dict[tuple, torch.Tensor] = {}  # zero LoRA factors by (shape, dtype): members without an adapter share them
LAYOUT_FILE = "family.json"
DEFAULT_SLOTS = ("attention.self.query", "attention.self.key", "attention.self.value")


@dataclass
class Layout:
    """How a member's own tensors enter the graph (saved with it, so the server can pack members)."""

    shared: list[str] = field(default_factory=list)
    vectors: list[tuple[str, int, int]] = field(default_factory=list)  # (name, offset, length) in the flat vector
    heads: list[str] = field(default_factory=list)
    slots: list[str] = field(default_factory=list)  # module names with a LoRA slot
    slot_dims: list[tuple[int, int]] = field(default_factory=list)  # (in, out) per slot
    dtype: str = "float32"  # of vectors, heads and LoRA

    @property
    def width(self) -> int:
        return sum(n for _, _, n in self.vectors)

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> "Layout":
        data = json.loads(text)
        data["vectors"] = [tuple(v) for v in data["vectors"]]
        data["slot_dims"] = [tuple(v) for v in data["slot_dims"]]
        return cls(**data)


class _Rows:
    """What one forward's row-wise tensors are; the patched modules read it (tracing records the ops)."""

    vectors: torch.Tensor
    heads: list[torch.Tensor]
    lora_a: list[torch.Tensor]
    lora_b: list[torch.Tensor]


class _RowLinear(nn.Module):
    """The shared product (float or int8), then this row's bias and LoRA update."""

    def __init__(self, inner: nn.Module, rows: _Rows, bias: tuple[int, int] | None, slot: int | None) -> None:
        super().__init__()
        self.inner = inner
        self.rows = rows
        self.bias = bias
        self.slot = slot

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x)
        if self.slot is not None:
            a = self.rows.lora_a[self.slot]
            b = self.rows.lora_b[self.slot]
            flat = x.reshape(x.shape[0], -1, x.shape[-1])
            y = y + torch.bmm(torch.bmm(flat.to(a.dtype), a), b).reshape(y.shape).to(y.dtype)
        if self.bias is not None:
            start, n = self.bias
            bias = self.rows.vectors.narrow(1, start, n)
            y = y + (bias.unsqueeze(1) if y.dim() == 3 else bias).to(y.dtype)
        return y


class _RowHeadLinear(nn.Module):
    """A head layer with each row's own weight [out, in] and bias."""

    def __init__(self, rows: _Rows, weight: int, bias: int | None) -> None:
        super().__init__()
        self.rows = rows
        self.weight = weight
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.rows.heads[self.weight]
        x3 = x if x.dim() == 3 else x.unsqueeze(1)
        y = torch.bmm(x3.to(w.dtype), w.transpose(1, 2))
        if self.bias is not None:
            y = y + self.rows.heads[self.bias].unsqueeze(1)
        return y if x.dim() == 3 else y.squeeze(1)


class _RowLayerNorm(nn.Module):
    def __init__(self, norm: nn.LayerNorm, rows: _Rows, weight: tuple[int, int], bias: tuple[int, int]) -> None:
        super().__init__()
        self.shape = tuple(norm.normalized_shape)
        self.eps = norm.eps
        self.rows = rows
        self.weight = weight
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.layer_norm(x, self.shape, None, None, self.eps)
        w = self.rows.vectors.narrow(1, *self.weight)
        b = self.rows.vectors.narrow(1, *self.bias)
        if y.dim() == 3:
            w, b = w.unsqueeze(1), b.unsqueeze(1)
        return y * w.to(y.dtype) + b.to(y.dtype)


class _FamilyForward(nn.Module):
    def __init__(self, inner: nn.Module, rows: _Rows, shared: list[str]) -> None:
        super().__init__()
        self.inner = inner
        self.rows = rows
        self.shared = shared

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor,
                shared: list[torch.Tensor], vectors: torch.Tensor, heads: list[torch.Tensor],
                lora_a: list[torch.Tensor], lora_b: list[torch.Tensor]) -> Any:
        from torch.nn.utils.stateless import _reparametrize_module  # what torch.func.functional_call uses

        self.rows.vectors = vectors.index_select(0, rows)
        self.rows.heads = [h.index_select(0, rows) for h in heads]
        self.rows.lora_a = [a.index_select(0, rows) for a in lora_a]
        self.rows.lora_b = [b.index_select(0, rows) for b in lora_b]
        with _reparametrize_module(self.inner, dict(zip(self.shared, shared))):
            return self.inner(input_ids, attention_mask)


def _is_linear(module: nn.Module) -> bool:
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    return (isinstance(weight, torch.Tensor) and weight.dim() == 2 and not isinstance(module, nn.Embedding)
            and "Embedding" not in type(module).__name__ and (bias is None or bias.dim() == 1))


def build(wrapper: nn.Module, slots: tuple[str, ...] = DEFAULT_SLOTS) -> tuple[nn.Module, Layout]:
    """A copy of ``wrapper`` whose own tensors come per row; returns it and its layout.

    ``slots``: suffixes of the module names that get a LoRA slot (by default every layer's query,
    key and value projections, PEFT's usual targets for BERT).
    """
    model = copy.deepcopy(wrapper).eval()
    rows = _Rows()
    layout = Layout()
    own: set[str] = set()
    offset = 0
    dtypes: set[torch.dtype] = set()

    def vector(name: str, t: torch.Tensor) -> tuple[int, int]:
        nonlocal offset
        layout.vectors.append((name, offset, t.numel()))
        own.add(name)
        dtypes.add(t.dtype)
        offset += t.numel()
        return offset - t.numel(), t.numel()

    replacements: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if not name:
            continue
        if is_head(name) and isinstance(module, nn.Linear):
            layout.heads.append(f"{name}.weight")
            own.add(f"{name}.weight")
            bias_index = None
            if module.bias is not None:
                layout.heads.append(f"{name}.bias")
                own.add(f"{name}.bias")
                bias_index = len(layout.heads) - 1
            replacements.append((name, _RowHeadLinear(rows, layout.heads.index(f"{name}.weight"), bias_index)))
        elif isinstance(module, nn.LayerNorm):
            assert module.weight is not None and module.bias is not None
            w = vector(f"{name}.weight", module.weight)
            b = vector(f"{name}.bias", module.bias)
            replacements.append((name, _RowLayerNorm(module, rows, w, b)))
        elif _is_linear(module) and not is_head(name):
            bias = vector(f"{name}.bias", module.bias) if module.bias is not None else None  # type: ignore[arg-type]
            module.bias = None  # the shared product only; the row's bias is added after
            slot = None
            if name.endswith(slots):
                slot = len(layout.slots)
                layout.slots.append(name)
                out_features, in_features = module.weight.shape
                layout.slot_dims.append((int(in_features), int(out_features)))
            replacements.append((name, _RowLinear(module, rows, bias, slot)))
    for name, replacement in replacements:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, replacement)
    if len(dtypes) > 1:
        raise ValueError(f"a member's vectors must share one dtype, found {sorted(map(str, dtypes))}")
    layout.dtype = str(next(iter(dtypes))).removeprefix("torch.") if dtypes else "float32"
    internal = [n for n, _ in model.named_parameters()]  # a patched Linear holds its product as `.inner`
    layout.shared = [n.replace(".inner.", ".") for n in internal]
    assert not own & set(layout.shared), "a tensor cannot be both shared and a member's own"
    return _FamilyForward(model, rows, internal), layout


def member_tensors(layout: Layout, tensors: dict[str, torch.Tensor], lora: dict[str, tuple[torch.Tensor,
                   torch.Tensor]] | None = None, *, vectors: torch.Tensor | None = None,
                   heads: list[torch.Tensor] | None = None) -> "MemberTensors":
    """One member's own tensors in the graph's layout (copies: they outlive the files they came from).

    ``tensors``: the member's tensors by graph name (its own and, where it has none, the base's),
    unless ``vectors`` (the flat [D] tensor) and ``heads`` are given ready;
    ``lora``: slot module name -> (A [rank, in], B [out, rank] with alpha / rank folded in).
    """
    dtype = getattr(torch, layout.dtype)
    if vectors is None:
        vectors = torch.empty(layout.width, dtype=dtype)
        for name, start, n in layout.vectors:
            vectors[start:start + n] = tensors[name].reshape(-1).to(dtype)
    if heads is None:
        heads = [tensors[name] for name in layout.heads]
    a_list, b_list = [], []
    for slot, (d_in, d_out) in zip(layout.slots, layout.slot_dims):
        pair = (lora or {}).get(slot)
        if pair is None:
            a_list.append(_zeros((d_in, 0), dtype))
            b_list.append(_zeros((0, d_out), dtype))
        else:
            a, b = pair
            a_list.append(a.t().contiguous().to(dtype))  # [in, rank]
            b_list.append(b.t().contiguous().to(dtype))  # [rank, out]
    return MemberTensors(vectors, heads, a_list, b_list)


def _zeros(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    key = (shape, dtype)
    zeros = _ZEROS.get(key)
    return zeros if zeros is not None else _ZEROS.setdefault(key, torch.zeros(shape, dtype=dtype))


@dataclass
class MemberTensors:
    vectors: torch.Tensor
    heads: list[torch.Tensor]
    lora_a: list[torch.Tensor]  # [in, rank] per slot (rank 0: no update)
    lora_b: list[torch.Tensor]  # [rank, out] per slot

    @property
    def nbytes(self) -> int:
        parts = [self.vectors, *self.heads, *self.lora_a, *self.lora_b]
        return sum(t.numel() * t.element_size() for t in parts)


def stack(members: list[MemberTensors]) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor],
                                                  list[torch.Tensor]]:
    """The graph's per-member inputs for the distinct members of one batch (LoRA padded to the largest rank)."""
    vectors = torch.stack([m.vectors for m in members])
    heads = [torch.stack([m.heads[i] for m in members]) for i in range(len(members[0].heads))]
    lora_a = [_stack_padded([m.lora_a[i] for m in members], dim=1) for i in range(len(members[0].lora_a))]
    lora_b = [_stack_padded([m.lora_b[i] for m in members], dim=0) for i in range(len(members[0].lora_b))]
    return vectors, heads, lora_a, lora_b


def _stack_padded(parts: list[torch.Tensor], dim: int) -> torch.Tensor:
    """Stack LoRA factors whose rank (``dim``) differs by padding with zeros (a zero rank adds nothing).

    Members without an adapter on the slot have rank 0; their padding is one cached zero tensor,
    so the common batch (all ranks equal, or some zero) is a single stack.
    """
    rank = max(p.shape[dim] for p in parts)
    if all(p.shape[dim] == rank for p in parts):
        return torch.stack(parts)
    padded = []
    for p in parts:
        if p.shape[dim] == rank:
            padded.append(p)
            continue
        shape = list(p.shape)
        shape[dim] = rank
        if p.shape[dim] == 0:
            padded.append(_zeros(tuple(shape), p.dtype))
        else:
            padded.append(torch.cat([p, p.new_zeros([rank - p.shape[dim] if d == dim else n
                                                     for d, n in enumerate(p.shape)])], dim=dim))
    return torch.stack(padded)


def trace(wrapper: nn.Module, example: tuple[torch.Tensor, torch.Tensor],
          slots: tuple[str, ...] = DEFAULT_SLOTS) -> tuple[torch.jit.ScriptModule, Layout]:
    """Trace the family graph of ``wrapper`` (at its precision) over two members with rank-2 LoRA."""
    family, layout = build(wrapper, slots)
    params = dict(wrapper.named_parameters())
    shared = [params[n].detach() for n in layout.shared]
    member = member_tensors(layout, {n: p.detach() for n, p in params.items()},
                            {s: (torch.zeros(2, i), torch.zeros(o, 2)) for s, (i, o) in
                             zip(layout.slots, layout.slot_dims)})
    plain = member_tensors(layout, {n: p.detach() for n, p in params.items()})
    vectors, heads, lora_a, lora_b = stack([member, plain])
    rows = torch.zeros(example[0].shape[0], dtype=torch.int64)
    with torch.inference_mode():
        graph = torch.jit.trace(family, (*example, rows, shared, vectors, heads, lora_a, lora_b), check_trace=False)
    return torch.jit.freeze(graph.eval()), layout


def save(graph: torch.jit.ScriptModule, layout: Layout, path: Path) -> None:
    torch.jit.save(graph, str(path), _extra_files={LAYOUT_FILE: layout.to_json()})


def load(path: Path, map_location: str) -> tuple[Any, Layout]:
    """The family graph in ``path`` (checked to be TorchScript first) and its layout."""
    from shoal.artifacts import ArtifactRefused, load_torchscript

    extra = {LAYOUT_FILE: ""}
    graph = load_torchscript(path, map_location, extra_files=extra)
    try:
        layout = Layout.from_json(extra[LAYOUT_FILE])
    except (json.JSONDecodeError, TypeError, KeyError) as exc:
        raise ArtifactRefused(f"{path.name} has no valid {LAYOUT_FILE}: not a family graph ({exc})") from None
    return graph, layout
