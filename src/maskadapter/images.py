"""Decoding any image input (path, PIL image, array, tensor) to an RGB uint8 tensor: one home for every reader."""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np
import torch
from PIL import Image

__all__ = ["ImageInput", "to_rgb_tensor", "read_image_file", "image_size"]

ImageInput = Union[str, os.PathLike, "np.ndarray", torch.Tensor, "PIL.Image.Image"]  # noqa: F821


def to_rgb_tensor(image: ImageInput, max_pixels: Optional[int] = None) -> torch.Tensor:
    """RGB uint8 tensor [3, H, W] from a path, PIL image, HxW / HxWx3 / HxWx4 uint8 or uint16 array, or a
    [3, H, W] uint8 tensor. EXIF orientation is applied; CMYK, palette, grayscale and 16-bit images are
    converted; transparent pixels are composited over white.

    ``max_pixels``: images with more pixels are refused with a ValueError naming the file, its size and the
    limit; a file is measured from its header, before anything is decoded. Files are decoded once, without
    full-size intermediate copies (read-only arrays are accepted without a copy or a warning).
    """

    if isinstance(image, (str, os.PathLike)):
        image = read_image_file(image, max_pixels)
    if isinstance(image, Image.Image):
        _check_pixels(image.width, image.height, max_pixels, "image")
        image = _pil_to_array(image)
    if isinstance(image, np.ndarray):
        if image.ndim >= 2:
            _check_pixels(image.shape[1], image.shape[0], max_pixels, "image")
        image = _array_to_rgb(image)
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"unsupported image type {type(image).__name__}")
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image tensor must have shape [3, H, W], got {list(image.shape)}")
    if image.dtype != torch.uint8:
        raise TypeError(f"image tensor must be uint8 (0-255), got {image.dtype}")
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise ValueError(f"image has no pixels ({image.shape[2]}x{image.shape[1]})")
    _check_pixels(image.shape[2], image.shape[1], max_pixels, "image")
    return image


def image_size(path: Union[str, os.PathLike]) -> tuple[int, int]:
    """(width, height) of an image file from its header, without decoding pixels; ValueError naming the file
    for an unreadable file or one over Pillow's decompression-bomb limit."""
    with _open(Path(path)) as im:
        return im.size


def read_image_file(path: Union[str, os.PathLike], max_pixels: Optional[int] = None) -> torch.Tensor:
    """Decode an image file to RGB uint8 [3, H, W] (EXIF-rotated); the size is checked from the header first."""
    path = Path(path)
    with _open(path) as im:
        _check_pixels(im.width, im.height, max_pixels, f"image {path}")
        try:
            return _array_to_rgb(_pil_to_array(_exif_upright(im)))
        except (OSError, SyntaxError, ValueError) as exc:
            raise ValueError(f"cannot read image {path}: {exc}") from exc


@contextlib.contextmanager
def _open(path: Path) -> Iterator["PIL.Image.Image"]:  # noqa: F821

    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with warnings.catch_warnings():
            # the size is checked by the caller with its own limit; Pillow's warning would only repeat it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError as exc:
        match = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(match.group(1))} pixels" if match else "too many pixels"
        raise ValueError(f"image {path} has {size}, over Pillow's decompression-bomb limit of "
                         f"{2 * Image.MAX_IMAGE_PIXELS} pixels (PIL.Image.MAX_IMAGE_PIXELS x 2); it was not decoded") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc
    with im:
        yield im


def _check_pixels(width: int, height: int, max_pixels: Optional[int], what: str) -> None:
    if max_pixels is not None and int(width) * int(height) > max_pixels:
        raise ValueError(f"{what} of {width}x{height} = {int(width) * int(height)} pixels is over the limit of "
                         f"{max_pixels} pixels (max_image_pixels); downscale it first")


_TRANSPOSE = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_270",
              7: "TRANSVERSE", 8: "ROTATE_90"}


def _exif_upright(im: "PIL.Image.Image") -> "PIL.Image.Image":  # noqa: F821
    """``im`` turned upright by its EXIF orientation; the image itself (no copy) when it already is."""

    orientation = im.getexif().get(0x0112)
    if orientation not in _TRANSPOSE:
        return im
    return im.transpose(getattr(Image.Transpose, _TRANSPOSE[orientation]))


def _pil_to_array(im: "PIL.Image.Image") -> np.ndarray:  # noqa: F821
    """An array of any PIL image mode for :func:`_array_to_rgb`: HxWx3 uint8, or HxW 16/32-bit grayscale."""

    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16/32-bit grayscale: rescaled later, not clipped
        return np.asarray(im)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))


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
    array = np.ascontiguousarray(array)
    with warnings.catch_warnings():
        # A read-only array (np.asarray of a PIL image, a memory map) is shared, not copied; this package
        # only reads image tensors, so torch's "not writable" warning does not apply.
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array).permute(2, 0, 1)
