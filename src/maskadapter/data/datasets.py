"""Readers for the prepared evaluation datasets (the official $DETECTRON2_DATASETS layout) and for custom folders of images + label maps.

Layouts under a data root (the official ``$DETECTRON2_DATASETS``; ``maskadapter prepare`` makes them):

* ``ade20k-150``: ``ADEChallengeData2016/images/validation/*.jpg`` and
  ``ADEChallengeData2016/annotations_detectron2/validation/*.png`` (0..149, 255 ignore); panoptic evaluation when
  ``ade20k_panoptic_val/*.png`` + ``ade20k_panoptic_val.json`` exist (thing classes: the JSON's ``isthing``,
  100 classes), instance AP when ``ade20k_instance_val.json`` exists too.
* ``ade20k-847``: ``ADE20K_2021_17_01/images_detectron2/validation/*.jpg`` and
  ``ADE20K_2021_17_01/annotations_detectron2/validation/*.tif`` (uint16, 0..846, 65535 ignore).
* ``pascal-context-59``: ``pascal_ctx_d2/images/validation/*.jpg``, ``pascal_ctx_d2/annotations_ctx59/validation/
  *.png`` (255 ignore). ``pascal-context-459``: the same images, ``annotations_ctx459/validation/*.tif`` (65535).
* ``pascal-voc-20``: ``pascal_voc_d2/images/validation/*.jpg``, ``pascal_voc_d2/annotations_pascal20/validation/
  *.png`` (background is 255). ``pascal-voc-21``: ``annotations_pascal21/validation/*.png`` (background is 0).
* ``coco-panoptic``: ``coco/val2017/*.jpg``, ``coco/panoptic_val2017/*.png`` (id = R + 256 G + 65536 B) and
  ``coco/annotations/panoptic_val2017.json``; category ids become 0..132 in the built-in vocabulary's order and
  ids < 92 are things. Semantic maps from ``coco/panoptic_semseg_val2017`` when present (else derived from the
  panoptic PNGs: the same maps); instance masks from ``coco/annotations/instances_val2017.json`` when present
  (else the panoptic thing segments).
* ``coco-stuff``: ``coco/val2017/*.jpg``, ``coco/stuffthingmaps_detectron2/val2017/*.png`` (171 classes, 255);
  images without a map are skipped (the official converter writes none for an all-unlabelled image).

Every label value indexes the dataset's built-in vocabulary (``maskadapter.data.vocabularies``). Panoptic
category ids of the JSON files are mapped to these contiguous indices. Labels outside the class range are
not checked here: the evaluators count them.

Custom datasets (``custom:IMAGES_DIR,LABELS_DIR,CLASS_FILE`` on the command line): one label PNG per image
with the same file stem; label value ``k`` is the ``k``-th class read from the class file
(:meth:`Vocabulary.from_file`, so ``id:`` lines with id 0 are skipped and do not count); the ignore label is
255 (65535 when the class file has 255 classes or more, which needs 16-bit PNGs).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_util

from ..constants import IMAGE_SUFFIXES, TASKS
from ..images import to_rgb_tensor
from ..vocabulary import Vocabulary
from .table import DATASETS, DatasetSpec
from .vocabularies import _read_lines, builtin_vocabulary

__all__ = [
    "DatasetSpec", "DATASETS", "EVALUATIONS", "IMAGE_SUFFIXES", "Sample", "Example", "SegmentationDataset",
    "DatasetError", "get_dataset_spec", "load_dataset", "load_custom_dataset", "parse_custom", "rgb_to_id",
    "id_to_rgb", "vocabulary_ids",
]

logger = logging.getLogger(__name__)

EVALUATIONS = TASKS
_MAX_LISTED = 20


class DatasetError(ValueError):
    """A dataset folder does not match its layout (missing files, unpaired images or labels)."""


def get_dataset_spec(name: str) -> DatasetSpec:
    """The spec of a built-in dataset; ValueError listing the known names otherwise."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)} "
                         "or custom:IMAGES_DIR,LABELS_DIR,CLASS_FILE")
    return DATASETS[name]


