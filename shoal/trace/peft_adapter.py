"""Read a PEFT LoRA adapter folder, never a pickle, and map it onto the graph's parameter names.

Why only plain LoRA: the server runs an adapter unmerged over its base's graph,
y = W x + b + (alpha / r) * B (A x) for each target Linear, so that thousands of adapters
share one copy of the base. Anything PEFT computes differently (DoRA's magnitudes, rsLoRA's
scale, per-module ranks, inits that rewrite the base's weights, ...) would be served wrong,
so it is refused here in one line naming the option. ``modules_to_save`` (e.g. a new
classifier head) become the member's own tensors, replacing the base's.

Names: PEFT saves ``base_model.model.<module>.lora_A.weight`` (and ``base_model.model.<module>.<param>``
for modules_to_save; older versions kept ``.modules_to_save.<adapter>`` in the name); the graph
takes the wrapper's parameters, ``model.<module>.<param>`` (shoal/trace/wrappers.py), and the
manifest names LoRA matrices ``model.<module>.lora_A`` / ``.lora_B`` (shoal/store/manifest.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from shoal.errors import UsageError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_FILES = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth")
PEFT_PREFIX = "base_model.model."
GRAPH_PREFIX = "model."  # the task wrapper holds the Hugging Face model as `.model`

# adapter_config.json options that change what the adapter computes, when set (truthy)
UNSUPPORTED = {
    "use_dora": "DoRA (use_dora) rescales the weights by learned magnitudes",
    "use_rslora": "rsLoRA (use_rslora) scales by lora_alpha / sqrt(r)",
    "fan_in_fan_out": "fan_in_fan_out (transposed Conv1D weights)",
    "lora_bias": "a bias on LoRA B (lora_bias)",
    "rank_pattern": "per-module ranks (rank_pattern)",
    "alpha_pattern": "per-module alphas (alpha_pattern)",
    "target_parameters": "LoRA on parameters (target_parameters)",
    "trainable_token_indices": "trainable tokens (trainable_token_indices)",
    "layer_replication": "layer replication (layer_replication)",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
    "use_qalora": "QALoRA (use_qalora)",
    "use_bdlora": "block-diagonal LoRA (use_bdlora)",
    "kasa_config": "KaSA (kasa_config)",
    "monteclora_config": "MonteCLoRA (monteclora_config)",
    "velora_config": "VeLoRA (velora_config)",
    "arrow_config": "Arrow routing (arrow_config)",
    "megatron_config": "Megatron parallel layers (megatron_config)",
    "loftq_config": "LoftQ (loftq_config) rewrites the base's weights",
    "corda_config": "CorDA (corda_config) rewrites the base's weights",
    "lora_ga_config": "LoRA-GA (lora_ga_config) rewrites the base's weights",
}
# init_lora_weights values that rewrite the base's weights (the adapter is then wrong over the real base
# unless saved converted, which PEFT records as init_lora_weights: true) or select a LoRA variant
BASE_REWRITING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga", "mica")


@dataclass
class PeftAdapter:
    """A plain LoRA adapter as read from its folder, in PEFT's module names (no ``model.`` prefix)."""

    folder: Path
    rank: int
    alpha: float
    target_modules: list[str] | str
    lora: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # module -> (A, B)
    saved: dict[str, torch.Tensor] = field(default_factory=dict)  # modules_to_save: module.param -> tensor
    base_model_name_or_path: str | None = None


def refuse(folder: Path, why: str) -> UsageError:
    return UsageError(f"adapter {folder}: {why}")


