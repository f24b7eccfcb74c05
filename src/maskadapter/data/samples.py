"""What every dataset reader returns: :class:`Sample` (the files of one image), :class:`Example` (its loaded
ground truth), :class:`SegmentationDataset` (samples + vocabulary), and the decoders they share.

Ground truth of one image may come from a semantic label map (class index per pixel), a COCO panoptic PNG with
its ``segments_info`` (segment id ``R + 256 G + 65536 B``), or COCO instance annotations (polygons or RLE).
Whatever a sample holds, :meth:`Sample.load` derives the rest: semantic maps from panoptic segments or from
instances (painted in annotation order, crowd regions ignored), instances from panoptic thing segments.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_util

from ..constants import IMAGE_SUFFIXES
from ..images import to_rgb_tensor
from ..vocabulary import Vocabulary
from .table import DatasetSpec

__all__ = ["DatasetError", "Sample", "Example", "SegmentationDataset", "rgb_to_id", "id_to_rgb", "read_array",
           "read_json", "list_files", "pair_files", "listing", "decode_segmentation"]

logger = logging.getLogger(__name__)

_MAX_LISTED = 20


class DatasetError(ValueError):
    """A dataset folder does not match its layout (missing files, unpaired images or labels)."""



def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """Panoptic segment ids [H, W] int64 of a COCO panoptic PNG [H, W, 3]: ``R + 256 G + 65536 B``."""
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"a panoptic PNG must be RGB (H x W x 3), got shape {rgb.shape}")
    rgb = rgb[..., :3].astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """The inverse of :func:`rgb_to_id`: uint8 [H, W, 3] of segment ids [H, W] (0 <= id < 2**24)."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= 1 << 24):
        raise ValueError(f"panoptic ids must be in [0, 2**24), got {ids.min()}..{ids.max()}")
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


@dataclass
class Example:
    """One loaded evaluation example; maps are at the image's size."""

    image_id: str
    image: torch.Tensor  #: [3, H, W] uint8 RGB
    semantic: Optional[torch.Tensor] = None  #: [H, W] int64 class index, the ignore label where unlabelled
    panoptic: Optional[torch.Tensor] = None  #: [H, W] int64 segment ids, 0 = void
    segments: Optional[list[dict]] = None  #: id, category_id (contiguous), iscrowd
    instances: Optional[list[dict]] = None  #: category_id (contiguous), mask [H, W] bool, iscrowd


