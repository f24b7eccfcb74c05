"""The official test-time input pipeline: 896 long-side resize (detectron2 rounding, PIL bilinear), normalise, pad."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..constants import PIXEL_MEAN, PIXEL_STD

__all__ = ["normalize", "pad_batch", "padded_size", "normalize_and_pad", "resized_shape", "resize_longest_side",
           "prepare_image", "fit_masks"]


def normalize(image: torch.Tensor) -> torch.Tensor:
    """RGB 0-255 ``image`` [3, H, W] -> float32 [3, H, W] normalised with CLIP's mean and std."""
    mean = torch.tensor(PIXEL_MEAN, device=image.device).view(3, 1, 1)
    std = torch.tensor(PIXEL_STD, device=image.device).view(3, 1, 1)
    return (image.float() - mean) / std


def pad_batch(images: Sequence[torch.Tensor], divisor: int = 32) -> torch.Tensor:
    """Normalised ``images`` ([3, H_i, W_i] each) -> [B, 3, H, W] padded with 0 at the bottom/right to the
    largest size, rounded up to a multiple of ``divisor`` (0 after normalisation is the mean colour, as in the
    official ``ImageList.from_tensors``)."""
    if not images:
        raise ValueError("images is empty")
    H, W = padded_size([tuple(im.shape[-2:]) for im in images], divisor)
    return torch.stack([F.pad(x, (0, W - x.shape[-1], 0, H - x.shape[-2])) for x in images])


def padded_size(sizes: Sequence[tuple[int, int]], divisor: int = 32) -> tuple[int, int]:
    """The padded network input size of a batch of images of ``sizes`` (h, w)."""
    H = -(-max(int(s[0]) for s in sizes) // divisor) * divisor
    W = -(-max(int(s[1]) for s in sizes) // divisor) * divisor
    return H, W


def normalize_and_pad(images: Sequence[torch.Tensor], divisor: int = 32) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Batch of RGB 0-255 ``images`` ([3, H_i, W_i] each) -> normalised [B, 3, H, W], padded with 0 at the
    bottom/right to a multiple of ``divisor``, and the original (H_i, W_i) sizes."""
    if not images:
        raise ValueError("images is empty")
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    return pad_batch([normalize(im) for im in images], divisor), sizes


def resized_shape(h: int, w: int, size: int = 896) -> tuple[int, int]:
    """Output (newh, neww) of detectron2's ``ResizeShortestEdge(size, max_size=size)`` for an h x w image.

    This is detectron2's ``ResizeShortestEdge.get_output_shape(h, w, size, size)``: scale the short side to
    ``size``, scale down again if the long side is then longer than ``size``, round each side with
    ``int(x + 0.5)``. With short side = max size = ``size``, the long side always ends up as ``size``, and
    images smaller than ``size`` are enlarged. The float operations follow detectron2's order, so the rounding
    of borderline sizes matches too.
    """
    if int(h) <= 0 or int(w) <= 0:
        raise ValueError(f"h and w must be positive, got {h}x{w}")
    if int(size) <= 0:
        raise ValueError(f"size must be positive, got {size}")
    h, w, size = int(h), int(w), int(size)
    short = size * 1.0
    scale = short / min(h, w)
    if h < w:
        newh, neww = short, scale * w
    else:
        newh, neww = scale * h, short
    if max(newh, neww) > size:
        scale = size * 1.0 / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    return int(newh + 0.5), int(neww + 0.5)


def resize_longest_side(image: torch.Tensor, size: int = 896) -> torch.Tensor:
    """Resize an RGB uint8 ``image`` [3, H, W] so its longer side is ``size`` -> uint8 [3, newh, neww].

    This is the official test-time transform: ``INPUT.MIN_SIZE_TEST = MAX_SIZE_TEST = 896`` with
    detectron2's ``ResizeShortestEdge`` (geometry from :func:`resized_shape`). detectron2's
    ``ResizeTransform`` resizes uint8 images with PIL, ``Image.BILINEAR``; PIL is used here too. Results
    depend on the Pillow version (the maintainers used 8.4.0). PIL is called even when the size does not
    change, as detectron2 does. A CUDA image is resized on the CPU and returned on its device.
    """

    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError("image must be a tensor of shape [3, H, W], got "
                         f"{list(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}")
    if image.dtype != torch.uint8:
        raise ValueError(f"image must be uint8 (0-255), got {image.dtype}")
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise ValueError(f"image has no pixels ({image.shape[1]}x{image.shape[2]})")
    newh, neww = resized_shape(image.shape[1], image.shape[2], size)
    if newh == 0 or neww == 0:
        raise ValueError(f"image of {image.shape[1]}x{image.shape[2]} would shrink to {newh}x{neww} "
                         f"with size={size}: aspect ratio too extreme")
    array = np.ascontiguousarray(image.permute(1, 2, 0).cpu().numpy())
    resized = np.asarray(Image.fromarray(array).resize((neww, newh), Image.BILINEAR))
    return torch.from_numpy(resized.copy()).permute(2, 0, 1).contiguous().to(image.device)


def prepare_image(rgb: torch.Tensor, size: Optional[int] = 896, divisor: int = 32,
                  device: Union[str, torch.device, None] = None) -> tuple[torch.Tensor, tuple[int, int]]:
    """The network input of one RGB uint8 image [3, H, W]: resized so its long side is ``size`` (None: kept),
    normalised, padded -> [1, 3, Hp, Wp] on ``device``, and the resized size (h, w) before padding."""
    if size is not None:
        rgb = resize_longest_side(rgb, size)
    images, sizes = normalize_and_pad([rgb.to(device) if device is not None else rgb], divisor)
    return images, sizes[0]


def fit_masks(masks: torch.Tensor, size: tuple[int, int], padded: tuple[int, int]) -> torch.Tensor:
    """Masks [N, H, W] (bool or 0-1) at the image's size -> float [1, N, Hp, Wp] aligned with the network input:
    resized bilinearly to the resized image ``size`` (h, w) when it differs, then zero-padded bottom/right to
    ``padded`` exactly like the image, so every mask stays on its pixels."""
    if masks.dim() != 3:
        raise ValueError(f"masks must have shape [N, H, W], got {list(masks.shape)}")
    h, w = size
    m = masks[None].float()
    if tuple(m.shape[-2:]) != (h, w):
        m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
    return F.pad(m, (0, padded[1] - w, 0, padded[0] - h))
