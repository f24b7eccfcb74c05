"""Evaluators: hand-computed metrics on tiny maps, exact merge / JSON state / 2-process reduction."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from maskadapter.evaluation import (InstanceEvaluator, MaskClassificationEvaluator, PanopticEvaluator,
                                    SemSegEvaluator, reduce_evaluator)
from maskadapter.evaluation.instance import encode_masks


def same(a, b) -> bool:
    """Exact equality of nested results, nan equal to nan."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def roundtrip(state: dict) -> dict:
    return json.loads(json.dumps(state))


# --------------------------------------------------------------------------------------------------
# semantic segmentation

SEM_GT = np.array([
    [0, 0, 1, 1],
    [0, 0, 1, 1],
    [2, 2, 255, 255],
    [2, 2, 7, -3],  # 7 and -3: invalid labels for C = 5
])
SEM_PRED = np.array([
    [0, 1, 1, 1],
    [0, -1, 1, 3],  # -1: no prediction; 3: a class absent from the GT
    [2, 3, 3, 0],
    [2, 2, 0, 0],
])
# class 4 is absent from both.
# class 0: gt 4 px, tp 2, predicted on valid GT 2 px -> IoU 2/(4+2-2) = 0.5,  ACC 2/4
# class 1: gt 4 px, tp 3, predicted 4 px             -> IoU 3/(4+4-3) = 0.6,  ACC 3/4
# class 2: gt 4 px, tp 3, predicted 3 px             -> IoU 3/(4+3-3) = 0.75, ACC 3/4
# class 3: predicted on 2 valid px, no GT -> nan, not averaged.  Predictions on ignored / invalid GT count nowhere.


def test_semseg_hand_computed():
    ev = SemSegEvaluator(5, ignore_label=255, class_names=list("abcde"), seen=[True, True, False, False, False])
    ev.process(torch.as_tensor(SEM_PRED), SEM_GT)
    r = ev.evaluate()
    assert r["IoU-a"] == pytest.approx(50.0) and r["IoU-b"] == pytest.approx(60.0)
    assert r["IoU-c"] == pytest.approx(75.0)
    assert math.isnan(r["IoU-d"]) and math.isnan(r["IoU-e"])
    assert r["mIoU"] == pytest.approx(100 * (0.5 + 0.6 + 0.75) / 3)
    assert r["fwIoU"] == pytest.approx(100 * (0.5 + 0.6 + 0.75) / 3)  # equal GT weights 4/12
    assert r["ACC-a"] == pytest.approx(50.0) and r["ACC-b"] == pytest.approx(75.0)
    assert math.isnan(r["ACC-d"])
    assert r["mACC"] == pytest.approx(100 * (0.5 + 0.75 + 0.75) / 3)
    assert r["pACC"] == pytest.approx(100 * 8 / 12)  # the no-prediction pixel counts in the denominator
    assert r["mIoU_seen"] == pytest.approx(55.0) and r["mIoU_unseen"] == pytest.approx(75.0)
    assert r["invalid_gt_pixels"] == 2 and r["ignored_pixels"] == 2 and r["no_prediction_pixels"] == 1
    assert r["num_images"] == 1
    assert r["IoU_per_class"][:3] == pytest.approx([50.0, 60.0, 75.0])


def test_semseg_confusion_layout_matches_detectron2():
    """Without negatives / invalid labels the matrix is detectron2's bincount((C+1)*pred + gt)."""
    rng = np.random.default_rng(0)
    C = 6
    gt = rng.integers(0, C, (5, 7))
    gt[rng.random((5, 7)) < 0.2] = 255
    pred = rng.integers(0, C, (5, 7))
    ev = SemSegEvaluator(C)
    ev.process(pred, gt.astype(np.uint8))
    g = gt.copy()
    g[g == 255] = C
    expected = np.bincount((C + 1) * pred.reshape(-1) + g.reshape(-1), minlength=(C + 1) ** 2).reshape(C + 1, C + 1)
    assert np.array_equal(ev.confusion_matrix, expected)
    # IoU by the definition, pixel by pixel
    r = ev.evaluate()
    valid = gt != 255
    for c in range(C):
        inter = np.sum((pred == c) & (gt == c))
        union = np.sum(((pred == c) | (gt == c)) & valid)
        assert r[f"IoU-{c}"] == pytest.approx(100 * inter / union)


