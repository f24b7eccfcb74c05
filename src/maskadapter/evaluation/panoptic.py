"""Panoptic quality (PQ / SQ / RQ), computed as panopticapi's ``pq_compute`` on in-memory id maps.

What is matched (cocodataset/panopticapi ``panopticapi/evaluation.py``, ``pq_compute_single_core`` and
``PQStat.pq_average``; detectron2's ``COCOPanopticEvaluator`` calls it and reports 100x the numbers):

* pairwise intersections are counted on ``gt_id * OFFSET + pred_id`` (``OFFSET = 256**3``, id 0 = VOID);
* a GT segment and a predicted segment of the same category match when ``IoU > 0.5``, with
  ``IoU = inter / (pred_area + gt_area - inter - |pred ∩ GT VOID|)``; crowd GT segments never match;
* unmatched non-crowd GT segments are false negatives; an unmatched prediction is a false positive unless
  more than half of its area lies on GT VOID plus the crowd region of its category (panopticapi keeps one
  crowd segment per category: the last one listed);
* per category: tp, fp, fn and the sum of matched IoUs; ``pq = iou / (tp + fp/2 + fn/2)``,
  ``sq = iou / tp`` (0 when tp = 0), ``rq = tp / (tp + fp/2 + fn/2)``; All / Things / Stuff average over the
  categories with ``tp + fp + fn > 0`` (``n``); per-class values are 0 for the other categories;
* the checks of ``pq_compute_single_core`` (a predicted id in the map but not in the segments, or listed but
  absent from the map, an unknown category) raise ``ValueError`` instead of ``KeyError``.

Differences, none of which changes a metric beyond rounding:

* GT areas are the pixel counts of ``gt_panoptic`` unless a GT segment dict carries ``"area"`` (panopticapi
  reads it from the GT JSON, which for COCO / ADE equals the pixel count);
* the matched IoUs are summed exactly: every IoU in (0.5, 1] is a multiple of 2**-53, so
  ``iou * 2**53`` is an integer, kept as two int64 limbs (high / low 27 bits). The final sum is the
  correctly rounded exact sum, where panopticapi adds floats in an order that depends on its CPU count;
  the two agree to within a few ulps, and merged / reduced states agree with one process bit for bit;
* ``n = 0`` (e.g. no stuff category) gives nan where panopticapi raises ZeroDivisionError.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

import numpy as np

from .state import ArrayLike, BoolLike, StatefulEvaluator, as_bool_vector, as_map_pair

__all__ = ["PanopticEvaluator", "OFFSET", "VOID"]

logger = logging.getLogger(__name__)

OFFSET = 256 * 256 * 256  #: panopticapi's id multiplier; segment ids must be below it
VOID = 0  #: panopticapi's void id
_IOU_SCALE_BITS = 53  # IoU in (0.5, 1] is an integer multiple of 2**-53
_LIMB_BITS = 27  # iou * 2**53 < 2**54 splits into two limbs; int64 sums hold 2**36 matches per class
_LIMB_MASK = (1 << _LIMB_BITS) - 1


def _compact(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct ids [U] and each pixel's index into them [HW] (bincount fast path for small ids)."""
    flat = ids.ravel()
    top = int(flat.max()) if flat.size else 0
    if top < (1 << 22):
        present = np.flatnonzero(np.bincount(flat, minlength=1))
        lut = np.zeros(top + 1, dtype=np.int64)
        lut[present] = np.arange(present.size, dtype=np.int64)
        return present, lut[flat]
    uniq, inverse = np.unique(flat, return_inverse=True)
    return uniq, inverse.ravel()


def _segment_field(seg: Any, key: str, where: str, default: Any = None) -> int:
    if not isinstance(seg, dict):
        raise TypeError(f"{where} items must be dicts, got {type(seg).__name__}")
    if key not in seg:
        if default is not None:
            return default
        raise ValueError(f"{where} item {seg} has no {key!r}")
    value = seg[key]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value.is_integer():  # e.g. an "area" read from JSON as 123.0
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{where} item {key!r} must be an int, got {value!r}")
    return int(value)