def vocabulary_ids(name: str) -> list[int]:
    """The class-file id of every class of a built-in vocabulary, in vocabulary order."""
    ids = []
    for line in _read_lines(name):
        head, sep, rest = line.strip().partition(":")
        if not sep or not head.strip().isdigit():
            continue
        idx = int(head)
        if (idx == 0 and name != "pascal_voc_21") or rest.strip() == "invalid_class_id":
            continue
        ids.append(idx)
    if len(ids) != len(builtin_vocabulary(name)):  # the two readers must agree on which lines are classes
        raise RuntimeError(f"vocabulary {name}: {len(ids)} ids for {len(builtin_vocabulary(name))} classes")
    return ids


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
        else:
            raise ValueError(f"image {self.image_id} has no semantic label map")
        _check_size(labels.shape, size, self.label_path or self.panoptic_path, self.image_path)
        return torch.from_numpy(labels.astype(np.int64))

    def _load_panoptic(self, size: Optional[tuple[int, int]]) -> torch.Tensor:
        if self.panoptic_path is None:
            raise ValueError(f"image {self.image_id} has no panoptic annotation")
        ids = rgb_to_id(read_array(self.panoptic_path))
        _check_size(ids.shape, size, self.panoptic_path, self.image_path)
        return torch.from_numpy(ids)

    def _load_instances(self, size: tuple[int, int], panoptic: Optional[torch.Tensor]) -> list[dict]:
        if self.instances is None:  # derived from the panoptic thing segments (COCO without instances json)
            return [{"category_id": s["category_id"], "mask": panoptic == s["id"], "iscrowd": int(s["iscrowd"])}
                    for s in self.segments or [] if s.get("isthing")]
        out = []
        for a in self.instances:
            inst = {"category_id": a["category_id"], "mask": _decode_segmentation(a["segmentation"], size),
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


# ---------------------------------------------------------------------------------------------- loading
def load_dataset(name: str, root: Union[str, os.PathLike, None] = None, strict: bool = True
                 ) -> SegmentationDataset:
    """Read the prepared dataset ``name`` (see module doc, or ``custom:IMAGES,LABELS,CLASSES``) under ``root``.

    ``strict``: images without labels and labels without images raise :class:`DatasetError` listing them;
    with ``strict=False`` they are skipped with a warning giving the counts.
    """
    if name.startswith("custom:"):
        return load_custom_dataset(*parse_custom(name), strict=strict)
    spec = get_dataset_spec(name)
    if root is None:
        raise ValueError(f"dataset {name} needs a data root (--data-root or $DETECTRON2_DATASETS)")
    root = Path(root).expanduser()
    image_dir = _require_dir(root / spec.image_dir, spec, root)
    vocab = builtin_vocabulary(spec.vocabulary)
    if spec.panoptic_defines_images:
        return _load_coco_panoptic(spec, root, image_dir, vocab, strict)
    label_dir = _require_dir(root / spec.label_dir, spec, root)
    pairs = _pair_files(image_dir, label_dir, spec.image_suffix, spec.label_suffix, strict,
                        missing_labels_ok=spec.labels_define_images)
    samples = [Sample(stem, img, lab, ignore_label=spec.ignore_label) for stem, img, lab in pairs]
    evaluations: tuple[str, ...] = ("semantic",)
    things = None
    if spec.panoptic_json and (root / spec.panoptic_json).is_file():
        things = _attach_panoptic(spec, root, samples, len(vocab), strict)
        evaluations += ("panoptic",)
        if spec.instance_json and (root / spec.instance_json).is_file():
            _attach_instances(spec, root, samples, len(vocab))
            evaluations += ("instance",)
    elif spec.panoptic_json:
        logger.info("%s: no %s, panoptic and instance evaluation unavailable (%s makes it)",
                    spec.name, root / spec.panoptic_json, spec.prepare_command(root))
    return SegmentationDataset(spec.name, vocab, spec.ignore_label, samples, evaluations, things,
                               spec.short_name, spec, root)


def parse_custom(text: str) -> tuple[Path, Path, Path]:
    """``custom:IMAGES_DIR,LABELS_DIR,CLASS_FILE`` -> the three paths."""
    body = text[len("custom:"):] if text.startswith("custom:") else text
    parts = [p.strip() for p in body.split(",")]
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"custom dataset must be custom:IMAGES_DIR,LABELS_DIR,CLASS_FILE, got {text!r}")
    return Path(parts[0]).expanduser(), Path(parts[1]).expanduser(), Path(parts[2]).expanduser()