def test_semseg_uint16_ignore_and_many_classes():
    gt = torch.tensor([[0, 846], [65535, 846]], dtype=torch.int32).numpy().astype(np.uint16)
    ev = SemSegEvaluator(847, ignore_label=65535)
    ev.process(np.array([[0, 846], [5, 1]]), gt)
    r = ev.evaluate()
    assert r["IoU-0"] == 100.0 and r["IoU-846"] == pytest.approx(50.0)
    assert r["mIoU"] == pytest.approx(75.0) and r["ignored_pixels"] == 1


def test_semseg_rejects_bad_input():
    ev = SemSegEvaluator(3)
    with pytest.raises(ValueError, match="pred"):
        ev.process(np.array([[3]]), np.array([[0]]))
    with pytest.raises(ValueError, match="shape"):
        ev.process(np.zeros((2, 2), int), np.zeros((2, 3), int))
    with pytest.raises(TypeError, match="pred"):
        ev.process(np.zeros((2, 2)), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="ignore_label"):
        SemSegEvaluator(3, ignore_label=1)
    with pytest.raises(ValueError, match="seen"):
        SemSegEvaluator(3, seen=[True, False])


# --------------------------------------------------------------------------------------------------
# panoptic: classes 0 person (thing), 1 car (thing), 2 sky (stuff), 3 road (stuff)

IS_THING = [True, True, False, False]
NAMES = ["person", "car", "sky", "road"]

# image A: GT 1 person (10 px), 2 car (8 px), 3 sky (16 px), 0 void (2 px)
PAN_A_GT = np.array([
    [1, 1, 1, 1, 1, 3],
    [1, 1, 1, 1, 1, 3],
    [3, 3, 3, 3, 3, 3],
    [2, 2, 2, 2, 3, 3],
    [2, 2, 2, 2, 3, 3],
    [3, 3, 3, 3, 0, 0],
])
PAN_A_GT_SEGS = [{"id": 1, "category_id": 0, "iscrowd": 0}, {"id": 2, "category_id": 1, "iscrowd": 0},
                 {"id": 3, "category_id": 2, "iscrowd": 0}]
PAN_A_PRED = np.array([
    [1, 1, 1, 5, 5, 5],
    [1, 1, 1, 5, 5, 5],
    [1, 5, 5, 5, 5, 5],
    [2, 2, 2, 4, 5, 5],
    [2, 2, 2, 4, 5, 5],
    [2, 2, 2, 2, 5, 5],
])
PAN_A_PRED_SEGS = [{"id": 1, "category_id": 0}, {"id": 2, "category_id": 1}, {"id": 4, "category_id": 3},
                   {"id": 5, "category_id": 2}]
# person: pred 7 px, inter 6, union 7+10-6 = 11 -> IoU 6/11 = 0.545 > 0.5: TP
# car: pred 10 px, inter 6, union 10+8-6 = 12 -> IoU exactly 0.5: no match -> FN (GT) + FP (pred, no void)
# sky: pred 17 px, inter 11, 2 px on void: union 17+16-11-2 = 20 -> 0.55: TP (0.5 without removing void)
# road (pred 4, 2 px on the GT car): absent from the GT -> FP

# image B: GT 7 person crowd (9 px), 8 person (12 px), 9 road (9 px), 10 car (4 px), void 2 px
PAN_B_GT = np.array([
    [7, 7, 7, 0, 10, 10],
    [7, 7, 7, 0, 10, 10],
    [7, 7, 7, 8, 8, 8],
    [9, 9, 9, 8, 8, 8],
    [9, 9, 9, 8, 8, 8],
    [9, 9, 9, 8, 8, 8],
])
PAN_B_GT_SEGS = [{"id": 7, "category_id": 0, "iscrowd": 1}, {"id": 8, "category_id": 0, "iscrowd": 0},
                 {"id": 9, "category_id": 3, "iscrowd": 0}, {"id": 10, "category_id": 1, "iscrowd": 0}]
PAN_B_PRED = np.array([
    [3, 3, 3, 3, 0, 0],
    [3, 3, 3, 3, 0, 0],
    [3, 3, 6, 6, 6, 6],
    [4, 4, 6, 6, 6, 6],
    [4, 4, 6, 6, 6, 6],
    [4, 4, 6, 6, 6, 6],
])
PAN_B_PRED_SEGS = [{"id": 3, "category_id": 0}, {"id": 4, "category_id": 3}, {"id": 6, "category_id": 0}]
# pred 3 person (10 px): 8 px on the person crowd + 2 px on void = 10/10 > 0.5 -> not a FP (void alone: 0.2)
# pred 6 person (16 px): inter 12 with GT 8 (12 px) -> IoU 12/16 = 0.75: TP
# pred 4 road (6 px): inter 6 with GT road (9 px) -> IoU 6/9: TP
# GT car 10: no prediction -> FN; the crowd is never a FN

