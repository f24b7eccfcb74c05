"""Inference pre/post-processing: hand-computed cases on tiny tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from maskadapter.inference.postprocess import (
    category_overlap, geometric_ensemble, instance_inference, panoptic_inference, sem_seg_postprocess,
    semantic_inference, top_k_detections,
)
from maskadapter.vocabulary import Vocabulary
from maskadapter.inference.preprocess import resize_longest_side, resized_shape

from contract import (
    SCORE_RTOL, assert_masks_contract, assert_panoptic_contract, assert_scores_close, assert_semantic_contract,
    deciding_values,
)

# Hand-computed cases use float64 values whose decisions are far from ties (or exact ties on purpose, computed
# the same way by any kernel): those are compared exactly. Float32 results of larger tensors, whose rounding
# depends on the thread count and the CPU's vector width, are compared under the contract (tests/contract.py).
pytestmark = pytest.mark.numeric

L = 12.0  # a mask logit whose sigmoid is ~1 (and -L ~0)


def log_probs(*rows: list[float]) -> torch.Tensor:
    """Logits whose softmax is exactly the given (normalised) probability rows, in float64."""
    return torch.tensor(rows, dtype=torch.float64).log()


# --------------------------------------------------------------------------------------------- overlap

def test_category_overlap_exact_synonym_match():
    train = Vocabulary((("cat", "kitty"), ("couch",), ("dog",), ("wall-other",)))
    test = Vocabulary((("cat",), ("sofa", "couch"), ("Dog",), ("lamp",), ("kitty cat",), ("wall",)))
    seen = category_overlap(test, train)
    assert seen.dtype == torch.bool
    # Only exact matches count: "couch" matches as a synonym; case, substrings and prefixes do not.
    assert seen.tolist() == [True, True, False, False, False, False]


def test_category_overlap_rejects_non_vocabulary():
    vocab = Vocabulary((("cat",),))
    with pytest.raises(ValueError, match="Vocabulary"):
        category_overlap(["cat"], vocab)
    with pytest.raises(ValueError, match="Vocabulary"):
        category_overlap(vocab, "cat")


# --------------------------------------------------------------------------------------------- ensemble

def _ensemble_by_hand(p_in_full, p_out_full, seen, alpha, beta):
    """Reference: the spec's formula with plain floats (renormalising instead of a softmax of logs)."""
    C = len(seen)
    p_in = [p / sum(p_in_full[:C]) for p in p_in_full[:C]]
    p_out = [p / sum(p_out_full[:C]) for p in p_out_full[:C]]
    g = [p_in[c] ** (1 - (alpha if seen[c] else beta)) * p_out[c] ** (alpha if seen[c] else beta) for c in range(C)]
    void = p_in_full[-1]
    probs = [x / sum(g) * (1 - void) for x in g] + [void]
    return [math.log(p + 1e-8) for p in probs]


@pytest.mark.parametrize("alpha,beta", [(0.7, 0.9), (0.7, 1.0), (0.8, 1.0), (0.0, 0.0)])
def test_geometric_ensemble_values(alpha, beta):
    p_in = [[0.6, 0.2, 0.2], [0.1, 0.3, 0.6]]
    p_out = [[0.2, 0.6, 0.2], [0.5, 0.25, 0.25]]  # the out-of-vocab void column must be ignored
    seen = [True, False]
    out = geometric_ensemble(log_probs(*p_in).unsqueeze(0), log_probs(*p_out).unsqueeze(0),
                             torch.tensor(seen), alpha, beta)
    assert out.shape == (1, 2, 3) and out.dtype == torch.float64
    expected = torch.tensor([[_ensemble_by_hand(a, b, seen, alpha, beta) for a, b in zip(p_in, p_out)]],
                            dtype=torch.float64)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_geometric_ensemble_hand_numbers_and_beta_one():
    # q0: p_in (void removed) = [0.75, 0.25], void 0.2; p_out = [0.25, 0.75]; class 0 seen, class 1 unseen.
    in_logits, out_logits = log_probs([0.6, 0.2, 0.2])[None], log_probs([0.2, 0.6, 0.2])[None]
    seen = torch.tensor([True, False])
    a = 0.75 ** 0.3 * 0.25 ** 0.7
    b = 0.25 ** 0.1 * 0.75 ** 0.9
    got = geometric_ensemble(in_logits, out_logits, seen, 0.7, 0.9)[0, 0].exp() - 1e-8
    torch.testing.assert_close(got, torch.tensor([0.8 * a / (a + b), 0.8 * b / (a + b), 0.2],
                                                 dtype=torch.float64), rtol=1e-10, atol=1e-10)
    # beta = 1: the unseen class takes the out-of-vocab probability alone.
    got = geometric_ensemble(in_logits, out_logits, seen, 0.7, 1.0)[0, 0].exp() - 1e-8
    torch.testing.assert_close(got, torch.tensor([0.8 * a / (a + 0.75), 0.8 * 0.75 / (a + 0.75), 0.2],
                                                 dtype=torch.float64), rtol=1e-10, atol=1e-10)


