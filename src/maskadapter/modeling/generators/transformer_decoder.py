"""FC-CLIP's masked-attention transformer decoder (Mask2Former style) with its in-vocabulary CLIP classifier.

Behaviour equals the official ``MultiScaleMaskedTransformerDecoder`` of FC-CLIP (also used, unchanged, by
MAFT+ with 100 queries). Attribute names equal the official ones, so a checkpoint's
``sem_seg_head.predictor.*`` tensors load strictly once that prefix is removed.

Each of ``dec_layers`` layers runs masked cross-attention to one feature level (res5, res4, res3 in
turn), then self-attention among the queries, then an FFN, all post-norm with dropout 0. Before the
first layer and after every layer, the prediction heads give mask logits and class logits; the mask
logits of one step decide which pixels the queries of the next step may attend to.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..pooling import mask_pool
from ..text import classification_logits
from .position_encoding import PositionEmbeddingSine

__all__ = [
    "TransformerDecoderConfig", "FCCLIPTransformerDecoder",
    "SelfAttentionLayer", "CrossAttentionLayer", "FFNLayer", "MLP",
]

# The decoder always reads three feature levels (res5, res4, res3); ``level_embed`` has one row each.
NUM_FEATURE_LEVELS = 3


@dataclass(frozen=True)
class TransformerDecoderConfig:
    """Decoder sizes; the defaults are FC-CLIP-L's (the official DEC_LAYERS 10 means 10 - 1 = 9 layers)."""

    in_channels: int = 256
    hidden_dim: int = 256
    num_queries: int = 250
    nheads: int = 8
    dim_feedforward: int = 2048
    dec_layers: int = 9
    pre_norm: bool = False
    mask_dim: int = 256
    enforce_input_project: bool = False
    clip_embedding_dim: int = 768

    def __post_init__(self) -> None:
        for name in ("in_channels", "hidden_dim", "num_queries", "nheads", "dim_feedforward",
                     "mask_dim", "clip_embedding_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(self.dec_layers, int) or self.dec_layers < 0:
            raise ValueError(f"dec_layers must be an int >= 0, got {self.dec_layers!r}")
        if self.hidden_dim % self.nheads:
            raise ValueError(f"hidden_dim {self.hidden_dim} must be divisible by nheads {self.nheads}")
        # The sine encoding gives hidden_dim / 2 channels per axis, interleaving sin and cos pairs.
        if self.hidden_dim % 4:
            raise ValueError(f"hidden_dim must be a multiple of 4 for the sine encoding, got {self.hidden_dim}")
        # Mask-pooled mask features go through a hidden_dim LayerNorm and are added to the query features.
        if self.mask_dim != self.hidden_dim:
            raise ValueError(f"mask_dim ({self.mask_dim}) must equal hidden_dim ({self.hidden_dim}): the decoder "
                             "adds mask-pooled mask features to its query features")


def _xavier_matrices_(module: nn.Module) -> None:
    # The official layers re-initialise every matrix (not the vectors) with Xavier-uniform.
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


def _with_pos(x: torch.Tensor, pos: Optional[torch.Tensor]) -> torch.Tensor:
    return x if pos is None else x + pos


class SelfAttentionLayer(nn.Module):
    """Query self-attention with residual and LayerNorm on ``tgt`` [Q, B, C] (post-norm unless ``normalize_before``)."""

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, normalize_before: bool = False) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        _xavier_matrices_(self)

    def forward(self, tgt: torch.Tensor, query_pos: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``tgt`` and ``query_pos`` [Q, B, C] -> [Q, B, C]."""
        x = self.norm(tgt) if self.normalize_before else tgt
        q = k = _with_pos(x, query_pos)
        # need_weights=False lets PyTorch use its fused attention; the official discards the weights anyway.
        out = tgt + self.dropout(self.self_attn(q, k, value=x, need_weights=False)[0])
        return out if self.normalize_before else self.norm(out)


class CrossAttentionLayer(nn.Module):
    """Queries [Q, B, C] attend to ``memory`` [HW, B, C] under ``memory_mask`` [B*heads, Q, HW] (True = blocked)."""

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, normalize_before: bool = False) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        _xavier_matrices_(self)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, memory_mask: Optional[torch.Tensor] = None,
                pos: Optional[torch.Tensor] = None, query_pos: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``tgt`` [Q, B, C], ``memory``/``pos`` [HW, B, C], ``memory_mask`` bool [B*heads, Q, HW] -> [Q, B, C]."""
        x = self.norm(tgt) if self.normalize_before else tgt
        attended = self.multihead_attn(query=_with_pos(x, query_pos), key=_with_pos(memory, pos), value=memory,
                                       attn_mask=memory_mask, need_weights=False)[0]
        out = tgt + self.dropout(attended)
        return out if self.normalize_before else self.norm(out)


class FFNLayer(nn.Module):
    """Two-layer ReLU feed-forward block with residual and LayerNorm on [..., C]."""

    def __init__(self, d_model: int, dim_feedforward: int = 2048, dropout: float = 0.0,
                 normalize_before: bool = False) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.normalize_before = normalize_before
        _xavier_matrices_(self)

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        """[..., C] -> [..., C]."""
        x = self.norm(tgt) if self.normalize_before else tgt
        out = tgt + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(x)))))
        return out if self.normalize_before else self.norm(out)


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (none after the last): [..., in] -> [..., out]."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., input_dim] -> [..., output_dim]."""
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == last else F.relu(layer(x))
        return x


