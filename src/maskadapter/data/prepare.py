"""Convert the official downloads of the benchmarks into the prepared layout the readers expect (the official $DETECTRON2_DATASETS layout).

These re-implement the official ``datasets/prepare_*.py`` scripts of the FC-CLIP / Mask-Adapter repositories
for the validation splits, without detectron2, panopticapi, mmcv, cv2 or the Detail API. ``RAW`` is the
folder of the official download (or a parent of it); ``ROOT`` is the data root the readers read.

Per target (``--raw`` -> what is written under ``--out``):

* ``ade20k-150``: RAW = ``ADEChallengeData2016`` (``images/validation``, ``annotations/validation``) ->
  ``ADEChallengeData2016/images/validation`` and ``annotations_detectron2/validation`` (label - 1, 0 -> 255).
  With ``annotations_instance/validation`` and ``--mapping`` (the official ``ade20k_instance_catid_mapping.txt``)
  also ``ade20k_panoptic_val/`` + ``ade20k_panoptic_val.json`` and ``ade20k_instance_val.json``.
* ``ade20k-847``: RAW = ``ADE20K_2021_17_01`` (``images/ADE/validation/**/ADE_val_*.jpg`` + ``*_seg.png``) and
  ``--mapping`` (below) -> ``ADE20K_2021_17_01/images_detectron2/validation`` (short side > 512 resized to 512)
  and ``annotations_detectron2/validation/*.tif`` (uint16, 65535 ignore).
* ``pascal-context-59`` / ``pascal-context-459``: RAW = ``VOCdevkit/VOC2010`` (``JPEGImages``, ``trainval/*.mat``,
  ``ImageSets/Main/val.txt``) -> ``pascal_ctx_d2/images/validation`` and ``annotations_ctx59/validation/*.png``
  (255 ignore) or ``annotations_ctx459/validation/*.tif`` (label - 1, 0 -> 65535).
* ``pascal-voc-20`` / ``pascal-voc-21``: RAW = ``VOCdevkit/VOC2012`` (``JPEGImages``, ``SegmentationClass``,
  ``ImageSets/Segmentation/val.txt``) -> ``pascal_voc_d2/images/validation``, ``annotations_pascal21/validation``
  (unchanged) and ``annotations_pascal20/validation`` (background and 255 -> 255, classes - 1); both targets
  write both.
* ``coco-stuff``: RAW = ``coco`` (``val2017``, ``stuffthingmaps/val2017``) -> ``coco/val2017`` and
  ``coco/stuffthingmaps_detectron2/val2017`` (COCO ids - 1 -> 171 contiguous ids, 255 ignore; as officially, no
  map is written for an image that is all unlabelled).
* ``coco-panoptic``: RAW = ``coco`` (``val2017``, ``annotations/panoptic_val2017.json``, ``panoptic_val2017/`` or
  ``annotations/panoptic_val2017.zip``) -> ``coco/panoptic_semseg_val2017`` (133 contiguous ids, 255 ignore) plus
  the images, panoptic PNGs and JSONs (``instances_val2017.json`` too when present).

Files are hard-linked when possible (else copied); label maps are written atomically.

Manual steps and deviations from the official scripts:

* ADE20K-847: the official script reads ``index_ade20k.pkl``, a pickle, to list the images. Unpickling can
  run arbitrary code, so it is never read here: the images are found by walking ``images/ADE/validation``
  for ``ADE_val_*.jpg`` files that have a ``*_seg.png`` next to them. The mapping from ADE20K-full object ids
  to the 847 classes is a table of the official script: pass that script (``datasets/
  prepare_ade20k_full_sem_seg.py`` of hustvl/MaskAdapter, bytedance/fc-clip or NVlabs/ODISE; it is parsed as
  data with ``ast.literal_eval``, never executed) or a JSON list of ``{"id": ..., "trainId": ...}`` as
  ``--mapping``. Images are resized with bilinear interpolation in torch where the official script uses cv2
  (pixels may differ by 1 grey level); labels use nearest neighbour as cv2 does.
* ADE20K panoptic / instances: ``--mapping`` must be the official ``datasets/ade20k_instance_catid_mapping.txt``
  (instance class -> ADE-150 class). Without it only the semantic maps are written. Panoptic segment ids are
  numbered 1, 2, ... (the official script draws random colours); PQ does not depend on them.
* Pascal Context 59: the official script uses the Detail API on ``trainval_merged.json``; here the 59
  classes are taken from the 459-class ``.mat`` label maps with the fixed id table below (every other class
  becomes 255), and the split is ``ImageSets/Main/val.txt`` (5105 images) unless ``--split-file`` is given.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import shutil
import zipfile
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as mask_util
from tqdm import tqdm

from .datasets import id_to_rgb, read_array, rgb_to_id, vocabulary_ids
from .table import DATASETS
from .vocabularies import builtin_vocabulary

__all__ = [
    "PREPARE_TARGETS", "prepare_dataset", "convert_ade20k_150_labels", "convert_voc20_labels",
    "convert_pascal_context_459", "convert_pascal_context_59", "convert_coco_stuff_labels",
    "panoptic_to_semantic", "convert_ade20k_full_labels", "ade20k_full_resized_shape", "read_ade847_mapping",
    "read_ade_instance_mapping",
]

logger = logging.getLogger(__name__)

PREPARE_TARGETS = tuple(name for name, spec in DATASETS.items() if spec.converter)
PathLike = Union[str, os.PathLike]

# The 59 PASCAL-Context classes as ids of the 459-class label maps (1-based, ascending; both class lists are
# alphabetical, so the k-th id is class k of PC-59). Every other id is "background" and ignored in PC-59.
_PC59_IDS_IN_459 = (
    2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98, 104, 105, 113, 115, 144, 158,
    159, 162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295, 296, 308, 324, 326, 347, 349, 354, 355, 360,
    366, 368, 397, 415, 416, 420, 424, 427, 440, 445, 454, 458,
)
_ADE847_MAX_SIDE = 512  # ADE20K-full images with a short side above this are resized to it


# ---------------------------------------------------------------------------------------------- label maps
def convert_ade20k_150_labels(labels: np.ndarray) -> np.ndarray:
    """ADE20K-150 ``annotations`` uint8 [H, W] (0 = other, 1..150) -> 0..149 with 0 becoming 255."""
    _check_dtype(labels, np.uint8, "ADE20K-150 annotation")
    return (labels.astype(np.int16) - 1).astype(np.uint8)  # 0 - 1 wraps to 255


def convert_voc20_labels(labels: np.ndarray) -> np.ndarray:
    """Pascal VOC ``SegmentationClass`` uint8 (0 = background, 1..20, 255 = border) -> 0..19, 255 elsewhere."""
    _check_dtype(labels, np.uint8, "VOC annotation")
    out = labels.astype(np.int16) - 1
    out[(labels == 0) | (labels == 255)] = 255
    return out.astype(np.uint8)


def convert_pascal_context_459(label_map: np.ndarray) -> np.ndarray:
    """PASCAL-Context ``LabelMap`` uint16 (0 = unlabelled, 1..459) -> 0..458, 65535 where unlabelled."""
    _check_dtype(label_map, np.uint16, "PASCAL-Context LabelMap")
    out = label_map.astype(np.int64) - 1
    out[label_map == 0] = 65535
    return out.astype(np.uint16)


def convert_pascal_context_59(label_map: np.ndarray) -> np.ndarray:
    """PASCAL-Context ``LabelMap`` uint16 (459-class ids) -> uint8 0..58 for the 59 classes, 255 elsewhere."""
    _check_dtype(label_map, np.uint16, "PASCAL-Context LabelMap")
    lut = np.full(65536, 255, dtype=np.uint8)
    lut[list(_PC59_IDS_IN_459)] = np.arange(len(_PC59_IDS_IN_459), dtype=np.uint8)
    return lut[label_map]


def _coco_stuff_lut() -> np.ndarray:
    # stuffthingmaps hold COCO category id - 1 (0..181, 255 unlabelled); the 171 used ids become contiguous.
    lut = np.full(256, 255, dtype=np.uint8)
    for index, coco_id in enumerate(vocabulary_ids("coco_stuff")):
        lut[coco_id - 1] = index
    return lut


def convert_coco_stuff_labels(labels: np.ndarray) -> np.ndarray:
    """COCO-Stuff ``stuffthingmaps`` uint8 (COCO id - 1, 255 unlabelled) -> 171 contiguous ids, 255 elsewhere."""
    _check_dtype(labels, np.uint8, "COCO-Stuff stuffthingmap")
    return _coco_stuff_lut()[labels]


def panoptic_to_semantic(ids: np.ndarray, segments: Iterable[dict], category_map: dict[int, int],
                         ignore_label: int = 255) -> np.ndarray:
    """uint8 [H, W] class map of panoptic ids [H, W]: each segment's pixels get ``category_map[category_id]``."""
    out = np.full(ids.shape, ignore_label, dtype=np.uint8)
    for seg in segments:
        out[ids == seg["id"]] = category_map[int(seg["category_id"])]
    return out