def test_geometric_ensemble_integer_seen_and_no_nan_on_underflow():
    in_logits = torch.tensor([[[0.0, -1000.0, 0.0]]])  # p_in of class 1 underflows to exactly 0
    out_logits = torch.tensor([[[0.0, 1.0, 5.0]]])
    seen_long = torch.tensor([1, 0])  # the official 0/1 long mask
    out = geometric_ensemble(in_logits, out_logits, seen_long, 0.7, 1.0)
    # Official "log_seen * seen + log_unseen * (1 - seen)" would give -inf * 0 = NaN for class 1.
    assert torch.isfinite(out).all()
    p_out = [1 / (1 + math.e), math.e / (1 + math.e)]
    a, b = 1.0 ** 0.3 * p_out[0] ** 0.7, p_out[1]
    expected = [math.log(0.5 * a / (a + b) + 1e-8), math.log(0.5 * b / (a + b) + 1e-8), math.log(0.5 + 1e-8)]
    torch.testing.assert_close(out[0, 0], torch.tensor(expected), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out, geometric_ensemble(in_logits, out_logits, seen_long.bool(), 0.7, 1.0))


def test_geometric_ensemble_without_in_vocab_is_log_softmax_over_real_classes():
    out_logits = torch.tensor([[[math.log(2.0), math.log(6.0), 100.0]]])
    seen = torch.tensor([True, False])
    expected = torch.tensor([[[math.log(0.25), math.log(0.75)]]])
    torch.testing.assert_close(geometric_ensemble(None, out_logits, seen, 0.7, 0.9), expected)
    torch.testing.assert_close(geometric_ensemble(None, out_logits[..., :2], seen, 0.7, 0.9), expected)


def test_geometric_ensemble_bad_inputs():
    x = torch.zeros(1, 2, 3)
    seen = torch.tensor([True, False])
    with pytest.raises(ValueError, match="in_vocab_logits shape"):
        geometric_ensemble(torch.zeros(1, 3, 3), x, seen, 0.7, 0.9)
    with pytest.raises(ValueError, match="out_vocab_logits must have C\\+1"):
        geometric_ensemble(torch.zeros(1, 2, 4), torch.zeros(1, 2, 4), seen, 0.7, 0.9)
    with pytest.raises(ValueError, match="out_vocab_logits must have 2 or 3"):
        geometric_ensemble(None, torch.zeros(1, 2, 5), seen, 0.7, 0.9)
    with pytest.raises(ValueError, match="out_vocab_logits must be floating"):
        geometric_ensemble(None, torch.zeros(1, 2, 3, dtype=torch.long), seen, 0.7, 0.9)
    with pytest.raises(ValueError, match="in_vocab_logits must be a floating"):
        geometric_ensemble(x.long(), x, seen, 0.7, 0.9)
    with pytest.raises(ValueError, match="seen must be a non-empty 1-D"):
        geometric_ensemble(x, x, seen[None], 0.7, 0.9)
    with pytest.raises(ValueError, match="seen must be bool"):
        geometric_ensemble(x, x, torch.tensor([0.5, 1.0]), 0.7, 0.9)
    with pytest.raises(ValueError, match="seen must be bool"):
        geometric_ensemble(x, x, torch.tensor([2, 0]), 0.7, 0.9)
    with pytest.raises(ValueError, match="alpha must be in"):
        geometric_ensemble(x, x, seen, 1.5, 0.9)
    with pytest.raises(ValueError, match="beta must be in"):
        geometric_ensemble(x, x, seen, 0.7, -0.1)


# --------------------------------------------------------------------------------------------- sem_seg_postprocess