PERSON_IOU = 6 / 11 + 12 / 16
PQ = {"person": PERSON_IOU / 2, "car": 0.0, "sky": 11 / 20, "road": (6 / 9) / (1 + 0.5)}
SQ = {"person": PERSON_IOU / 2, "car": 0.0, "sky": 11 / 20, "road": 6 / 9}
RQ = {"person": 1.0, "car": 0.0, "sky": 1.0, "road": 1 / 1.5}


def _panoptic(seen=None) -> PanopticEvaluator:
    return PanopticEvaluator(4, torch.tensor(IS_THING), class_names=NAMES, seen=seen)


def test_panoptic_single_image_cases():
    ev = _panoptic()
    ev.process(PAN_A_PRED, PAN_A_PRED_SEGS, torch.as_tensor(PAN_A_GT), PAN_A_GT_SEGS)
    c = ev.state()["counts"]
    assert c["tp"] == [1, 0, 1, 0] and c["fp"] == [0, 1, 0, 1] and c["fn"] == [0, 1, 0, 0]
    assert ev.iou_sums() == [6 / 11, 0.0, 11 / 20, 0.0]
    r = ev.evaluate()
    # road is predicted but absent from the GT: panopticapi counts it (fp = 1) with pq = 0, unlike mIoU
    assert r["All"]["n"] == 4 and r["per_class"][3]["pq"] == 0.0
    assert r["PQ"] == pytest.approx(100 * (6 / 11 + 0 + 11 / 20 + 0) / 4)

    ev = _panoptic()
    ev.process(PAN_B_PRED, PAN_B_PRED_SEGS, PAN_B_GT, PAN_B_GT_SEGS)
    c = ev.state()["counts"]
    assert c["tp"] == [1, 0, 0, 1] and c["fp"] == [0, 0, 0, 0] and c["fn"] == [0, 1, 0, 0]
    assert ev.iou_sums() == [12 / 16, 0.0, 0.0, 6 / 9]


def test_panoptic_crowd_absorbs_only_its_category():
    segs = [dict(s) for s in PAN_B_PRED_SEGS]
    segs[0]["category_id"] = 1  # pred 3 as car: the person crowd does not absorb it, void alone is 2/10
    ev = _panoptic()
    ev.process(PAN_B_PRED, segs, PAN_B_GT, PAN_B_GT_SEGS)
    assert ev.state()["counts"]["fp"] == [0, 1, 0, 0]


def test_panoptic_void_only_prediction_is_not_a_false_positive():
    gt = np.array([[0, 0, 0], [0, 1, 1]])
    pred = np.array([[2, 2, 2], [2, 1, 1]])
    ev = _panoptic()
    ev.process(pred, [{"id": 2, "category_id": 1}, {"id": 1, "category_id": 2}],
               gt, [{"id": 1, "category_id": 2, "iscrowd": 0}])
    c = ev.state()["counts"]
    assert c["fp"] == [0, 0, 0, 0] and c["tp"] == [0, 0, 1, 0]  # pred 2: 4/4 px on void


