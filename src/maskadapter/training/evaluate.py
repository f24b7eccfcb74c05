"""Periodic GT-mask evaluation during training: classify every ground-truth mask with the adapter.

This is the official stage-1 evaluation (an "oracle": perfect masks, so it measures classification only):
per image, every GT mask is classified; :class:`~maskadapter.evaluation.classification.MaskClassificationEvaluator`
counts top-1 accuracy and :class:`~maskadapter.evaluation.semantic.SemSegEvaluator` the mIoU of the semantic map
painted from the GT masks with their predicted classes. Images are split over processes and the evaluators'
integer states are reduced exactly, so the metrics do not depend on the number of processes. Runs in fp32.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from tqdm import tqdm

from .. import distributed
from ..data.datasets import SegmentationDataset, load_dataset
from ..data.synthetic import SyntheticShapes
from ..data.transforms import label_map_to_masks
from ..evaluation.classification import MaskClassificationEvaluator
from ..evaluation.runner import run_evaluation
from ..evaluation.semantic import SemSegEvaluator
from ..evaluation.state import reduce_evaluator
from ..inference.classify import classify_image_masks
from ..inference.predictor import Predictor
from ..inference.postprocess import paint_masks
from ..modeling.model import MaskAdapterModel
from ..vocabulary import Vocabulary

__all__ = ["EvalSet", "build_eval_set", "evaluate_gt_masks", "evaluate_held_out"]

logger = logging.getLogger(__name__)


@dataclass
class EvalSet:
    """An evaluation set: ``load(i)`` -> (image uint8 [3, H, W], masks bool [N, H, W], labels [N], GT map [H, W])."""

    name: str
    vocabulary: Vocabulary
    size: int
    ignore_label: int
    dataset: Any
    resize: Optional[int] = None  #: long side the network sees (benchmarks); None: native size

    def __len__(self) -> int:
        return self.size

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image, GT masks, GT labels and GT label map of image ``index``."""
        item = self.dataset[index]
        if isinstance(item, dict):  # a training-style sample (synthetic shapes)
            masks, labels = item["masks"].bool(), item["labels"].long()
            gt_map = paint_masks(masks, labels, background=self.ignore_label)
            return item["image"], masks, labels, gt_map
        example = item.load(("semantic",))  # maskadapter.data.datasets.Sample
        masks, labels = label_map_to_masks(example.semantic, len(self.vocabulary), self.ignore_label)
        return example.image, masks, labels, example.semantic


def build_eval_set(name: Union[str, SegmentationDataset], root: Optional[str], num_images: int,
                   synthetic: Optional[dict] = None, resize: Optional[int] = 896) -> EvalSet:
    """``synthetic`` (held-out SyntheticShapes with the given keyword arguments), a name or data spelling of
    :func:`maskadapter.data.datasets.load_dataset` (``ade20k-150``, ``coco:val.json,images/``, ...) or a loaded
    dataset (a held-out split)."""
    if name == "synthetic":
        kwargs = dict(synthetic or {})
        if num_images:
            kwargs["num_images"] = num_images
        ds = SyntheticShapes(**kwargs)
        return EvalSet("synthetic", ds.vocabulary, len(ds), 255, ds, None)

    ds = load_dataset(name, root) if isinstance(name, str) else name
    if num_images:
        ds = ds.subset(range(min(num_images, len(ds))))
    return EvalSet(ds.name, ds.vocabulary, len(ds), ds.ignore_label, ds, resize)


def evaluate_gt_masks(model: MaskAdapterModel, eval_set: EvalSet, text: torch.Tensor, num_synonyms: Sequence[int],
                      rank: int = 0, world_size: int = 1, progress: bool = False) -> dict[str, float]:
    """``accuracy`` and ``mIoU`` (percent) of GT-mask classification over ``eval_set`` (this rank's share,
    then reduced over processes)."""
    C = len(eval_set.vocabulary)
    if len(num_synonyms) != C:
        raise ValueError(f"the classifier has {len(num_synonyms)} classes, the evaluation set {C}")
    cls_eval = MaskClassificationEvaluator(C, eval_set.vocabulary.names)
    sem_eval = SemSegEvaluator(C, eval_set.ignore_label, eval_set.vocabulary.names)
    was_training = model.training
    model.eval()
    try:
        indices = distributed.shard(range(len(eval_set)), rank, world_size)
        for i in tqdm(indices, desc=f"eval {eval_set.name}", unit="img", disable=not progress, leave=False):
            image, masks, labels, gt_map = eval_set.load(i)
            if masks.shape[0] == 0:
                sem_eval.process(torch.full_like(gt_map, -1), gt_map)
                continue
            logits = classify_image_masks(model, image, masks, text, num_synonyms, with_void=True,
                                          resize=eval_set.resize, precision="fp32")
            predicted = logits[:, :C].argmax(dim=-1).cpu()
            cls_eval.process(labels, predicted)
            sem_eval.process(paint_masks(masks, predicted, background=-1), gt_map)
    finally:
        model.train(was_training)
    reduce_evaluator(cls_eval)
    reduce_evaluator(sem_eval)
    cls, sem = cls_eval.evaluate(), sem_eval.evaluate()
    return {"accuracy": float(cls["accuracy"]), "mean_class_accuracy": float(cls["mean_class_accuracy"]),
            "mIoU": float(sem["mIoU"]), "num_masks": int(cls["num_segments"])}


def evaluate_held_out(model_file: Path, preset: str, held_out: SegmentationDataset, output_dir: Path,
                      progress: bool = True) -> dict:
    """The finished model (``model_file``, a complete checkpoint of ``preset``) on the held-out images through the
    benchmark evaluators: mIoU, and PQ / AP where the data has panoptic / instance ground truth. Returns the
    :func:`~maskadapter.evaluation.runner.run_evaluation` results (also written to ``output_dir/results.json``)."""
    predictor = Predictor.from_checkpoint(model_file, preset, precision="fp32", text_cache_dir=False)
    return run_evaluation(predictor, held_out, output_dir=output_dir, resume=False, progress=progress)
