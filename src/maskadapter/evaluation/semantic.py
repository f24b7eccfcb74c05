"""Semantic segmentation metrics (mIoU, fwIoU, mACC, pACC), computed as detectron2's ``SemSegEvaluator``.

What is matched (facebookresearch/detectron2 ``detectron2/evaluation/sem_seg_evaluation.py``, which both
``train_net_fcclip.py`` and ``train_net_maftp.py`` of hustvl/MaskAdapter use):

* one (C+1)x(C+1) int64 confusion matrix over the whole dataset, indexed ``[pred, gt]`` and filled with
  ``bincount((C+1) * pred + gt)``; GT pixels equal to the ignore label go to column C and are never used;
* ``tp = diag[:C]``, ``pos_gt = column sums``, ``pos_pred = row sums over the C real GT columns`` (so a
  prediction on an ignored pixel counts nowhere), ``IoU_c = tp / (pos_gt + pos_pred - tp)``;
* a class is averaged only where ``pos_gt > 0`` (and ``union > 0``): a class absent from the GT but
  predicted gets no IoU (nan) and does not lower the mIoU; mACC likewise; fwIoU weights by ``pos_gt``;
* results in percent: ``mIoU``, ``fwIoU``, ``IoU-<name>``, ``mACC``, ``pACC``, ``ACC-<name>``.

(MAFT+'s own ``maft/evaluation/semantic_evaluation.py`` divides the IoU sum by the number of classes with
``pos_gt + pos_pred > 0`` instead, so predicted-but-absent classes count as 0; neither training script
uses it. This module follows detectron2.)

Additions that leave detectron2's numbers unchanged on its own inputs:

* a negative prediction means "no prediction": it goes to row C, so it is a wrong prediction for its GT
  pixel (it counts in ``pos_gt`` and pACC's denominator) and a prediction for no class;
* GT labels outside [0, C) that are not the ignore label are dropped and counted in
  ``invalid_gt_pixels`` (detectron2 would silently bin them into a neighbouring row);
* with ``seen``, ``mIoU_seen`` / ``mIoU_unseen`` average the valid IoUs of the seen / unseen classes
  (:func:`maskadapter.inference.postprocess.category_overlap` gives the paper's seen mask).
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import numpy as np

from .state import ArrayLike, BoolLike, StatefulEvaluator, as_map_pair, masked_mean

__all__ = ["SemSegEvaluator"]

logger = logging.getLogger(__name__)


class SemSegEvaluator(StatefulEvaluator):
    """Dataset-level semantic segmentation metrics from per-image class maps (detectron2 definitions)."""

    _KIND = "semantic"

    def __init__(self, num_classes: int, ignore_label: int = 255, class_names: Optional[Sequence[str]] = None,
                 seen: Optional[BoolLike] = None) -> None:
        """``num_classes`` C; GT pixels equal to ``ignore_label`` are skipped; ``seen`` bool [C] or None."""
        self._set_classes(num_classes, class_names, seen)
        if isinstance(ignore_label, bool) or not isinstance(ignore_label, (int, np.integer)):
            raise TypeError(f"ignore_label must be an int, got {ignore_label!r}")
        if 0 <= ignore_label < self.num_classes:
            raise ValueError(f"ignore_label {ignore_label} is a class index (num_classes={self.num_classes})")
        self.ignore_label = int(ignore_label)
        self._warned_invalid = False
        self.reset()

    def _config(self) -> dict:
        return {**super()._config(), "ignore_label": self.ignore_label}

    def _count_shapes(self) -> dict[str, tuple[int, ...]]:
        n = self.num_classes + 1
        return {"confusion": (n, n), "invalid_gt_pixels": (1,), "images": (1,)}

    @property
    def confusion_matrix(self) -> np.ndarray:
        """int64 [(C+1), (C+1)] counts indexed ``[pred, gt]``; row C: no prediction, column C: ignored GT."""
        return self._counts["confusion"].copy()

    def process(self, pred: ArrayLike, gt: ArrayLike) -> None:
        """Add one image: ``pred`` [H, W] class indices (negative = no prediction), ``gt`` [H, W] labels."""
        p, g = as_map_pair(pred, gt, "pred", "gt")
        C = self.num_classes
        if p.size and int(p.max()) >= C:
            raise ValueError(f"pred has class index {int(p.max())} >= num_classes={C}")
        ignored = g == self.ignore_label
        invalid = ~ignored & ((g < 0) | (g >= C))
        n_invalid = int(invalid.sum())
        # detectron2: gt[gt == ignore_label] = C; a negative prediction takes the spare row C
        g = np.where(ignored, C, g)
        p = np.where(p < 0, C, p)
        index = (C + 1) * p + g
        if n_invalid:
            if not self._warned_invalid:
                values = np.unique(g[invalid])[:10].tolist()
                logger.warning("gt has %d pixels with labels outside 0..%d that are not the ignore label %d "
                               "(e.g. %s); they are skipped and counted in invalid_gt_pixels",
                               n_invalid, C - 1, self.ignore_label, values)
                self._warned_invalid = True
            index = index[~invalid]
        self._counts["confusion"] += np.bincount(index.ravel(), minlength=(C + 1) ** 2).reshape(C + 1, C + 1)
        self._counts["invalid_gt_pixels"][0] += n_invalid
        self._counts["images"][0] += 1

    def evaluate(self) -> dict:
        """Metrics in percent (nan where undefined), detectron2's keys plus counts and seen/unseen means."""
        C = self.num_classes
        conf = self._counts["confusion"]
        acc = np.full(C, np.nan, dtype=np.float64)
        iou = np.full(C, np.nan, dtype=np.float64)
        tp = conf.diagonal()[:-1].astype(np.float64)
        # all rows: a "no prediction" pixel (row C) still belongs to its GT class; detectron2 has no such row
        pos_gt = np.sum(conf[:, :-1], axis=0).astype(np.float64)
        pos_pred = np.sum(conf[:-1, :-1], axis=1).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            class_weights = pos_gt / np.sum(pos_gt)
            acc_valid = pos_gt > 0
            acc[acc_valid] = tp[acc_valid] / pos_gt[acc_valid]
            union = pos_gt + pos_pred - tp
            iou_valid = np.logical_and(acc_valid, union > 0)
            iou[iou_valid] = tp[iou_valid] / union[iou_valid]
            macc = np.sum(acc[acc_valid]) / np.sum(acc_valid)
            miou = np.sum(iou[iou_valid]) / np.sum(iou_valid)
            fiou = np.sum(iou[iou_valid] * class_weights[iou_valid])
            pacc = np.sum(tp) / np.sum(pos_gt)

        res: dict = {}
        res["mIoU"] = float(100 * miou)
        res["fwIoU"] = float(100 * fiou)
        for i, name in enumerate(self.class_names):
            res[f"IoU-{name}"] = float(100 * iou[i])
        res["mACC"] = float(100 * macc)
        res["pACC"] = float(100 * pacc)
        for i, name in enumerate(self.class_names):
            res[f"ACC-{name}"] = float(100 * acc[i])
        if self.seen is not None:
            seen = np.asarray(self.seen, dtype=bool)
            res["mIoU_seen"] = 100 * masked_mean(iou, iou_valid & seen)
            res["mIoU_unseen"] = 100 * masked_mean(iou, iou_valid & ~seen)
        # per-class lists survive duplicated class names, which the "IoU-<name>" keys do not
        res["IoU_per_class"] = [float(v) for v in 100 * iou]
        res["ACC_per_class"] = [float(v) for v in 100 * acc]
        res["num_images"] = int(self._counts["images"][0])
        res["invalid_gt_pixels"] = int(self._counts["invalid_gt_pixels"][0])
        res["ignored_pixels"] = int(conf[:, -1].sum())
        res["no_prediction_pixels"] = int(conf[-1, :-1].sum())
        return res
