"""``maskadapter eval``: evaluate a preset on a benchmark (mIoU, PQ, AP; or GT-mask accuracy) like the paper."""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
from pathlib import Path

from ..constants import user_cache_dir
from ..data.table import DATASET_NAMES
from ..inference.options import check_tasks
from .common import add_model_arguments, build_predictor, check_output_folder

__all__ = ["register", "run_eval"]

_EPILOG = """\
datasets: ade20k-150 (mIoU; PQ and AP when its panoptic files exist), ade20k-847, pascal-context-59,
  pascal-context-459, pascal-voc-20, pascal-voc-21, coco-panoptic (mIoU, PQ, AP), coco-stuff, or
  custom:IMAGES_DIR,LABELS_DIR,CLASS_FILE - a folder of images, a folder of label PNGs with the same file
  stems (value k = k-th class of CLASS_FILE, 255 = ignore) and a class file (one class per line,
  'name|synonym|...' or 'id:name,synonym,...' where id 0 is skipped); --data-root is not needed then.
Make a benchmark with `maskadapter prepare DATASET --raw DOWNLOAD --out ROOT`.
Predictions are cached per image in --output: an interrupted run resumes where it stopped.
Several processes: torchrun --nproc-per-node N -m maskadapter eval ..."""

_HEADLINE = {
    "semantic": ("mIoU", "mIoU_seen", "mIoU_unseen", "fwIoU", "mACC", "pACC"),
    "panoptic": ("PQ", "SQ", "RQ", "PQ_th", "PQ_st", "PQ_seen", "PQ_unseen"),
    "instance": ("AP", "AP50", "AP75", "APs", "APm", "APl", "AP_seen", "AP_unseen"),
    "classification": ("accuracy", "mean_class_accuracy", "accuracy_seen", "accuracy_unseen"),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eval`` sub-command."""
    p = subparsers.add_parser(
        "eval", help="evaluate a preset on a benchmark (mIoU / PQ / AP, or GT-mask accuracy)",
        description="Evaluate a model on a prepared benchmark as the paper does (fp32, official thresholds), "
                    "print the metrics, and write results.json and a markdown table row.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True,
                   help=f"{' | '.join(DATASET_NAMES)} | your own data: coco:ANN.json,IMAGES | "
                        "panoptic:PAN.json,IMAGES[,PNGS] | labels:IMAGES,LABELS,CLASSES")
    p.add_argument("--data-root", default=os.environ.get("DETECTRON2_DATASETS"),
                   help="folder holding the prepared datasets (default $DETECTRON2_DATASETS)")
    p.add_argument("--gt-masks", action="store_true",
                   help="classify the ground-truth masks (paper Table 3, the official stage-1 evaluation): accuracy "
                        "and oracle mIoU; with --tasks also PQ and AP under the official ground-truth rules")
    p.add_argument("--tasks", help="comma-separated subset of semantic,panoptic,instance (default: all the "
                                   "dataset supports; with --gt-masks: semantic)")
    p.add_argument("--limit", type=int, help="evaluate the first N images only")
    p.add_argument("-o", "--output", help="folder for cached predictions and results (default: "
                                          "~/.cache/maskadapter/eval/<preset>_<dataset>)")
    p.add_argument("--no-resume", action="store_true", help="discard cached predictions and start over")
    p.add_argument("--allow-missing", action="store_true",
                   help="skip images without labels (and labels without images) with a warning instead of failing")
    add_model_arguments(p, sam=False, precision="fp32")  # fp32 by default: numbers comparable with the paper
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_eval)


def _default_output(args: argparse.Namespace) -> Path:
    base = user_cache_dir("eval")
    preset = Path(args.preset).stem
    dataset = args.dataset
    if ":" in dataset:  # your own data (coco:, panoptic:, labels:, custom:)
        dataset = "custom-" + hashlib.sha1(dataset.encode()).hexdigest()[:8]
    return base / f"{preset}_{dataset}{'_gt-masks' if args.gt_masks else ''}"


def run_eval(args: argparse.Namespace) -> int:
    """Load the dataset and the model, run the evaluation, print and write the results."""
    from ..data.datasets import load_dataset
    from ..distributed import env_rank
    from ..evaluation.runner import markdown_row, run_evaluation

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be a positive number of images, got {args.limit}")
    if ":" not in args.dataset and not args.data_root:
        raise ValueError(f"dataset {args.dataset} needs --data-root (or $DETECTRON2_DATASETS)")
    tasks = None
    if args.tasks:
        tasks = list(check_tasks(args.tasks, "--tasks"))
    dataset = load_dataset(args.dataset, args.data_root, strict=not args.allow_missing)
    output = check_output_folder(args.output) if args.output else _default_output(args)
    predictor = build_predictor(args)
    results = run_evaluation(predictor, dataset, tasks=tasks, output_dir=output, limit=args.limit,
                             resume=not args.no_resume, gt_masks=args.gt_masks, precision=args.precision,
                             progress=not args.quiet)
    if env_rank() != 0:
        return 0
    _print_results(results)
    print()
    print(markdown_row(results))
    print(f"\nresults written to {output / 'results.json'} and {output / 'results.md'}")
    return 0


def _fmt(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _print_results(results: dict) -> None:
    mode = "GT masks" if results["gt_masks"] else ", ".join(results["tasks"])
    print(f"{results['model']} on {results['dataset']} ({mode}; {results['num_images']} images, "
          f"{results['computed']} computed, {results['cached']} from cache, {results['precision']})")
    rows = [(task, key, metrics[key]) for task, metrics in results["metrics"].items()
            for key in _HEADLINE.get(task, ()) if key in metrics]
    width = max((len(k) for _, k, _ in rows), default=6)
    print(f"{'task':<14}  {'metric':<{width}}  {'value':>7}")
    for task, key, value in rows:
        print(f"{task:<14}  {key:<{width}}  {_fmt(value):>7}")
    sys.stdout.flush()
