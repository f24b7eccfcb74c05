"""Image input handling shared by every entry point: decoding to RGB tensors, normalising, padding."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from .modeling.clip_backbone import PIXEL_MEAN, PIXEL_STD

__all__ = ["ImageInput", "to_rgb_tensor", "normalize_and_pad"]

ImageInput = Union[str, os.PathLike, "np.ndarray", torch.Tensor, "PIL.Image.Image"]  # noqa: F821


def to_rgb_tensor(image: ImageInput) -> torch.Tensor:
    """RGB uint8 tensor [3, H, W] from a path, PIL image, HxWx3 / HxW array, or [3, H, W] tensor."""
    from PIL import Image, ImageOps

    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image not found: {path}")
        try:
            with Image.open(path) as im:
                image = ImageOps.exif_transpose(im).convert("RGB")
        except (OSError, SyntaxError) as exc:
            raise ValueError(f"cannot read image {path}: {exc}") from exc
    if isinstance(image, Image.Image):
        image = np.array(image.convert("RGB"))  # a writable copy
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise ValueError(f"image array must be HxW, HxWx3 or HxWx4, got shape {image.shape}")
        if image.dtype != np.uint8:
            raise TypeError(f"image array must be uint8 (0-255), got {image.dtype}")
        image = torch.from_numpy(np.ascontiguousarray(image[..., :3])).permute(2, 0, 1)
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"unsupported image type {type(image).__name__}")
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image tensor must have shape [3, H, W], got {list(image.shape)}")
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise ValueError(f"image has no pixels ({image.shape[1]}x{image.shape[2]})")
    return image


def normalize_and_pad(images: Sequence[torch.Tensor], divisor: int = 32) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Batch of RGB 0-255 ``images`` ([3, H_i, W_i] each) -> normalised [B, 3, H, W], padded with 0 at the
    bottom/right to a multiple of ``divisor``, and the original (H_i, W_i) sizes."""
    if not images:
        raise ValueError("images is empty")
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    H = -(-max(s[0] for s in sizes) // divisor) * divisor
    W = -(-max(s[1] for s in sizes) // divisor) * divisor
    mean = torch.tensor(PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(3, 1, 1)
    batch = []
    for im in images:
        x = (im.float() - mean.to(im.device)) / std.to(im.device)
        # Padding after normalisation: padded pixels are 0, i.e. the mean colour, as in the official code.
        batch.append(F.pad(x, (0, W - x.shape[-1], 0, H - x.shape[-2])))
    return torch.stack(batch), sizes