def test_sem_seg_postprocess_crops_then_resizes_bilinear():
    # Padding (row 1, column 2) holds 99 and must be cropped away before the resize.
    result = torch.tensor([[[0.0, 4.0, 99.0], [99.0, 99.0, 99.0]]])  # [1, 2, 3]
    out = sem_seg_postprocess(result, (1, 2), 1, 4)
    # align_corners=False, x2: source x = (x' + 0.5) / 2 - 0.5 = -0.25 (clamped), 0.25, 0.75, 1.25 (clamped).
    torch.testing.assert_close(out, torch.tensor([[[0.0, 1.0, 3.0, 4.0]]]))
    # Down by 2 with no antialias: each output pixel is the mean of a 2x2 block's centre samples.
    grid = torch.arange(16.0).reshape(4, 4)
    down = sem_seg_postprocess(torch.nn.functional.pad(grid, (0, 1, 0, 2), value=-50.0), (4, 4), 2, 2)
    torch.testing.assert_close(down, torch.tensor([[2.5, 4.5], [10.5, 12.5]]))


def test_sem_seg_postprocess_shapes_and_identity():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 10)
    out = sem_seg_postprocess(x, (5, 7), 5, 7)
    assert out.shape == (2, 3, 5, 7)
    torch.testing.assert_close(out, x[..., :5, :7])
    assert sem_seg_postprocess(x, (5, 7), 11, 13).shape == (2, 3, 11, 13)
    assert sem_seg_postprocess(x[:, :0], (5, 7), 11, 13).shape == (2, 0, 11, 13)
    assert sem_seg_postprocess(x.double(), (5, 7), 11, 13).dtype == torch.float64


def test_sem_seg_postprocess_bad_inputs():
    x = torch.zeros(3, 8, 8)
    with pytest.raises(ValueError, match="result must be a tensor"):
        sem_seg_postprocess(torch.zeros(8), (4, 4), 4, 4)
    with pytest.raises(ValueError, match="result must be floating"):
        sem_seg_postprocess(x.long(), (4, 4), 4, 4)
    with pytest.raises(ValueError, match="image_size must be \\(h, w\\)"):
        sem_seg_postprocess(x, (4, 4, 4), 4, 4)
    with pytest.raises(ValueError, match="image_size"):
        sem_seg_postprocess(x, (9, 4), 4, 4)
    with pytest.raises(ValueError, match="image_size"):
        sem_seg_postprocess(x, (0, 4), 4, 4)
    with pytest.raises(ValueError, match="output_height/output_width"):
        sem_seg_postprocess(x, (4, 4), 0, 4)


# --------------------------------------------------------------------------------------------- semantic

def test_semantic_inference_values():
    mask_cls = log_probs([0.5, 0.3, 0.2], [0.1, 0.6, 0.3])  # [Q=2, C+1=3]
    s = {0.0: 0.5, math.log(3): 0.75, -math.log(3): 0.25}
    logits0 = [[0.0, math.log(3)], [-math.log(3), 0.0]]
    logits1 = [[math.log(3), math.log(3)], [0.0, -math.log(3)]]
    mask_pred = torch.tensor([logits0, logits1], dtype=torch.float64)
    out = semantic_inference(mask_cls, mask_pred)
    assert out.shape == (2, 2, 2) and out.dtype == torch.float64
    p = [[0.5, 0.3], [0.1, 0.6]]
    expected = [[[p[0][c] * s[logits0[i][j]] + p[1][c] * s[logits1[i][j]] for j in range(2)] for i in range(2)]
                for c in range(2)]
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64))


def test_semantic_inference_without_void_and_dtype_follows_masks():
    mask_cls = log_probs([0.2, 0.8], [0.5, 0.5]).float()  # [Q=2, C=2], no void column
    mask_pred = torch.zeros(2, 1, 1, dtype=torch.float64)  # sigmoid 0.5 everywhere
    out = semantic_inference(mask_cls, mask_pred, has_void=False)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out[:, 0, 0], torch.tensor([0.35, 0.65], dtype=torch.float64), rtol=1e-6, atol=1e-7)
    # Read as C+1 with void, the same numbers give one class with probabilities 0.2 and 0.5.
    torch.testing.assert_close(semantic_inference(mask_cls, mask_pred)[:, 0, 0],
                               torch.tensor([0.35], dtype=torch.float64), rtol=1e-6, atol=1e-7)


