"""Run a model over an evaluation dataset, cache its per-image predictions and compute the paper's metrics.

:func:`run_evaluation` is what ``maskadapter eval`` calls. Per image it runs
:meth:`Predictor.predict <maskadapter.inference.predictor.Predictor.predict>` (or, with ``gt_masks=True``,
:func:`maskadapter.inference.ground_truth.classify_ground_truth`: the paper's Table 3 setting), writes the
prediction to the :class:`~maskadapter.evaluation.cache.PredictionCache` and feeds the evaluators *from the
cached files*, so a resumed run and a fresh one compute bit-identical metrics. ``results.json`` and
``results.md`` are written at the end.

The predictor is never modified: the evaluation runs a copy with its own options
(:meth:`Predictor.with_options`): the requested precision, no output-size cap (predictions at the image's
resolution, as the official evaluation) and the post-processing order of the preset's official evaluation
config on this dataset. FC-CLIP's configs turn panoptic / instance output on for ADE20K-150 and COCO only,
which switches semantic inference to "resize the mask logits first"; MAFT+ presets keep their own order.

Several processes: under ``torchrun`` the process group is joined (gloo on CPU, nccl on CUDA), rank r takes
images ``[r::world]``, the evaluators are reduced exactly and rank 0 writes the results.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from tqdm import tqdm

from .. import distributed
from ..constants import TASKS
from ..data.datasets import SegmentationDataset
from ..data.vocabularies import builtin_vocabulary
from ..fileio import atomic_write_json, atomic_write_text
from ..inference.ground_truth import classify_ground_truth
from ..inference.instances import decode_rle
from ..inference.options import check_tasks
from ..inference.postprocess import category_overlap
from ..inference.predictor import Predictor
from ..modeling.model import MaskAdapterModel
from ..modeling.text import TextClassifier
from ..vocabulary import Vocabulary
from .cache import CACHE_FORMAT, PredictionCache
from .classification import MaskClassificationEvaluator
from .instance import InstanceEvaluator
from .panoptic import PanopticEvaluator
from .semantic import SemSegEvaluator
from .state import StatefulEvaluator, reduce_evaluator

__all__ = ["run_evaluation", "CACHE_FORMAT", "markdown_row", "summary_metrics", "evaluation_predictor"]

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- public API
def run_evaluation(
    predictor_or_model: Union[Predictor, MaskAdapterModel],
    dataset: SegmentationDataset,
    tasks: Optional[Sequence[str]] = None,
    output_dir: Union[str, os.PathLike, None] = None,
    limit: Optional[int] = None,
    resume: bool = True,
    gt_masks: bool = False,
    precision: str = "fp32",
    train_vocabulary: Union[str, Vocabulary, None] = None,
    progress: bool = True,
    text_cache_dir: Union[str, os.PathLike, None] = None,
) -> dict:
    """Evaluate on ``dataset``; returns (and writes to ``output_dir/results.json``) the metrics per task.

    ``predictor_or_model``: a :class:`Predictor` (not modified), or with ``gt_masks=True`` also a bare
    :class:`MaskAdapterModel`. ``tasks``: subset of the dataset's ``evaluations`` (default: all of them;
    ground-truth-mask mode: ``semantic``, and accuracy is always reported). ``limit``: the first N images
    only. ``resume``: reuse the predictions cached in ``output_dir``; otherwise they are deleted first.
    ``train_vocabulary``: the vocabulary deciding seen / unseen classes (default: the predictor preset's).
    ``text_cache_dir``: where a bare model's text embeddings are cached (a Predictor uses its own).
    """
    if not isinstance(dataset, SegmentationDataset):
        raise TypeError(f"dataset must be a SegmentationDataset (maskadapter.data.datasets.load_dataset), "
                        f"got {type(dataset).__name__}")
    if output_dir is None:
        raise ValueError("output_dir is required: predictions are cached there")
    if limit is not None and int(limit) < 1:
        raise ValueError(f"limit must be a positive number of images, got {limit}")
    if precision not in ("fp32", "bf16", "auto", "fp16"):
        raise ValueError(f"precision must be 'fp32', 'bf16', 'fp16' or 'auto', got {precision!r}")
    predictor = predictor_or_model if isinstance(predictor_or_model, Predictor) else None
    if predictor is None:
        if not isinstance(predictor_or_model, MaskAdapterModel):
            raise TypeError("predictor_or_model must be a Predictor or a MaskAdapterModel, got "
                            f"{type(predictor_or_model).__name__}")
        if not gt_masks:
            raise ValueError("a bare MaskAdapterModel can only be evaluated with gt_masks=True; wrap it in a "
                             "Predictor (with its preset) for predicted masks")
    tasks = _check_tasks(tasks, dataset, gt_masks)
    model = predictor.model if predictor is not None else predictor_or_model
    train_vocab = _train_vocabulary(train_vocabulary, predictor)
    seen = None if train_vocab is None else category_overlap(dataset.vocabulary, train_vocab).tolist()
    if predictor is not None:
        predictor = evaluation_predictor(predictor, dataset, precision)
    device = predictor.device if predictor is not None else next(model.parameters()).device
    predict = (_GroundTruthPredictor(model, predictor, dataset, tasks, precision, text_cache_dir) if gt_masks
               else _ModelPredictor(predictor, dataset, tasks))

    info = distributed.init_distributed(device)
    try:
        indices = list(range(len(dataset)))[: int(limit) if limit is not None else None]
        model_name = predictor.preset.name if predictor is not None else "model"
        cache = PredictionCache(Path(output_dir), len(dataset.vocabulary))
        cache.prepare(PredictionCache.config(dataset, model_name, model.weights_fingerprint(), gt_masks, precision),
                      resume, info.rank)
        evaluators = _make_evaluators(dataset, tasks, gt_masks, seen)
        start = time.perf_counter()
        counts = _loop(predict, cache, distributed.shard(indices, info.rank, info.world_size), evaluators, dataset,
                       info.is_main and progress)
        for ev in evaluators.values():
            reduce_evaluator(ev)
        counts = {k: sum(int(c[k]) for c in distributed.all_gather_object(counts)) for k in counts}
        results = None
        if info.is_main:
            results = {
                "dataset": dataset.name, "short_name": dataset.short_name or dataset.name, "model": model_name,
                "gt_masks": bool(gt_masks), "tasks": list(tasks), "precision": precision,
                "num_images": len(indices), "computed": counts["computed"], "cached": counts["cached"],
                "seconds": round(time.perf_counter() - start, 3), "processes": info.world_size,
                "postprocess_before_inference": None if predictor is None else predictor.postprocess_before_inference,
                "seen_classes": None if seen is None else int(sum(seen)),
                "metrics": {name: _sanitize(ev.evaluate()) for name, ev in evaluators.items()},
            }
            results["summary"] = summary_metrics(results)
            atomic_write_json(cache.output_dir / "results.json", results)
            atomic_write_text(cache.output_dir / "results.md", markdown_row(results) + "\n")
        results = distributed.broadcast_object(results)
    finally:
        distributed.cleanup(info)
    return results


def evaluation_predictor(predictor: Predictor, dataset: SegmentationDataset, precision: str) -> Predictor:
    """A copy of ``predictor`` set up as the official evaluation of its preset on ``dataset``: ``precision``,
    no output-size cap, and the post-processing order of the official config (the original is unchanged)."""
    before = predictor.options.postprocess_before_inference
    if predictor.preset.generator == "fcclip":
        before = "panoptic" in (dataset.spec.evaluations if dataset.spec else ())
    return predictor.with_options(precision=precision, max_output_pixels=None, postprocess_before_inference=before)


def summary_metrics(results: dict) -> dict[str, Optional[float]]:
    """The headline numbers of ``results`` as ``{column name: value}`` (columns like the paper's tables)."""
    m = results["metrics"]
    short = results.get("short_name") or results["dataset"]
    out: dict[str, Optional[float]] = {}
    gt = results.get("gt_masks")
    if gt:
        out[f"{short} acc"] = m["classification"]["accuracy"]
    suffix = " (GT masks)" if gt else ""
    for task, key in (("semantic", "mIoU"), ("panoptic", "PQ"), ("instance", "AP")):
        if task in m:
            out[f"{short} {key}{suffix}"] = m[task][key]
    return out


def markdown_row(results: dict) -> str:
    """A markdown table (header, rule, one row) like the paper's: ``| model | A-150 mIoU | ... |``."""
    summary = results.get("summary") or summary_metrics(results)
    head = "| model | " + " | ".join(summary) + " |"
    rule = "|---|" + "---|" * len(summary)
    values = " | ".join("n/a" if v is None else f"{v:.1f}" for v in summary.values())
    return f"{head}\n{rule}\n| {results['model']} | {values} |"


# ---------------------------------------------------------------------------------------------- setup
def _check_tasks(tasks: Optional[Sequence[str]], dataset: SegmentationDataset, gt_masks: bool) -> tuple[str, ...]:
    if tasks is None:
        return ("semantic",) if gt_masks else tuple(dataset.evaluations)
    tasks = check_tasks(tasks)
    missing = [t for t in tasks if t not in dataset.evaluations]
    if missing:
        hint = f" (make them with: {dataset.spec.prepare_command(dataset.root)})" if dataset.spec else ""
        raise ValueError(f"dataset {dataset.name} has no annotations for {missing}: it supports "
                         f"{list(dataset.evaluations)}{hint}")
    if gt_masks and "semantic" not in tasks:
        tasks = ("semantic",) + tasks  # ground-truth masks come from the semantic label maps
    return tuple(t for t in TASKS if t in tasks)


def _train_vocabulary(train_vocabulary: Union[str, Vocabulary, None], predictor: Optional[Predictor]
                      ) -> Optional[Vocabulary]:
    if isinstance(train_vocabulary, Vocabulary):
        return train_vocabulary
    if isinstance(train_vocabulary, str):
        return builtin_vocabulary(train_vocabulary)
    if predictor is not None:
        return builtin_vocabulary(predictor.preset.train_vocabulary)
    return None


def _make_evaluators(dataset: SegmentationDataset, tasks: tuple[str, ...], gt_masks: bool,
                     seen: Optional[list[bool]]) -> dict[str, StatefulEvaluator]:
    C, names = len(dataset.vocabulary), dataset.vocabulary.names
    out: dict[str, StatefulEvaluator] = {}
    if gt_masks:
        out["classification"] = MaskClassificationEvaluator(C, class_names=names, seen=seen)
    if "semantic" in tasks:
        out["semantic"] = SemSegEvaluator(C, ignore_label=dataset.ignore_label, class_names=names, seen=seen)
    if "panoptic" in tasks:
        if dataset.thing_classes is None:
            raise ValueError(f"dataset {dataset.name} has no thing classes, which panoptic evaluation needs")
        out["panoptic"] = PanopticEvaluator(C, is_thing=dataset.thing_classes, class_names=names, seen=seen)
    if "instance" in tasks:
        out["instance"] = InstanceEvaluator(C, class_names=names, seen=seen)
    return out


# ---------------------------------------------------------------------------------------------- per image
class _ModelPredictor:
    """Predicted masks: the predictor's outputs for one image."""

    gt_masks = False

    def __init__(self, predictor: Predictor, dataset: SegmentationDataset, tasks: tuple[str, ...]) -> None:
        self.predictor, self.dataset, self.tasks = predictor, dataset, tasks
        self.vocabulary = predictor.prepare_vocabulary(dataset.vocabulary, dataset.thing_classes)  # once per run

    def __call__(self, image: torch.Tensor, semantic_gt: Optional[torch.Tensor]) -> tuple[Any, dict]:
        result = self.predictor.predict(image, self.vocabulary, tasks=self.tasks)
        return result, {}


class _GroundTruthPredictor:
    """Ground-truth masks classified by the adapter (official GT rules for panoptic and instance output)."""

    gt_masks = True

    def __init__(self, model: MaskAdapterModel, predictor: Optional[Predictor], dataset: SegmentationDataset,
                 tasks: tuple[str, ...], precision: str, text_cache_dir: Union[str, os.PathLike, None]) -> None:
        self.model, self.dataset, self.tasks, self.precision = model, dataset, tasks, precision
        # one classifier for the whole run: it caches the vocabulary's text embeddings
        self.text_classifier = (predictor.text_classifier if predictor is not None
                                else TextClassifier(model.backbone, cache_dir=text_cache_dir))

    def __call__(self, image: torch.Tensor, semantic_gt: torch.Tensor) -> tuple[Any, dict]:
        ignore, C = self.dataset.ignore_label, len(self.dataset.vocabulary)
        # labels outside the classes get no mask (classify_ground_truth refuses them); the evaluator counts them
        labels = semantic_gt.clone()
        labels[(labels < 0) | (labels >= C)] = ignore
        res = classify_ground_truth(self.model, image, labels, self.dataset.vocabulary,
                                    text_classifier=self.text_classifier, ignore_index=ignore,
                                    precision=self.precision, tasks=self.tasks, is_thing=self.dataset.thing_classes)
        res.semantic = torch.where(res.semantic == ignore, -1, res.semantic)
        return res, {"gt": {"class_ids": res.class_ids.tolist(), "predicted": res.predicted.tolist()}}


def _loop(predict: Any, cache: PredictionCache, indices: list[int], evaluators: dict[str, StatefulEvaluator],
          dataset: SegmentationDataset, progress: bool) -> dict[str, int]:
    counts = {"computed": 0, "cached": 0}
    tasks = predict.tasks
    bar = tqdm(indices, desc=f"eval {dataset.name}", unit="img", disable=not progress, dynamic_ncols=True)
    for index in bar:
        sample = dataset[index]
        example = sample.load(tasks)
        pred = cache.read(sample.image_id, tasks, predict.gt_masks)
        if pred is None:
            size = (int(example.image.shape[1]), int(example.image.shape[2]))
            outputs, extra = predict(example.image, example.semantic)
            cache.write(sample.image_id, size, tasks, predict.gt_masks, outputs, extra)
            pred = cache.read(sample.image_id, tasks, predict.gt_masks)
            if pred is None:
                raise RuntimeError(f"the prediction of {sample.image_id} written to {cache.dir} cannot be read back")
            counts["computed"] += 1
        else:
            counts["cached"] += 1
        _feed(evaluators, index, example, pred)
        bar.set_postfix(cached=counts["cached"], refresh=False)
    return counts


def _feed(evaluators: dict[str, StatefulEvaluator], index: int, example: Any, pred: dict) -> None:
    """Give one image's cached prediction and its ground truth to every evaluator."""
    record = pred["record"]
    if "classification" in evaluators:
        gt = record["gt"]
        evaluators["classification"].process(np.asarray(gt["class_ids"], dtype=np.int64),
                                             np.asarray(gt["predicted"], dtype=np.int64))
    if "semantic" in evaluators:
        evaluators["semantic"].process(pred["semantic"], example.semantic)
    if "panoptic" in evaluators:
        evaluators["panoptic"].process(pred["panoptic"], record["segments"], example.panoptic, example.segments)
    if "instance" in evaluators:
        H, W = record["height"], record["width"]
        inst = record["instances"]
        masks = decode_rle([i["segmentation"] for i in inst], (H, W))
        prediction = {"masks": masks, "scores": torch.tensor([i["score"] for i in inst], dtype=torch.float64),
                      "classes": torch.tensor([i["category_id"] for i in inst], dtype=torch.int64)}
        evaluators["instance"].process(index, prediction, example.instances)


def _sanitize(value: Any) -> Any:
    """JSON-safe copy: nan / inf become None, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _sanitize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_sanitize(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
