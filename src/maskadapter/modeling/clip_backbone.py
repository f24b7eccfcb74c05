"""Frozen open_clip ConvNeXt CLIP: multi-scale and dense features, projections, text encoding.

The wrapped open_clip model is the attribute ``clip_model``, so a parent module that names this wrapper
``backbone`` loads the official ``backbone.clip_model.*`` keys strictly.
"""

from __future__ import annotations

import hashlib
from typing import Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ClipConfig
from ..constants import PIXEL_MEAN, PIXEL_STD
from .layers import convnext_block_nhwc

__all__ = ["ClipBackbone", "DenseProjection"]

DenseProjection = Literal["standard", "maft_legacy"]


class ClipBackbone(nn.Module):
    """Frozen open_clip ConvNeXt CLIP (visual trunk + head, text tower), always in eval mode."""

    def __init__(self, config: ClipConfig) -> None:
        super().__init__()
        config.validate()
        import open_clip
        from open_clip.tokenizer import SimpleTokenizer

        cfg = dict(config.model_cfg)
        # Never fetch trunk weights from a hub: weights come from a state dict.
        cfg["vision_cfg"] = {**cfg["vision_cfg"], "timm_model_pretrained": False}
        self.config = config
        self.clip_model = open_clip.CLIP(**cfg)
        self._tokenizer = SimpleTokenizer(context_length=cfg["text_cfg"].get("context_length", 77))
        for p in self.clip_model.parameters():
            p.requires_grad_(False)
        trunk = self.clip_model.visual.trunk
        self.out_channels = {f"res{i + 2}": int(info["num_chs"])
                             for i, info in enumerate(trunk.feature_info)}
        self.out_channels["clip_vis_dense"] = self.out_channels["res5"]
        self.clip_model.eval()
        self._fingerprint: tuple[tuple, str] = ((), "")

    # ------------------------------------------------------------------ sizes
    @property
    def embed_dim(self) -> int:
        """D, the joint embedding width (768 for ConvNeXt-L, 640 for ConvNeXt-B)."""
        return self.config.embed_dim

    @property
    def dense_dim(self) -> int:
        """Cv, the trunk width at stride 32 (1536 for ConvNeXt-L, 1024 for ConvNeXt-B)."""
        return self.out_channels["res5"]

    @property
    def logit_scale(self) -> torch.Tensor:
        """CLIP's logit scale as stored (log space, a 0-d tensor)."""
        return self.clip_model.logit_scale

    def train(self, mode: bool = True) -> "ClipBackbone":
        """CLIP stays in eval mode whatever ``mode`` is (no drop path on frozen weights)."""
        super().train(mode)
        self.clip_model.eval()
        return self

    # ------------------------------------------------------------------ images
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise RGB ``images`` [B, 3, H, W] on the 0-255 scale with CLIP's mean and std."""
        mean = images.new_tensor(PIXEL_MEAN).view(1, 3, 1, 1)
        std = images.new_tensor(PIXEL_STD).view(1, 3, 1, 1)
        return (images - mean) / std

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features of normalised ``images`` [B, 3, H, W] (H, W multiples of 32): res2..res5 and the raw
        stride-32 map ``clip_vis_dense`` [B, Cv, H/32, W/32], all contiguous NCHW.

        The same network as open_clip's trunk, computed in channels_last: the depthwise convs need no layout
        reorders, the block MLPs read the NHWC activations without permute copies and add into them in place
        (:func:`convnext_block_nhwc`), and only the four returned maps are converted to NCHW.
        """
        _check_images(images)
        trunk = self.clip_model.visual.trunk
        x = trunk.stem(images.contiguous(memory_format=torch.channels_last))
        out: dict[str, torch.Tensor] = {}
        for i, stage in enumerate(trunk.stages):
            x = stage.downsample(x)
            if i > 0 and isinstance(stage.downsample, nn.Identity):
                x = x.clone()  # the blocks update x in place: never the map returned for the previous stage
            for block in stage.blocks:
                x = _run_block(block, x)
            out[f"res{i + 2}"] = x.contiguous()
        dense = trunk.norm_pre(x)
        out["clip_vis_dense"] = out["res5"] if dense is x else dense.contiguous()
        return out

    def project_dense(self, raw: torch.Tensor, mode: DenseProjection = "standard") -> torch.Tensor:
        """Per-pixel CLIP projection of the raw map ``raw`` [B, Cv, h, w] -> [B, D, h, w].

        ``mode="standard"`` applies the trunk head norm and the visual head to every pixel vector (the
        FC-CLIP path). ``mode="maft_legacy"`` reproduces MAFT+'s reshape *without* a permute:
        each "pixel vector" is Cv consecutive memory elements of the NCHW map, mixing channels and
        pixels. It is wrong as geometry, but the released MAFT+ adapters and CDT were trained on it.
        """
        _check_dense(raw, self.dense_dim, "raw")
        B, Cv, h, w = raw.shape
        head = self.clip_model.visual.trunk.head
        if mode == "standard":
            x = head.drop(head.norm(raw).permute(0, 2, 3, 1))
            return self.clip_model.visual.head(x).permute(0, 3, 1, 2)
        if mode == "maft_legacy":
            x = self.project_pooled(raw.contiguous().view(1, B * h * w, Cv))
            return x.view(B, h, w, -1).permute(0, 3, 1, 2)
        raise ValueError(f"mode must be 'standard' or 'maft_legacy', got {mode!r}")

    def project_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """Project pooled trunk vectors ``pooled`` [B, M, Cv] into the joint space -> [B, M, D]."""
        if pooled.dim() != 3 or pooled.shape[-1] != self.dense_dim:
            raise ValueError(f"pooled must have shape [B, M, {self.dense_dim}], got {list(pooled.shape)}")
        B, M, Cv = pooled.shape
        head = self.clip_model.visual.trunk.head
        # The trunk head's LayerNorm2d normalises over channels of a [*, Cv, 1, 1] map, which is a
        # plain layer norm over the last axis of the flat vectors.
        x = F.layer_norm(pooled, (Cv,), head.norm.weight, head.norm.bias, head.norm.eps)
        x = self.clip_model.visual.head(head.drop(x))
        return x

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP image embedding (global average pool) of normalised ``images`` [B, 3, H, W] -> [B, D]."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape [B, 3, H, W], got {list(images.shape)}")
        return self.clip_model.encode_image(images)

    # ------------------------------------------------------------------ text
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids [T, context_length] of ``texts`` with CLIP's BPE tokenizer (lower-cased, truncated)."""
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not a single string")
        return self._tokenizer(list(texts))

    @torch.no_grad()
    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Unnormalised text embeddings [T, D] of ``tokens`` [T, L]: the EOT token (highest id) after
        ``ln_final``, projected, as CLIP's ``encode_text``.

        The causal mask means the EOT output never sees later (padding) positions, so the sequence is cut
        after the last EOT of the batch: the same result, several times faster for short prompts.
        """
        m = self.clip_model
        tokens = tokens.to(self.logit_scale.device)
        eot = tokens.argmax(dim=-1)
        length = int(eot.max()) + 1 if tokens.numel() else 1
        cast = m.transformer.get_cast_dtype()
        x = m.token_embedding(tokens[:, :length]).to(cast) + m.positional_embedding[:length].to(cast)
        mask = m.attn_mask[:length, :length] if m.attn_mask is not None else None
        x = m.ln_final(m.transformer(x, attn_mask=mask))
        x = x[torch.arange(x.shape[0], device=x.device), eot]
        return x @ m.text_projection if not isinstance(m.text_projection, nn.Linear) else m.text_projection(x)

    def text_tensors(self) -> dict[str, torch.Tensor]:
        """The text tower's weights by name (token and position embeddings, transformer, final norm, projection)."""
        m = self.clip_model
        out = {"token_embedding": m.token_embedding.weight, "positional_embedding": m.positional_embedding,
               "text_projection": m.text_projection if isinstance(m.text_projection, torch.Tensor)
               else m.text_projection.weight}
        out.update({f"transformer.{k}": v for k, v in m.transformer.named_parameters()})
        out.update({f"ln_final.{k}": v for k, v in m.ln_final.named_parameters()})
        return out

    def text_fingerprint(self) -> str:
        """A SHA-256 of the text tower's weights (every tensor's name, dtype, shape and bytes) that names this
        model in text-embedding caches. Computed once, and again only after the weights changed (any in-place
        write, such as loading a checkpoint, bumps a tensor's version)."""
        tensors = self.text_tensors()
        key = (self.config.name,) + tuple((t.data_ptr(), t._version) for t in tensors.values())
        if self._fingerprint[0] != key:
            h = hashlib.sha256(self.config.name.encode())
            for name, t in tensors.items():
                h.update(f"{name}{t.dtype}{tuple(t.shape)}".encode())
                h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
            self._fingerprint = (key, h.hexdigest()[:16])
        return self._fingerprint[1]