def test_panoptic_dataset_metrics():
    ev = _panoptic(seen=[True, False, True, False])
    ev.process(PAN_A_PRED, PAN_A_PRED_SEGS, PAN_A_GT, PAN_A_GT_SEGS)
    ev.process(PAN_B_PRED, PAN_B_PRED_SEGS, PAN_B_GT, PAN_B_GT_SEGS)
    r = ev.evaluate()
    per = {p["name"]: p for p in r["per_class"]}
    for name in NAMES:
        assert per[name]["pq"] == pytest.approx(100 * PQ[name], abs=1e-12)
        assert per[name]["sq"] == pytest.approx(100 * SQ[name], abs=1e-12)
        assert per[name]["rq"] == pytest.approx(100 * RQ[name], abs=1e-12)
    assert (per["car"]["tp"], per["car"]["fp"], per["car"]["fn"]) == (0, 1, 2)
    assert (per["road"]["tp"], per["road"]["fp"], per["road"]["fn"]) == (1, 1, 0)
    assert r["All"]["n"] == 4 and r["Things"]["n"] == 2 and r["Stuff"]["n"] == 2
    assert r["PQ"] == pytest.approx(100 * sum(PQ.values()) / 4)
    assert r["SQ"] == pytest.approx(100 * sum(SQ.values()) / 4)
    assert r["RQ"] == pytest.approx(100 * sum(RQ.values()) / 4)
    assert r["PQ_th"] == pytest.approx(100 * (PQ["person"] + PQ["car"]) / 2)
    assert r["PQ_st"] == pytest.approx(100 * (PQ["sky"] + PQ["road"]) / 2)
    assert r["SQ_st"] == pytest.approx(100 * (SQ["sky"] + SQ["road"]) / 2)
    assert r["RQ_th"] == pytest.approx(100 * (RQ["person"] + RQ["car"]) / 2)
    assert r["PQ_seen"] == pytest.approx(100 * (PQ["person"] + PQ["sky"]) / 2)
    assert r["PQ_unseen"] == pytest.approx(100 * (PQ["car"] + PQ["road"]) / 2)
    assert r["Things"]["pq"] == r["PQ_th"] and r["num_images"] == 2


def test_panoptic_unmatched_categories_and_empty_groups():
    ev = PanopticEvaluator(3, [True, False, False])
    ev.process(np.array([[1, 1]]), [{"id": 1, "category_id": 0}], np.array([[1, 1]]),
               [{"id": 1, "category_id": 0, "iscrowd": 0}])
    r = ev.evaluate()
    # classes 1 and 2 never appear: per-class 0 (panopticapi), not counted in n; Stuff has n = 0 -> nan
    assert r["All"]["n"] == 1 and r["PQ"] == 100.0 and r["per_class"][1]["pq"] == 0.0
    assert r["Stuff"]["n"] == 0 and math.isnan(r["PQ_st"])


def test_panoptic_large_ids_give_the_same_result():
    """COCO-style ids (R + 256 G + 65536 B) take the np.unique path; the counts must not change."""
    ref = _panoptic()
    ref.process(PAN_A_PRED, PAN_A_PRED_SEGS, PAN_A_GT, PAN_A_GT_SEGS)
    big = 0x7A3B21
    gt = np.where(PAN_A_GT > 0, PAN_A_GT + big, 0)
    pred = np.where(PAN_A_PRED > 0, PAN_A_PRED * 1000 + big, 0)
    ev = _panoptic()
    ev.process(pred, [dict(s, id=s["id"] * 1000 + big) for s in PAN_A_PRED_SEGS],
               gt, [dict(s, id=s["id"] + big) for s in PAN_A_GT_SEGS])
    assert ev.state()["counts"] == ref.state()["counts"]


def test_panoptic_gt_area_override_is_used():
    # panopticapi takes the GT area from the JSON: a larger declared area lowers the IoU below 0.5
    ev = _panoptic()
    segs = [dict(s) for s in PAN_A_GT_SEGS]
    segs[0]["area"] = 13  # person: union 7 + 13 - 6 = 14 -> IoU 6/14 < 0.5
    ev.process(PAN_A_PRED, PAN_A_PRED_SEGS, PAN_A_GT, segs)
    assert ev.state()["counts"]["tp"][0] == 0 and ev.state()["counts"]["fn"][0] == 1


def test_panoptic_rejects_inconsistent_segments():
    ev = _panoptic()
    with pytest.raises(ValueError, match="not in pred_segments"):
        ev.process(PAN_A_PRED, PAN_A_PRED_SEGS[:-1], PAN_A_GT, PAN_A_GT_SEGS)
    with pytest.raises(ValueError, match="do not appear"):
        ev.process(PAN_A_PRED, PAN_A_PRED_SEGS + [{"id": 99, "category_id": 0}], PAN_A_GT, PAN_A_GT_SEGS)
    with pytest.raises(ValueError, match="category_id"):
        ev.process(PAN_A_PRED, [dict(s, category_id=4) for s in PAN_A_PRED_SEGS], PAN_A_GT, PAN_A_GT_SEGS)
    assert ev.state()["counts"]["images"] == [0]


# --------------------------------------------------------------------------------------------------
# instance AP

