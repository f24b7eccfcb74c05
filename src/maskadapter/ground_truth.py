"""Ground-truth-mask mode: one mask per class present in a label map, classified by the adapter.

This is the paper's Table 3 "upper bound" and the stage-1 evaluation: the masks are perfect, so the
result measures the adapter's classification alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .modeling.model import MaskAdapterModel
from .modeling.text import TextClassifier, Vocabulary
from .precision import autocast
from .preprocess import ImageInput, normalize_and_pad, to_rgb_tensor

__all__ = ["GroundTruthResult", "label_map_to_masks", "classify_ground_truth"]


@dataclass
class GroundTruthResult:
    """Per-mask classification of ground-truth masks and the semantic map it implies."""

    class_ids: torch.Tensor  #: [N] ground-truth class of each mask
    logits: torch.Tensor  #: [N, C+1] adapter logits, void last
    predicted: torch.Tensor  #: [N] predicted class (argmax over the C real classes)
    semantic: torch.Tensor  #: [H, W] predicted class per pixel, ``ignore_index`` where unlabelled

    @property
    def accuracy(self) -> float:
        """Fraction of masks whose predicted class is the ground-truth class (nan without masks)."""
        if self.class_ids.numel() == 0:
            return float("nan")
        return float((self.predicted == self.class_ids).float().mean())


def label_map_to_masks(label_map: torch.Tensor, num_classes: int,
                       ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary masks [N, H, W] and class ids [N] (ascending) of the classes present in ``label_map`` [H, W]."""
    if label_map.dim() != 2:
        raise ValueError(f"label_map must have shape [H, W], got {list(label_map.shape)}")
    if label_map.dtype.is_floating_point or label_map.dtype == torch.bool:
        raise TypeError(f"label_map must be an integer tensor, got {label_map.dtype}")
    labels = label_map.long()
    valid = labels != ignore_index
    bad = valid & ((labels < 0) | (labels >= num_classes))
    if bool(bad.any()):
        values = sorted(int(v) for v in labels[bad].unique()[:10])
        raise ValueError(f"label_map has {int(bad.sum())} pixels with labels outside 0..{num_classes - 1} "
                         f"(and not the ignore index {ignore_index}): values {values}")
    class_ids = labels[valid].unique()
    masks = labels[None] == class_ids[:, None, None]
    return masks, class_ids


@torch.no_grad()
def classify_ground_truth(
    model: MaskAdapterModel,
    image: ImageInput,
    label_map: Union[torch.Tensor, np.ndarray],
    vocabulary: Union[Vocabulary, str, Sequence[str]],
    text_classifier: Optional[TextClassifier] = None,
    ignore_index: int = 255,
    precision: str = "fp32",
) -> GroundTruthResult:
    """Classify one mask per labelled class of ``label_map`` [H, W] (ids index ``vocabulary``) in ``image``."""
    vocab = Vocabulary.coerce(vocabulary)
    rgb = to_rgb_tensor(image)
    labels = torch.as_tensor(np.asarray(label_map)) if not isinstance(label_map, torch.Tensor) else label_map
    if tuple(labels.shape) != tuple(rgb.shape[-2:]):
        raise ValueError(f"label_map size {tuple(labels.shape)} differs from the image size {tuple(rgb.shape[-2:])}")
    masks, class_ids = label_map_to_masks(labels, len(vocab), ignore_index)
    device = model.backbone.logit_scale.device
    classifier = text_classifier or TextClassifier(model.backbone)
    text = classifier(vocab)
    images, _ = normalize_and_pad([rgb.to(device)])
    H, W = rgb.shape[-2:]
    padded = masks.new_zeros((1, masks.shape[0], *images.shape[-2:]))
    padded[0, :, :H, :W] = masks  # masks share the image's padding, so they stay aligned with its pixels
    with autocast(precision, device):
        feats = model.dense_features(images)
        emb = model.embed_masks(feats, padded.to(device))
    logits = model.classify(emb.float(), text, vocab.num_synonyms)[0]
    predicted = logits[:, :-1].argmax(dim=-1).cpu()
    semantic = torch.full((H, W), ignore_index, dtype=torch.long)
    for mask, cls in zip(masks, predicted):
        semantic[mask] = cls
    return GroundTruthResult(class_ids, logits.cpu(), predicted, semantic)
