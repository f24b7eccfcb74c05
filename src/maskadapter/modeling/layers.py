"""Building blocks of the Mask-Adapter head, with the official parameter names.

The two normalisation classes are deliberately *not* subclasses of ``nn.LayerNorm``: the official
optimizer builder exempts only ``nn.LayerNorm`` instances from weight decay, so these layers
(like the official ones) receive weight decay while the head's final ``nn.LayerNorm`` does not.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..precision import cpu_gemm_backend

__all__ = ["LayerNorm2d", "ChannelsLastLayerNorm", "ConvNextBlock", "convnext_block_nhwc", "convnext_block_rows",
           "mlp_row_tile", "linear"]

_TILE_ELEMENTS = 4096 * 3072
_ROW_BUCKET = 256
MatrixAndBias = tuple[torch.Tensor, Optional[torch.Tensor]]


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

    def forward_nhwc(self, x: torch.Tensor, row_tile: Optional[int] = None, inplace: bool = False) -> torch.Tensor:
        """Same result for ``x`` [B, H, W, C] (contiguous NHWC) -> [B, H, W, C]; see :func:`convnext_block_nhwc`."""
        return convnext_block_nhwc(x, self.dwconv, self.norm, (self.pwconv1.weight, self.pwconv1.bias),
                                   (self.pwconv2.weight, self.pwconv2.bias), self.gamma, self.act.approximate,
                                   row_tile, inplace)

    def forward_rows(self, x: torch.Tensor, rows: torch.Tensor, fill_rest: Callable[[torch.Tensor], object],
                     row_tile: Optional[int] = None) -> torch.Tensor:
        """This block on the pixels ``rows`` of ``x`` [B, H, W, C] only; see :func:`convnext_block_rows`."""
        return convnext_block_rows(x, rows, fill_rest, self.dwconv, self.norm,
                                   (self.pwconv1.weight, self.pwconv1.bias), (self.pwconv2.weight, self.pwconv2.bias),
                                   self.gamma, self.act.approximate, row_tile)


def convnext_block_nhwc(x: torch.Tensor, dwconv: nn.Conv2d, norm: nn.Module, fc1: MatrixAndBias, fc2: MatrixAndBias,
                        gamma: Optional[torch.Tensor], approximate: str = "none", row_tile: Optional[int] = None,
                        inplace: bool = False) -> torch.Tensor:
    """A ConvNeXt block ``x + gamma * fc2(gelu(fc1(norm(dwconv(x)))))`` on ``x`` [B, H, W, C] (contiguous NHWC)
    -> [B, H, W, C]; the head's blocks and open_clip's (timm) ConvNeXt blocks both run here.

    ``fc1`` / ``fc2`` are (weight [out, in], bias) pairs; ``norm`` is any module with ``weight``, ``bias`` and
    ``eps`` normalising the channels. The depthwise conv runs on a channels_last view, so no layout copy is made.
    Without autograd the per-pixel MLP runs in tiles of ``row_tile`` pixels (None: :func:`mlp_row_tile`) so its
    4C-wide hidden activation stays in cache, and adds into a copy of ``x`` (into ``x`` itself with
    ``inplace``: the caller owns it).
    """
    flat = _dwconv_nhwc(x, dwconv).view(-1, x.shape[-1])
    (w1, b1), (w2, b2) = fc1, fc2
    if torch.is_grad_enabled():
        hidden = F.linear(F.layer_norm(flat, flat.shape[-1:], norm.weight, norm.bias, norm.eps), w1, b1)
        z = F.linear(F.gelu(hidden, approximate=approximate), w2, b2)
        return x + (z if gamma is None else z * gamma).view_as(x)
    out = x if inplace else x.clone()
    _mlp_rows_into(flat, out.view(-1, out.shape[-1]), norm, fc1, fc2, gamma, approximate, row_tile)
    return out


def convnext_block_rows(x: torch.Tensor, rows: torch.Tensor, fill_rest: Callable[[torch.Tensor], object],
                        dwconv: nn.Conv2d, norm: nn.Module, fc1: MatrixAndBias, fc2: MatrixAndBias,
                        gamma: Optional[torch.Tensor], approximate: str = "none",
                        row_tile: Optional[int] = None) -> torch.Tensor:
    """:func:`convnext_block_nhwc` on ``x`` [B, H, W, C] (contiguous NHWC, updated in place and returned) for the
    pixels ``rows`` [R] (indices into the flattened B*H*W pixels) only; ``fill_rest(x)`` writes every pixel's
    value into ``x`` (the caller knows what the block gives away from ``rows``), then the computed rows are put
    back. Inference only (no autograd).

    The depthwise conv still runs on the whole grid (the kept pixels need their neighbours); the per-pixel MLP,
    nearly all of the work, runs on the kept pixels alone.
    """
    channels, count = x.shape[-1], rows.numel()
    # Row counts rounded up to a multiple of _ROW_BUCKET (the padding repeats a row and is dropped): oneDNN keeps
    # a primitive, with its memory, per matrix shape, and every chunk would otherwise bring a new one (+350 MB).
    padding = -count % _ROW_BUCKET
    gather = torch.cat([rows, rows[-1:].expand(padding)]) if padding and count else rows
    kept = x.view(-1, channels).index_select(0, gather)
    y = _dwconv_nhwc(x, dwconv).view(-1, channels).index_select(0, gather)
    _mlp_rows_into(y, kept, norm, fc1, fc2, gamma, approximate, row_tile)
    fill_rest(x)
    x.view(-1, channels).index_copy_(0, rows, kept[:count])
    return x


def _dwconv_nhwc(x: torch.Tensor, dwconv: nn.Conv2d) -> torch.Tensor:
    """Depthwise conv of ``x`` [B, H, W, C] on its channels_last view -> contiguous [B, H, W, C] (no layout copy)."""
    y = dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    return y if y.is_contiguous() else y.contiguous()  # a backend that ignored channels_last


def _mlp_rows_into(flat: torch.Tensor, out_flat: torch.Tensor, norm: nn.Module, fc1: MatrixAndBias,
                   fc2: MatrixAndBias, gamma: Optional[torch.Tensor], approximate: str,
                   row_tile: Optional[int]) -> None:
    """``out_flat += gamma * fc2(gelu(fc1(norm(flat))))`` for ``flat`` / ``out_flat`` [M, C], in row tiles so the
    4C-wide hidden activation stays in cache."""
    (w1, b1), (w2, b2) = fc1, fc2
    tile = row_tile if row_tile is not None else mlp_row_tile(w1.shape[0])
    for start in range(0, flat.shape[0], tile):
        rows = F.layer_norm(flat[start:start + tile], flat.shape[-1:], norm.weight, norm.bias, norm.eps)
        hidden = linear(rows, w1, b1)
        torch.ops.aten.gelu_(hidden, approximate=approximate)  # in place: no second 4C-wide buffer
        z = linear(hidden, w2, b2)
        target = out_flat[start:start + tile]
        if gamma is None:
            target.add_(z)
        else:
            target.addcmul_(z, gamma)


def mlp_row_tile(hidden: int) -> int:
    """Rows per MLP tile for a ``hidden``-wide hidden layer: about 48 MB of fp32 activations (4096 rows of a
    768-wide block). On 2 cores 4096-row tiles ran the head faster than 1024-row ones (40 masks, AVX2: 4.8 vs
    5.8 s): each GEMM call repacks its weights and synchronises the threads. Peak memory stays bounded."""
    return max(256, _TILE_ELEMENTS // max(hidden, 1))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``F.linear`` for ``x`` [M, K] and ``weight`` [N, K] -> [M, N], on the faster fp32 CPU GEMM library.

    Inference only: oneDNN's linear (chosen by :func:`maskadapter.precision.cpu_gemm_backend`) records no
    autograd graph and ignores autocast, so it runs only for fp32 CPU tensors outside both (and outside
    ``torch.compile``, which picks its own GEMM).
    """
    if (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling() and cpu_gemm_backend() == "onednn"):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)
