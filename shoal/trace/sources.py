"""Turn a catalog Source into an eager Hugging Face model and a fast tokenizer, offline."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from shoal.errors import UsageError
from shoal.spec import ModelSpec, Source

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

# Random-initialisation presets: named configs a user can trace without any weights.
PRESETS: dict[str, dict[str, Any]] = {
    "bert-base": {},  # BertConfig defaults are BERT-base: 12 layers, 768 hidden, ~110 M parameters
    "bert-tiny": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
    "bert-mini": {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 256},
}


def source_folder(source: Source) -> Path:
    """The local folder a package or path source points at."""
    if source.package:
        try:
            module = importlib.import_module(source.package)
        except ImportError:
            raise UsageError(
                f"source package {source.package!r} is not installed (pip install {source.package.replace('_', '-')})"
            ) from None
        getter = getattr(module, "get_model_path", None)
        folder = Path(getter()) if callable(getter) else Path(module.__file__).parent / "model"
    elif source.path:
        folder = Path(source.path).expanduser()
    else:
        raise UsageError("a random-init source has no folder")
    if not (folder / "config.json").is_file():
        raise UsageError(f"source folder {folder} has no config.json: is it a Hugging Face model folder?")
    return folder


def build_config(source: Source) -> Any:
    from transformers import AutoConfig, BertConfig

    if source.config in PRESETS:
        config = BertConfig(**PRESETS[source.config])
    elif source.config:
        p = Path(source.config).expanduser()
        if not p.exists():
            raise UsageError(f"config {source.config!r} is neither a preset ({', '.join(PRESETS)}) nor a file")
        config = AutoConfig.from_pretrained(p.parent if p.is_file() else p)
    else:
        config = AutoConfig.from_pretrained(source_folder(source))
    for key, value in source.overrides.items():
        setattr(config, key, value)
    return config


def load_eager_model(spec: ModelSpec) -> Any:
    """The eager model for the spec's task, in eval mode, fp32, seeded for reproducibility."""
    import torch
    from transformers import AutoModel, AutoModelForQuestionAnswering, AutoModelForSequenceClassification

    classes = {
        "embedding": AutoModel,
        "classification": AutoModelForSequenceClassification,
        "question-answering": AutoModelForQuestionAnswering,
    }
    if spec.task not in classes:
        raise UsageError(f"task {spec.task!r} is not a text task (expected one of {', '.join(classes)})")
    cls = classes[spec.task]
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # a fresh head on a base encoder is intended; its notice is noise here
    torch.manual_seed(spec.source.seed)
    config = build_config(spec.source)
    if spec.task == "classification":
        assert spec.labels
        config.num_labels = len(spec.labels)
        config.id2label = dict(enumerate(spec.labels))
        config.label2id = {label: i for i, label in enumerate(spec.labels)}
    try:
        if spec.source.config:
            model = cls.from_config(config)
        else:
            model = cls.from_pretrained(source_folder(spec.source), config=config)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load {spec.id} from {spec.source.describe()}: {str(exc).splitlines()[0]}") from None
    return model.eval()


def load_tokenizer(spec: ModelSpec) -> Any:
    """A fast tokenizer from the spec's tokenizer source (default: the model source)."""
    from transformers import AutoTokenizer

    source = spec.tokenizer or spec.source
    if source.config and not source.package and not source.path:
        raise UsageError(f"{spec.id}: a random-init model needs a `tokenizer:` source (package or path)")
    folder = source_folder(source)
    try:
        return AutoTokenizer.from_pretrained(folder, use_fast=True)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{spec.id}: cannot load a tokenizer from {folder}: {str(exc).splitlines()[0]}") from None


def save_tokenizer_json(tokenizer: Any, seq_len: int, dest: Path) -> None:
    """Save the fast tokenizer with truncation and pad-to-longest baked in, so the server needs only `tokenizers`."""
    backend = tokenizer.backend_tokenizer
    backend.enable_truncation(max_length=seq_len)
    backend.enable_padding(pad_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token)
    backend.save(str(dest))