def read_config(folder: Path) -> dict[str, Any]:
    """adapter_config.json, with every option shoal cannot serve refused in one line."""
    if not folder.is_dir():
        raise refuse(folder, "no such folder (a PEFT adapter folder: adapter_config.json + adapter_model.safetensors)")
    path = folder / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise refuse(folder, f"no {CONFIG_FILE}: is it a PEFT adapter folder?") from None
    except json.JSONDecodeError as exc:
        raise refuse(folder, f"{CONFIG_FILE} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(config, dict):
        raise refuse(folder, f"{CONFIG_FILE} must be a JSON object")
    kind = config.get("peft_type")
    if kind != "LORA":
        raise refuse(folder, f"peft_type {kind!r} is not served: only LORA adapters are")
    for key, what in UNSUPPORTED.items():
        if config.get(key):
            raise refuse(folder, f"{what}: not served, only plain LoRA (y = W x + b + (alpha / r) B A x) is")
    if config.get("bias", "none") != "none":
        raise refuse(folder, f"bias {config['bias']!r} is not served: only bias 'none' (the base's biases stay)")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(BASE_REWRITING_INITS):
        raise refuse(folder, f"init_lora_weights {init!r} changes the base's weights or the LoRA formula: save "
                     "it converted to plain LoRA (save_pretrained(path_initial_model_for_weight_conversion=...))")
    rank, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise refuse(folder, f"r must be a positive integer (got {rank!r})")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or alpha <= 0:
        raise refuse(folder, f"lora_alpha must be a positive number (got {alpha!r})")
    targets = config.get("target_modules")
    if not targets or not (isinstance(targets, str) or (isinstance(targets, list)
                                                         and all(isinstance(t, str) for t in targets))):
        raise refuse(folder, f"target_modules must be a module name list or a regex (got {targets!r})")
    return config


def read_adapter(folder: Path) -> PeftAdapter:
    """The adapter's config and tensors (adapter_model.safetensors only: a pickle is never read)."""
    config = read_config(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        pickles = [p for p in PICKLE_FILES if (folder / p).exists()]
        if pickles:
            raise refuse(folder, f"{pickles[0]} is a pickle, which shoal never loads: save the adapter with "
                         f"safe_serialization=True ({WEIGHTS_FILE})")
        raise refuse(folder, f"no {WEIGHTS_FILE}")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise refuse(folder, f"{WEIGHTS_FILE} is not a readable safetensors file ({str(exc).splitlines()[0]})") \
            from None
    adapter = PeftAdapter(folder, config["r"], float(config["lora_alpha"]), config["target_modules"],
                          base_model_name_or_path=config.get("base_model_name_or_path"))
    halves: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in sorted(tensors.items()):
        if not name.startswith(PEFT_PREFIX):
            raise refuse(folder, f"tensor {name!r} is not under {PEFT_PREFIX!r}: not a PEFT LoRA save")
        rest = name[len(PEFT_PREFIX):]
        match = re.fullmatch(r"(.+)\.lora_(A|B)\.weight", rest)
        if match:
            halves.setdefault(match.group(1), {})[match.group(2)] = tensor
        elif ".lora_" in rest:
            raise refuse(folder, f"tensor {name!r} is not a LoRA A/B matrix of a Linear layer "
                         "(embedding or magnitude tensors are not served)")
        else:
            adapter.saved[re.sub(r"\.modules_to_save(\.[^.]+)?\.", ".", rest)] = tensor
    for module, pair in halves.items():
        if set(pair) != {"A", "B"}:
            raise refuse(folder, f"{module} has lora_{next(iter(pair))} but not its other half")
        adapter.lora[module] = (pair["A"], pair["B"])
    if not adapter.lora:
        raise refuse(folder, f"{WEIGHTS_FILE} holds no LoRA matrices")
    return adapter


def matched_modules(target_modules: list[str] | str, linears: list[str]) -> list[str]:
    """The Linear modules PEFT's target_modules names (a list: exact or dotted suffix; a string: a regex)."""
    if target_modules == "all-linear":
        return list(linears)
    if isinstance(target_modules, str):
        return [m for m in linears if re.fullmatch(target_modules, m)]
    return [m for m in linears if any(m == t or m.endswith(f".{t}") for t in target_modules)]


@dataclass
class MappedAdapter:
    """The adapter in the graph's names: what the member's manifest and weights file hold."""

    targets: list[str]  # model.<module>, in the base's order
    lora: dict[str, torch.Tensor]  # model.<module>.lora_A / .lora_B -> float32 tensor
    saved: dict[str, torch.Tensor]  # model.<module>.<param> -> float32 tensor (replaces the base's)


def map_to_graph(adapter: PeftAdapter, linears: dict[str, tuple[int, int]],
                 base_tensors: dict[str, tuple[str, list[int]]]) -> MappedAdapter:
    """Check every tensor fits the base and name it as the graph does.

    ``linears``: the base's Linear modules in PEFT's names -> (out_features, in_features), in order;
    ``base_tensors``: the base's graph weights -> (dtype, shape).
    """
    folder = adapter.folder
    matched = matched_modules(adapter.target_modules, list(linears))
    if not matched:
        raise refuse(folder, f"target_modules {adapter.target_modules!r} match no Linear layer of the base")
    if isinstance(adapter.target_modules, list):
        for t in adapter.target_modules:
            if not matched_modules([t], list(linears)):
                raise refuse(folder, f"target module {t!r} matches no Linear layer of the base")
    lora: dict[str, torch.Tensor] = {}
    for module, (a, b) in adapter.lora.items():
        if module not in linears:
            raise refuse(folder, f"LoRA on {module!r}, which is not a Linear layer of the base")
        if module not in matched:
            raise refuse(folder, f"LoRA tensors for {module!r}, which target_modules does not name")
        out_f, in_f = linears[module]
        if list(a.shape) != [adapter.rank, in_f] or list(b.shape) != [out_f, adapter.rank]:
            raise refuse(folder, f"{module}: lora_A {list(a.shape)} / lora_B {list(b.shape)} do not fit r="
                         f"{adapter.rank} over the base's Linear [{out_f}, {in_f}] (want [{adapter.rank}, {in_f}] "
                         f"/ [{out_f}, {adapter.rank}])")
        lora[f"{GRAPH_PREFIX}{module}.lora_A"] = a.float()
        lora[f"{GRAPH_PREFIX}{module}.lora_B"] = b.float()
    saved: dict[str, torch.Tensor] = {}
    for name, tensor in adapter.saved.items():
        graph_name = GRAPH_PREFIX + name
        if graph_name not in base_tensors:
            raise refuse(folder, f"modules_to_save tensor {name!r} matches no weight of the base")
        dtype, shape = base_tensors[graph_name]
        if list(tensor.shape) != shape:
            raise refuse(folder, f"modules_to_save tensor {name!r} is {list(tensor.shape)}, the base's is {shape}")
        if dtype not in ("F32", "BF16", "F16") or f"{graph_name}_scale" in base_tensors:
            raise refuse(folder, f"modules_to_save tensor {name!r} is stored quantised ({dtype}) in the base: only "
                         "float modules (heads, LayerNorms) can be replaced")
        saved[graph_name] = tensor.float()
    targets = [GRAPH_PREFIX + m for m in linears if m in adapter.lora]
    return MappedAdapter(targets, lora, saved)
