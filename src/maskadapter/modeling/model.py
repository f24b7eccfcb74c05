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
from .cdt import CDTMode, ContentDependentTransfer
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

    def part_modules(self) -> dict[str, nn.Module]:
        """The official checkpoint parts this model has, each with the module it loads into."""
        parts = {"backbone.clip_model": self.backbone.clip_model, "sem_seg_head": self.sem_seg_head,
                 "mask_adapter": self.mask_adapter, "void_embedding": self.void_embedding, "cdt": self.cdt}
        return {name: module for name, module in parts.items() if module is not None}

    def load_official(self, source: Union[str, os.PathLike, Mapping[str, torch.Tensor]],
                      parts: Optional[Sequence[str]] = None, require_all: bool = True,
                      name: Optional[str] = None) -> list[str]:
        """Load parts of an official checkpoint (path or state dict) strictly; returns the checkpoint parts
        that were not loaded.

        ``parts``: the parts to load (each must be in the model and the file); None: every part the model has
        (``backbone.clip_model``, ``mask_adapter``, ``void_embedding``, and ``sem_seg_head`` / ``cdt`` when
        present), all required unless ``require_all=False``, which loads those the file holds.
        Errors are :class:`CheckpointError` naming the file (or ``name``, for a state dict read elsewhere).
        """
        if isinstance(source, (str, os.PathLike)):
            name, state = str(source), read_state_dict(source)
        elif isinstance(source, Mapping):
            name, state = name or "the state dict", source
        else:
            raise TypeError(f"source must be a checkpoint path or a state dict, got {type(source).__name__}")
        split = split_checkpoint(state)
        modules = self.part_modules()
        if parts is not None:
            unknown = [p for p in parts if p not in modules]
            if unknown:
                raise ValueError(f"the model has no part {', '.join(map(repr, unknown))} (it has {', '.join(modules)})")
            modules = {p: modules[p] for p in parts}
        absent = [p for p in modules if p not in split.parts]
        if absent and (require_all or parts is not None):
            raise CheckpointError(f"{name} has no keys for {', '.join(p + '.*' for p in absent)}; it holds "
                                  f"{', '.join(sorted(split.parts)) or 'no known part'}")
        for part, module in modules.items():
            if part in split.parts:
                try:
                    load_part(module, split.parts[part], part)
                except CheckpointError as exc:
                    raise CheckpointError(f"{name}: {exc}") from exc
        loaded = [p for p in modules if p in split.parts]
        logger.info("loaded %s from %s", ", ".join(loaded) or "nothing", name)
        if split.unknown:
            logger.warning("%s: keys outside the official layout were not loaded: %s", name, split.unknown[:10])
        return sorted(set(split.parts) - set(loaded)) + split.unknown

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

    def text_with_void(self, text: torch.Tensor) -> torch.Tensor:
        """Synonym embeddings ``text`` [S, D] with the normalised void embedding appended -> [S+1, D]."""
        return append_void(text, self.void_embedding.weight)

    def classify_masks(self, features: Mapping[str, torch.Tensor], masks: torch.Tensor, text: torch.Tensor,
                       num_synonyms: Sequence[int], with_void: bool = True, return_embeddings: bool = False
                       ) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Class logits [B, N, C(+1)] of ``masks`` [B, N, Hm, Wm] (aligned with the network input) against the
        synonym embeddings ``text`` [S, D] (void not included), given :meth:`dense_features` output.

        The one mask-classification path of the package: adapter head -> activation pooling -> CLIP
        projection -> (MAFT+ CDT of the text) -> CLIP-scaled cosine logits, max over synonyms, the void logit
        last when ``with_void``. The head and the CDT run in the caller's autocast precision; the logits are
        computed in fp32. With ``return_embeddings`` the mask embeddings [B, N, D] come too.
        """
        emb = self.embed_masks(features, masks)
        if with_void:
            text = self.text_with_void(text)
        classifier = self.adapter_text(features, text)
        with torch.autocast(emb.device.type, enabled=False):
            logits = classification_logits(emb.float(), classifier.float(), self.backbone.logit_scale, num_synonyms)
        return (logits, emb) if return_embeddings else logits

    def weights_fingerprint(self) -> str:
        """A short hash of every tensor's name, dtype, shape and every byte: two checkpoints that differ anywhere
        differ here (evaluation caches and batch manifests record it)."""
        from ..fingerprint import tensors_sha256

        return tensors_sha256(self.state_dict().items())[:16]
