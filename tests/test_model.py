"""MaskAdapterModel end to end (features -> head -> activation pooling -> logits) and ground-truth-mask mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from maskadapter import (MaskAdapterModel, activation_pool, classify_ground_truth, label_map_to_masks,
                         mask_embeddings)
from maskadapter.images import to_rgb_tensor
from maskadapter.modeling.text import classification_logits
from maskadapter.inference.preprocess import normalize_and_pad


def make_scene(h: int = 70, w: int = 90) -> tuple[np.ndarray, np.ndarray]:
    """An image with three textured regions, its label map (classes 0, 2, 3; 255 = unlabelled)."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    labels = np.full((h, w), 255, dtype=np.uint8)
    labels[:35, :45], labels[:35, 45:], labels[35:, 10:80] = 0, 2, 3
    image[labels == 0] += np.array([150, 20, 20], dtype=np.uint8)
    image[labels == 2] += np.array([20, 150, 20], dtype=np.uint8)
    image[labels == 3] += np.array([20, 20, 150], dtype=np.uint8)
    return image, labels


def test_model_pipeline_matches_composed_functions(tiny_model):
    torch.manual_seed(0)
    images = torch.randn(2, 3, 64, 96)
    masks = torch.rand(2, 4, 16, 24) > 0.5
    feats = tiny_model.dense_features(images)
    assert feats["clip_vis_dense_proj"].shape == (2, 32, 2, 3)
    emb = tiny_model.embed_masks(feats, masks)
    assert emb.shape == (2, 4, 32)
    maps = tiny_model.mask_adapter(feats["clip_vis_dense_proj"], masks, path="reference")
    expected = mask_embeddings(activation_pool(maps, feats["clip_vis_dense"]),
                               tiny_model.backbone.project_pooled, 16)
    torch.testing.assert_close(emb, expected, rtol=1e-4, atol=1e-5)
    text = F.normalize(torch.randn(5, 32), dim=-1)
    logits, emb2 = tiny_model.classify_masks(feats, masks, text, [2, 1, 2], return_embeddings=True)
    assert logits.shape == (2, 4, 4) and torch.equal(emb2, emb)  # 3 classes + void
    no_void = tiny_model.classify_masks(feats, masks, text, [2, 1, 2], with_void=False)
    assert no_void.shape == (2, 4, 3)
    torch.testing.assert_close(logits[..., :3], no_void)
    expected = classification_logits(emb, tiny_model.text_with_void(text), tiny_model.backbone.logit_scale, [2, 1, 2])
    torch.testing.assert_close(logits, expected)


def test_adapter_is_trainable_clip_is_not(tiny_model):
    names = {n for n, p in tiny_model.named_parameters() if p.requires_grad}
    assert names and all(n.startswith(("mask_adapter.", "void_embedding.")) for n in names)


def test_label_map_to_masks():
    labels = torch.tensor([[0, 0, 5], [255, 5, 2]])
    masks, ids = label_map_to_masks(labels, num_classes=6)
    assert ids.tolist() == [0, 2, 5]
    assert masks.tolist() == [[[1, 1, 0], [0, 0, 0]], [[0, 0, 0], [0, 0, 1]], [[0, 0, 1], [0, 1, 0]]]
    with pytest.raises(ValueError, match="2 pixels with labels outside 0..3.*values \\[5\\]"):
        label_map_to_masks(labels, num_classes=4)
    with pytest.raises(TypeError, match="integer"):
        label_map_to_masks(labels.float(), num_classes=6)


class OracleText:
    """Text embeddings equal to the model's own embedding of each class's GT mask (others random):
    a correct pipeline must then classify every GT mask as its own class."""

    def __init__(self, model, image, labels, num_classes):
        masks, ids = label_map_to_masks(torch.as_tensor(labels), num_classes)
        images, _ = normalize_and_pad([to_rgb_tensor(image)])
        padded = torch.zeros(1, len(ids), *images.shape[-2:], dtype=torch.bool)
        padded[0, :, :labels.shape[0], :labels.shape[1]] = masks
        with torch.no_grad():
            emb = model.embed_masks(model.dense_features(images), padded)[0]
        self.text = F.normalize(torch.randn(num_classes, emb.shape[-1]), dim=-1)
        self.text[ids] = F.normalize(emb, dim=-1)

    def __call__(self, vocabulary):
        return self.text


def test_ground_truth_mode_recovers_classes_with_oracle_text(tiny_model):
    image, labels = make_scene()
    vocab = "sky, cat, grass, road, sofa"
    result = classify_ground_truth(tiny_model, image, labels, vocab,
                                   text_classifier=OracleText(tiny_model, image, labels, 5))
    assert result.class_ids.tolist() == [0, 2, 3]
    assert result.logits.shape == (3, 6)
    assert result.predicted.tolist() == [0, 2, 3] and result.accuracy == 1.0
    expected = torch.as_tensor(labels).long()
    assert torch.equal(result.semantic, expected)  # labelled pixels get their class, 255 stays 255


def test_ground_truth_mode_accepts_paths_and_reports_bad_input(tiny_model, tmp_path):
    image, labels = make_scene()
    path = tmp_path / "scene.png"
    Image.fromarray(image).save(path)
    res = classify_ground_truth(tiny_model, path, torch.as_tensor(labels), "sky, cat, grass, road")
    assert res.semantic.shape == labels.shape and res.predicted.shape == (3,)
    assert set(res.semantic.unique().tolist()) <= {0, 1, 2, 3, 255}
    with pytest.raises(ValueError, match="label_map size"):
        classify_ground_truth(tiny_model, image, labels[:-1], "sky, cat, grass, road")
    with pytest.raises(ValueError, match="labels outside 0..1"):
        classify_ground_truth(tiny_model, image, labels, "sky, cat")
    with pytest.raises(ValueError, match="vocabulary is empty"):
        classify_ground_truth(tiny_model, image, labels, " , ")
    with pytest.raises(FileNotFoundError):
        classify_ground_truth(tiny_model, tmp_path / "none.png", labels, "a, b, c, d")
    empty = classify_ground_truth(tiny_model, image, np.full_like(labels, 255), "sky")
    assert empty.class_ids.numel() == 0 and np.isnan(empty.accuracy)
    assert (empty.semantic == 255).all()


def test_head_config_must_match_clip():
    from maskadapter import HeadConfig
    from conftest import tiny_clip_config

    with pytest.raises(ValueError, match="clip_dim 64 differs"):
        MaskAdapterModel(tiny_clip_config(), HeadConfig(clip_dim=64))


def test_zero_masks_flow_through_to_empty_logits(tiny_model):
    feats = tiny_model.dense_features(torch.randn(1, 3, 64, 64))
    empty = torch.zeros(1, 0, 16, 16, dtype=torch.bool)
    emb = tiny_model.embed_masks(feats, empty)
    assert emb.shape == (1, 0, 32)
    logits = tiny_model.classify_masks(feats, empty, F.normalize(torch.randn(3, 32), dim=-1), [1, 2])
    assert logits.shape == (1, 0, 3)
