"""Check at trace time that an adapter member means what PEFT means, in fp32 eager.

The served path (the base's family graph running LoRA unmerged, shoal/family/) is not run
here. What is checked instead, on the base's fp32 Hugging Face model rebuilt from its catalog
entry (and proved to be the stored base: re-cast to the stored precision, every tensor has the
stored digest):

- PEFT's own output (``PeftModel.from_pretrained``) equals its merged model's (``merge_and_unload``);
- the member's tensors, applied unmerged as the server applies them (y = W x + b + s B A x,
  modules_to_save replacing the base's), give PEFT's output: the name mapping, shapes and scale
  are right.

PEFT's fp32 outputs on a few probes are then kept in the member (``reference.json``), so a test of
the served path can compare the server's answers with what PEFT computes.
"""

from __future__ import annotations

import copy
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from shoal.errors import ShoalError, UsageError
from shoal.spec import ModelSpec, load_spec
from shoal.store.manifest import Manifest, TensorEntry
from shoal.store.tensors import digest
from shoal.trace import quantize
from shoal.trace.peft_adapter import CONFIG_FILE, WEIGHTS_FILE, GRAPH_PREFIX, MappedAdapter
from shoal.trace.precision import max_abs_diff
from shoal.trace.wrappers import wrap

Log = Callable[[str], None]
TOLERANCE = 1e-4  # fp32 vs fp32, relative to the output's scale: only rounding may differ
_ST_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.int8: "I8",
              torch.uint8: "U8", torch.int32: "I32", torch.int64: "I64", torch.float64: "F64", torch.bool: "BOOL"}


def tensor_digest(t: torch.Tensor) -> str:
    """The content digest shoal/store/tensors.py gives the same tensor in a safetensors file."""
    data = t.detach().contiguous().cpu()
    return digest(_ST_DTYPES[data.dtype], list(data.shape), data.reshape(-1).view(torch.uint8).numpy())


def float_dtype(precision: str) -> torch.dtype:
    """The dtype a precision runs its unquantised parts in (an int8 scheme's float dtype)."""
    if precision in quantize.SCHEMES:
        return quantize.SCHEMES[precision].float_dtype
    return quantize.FLOAT_DTYPES[precision]


def find_base_spec(spec: ModelSpec) -> tuple[ModelSpec, Path]:
    """The base's catalog entry, beside the adapter's (``<base>.yaml``, else any file with that id)."""
    base = spec.source.base
    assert base
    folder = spec.source.catalog_dir
    candidates = [folder / f"{base}.yaml", *sorted(p for p in folder.glob("*.yaml") if p.stem != base)]
    for path in candidates:
        if not path.is_file():
            continue
        try:
            found = load_spec(path)
        except ShoalError:
            continue
        if found.id == base:
            if found.source.adapter:
                raise UsageError(f"{spec.id}: the base {base} is itself an adapter: an adapter's base must be a "
                                 "full model")
            return found, path
    raise UsageError(f"{spec.id}: no catalog entry for the base {base} in {folder}: the adapter is checked against "
                     "the base's fp32 model, rebuilt from its catalog entry")


def rebuild_base(spec: ModelSpec, base_spec: ModelSpec, base_yaml: Path, base: Manifest,
                 base_tensors: dict[str, TensorEntry]) -> tuple[Any, int]:
    """The base's fp32 eager model and [SEP] id, after proving it is the stored base tensor by tensor."""
    from shoal.trace.sources import load_eager_model, load_tokenizer

    model = load_eager_model(base_spec)
    sep = load_tokenizer(base_spec).sep_token_id or 102
    typed = quantize.model_at_precision(model, base.precision, "cpu")
    params = dict(wrap(base.task, typed, pooling=base_spec.pooling, sep_token_id=sep).named_parameters())
    fix = f"re-trace the base (shoal trace {base_yaml.name} --force), then the adapter"
    if set(params) != set(base_tensors):
        odd = sorted(set(params) ^ set(base_tensors))[0]
        raise UsageError(f"{spec.id}: the base {base.id} in the store does not have the tensors its catalog entry "
                         f"builds ({odd!r}): {fix}")
    for name, p in params.items():
        if tensor_digest(p) != base_tensors[name].sha256:
            raise UsageError(f"{spec.id}: the base {base.id} in the store is not what its catalog entry builds now "
                             f"({name} differs): {fix}")
    return model, sep


