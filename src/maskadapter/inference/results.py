"""What prediction returns: plain data (maps, segments, instances, logits, stage timings), no model.

This module imports nothing of :mod:`maskadapter.modeling` (``tests/test_architecture.py`` checks it), so results
can be read, written and shipped between processes without the network code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from ..vocabulary import Vocabulary
from .instances import Instances

__all__ = ["SegmentationResult", "MaskClassification"]


def _shape(value: Optional[torch.Tensor]) -> str:
    return "None" if value is None else f"{str(value.dtype).replace('torch.', '')}{list(value.shape)}"


@dataclass
class SegmentationResult:
    """What :meth:`Predictor.predict` returns; maps are at the output size (the image's, or downscaled)."""

    vocabulary: Vocabulary
    image_size: tuple[int, int]  #: (H, W) of the maps below
    semantic: Optional[torch.Tensor] = None  #: [H, W] int64 class index, -1 where no mask covers a pixel
    panoptic: Optional[torch.Tensor] = None  #: [H, W] int32 segment id, 0 = no segment
    segments: list[dict] = field(default_factory=list)  #: id, category_id, label, isthing, score, area
    instances: Optional[Instances] = None  #: K instances: RLE masks (``.masks`` decodes [K, H, W]), scores, classes
    input_size: Optional[tuple[int, int]] = None  #: (H, W) of the input image (differs when downscaled)
    #: seconds per stage (preprocess, text, backbone, generator, adapter, postprocess) of the call that made this
    #: result; images predicted together in one batch share the batch's timings
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def class_names(self) -> list[str]:
        """Display name of each class index."""
        return self.vocabulary.names

    def __repr__(self) -> str:
        # shapes and counts only: the maps are megapixels and the instances' RLE strings kilobytes each
        instances = "None" if self.instances is None else f"{len(self.instances.rles)} instances"
        return (f"SegmentationResult({len(self.vocabulary)} classes, image_size={self.image_size}, "
                f"input_size={self.input_size}, semantic={_shape(self.semantic)}, "
                f"panoptic={_shape(self.panoptic)}, segments={len(self.segments)}, instances={instances})")


@dataclass
class MaskClassification:
    """Adapter-only classification of given masks (SAM, user masks): no in-vocabulary head, no void."""

    vocabulary: Vocabulary
    logits: torch.Tensor  #: [N, C] adapter logits
    labels: torch.Tensor  #: [N] argmax class
    scores: torch.Tensor  #: [N] softmax probability of that class
    semantic: torch.Tensor  #: [H, W] int64, masks painted largest first (smaller masks on top), -1 elsewhere
    #: seconds per stage (preprocess, text, adapter, postprocess) of the call that made this result
    timings: dict[str, float] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"MaskClassification({len(self.vocabulary)} classes, {int(self.logits.shape[0])} masks, "
                f"labels={self.labels.tolist()[:20]}, semantic={_shape(self.semantic)})")
