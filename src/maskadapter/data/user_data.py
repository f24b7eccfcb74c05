"""Your own labelled images, in the formats people label in; one spelling for ``train --data`` and ``eval --dataset``.

* ``coco:ANNOTATIONS.json,IMAGES_DIR``: COCO instances (polygons, RLE or uncompressed RLE). Classes are the JSON's
  ``categories`` sorted by id (``name``, plus ``synonyms`` when present); crowd annotations are ignored regions.
* ``panoptic:PANOPTIC.json,IMAGES_DIR[,PNG_DIR]``: COCO panoptic (panopticapi's format); the PNGs default to the
  folder named like the JSON without ``.json`` (``panoptic.json`` -> ``panoptic/``), as ``segment --format coco``
  writes them. ``isthing`` of the categories decides the thing classes.
* ``labels:IMAGES_DIR,LABELS_DIR,CLASS_FILE`` (or ``custom:``): one label PNG per image with the same file stem;
  value ``k`` is class ``k`` of the class file (vocabulary-file syntax), 255 is ignored (65535 from 255 classes on).

Everything that can be checked without decoding pixels is checked when the dataset is read, and the error names
the file and the annotation: a missing image or PNG, a category id outside the class list, a polygon outside its
image, an RLE of the wrong size, an empty dataset. Segment ids of a panoptic PNG that its annotation does not
list are found when the PNG is read.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Optional, Union

from ..vocabulary import Vocabulary
from .samples import DatasetError, Sample, SegmentationDataset, listing, pair_files, read_json

__all__ = ["DATA_KINDS", "DATA_SYNTAX", "is_user_data", "parse_data", "load_user_dataset", "parse_custom",
           "load_custom_dataset", "load_coco_instances", "load_coco_panoptic", "split_dataset"]

logger = logging.getLogger(__name__)

#: Spelling prefix -> the paths it takes (the last in brackets is optional).
DATA_KINDS = {"coco": "ANNOTATIONS.json,IMAGES_DIR", "panoptic": "PANOPTIC.json,IMAGES_DIR[,PNG_DIR]",
              "labels": "IMAGES_DIR,LABELS_DIR,CLASS_FILE", "custom": "IMAGES_DIR,LABELS_DIR,CLASS_FILE"}
DATA_SYNTAX = "coco:ANNOTATIONS.json,IMAGES_DIR | panoptic:PANOPTIC.json,IMAGES_DIR[,PNG_DIR] | " \
              "labels:IMAGES_DIR,LABELS_DIR,CLASS_FILE"
_POLYGON_SLACK = 1.0  # pixels: annotation tools put vertices on the border (x = width) routinely


def is_user_data(text: str) -> bool:
    """True when ``text`` uses one of the ``kind:paths`` spellings (not a benchmark name)."""
    return isinstance(text, str) and text.split(":", 1)[0] in DATA_KINDS and ":" in text


def parse_data(text: str) -> tuple[str, list[Path]]:
    """``kind:PATH,PATH[,PATH]`` -> (kind, paths); ValueError showing the syntax otherwise."""
    kind, sep, body = text.partition(":")
    if not sep or kind not in DATA_KINDS:
        raise ValueError(f"data {text!r} must be one of {DATA_SYNTAX}")
    parts = [p.strip() for p in body.split(",")]
    syntax = DATA_KINDS[kind]
    required = syntax.split("[")[0].strip(",").split(",")
    wanted = syntax.replace("[", "").replace("]", "").split(",")
    if not all(parts) or not len(required) <= len(parts) <= len(wanted):
        raise ValueError(f"data {text!r}: {kind} takes {kind}:{DATA_KINDS[kind]}")
    return ("labels" if kind == "custom" else kind), [Path(p).expanduser() for p in parts]


def load_user_dataset(text: str, strict: bool = True) -> SegmentationDataset:
    """The dataset of a ``coco:`` / ``panoptic:`` / ``labels:`` spelling (see the module doc)."""
    kind, paths = parse_data(text)
    if kind == "coco":
        return load_coco_instances(*paths)
    if kind == "panoptic":
        return load_coco_panoptic(*paths)
    return load_custom_dataset(*paths, strict=strict)


def parse_custom(text: str) -> tuple[Path, Path, Path]:
    """``custom:IMAGES_DIR,LABELS_DIR,CLASS_FILE`` (or ``labels:``) -> the three paths."""
    body = text.split(":", 1)[1] if text.split(":", 1)[0] in ("custom", "labels") else text
    kind, paths = parse_data(f"labels:{body}")
    return paths[0], paths[1], paths[2]


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
    pairs = pair_files(images_dir, labels_dir, None, ".png", strict)
    samples = [Sample(stem, img, lab, ignore_label=ignore) for stem, img, lab in pairs]
    return SegmentationDataset(name, vocab, ignore, samples, ("semantic",), None, name,
                               extra={"images": str(images_dir), "labels": str(labels_dir),
                                      "classes": str(class_file), "format": "labels"})


# ---------------------------------------------------------------------------------------------- COCO JSON
def _read_coco(path: Path, kind: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{kind} annotation file not found: {path}")
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list) or not isinstance(data.get("categories"), list):
        raise DatasetError(f"{path} is not a COCO {kind} file: it needs 'images', 'annotations' and 'categories' "
                           "lists")
    if not data["images"]:
        raise DatasetError(f"{path} is an empty dataset: it lists no images")
    if not data["categories"]:
        raise DatasetError(f"{path} is an empty dataset: it lists no categories")
    return data


def _categories(path: Path, categories: list[dict]) -> tuple[Vocabulary, dict[int, int], list[bool]]:
    """Vocabulary (categories sorted by id), JSON id -> contiguous index, thing flags."""
    seen: dict[int, dict] = {}
    for cat in categories:
        if not isinstance(cat, dict) or "id" not in cat or not str(cat.get("name", "")).strip():
            raise DatasetError(f"{path}: category {cat!r} needs an 'id' and a 'name'")
        if int(cat["id"]) in seen:
            raise DatasetError(f"{path}: category id {cat['id']} appears twice")
        seen[int(cat["id"])] = cat
    ordered = [seen[i] for i in sorted(seen)]
    try:
        vocab = Vocabulary.from_classes([list(c.get("synonyms") or [c["name"]]) for c in ordered])
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{path}: its categories do not make a class list: {exc}") from exc
    return vocab, {i: k for k, i in enumerate(sorted(seen))}, [bool(c.get("isthing", 1)) for c in ordered]


def _images(path: Path, images: list[dict], image_dir: Path) -> dict[Any, dict]:
    """image id -> image entry, every file checked to exist (DatasetError naming it and its entry)."""
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {image_dir} (named with {path})")
    out: dict[Any, dict] = {}
    missing = []
    for img in images:
        if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
            raise DatasetError(f"{path}: image entry {img!r} needs an 'id' and a 'file_name'")
        if not (image_dir / img["file_name"]).is_file():
            missing.append(f"image id {img['id']}: {image_dir / img['file_name']}")
        out[img["id"]] = img
    if missing:
        raise DatasetError(f"{path}: {len(missing)} images not found: {listing(missing)}")
    return out


def _check_category(path: Path, what: str, category_id: Any, mapping: dict[int, int]) -> int:
    if not isinstance(category_id, int) or category_id not in mapping:
        raise DatasetError(f"{path}: {what} has category id {category_id!r}, which is not in the class list "
                           f"(category ids {listing([str(i) for i in sorted(mapping)])})")
    return mapping[category_id]


def _check_segmentation(path: Path, what: str, segm: Any, img: dict) -> None:
    """Polygons inside the image, RLE of the image's size (when the JSON gives ``height`` / ``width``)."""
    h, w = img.get("height"), img.get("width")
    if isinstance(segm, list):
        for poly in segm:
            if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
                raise DatasetError(f"{path}: {what} has a polygon that is not a list of at least 3 x, y points")
            if h is None or w is None:
                continue
            xs, ys = poly[0::2], poly[1::2]
            bad = [(x, y) for x, y in zip(xs, ys) if not (-_POLYGON_SLACK <= x <= w + _POLYGON_SLACK
                                                         and -_POLYGON_SLACK <= y <= h + _POLYGON_SLACK)]
            if bad:
                raise DatasetError(f"{path}: {what} has a polygon outside its {w}x{h} image {img['file_name']}: "
                                   f"point (x, y) = {bad[0]}")
    elif isinstance(segm, dict) and "counts" in segm and "size" in segm:
        if h is not None and w is not None and [int(v) for v in segm["size"]] != [int(h), int(w)]:
            raise DatasetError(f"{path}: {what} has an RLE of size {segm['size']} (height, width) but its image "
                               f"{img['file_name']} is {h}x{w}")
    else:
        raise DatasetError(f"{path}: {what} has no usable 'segmentation' (polygons or RLE), got "
                           f"{type(segm).__name__}")