@dataclass
class Sample:
    """The files of one evaluation image; :meth:`load` reads them."""

    image_id: str
    image_path: Path
    label_path: Optional[Path] = None
    panoptic_path: Optional[Path] = None
    segments: Optional[list[dict]] = None  #: panoptic segments with contiguous category ids
    instances: Optional[list[dict]] = None  #: raw instance annotations (category_id contiguous, segmentation)
    ignore_label: int = 255
    #: every segment id of the panoptic PNG must be listed in ``segments`` (user data: panopticapi refuses
    #: such files too); the benchmarks' official PNGs are read as they are
    check_segment_ids: bool = False
    annotation_file: Optional[Path] = None  #: the JSON that describes this sample (named in errors)

    def load(self, what: Sequence[str] = ("semantic",)) -> Example:
        """Read the image and the ground truth of ``what`` (subset of ``EVALUATIONS``); sizes are checked."""
        image = to_rgb_tensor(self.image_path)
        size = (int(image.shape[1]), int(image.shape[2]))
        ex = Example(self.image_id, image)
        if "semantic" in what:
            ex.semantic = self.load_semantic(size)
        if "panoptic" in what or ("instance" in what and self.instances is None):
            ex.panoptic = self._load_panoptic(size)
            ex.segments = [dict(s) for s in (self.segments or [])]
        if "instance" in what:
            ex.instances = self._load_instances(size, ex.panoptic)
        if "panoptic" not in what:
            ex.panoptic = ex.segments = None
        return ex

    def load_semantic(self, size: Optional[tuple[int, int]] = None) -> torch.Tensor:
        """The label map [H, W] int64; ValueError naming the file when it is not ``size`` (H, W)."""
        if self.label_path is not None:
            labels = _read_label_map(self.label_path)
        elif self.panoptic_path is not None:  # COCO without panoptic_semseg: the same map, from the panoptic PNG
            labels = _semantic_from_panoptic(self._load_panoptic(size).numpy(), self.segments or [],
                                             self.ignore_label)
        elif self.instances is not None and size is not None:  # COCO instances: painted in annotation order
            labels = np.full(size, self.ignore_label, dtype=np.int64)
            for inst in self._load_instances(size, None):
                labels[inst["mask"].numpy()] = self.ignore_label if inst["iscrowd"] else inst["category_id"]
        else:
            raise ValueError(f"image {self.image_id} has no semantic label map")
        _check_size(labels.shape, size, self.label_path or self.panoptic_path, self.image_path)
        return torch.from_numpy(labels.astype(np.int64))

    def _load_panoptic(self, size: Optional[tuple[int, int]]) -> torch.Tensor:
        if self.panoptic_path is None:
            raise ValueError(f"image {self.image_id} has no panoptic annotation")
        ids = rgb_to_id(read_array(self.panoptic_path))
        _check_size(ids.shape, size, self.panoptic_path, self.image_path)
        if self.check_segment_ids:
            listed = {int(seg["id"]) for seg in self.segments or []}
            absent = sorted(set(np.unique(ids).tolist()) - listed - {0})
            if absent:
                raise DatasetError(f"panoptic PNG {self.panoptic_path} holds segment ids {absent[:10]} that its "
                                   f"annotation in {self.annotation_file or 'the JSON'} does not list in "
                                   f"segments_info (listed: {sorted(listed)[:10]})")
        return torch.from_numpy(ids)

    def _load_instances(self, size: tuple[int, int], panoptic: Optional[torch.Tensor]) -> list[dict]:
        if self.instances is None:  # derived from the panoptic thing segments (COCO without instances json)
            return [{"category_id": s["category_id"], "mask": panoptic == s["id"], "iscrowd": int(s["iscrowd"])}
                    for s in self.segments or [] if s.get("isthing")]
        out = []
        for a in self.instances:
            inst = {"category_id": a["category_id"], "mask": decode_segmentation(a["segmentation"], size),
                    "iscrowd": int(a.get("iscrowd", 0))}
            if a.get("area") is not None:  # COCO JSON areas (polygon areas) are what COCOeval uses
                inst["area"] = float(a["area"])
            out.append(inst)
        return out


@dataclass
class SegmentationDataset:
    """A list of evaluation samples with the dataset's vocabulary, ignore label and thing classes."""

    name: str
    vocabulary: Vocabulary
    ignore_label: int
    samples: list[Sample]
    evaluations: tuple[str, ...]  #: what this copy supports (panoptic/instance need their annotation files)
    thing_classes: Optional[list[bool]] = None  #: per class, for panoptic / instance evaluation
    short_name: str = ""
    spec: Optional[DatasetSpec] = None
    root: Optional[Path] = None
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]

    @property
    def num_classes(self) -> int:
        """Number of classes of the vocabulary."""
        return len(self.vocabulary)

    def subset(self, indices: Sequence[int]) -> "SegmentationDataset":
        """The same dataset restricted to ``indices`` (in that order)."""
        return replace(self, samples=[self.samples[i] for i in indices])



def list_files(folder: Path, suffixes: Optional[Sequence[str]]) -> dict[str, Path]:
    """stem -> file for files of ``folder`` with one of ``suffixes`` (any image suffix when None)."""
    allowed = tuple(s.lower() for s in (suffixes or IMAGE_SUFFIXES))
    out: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in allowed:
            if path.stem in out:
                raise DatasetError(f"two files share the stem {path.stem!r} in {folder}: "
                                   f"{out[path.stem].name} and {path.name}")
            out[path.stem] = path
    return out


