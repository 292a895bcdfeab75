"""The catalog's example adapter, made offline and deterministically by `shoal build` when its folder is missing.

Why made and not shipped: no weights live in git, and no hub can be reached; PEFT makes the
adapter from the base that ships in an installed package. It stands in for a fine-tune: PEFT
initialises LoRA B to zero (a fresh adapter is a no-op), so every LoRA matrix and the new head
(modules_to_save) are drawn from a seeded generator instead, and the adapter changes outputs.
Only catalog ids listed in ``EXAMPLES`` are made: a user's missing adapter folder stays an error.
"""

from __future__ import annotations

import os
import shutil
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from shoal.spec import ModelSpec

Log = Callable[[str], None]


@dataclass(frozen=True)
class Recipe:
    rank: int = 8
    alpha: int = 16
    targets: tuple[str, ...] = ("query", "value")
    seed: int = 0
    b_std: float = 0.02  # LoRA B entries: the update 2 * B A is ~15 % of a MiniLM projection's spread
    head_std: float = 0.2  # the new classifier's weights (bias zero)


EXAMPLES: dict[str, Recipe] = {"minilm-cls-lora": Recipe()}  # catalog id -> how its adapter folder is made
_TASK_TYPES = {"classification": "SEQ_CLS", "embedding": "FEATURE_EXTRACTION", "question-answering": "QUESTION_ANS"}


def ensure_examples(specs: list[ModelSpec], log: Log) -> None:
    """Make the adapter folder of every example catalog entry in ``specs`` that lacks it."""
    for spec in specs:
        if spec.id in EXAMPLES and spec.source.adapter and not spec.source.adapter_folder().exists():
            make_example(spec, EXAMPLES[spec.id], log)


def make_example(spec: ModelSpec, recipe: Recipe, log: Log) -> None:
    """Save a seeded PEFT LoRA adapter over the base's eager model into ``spec``'s adapter folder."""
    from peft import LoraConfig, get_peft_model

    from shoal.trace.adapter_check import find_base_spec
    from shoal.trace.sources import load_eager_model

    folder = spec.source.adapter_folder()
    base_spec, _ = find_base_spec(spec)
    log(f"{spec.id}: making the example adapter {spec.source.adapter} (seeded LoRA r={recipe.rank} over "
        f"{base_spec.id})")
    model = load_eager_model(base_spec)
    config = LoraConfig(task_type=_TASK_TYPES[base_spec.task], r=recipe.rank, lora_alpha=recipe.alpha,
                        target_modules=list(recipe.targets), lora_dropout=0.0, bias="none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(model, config)
    gen = torch.Generator().manual_seed(recipe.seed)
    with torch.no_grad():
        for name, p in sorted(peft_model.named_parameters()):  # a fixed order: the same bytes on every run
            if ".lora_A." in name:
                p.copy_(torch.randn(p.shape, generator=gen) / recipe.rank)
            elif ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=gen) * recipe.b_std)
            elif ".modules_to_save." in name:
                p.copy_(torch.randn(p.shape, generator=gen) * recipe.head_std if p.dim() > 1 else torch.zeros_like(p))
    peft_model.peft_config["default"].base_model_name_or_path = f"shoal catalog: {base_spec.id}"
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with warnings.catch_warnings():  # PEFT looks the base name up for a vocabulary check: nothing to find
            warnings.simplefilter("ignore")
            peft_model.save_pretrained(str(tmp), safe_serialization=True)
        (tmp / "README.md").unlink(missing_ok=True)  # PEFT's model card template: nothing shoal reads
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
