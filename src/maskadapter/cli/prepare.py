"""``maskadapter prepare``: convert an official benchmark download into the layout ``maskadapter eval`` reads."""

from __future__ import annotations

import argparse
import sys

from ..data.table import DATASET_NAMES

__all__ = ["register", "run_prepare"]

_EPILOG = """\
RAW per dataset (the official download, or a folder above it):
  ade20k-150          ADEChallengeData2016 (images/, annotations/; annotations_instance/ + --mapping
                      ade20k_instance_catid_mapping.txt for panoptic PQ and instance AP)
  ade20k-847          ADE20K_2021_17_01 (images/ADE/validation/...); --mapping prepare_ade20k_full_sem_seg.py
                      of the official repository (read as data) or a JSON list of {"id", "trainId"}
  pascal-context-59   VOCdevkit/VOC2010 (JPEGImages/, trainval/*.mat, ImageSets/Main/val.txt)
  pascal-context-459  same
  pascal-voc-20, -21  VOCdevkit/VOC2012 (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/val.txt)
  coco-stuff          coco (val2017/, stuffthingmaps/val2017/)
  coco-panoptic       coco (val2017/, annotations/panoptic_val2017.json, panoptic_val2017/ or its .zip)
ROOT is the data root given to `maskadapter eval --data-root` (the official $DETECTRON2_DATASETS).
Only the validation split is converted."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``prepare`` sub-command."""
    p = subparsers.add_parser(
        "prepare", help="convert an official benchmark download into the evaluation layout",
        description="Convert the official download of a benchmark (validation split) into the layout that "
                    "`maskadapter eval` reads, as the official datasets/prepare_*.py scripts do.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=DATASET_NAMES, help="dataset to prepare")
    p.add_argument("--raw", required=True, help="folder of the official download (see below)")
    p.add_argument("--out", required=True, help="data root to write the prepared dataset into")
    p.add_argument("--mapping", help="official id table (ade20k-847, ade20k-150 panoptic); see below")
    p.add_argument("--split-file", help="image ids to convert instead of the official validation list (VOC)")
    p.set_defaults(func=run_prepare)


def run_prepare(args: argparse.Namespace) -> int:
    """Run the conversion and print what was written."""
    from ..data.datasets import get_dataset_spec
    from ..data.prepare import prepare_dataset

    counts = prepare_dataset(args.dataset, args.raw, args.out, mapping=args.mapping, split_file=args.split_file)
    spec = get_dataset_spec(args.dataset)
    print(f"prepared {args.dataset} under {args.out}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    print(f"evaluate with: maskadapter eval --dataset {spec.name} --data-root {args.out} --preset ...")
    sys.stdout.flush()
    return 0
