"""Sine positional encoding of a 2-D grid, as used by DETR, Mask2Former, FC-CLIP and the MAFT+ CDT."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

__all__ = ["PositionEmbeddingSine"]


class PositionEmbeddingSine(nn.Module):
    """Sine/cosine encoding of (y, x) positions: ``x`` [B, C, H, W] -> [B, 2*num_pos_feats, H, W].

    Positions are running counts of unmasked cells (1-based, no -0.5 offset). With ``normalize`` they
    are divided by the last count along their axis (+1e-6) and multiplied by ``scale`` (2*pi by default).
    Channels are the ``num_pos_feats`` y features followed by the ``num_pos_feats`` x features, each
    block alternating sin (even channels) and cos (odd channels) of one shared frequency per pair.
    Only the shape and device of ``x`` matter; the result is fp32 (fp64 for an fp64 ``x``), whatever
    the input dtype, because the official module computes in fp32 even under mixed precision.
    """

    def __init__(self, num_pos_feats: int = 64, temperature: float = 10000, normalize: bool = False,
                 scale: Optional[float] = None) -> None:
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("PositionEmbeddingSine: a scale is only used with normalize=True")
        if num_pos_feats <= 0 or num_pos_feats % 2:
            raise ValueError(f"num_pos_feats must be a positive even number, got {num_pos_feats}")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Encoding for ``x`` [B, C, H, W] (``mask`` [B, H, W], True = padding) -> [B, 2*num_pos_feats, H, W]."""
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        if mask is None:
            not_mask = torch.ones((x.shape[0], x.shape[2], x.shape[3]), device=x.device, dtype=torch.bool)
        else:
            not_mask = ~mask.bool()
        y_embed = not_mask.cumsum(1, dtype=dtype)
        x_embed = not_mask.cumsum(2, dtype=dtype)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale

        # Channels 2i and 2i+1 share the frequency temperature^(2i / num_pos_feats).
        dim_t = torch.arange(self.num_pos_feats, dtype=dtype, device=x.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_y = _interleave_sin_cos(y_embed[..., None] / dim_t)
        pos_x = _interleave_sin_cos(x_embed[..., None] / dim_t)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return (f"num_pos_feats={self.num_pos_feats}, temperature={self.temperature}, "
                f"normalize={self.normalize}, scale={self.scale}")


def _interleave_sin_cos(angles: torch.Tensor) -> torch.Tensor:
    """[..., F] angles -> [..., F]: sin of the even-indexed angles and cos of the odd ones, alternating."""
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)
