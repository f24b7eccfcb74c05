"""The one table of built-in benchmarks: names, vocabularies, prepared layouts and converters derive from it.

Nothing here imports torch, so the command line reads the names while printing ``--help``. Adding a benchmark is
one :class:`DatasetSpec` row below (plus its class file under ``classes/`` and, when ``maskadapter prepare`` should
make it, a ``_prepare_<converter>`` function in :mod:`maskadapter.data.prepare`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from ..constants import TASKS

__all__ = ["DatasetSpec", "DATASETS", "DATASET_NAMES", "VOCABULARY_FILES", "BUILTIN_VOCABULARIES"]


@dataclass(frozen=True)
class DatasetSpec:
    """Where a prepared benchmark lives under the data root, what it supports and how it is made."""

    name: str  #: e.g. ``ade20k-150``
    vocabulary: str  #: built-in vocabulary name (the class file ``classes/<class_file or vocabulary>.txt``)
    short_name: str  #: column name in the paper's tables, e.g. ``A-150``
    ignore_label: int
    image_dir: str  #: relative to the data root
    label_dir: Optional[str]  #: semantic label maps, relative to the data root
    raw_hint: str = ""  #: what ``--raw`` points to
    #: ``_prepare_<converter>`` of :mod:`maskadapter.data.prepare` makes it, called with ``converter_args``
    converter: str = ""
    converter_args: dict[str, Any] = field(default_factory=dict)
    prepare_args: str = ""  #: extra options shown in the ``maskadapter prepare`` command
    class_file: Optional[str] = None  #: class file stem when it differs from ``vocabulary`` (VOC-20 reads VOC-21's)
    keep_id0: bool = False  #: line ``0:`` of the class file is a class (VOC-21's background)
    label_suffix: str = ".png"
    image_suffix: str = ".jpg"
    evaluations: tuple[str, ...] = ("semantic",)  #: what a fully prepared copy supports
    panoptic_dir: Optional[str] = None
    panoptic_json: Optional[str] = None
    instance_json: Optional[str] = None
    #: panoptic/instance JSON category id + offset = id in the vocabulary file (ADE json ids start at 0)
    json_category_offset: int = 0
    #: the panoptic JSON defines the images (COCO); otherwise the semantic label folder does
    panoptic_defines_images: bool = False
    #: panoptic thing classes are those whose vocabulary-file id is below this (COCO: ids < 92); None: the
    #: panoptic JSON's ``isthing`` decides (ADE-150)
    thing_id_below: Optional[int] = None
    #: images without a label map are expected and skipped (COCO-Stuff: the official converter writes no map
    #: for an image that is all "unlabeled", and detectron2 keeps only images with a map)
    labels_define_images: bool = False

    @property
    def prepare(self) -> str:
        """The ``maskadapter prepare`` command line template (``{root}`` is the data root)."""
        return f"maskadapter prepare {self.name} --raw {self.raw_hint} --out {{root}}{self.prepare_args}"

    def prepare_command(self, root: Union[str, os.PathLike, None] = None) -> str:
        """The ``maskadapter prepare`` command line that makes this dataset under ``root``."""
        return self.prepare.format(root=root if root is not None else "ROOT")


DATASETS: dict[str, DatasetSpec] = {s.name: s for s in (
    DatasetSpec("ade20k-150", "ade20k_150", "A-150", 255, "ADEChallengeData2016/images/validation",
                "ADEChallengeData2016/annotations_detectron2/validation", "RAW/ADEChallengeData2016",
                converter="ade20k_150",
                prepare_args=" [--mapping ade20k_instance_catid_mapping.txt (panoptic, instances)]",
                evaluations=TASKS, panoptic_dir="ADEChallengeData2016/ade20k_panoptic_val",
                panoptic_json="ADEChallengeData2016/ade20k_panoptic_val.json",
                instance_json="ADEChallengeData2016/ade20k_instance_val.json", json_category_offset=1),
    DatasetSpec("ade20k-847", "ade20k_847", "A-847", 65535, "ADE20K_2021_17_01/images_detectron2/validation",
                "ADE20K_2021_17_01/annotations_detectron2/validation", "RAW/ADE20K_2021_17_01",
                converter="ade20k_847", label_suffix=".tif", prepare_args=" --mapping prepare_ade20k_full_sem_seg.py"),
    DatasetSpec("pascal-context-59", "pascal_ctx_59", "PC-59", 255, "pascal_ctx_d2/images/validation",
                "pascal_ctx_d2/annotations_ctx59/validation", "RAW/VOCdevkit/VOC2010",
                converter="pascal_context", converter_args={"full": False}),
    DatasetSpec("pascal-context-459", "pascal_ctx_459", "PC-459", 65535, "pascal_ctx_d2/images/validation",
                "pascal_ctx_d2/annotations_ctx459/validation", "RAW/VOCdevkit/VOC2010",
                converter="pascal_context", converter_args={"full": True}, label_suffix=".tif"),
    DatasetSpec("pascal-voc-20", "pascal_voc_20", "PAS-20", 255, "pascal_voc_d2/images/validation",
                "pascal_voc_d2/annotations_pascal20/validation", "RAW/VOCdevkit/VOC2012",
                converter="pascal_voc", class_file="pascal_voc_21"),
    DatasetSpec("pascal-voc-21", "pascal_voc_21", "PAS-21", 255, "pascal_voc_d2/images/validation",
                "pascal_voc_d2/annotations_pascal21/validation", "RAW/VOCdevkit/VOC2012",
                converter="pascal_voc", keep_id0=True),
    DatasetSpec("coco-panoptic", "coco_panoptic", "COCO", 255, "coco/val2017", "coco/panoptic_semseg_val2017",
                "RAW/coco", converter="coco_panoptic", evaluations=TASKS, panoptic_dir="coco/panoptic_val2017",
                panoptic_json="coco/annotations/panoptic_val2017.json",
                instance_json="coco/annotations/instances_val2017.json", panoptic_defines_images=True,
                thing_id_below=92),
    DatasetSpec("coco-stuff", "coco_stuff", "COCO-Stuff", 255, "coco/val2017",
                "coco/stuffthingmaps_detectron2/val2017", "RAW/coco", converter="coco_stuff",
                labels_define_images=True),
)}

#: Benchmarks ``maskadapter eval`` and ``prepare`` know.
DATASET_NAMES: tuple[str, ...] = tuple(DATASETS)
#: Built-in vocabulary name -> (class file stem, whether line ``0:`` is a class).
VOCABULARY_FILES: dict[str, tuple[str, bool]] = {
    s.vocabulary: (s.class_file or s.vocabulary, s.keep_id0) for s in DATASETS.values()}
#: Vocabularies stored as package data (``maskadapter.data.vocabularies.builtin_vocabulary``).
BUILTIN_VOCABULARIES: tuple[str, ...] = tuple(VOCABULARY_FILES)
