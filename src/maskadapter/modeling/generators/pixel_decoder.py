"""FC-CLIP's (= Mask2Former's) multi-scale deformable-attention pixel decoder, in pure PyTorch.

Attribute names equal the official ones, so ``sem_seg_head.pixel_decoder.*`` loads strictly:
``input_proj.{i}`` (coarsest level first), ``transformer.level_embed``, ``transformer.encoder.layers.{j}``,
``mask_features``, and one FPN step per extra level (``adapter_{k}``, ``layer_{k}``, detectron2 style
convolutions whose norm lives under ``.norm``).

The whole decoder runs in fp32 with autocast off, as the official one does (its CUDA op had no half
kernel); an fp64 copy of the module runs in fp64, which parity tests use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .deform_attn import MSDeformAttn
from .position_encoding import PositionEmbeddingSine

__all__ = ["PixelDecoderConfig", "ConvNormAct", "DeformableEncoderLayer", "DeformableEncoder",
           "DeformableTransformerEncoderOnly", "MSDeformAttnPixelDecoder"]

_DEFAULT_STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


@dataclass(frozen=True)
class PixelDecoderConfig:
    """Pixel decoder sizes; the defaults are FC-CLIP's (6 layers, 8 heads, 256 dims, GN 32, stride 4)."""

    in_channels: dict[str, int] = field(hash=False)
    conv_dim: int = 256
    mask_dim: int = 256
    num_encoder_layers: int = 6
    nheads: int = 8
    dim_feedforward: int = 1024
    dropout: float = 0.0
    n_points: int = 4
    num_groups: int = 32
    common_stride: int = 4
    transformer_in_features: tuple[str, ...] = ("res3", "res4", "res5")
    strides: dict[str, int] = field(default_factory=lambda: dict(_DEFAULT_STRIDES), hash=False)

    def validate(self) -> None:
        """Raise ValueError for sizes the decoder cannot be built with."""
        unknown = [k for k in self.in_channels if k not in self.strides]
        if unknown:
            raise ValueError(f"no stride known for input features {unknown}; pass strides={{name: stride}}")
        missing = [k for k in self.transformer_in_features if k not in self.in_channels]
        if missing:
            raise ValueError(f"transformer_in_features {missing} are not among in_channels {list(self.in_channels)}")
        if self.conv_dim % self.num_groups or self.conv_dim % self.nheads:
            raise ValueError(f"conv_dim {self.conv_dim} must be divisible by num_groups {self.num_groups} "
                             f"and nheads {self.nheads}")
        finest = min(self.strides[k] for k in self.transformer_in_features)
        if finest < self.common_stride or finest % self.common_stride:
            raise ValueError(f"common_stride {self.common_stride} must divide the finest encoder stride {finest}")


