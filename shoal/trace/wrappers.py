"""Task wrappers: give every text model one traceable signature.

forward(input_ids int64 [B, L], attention_mask int64 [B, L]) -> float32
  embedding: [B, H] (pooled, optionally L2-normalised)
  classification: [B, C] logits
  question-answering: (start [B, L], end [B, L]) logits
transformers 5 returns dicts, so each wrapper asks for ``return_dict=False``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class EmbeddingWrapper(nn.Module):
    def __init__(self, model: Any, pooling: str = "mean", normalize: bool = True) -> None:
        super().__init__()
        self.model = model
        self.use_mean = pooling == "mean"
        self.normalize = normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=False)[0]
        if self.use_mean:
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        else:
            pooled = hidden[:, 0]
        pooled = pooled.float()
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
        return pooled


class ClassificationWrapper(nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=False)[0].float()


class QuestionAnsweringWrapper(nn.Module):
    """Derives BERT segment ids in the graph (0 up to the first [SEP], 1 after) so the signature stays two inputs."""

    def __init__(self, model: Any, sep_token_id: int) -> None:
        super().__init__()
        self.model = model
        self.sep_token_id = sep_token_id

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sep = (input_ids == self.sep_token_id).to(torch.int64)
        token_type_ids = (torch.cumsum(sep, dim=1) - sep).clamp(max=1) * attention_mask
        start, end = self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, return_dict=False
        )[:2]
        return start.float(), end.float()


def wrap(task: str, model: Any, *, pooling: str = "mean", normalize: bool = True, sep_token_id: int = 102) -> nn.Module:
    if task == "embedding":
        return EmbeddingWrapper(model, pooling, normalize).eval()
    if task == "classification":
        return ClassificationWrapper(model).eval()
    if task == "question-answering":
        return QuestionAnsweringWrapper(model, sep_token_id).eval()
    raise ValueError(f"no wrapper for task {task!r}")
