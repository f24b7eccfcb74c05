"""The released Mask-Adapter models and their inference constants (thresholds, ensemble weights, CDT mode); data only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Mapping, Optional

if TYPE_CHECKING:
    import torch

__all__ = ["PresetConfig", "PRESETS", "get_preset", "guess_preset", "HUB_REPO"]

HUB_REPO = "owl10/Mask-Adapter"


@dataclass(frozen=True)
class PresetConfig:
    """Everything that differs between released models: CLIP, generator, thresholds, ensemble weights."""

    name: str
    weights_file: str  #: file name in the Hugging Face repo ``HUB_REPO``
    clip_model: str  #: open_clip model name
    clip_pretrained: str  #: open_clip pretrained tag (for the record: weights come from the checkpoint)
    generator: Literal["fcclip", "maftp"]
    num_queries: int
    mask_threshold: float  #: sigmoid threshold binarising generator masks for the adapter
    alpha: float  #: geometric ensemble weight of the adapter branch for seen classes
    beta: float  #: ... and for unseen classes
    overlap_threshold: float
    object_mask_threshold: float
    train_vocabulary: Literal["coco_panoptic", "coco_stuff"]  #: decides which test classes are "seen"
    dense_projection: Literal["standard", "maft_legacy"]
    cdt_mode: Optional[Literal["semantic", "panoptic"]] = None
    #: crop/resize mask logits to the image before semantic inference (official: when panoptic or
    #: instance output is on in the preset's evaluation config)
    postprocess_before_inference: bool = True
    test_size: int = 896
    size_divisibility: int = 32
    detections_per_image: int = 100


PRESETS: dict[str, PresetConfig] = {
    "fcclip-large": PresetConfig(
        name="fcclip-large", weights_file="fcclip_convnext_large_maskadapter.pth",
        clip_model="convnext_large_d_320", clip_pretrained="laion2b_s29b_b131k_ft_soup",
        generator="fcclip", num_queries=250, mask_threshold=0.5, alpha=0.7, beta=0.9,
        overlap_threshold=0.8, object_mask_threshold=0.0, train_vocabulary="coco_panoptic",
        dense_projection="standard"),
    "maftp-base": PresetConfig(
        name="maftp-base", weights_file="maftp_convnext_base_maskadapter.pth",
        clip_model="convnext_base_w_320", clip_pretrained="laion_aesthetic_s13b_b82k_augreg",
        generator="maftp", num_queries=100, mask_threshold=0.45, alpha=0.7, beta=1.0,
        overlap_threshold=0.7, object_mask_threshold=0.0, train_vocabulary="coco_stuff",
        dense_projection="maft_legacy", cdt_mode="semantic", postprocess_before_inference=False),
    "maftp-large": PresetConfig(
        name="maftp-large", weights_file="maftp_convnext_large_maskadapter.pth",
        clip_model="convnext_large_d_320", clip_pretrained="laion2b_s29b_b131k_ft_soup",
        generator="maftp", num_queries=100, mask_threshold=0.4, alpha=0.8, beta=1.0,
        overlap_threshold=0.7, object_mask_threshold=0.0, train_vocabulary="coco_stuff",
        dense_projection="maft_legacy", cdt_mode="panoptic"),
}


def get_preset(name: str) -> PresetConfig:
    """The preset called ``name``; ValueError listing the known ones otherwise."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def guess_preset(state: Mapping[str, "torch.Tensor"]) -> Optional[str]:
    """The released preset whose architecture a state dict fits (by query count, CDT and CLIP width), or None."""
    queries = state.get("sem_seg_head.predictor.query_feat.weight")
    void = state.get("void_embedding.weight")
    if queries is None or void is None:
        return None
    generator = "maftp" if any(k.startswith("cdt.") for k in state) else "fcclip"
    width = {768: "large", 640: "base"}.get(int(void.shape[-1]))
    matches = [p.name for p in PRESETS.values()
               if p.generator == generator and p.num_queries == int(queries.shape[0]) and p.name.endswith(f"-{width}")]
    return matches[0] if len(matches) == 1 else None