def load_coco_instances(annotations: Union[str, os.PathLike], image_dir: Union[str, os.PathLike]
                        ) -> SegmentationDataset:
    """COCO instances JSON + image folder -> semantic (painted from the instances) and instance ground truth."""
    path, image_dir = Path(annotations), Path(image_dir)
    data = _read_coco(path, "instances")
    vocab, mapping, _ = _categories(path, data["categories"])
    images = _images(path, data["images"], image_dir)
    grouped: dict[Any, list[dict]] = {i: [] for i in images}
    for ann in data["annotations"]:
        what = f"annotation {ann.get('id', '?')}"
        if ann.get("image_id") not in images:
            raise DatasetError(f"{path}: {what} refers to image id {ann.get('image_id')!r}, which 'images' lacks")
        img = images[ann["image_id"]]
        what += f" (image {img['file_name']})"
        category = _check_category(path, what, ann.get("category_id"), mapping)
        _check_segmentation(path, what, ann.get("segmentation"), img)
        grouped[ann["image_id"]].append({"category_id": category, "segmentation": ann["segmentation"],
                                         "iscrowd": int(ann.get("iscrowd", 0)), "area": ann.get("area")})
    if not any(not a["iscrowd"] for anns in grouped.values() for a in anns):
        raise DatasetError(f"{path} is an empty dataset: no image has a (non-crowd) annotation")
    samples = [Sample(Path(img["file_name"]).with_suffix("").as_posix(), image_dir / img["file_name"],
                      instances=grouped[i], annotation_file=path) for i, img in images.items()]
    return SegmentationDataset(path.stem, vocab, 255, samples, ("semantic", "instance"), [True] * len(vocab),
                               path.stem, extra={"format": "coco", "annotations": str(path)})


