"""Image input handling shared by every entry point: decoding to RGB tensors, normalising, padding."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from .modeling.clip_backbone import PIXEL_MEAN, PIXEL_STD

__all__ = ["ImageInput", "to_rgb_tensor", "normalize_and_pad", "resized_shape", "resize_longest_side"]

ImageInput = Union[str, os.PathLike, "np.ndarray", torch.Tensor, "PIL.Image.Image"]  # noqa: F821


def to_rgb_tensor(image: ImageInput) -> torch.Tensor:
    """RGB uint8 tensor [3, H, W] from a path, PIL image, HxW / HxWx3 / HxWx4 uint8 or uint16 array, or a
    [3, H, W] uint8 tensor. EXIF orientation is applied; CMYK, palette, grayscale and 16-bit images are
    converted; transparent pixels are composited over white."""
    from PIL import Image, ImageOps

    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image not found: {path}")
        try:
            with Image.open(path) as im:
                image = _pil_to_rgb(ImageOps.exif_transpose(im))
        except Image.DecompressionBombError as exc:
            raise ValueError(f"image {path} is larger than PIL's safety limit of {Image.MAX_IMAGE_PIXELS} "
                             f"pixels: {exc}") from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise ValueError(f"cannot read image {path}: {exc}") from exc
    if isinstance(image, Image.Image):
        image = _pil_to_rgb(image)
    if isinstance(image, np.ndarray):
        image = _array_to_rgb(image)
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"unsupported image type {type(image).__name__}")
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image tensor must have shape [3, H, W], got {list(image.shape)}")
    if image.dtype != torch.uint8:
        raise TypeError(f"image tensor must be uint8 (0-255), got {image.dtype}")
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise ValueError(f"image has no pixels ({image.shape[2]}x{image.shape[1]})")
    return image


def _pil_to_rgb(im: "PIL.Image.Image") -> np.ndarray:  # noqa: F821
    """HxWx3 uint8 array of any PIL image mode."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16/32-bit grayscale: rescale, do not clip
        return _array_to_rgb(np.array(im))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.array(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.array(im.convert("RGB"))


def _array_to_rgb(array: np.ndarray) -> torch.Tensor:
    """[3, H, W] uint8 tensor of an HxW / HxWx3 / HxWx4 array (uint8, or 16-bit / int / float rescaled)."""
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"image array must be HxW, HxWx3 or HxWx4, got shape {array.shape}")
    if array.dtype == np.uint16 or (array.dtype.kind in "iu" and array.dtype != np.uint8):
        array = (np.clip(array, 0, 65535) / 257.0).round().astype(np.uint8)
    elif array.dtype.kind == "f":
        scale = 255.0 if float(np.nanmax(array, initial=0.0)) <= 1.0 else 1.0
        array = np.clip(np.nan_to_num(array) * scale, 0, 255).round().astype(np.uint8)
    elif array.dtype != np.uint8:
        raise TypeError(f"image array must be uint8, uint16 or float, got {array.dtype}")
    array = np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array[..., :3]
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)


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
    from PIL import Image

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
