"""Frozen dataclass configurations (data only; models are built from these)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = ["HeadConfig", "ClipConfig"]


@dataclass(frozen=True)
class HeadConfig:
    """Mask-Adapter head sizes; the defaults are the released architecture (768 channels, 16 maps, 3 ConvNeXt blocks)."""

    clip_dim: int
    num_channels: int = 768
    mask_in_chans: int = 16
    num_output_maps: int = 16
    num_blocks: int = 3


@dataclass(frozen=True)
class ClipConfig:
    """An open_clip ConvNeXt CLIP: a name for caches and messages plus open_clip's model config.

    ``model_cfg`` is open_clip's JSON config (``embed_dim``, ``vision_cfg``, ``text_cfg``); build one with
    :meth:`from_name` for a model open_clip ships, or write it out for a custom (e.g. tiny test) model.
    """

    name: str
    model_cfg: dict = field(compare=True, hash=False)
    pretrained_tag: Optional[str] = None

    @classmethod
    def from_name(cls, name: str, pretrained_tag: Optional[str] = None) -> "ClipConfig":
        """Config of an open_clip ConvNeXt model such as ``convnext_large_d_320``; ValueError if unknown."""
        import open_clip

        known = sorted(n for n in open_clip.list_models() if _is_convnext(open_clip.get_model_config(n)))
        if name not in known:
            raise ValueError(f"unknown CLIP model name {name!r}: expected an open_clip ConvNeXt model, "
                             f"one of {', '.join(known)}")
        return cls(name=name, model_cfg=open_clip.get_model_config(name), pretrained_tag=pretrained_tag)

    @property
    def embed_dim(self) -> int:
        """D, the joint image-text embedding width."""
        return int(self.model_cfg["embed_dim"])

    def validate(self) -> None:
        """Raise ValueError unless the config describes a timm ConvNeXt vision tower."""
        if not _is_convnext(self.model_cfg):
            raise ValueError(f"CLIP config {self.name!r} is not a timm ConvNeXt model: "
                             f"vision_cfg.timm_model_name must start with 'convnext'")


def _is_convnext(cfg: Optional[dict[str, Any]]) -> bool:
    vision = (cfg or {}).get("vision_cfg", {})
    return str(vision.get("timm_model_name") or "").startswith("convnext")