def load_coco_panoptic(annotations: Union[str, os.PathLike], image_dir: Union[str, os.PathLike],
                       png_dir: Optional[Union[str, os.PathLike]] = None) -> SegmentationDataset:
    """COCO panoptic JSON + image folder (+ PNG folder) -> semantic, panoptic and instance ground truth."""
    path, image_dir = Path(annotations), Path(image_dir)
    png_dir = Path(png_dir) if png_dir is not None else path.with_suffix("")
    if not png_dir.is_dir():
        raise FileNotFoundError(f"panoptic PNG folder not found: {png_dir} (pass it as the third path)")
    data = _read_coco(path, "panoptic")
    vocab, mapping, things = _categories(path, data["categories"])
    images = _images(path, data["images"], image_dir)
    samples = []
    for ann in data["annotations"]:
        if ann.get("image_id") not in images:
            raise DatasetError(f"{path}: annotation {ann.get('file_name')!r} refers to image id "
                               f"{ann.get('image_id')!r}, which 'images' lacks")
        img = images[ann["image_id"]]
        png = png_dir / str(ann.get("file_name"))
        if not png.is_file():
            raise DatasetError(f"{path}: the panoptic PNG of image {img['file_name']} is missing: {png}")
        segments = []
        for seg in ann.get("segments_info", []):
            what = f"segment {seg.get('id')} of image {img['file_name']}"
            c = _check_category(path, what, seg.get("category_id"), mapping)
            segments.append({"id": int(seg["id"]), "category_id": c, "iscrowd": int(seg.get("iscrowd", 0)),
                             "isthing": things[c]})
        samples.append(Sample(Path(img["file_name"]).with_suffix("").as_posix(), image_dir / img["file_name"],
                              panoptic_path=png, segments=segments, check_segment_ids=True, annotation_file=path))
    if not any(not s["iscrowd"] for sample in samples for s in sample.segments or []):
        raise DatasetError(f"{path} is an empty dataset: no annotation has a (non-crowd) segment")
    return SegmentationDataset(path.stem, vocab, 255, samples, ("semantic", "panoptic", "instance"), things,
                               path.stem, extra={"format": "panoptic", "annotations": str(path),
                                                 "png_dir": str(png_dir)})


def split_dataset(dataset: SegmentationDataset, fraction: float, seed: int = 0
                  ) -> tuple[SegmentationDataset, SegmentationDataset]:
    """(training, held-out) parts of ``dataset``: ``round(fraction * N)`` images (at least one) held out, chosen by
    a hash of ``seed`` and each image id, so the split does not depend on file order and survives added images."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the held-out fraction must lie strictly between 0 and 1, got {fraction}")
    n = len(dataset)
    held = max(1, round(fraction * n))
    if held >= n:
        raise DatasetError(f"dataset {dataset.name} has {n} images: too few to hold out {fraction:.0%} and keep "
                           "images to train on")
    def key(i: int) -> bytes:
        return hashlib.blake2b(f"{seed}:{dataset.samples[i].image_id}".encode(), digest_size=8).digest()
    order = sorted(range(n), key=key)
    val = sorted(order[:held])
    train = sorted(order[held:])
    return dataset.subset(train), dataset.subset(val)
