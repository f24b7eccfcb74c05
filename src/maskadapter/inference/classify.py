"""Classifying the given masks of one image (user, SAM or ground-truth masks) with the adapter.

:func:`classify_image_masks` is what :meth:`Predictor.classify_masks`, the ground-truth-mask mode and the
trainer's evaluation all call; it prepares the image and the masks and runs the model's one
mask-classification method, :meth:`MaskAdapterModel.classify_masks`.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..modeling.model import MaskAdapterModel
from ..precision import autocast
from .preprocess import fit_masks, prepare_image

__all__ = ["classify_image_masks"]


@torch.no_grad()
def classify_image_masks(model: MaskAdapterModel, image: torch.Tensor, masks: torch.Tensor, text: torch.Tensor,
                         num_synonyms: Sequence[int], with_void: bool = True, resize: Optional[int] = None,
                         precision: str = "fp32") -> torch.Tensor:
    """Adapter logits [N, C(+1)] (fp32, on the model's device) of ``masks`` [N, H, W] (bool or 0-1) of
    ``image`` (RGB uint8 [3, H, W]) against synonym embeddings ``text`` [S, D].

    ``resize``: long side of the network input (the preset's test size), or None for the native size; the
    masks are resized and padded like the image. ``precision``: ``fp32`` / ``bf16`` / ``auto`` for the head.
    """
    device = model.void_embedding.weight.device
    images, size = prepare_image(image, resize, device=device)
    fitted = fit_masks(masks.to(device), size, tuple(images.shape[-2:]))
    with autocast(precision, device):
        features = model.dense_features(images)
        logits = model.classify_masks(features, fitted, text.to(device), num_synonyms, with_void=with_void)
    return logits[0]
