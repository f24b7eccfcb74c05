"""Pooling: activation pooling and mask embeddings, the mask-pooling and mask-cropping baselines."""

from __future__ import annotations

import pytest
import torch

from maskadapter import activation_pool, mask_crop_embeddings, mask_embeddings, mask_pool


def test_activation_pool_is_normalised_sigmoid_weighting():
    torch.manual_seed(0)
    maps = torch.randn(2, 6, 3, 4) * 3
    raw = torch.randn(2, 5, 3, 4)
    out = activation_pool(maps, raw)
    assert out.shape == (2, 6, 5)
    for b in range(2):
        for m in range(6):
            weights = torch.sigmoid(maps[b, m].double())
            weights = weights / weights.sum()
            expected = (raw[b].double() * weights).sum(dim=(1, 2))
            torch.testing.assert_close(out[b, m].double(), expected, rtol=1e-5, atol=1e-6)


def test_activation_pool_resizes_maps_and_handles_empty():
    torch.manual_seed(1)
    maps = torch.randn(1, 2, 6, 8)
    raw = torch.randn(1, 4, 3, 4)
    resized = torch.nn.functional.interpolate(maps, size=(3, 4), mode="bilinear", align_corners=False)
    torch.testing.assert_close(activation_pool(maps, raw), activation_pool(resized, raw))
    assert activation_pool(maps[:, :0], raw).shape == (1, 0, 4)
    with pytest.raises(ValueError, match="batch sizes differ"):
        activation_pool(maps, raw.expand(2, -1, -1, -1))
    with pytest.raises(ValueError, match="rank 4"):
        activation_pool(maps[0], raw)


def test_mask_embeddings_project_then_mean_over_k():
    torch.manual_seed(2)
    K = 4
    pooled = torch.randn(2, 3 * K, 5)
    weight = torch.randn(7, 5)
    project = lambda x: torch.tanh(x @ weight.T)  # nonlinear, so the order (project, then mean) matters
    out = mask_embeddings(pooled, project, K)
    assert out.shape == (2, 3, 7)
    for b in range(2):
        for n in range(3):
            expected = torch.stack([project(pooled[b, n * K + k]) for k in range(K)]).mean(0)
            torch.testing.assert_close(out[b, n], expected)
    assert not torch.allclose(out[0, 0], project(pooled[0, :K].mean(0)), atol=1e-4)
    with pytest.raises(ValueError, match=r"\[B, N\*4, Cv\]"):
        mask_embeddings(torch.randn(1, 6, 5), project, K)


def test_mask_pool_fcclip_style():
    raw = torch.arange(2 * 4 * 4, dtype=torch.float32).view(1, 2, 4, 4)
    logits = torch.full((1, 2, 4, 4), -5.0)
    logits[0, 0, :2, :2] = 5.0  # top-left quadrant
    out = mask_pool(raw, logits)
    torch.testing.assert_close(out[0, 0], raw[0, :, :2, :2].mean(dim=(1, 2)))
    torch.testing.assert_close(out[0, 1], torch.zeros(2))  # empty mask pools to zeros
    binary = (logits > 0).float()
    torch.testing.assert_close(mask_pool(raw, binary, threshold=0.5), out)
    up = torch.nn.functional.interpolate(logits, size=(8, 8), mode="nearest")
    torch.testing.assert_close(mask_pool(raw, up), out)  # masks at another size are resized first


def test_mask_crop_embeddings_crop_box_and_blank_background():
    image = torch.zeros(1, 3, 32, 32)
    image[0, :, 4:12, 8:20] = torch.tensor([1.0, 2.0, 3.0])[:, None, None]
    masks = torch.zeros(1, 3, 32, 32)
    masks[0, 0, 4:12, 8:20] = 1  # the coloured rectangle exactly
    masks[0, 1, 4:12, 8:20] = 1
    masks[0, 1, 4:8, 8:14] = 0  # an L shape: a quarter of its box is blanked
    calls = []

    def encode(x):  # mean colour of the crop: lets the test see what was cropped
        calls.append(x.shape)
        return x.mean(dim=(2, 3))

    out = mask_crop_embeddings(image, masks, encode, crop_size=16)
    assert out.shape == (1, 3, 3)
    torch.testing.assert_close(out[0, 0], torch.tensor([1.0, 2.0, 3.0]))
    assert float(out[0, 1, 0]) == pytest.approx(1 - 24 / 96, abs=0.03)
    torch.testing.assert_close(out[0, 2], torch.zeros(3))  # empty mask
    assert calls == [(2, 3, 16, 16)]
    kept = mask_crop_embeddings(image, masks, encode, crop_size=16, blank_background=False)
    torch.testing.assert_close(kept[0, 1], torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="must match images"):
        mask_crop_embeddings(image, masks[..., :16], encode)
