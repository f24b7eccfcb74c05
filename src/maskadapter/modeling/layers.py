"""Building blocks of the Mask-Adapter head, with the official parameter names.

The two normalisation classes are deliberately *not* subclasses of ``nn.LayerNorm``: the official
optimizer builder exempts only ``nn.LayerNorm`` instances from weight decay, so these layers
(like the official ones) receive weight decay while the head's final ``nn.LayerNorm`` does not.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LayerNorm2d", "ChannelsLastLayerNorm", "ConvNextBlock"]


class ChannelsLastLayerNorm(nn.Module):
    """Layer norm over the last axis (the ConvNeXt block's ``norm``), eps 1e-6 by default."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` [..., C] over C; returns [..., C]."""
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)


class LayerNorm2d(ChannelsLastLayerNorm):
    """Layer norm over the channel axis of an NCHW tensor (biased variance, ``eps`` inside the root)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` [B, C, H, W] over C; returns [B, C, H, W]."""
        # F.layer_norm on an NHWC view computes the same statistics in one fused kernel.
        y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


class ConvNextBlock(nn.Module):
    """ConvNeXt block: 7x7 depthwise conv, LN, MLP (x4), layer scale, residual (no drop path)."""

    def __init__(self, dim: int, kernel_size: int = 7, layer_scale_init: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = ChannelsLastLayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale_init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reference computation, as the official block: ``x`` [B, C, H, W] -> [B, C, H, W]."""
        y = self.dwconv(x).permute(0, 2, 3, 1).contiguous()
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)

    def folded_pwconv2(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``pwconv2`` with the layer scale folded in: gamma*(W y + b) == (gamma W) y + gamma b."""
        return self.pwconv2.weight * self.gamma[:, None], self.pwconv2.bias * self.gamma

    def forward_nhwc(self, x: torch.Tensor, row_tile: int = 0,
                     folded: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        """Same result for ``x`` [B, H, W, C] (contiguous NHWC), returned as [B, H, W, C].

        The depthwise conv runs on a channels_last view, so no layout copy is made; the per-pixel
        MLP optionally runs in tiles of ``row_tile`` pixels so its 4C-wide hidden activation stays
        in cache (only without autograd, where the tiles can be written in place). ``folded`` is
        :meth:`folded_pwconv2`, passed in when the caller runs many chunks.
        """
        y = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        if not y.is_contiguous():  # a backend that ignored channels_last
            y = y.contiguous()
        w2, b2 = folded if folded is not None else self.folded_pwconv2()
        flat = y.view(-1, y.shape[-1])
        if row_tile <= 0 or torch.is_grad_enabled() or flat.shape[0] <= row_tile:
            z = F.linear(self.act(self.pwconv1(self.norm(flat))), w2, b2)
            return x + z.view_as(x)
        out = x.reshape(-1, x.shape[-1]).clone()
        for start in range(0, flat.shape[0], row_tile):
            rows = flat[start : start + row_tile]
            hidden = self.act(self.pwconv1(self.norm(rows)))
            out[start : start + row_tile] += F.linear(hidden, w2, b2)
        return out.view_as(x)
