"""The contract checker itself (tests/contract.py): it accepts differences at near-ties and rejects any other."""

from __future__ import annotations

import pytest
import torch

from contract import (
    TIE_ATOL, assert_masks_contract, assert_outputs_contract, assert_panoptic_contract, assert_scores_close,
    assert_semantic_contract, deciding_values,
)
from maskadapter.inference.banded import postprocess_full

pytestmark = pytest.mark.numeric


def test_semantic_accepts_near_ties_only():
    scores = torch.tensor([[[0.5, 0.9]], [[0.5 + TIE_ATOL / 2, 0.1]]])  # [C=2, 1, 2]: pixel 0 ties
    labels = scores.argmax(0)
    flipped_tie = labels.clone()
    flipped_tie[0, 0] = 0
    assert assert_semantic_contract(flipped_tie, labels, scores) == 1
    flipped_clear = labels.clone()
    flipped_clear[0, 1] = 1
    with pytest.raises(AssertionError, match="not near-ties"):
        assert_semantic_contract(flipped_clear, labels, scores)


def test_masks_accept_values_at_the_threshold_only():
    logits = torch.tensor([[[0.0, 3e-6, -0.2, float("nan")]]])
    masks = logits > 0
    near = masks.clone()
    near[0, 0, :2] = ~near[0, 0, :2]
    near[0, 0, 3] = True  # NaN: exempt
    assert assert_masks_contract(near, masks, logits) == 3
    far = masks.clone()
    far[0, 0, 2] = True
    with pytest.raises(AssertionError, match="1 differing pixels are not near-ties"):
        assert_masks_contract(far, masks, logits)


def test_scores_relative_error_and_nan():
    assert_scores_close([1.0, 2.0, float("nan")], [1.0 + 5e-6, 2.0, float("nan")])
    with pytest.raises(AssertionError, match="differ beyond"):
        assert_scores_close([1.0], [1.001])
    with pytest.raises(AssertionError, match="NaN in one run only"):
        assert_scores_close([float("nan")], [0.5])


def test_panoptic_matches_renumbered_segments_and_rejects_moved_pixels():
    probs = torch.tensor([[[0.9, 0.9, 0.1, 0.5]], [[0.1, 0.1, 0.8, 0.5 + TIE_ATOL / 4]]])  # pixel 3 ties
    confidence = torch.tensor([[[0.95, 0.95, 0.1, 0.7]], [[0.1, 0.1, 0.9, 0.7]]])
    ref = torch.tensor([[1, 1, 2, 2]], dtype=torch.int32)
    renumbered = torch.tensor([[2, 2, 1, 2]], dtype=torch.int32)  # ids swapped, the tie pixel changed hands
    assert assert_panoptic_contract(renumbered, ref, probs, confidence) == 1
    moved = torch.tensor([[1, 2, 2, 2]], dtype=torch.int32)  # a clear winner's pixel moved
    with pytest.raises(AssertionError, match="not near-ties"):
        assert_panoptic_contract(moved, ref, probs, confidence)


def test_outputs_contract_catches_a_wrong_band():
    """A post-processing bug (one output row taken from its neighbour) is far beyond rounding: rejected."""
    g = torch.Generator().manual_seed(0)
    mask_cls = (torch.randn(6, 4, generator=g) * 2).log_softmax(-1)
    mask_pred = torch.randn(6, 20, 20, generator=g) * 3
    is_thing = torch.tensor([True, False, True])
    kw = {"before": True, "object_mask_threshold": 0.0, "overlap_threshold": 0.8, "top_k": 10}
    ref = postprocess_full(mask_cls, mask_pred, (20, 20), (80, 80), ("semantic", "panoptic"), is_thing, **kw)
    assert assert_outputs_contract(ref, ref, mask_cls, mask_pred, (20, 20), is_thing, **kw) == {
        "semantic": 0, "panoptic": 0}
    shifted = postprocess_full(mask_cls, mask_pred, (20, 20), (80, 80), ("semantic", "panoptic"), is_thing, **kw)
    shifted.semantic[40] = shifted.semantic[37]
    with pytest.raises(AssertionError, match="semantic"):
        assert_outputs_contract(shifted, ref, mask_cls, mask_pred, (20, 20), is_thing, **kw)
    values = deciding_values(mask_cls, mask_pred, (20, 20), (80, 80))
    assert values["semantic"].shape == (3, 80, 80) and values["probs"].shape[1:] == (80, 80)