class PanopticEvaluator(StatefulEvaluator):
    """Dataset-level PQ / SQ / RQ (All, Things, Stuff, per class, seen / unseen) from per-image id maps."""

    _KIND = "panoptic"

    def __init__(self, num_classes: int, is_thing: BoolLike, class_names: Optional[Sequence[str]] = None,
                 seen: Optional[BoolLike] = None) -> None:
        """``num_classes`` C, ``is_thing`` bool [C] (Things vs Stuff), ``seen`` bool [C] or None."""
        self._set_classes(num_classes, class_names, seen)
        thing = as_bool_vector(is_thing, self.num_classes, "is_thing")
        assert thing is not None
        self.is_thing = thing
        self.reset()

    def _config(self) -> dict:
        return {**super()._config(), "is_thing": list(self.is_thing)}

    def _count_shapes(self) -> dict[str, tuple[int, ...]]:
        C = self.num_classes
        return {"tp": (C,), "fp": (C,), "fn": (C,), "iou_hi": (C,), "iou_lo": (C,), "images": (1,)}

    def _category(self, seg: dict, where: str) -> int:
        cat = _segment_field(seg, "category_id", where)
        if not 0 <= cat < self.num_classes:
            raise ValueError(f"{where} item {seg} has category_id {cat} outside 0..{self.num_classes - 1}")
        return cat

    def process(self, pred_panoptic: ArrayLike, pred_segments: Sequence[dict], gt_panoptic: ArrayLike,
                gt_segments: Sequence[dict]) -> None:
        """Add one image: id maps [H, W] (0 = void) and their segments (``id``, ``category_id``[, ``iscrowd``])."""
        pred, gt = as_map_pair(pred_panoptic, gt_panoptic, "pred_panoptic", "gt_panoptic")
        for name, arr in (("pred_panoptic", pred), ("gt_panoptic", gt)):
            if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= OFFSET):
                raise ValueError(f"{name} ids must lie in [0, {OFFSET}), got {int(arr.min())}..{int(arr.max())}")

        # dict comprehension semantics of panopticapi: a repeated id keeps its last entry
        pred_cat: dict[int, int] = {}
        for seg in pred_segments:
            sid = _segment_field(seg, "id", "pred_segments")
            if sid == VOID:
                raise ValueError("pred_segments must not use id 0, which is void")
            pred_cat[sid] = self._category(seg, "pred_segments")
        gt_info: dict[int, tuple[int, bool, Optional[int]]] = {}
        for seg in gt_segments:
            sid = _segment_field(seg, "id", "gt_segments")
            if sid == VOID:
                raise ValueError("gt_segments must not use id 0, which is void")
            crowd = _segment_field(seg, "iscrowd", "gt_segments", default=0)
            area = _segment_field(seg, "area", "gt_segments", default=-1)
            gt_info[sid] = (self._category(seg, "gt_segments"), crowd == 1, None if area < 0 else area)

        gt_ids, gt_index = _compact(gt)
        pred_ids, pred_index = _compact(pred)
        n_pred = pred_ids.size
        joint = gt_index * n_pred + pred_index
        if gt_ids.size * n_pred <= (1 << 22):
            counts = np.bincount(joint, minlength=gt_ids.size * n_pred)
            keys = np.flatnonzero(counts)
            counts = counts[keys]
        else:
            keys, counts = np.unique(joint, return_counts=True)
        gt_pos, pred_pos = np.divmod(keys, n_pred)
        pairs = {(int(gt_ids[g]), int(pred_ids[p])): int(c) for g, p, c in zip(gt_pos, pred_pos, counts)}
        pred_area: dict[int, int] = {}
        gt_pixels: dict[int, int] = {}
        for (g, p), c in pairs.items():
            pred_area[p] = pred_area.get(p, 0) + c
            gt_pixels[g] = gt_pixels.get(g, 0) + c

        unknown = sorted(p for p in pred_area if p != VOID and p not in pred_cat)
        if unknown:
            raise ValueError(f"pred_panoptic has segment ids {unknown[:10]} that are not in pred_segments")
        missing = sorted(p for p in pred_cat if p not in pred_area)
        if missing:
            raise ValueError(f"pred_segments lists ids {missing[:10]} that do not appear in pred_panoptic")

        tp, fp, fn = self._counts["tp"], self._counts["fp"], self._counts["fn"]
        gt_matched: set[int] = set()
        pred_matched: set[int] = set()
        for (g, p), inter in pairs.items():
            if g not in gt_info or p not in pred_cat:
                continue
            cat, crowd, area = gt_info[g]
            if crowd or cat != pred_cat[p]:
                continue
            gt_area = gt_pixels.get(g, 0) if area is None else area
            union = pred_area[p] + gt_area - inter - pairs.get((VOID, p), 0)
            if union <= 0:
                raise ValueError(f"gt_segments area of segment {g} ({gt_area}) is smaller than its pixels")
            iou = inter / union
            if iou > 0.5:
                scaled = iou * (1 << _IOU_SCALE_BITS)
                if not scaled.is_integer():  # impossible for a float64 iou >= 0.5
                    raise AssertionError(f"IoU {iou!r} is not a multiple of 2**-53")
                q = int(scaled)
                tp[cat] += 1
                self._counts["iou_hi"][cat] += q >> _LIMB_BITS
                self._counts["iou_lo"][cat] += q & _LIMB_MASK
                gt_matched.add(g)
                pred_matched.add(p)

        crowd_of_category: dict[int, int] = {}
        for g, (cat, crowd, _) in gt_info.items():
            if g in gt_matched:
                continue
            if crowd:
                crowd_of_category[cat] = g  # panopticapi keeps the last crowd segment of each category
                continue
            fn[cat] += 1

        for p, cat in pred_cat.items():
            if p in pred_matched:
                continue
            ignored = pairs.get((VOID, p), 0)
            if cat in crowd_of_category:
                ignored += pairs.get((crowd_of_category[cat], p), 0)
            if ignored / pred_area[p] > 0.5:
                continue
            fp[cat] += 1
        self._counts["images"][0] += 1

    def iou_sums(self) -> list[float]:
        """Per-class sum of matched IoUs [C], correctly rounded from the exact fixed-point sum."""
        hi, lo = self._counts["iou_hi"], self._counts["iou_lo"]
        return [((int(h) << _LIMB_BITS) + int(lo_)) / (1 << _IOU_SCALE_BITS) for h, lo_ in zip(hi, lo)]

    def _average(self, categories: Sequence[int], iou: list[float]) -> tuple[dict, dict[int, dict]]:
        """panopticapi's ``pq_average`` over ``categories`` (fractions, not percent)."""
        pq = sq = rq = 0.0
        n = 0
        per_class: dict[int, dict] = {}
        for c in categories:
            tp, fp, fn = (int(self._counts[k][c]) for k in ("tp", "fp", "fn"))
            if tp + fp + fn == 0:
                per_class[c] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
                continue
            n += 1
            pq_c = iou[c] / (tp + 0.5 * fp + 0.5 * fn)
            sq_c = iou[c] / tp if tp != 0 else 0.0
            rq_c = tp / (tp + 0.5 * fp + 0.5 * fn)
            per_class[c] = {"pq": pq_c, "sq": sq_c, "rq": rq_c}
            pq += pq_c
            sq += sq_c
            rq += rq_c
        if n == 0:
            return {"pq": float("nan"), "sq": float("nan"), "rq": float("nan"), "n": 0}, per_class
        return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}, per_class

    def evaluate(self) -> dict:
        """PQ/SQ/RQ in percent: detectron2's flat keys, All/Things/Stuff(/Seen/Unseen) dicts, ``per_class``."""
        iou = self.iou_sums()
        everything = range(self.num_classes)
        groups = {
            "All": list(everything),
            "Things": [c for c in everything if self.is_thing[c]],
            "Stuff": [c for c in everything if not self.is_thing[c]],
        }
        if self.seen is not None:
            groups["Seen"] = [c for c in everything if self.seen[c]]
            groups["Unseen"] = [c for c in everything if not self.seen[c]]
        res: dict = {}
        per_class: dict[int, dict] = {}
        for name, cats in groups.items():
            summary, classes = self._average(cats, iou)
            if name == "All":
                per_class = classes
            res[name] = {"pq": 100 * summary["pq"], "sq": 100 * summary["sq"], "rq": 100 * summary["rq"],
                         "n": summary["n"]}
        flat = {"": "All", "_th": "Things", "_st": "Stuff"}
        if self.seen is not None:
            flat.update({"_seen": "Seen", "_unseen": "Unseen"})
        for suffix, group in flat.items():
            for metric in ("pq", "sq", "rq"):
                res[f"{metric.upper()}{suffix}"] = res[group][metric]
        res["per_class"] = [
            {"name": self.class_names[c], "isthing": self.is_thing[c],
             "pq": 100 * per_class[c]["pq"], "sq": 100 * per_class[c]["sq"], "rq": 100 * per_class[c]["rq"],
             "tp": int(self._counts["tp"][c]), "fp": int(self._counts["fp"][c]), "fn": int(self._counts["fn"][c])}
            for c in everything
        ]
        res["num_images"] = int(self._counts["images"][0])
        return res