def _square(r0, c0, size=4, hw=8):
    m = np.zeros((hw, hw), dtype=bool)
    m[r0:r0 + size, c0:c0 + size] = True
    return m


GT_A, GT_B = _square(0, 0), _square(4, 4)
INST_GT = [{"category_id": 0, "mask": GT_A, "iscrowd": 0}, {"category_id": 1, "mask": GT_B, "iscrowd": 0}]


def _pred(classes, scores):
    return {"masks": torch.from_numpy(np.stack([GT_A, GT_B])), "scores": torch.tensor(scores),
            "classes": torch.tensor(classes)}


def test_instance_perfect_wrong_and_half():
    ev = InstanceEvaluator(2, class_names=["cat", "dog"], seen=[True, False])
    ev.process(1, _pred([0, 1], [0.9, 0.8]), INST_GT)
    r = ev.evaluate()
    assert [r["AP"], r["AP50"], r["AP75"]] == pytest.approx([100.0] * 3)  # COCOeval: tp / (tp + fp + eps)
    assert r["APs"] == pytest.approx(100.0) and math.isnan(r["APm"]) and math.isnan(r["APl"])  # 16-px objects are small
    assert [r["AP-cat"], r["AP_seen"], r["AP_unseen"]] == pytest.approx([100.0] * 3)

    ev = InstanceEvaluator(2)
    ev.process(1, _pred([1, 0], [0.9, 0.8]), INST_GT)  # classes swapped
    r = ev.evaluate()
    assert r["AP"] == 0.0 and r["AP_per_class"] == [0.0, 0.0]

    # B predicted as class 0: class 0 has a TP and a FP, class 1 nothing.
    ev = InstanceEvaluator(2, seen=[True, False])
    ev.process(1, _pred([0, 0], [0.9, 0.8]), INST_GT)  # TP ranked first: class-0 AP 1
    r = ev.evaluate()
    assert r["AP_per_class"] == pytest.approx([100.0, 0.0]) and r["AP"] == pytest.approx(50.0)
    assert r["AP_seen"] == pytest.approx(100.0) and r["AP_unseen"] == 0.0
    ev = InstanceEvaluator(2)
    ev.process(1, _pred([0, 0], [0.7, 0.8]), INST_GT)  # FP ranked first: precision 1/2 at recall 1
    r = ev.evaluate()
    assert r["AP_per_class"] == pytest.approx([50.0, 0.0]) and r["AP"] == pytest.approx(25.0)


def test_instance_rle_gt_and_crowd():
    rle = encode_masks(GT_B[None])[0]
    ev = InstanceEvaluator(2)
    ev.process(3, _pred([0, 1], [0.9, 0.8]), [INST_GT[0], {"category_id": 1, "segmentation": rle, "iscrowd": 0}])
    assert ev.evaluate()["AP"] == pytest.approx(100.0)
    # a prediction on a crowd region is ignored, not a FP
    ev = InstanceEvaluator(2)
    ev.process(3, _pred([0, 1], [0.7, 0.8]), [INST_GT[0], {"category_id": 1, "mask": GT_B, "iscrowd": 1}])
    r = ev.evaluate()
    assert r["AP-0"] == pytest.approx(100.0) and math.isnan(r["AP-1"]) and r["AP"] == pytest.approx(100.0)


def test_instance_no_predictions_and_duplicates():
    ev = InstanceEvaluator(2)
    ev.process(1, {"masks": torch.zeros(0, 8, 8, dtype=torch.bool), "scores": torch.zeros(0),
                   "classes": torch.zeros(0, dtype=torch.long)}, INST_GT)
    r = ev.evaluate()
    assert math.isnan(r["AP"]) and r["num_gt"] == 2
    with pytest.raises(ValueError, match="more than once"):
        ev.process(1, _pred([0, 1], [0.9, 0.8]), INST_GT)
    with pytest.raises(ValueError, match="classes"):
        ev.process(2, _pred([0, 2], [0.9, 0.8]), INST_GT)


# --------------------------------------------------------------------------------------------------
# GT-mask classification

