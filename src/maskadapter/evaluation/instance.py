"""Instance segmentation mask AP with pycocotools ``COCOeval(iouType="segm")``, as detectron2 reports it.

What is matched (detectron2 ``COCOEvaluator`` / ``_evaluate_predictions_on_coco`` / ``_derive_coco_results``,
subclassed by hustvl/MaskAdapter ``fcclip/evaluation/instance_evaluation.py`` ``InstanceSegEvaluator``,
which only maps contiguous class ids back to dataset ids):

* predictions are RLE-encoded with ``mask_util.encode(np.asfortranarray(mask[:, :, None].astype(uint8)))``,
  ``counts`` decoded to str, score = the float score, and no ``bbox`` key, so ``loadRes`` takes the *mask*
  area for the small / medium / large ranges (detectron2 pops ``bbox`` for segm for that reason);
* ``maxDets = [1, 10, 100]``, every other ``COCOeval`` parameter at its default; all processed images
  are evaluated (images without GT or predictions included);
* ``AP, AP50, AP75, APs, APm, APl = 100 * stats[0:6]``, nan where COCOeval gives -1;
* per class: ``precision[:, :, k, 0, -1]``, mean over the entries > -1, times 100 (nan without GT);
* no prediction at all: every metric nan (cocoapi cannot load an empty result list).

detectron2 runs its C++ ``COCOeval_opt`` by default, which is written to give COCOeval's numbers; this
module runs pycocotools' ``COCOeval``. GT areas are the mask pixel counts unless a GT dict carries
``"area"`` (a COCO JSON stores its own; give it to reproduce a JSON-based evaluation exactly).
Class k is COCO category id k + 1 internally (COCOeval's matching keeps 0 for "unmatched").
``AP_seen`` / ``AP_unseen`` are the means of the per-class APs over seen / unseen classes with GT.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
from typing import Any, Optional, Sequence, Union

import numpy as np
import pycocotools.mask as mask_util
import torch

from ..inference.instances import encode_rle
from .state import (BoolLike, StatefulEvaluator, as_int_array)

__all__ = ["InstanceEvaluator", "encode_masks"]

logger = logging.getLogger(__name__)

_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
MaskLike = Union[torch.Tensor, np.ndarray]


def encode_masks(masks: MaskLike, name: str = "masks") -> list[dict]:
    """COCO compressed RLEs (``counts`` as str) of bool masks [K, H, W]."""
    arr = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    if arr.ndim != 3:
        raise ValueError(f"{name} must have shape [K, H, W], got {list(arr.shape)}")
    if arr.dtype != np.bool_:
        raise TypeError(f"{name} must be boolean, got {arr.dtype}")
    return encode_rle(arr)


def _gt_rle(segmentation: Any, height: int, width: int, where: str) -> dict:
    """A GT mask [H, W] (bool) or RLE dict as a compressed RLE with str counts."""
    if isinstance(segmentation, dict):
        if "size" not in segmentation or "counts" not in segmentation:
            raise ValueError(f"{where} RLE must have 'size' and 'counts'")
        size = [int(v) for v in segmentation["size"]]
        if size != [height, width]:
            raise ValueError(f"{where} RLE size {size} differs from the image size {[height, width]}")
        counts = segmentation["counts"]
        if isinstance(counts, list):  # uncompressed RLE
            rle = mask_util.frPyObjects({"size": size, "counts": counts}, height, width)
        else:
            rle = {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else bytes(counts)}
        rle = dict(rle)
        rle["counts"] = rle["counts"].decode("ascii")
        return rle
    mask = segmentation.detach().cpu().numpy() if isinstance(segmentation, torch.Tensor) else segmentation
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"{where} mask must be a bool [H, W] tensor / array or an RLE dict")
    if mask.shape != (height, width):
        raise ValueError(f"{where} mask shape {list(mask.shape)} differs from the image size {[height, width]}")
    return encode_masks(mask[None], where)[0]


class InstanceEvaluator(StatefulEvaluator):
    """Mask AP over a dataset; the state holds RLE-encoded GT and predictions, COCOeval runs in ``evaluate``."""

    _KIND = "instance"
    _RECORD_KEYS = ("images", "gt", "pred")

    def __init__(self, num_classes: int, class_names: Optional[Sequence[str]] = None,
                 seen: Optional[BoolLike] = None) -> None:
        """``num_classes`` C (class ids 0..C-1 on both sides), ``seen`` bool [C] or None."""
        self._set_classes(num_classes, class_names, seen)
        self.reset()

    def _count_shapes(self) -> dict[str, tuple[int, ...]]:
        return {}

    def _check_records(self, records_list: list[dict[str, list]]) -> None:
        seen_ids: set[int] = set()
        for records in records_list:
            for image in records["images"]:
                if not (isinstance(image, list) and len(image) == 3):
                    raise ValueError(f"image records must be [image_id, height, width], got {image!r}")
                if image[0] in seen_ids:
                    raise ValueError(f"image_id {image[0]} was processed more than once")
                seen_ids.add(image[0])

    def process(self, image_id: int, pred: dict, gt: Sequence[dict]) -> None:
        """Add image ``image_id``: ``pred`` {masks bool [K, H, W], scores [K], classes [K]}, ``gt`` list of
        {category_id, mask bool [H, W] or segmentation RLE, iscrowd[, area]}."""
        if isinstance(image_id, bool) or not isinstance(image_id, (int, np.integer)):
            raise TypeError(f"image_id must be an int, got {image_id!r}")
        image_id = int(image_id)
        self._check_records([self._records, {"images": [[image_id, 0, 0]]}])
        if not isinstance(pred, dict) or not {"masks", "scores", "classes"} <= set(pred):
            raise ValueError("pred must be a dict with 'masks', 'scores' and 'classes'")
        rles = encode_masks(pred["masks"], "pred['masks']")
        shape = tuple(np.shape(pred["masks"]))
        height, width = int(shape[1]), int(shape[2])
        scores_t = pred["scores"]
        scores = (scores_t.detach().cpu().double().numpy() if isinstance(scores_t, torch.Tensor)
                  else np.asarray(scores_t, dtype=np.float64)).reshape(-1)
        classes = as_int_array(pred["classes"], "pred['classes']").reshape(-1)
        if not len(rles) == scores.shape[0] == classes.shape[0]:
            raise ValueError(f"pred has {len(rles)} masks, {scores.shape[0]} scores and {classes.shape[0]} classes")
        if not np.isfinite(scores).all():
            raise ValueError("pred['scores'] must be finite")
        if classes.size and (classes.min() < 0 or classes.max() >= self.num_classes):
            raise ValueError(f"pred['classes'] must lie in 0..{self.num_classes - 1}")

        gt_records = []
        for i, ann in enumerate(gt):
            where = f"gt[{i}]"
            if not isinstance(ann, dict):
                raise TypeError(f"{where} must be a dict, got {type(ann).__name__}")
            cat = ann.get("category_id")
            if isinstance(cat, torch.Tensor):
                cat = cat.item()
            if isinstance(cat, bool) or not isinstance(cat, (int, np.integer)) or not 0 <= cat < self.num_classes:
                raise ValueError(f"{where} category_id must be an int in 0..{self.num_classes - 1}, got {cat!r}")
            seg = ann.get("mask", ann.get("segmentation"))
            if seg is None:
                raise ValueError(f"{where} needs a 'mask' (bool [H, W]) or a 'segmentation' RLE")
            rle = _gt_rle(seg, height, width, where)
            area = ann.get("area")
            area = float(mask_util.area(rle)) if area is None else float(area)
            gt_records.append({"image_id": image_id, "category_id": int(cat) + 1, "segmentation": rle,
                               "iscrowd": int(bool(ann.get("iscrowd", 0))), "area": area,
                               "bbox": [float(v) for v in mask_util.toBbox(rle)]})
        # scores go through float(): a float32 score is exact in float64, and JSON keeps float64 exactly
        pred_records = [{"image_id": image_id, "category_id": int(c) + 1, "segmentation": r, "score": float(s)}
                        for r, s, c in zip(rles, scores, classes)]
        self._records["images"].append([image_id, height, width])
        self._records["gt"].extend(gt_records)
        self._records["pred"].extend(pred_records)

    def evaluate(self) -> dict:
        """AP, AP50, AP75, APs, APm, APl, ``AP-<name>``, ``AP_per_class``, seen/unseen AP; percent, nan if undefined."""
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        C = self.num_classes
        res: dict = {}
        per_class = [float("nan")] * C
        if self._records["pred"]:
            dataset = {
                "images": [{"id": i, "height": h, "width": w} for i, h, w in self._records["images"]],
                "annotations": [dict(copy.deepcopy(a), id=k + 1) for k, a in enumerate(self._records["gt"])],
                "categories": [{"id": c + 1, "name": self.class_names[c]} for c in range(C)],
            }
            log = io.StringIO()
            # pycocotools prints its progress; a library logs instead
            with contextlib.redirect_stdout(log):
                coco_gt = COCO()
                coco_gt.dataset = dataset
                coco_gt.createIndex()
                coco_dt = coco_gt.loadRes(copy.deepcopy(self._records["pred"]))
                coco_eval = COCOeval(coco_gt, coco_dt, "segm")
                coco_eval.params.maxDets = [1, 10, 100]
                coco_eval.evaluate()
                coco_eval.accumulate()
                coco_eval.summarize()
            logger.debug("COCOeval output:\n%s", log.getvalue())
            for idx, metric in enumerate(_METRICS):
                stat = float(coco_eval.stats[idx])
                res[metric] = stat * 100 if stat >= 0 else float("nan")
            precisions = coco_eval.eval["precision"]  # [iou, recall, class, area range, max dets]
            assert precisions.shape[2] == C
            for k in range(C):
                precision = precisions[:, :, k, 0, -1]
                precision = precision[precision > -1]
                per_class[k] = float(np.mean(precision) * 100) if precision.size else float("nan")
        else:
            logger.warning("no predictions: every AP is nan")
            res.update({metric: float("nan") for metric in _METRICS})
        for k, name in enumerate(self.class_names):
            res[f"AP-{name}"] = per_class[k]
        res["AP_per_class"] = list(per_class)
        if self.seen is not None:
            for suffix, want in (("_seen", True), ("_unseen", False)):
                values = [v for v, s in zip(per_class, self.seen) if s == want and not math.isnan(v)]
                res[f"AP{suffix}"] = float(np.mean(values)) if values else float("nan")
        res["num_images"] = len(self._records["images"])
        res["num_gt"] = len(self._records["gt"])
        res["num_predictions"] = len(self._records["pred"])
        return res
