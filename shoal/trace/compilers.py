"""Compile a wrapped model for one processor: TorchScript (cpu, gpu), torch-neuron (inf1), torch-neuronx (inf2).

Each compiler returns the module to save plus the artifact format. Missing hardware or
packages raise MissingDependencyError with one line saying what to install.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

import torch

from shoal.errors import MissingDependencyError

NEURON_HINT = "install it from the AWS Neuron pip repository on an Inferentia instance (see the Neuron SDK setup guide)"


@dataclass
class Compiled:
    module: Any  # a ScriptModule (frozen where possible)
    unfrozen: Any | None  # the traced module with its parameters, kept for `shoal models synth`
    format: str  # torchscript | neuron | neuronx
    static_shapes: bool  # neuron graphs take exactly the traced batch size and sequence length


def require_processor(processor: str) -> None:
    """Fail early, with one clear line, when this machine cannot compile for ``processor``."""
    if processor == "gpu" and not torch.cuda.is_available():
        raise MissingDependencyError("processor gpu needs CUDA, and no CUDA device is visible on this machine")
    if processor == "inf1" and importlib.util.find_spec("torch_neuron") is None:
        raise MissingDependencyError(f"processor inf1 needs the package torch-neuron: {NEURON_HINT}")
    if processor == "inf2" and importlib.util.find_spec("torch_neuronx") is None:
        raise MissingDependencyError(f"processor inf2 needs the package torch-neuronx: {NEURON_HINT}")


def compile_torchscript(wrapper: torch.nn.Module, example: tuple[torch.Tensor, ...]) -> Compiled:
    with torch.inference_mode():
        traced = torch.jit.trace(wrapper, example, check_trace=False)
    frozen = torch.jit.freeze(traced.eval())
    return Compiled(module=frozen, unfrozen=traced, format="torchscript", static_shapes=False)


def compile_neuron(wrapper: torch.nn.Module, example: tuple[torch.Tensor, ...], pipeline_cores: int,
                   workdir: str) -> Compiled:
    """inf1: torch.neuron.trace casts fp32 matmuls to bf16 automatically (the Neuron compiler's auto-cast)."""
    require_processor("inf1")
    import torch_neuron  # noqa: F401  (registers torch.neuron)

    args = ["--neuroncore-pipeline-cores", str(pipeline_cores)] if pipeline_cores > 1 else []
    module = torch.neuron.trace(wrapper, example, compiler_workdir=workdir, compiler_args=args)  # type: ignore[attr-defined]
    return Compiled(module=module, unfrozen=None, format="neuron", static_shapes=True)


def compile_neuronx(wrapper: torch.nn.Module, example: tuple[torch.Tensor, ...], workdir: str) -> Compiled:
    require_processor("inf2")
    import torch_neuronx

    module = torch_neuronx.trace(wrapper, example, compiler_workdir=workdir)
    return Compiled(module=module, unfrozen=None, format="neuronx", static_shapes=True)