def test_classification_accuracy():
    ev = MaskClassificationEvaluator(3, class_names=["a", "b", "c"], seen=torch.tensor([True, True, False]))
    ev.process(torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1]))
    ev.process(np.array([2, 2, 2]), np.array([2, -1, 0]))  # -1: no prediction, wrong
    r = ev.evaluate()
    assert r["accuracy"] == pytest.approx(50.0)  # 3 of 6
    assert r["ACC-a"] == 50.0 and r["ACC-b"] == 100.0 and r["ACC-c"] == pytest.approx(100 / 3)
    assert r["mean_class_accuracy"] == pytest.approx(100 * (0.5 + 1 + 1 / 3) / 3)
    assert r["accuracy_seen"] == pytest.approx(200 / 3) and r["accuracy_unseen"] == pytest.approx(100 / 3)
    assert r["num_segments"] == 6 and r["num_correct"] == 3
    # scores [N, C] are reduced by argmax
    ev2 = MaskClassificationEvaluator(3)
    ev2.process([0, 2], torch.tensor([[0.9, 0.1, 0.0], [0.5, 0.2, 0.3]]))
    assert ev2.evaluate()["accuracy"] == 50.0
    with pytest.raises(ValueError, match="gt_class_ids"):
        ev2.process([3], [0])


# --------------------------------------------------------------------------------------------------
# state: merge, JSON, resume, mismatches