def pair_files(image_dir: Path, label_dir: Path, image_suffix: Optional[str], label_suffix: str, strict: bool,
                missing_labels_ok: bool = False) -> list[tuple[str, Path, Path]]:
    images = list_files(image_dir, [image_suffix] if image_suffix else None)
    labels = list_files(label_dir, [label_suffix])
    no_label = [] if missing_labels_ok else sorted(set(images) - set(labels))
    no_image = sorted(set(labels) - set(images))
    if no_label or no_image:
        lines = []
        if no_label:
            lines.append(f"{len(no_label)} images in {image_dir} have no label map ({label_suffix}) in {label_dir}: "
                         + listing(no_label))
        if no_image:
            lines.append(f"{len(no_image)} label maps in {label_dir} have no image in {image_dir}: "
                         + listing(no_image))
        if strict:
            raise DatasetError("\n".join(lines))
        logger.warning("skipping %d images without labels and %d labels without images (strict=False)",
                       len(no_label), len(no_image))
    stems = sorted(set(images) & set(labels))
    if not stems:
        raise DatasetError(f"no image in {image_dir} has a label map in {label_dir}")
    return [(s, images[s], labels[s]) for s in stems]


def listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f", ... ({len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else "")



def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc



# ---------------------------------------------------------------------------------------------- decoding
def read_array(path: Path) -> np.ndarray:
    """Pixel array of an image or label file as stored (PNG/TIFF/JPEG); ValueError naming the file otherwise."""

    try:
        with Image.open(path) as im:
            return np.array(im)
    except (OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc


def _read_label_map(path: Path) -> np.ndarray:
    """A single-channel label map (8- or 16-bit PNG/TIFF; palette PNGs give their indices)."""
    labels = read_array(path)
    if labels.ndim != 2:
        raise ValueError(f"label map {path} must have one channel (a class index per pixel), got shape "
                         f"{labels.shape}")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"label map {path} must hold integers, got {labels.dtype}")
    return labels


def _check_size(shape: Sequence[int], size: Optional[tuple[int, int]], path: Optional[Path], image: Path) -> None:
    if size is not None and tuple(int(s) for s in shape[:2]) != tuple(size):
        raise ValueError(f"label file {path} is {shape[1]}x{shape[0]} (WxH) but its image {image} is "
                         f"{size[1]}x{size[0]}")


def _semantic_from_panoptic(ids: np.ndarray, segments: list[dict], ignore_label: int) -> np.ndarray:
    out = np.full(ids.shape, ignore_label, dtype=np.int64)
    for s in segments:
        out[ids == s["id"]] = s["category_id"]
    return out


def decode_segmentation(segm: Any, size: tuple[int, int]) -> torch.Tensor:
    """Bool mask [H, W] of a COCO segmentation (polygons, RLE or uncompressed RLE)."""

    h, w = size
    if isinstance(segm, list):  # polygons
        rle = mask_util.merge(mask_util.frPyObjects(segm, h, w)) if segm else None
        if rle is None:
            return torch.zeros((h, w), dtype=torch.bool)
    elif isinstance(segm, dict) and isinstance(segm.get("counts"), list):  # uncompressed RLE (crowds)
        rle = mask_util.frPyObjects(segm, *segm["size"])
    elif isinstance(segm, dict):
        rle = dict(segm, counts=segm["counts"].encode() if isinstance(segm["counts"], str) else segm["counts"])
    else:
        raise ValueError(f"unknown segmentation format {type(segm).__name__}")
    mask = mask_util.decode(rle)
    if mask.shape[:2] != (h, w):
        raise ValueError(f"instance mask is {mask.shape[1]}x{mask.shape[0]} but the image is {w}x{h}")
    return torch.from_numpy(mask.astype(bool))