def test_semantic_inference_bad_inputs():
    cls, masks = torch.zeros(2, 3), torch.zeros(2, 4, 4)
    with pytest.raises(ValueError, match="mask_cls must have shape"):
        semantic_inference(cls[0], masks)
    with pytest.raises(ValueError, match="mask_pred must have shape"):
        semantic_inference(cls, masks[0])
    with pytest.raises(ValueError, match="queries"):
        semantic_inference(cls, masks[:1])
    with pytest.raises(ValueError, match="mask_pred must hold floating"):
        semantic_inference(cls, masks.bool())
    with pytest.raises(ValueError, match="mask_cls must be floating"):
        semantic_inference(cls.long(), masks)
    with pytest.raises(ValueError, match="at least 2 columns"):
        semantic_inference(cls[:, :1], masks)


# --------------------------------------------------------------------------------------------- panoptic

def _masks(*regions: list[tuple[int, int]], hw=(4, 4)) -> torch.Tensor:
    """Mask logits [Q, H, W]: +L on each query's listed pixels, -L elsewhere."""
    out = torch.full((len(regions), *hw), -L, dtype=torch.float64)
    for q, pixels in enumerate(regions):
        for i, j in pixels:
            out[q, i, j] = L
    return out


def row(i: int, cols=range(4)) -> list[tuple[int, int]]:
    return [(i, j) for j in cols]


def test_panoptic_inference_rules():
    is_thing = torch.tensor([True, False])  # class 0 thing, class 1 stuff; column 2 is void
    mask_cls = log_probs(
        [0.9, 0.05, 0.05],  # q0 thing -> row 0
        [0.8, 0.1, 0.1],    # q1 thing, same class -> row 1, a separate segment
        [0.2, 0.6, 0.2],    # q2 stuff -> row 2
        [0.1, 0.7, 0.2],    # q3 stuff, same class, higher score -> row 3 left, merged into q2's segment
        [0.05, 0.05, 0.9],  # q4 void everywhere: dropped whatever its mask
        [0.5, 0.3, 0.2],    # q5 thing, score 0.5 -> row 3 right, only when the threshold lets it in
    )
    mask_pred = _masks(row(0), row(1), row(2), row(3, [0, 1]), [(i, j) for i in range(4) for j in range(4)],
                       row(3, [2, 3]))
    pan, segs = panoptic_inference(mask_cls, mask_pred, is_thing, object_mask_threshold=0.55)
    assert pan.dtype == torch.int32 and pan.shape == (4, 4)
    # q5 dropped: q0 wins row 3 right (highest score, sigmoid ~0 there) but does not paint it.
    assert pan.tolist() == [[1] * 4, [2] * 4, [3] * 4, [3, 3, 0, 0]]
    assert [(s["id"], s["isthing"], s["category_id"], s["area"]) for s in segs] == [
        (1, True, 0, 4), (2, True, 0, 4), (3, False, 1, 6)]
    assert [s["score"] for s in segs] == pytest.approx([0.9, 0.8, 0.7], abs=1e-9)  # merged stuff: max(0.6, 0.7)

    pan, segs = panoptic_inference(mask_cls, mask_pred, [True, False], object_mask_threshold=0.0)
    assert pan.tolist() == [[1] * 4, [2] * 4, [3] * 4, [3, 3, 4, 4]]
    assert [(s["id"], s["isthing"], s["category_id"], s["area"]) for s in segs][-1] == (4, True, 0, 2)
    assert segs[-1]["score"] == pytest.approx(0.5, abs=1e-9)


def test_panoptic_inference_object_threshold_is_strict():
    mask_cls = log_probs([0.6, 0.4])  # one class + void
    mask_pred = _masks(row(0))
    score = float(torch.softmax(mask_cls, -1).max())
    assert panoptic_inference(mask_cls, mask_pred, [True], object_mask_threshold=score)[1] == []
    below = math.nextafter(score, -math.inf)
    assert len(panoptic_inference(mask_cls, mask_pred, [True], object_mask_threshold=below)[1]) == 1