class FCCLIPTransformerDecoder(nn.Module):
    """FC-CLIP's masked-attention decoder: 3 feature levels + mask features -> Q mask logits and in-vocab class logits.

    Build it from a :class:`TransformerDecoderConfig`, keyword overrides of one, or both:
    ``FCCLIPTransformerDecoder(num_queries=100, clip_embedding_dim=640)``.
    """

    def __init__(self, config: Optional[TransformerDecoderConfig] = None, **overrides: Any) -> None:
        super().__init__()
        cfg = dataclasses.replace(config or TransformerDecoderConfig(), **overrides)
        self.config = cfg
        h = cfg.hidden_dim
        self.num_heads = cfg.nheads
        self.num_layers = cfg.dec_layers
        self.num_queries = cfg.num_queries
        self.num_feature_levels = NUM_FEATURE_LEVELS
        # Holds no parameters or buffers, so it adds no state-dict keys (as in the official module).
        self.pe_layer = PositionEmbeddingSine(h // 2, normalize=True)
        layer_args = dict(d_model=h, dropout=0.0, normalize_before=cfg.pre_norm)
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(nhead=cfg.nheads, **layer_args) for _ in range(cfg.dec_layers))
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(nhead=cfg.nheads, **layer_args) for _ in range(cfg.dec_layers))
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(dim_feedforward=cfg.dim_feedforward, **layer_args) for _ in range(cfg.dec_layers))
        self.decoder_norm = nn.LayerNorm(h)
        self.query_feat = nn.Embedding(cfg.num_queries, h)
        self.query_embed = nn.Embedding(cfg.num_queries, h)
        self.level_embed = nn.Embedding(NUM_FEATURE_LEVELS, h)
        self.input_proj = nn.ModuleList(_input_projection(cfg) for _ in range(NUM_FEATURE_LEVELS))
        self.mask_embed = MLP(h, h, cfg.mask_dim, 3)
        self._mask_pooling_proj = nn.Sequential(nn.LayerNorm(h), nn.Linear(h, h))
        self.class_embed = MLP(h, h, cfg.clip_embedding_dim, 3)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(
        self,
        multi_scale_features: Sequence[torch.Tensor],
        mask_features: torch.Tensor,
        text_classifier: torch.Tensor,
        num_synonyms: Sequence[int],
    ) -> dict[str, Any]:
        """Decode ``multi_scale_features`` (3 x [B, C_in, h_l, w_l], res5 -> res3) and ``mask_features`` [B, C, H4, W4].

        ``text_classifier`` [S+1, D] or [B, S+1, D] holds normalised synonym embeddings with void last.
        Returns ``pred_logits`` [B, Q, C+1] and ``pred_masks`` [B, Q, H4, W4] (logits); in training mode
        also ``aux_outputs``, the same pair for the query features and every layer but the last.
        """
        self._check_inputs(multi_scale_features, mask_features)
        src, pos, sizes = self._flatten_levels(multi_scale_features)
        batch = mask_features.shape[0]
        query_pos = self.query_embed.weight.unsqueeze(1).expand(-1, batch, -1)
        output = self.query_feat.weight.unsqueeze(1).expand(-1, batch, -1)
        heads = dict(mask_features=mask_features, text_classifier=text_classifier, num_synonyms=num_synonyms,
                     resized_features={})
        # At inference only the last step's outputs are returned, so intermediate steps skip the classifier
        # (mask pooling + class MLP + text matching) and compute their masks at the attention mask's size only.
        # No step after the last needs an attention mask.
        n, training = self.num_layers, self.training
        logits, masks, attn_mask = self._predict(output, attn_size=sizes[0] if n else None,
                                                 classify=training or n == 0, **heads)
        aux = []
        for i in range(n):
            if training:
                aux.append({"pred_logits": logits, "pred_masks": masks})
            level = i % NUM_FEATURE_LEVELS
            output = self.transformer_cross_attention_layers[i](
                output, src[level], memory_mask=attn_mask, pos=pos[level], query_pos=query_pos)
            output = self.transformer_self_attention_layers[i](output, query_pos=query_pos)
            output = self.transformer_ffn_layers[i](output)
            last = i == n - 1
            logits, masks, attn_mask = self._predict(
                output, attn_size=None if last else sizes[(i + 1) % NUM_FEATURE_LEVELS],
                classify=training or last, **heads)
        out: dict[str, Any] = {"pred_logits": logits, "pred_masks": masks}
        if training:
            out["aux_outputs"] = aux
        return out

    def _predict(
        self,
        output: torch.Tensor,
        mask_features: torch.Tensor,
        text_classifier: torch.Tensor,
        num_synonyms: Sequence[int],
        attn_size: Optional[tuple[int, int]],
        classify: bool,
        resized_features: dict,
    ) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Heads on queries [Q, B, C]: class logits [B, Q, C+1] | None, masks [B, Q, H4, W4] | None (an
        intermediate step at inference), attention mask | None."""
        decoded = self.decoder_norm(output).transpose(0, 1)  # [B, Q, C]
        if not classify and attn_size is not None:
            # Only the attention mask is needed. Bilinear resizing is linear, so resizing the mask features
            # (once per size) and then projecting equals resizing the projected masks up to float rounding,
            # at a fraction of the cost (250 queries at 1/4 resolution: about 0.6 s per image on 2 cores).
            if attn_size not in resized_features:
                resized_features[attn_size] = F.interpolate(mask_features, size=attn_size, mode="bilinear",
                                                            align_corners=False)
            small = torch.einsum("bqc,bchw->bqhw", self.mask_embed(decoded), resized_features[attn_size])
            return None, None, self._attention_mask(small)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(decoded), mask_features)
        logits = None
        if classify:
            pooled = mask_pool(mask_features, masks, threshold=0.0)
            class_emb = self.class_embed(self._mask_pooling_proj(pooled) + decoded)
            logits = classification_logits(class_emb, text_classifier, self.logit_scale, num_synonyms)
        attn_mask = None if attn_size is None else self._attention_mask(
            F.interpolate(masks, size=attn_size, mode="bilinear", align_corners=False))
        return logits, masks, attn_mask

    def _attention_mask(self, resized: torch.Tensor) -> torch.Tensor:
        """Bool [B*heads, Q, h*w] from mask logits at the attended level's size [B, Q, h, w]: True where a
        query may not attend."""
        # The official tests sigmoid < 0.5 rather than logit < 0; they differ for logits within
        # rounding of 0, so the official form is kept.
        blocked = resized.sigmoid().flatten(2) < 0.5
        # A query blocked everywhere would get an all -inf softmax (NaN); the official lets it see everything.
        blocked = blocked & ~blocked.all(dim=-1, keepdim=True)
        # nn.MultiheadAttention wants one mask per (image, head), image-major.
        return blocked.repeat_interleave(self.num_heads, dim=0).detach()

    def _flatten_levels(
        self, features: Sequence[torch.Tensor],
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple[int, int]]]:
        """Per level: projected features + level embedding [hw, B, C], sine positions [hw, B, C], size (h, w)."""
        src, pos, sizes = [], [], []
        for i, x in enumerate(features):
            sizes.append((int(x.shape[-2]), int(x.shape[-1])))
            feat = self.input_proj[i](x).flatten(2) + self.level_embed.weight[i][None, :, None]
            src.append(feat.permute(2, 0, 1))
            # The sine encoding is computed in fp32; match the features so half-precision models work.
            pos.append(self.pe_layer(x).flatten(2).permute(2, 0, 1).to(feat.dtype))
        return src, pos, sizes

    def _check_inputs(self, features: Sequence[torch.Tensor], mask_features: torch.Tensor) -> None:
        cfg = self.config
        if len(features) != NUM_FEATURE_LEVELS:
            raise ValueError(f"expected {NUM_FEATURE_LEVELS} feature levels (res5, res4, res3), got {len(features)}")
        if mask_features.dim() != 4 or mask_features.shape[1] != cfg.mask_dim:
            raise ValueError(f"mask_features must have shape [B, {cfg.mask_dim}, H, W], "
                             f"got {list(mask_features.shape)}")
        for i, x in enumerate(features):
            if x.dim() != 4 or x.shape[1] != cfg.in_channels or x.shape[0] != mask_features.shape[0]:
                raise ValueError(f"feature level {i} must have shape [{mask_features.shape[0]}, "
                                 f"{cfg.in_channels}, h, w], got {list(x.shape)}")


def _input_projection(cfg: TransformerDecoderConfig) -> nn.Module:
    """1x1 conv to hidden_dim when the widths differ (or it is enforced), else a key-less identity."""
    if cfg.in_channels == cfg.hidden_dim and not cfg.enforce_input_project:
        return nn.Identity()
    conv = nn.Conv2d(cfg.in_channels, cfg.hidden_dim, kernel_size=1)
    # detectron2's c2_xavier_fill, as the official uses.
    nn.init.kaiming_uniform_(conv.weight, a=1)
    nn.init.zeros_(conv.bias)
    return conv
