"""Mask-classification accuracy with ground-truth masks (the paper's Table 3 setting).

Each GT segment of an image is classified on its own (see :func:`maskadapter.classify_ground_truth`);
this evaluator counts, per GT class, how many segments got their class as the top-1 prediction.

The "oracle mIoU" of the same setting is not computed here: it is a
:class:`~maskadapter.evaluation.semantic.SemSegEvaluator` fed, per image, the semantic map painted from the
GT masks with their *predicted* classes (``GroundTruthResult.semantic``) against the GT label map.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .state import (ArrayLike, BoolLike, StatefulEvaluator, as_int_array)

__all__ = ["MaskClassificationEvaluator"]


class MaskClassificationEvaluator(StatefulEvaluator):
    """Top-1 accuracy of GT-mask classification: overall, per class, mean over classes, seen / unseen."""

    _KIND = "classification"

    def __init__(self, num_classes: int, class_names: Optional[Sequence[str]] = None,
                 seen: Optional[BoolLike] = None) -> None:
        """``num_classes`` C, ``seen`` bool [C] or None."""
        self._set_classes(num_classes, class_names, seen)
        self.reset()

    def _count_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"total": (self.num_classes,), "correct": (self.num_classes,)}

    def process(self, gt_class_ids: ArrayLike, predicted: ArrayLike) -> None:
        """Add segments: ``gt_class_ids`` [N] in 0..C-1; ``predicted`` [N] ids (negative = none) or scores [N, C]."""
        gt = as_int_array(gt_class_ids, "gt_class_ids").reshape(-1)
        if hasattr(predicted, "ndim") and predicted.ndim == 2:
            scores = np.asarray(predicted.detach().cpu() if hasattr(predicted, "detach") else predicted)
            if scores.shape[1] != self.num_classes:
                raise ValueError(f"predicted scores must have {self.num_classes} columns, got {scores.shape[1]}")
            pred = scores.argmax(axis=1).astype(np.int64) if scores.shape[0] else np.zeros(0, np.int64)
        else:
            pred = as_int_array(predicted, "predicted").reshape(-1)
        if gt.shape != pred.shape:
            raise ValueError(f"gt_class_ids has {gt.size} entries but predicted has {pred.size}")
        C = self.num_classes
        if gt.size and (gt.min() < 0 or gt.max() >= C):
            raise ValueError(f"gt_class_ids must lie in 0..{C - 1}, got {int(gt.min())}..{int(gt.max())}")
        if pred.size and pred.max() >= C:
            raise ValueError(f"predicted has class index {int(pred.max())} >= num_classes={C}")
        self._counts["total"] += np.bincount(gt, minlength=C)
        self._counts["correct"] += np.bincount(gt[gt == pred], minlength=C)

    def evaluate(self) -> dict:
        """Percent (nan without segments): ``accuracy``, ``mean_class_accuracy``, ``ACC-<name>``, seen/unseen."""
        total = self._counts["total"]
        correct = self._counts["correct"]
        valid = total > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            per_class = np.where(valid, correct / np.maximum(total, 1), np.nan)

        def ratio(mask: np.ndarray) -> float:
            n = int(total[mask].sum())
            return 100 * int(correct[mask].sum()) / n if n else float("nan")

        everything = np.ones(self.num_classes, dtype=bool)
        res: dict = {"accuracy": ratio(everything)}
        res["mean_class_accuracy"] = float(100 * per_class[valid].mean()) if valid.any() else float("nan")
        for i, name in enumerate(self.class_names):
            res[f"ACC-{name}"] = float(100 * per_class[i])
        res["ACC_per_class"] = [float(v) for v in 100 * per_class]
        if self.seen is not None:
            seen = np.asarray(self.seen, dtype=bool)
            res["accuracy_seen"] = ratio(seen)
            res["accuracy_unseen"] = ratio(~seen)
        res["num_segments"] = int(total.sum())
        res["num_correct"] = int(correct.sum())
        return res