@pytest.mark.parametrize("overlap_threshold,kept", [(0.8, True), (math.nextafter(0.8, 1.0), False), (0.7, True)])
def test_panoptic_inference_overlap_ratio_at_threshold(overlap_threshold, kept):
    # qa covers row 0 + (1, 0): 5 confident pixels. qb (higher score) takes (1, 0), (1, 1) and every pixel
    # where both are ~0, so qa's argmax area is 4 and the ratio is 4 / 5 = 0.8 exactly.
    mask_cls = log_probs([0.9, 0.1], [0.95, 0.05])
    mask_pred = _masks(row(0) + [(1, 0)], [(1, 0), (1, 1)])
    pan, segs = panoptic_inference(mask_cls, mask_pred, [True], overlap_threshold=overlap_threshold)
    qb_id = 2 if kept else 1
    expected = [[1 if kept else 0] * 4, [qb_id, qb_id, 0, 0], [0] * 4, [0] * 4]
    assert pan.tolist() == expected
    assert [(s["id"], s["area"]) for s in segs] == ([(1, 4), (2, 2)] if kept else [(1, 2)])


def test_panoptic_inference_ratio_just_below_threshold_dropped():
    # qa: 4 confident pixels, qb takes one of them -> 3 / 4 = 0.75 < 0.8.
    mask_cls = log_probs([0.9, 0.1], [0.95, 0.05])
    mask_pred = _masks(row(0, [0, 1, 2]) + [(1, 0)], [(1, 0), (1, 1)])
    pan, segs = panoptic_inference(mask_cls, mask_pred, [True], overlap_threshold=0.8)
    assert [s["area"] for s in segs] == [2] and pan[0].tolist() == [0, 0, 0, 0]
    _, segs = panoptic_inference(mask_cls, mask_pred, [True], overlap_threshold=0.75)
    assert [s["area"] for s in segs] == [3, 2]


def test_panoptic_inference_sigmoid_half_counts_as_inside():
    # Logit 0 -> sigmoid exactly 0.5, which is inside the segment (official ">= 0.5").
    mask_pred = torch.full((1, 4, 4), -L, dtype=torch.float64)
    mask_pred[0, 0, :2] = 0.0
    mask_pred[0, 1, 0] = L
    pan, segs = panoptic_inference(log_probs([0.9, 0.1]), mask_pred, [True], overlap_threshold=0.8)
    assert pan[:2].tolist() == [[1, 1, 0, 0], [1, 0, 0, 0]] and segs[0]["area"] == 3


def test_panoptic_inference_empty_results():
    mask_pred = _masks(row(0), row(1))
    all_void = log_probs([0.1, 0.9], [0.2, 0.8])
    pan, segs = panoptic_inference(all_void, mask_pred, [True])
    assert segs == [] and pan.tolist() == [[0] * 4] * 4 and pan.dtype == torch.int32
    pan, segs = panoptic_inference(all_void[:0], mask_pred[:0], [True])
    assert segs == [] and pan.shape == (4, 4)
    # A kept query whose sigmoid never reaches 0.5 gives no segment either.
    pan, segs = panoptic_inference(log_probs([0.9, 0.1]), torch.full((1, 4, 4), -1.0, dtype=torch.float64), [True])
    assert segs == [] and int(pan.abs().sum()) == 0


