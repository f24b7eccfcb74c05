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

import logging
import os
from pathlib import Path
from typing import Union

from ..constants import IMAGE_SUFFIXES, TASKS
from ..vocabulary import Vocabulary
from .samples import (DatasetError, Example, Sample, SegmentationDataset, id_to_rgb, listing, pair_files, read_array,
                      read_json, rgb_to_id)
from .table import DATASETS, DatasetSpec
from .user_data import DATA_SYNTAX, is_user_data, load_custom_dataset, load_user_dataset, parse_custom
from .vocabularies import _read_lines, builtin_vocabulary

__all__ = [
    "DatasetSpec", "DATASETS", "EVALUATIONS", "IMAGE_SUFFIXES", "Sample", "Example", "SegmentationDataset",
    "DatasetError", "get_dataset_spec", "load_dataset", "load_custom_dataset", "parse_custom", "rgb_to_id",
    "id_to_rgb", "vocabulary_ids", "read_array",
]

logger = logging.getLogger(__name__)

EVALUATIONS = TASKS


def get_dataset_spec(name: str) -> DatasetSpec:
    """The spec of a built-in dataset; ValueError listing the known names otherwise."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)} "
                         f"or your own data: {DATA_SYNTAX}")
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


# ---------------------------------------------------------------------------------------------- loading
def load_dataset(name: str, root: Union[str, os.PathLike, None] = None, strict: bool = True
                 ) -> SegmentationDataset:
    """Read the prepared dataset ``name`` (see module doc, or ``custom:IMAGES,LABELS,CLASSES``) under ``root``.

    ``strict``: images without labels and labels without images raise :class:`DatasetError` listing them;
    with ``strict=False`` they are skipped with a warning giving the counts.
    """
    if is_user_data(name):
        return load_user_dataset(name, strict=strict)
    spec = get_dataset_spec(name)
    if root is None:
        raise ValueError(f"dataset {name} needs a data root (--data-root or $DETECTRON2_DATASETS)")
    root = Path(root).expanduser()
    image_dir = _require_dir(root / spec.image_dir, spec, root)
    vocab = builtin_vocabulary(spec.vocabulary)
    if spec.panoptic_defines_images:
        return _load_coco_panoptic(spec, root, image_dir, vocab, strict)
    label_dir = _require_dir(root / spec.label_dir, spec, root)
    pairs = pair_files(image_dir, label_dir, spec.image_suffix, spec.label_suffix, strict,
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


def _require_dir(path: Path, spec: DatasetSpec, root: Path) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"dataset {spec.name}: expected the folder {path} (not found). "
                                f"Make it with: {spec.prepare_command(root)}")
    return path


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
    data = read_json(root / spec.panoptic_json)
    mapping, things = _category_map(spec, data.get("categories", []))
    pan_dir = _require_dir(root / spec.panoptic_dir, spec, root)
    by_stem = {Path(a["file_name"]).stem: a for a in data.get("annotations", [])}
    missing = [s.image_id for s in samples if s.image_id not in by_stem
               or not (pan_dir / by_stem[s.image_id]["file_name"]).is_file()]
    if missing:
        msg = (f"{len(missing)} images have no panoptic annotation in {root / spec.panoptic_json} / {pan_dir}: "
               + listing(missing))
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
    data = read_json(root / spec.instance_json)
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
    data = read_json(json_path)
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
        msg = f"{len(problems)} annotations of {json_path} lack their files: " + listing(problems)
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