def _fake_dataset(n_images: int, seed: int = 0):
    """Per image: semantic (pred, gt), panoptic (pred, pred_segs, gt, gt_segs), instance (pred, gt), classification."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n_images):
        H, W = 12, 10
        blocks = rng.integers(0, 4, (3, 2))  # 3x2 blocks of 4x5 px, class per block
        gt_sem = np.kron(blocks, np.ones((4, 5), dtype=np.int64))
        pred_sem = gt_sem.copy()
        noise = rng.random((H, W)) < 0.3
        pred_sem[noise] = rng.integers(-1, 4, int(noise.sum()))
        gt_sem[rng.random((H, W)) < 0.1] = 255
        gt_ids = np.kron(np.arange(1, 7).reshape(3, 2), np.ones((4, 5), dtype=np.int64))
        gt_ids[rng.random((H, W)) < 0.1] = 0
        gt_segs = [{"id": k + 1, "category_id": int(blocks.reshape(-1)[k]), "iscrowd": int(rng.random() < 0.15)}
                   for k in range(6)]
        pred_ids = np.kron(np.arange(1, 7).reshape(3, 2), np.ones((4, 5), dtype=np.int64))
        shift = rng.integers(0, 3)
        pred_ids = np.roll(pred_ids, shift, axis=0)
        pred_ids[rng.random((H, W)) < 0.05] = 0
        present = sorted(set(np.unique(pred_ids).tolist()) - {0})
        pred_segs = [{"id": k, "category_id": int(rng.integers(0, 4)) if rng.random() < 0.3
                      else int(blocks.reshape(-1)[k - 1])} for k in present]
        masks = np.stack([gt_ids == k for k in range(1, 7)])
        inst_gt = [{"category_id": s["category_id"], "mask": m, "iscrowd": s["iscrowd"]}
                   for s, m in zip(gt_segs, masks)]
        inst_pred = {"masks": np.stack([pred_ids == k for k in range(1, 7)]),
                     "scores": rng.random(6).astype(np.float32), "classes": rng.integers(0, 4, 6)}
        cls_gt = rng.integers(0, 4, 5)
        cls_pred = np.where(rng.random(5) < 0.6, cls_gt, rng.integers(-1, 4, 5))
        items.append({"sem": (pred_sem, gt_sem), "pan": (pred_ids, pred_segs, gt_ids, gt_segs),
                      "inst": (100 + i, inst_pred, inst_gt), "cls": (cls_gt, cls_pred)})
    return items


SEEN = [True, False, True, False]


def _evaluators():
    return {
        "sem": SemSegEvaluator(4, class_names=NAMES, seen=SEEN),
        "pan": PanopticEvaluator(4, IS_THING, class_names=NAMES, seen=SEEN),
        "inst": InstanceEvaluator(4, class_names=NAMES, seen=SEEN),
        "cls": MaskClassificationEvaluator(4, class_names=NAMES, seen=SEEN),
    }


def _feed(evaluators, items):
    for item in items:
        for key, ev in evaluators.items():
            ev.process(*item[key])


@pytest.mark.parametrize("key", ["sem", "pan", "inst", "cls"])
def test_merge_equals_single_run_exactly(key):
    items = _fake_dataset(6)
    single = _evaluators()[key]
    _feed({key: single}, items)
    first, second = _evaluators()[key], _evaluators()[key]
    _feed({key: first}, items[:2])
    _feed({key: second}, items[2:])
    merged = _evaluators()[key]
    merged.merge(roundtrip(first.state()))
    merged.merge(roundtrip(second.state()))
    assert merged.state() == single.state()
    expected = single.evaluate()
    assert same(merged.evaluate(), expected)
    # resume: load a saved state and go on processing
    resumed = _evaluators()[key]
    resumed.load_state(roundtrip(first.state()))
    _feed({key: resumed}, items[2:])
    assert same(resumed.evaluate(), expected)
    # the fixture is not degenerate
    if key == "pan":
        counts = single.state()["counts"]
        assert sum(counts["tp"]) > 0 and sum(counts["fp"]) > 0 and sum(counts["fn"]) > 0
    if key == "inst":
        assert 0 < expected["AP"] < 100


def test_state_is_json_and_mismatches_raise():
    items = _fake_dataset(2)
    evs = _evaluators()
    _feed(evs, items)
    for ev in evs.values():
        text = json.dumps(ev.state(), allow_nan=False)
        assert json.loads(text) == ev.state()
    with pytest.raises(ValueError, match="num_classes"):
        SemSegEvaluator(5).merge(SemSegEvaluator(4).state())
    with pytest.raises(ValueError, match="ignore_label"):
        SemSegEvaluator(4, ignore_label=65535).merge(SemSegEvaluator(4).state())
    with pytest.raises(ValueError, match="is_thing"):
        PanopticEvaluator(4, [True] * 4).merge(PanopticEvaluator(4, IS_THING).state())
    with pytest.raises(ValueError, match="seen"):
        MaskClassificationEvaluator(4).merge(MaskClassificationEvaluator(4, seen=SEEN).state())
    with pytest.raises(ValueError, match="evaluator"):
        MaskClassificationEvaluator(4).merge(SemSegEvaluator(4).state())
    # overlapping instance images cannot be merged, and a failed merge changes nothing
    inst = _evaluators()["inst"]
    _feed({"inst": inst}, items)
    before = inst.state()
    with pytest.raises(ValueError, match="more than once"):
        inst.merge(evs["inst"].state())
    assert inst.state() == before
    bad = evs["sem"].state()
    bad["counts"]["confusion"] = bad["counts"]["confusion"][:-1]
    with pytest.raises(ValueError, match="confusion"):
        _evaluators()["sem"].merge(bad)


def test_reduce_is_a_noop_without_process_group():
    ev = _evaluators()["sem"]
    _feed({"sem": ev}, _fake_dataset(1))
    before = ev.state()
    assert reduce_evaluator(ev) is ev and ev.state() == before


_DIST_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch.distributed as dist
    import torch.multiprocessing as mp
    sys.path.insert(0, {tests_dir!r})
    import test_evaluators as T
    from maskadapter.evaluation import reduce_evaluator

    def run(rank, world, tmp):
        dist.init_process_group("gloo", init_method="file://" + tmp + "/rendezvous", rank=rank, world_size=world)
        items = T._fake_dataset(6)
        evs = T._evaluators()
        T._feed(evs, items[rank::world])
        out = {{}}
        for key, ev in evs.items():
            reduce_evaluator(ev)
            out[key] = {{"state": ev.state(), "result": ev.evaluate()}}
        with open(tmp + "/rank%d.json" % rank, "w") as f:
            json.dump(out, f)
        dist.destroy_process_group()

    if __name__ == "__main__":
        mp.spawn(run, args=(2, sys.argv[1]), nprocs=2, join=True)
""")


@pytest.mark.distributed
def test_two_process_reduction_equals_single_process(tmp_path):
    import os
    script = tmp_path / "reduce.py"
    script.write_text(_DIST_SCRIPT.format(tests_dir=os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    items = _fake_dataset(6)
    single = _evaluators()
    # a single process sees the images in rank order: rank 0's, then rank 1's (instance records concatenate)
    _feed(single, items[0::2] + items[1::2])
    for rank in (0, 1):
        reduced = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for key, ev in single.items():
            assert reduced[key]["state"] == roundtrip(ev.state()), (rank, key)
            assert same(reduced[key]["result"], json.loads(json.dumps(ev.evaluate()))), (rank, key)
    # and the reduction did combine: rank 0 alone saw 3 images
    assert reduced["sem"]["result"]["num_images"] == 6 and reduced["inst"]["result"]["num_images"] == 6