def test_panoptic_inference_bad_inputs():
    cls, masks = torch.zeros(2, 3), torch.zeros(2, 4, 4)
    with pytest.raises(ValueError, match="is_thing has 3 entries"):
        panoptic_inference(cls, masks, [True, False, True])
    with pytest.raises(ValueError, match="is_thing must be a 1-D bool"):
        panoptic_inference(cls, masks, torch.ones(2, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask_pred must have shape"):
        panoptic_inference(cls, masks[0], [True, False])
    with pytest.raises(ValueError, match="queries"):
        panoptic_inference(cls[:1], masks, [True, False])


# --------------------------------------------------------------------------------------------- instance

def _instance_case():
    mask_cls = log_probs([0.5, 0.2, 0.1, 0.2], [0.1, 0.4, 0.3, 0.2])  # C = 3 + void
    m0 = torch.full((4, 4), -2.0, dtype=torch.float64)
    m0[0, 0] = m0[0, 1] = math.log(3)  # sigmoid 0.75 inside
    m0[1, 0] = m0[1, 1] = 0.0          # logit 0 is not > 0: outside the mask
    m1 = torch.full((4, 4), -2.0, dtype=torch.float64)
    m1[2, 2] = math.log(9)             # sigmoid 0.9
    m1[3, 2] = m1[3, 3] = math.log(3)  # sigmoid 0.75
    return mask_cls, torch.stack([m0, m1])


def test_instance_inference_topk_order_and_rescoring():
    mask_cls, mask_pred = _instance_case()
    out = instance_inference(mask_cls, mask_pred, top_k=3)
    # Flattened (query, class) probabilities: (0,0)=.5 (1,1)=.4 (1,2)=.3 (0,1)=.2 ...
    assert out["classes"].tolist() == [0, 1, 2]
    assert out["masks"].dtype == torch.bool and out["masks"].shape == (3, 4, 4)
    assert torch.equal(out["masks"][0], mask_pred[0] > 0) and int(out["masks"][0].sum()) == 2
    assert torch.equal(out["masks"][1], mask_pred[1] > 0) and torch.equal(out["masks"][2], mask_pred[1] > 0)
    mean0 = 2 * 0.75 / (2 + 1e-6)
    mean1 = (0.9 + 2 * 0.75) / (3 + 1e-6)
    torch.testing.assert_close(out["scores"], torch.tensor([0.5 * mean0, 0.4 * mean1, 0.3 * mean1],
                                                           dtype=torch.float64), rtol=1e-9, atol=1e-12)


def test_instance_inference_thing_filter_and_topk_clamp():
    mask_cls, mask_pred = _instance_case()
    out = instance_inference(mask_cls, mask_pred, is_thing=torch.tensor([True, False, True]), top_k=3)
    assert out["classes"].tolist() == [0, 2]  # (1, 1) is stuff and is dropped after the top-k
    assert torch.equal(out["masks"][1], mask_pred[1] > 0)
    out = instance_inference(mask_cls, mask_pred, top_k=100)  # more than Q * C = 6
    assert len(out["scores"]) == 6
    assert out["classes"][:4].tolist() == [0, 1, 2, 1]
    assert len(instance_inference(mask_cls, mask_pred, top_k=0)["scores"]) == 0


def test_instance_inference_empty_mask_scores_zero():
    mask_cls = log_probs([0.7, 0.3])
    out = instance_inference(mask_cls, torch.full((1, 4, 4), -5.0, dtype=torch.float64))
    assert out["masks"].sum() == 0 and out["scores"].tolist() == [0.0]


def test_instance_inference_bad_inputs():
    mask_cls, mask_pred = _instance_case()
    with pytest.raises(ValueError, match="top_k"):
        instance_inference(mask_cls, mask_pred, top_k=-1)
    with pytest.raises(ValueError, match="is_thing has 2 entries"):
        instance_inference(mask_cls, mask_pred, is_thing=[True, False])
    with pytest.raises(ValueError, match="mask_cls must have shape"):
        instance_inference(mask_cls[None], mask_pred)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_postprocess_on_cuda_matches_cpu():
    mask_cls, mask_pred = _instance_case()
    c, m = mask_cls.cuda(), mask_pred.cuda()
    torch.testing.assert_close(semantic_inference(c, m).cpu(), semantic_inference(mask_cls, mask_pred))
    pan_gpu, segs_gpu = panoptic_inference(c, m, [True, False, True])
    pan_cpu, segs_cpu = panoptic_inference(mask_cls, mask_pred, [True, False, True])
    values = deciding_values(mask_cls, mask_pred, (4, 4), (4, 4))  # another device rounds differently
    assert pan_gpu.is_cuda
    assert_panoptic_contract(pan_gpu.cpu(), pan_cpu, values["probs"], values["confidence"], 0.8)
    assert [(s["category_id"], s["isthing"]) for s in segs_gpu] == [(s["category_id"], s["isthing"]) for s in segs_cpu]
    assert_scores_close([s["score"] for s in segs_gpu], [s["score"] for s in segs_cpu], SCORE_RTOL)
    inst = instance_inference(c, m, top_k=3)
    torch.testing.assert_close(inst["scores"].cpu(), instance_inference(mask_cls, mask_pred, top_k=3)["scores"])
    seen = torch.tensor([True, False, True])
    torch.testing.assert_close(geometric_ensemble(c[None], c[None], seen, 0.7, 0.9).cpu(),
                               geometric_ensemble(mask_cls[None], mask_cls[None], seen, 0.7, 0.9))


# --------------------------------------------------------------------------------------------- thread counts

@pytest.fixture
def threads():
    """Set torch's thread count inside a test; restored after."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_inference_on_n_threads_meets_the_contract_with_one(n, threads):
    """float32 tensors large enough to be split across threads (> 32768 elements per op): the outputs on n
    threads equal those on one except at near-ties of the deciding values; scores to 1e-5."""
    g = torch.Generator().manual_seed(n)
    Q, C, H, W = 12, 3, 190, 230
    mask_cls = (torch.randn(Q, C + 1, generator=g) * 2).log_softmax(-1)
    mask_pred = torch.nn.functional.interpolate(torch.randn(1, Q, 24, 29, generator=g) * 4, (H, W),
                                                mode="bilinear")[0]
    is_thing = [True, False, True]
    values = deciding_values(mask_cls, mask_pred, (H, W), (H, W))
    outputs = []
    for count in (1, n):
        threads(count)
        outputs.append((semantic_inference(mask_cls, mask_pred).argmax(0),
                        panoptic_inference(mask_cls, mask_pred, is_thing, 0.0, 0.3),
                        instance_inference(mask_cls, mask_pred, is_thing, top_k=10)))
    (sem1, (pan1, segs1), inst1), (semn, (pann, segsn), instn) = outputs
    assert_semantic_contract(semn, sem1, values["semantic"])
    assert_panoptic_contract(pann, pan1, values["probs"], values["confidence"], 0.3)
    assert [s["category_id"] for s in segsn] == [s["category_id"] for s in segs1] and segs1
    assert torch.equal(instn["classes"], inst1["classes"])  # from mask_cls alone: no reduction across threads
    queries = top_k_detections(torch.softmax(mask_cls, -1)[:, :-1], is_thing, 10)[2]
    assert_masks_contract(instn["masks"], inst1["masks"], values["logits"][queries])
    assert_scores_close(instn["scores"], inst1["scores"], SCORE_RTOL)


# --------------------------------------------------------------------------------------------- resize

@pytest.mark.parametrize("hw,size,expected", [
    ((480, 640), 896, (672, 896)),   # landscape
    ((640, 480), 896, (896, 672)),   # portrait
    ((500, 500), 896, (896, 896)),   # square
    ((100, 50), 896, (896, 448)),    # small: enlarged
    ((10, 20), 32, (16, 32)),
    ((333, 500), 896, (597, 896)),   # 333 * 896 / 500 = 596.736
    ((3, 256), 896, (11, 896)),      # 10.5 rounds up (int(x + 0.5)), not to even
    ((256, 3), 896, (896, 11)),
])
def test_resized_shape(hw, size, expected):
    assert resized_shape(*hw, size) == expected


def test_resize_longest_side_equals_pil_bilinear():
    gen = torch.Generator().manual_seed(0)
    for h, w, size in [(37, 53, 64), (53, 37, 64), (40, 40, 24), (9, 14, 32)]:
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen)
        out = resize_longest_side(image, size)
        newh, neww = resized_shape(h, w, size)
        assert out.dtype == torch.uint8 and out.shape == (3, newh, neww) and max(newh, neww) == size
        pil = Image.fromarray(image.permute(1, 2, 0).numpy()).resize((neww, newh), Image.BILINEAR)
        # exact: the resize is PIL's fixed-point integer arithmetic, the same on every CPU
        assert np.array_equal(out.permute(1, 2, 0).numpy(), np.asarray(pil))
    flat = torch.full((3, 5, 7), 200, dtype=torch.uint8)
    assert torch.equal(resize_longest_side(flat, 21), torch.full((3, 15, 21), 200, dtype=torch.uint8))


def test_resize_bad_inputs():
    with pytest.raises(ValueError, match="uint8"):
        resize_longest_side(torch.zeros(3, 4, 4), 8)
    with pytest.raises(ValueError, match="\\[3, H, W\\]"):
        resize_longest_side(torch.zeros(4, 4, 3, dtype=torch.uint8), 8)
    with pytest.raises(ValueError, match="no pixels"):
        resize_longest_side(torch.zeros(3, 0, 4, dtype=torch.uint8), 8)
    with pytest.raises(ValueError, match="aspect ratio"):
        resize_longest_side(torch.zeros(3, 1, 100, dtype=torch.uint8), 8)
    with pytest.raises(ValueError, match="size must be positive"):
        resized_shape(4, 4, 0)
    with pytest.raises(ValueError, match="h and w must be positive"):
        resized_shape(0, 4, 8)
