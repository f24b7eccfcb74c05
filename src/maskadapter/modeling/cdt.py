"""MAFT+'s Content-Dependent Transfer (CDT): text embeddings attend to the image, per image.

Keys below ``cdt.``: ``cross_atten.multihead_attn.*``, ``cross_atten.norm.*``, ``cross_atten.MLP.*``.
Which residual formula applies depends on the preset (the official code switches it with the test-time
PANOPTIC_ON flag), so ``mode`` is explicit here.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .generators.position_encoding import PositionEmbeddingSine

__all__ = ["ContentDependentTransfer", "CDTMode"]

CDTMode = Literal["semantic", "panoptic"]


class _CrossAttention(nn.Module):
    """Text queries attend to image tokens; attribute names follow the official checkpoint."""

    def __init__(self, d_model: int, nhead: int) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=0.0)
        self.norm = nn.LayerNorm(d_model)
        self.MLP = nn.Linear(d_model, d_model)  # noqa: N815 - official key name


class ContentDependentTransfer(nn.Module):
    """Per-image text classifier: ``text`` [S, D] x ``image`` [B, D, h, w] -> [B, S, D] (not re-normalised)."""

    def __init__(self, d_model: int, nhead: int = 8, mode: CDTMode = "semantic") -> None:
        super().__init__()
        if mode not in ("semantic", "panoptic"):
            raise ValueError(f"mode must be 'semantic' or 'panoptic', got {mode!r}")
        self.mode = mode
        self.pe_layer = PositionEmbeddingSine(d_model // 2, normalize=True)
        self.cross_atten = _CrossAttention(d_model, nhead)

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Transfer ``text`` [S, D] with the projected image map ``image`` [B, D, h, w] -> [B, S, D]."""
        if image.dim() != 4 or text.dim() != 2 or image.shape[1] != text.shape[1]:
            raise ValueError(f"expected image [B, D, h, w] and text [S, D] with the same D, "
                             f"got {list(image.shape)} and {list(text.shape)}")
        B = image.shape[0]
        pos = self.pe_layer(image).flatten(2).permute(2, 0, 1)  # [hw, B, D]
        tokens = image.flatten(2).permute(2, 0, 1)
        queries = text[:, None].expand(-1, B, -1).to(tokens.dtype)  # [S, B, D], no query position
        attended = self.cross_atten.multihead_attn(queries, tokens + pos, tokens, need_weights=False)[0]
        update = self.cross_atten.MLP(attended)
        if self.mode == "panoptic":
            out = queries + self.cross_atten.norm(update)
        else:
            out = self.cross_atten.norm(queries + update)
        return out.permute(1, 0, 2)