def _run_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One timm ConvNeXt block on ``x`` [B, C, H, W] (channels_last, owned by the caller: updated in place) ->
    [B, C, H, W] channels_last; blocks of another design run as their own module."""
    mlp = getattr(block, "mlp", None)
    fc1, fc2 = _pointwise(getattr(mlp, "fc1", None)), _pointwise(getattr(mlp, "fc2", None))
    plain = (fc1 is not None and fc2 is not None and type(mlp).__name__ == "Mlp"
             and _gelu_kind(mlp.act) is not None and isinstance(mlp.norm, nn.Identity)
             and isinstance(getattr(block, "conv_dw", None), nn.Conv2d)
             and isinstance(getattr(block, "norm", None), nn.LayerNorm)
             and isinstance(getattr(block, "shortcut", None), nn.Identity)
             and (isinstance(getattr(block, "drop_path", None), nn.Identity) or not block.training)
             and x.is_contiguous(memory_format=torch.channels_last))
    if not plain:
        return block(x)
    nhwc = convnext_block_nhwc(x.permute(0, 2, 3, 1), block.conv_dw, block.norm, fc1, fc2,
                               getattr(block, "gamma", None), _gelu_kind(mlp.act), inplace=True)
    return nhwc.permute(0, 3, 1, 2)


def _pointwise(layer: Optional[nn.Module]) -> Optional[tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """(weight [out, in], bias) of a per-pixel layer: a Linear or a plain 1x1 Conv2d (timm's conv-MLP blocks)."""
    if isinstance(layer, nn.Linear):
        return layer.weight, layer.bias
    if (isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1) and layer.stride == (1, 1)
            and layer.groups == 1 and layer.padding in ((0, 0), "valid") and layer.dilation == (1, 1)
            and type(layer).forward is nn.Conv2d.forward):
        return layer.weight.flatten(1), layer.bias
    return None


def _gelu_kind(act: nn.Module) -> Optional[str]:
    """``approximate`` of a GELU module (torch's, or timm's exact one), None for another activation."""
    if isinstance(act, nn.GELU):
        return act.approximate
    if type(act).__name__ == "GELU" and type(act).__module__.startswith("timm."):
        return "none"  # timm's GELU module calls F.gelu(input): the exact erf form
    return None


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape [B, 3, H, W], got {list(images.shape)}")
    H, W = images.shape[-2:]
    if H < 32 or W < 32 or H % 32 or W % 32:
        raise ValueError(f"image height and width must be positive multiples of 32 (pad the input), "
                         f"got {H}x{W}")


def _check_dense(x: torch.Tensor, channels: int, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"{name} must have shape [B, {channels}, h, w], got {list(x.shape)}")