def convert_ade20k_full_labels(seg_rgb: np.ndarray, id_map: dict[int, int]) -> np.ndarray:
    """ADE20K-full ``*_seg.png`` [H, W, 3] -> uint16 847-class map (65535 for objects outside the 847).

    The object class of a pixel is ``floor(R / 10) * 256 + G`` (the ADE20K toolkit's encoding).
    """
    if seg_rgb.ndim != 3 or seg_rgb.shape[2] < 3:
        raise ValueError(f"an ADE20K _seg.png must be RGB, got shape {seg_rgb.shape}")
    obj = (seg_rgb[..., 0].astype(np.int64) // 10) * 256 + seg_rgb[..., 1].astype(np.int64)
    out = np.full(obj.shape, 65535, dtype=np.uint16)
    for value in np.unique(obj):
        if int(value) in id_map:
            out[obj == value] = id_map[int(value)]
    return out


def ade20k_full_resized_shape(h: int, w: int, max_size: int = _ADE847_MAX_SIDE) -> Optional[tuple[int, int]]:
    """(new_h, new_w) when the short side exceeds ``max_size`` (it becomes ``max_size``), else None."""
    if w >= h > max_size:
        return max_size, int(round(w / float(h) * max_size))
    if h >= w > max_size:
        return int(round(h / float(w) * max_size)), max_size
    return None


def _check_dtype(array: np.ndarray, dtype: type, what: str) -> None:
    if array.dtype != dtype:
        raise ValueError(f"{what} must be {np.dtype(dtype).name}, got {array.dtype}")


# ---------------------------------------------------------------------------------------------- mapping files
def read_ade847_mapping(path: PathLike) -> dict[int, int]:
    """ADE20K-full object id -> 847-class index, from the official ``prepare_ade20k_full_sem_seg.py`` (parsed as
    data, never run) or a JSON list of ``{"id", "trainId"}`` / a JSON object ``{id: trainId}``."""
    path = Path(path)
    if path.is_dir():
        path = path / "prepare_ade20k_full_sem_seg.py"
    if not path.is_file():
        raise FileNotFoundError(f"ADE20K-847 mapping file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".py":
        entries = None
        for node in ast.parse(text).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "ADE20K_SEM_SEG_FULL_CATEGORIES"
                                                    for t in node.targets):
                entries = ast.literal_eval(node.value)
        if entries is None:
            raise ValueError(f"{path} has no ADE20K_SEM_SEG_FULL_CATEGORIES list")
    else:
        entries = json.loads(text)
    if isinstance(entries, dict):
        entries = [{"id": int(k), "trainId": int(v)} for k, v in entries.items()]
    try:
        mapping = {int(e["id"]): int(e["trainId"]) for e in entries}
    except (TypeError, KeyError, ValueError) as exc:
        raise ValueError(f"{path}: every entry needs integer 'id' and 'trainId' ({exc})") from exc
    train_ids = sorted(mapping.values())
    if train_ids != list(range(len(train_ids))) or len(train_ids) > 847:
        raise ValueError(f"{path}: trainIds must be 0..N-1 without repeats (N <= 847), got {len(train_ids)} "
                         f"ids from {train_ids[0] if train_ids else None} to {train_ids[-1] if train_ids else None}")
    return mapping


def read_ade_instance_mapping(path: PathLike) -> dict[int, int]:
    """ADE instance class (R channel of ``annotations_instance``, 1..100) -> ADE-150 index (0..149), from the
    official ``ade20k_instance_catid_mapping.txt`` (header line, then ``instance_id semantic_id full_id``)."""
    path = Path(path)
    if path.is_dir():
        path = path / "ade20k_instance_catid_mapping.txt"
    if not path.is_file():
        raise FileNotFoundError(f"ADE20K instance mapping file not found: {path}")
    mapping: dict[int, int] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        fields = line.split()
        if number == 0 or not fields:
            continue
        if len(fields) < 2 or not fields[0].isdigit() or not fields[1].isdigit():
            raise ValueError(f"{path}, line {number + 1}: expected 'instance_id semantic_id ...', got {line!r}")
        ins, sem = int(fields[0]), int(fields[1])
        if not 1 <= sem <= 150:
            raise ValueError(f"{path}, line {number + 1}: semantic id {sem} is not in 1..150")
        if mapping.get(ins, sem - 1) != sem - 1:
            raise ValueError(f"{path}, line {number + 1}: instance id {ins} maps to two semantic ids")
        mapping[ins] = sem - 1
    if not mapping:
        raise ValueError(f"{path} has no mapping rows")
    return mapping


# ---------------------------------------------------------------------------------------------- helpers
def _write(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    Image.fromarray(array).save(tmp)
    os.replace(tmp, path)  # a killed run leaves no half-written file under the final name


def _place(src: Path, dst: Path) -> None:
    """Put ``src`` at ``dst``: nothing when it is the same file, a hard link when possible, else a copy."""
    if dst.exists():
        if dst.resolve() == src.resolve() or dst.stat().st_size == src.stat().st_size:
            return
        dst.unlink()
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _find(raw: Path, names: Sequence[str], required: str) -> Path:
    """The folder among ``raw`` and ``raw/<name>...`` that contains ``required``; error listing them otherwise."""
    raw = Path(raw).expanduser()
    candidates = [raw] + [raw / n for n in names]
    for c in candidates:
        if (c / required).exists():
            return c
    tried = ", ".join(str(c / required) for c in candidates)
    raise FileNotFoundError(f"raw download not found: expected {required} in one of: {tried}")


def _read_split(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path}")
    names = [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise ValueError(f"split file {path} lists no images")
    return names


def _progress(items: Sequence, desc: str):
    return tqdm(items, desc=desc, unit="img", leave=False)


def _require(paths: Iterable[Path], what: str) -> None:
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        shown = ", ".join(missing[:10]) + (f", ... ({len(missing) - 10} more)" if len(missing) > 10 else "")
        raise FileNotFoundError(f"{len(missing)} {what} missing: {shown}")


# ---------------------------------------------------------------------------------------------- converters
def _prepare_ade20k_150(raw: Path, out: Path, mapping: Optional[PathLike], **_: object) -> dict[str, int]:
    src = _find(raw, ["ADEChallengeData2016"], "annotations/validation")
    dst = out / "ADEChallengeData2016"
    images = sorted((src / "images" / "validation").glob("*.jpg"))
    if not images:
        raise FileNotFoundError(f"no images in {src / 'images' / 'validation'}")
    labels = [src / "annotations" / "validation" / f"{p.stem}.png" for p in images]
    _require(labels, "ADE20K-150 annotations")
    for image, label in zip(_progress(images, "ade20k-150"), labels):
        _place(image, dst / "images" / "validation" / image.name)
        _write(convert_ade20k_150_labels(read_array(label)), dst / "annotations_detectron2" / "validation" / label.name)
    counts = {"images": len(images), "semantic": len(images)}
    instance_dir = src / "annotations_instance" / "validation"
    if mapping is None:
        if instance_dir.is_dir():
            logger.warning("ADE20K panoptic/instance annotations skipped: pass --mapping with the official "
                           "datasets/ade20k_instance_catid_mapping.txt to make them")
        return counts
    if not instance_dir.is_dir():
        raise FileNotFoundError(f"ADE20K panoptic needs the instance annotations {instance_dir} "
                                "(annotations_instance.tar from sceneparsing.csail.mit.edu)")
    counts.update(_prepare_ade20k_panoptic(src, dst, images, read_ade_instance_mapping(mapping)))
    return counts


def _prepare_ade20k_panoptic(src: Path, dst: Path, images: list[Path], ins_map: dict[int, int]) -> dict[str, int]:
    """``ade20k_panoptic_val`` PNGs + JSON and ``ade20k_instance_val.json`` from semantic + instance PNGs."""

    names = builtin_vocabulary("ade20k_150").names
    thing_ids = set(ins_map.values())
    categories = [{"id": i, "name": n, "isthing": int(i in thing_ids), "color": id_to_rgb(np.array(i + 1)).tolist()}
                  for i, n in enumerate(names)]
    pan_images, pan_anns, ins_anns = [], [], []
    for image in _progress(images, "ade20k panoptic"):
        stem = image.stem
        sem = read_array(src / "annotations" / "validation" / f"{stem}.png").astype(np.int64) - 1  # -1 = unlabelled
        ins = read_array(src / "annotations_instance" / "validation" / f"{stem}.png")
        if ins.ndim != 3 or ins.shape[:2] != sem.shape:
            raise ValueError(f"instance annotation of {stem} must be RGB of the semantic map's size")
        h, w = sem.shape
        pan = np.zeros((h, w), dtype=np.int64)
        segments = []

        def add(mask: np.ndarray, category: int) -> None:
            seg_id = len(segments) + 1
            pan[mask] = seg_id
            ys, xs = np.nonzero(mask)
            segments.append({"id": seg_id, "category_id": int(category), "area": int(mask.sum()), "iscrowd": 0,
                             "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                                      int(ys.max() - ys.min() + 1)]})

        for cat in np.unique(sem):  # stuff from the semantic map first, things pasted over it
            if cat >= 0 and int(cat) not in thing_ids:
                add(sem == cat, int(cat))
        for instance_id in np.unique(ins[..., 1]):
            if instance_id == 0:
                continue
            mask = ins[..., 1] == instance_id
            classes = np.unique(ins[..., 0][mask])
            if len(classes) != 1 or int(classes[0]) not in ins_map:
                raise ValueError(f"instance {instance_id} of {stem} has instance classes {classes.tolist()} "
                                 "(expected one class listed in the mapping)")
            category = ins_map[int(classes[0])]
            add(mask, category)
            rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            ins_anns.append({"id": len(ins_anns) + 1, "image_id": stem, "iscrowd": 0, "category_id": category,
                             "bbox": segments[-1]["bbox"], "segmentation": rle, "area": int(mask_util.area(rle))})
        # As in the official script, areas are counted before later segments paste over earlier ones, and a
        # segment fully covered by later ones stays in the JSON (panopticapi then counts it as unmatched).
        _write(id_to_rgb(pan), dst / "ade20k_panoptic_val" / f"{stem}.png")
        pan_images.append({"id": stem, "file_name": image.name, "width": w, "height": h})
        pan_anns.append({"image_id": stem, "file_name": f"{stem}.png", "segments_info": segments})
    _write_json({"images": pan_images, "annotations": pan_anns, "categories": categories},
                dst / "ade20k_panoptic_val.json")
    thing_categories = [c for c in categories if c["isthing"]]
    _write_json({"images": pan_images, "annotations": ins_anns, "categories": thing_categories},
                dst / "ade20k_instance_val.json")
    return {"panoptic": len(pan_anns), "instances": len(ins_anns)}


def _write_json(data: object, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


def _prepare_ade20k_847(raw: Path, out: Path, mapping: Optional[PathLike], **_: object) -> dict[str, int]:
    if mapping is None:
        raise ValueError("ade20k-847 needs --mapping: the official datasets/prepare_ade20k_full_sem_seg.py (read as "
                         "data, not run) or a JSON list of {'id', 'trainId'} with the 847 classes")
    id_map = read_ade847_mapping(mapping)
    src = _find(raw, ["ADE20K_2021_17_01", "ade/ADE20K_2021_17_01"], "images/ADE")
    images = sorted(p for p in (src / "images" / "ADE").rglob("ADE_val_*.jpg"))
    if not images:
        raise FileNotFoundError(f"no ADE_val_*.jpg under {src / 'images' / 'ADE'}")
    segs = [p.with_name(f"{p.stem}_seg.png") for p in images]
    _require(segs, "ADE20K-full _seg.png files")
    dst = out / "ADE20K_2021_17_01"
    for image, seg in zip(_progress(images, "ade20k-847"), segs):
        rgb, labels = read_array(image), convert_ade20k_full_labels(read_array(seg), id_map)
        if rgb.ndim == 2:
            rgb = np.repeat(rgb[..., None], 3, axis=2)
        if rgb.shape[:2] != labels.shape:
            raise ValueError(f"{seg} is {labels.shape[1]}x{labels.shape[0]} but {image} is "
                             f"{rgb.shape[1]}x{rgb.shape[0]}")
        new = ade20k_full_resized_shape(*labels.shape)
        if new is not None:
            x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
            rgb = F.interpolate(x, size=new, mode="bilinear", align_corners=False).round().clamp(0, 255)
            rgb = rgb[0].permute(1, 2, 0).to(torch.uint8).numpy()
            # cv2.INTER_NEAREST takes source pixel floor(i * in / out), as torch's "nearest" does
            lab = torch.from_numpy(labels.astype(np.int32))[None, None].float()
            labels = F.interpolate(lab, size=new, mode="nearest")[0, 0].to(torch.int32).numpy().astype(np.uint16)
        dst_img = dst / "images_detectron2" / "validation" / image.name
        dst_img.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(dst_img)  # re-encoded as JPEG like the official script (PIL's default quality)
        _write(labels, dst / "annotations_detectron2" / "validation" / f"{image.stem}.tif")
    return {"images": len(images), "semantic": len(images)}


def _voc_ids(src: Path, split_file: Optional[PathLike], default: str) -> list[str]:
    return _read_split(Path(split_file) if split_file else src / default)


def _prepare_pascal_context(raw: Path, out: Path, split_file: Optional[PathLike], full: bool,
                            **_: object) -> dict[str, int]:
    from scipy.io import loadmat

    src = _find(raw, ["VOC2010", "VOCdevkit/VOC2010"], "trainval")
    ids = _voc_ids(src, split_file, "ImageSets/Main/val.txt")
    images = [src / "JPEGImages" / f"{i}.jpg" for i in ids]
    mats = [src / "trainval" / f"{i}.mat" for i in ids]
    _require(images, "VOC2010 images")
    _require(mats, "PASCAL-Context .mat label maps")
    dst = out / "pascal_ctx_d2"
    for image, mat in zip(_progress(images, "pascal-context"), mats):
        try:
            label_map = loadmat(str(mat))["LabelMap"]
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"cannot read LabelMap from {mat}: {exc}") from exc
        _place(image, dst / "images" / "validation" / image.name)
        if full:
            _write(convert_pascal_context_459(label_map), dst / "annotations_ctx459" / "validation" / f"{mat.stem}.tif")
        else:
            _write(convert_pascal_context_59(label_map), dst / "annotations_ctx59" / "validation" / f"{mat.stem}.png")
    return {"images": len(images), "semantic": len(images)}


def _prepare_pascal_voc(raw: Path, out: Path, split_file: Optional[PathLike], **_: object) -> dict[str, int]:
    src = _find(raw, ["VOC2012", "VOCdevkit/VOC2012"], "SegmentationClass")
    ids = _voc_ids(src, split_file, "ImageSets/Segmentation/val.txt")
    images = [src / "JPEGImages" / f"{i}.jpg" for i in ids]
    labels = [src / "SegmentationClass" / f"{i}.png" for i in ids]
    _require(images, "VOC2012 images")
    _require(labels, "VOC2012 SegmentationClass maps")
    dst = out / "pascal_voc_d2"
    for image, label in zip(_progress(images, "pascal-voc"), labels):
        raw_labels = read_array(label)  # palette PNG: the array holds the class indices
        _place(image, dst / "images" / "validation" / image.name)
        _write(raw_labels.astype(np.uint8), dst / "annotations_pascal21" / "validation" / label.name)
        _write(convert_voc20_labels(raw_labels), dst / "annotations_pascal20" / "validation" / label.name)
    return {"images": len(images), "semantic": len(images)}


def _prepare_coco_stuff(raw: Path, out: Path, **_: object) -> dict[str, int]:
    src = _find(raw, ["coco"], "stuffthingmaps/val2017")
    maps = sorted((src / "stuffthingmaps" / "val2017").glob("*.png"))
    if not maps:
        raise FileNotFoundError(f"no PNG in {src / 'stuffthingmaps' / 'val2017'}")
    images = [src / "val2017" / f"{p.stem}.jpg" for p in maps]
    _require(images, "COCO val2017 images")
    dst = out / "coco"
    written = 0
    for image, label in zip(_progress(images, "coco-stuff"), maps):
        _place(image, dst / "val2017" / image.name)
        converted = convert_coco_stuff_labels(read_array(label))
        if (converted == 255).all():  # as the official script: no map for an all-unlabelled image
            continue
        _write(converted, dst / "stuffthingmaps_detectron2" / "val2017" / label.name)
        written += 1
    return {"images": len(images), "semantic": written}


def _safe_extract(archive: Path, dest: Path) -> None:
    """Extract the PNGs of a zip into ``dest``, refusing members that would land outside it."""
    with zipfile.ZipFile(archive) as zf:
        for member in zf.infolist():
            if member.is_dir() or not member.filename.lower().endswith(".png"):
                continue
            name = Path(member.filename).name
            if not name or name != os.path.basename(name) or name.startswith("."):
                raise ValueError(f"{archive}: refusing member {member.filename!r}")
            dest.mkdir(parents=True, exist_ok=True)
            with zf.open(member) as fsrc, open(dest / name, "wb") as fdst:
                shutil.copyfileobj(fsrc, fdst)


def _prepare_coco_panoptic(raw: Path, out: Path, **_: object) -> dict[str, int]:
    src = _find(raw, ["coco"], "annotations/panoptic_val2017.json")
    dst = out / "coco"
    pan_json = src / "annotations" / "panoptic_val2017.json"
    data = json.loads(pan_json.read_text(encoding="utf-8"))
    pan_dir = src / "panoptic_val2017"
    if not pan_dir.is_dir():
        archive = src / "annotations" / "panoptic_val2017.zip"
        if not archive.is_file():
            raise FileNotFoundError(f"COCO panoptic PNGs not found: expected {pan_dir} or {archive}")
        pan_dir = dst / "panoptic_val2017"
        _safe_extract(archive, pan_dir)
    ids = vocabulary_ids("coco_panoptic")
    category_map = {coco_id: index for index, coco_id in enumerate(ids)}
    unknown = [c["id"] for c in data["categories"] if c["id"] not in category_map]
    if unknown:
        raise ValueError(f"{pan_json} has categories {unknown} outside the 133 COCO panoptic classes")
    file_of = {img["id"]: img["file_name"] for img in data["images"]}
    anns = data["annotations"]
    _require([src / "val2017" / file_of[a["image_id"]] for a in anns], "COCO val2017 images")
    _require([pan_dir / a["file_name"] for a in anns], "COCO panoptic PNGs")
    for ann in _progress(anns, "coco-panoptic"):
        pan = pan_dir / ann["file_name"]
        _place(src / "val2017" / file_of[ann["image_id"]], dst / "val2017" / file_of[ann["image_id"]])
        _place(pan, dst / "panoptic_val2017" / pan.name)
        semantic = panoptic_to_semantic(rgb_to_id(read_array(pan)), ann["segments_info"], category_map)
        _write(semantic, dst / "panoptic_semseg_val2017" / pan.name)
    _place(pan_json, dst / "annotations" / "panoptic_val2017.json")
    instances = src / "annotations" / "instances_val2017.json"
    if instances.is_file():
        _place(instances, dst / "annotations" / "instances_val2017.json")
    return {"images": len(anns), "semantic": len(anns), "panoptic": len(anns)}


def prepare_dataset(name: str, raw: PathLike, out: PathLike, mapping: Optional[PathLike] = None,
                    split_file: Optional[PathLike] = None) -> dict[str, int]:
    """Convert the official download ``raw`` of dataset ``name`` into ``out`` (the data root); returns counts.

    ``mapping``: the official id table some conversions need (ADE20K-847, ADE20K panoptic; see module doc).
    ``split_file``: a list of image ids replacing the default validation list (Pascal VOC / Context).
    """
    if name not in DATASETS or not DATASETS[name].converter:
        raise ValueError(f"unknown dataset {name!r} to prepare; choose one of {', '.join(PREPARE_TARGETS)}")
    raw, out = Path(raw).expanduser(), Path(out).expanduser()
    if not raw.exists():
        raise FileNotFoundError(f"raw download folder not found: {raw} (expected {DATASETS[name].raw_hint})")
    spec = DATASETS[name]
    convert: Callable[..., dict[str, int]] = globals()[f"_prepare_{spec.converter}"]
    counts = convert(raw, out, mapping=mapping, split_file=split_file, **spec.converter_args)
    logger.info("prepared %s under %s: %s", name, out, counts)
    return counts