class ConvNormAct(nn.Conv2d):
    """Conv2d, then optional ``norm`` and activation (detectron2's ``Conv2d``): [B,Cin,H,W] -> [B,Cout,H',W']."""

    def __init__(self, *args: object, norm: Optional[nn.Module] = None,
                 activation: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.norm = norm
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve, normalise, activate."""
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


def _c2_xavier_fill(conv: nn.Conv2d) -> None:
    # Caffe2's "XavierFill" as detectron2 implements it: kaiming-uniform with a=1, zero bias.
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class DeformableEncoderLayer(nn.Module):
    """Post-norm encoder layer: deformable self-attention, then a ReLU FFN; src [B,S,C] -> [B,S,C]."""

    def __init__(self, d_model: int = 256, d_ffn: int = 1024, dropout: float = 0.0, n_levels: int = 3,
                 n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, reference_points: torch.Tensor,
                spatial_shapes: torch.Tensor, level_start_index: torch.Tensor) -> torch.Tensor:
        """One layer: src, pos [B,S,C], reference_points [B,S,L,2] -> [B,S,C]."""
        attn = self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start_index)
        src = self.norm1(src + self.dropout1(attn))
        # In-place ReLU saves one [B,S,d_ffn] buffer; autograd allows it (ReLU's backward uses its output).
        ffn = self.linear2(self.dropout2(F.relu(self.linear1(src), inplace=True)))
        return self.norm2(src + self.dropout3(ffn))


class DeformableEncoder(nn.Module):
    """A stack of :class:`DeformableEncoderLayer` (official ``encoder.layers``); src [B,S,C] -> [B,S,C]."""

    def __init__(self, layer_kwargs: Mapping[str, object], num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(**layer_kwargs) for _ in range(num_layers))  # type: ignore[arg-type]

    @staticmethod
    def reference_points(spatial_shapes: Sequence[tuple[int, int]], batch: int, dtype: torch.dtype,
                         device: torch.device) -> torch.Tensor:
        """Normalised (x, y) cell centres of every level, repeated for all levels: [B, S, L, 2].

        Without padding masks all valid ratios are 1, so the official rescaling by them is the identity.
        """
        per_level = []
        for h, w in spatial_shapes:
            ys = torch.linspace(0.5, h - 0.5, h, dtype=dtype, device=device) / h
            xs = torch.linspace(0.5, w - 0.5, w, dtype=dtype, device=device) / w
            per_level.append(torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2))
        ref = torch.cat(per_level, 0)
        return ref[None, :, None, :].expand(batch, -1, len(spatial_shapes), 2)

    def forward(self, src: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
                pos: torch.Tensor) -> torch.Tensor:
        """Run all layers: src, pos [B,S,C], spatial_shapes [L,2] -> [B,S,C]."""
        shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
        ref = self.reference_points(shapes, src.shape[0], src.dtype, src.device)
        for layer in self.layers:
            src = layer(src, pos, ref, spatial_shapes, level_start_index)
        return src


class DeformableTransformerEncoderOnly(nn.Module):
    """Flattens L maps, adds level embeddings, runs the deformable encoder: L x [B,C,h,w] -> [B, sum h*w, C]."""

    def __init__(self, d_model: int = 256, nhead: int = 8, num_encoder_layers: int = 6,
                 dim_feedforward: int = 1024, dropout: float = 0.0, num_feature_levels: int = 3,
                 enc_n_points: int = 4) -> None:
        super().__init__()
        layer_kwargs = dict(d_model=d_model, d_ffn=dim_feedforward, dropout=dropout,
                            n_levels=num_feature_levels, n_heads=nhead, n_points=enc_n_points)
        self.encoder = DeformableEncoder(layer_kwargs, num_encoder_layers)
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Official init: xavier on every matrix, then the deformable-attention init, N(0,1) level embeddings."""
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, srcs: Sequence[torch.Tensor], pos_embeds: Sequence[torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode: srcs, pos_embeds L x [B,C,h,w] -> (memory [B,S,C], spatial_shapes [L,2], level_start_index [L])."""
        shapes = [(src.shape[2], src.shape[3]) for src in srcs]
        src_flat = torch.cat([src.flatten(2).transpose(1, 2) for src in srcs], 1)
        pos_flat = torch.cat([pos.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1)
                              for lvl, pos in enumerate(pos_embeds)], 1)
        spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=src_flat.device)
        level_start_index = torch.cat((spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1]))
        memory = self.encoder(src_flat, spatial_shapes, level_start_index, pos_flat)
        return memory, spatial_shapes, level_start_index


class MSDeformAttnPixelDecoder(nn.Module):
    """FC-CLIP pixel decoder: {res2..res5} -> (mask features [B,mask_dim,H/4,W/4], [res5, res4, res3] x [B,conv_dim,h,w])."""

    def __init__(self, in_channels: Mapping[str, int], *, conv_dim: int = 256, mask_dim: int = 256,
                 num_encoder_layers: int = 6, nheads: int = 8, dim_feedforward: int = 1024,
                 dropout: float = 0.0, n_points: int = 4, num_groups: int = 32, common_stride: int = 4,
                 transformer_in_features: Sequence[str] = ("res3", "res4", "res5"),
                 strides: Optional[Mapping[str, int]] = None) -> None:
        super().__init__()
        config = PixelDecoderConfig(dict(in_channels), conv_dim, mask_dim, num_encoder_layers, nheads,
                                    dim_feedforward, dropout, n_points, num_groups, common_stride,
                                    tuple(transformer_in_features), dict(strides or _DEFAULT_STRIDES))
        config.validate()
        self.config = config
        # Features sorted fine to coarse, as the official code sorts them by stride.
        self.in_features = sorted(config.in_channels, key=lambda k: config.strides[k])
        self.transformer_in_features = sorted(config.transformer_in_features, key=lambda k: config.strides[k])
        self.input_proj = nn.ModuleList()
        for name in self.transformer_in_features[::-1]:  # coarsest first (res5, res4, res3)
            proj = nn.Sequential(nn.Conv2d(config.in_channels[name], conv_dim, kernel_size=1),
                                 nn.GroupNorm(num_groups, conv_dim))
            nn.init.xavier_uniform_(proj[0].weight)
            nn.init.zeros_(proj[0].bias)
            self.input_proj.append(proj)
        self.transformer = DeformableTransformerEncoderOnly(
            d_model=conv_dim, nhead=nheads, num_encoder_layers=num_encoder_layers, dim_feedforward=dim_feedforward,
            dropout=dropout, num_feature_levels=len(self.transformer_in_features), enc_n_points=n_points)
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, kernel_size=1)
        _c2_xavier_fill(self.mask_features)
        self.num_multi_scale = 3  # the transformer decoder always attends to 3 scales
        finest = config.strides[self.transformer_in_features[0]]
        self.num_fpn_levels = int(round(math.log2(finest) - math.log2(common_stride)))
        for idx, name in enumerate(self.in_features[:self.num_fpn_levels]):
            lateral = ConvNormAct(config.in_channels[name], conv_dim, kernel_size=1, bias=False,
                                  norm=nn.GroupNorm(num_groups, conv_dim))
            output = ConvNormAct(conv_dim, conv_dim, kernel_size=3, padding=1, bias=False,
                                 norm=nn.GroupNorm(num_groups, conv_dim), activation=F.relu)
            _c2_xavier_fill(lateral)
            _c2_xavier_fill(output)
            self.add_module(f"adapter_{idx + 1}", lateral)
            self.add_module(f"layer_{idx + 1}", output)

    @classmethod
    def from_config(cls, config: PixelDecoderConfig) -> "MSDeformAttnPixelDecoder":
        """Build a decoder from a :class:`PixelDecoderConfig`."""
        return cls(config.in_channels, conv_dim=config.conv_dim, mask_dim=config.mask_dim,
                   num_encoder_layers=config.num_encoder_layers, nheads=config.nheads,
                   dim_feedforward=config.dim_feedforward, dropout=config.dropout, n_points=config.n_points,
                   num_groups=config.num_groups, common_stride=config.common_stride,
                   transformer_in_features=config.transformer_in_features, strides=config.strides)

    def forward(self, features: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Same as :meth:`forward_features`."""
        return self.forward_features(features)

    def forward_features(self, features: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """{name: [B,C,H/s,W/s]} -> (mask_features [B,mask_dim,H/4,W/4], [res5, res4, res3] maps [B,conv_dim,h,w]).

        These are the first and third outputs of the official ``forward_features``; its second output
        is the first multi-scale map again.
        """
        device = next(iter(features.values())).device
        with torch.autocast(device_type=device.type, enabled=False):
            return self._forward_fp32(features)

    def _forward_fp32(self, features: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        # fp32 like the official `.float()`, or fp64 when the module itself was converted to fp64.
        dtype = torch.float64 if self.mask_features.weight.dtype == torch.float64 else torch.float32
        srcs, pos = [], []
        for proj, name in zip(self.input_proj, self.transformer_in_features[::-1]):
            x = features[name].to(dtype)
            srcs.append(proj(x))
            pos.append(self.pe_layer(x))
        memory, spatial_shapes, _ = self.transformer(srcs, pos)
        batch = memory.shape[0]
        sizes = [h * w for h, w in spatial_shapes.tolist()]
        # Contiguous NCHW maps: a transposed view would make the upsampled FPN input channels-last and
        # cost layout conversions in the convolutions and group norms after it.
        out = [z.transpose(1, 2).reshape(batch, -1, src.shape[2], src.shape[3]).contiguous()
               for z, src in zip(memory.split(sizes, dim=1), srcs)]
        # Top-down FPN steps from the finest encoder level to common_stride (one step, res2, for FC-CLIP).
        for idx in range(self.num_fpn_levels, 0, -1):
            x = features[self.in_features[idx - 1]].to(dtype)
            lateral = getattr(self, f"adapter_{idx}")(x)
            # Bilinear, although the official comment speaks of nearest upsampling "following FPN".
            y = lateral + F.interpolate(out[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            out.append(getattr(self, f"layer_{idx}")(y))
        return self.mask_features(out[-1]), out[:self.num_multi_scale]
