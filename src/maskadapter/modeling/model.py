"""MaskAdapterModel: frozen CLIP + Mask-Adapter head + void embedding, with the official key layout.

Its attributes are named like the official meta-architecture (``backbone.clip_model``, ``mask_adapter``,
``void_embedding``), so the matching parts of a released checkpoint load strictly. Mask generators
(FC-CLIP, MAFT+, SAM) are composed around this model by the inference code.
"""

from __future__ import annotations

import logging
import os
from typing import Mapping, Optional, Sequence, Union

import torch
from torch import nn

from ..checkpoint import CheckpointError, load_part, read_state_dict, split_checkpoint
from ..config import ClipConfig, HeadConfig
from .clip_backbone import ClipBackbone, DenseProjection
from .generators.cdt import CDTMode, ContentDependentTransfer
from .generators.fcclip import FCCLIPHead, FCCLIPHeadConfig
from .head import HeadPath, MaskAdapterHead
from .pooling import activation_pool, mask_embeddings
from .text import append_void, classification_logits

__all__ = ["MaskAdapterModel"]

logger = logging.getLogger(__name__)


class MaskAdapterModel(nn.Module):
    """Classifies arbitrary masks of an image against text embeddings with the Mask-Adapter."""

    def __init__(
        self,
        clip: ClipConfig,
        head: Optional[HeadConfig] = None,
        dense_projection: DenseProjection = "standard",
        generator: Optional[FCCLIPHeadConfig] = None,
        cdt_mode: Optional[CDTMode] = None,
        cdt_heads: int = 8,
    ) -> None:
        super().__init__()
        self.backbone = ClipBackbone(clip)
        D = self.backbone.embed_dim
        head = head or HeadConfig(clip_dim=D)
        if head.clip_dim != D:
            raise ValueError(f"head clip_dim {head.clip_dim} differs from the CLIP embedding width {D}")
        self.mask_adapter = MaskAdapterHead.from_config(head)
        self.void_embedding = nn.Embedding(1, D)
        self.dense_projection = dense_projection
        # Optional parts, named like the official meta-architectures' attributes.
        self.sem_seg_head = FCCLIPHead(generator) if generator is not None else None
        self.cdt = ContentDependentTransfer(D, cdt_heads, cdt_mode) if cdt_mode is not None else None

    def load_official(self, source: Union[str, os.PathLike, Mapping[str, torch.Tensor]]) -> list[str]:
        """Load every part this model has (``backbone.clip_model``, ``mask_adapter``, ``void_embedding``, and
        ``sem_seg_head`` / ``cdt`` when present) strictly from an official checkpoint (path or state dict);
        returns the checkpoint parts this model does not use."""
        state = read_state_dict(source) if isinstance(source, (str, os.PathLike)) else source
        split = split_checkpoint(state)
        targets = {"backbone.clip_model": self.backbone.clip_model, "mask_adapter": self.mask_adapter,
                   "void_embedding": self.void_embedding}
        for part in ("sem_seg_head", "cdt"):
            if getattr(self, part) is not None:
                targets[part] = getattr(self, part)
        absent = [p for p in targets if p not in split.parts]
        if absent:
            raise CheckpointError(f"checkpoint has no keys for {', '.join(p + '.*' for p in absent)}; "
                                  f"it holds {', '.join(sorted(split.parts)) or 'no known part'}")
        for part, module in targets.items():
            load_part(module, split.parts[part], part)
        unused = sorted(set(split.parts) - set(targets)) + split.unknown
        if split.unknown:
            logger.warning("checkpoint keys outside the official layout were not loaded: %s", split.unknown[:10])
        return unused

    def dense_features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Backbone features of normalised padded ``images`` [B, 3, H, W] plus ``clip_vis_dense_proj`` [B, D, h, w]."""
        feats = self.backbone(images)
        feats["clip_vis_dense_proj"] = self.backbone.project_dense(feats["clip_vis_dense"], self.dense_projection)
        return feats

    def embed_masks(
        self,
        features: Mapping[str, torch.Tensor],
        masks: torch.Tensor,
        path: HeadPath = "fast",
        chunk_size: Optional[int] = None,
    ) -> torch.Tensor:
        """Mask embeddings [B, N, D] of ``masks`` [B, N, Hm, Wm] given :meth:`dense_features` output."""
        maps = self.mask_adapter(features["clip_vis_dense_proj"], masks, path=path, chunk_size=chunk_size)
        pooled = activation_pool(maps, features["clip_vis_dense"])
        return mask_embeddings(pooled, self.backbone.project_pooled, self.mask_adapter.num_output_maps)

    def adapter_text(self, features: Mapping[str, torch.Tensor], text: torch.Tensor) -> torch.Tensor:
        """The text classifier the adapter branch compares with: ``text`` [S+1, D], or with a CDT the
        per-image transfer [B, S+1, D] computed from the projected dense map."""
        if self.cdt is None:
            return text
        return self.cdt(features["clip_vis_dense_proj"], text)

    def classify(self, embeddings: torch.Tensor, text: torch.Tensor, num_synonyms: Sequence[int],
                 with_void: bool = True) -> torch.Tensor:
        """Logits [B, N, C(+1)] of ``embeddings`` [B, N, D] against synonym embeddings ``text`` [S, D]
        (void appended last when ``with_void``), with CLIP's logit scale."""
        if with_void:
            text = append_void(text, self.void_embedding.weight)
        return classification_logits(embeddings, text, self.backbone.logit_scale, num_synonyms)