def linears_of(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """The model's Linear layers in PEFT's names -> (out_features, in_features), in module order."""
    return {name: (m.out_features, m.in_features) for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear)}


def _scaled(out: Any) -> float:
    rows = out if isinstance(out, tuple) else (out,)
    return max(1.0, max(float(r.abs().max()) for r in rows))


def apply_unmerged(model: torch.nn.Module, mapped: MappedAdapter, scale: float) -> list[Any]:
    """Run ``model`` as the server runs a member: modules_to_save copied in, each target Linear plus
    ``scale * B (A x)`` (forward hooks; the base's weights untouched). Returns the hooks' handles."""
    with torch.no_grad():
        for name, value in mapped.saved.items():
            model.get_parameter(name[len(GRAPH_PREFIX):]).copy_(value)
    handles = []
    for target in mapped.targets:
        a = mapped.lora[f"{target}.lora_A"]
        b = mapped.lora[f"{target}.lora_B"]

        def hook(module: Any, inputs: tuple, out: torch.Tensor, a: torch.Tensor = a, b: torch.Tensor = b) -> Any:
            return out + scale * torch.nn.functional.linear(torch.nn.functional.linear(inputs[0], a), b)

        handles.append(model.get_submodule(target[len(GRAPH_PREFIX):]).register_forward_hook(hook))
    return handles


def staged_copy(folder: Path, work: Path) -> Path:
    """The adapter's config and safetensors alone, so PEFT cannot reach a pickle in the user's folder."""
    staged = work / "peft-adapter"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        try:
            os.link(folder / name, staged / name)
        except OSError:
            shutil.copyfile(folder / name, staged / name)
    return staged


def peft_outputs(spec: ModelSpec, model: Any, task: str, pooling: str, sep: int, mapped: MappedAdapter,
                 scale: float, staged: Path, probes: tuple[torch.Tensor, torch.Tensor], log: Log) -> Any:
    """PEFT's fp32 outputs on ``probes``, after checking them against merged PEFT and the member's tensors.

    ``model`` (the base's fp32 eager model) is changed in place: the member's adapter is applied to it.
    """
    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = PeftModel.from_pretrained(copy.deepcopy(model), str(staged), is_trainable=False).eval()
    # PEFT's LoRA forward is its base model's with the LoRA layers injected (get_base_model); called through
    # the task wrapper class instead, PeftModelForQuestionAnswering (peft 0.21.2) drops token_type_ids.
    with torch.inference_mode():
        reference = wrap(task, peft_model.get_base_model(), pooling=pooling, sep_token_id=sep)(*probes)
        merged = wrap(task, peft_model.merge_and_unload().eval(), pooling=pooling, sep_token_id=sep)(*probes)
    tolerance = TOLERANCE * _scaled(reference)
    merged_diff = max_abs_diff(reference, merged)
    if merged_diff > tolerance:
        raise ShoalError(f"{spec.id}: PEFT's unmerged and merged outputs differ by {merged_diff:.3g} "
                         f"(tolerance {tolerance:.1g}): the adapter does not compute plain LoRA")
    handles = apply_unmerged(model, mapped, scale)
    try:
        with torch.inference_mode():
            ours = wrap(task, model.eval(), pooling=pooling, sep_token_id=sep)(*probes)
    finally:
        for h in handles:
            h.remove()
    member_diff = max_abs_diff(reference, ours)
    log(f"{spec.id}: fp32 PEFT vs merged max abs difference {merged_diff:.2e}, vs the member's tensors applied "
        f"unmerged {member_diff:.2e} (tolerance {tolerance:.1g})")
    if member_diff > tolerance:
        raise ShoalError(f"{spec.id}: the member's tensors, applied as the server applies them, differ from PEFT "
                         f"by {member_diff:.3g} (tolerance {tolerance:.1g}): the adapter uses a feature shoal does "
                         "not map")
    return reference