def load_custom_dataset(images_dir: Union[str, os.PathLike], labels_dir: Union[str, os.PathLike],
                        class_file: Union[str, os.PathLike], strict: bool = True,
                        name: str = "custom") -> SegmentationDataset:
    """A folder of images + a folder of label PNGs (same stems) + a class file; semantic evaluation only."""
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    for what, path in (("images", images_dir), ("labels", labels_dir)):
        if not path.is_dir():
            raise FileNotFoundError(f"custom dataset: {what} folder not found: {path}")
    vocab = Vocabulary.from_file(class_file)
    ignore = 255 if len(vocab) < 255 else 65535
    pairs = _pair_files(images_dir, labels_dir, None, ".png", strict)
    samples = [Sample(stem, img, lab, ignore_label=ignore) for stem, img, lab in pairs]
    return SegmentationDataset(name, vocab, ignore, samples, ("semantic",), None, name,
                               extra={"images": str(images_dir), "labels": str(labels_dir),
                                      "classes": str(class_file)})


def _require_dir(path: Path, spec: DatasetSpec, root: Path) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"dataset {spec.name}: expected the folder {path} (not found). "
                                f"Make it with: {spec.prepare_command(root)}")
    return path


def _list_files(folder: Path, suffixes: Optional[Sequence[str]]) -> dict[str, Path]:
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


def _pair_files(image_dir: Path, label_dir: Path, image_suffix: Optional[str], label_suffix: str, strict: bool,
                missing_labels_ok: bool = False) -> list[tuple[str, Path, Path]]:
    images = _list_files(image_dir, [image_suffix] if image_suffix else None)
    labels = _list_files(label_dir, [label_suffix])
    no_label = [] if missing_labels_ok else sorted(set(images) - set(labels))
    no_image = sorted(set(labels) - set(images))
    if no_label or no_image:
        lines = []
        if no_label:
            lines.append(f"{len(no_label)} images in {image_dir} have no label map ({label_suffix}) in {label_dir}: "
                         + _listing(no_label))
        if no_image:
            lines.append(f"{len(no_image)} label maps in {label_dir} have no image in {image_dir}: "
                         + _listing(no_image))
        if strict:
            raise DatasetError("\n".join(lines))
        logger.warning("skipping %d images without labels and %d labels without images (strict=False)",
                       len(no_label), len(no_image))
    stems = sorted(set(images) & set(labels))
    if not stems:
        raise DatasetError(f"no image in {image_dir} has a label map in {label_dir}")
    return [(s, images[s], labels[s]) for s in stems]


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f", ... ({len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else "")


def _category_map(spec: DatasetSpec, categories: list[dict]) -> tuple[dict[int, int], list[bool]]:
    """JSON category id -> contiguous index, and per class whether it is a thing (from ``isthing``)."""
    ids = vocabulary_ids(spec.vocabulary)
    position = {v: i for i, v in enumerate(ids)}
    mapping: dict[int, int] = {}
    things = [False] * len(ids)
    for cat in categories:
        key = int(cat["id"]) + spec.json_category_offset
        if key not in position:
            raise DatasetError(f"{spec.name}: category {cat.get('name', '?')!r} (id {cat['id']}) of the JSON is not "
                               f"in the built-in vocabulary {spec.vocabulary}")
        mapping[int(cat["id"])] = position[key]
        things[position[key]] = bool(cat.get("isthing", 0))
    if spec.thing_id_below is not None:
        things = [i < spec.thing_id_below for i in ids]
    return mapping, things


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc


def _contiguous_segments(info: list[dict], mapping: dict[int, int], things: list[bool], where: str) -> list[dict]:
    out = []
    for s in info:
        if int(s["category_id"]) not in mapping:
            raise DatasetError(f"{where}: segment {s['id']} has unknown category id {s['category_id']}")
        c = mapping[int(s["category_id"])]
        out.append({"id": int(s["id"]), "category_id": c, "iscrowd": int(s.get("iscrowd", 0)), "isthing": things[c]})
    return out


