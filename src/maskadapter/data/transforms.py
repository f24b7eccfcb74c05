"""Label-map helpers and training augmentation: large-scale jitter (LSJ), as the official Mask-Adapter mappers build it.

Both official training mappers (``coco_panoptic_lsj`` and ``mask_former_semantic``, Mask-Adapter's copies)
apply three detectron2 augmentations in this order:

1. ``RandomFlip(prob=0.5, horizontal=True)``: flip when ``U(0, 1) < 0.5``.
2. ``ResizeScale(min_scale, max_scale, target_height=size, target_width=size)``: draw
   ``s ~ U(min_scale, max_scale)`` and resize the image so it fits inside an ``s*size`` square, keeping
   the aspect ratio: ``scale = min(s*size / h, s*size / w)``, ``new = np.round((h, w) * scale)``
   (round half to even). Images: PIL ``BILINEAR`` on uint8 (antialiased when shrinking).
3. ``FixedSizeCrop((size, size), pad_value=128, seg_pad_value=255)``: ONE draw ``u ~ U(0, 1)`` shared by
   both axes, ``offset = np.round(max(new - size, 0) * u)``, crop ``[y0:y0+size, x0:x0+size]`` (clipped at
   the border), then pad bottom / right up to ``size``.

Label geometry: a label map is resized with nearest neighbour. detectron2 does that in two different ways,
and this module reproduces both (``nearest=``):

* ``"pil"``: uint8 maps go through PIL ``NEAREST`` (source index ``floor((x + 0.5) * in/out)``, accumulated in
  double precision). The panoptic mapper resizes the RGB panoptic PNG this way.
* ``"torch"``: the semantic mapper casts the label map to float64 first, so detectron2's ``ResizeTransform``
  uses ``F.interpolate(mode="nearest")`` (source index ``floor(x * in/out)``, half a pixel to the top-left
  of the image's sampling grid). Use it for COCO-Stuff to match MAFT+ exactly.

Nearest resizing only gathers source pixels, so resizing each binary mask with the gather of the label map
gives the same masks as splitting the resized label map; the cropped window is gathered directly, without
building the full resized map.

Neither official mapper returns a padding mask (the padded region is only visible as ignore / empty mask
pixels), so none is produced here either. Colour augmentation is off in the official configs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

__all__ = ["LSJParams", "LargeScaleJitter", "resize_scale_shape", "fixed_size_crop_offset", "nearest_indices",
           "label_map_to_masks"]

logger = logging.getLogger(__name__)

NearestMode = Literal["pil", "torch"]


def resize_scale_shape(h: int, w: int, size: int, scale: float) -> tuple[int, int]:
    """detectron2 ``ResizeScale._get_resize`` output (new_h, new_w) for an h x w image, target ``size`` and ``scale``.

    ``output_scale = min(size*scale / h, size*scale / w)``; each side is ``round(side * output_scale)`` with
    round-half-to-even (``np.round``). A side that would round to 0 (extreme aspect ratios at tiny scales,
    where detectron2 would fail) is kept at 1 pixel.
    """
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {h}x{w}")
    target = float(size) * float(scale)  # np.multiply((size, size), scale), float64
    output_scale = min(target / h, target / w)
    new_h = int(np.round(h * output_scale))
    new_w = int(np.round(w * output_scale))
    return max(new_h, 1), max(new_w, 1)


def fixed_size_crop_offset(h: int, w: int, size: int, u: float) -> tuple[int, int]:
    """detectron2 ``FixedSizeCrop._get_crop`` offset (y0, x0) of an h x w input for crop ``size`` and draw ``u``."""
    return int(np.round(max(h - size, 0) * float(u))), int(np.round(max(w - size, 0) * float(u)))


def nearest_indices(in_size: int, out_size: int, mode: NearestMode = "pil") -> torch.Tensor:
    """Source index [out_size] (int64) of every output pixel of a 1-D nearest resize from ``in_size``.

    ``"pil"`` asks PIL itself (``Image.resize(NEAREST)`` of a one-row int32 image holding 0..in-1), so the
    double-precision accumulation of PIL's affine scaler is reproduced bit for bit. ``"torch"`` asks
    ``F.interpolate(mode="nearest")`` on float64, as detectron2 does for non-uint8 label maps.
    """
    if in_size <= 0 or out_size <= 0:
        raise ValueError(f"sizes must be positive, got in_size={in_size}, out_size={out_size}")
    if mode == "pil":
        row = Image.fromarray(np.arange(in_size, dtype=np.int32)[None, :])  # mode "I"
        idx = np.asarray(row.resize((out_size, 1), Image.NEAREST))[0]
        return torch.from_numpy(idx.astype(np.int64))
    if mode == "torch":
        src = torch.arange(in_size, dtype=torch.float64).view(1, 1, in_size)
        idx = torch.nn.functional.interpolate(src, size=out_size, mode="nearest")
        return idx.view(out_size).round().long()
    raise ValueError(f"nearest must be 'pil' or 'torch', got {mode!r}")


@dataclass(frozen=True)
class LSJParams:
    """The random choices of one LSJ draw: flip, scale ``s``, resized (h, w) and crop offset (y0, x0)."""

    flip: bool
    scale: float
    resized: tuple[int, int]
    offset: tuple[int, int]


class LargeScaleJitter:
    """RandomFlip + ResizeScale + FixedSizeCrop of the official mappers; output is exactly ``size`` x ``size``.

    ``__call__(sample, generator)`` transforms ``sample["image"]`` (uint8 [3, H, W]) and, when present,
    ``sample["masks"]`` (bool [N, H, W], padded with False; masks left empty are dropped together with
    their ``sample["labels"]`` entry) and ``sample["sem_seg"]`` (integer label map [H, W], padded with
    ``pad_label``). Other keys are passed through. Randomness comes only from ``generator`` (three float64
    draws per call: flip, scale, crop, in that order, drawn even when ``flip=False``).
    """

    def __init__(self, size: int, scale: tuple[float, float] = (0.1, 2.0), flip: bool = True,
                 pad_image: int = 128, pad_label: int = 255, *, nearest: NearestMode = "pil") -> None:
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise ValueError(f"size must be a positive int, got {size!r}")
        if len(scale) != 2 or not 0 < float(scale[0]) <= float(scale[1]):
            raise ValueError(f"scale must be (min, max) with 0 < min <= max, got {scale!r}")
        if not 0 <= int(pad_image) <= 255:
            raise ValueError(f"pad_image must be in 0..255, got {pad_image}")
        if nearest not in ("pil", "torch"):
            raise ValueError(f"nearest must be 'pil' or 'torch', got {nearest!r}")
        self.size = size
        self.scale = (float(scale[0]), float(scale[1]))
        self.flip = bool(flip)
        self.pad_image = int(pad_image)
        self.pad_label = int(pad_label)
        self.nearest: NearestMode = nearest

    def __repr__(self) -> str:
        return (f"LargeScaleJitter(size={self.size}, scale={self.scale}, flip={self.flip}, "
                f"pad_image={self.pad_image}, pad_label={self.pad_label}, nearest={self.nearest!r})")

    def get_params(self, h: int, w: int, generator: torch.Generator) -> LSJParams:
        """Draw the flip, scale and crop of an h x w image from ``generator``."""
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        u_flip, u_scale, u_crop = torch.rand(3, generator=generator, dtype=torch.float64).tolist()
        lo, hi = self.scale
        s = lo + (hi - lo) * u_scale  # np.random.uniform(lo, hi)
        new_h, new_w = resize_scale_shape(h, w, self.size, s)
        return LSJParams(flip=self.flip and u_flip < 0.5, scale=s, resized=(new_h, new_w),
                         offset=fixed_size_crop_offset(new_h, new_w, self.size, u_crop))

    def __call__(self, sample: dict[str, Any], generator: torch.Generator) -> dict[str, Any]:
        """Augmented copy of ``sample`` (see the class doc) -> image uint8 [3, size, size], masks [N', size, size]."""
        image = sample.get("image")
        if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
            raise ValueError("sample['image'] must be a tensor [3, H, W], got "
                             f"{list(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}")
        if image.dtype != torch.uint8:
            raise TypeError(f"sample['image'] must be uint8, got {image.dtype}")
        H, W = int(image.shape[1]), int(image.shape[2])
        masks, labels, sem_seg = sample.get("masks"), sample.get("labels"), sample.get("sem_seg")
        if masks is not None:
            if masks.dim() != 3 or tuple(masks.shape[1:]) != (H, W):
                raise ValueError(f"sample['masks'] must have shape [N, {H}, {W}], got {list(masks.shape)}")
            if labels is None or labels.shape != (masks.shape[0],):
                raise ValueError(f"sample['labels'] must have shape [{masks.shape[0]}], got "
                                 f"{None if labels is None else list(labels.shape)}")
        if sem_seg is not None and tuple(sem_seg.shape) != (H, W):
            raise ValueError(f"sample['sem_seg'] must have shape [{H}, {W}], got {list(sem_seg.shape)}")

        return self.apply(sample, self.get_params(H, W, generator))

    @property
    def fixed_size(self) -> bool:
        """True when the only random choice is the flip (scale range (1, 1)): a resize of the long side to
        ``size`` and padding, so each image has at most two looks (what a feature cache can store)."""
        return self.scale == (1.0, 1.0)

    def fixed_params(self, h: int, w: int, flip: bool) -> LSJParams:
        """The parameters of an h x w image under a :attr:`fixed_size` transform with the given flip."""
        if not self.fixed_size:
            raise ValueError(f"fixed_params needs scale (1, 1), this transform has {self.scale}")
        new_h, new_w = resize_scale_shape(h, w, self.size, 1.0)
        return LSJParams(flip=self.flip and flip, scale=1.0, resized=(new_h, new_w),
                         offset=fixed_size_crop_offset(new_h, new_w, self.size, 0.0))

    def apply(self, sample: dict[str, Any], p: LSJParams) -> dict[str, Any]:
        """``sample`` transformed with the parameters ``p`` (see the class doc)."""
        image, masks, labels, sem_seg = sample["image"], sample.get("masks"), sample.get("labels"), sample.get("sem_seg")
        H, W = int(image.shape[1]), int(image.shape[2])
        out = dict(sample)
        out["image"] = self._apply_image(image, p)
        rows, cols = self._label_indices(H, W, p)
        if masks is not None:
            new_masks = self._gather(masks, rows, cols, False)
            keep = new_masks.flatten(1).any(dim=1)
            out["masks"] = new_masks[keep]
            out["labels"] = labels[keep]
        if sem_seg is not None:
            out["sem_seg"] = self._gather(sem_seg[None], rows, cols, self.pad_label)[0]
        return out

    # ------------------------------------------------------------------ internals
    def _apply_image(self, image: torch.Tensor, p: LSJParams) -> torch.Tensor:
        array = image.permute(1, 2, 0).cpu().numpy()
        if p.flip:
            array = array[:, ::-1]
        array = np.ascontiguousarray(array)
        new_h, new_w = p.resized
        if (new_h, new_w) != array.shape[:2]:  # PIL returns a copy for an unchanged size
            array = np.asarray(Image.fromarray(array).resize((new_w, new_h), Image.BILINEAR))
        y0, x0 = p.offset
        crop = array[y0:y0 + self.size, x0:x0 + self.size]
        out = np.full((self.size, self.size, 3), self.pad_image, dtype=np.uint8)
        out[:crop.shape[0], :crop.shape[1]] = crop
        return torch.from_numpy(out).permute(2, 0, 1).contiguous()

    def _label_indices(self, H: int, W: int, p: LSJParams) -> tuple[torch.Tensor, torch.Tensor]:
        """Source row / column of every output pixel inside the resized image (the padding is not listed)."""
        new_h, new_w = p.resized
        y0, x0 = p.offset
        rows = nearest_indices(H, new_h, self.nearest)[y0:y0 + self.size]
        cols = nearest_indices(W, new_w, self.nearest)[x0:x0 + self.size]
        if p.flip:  # the flip comes first, so the resize reads the mirrored columns
            cols = (W - 1) - cols
        return rows, cols

    def _gather(self, x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, fill: Any) -> torch.Tensor:
        out = torch.full((x.shape[0], self.size, self.size), fill, dtype=x.dtype, device=x.device)
        rows, cols = rows.to(x.device), cols.to(x.device)
        out[:, :rows.numel(), :cols.numel()] = x[:, rows][:, :, cols]
        return out


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