def _attach_panoptic(spec: DatasetSpec, root: Path, samples: list[Sample], num_classes: int,
                     strict: bool) -> list[bool]:
    """ADE-150: attach the panoptic PNG + segments to each sample (by stem); returns the thing flags."""
    data = _read_json(root / spec.panoptic_json)
    mapping, things = _category_map(spec, data.get("categories", []))
    pan_dir = _require_dir(root / spec.panoptic_dir, spec, root)
    by_stem = {Path(a["file_name"]).stem: a for a in data.get("annotations", [])}
    missing = [s.image_id for s in samples if s.image_id not in by_stem
               or not (pan_dir / by_stem[s.image_id]["file_name"]).is_file()]
    if missing:
        msg = (f"{len(missing)} images have no panoptic annotation in {root / spec.panoptic_json} / {pan_dir}: "
               + _listing(missing))
        if strict:
            raise DatasetError(msg)
        logger.warning("%s; skipping them (strict=False)", msg.split(":")[0])
        samples[:] = [s for s in samples if s.image_id not in set(missing)]
    for s in samples:
        ann = by_stem[s.image_id]
        s.panoptic_path = pan_dir / ann["file_name"]
        s.segments = _contiguous_segments(ann["segments_info"], mapping, things, str(s.panoptic_path))
    return things


def _attach_instances(spec: DatasetSpec, root: Path, samples: list[Sample], num_classes: int) -> None:
    """Attach instance annotations (category ids made contiguous) to each sample, by image file stem."""
    data = _read_json(root / spec.instance_json)
    mapping, _ = _category_map(spec, data.get("categories", []))
    stem_of = {img["id"]: Path(img["file_name"]).stem for img in data.get("images", [])}
    grouped: dict[str, list[dict]] = {}
    for ann in data.get("annotations", []):
        stem = stem_of.get(ann["image_id"])
        if stem is None or int(ann["category_id"]) not in mapping:
            raise DatasetError(f"{root / spec.instance_json}: annotation {ann.get('id')} has an unknown image id "
                               f"{ann['image_id']!r} or category id {ann['category_id']}")
        grouped.setdefault(stem, []).append({"category_id": mapping[int(ann["category_id"])],
                                             "segmentation": ann["segmentation"],
                                             "iscrowd": int(ann.get("iscrowd", 0)), "area": ann.get("area")})
    for s in samples:
        s.instances = grouped.get(s.image_id, [])


def _load_coco_panoptic(spec: DatasetSpec, root: Path, image_dir: Path, vocab: Vocabulary,
                        strict: bool) -> SegmentationDataset:
    json_path = root / spec.panoptic_json
    if not json_path.is_file():
        raise FileNotFoundError(f"dataset {spec.name}: expected {json_path} (not found). "
                                f"Make it with: {spec.prepare_command(root)}")
    pan_dir = _require_dir(root / spec.panoptic_dir, spec, root)
    data = _read_json(json_path)
    mapping, things = _category_map(spec, data.get("categories", []))
    file_of = {img["id"]: img["file_name"] for img in data.get("images", [])}
    sem_dir = root / spec.label_dir
    use_sem = sem_dir.is_dir()
    samples, problems = [], []
    for ann in sorted(data.get("annotations", []), key=lambda a: a["file_name"]):
        image = image_dir / file_of.get(ann["image_id"], f"{Path(ann['file_name']).stem}.jpg")
        pan = pan_dir / ann["file_name"]
        sem = sem_dir / ann["file_name"] if use_sem else None
        absent = [p for p in (image, pan, sem) if p is not None and not p.is_file()]
        if absent:
            problems.append(", ".join(str(p) for p in absent))
            continue
        samples.append(Sample(Path(image).stem, image, sem, pan,
                              _contiguous_segments(ann["segments_info"], mapping, things, str(pan)),
                              ignore_label=spec.ignore_label))
    if problems:
        msg = f"{len(problems)} annotations of {json_path} lack their files: " + _listing(problems)
        if strict:
            raise DatasetError(msg)
        logger.warning("%d annotations of %s lack their files; skipping them (strict=False)", len(problems),
                       json_path)
    if not samples:
        raise DatasetError(f"{json_path} lists no image with all its files")
    if not use_sem:
        logger.info("%s: no %s, semantic maps are derived from the panoptic PNGs", spec.name, sem_dir)
    evaluations = EVALUATIONS
    if spec.instance_json and (root / spec.instance_json).is_file():
        _attach_instances(spec, root, samples, len(vocab))
    return SegmentationDataset(spec.name, vocab, spec.ignore_label, samples, evaluations, things, spec.short_name,
                               spec, root)


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


def _decode_segmentation(segm: Any, size: tuple[int, int]) -> torch.Tensor:
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
