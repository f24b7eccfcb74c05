"""Ground-truth-mask mode and the one mask-classification path: the predictor, GT mode and the trainer's evaluation
give identical logits (MAFT+'s CDT included); panoptic and instance outputs follow the official GT-mode rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from maskadapter.inference.classify import classify_image_masks
from maskadapter.inference.ground_truth import (classify_ground_truth, ground_truth_instances,
                                                ground_truth_panoptic)
from maskadapter.inference.predictor import Predictor
from maskadapter.inference.preprocess import normalize_and_pad, resize_longest_side
from maskadapter.modeling.build import build_model
from maskadapter.modeling.text import TextClassifier, classification_logits
from maskadapter.training.evaluate import EvalSet, evaluate_gt_masks
from maskadapter.vocabulary import Vocabulary

from conftest import randomize_, tiny_architecture, tiny_preset

VOCAB = Vocabulary.parse("cat, sofa|couch, sky, road")


@pytest.fixture(scope="module")
def maftp():
    """A tiny MAFT+-style model: scrambled dense projection and a CDT with random weights."""
    preset = tiny_preset("maftp-large")
    torch.manual_seed(3)
    model = build_model(preset, tiny_architecture()).eval()
    randomize_(model.cdt, seed=4, std=0.5)
    randomize_(model.mask_adapter, seed=5)
    return Predictor(model, preset, precision="fp32", text_cache_dir=False)


def scene_and_labels(h: int = 48, w: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.integers(0, 255, (3, h, w), dtype=np.uint8))
    labels = torch.full((h, w), 255, dtype=torch.long)
    labels[: h // 2] = 2          # sky
    labels[h // 2:, : w // 2] = 0  # cat
    labels[h // 2:, w // 2:] = 3   # road
    labels[-4:, -4:] = 1           # sofa
    return image, labels


def independent_logits(model, image, masks, text, size):
    """The official computation written out step by step (resize, pad, dense features, head, CDT, logits)."""
    resized = resize_longest_side(image, size)
    h, w = resized.shape[1:]
    images, _ = normalize_and_pad([resized])
    m = F.interpolate(masks[None].float(), size=(h, w), mode="bilinear", align_corners=False)
    m = F.pad(m, (0, images.shape[-1] - w, 0, images.shape[-2] - h))
    with torch.no_grad():
        feats = model.dense_features(images)
        emb = model.embed_masks(feats, m)
        text_void = torch.cat([text, F.normalize(model.void_embedding.weight, dim=-1)])
        classifier = model.cdt(feats["clip_vis_dense_proj"], text_void)
    return classification_logits(emb, classifier, model.backbone.logit_scale, VOCAB.num_synonyms)[0]


def test_the_three_callers_give_identical_logits_with_a_cdt(maftp):
    model, preset = maftp.model, maftp.preset
    image, labels = scene_and_labels()
    masks = torch.stack([labels == c for c in (0, 1, 2, 3)])
    text = TextClassifier(model.backbone).encode(VOCAB)
    expected = independent_logits(model, image, masks, text, preset.test_size)
    C = len(VOCAB)

    predictor_logits = maftp.classify_masks(image, masks, VOCAB).logits
    gt = classify_ground_truth(model, image, labels, VOCAB, resize=preset.test_size)
    direct = classify_image_masks(model, image, masks, text, VOCAB.num_synonyms, resize=preset.test_size)
    torch.testing.assert_close(direct, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gt.logits, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(predictor_logits, expected[:, :C], rtol=1e-5, atol=1e-5)

    # the CDT is applied: without it the logits are far from these (the bug of the former GT mode)
    with torch.no_grad():
        images, _ = normalize_and_pad([resize_longest_side(image, preset.test_size)])
        feats = model.dense_features(images)
        m = F.interpolate(masks[None].float(), size=images.shape[-2:], mode="bilinear", align_corners=False)
        no_cdt = classification_logits(model.embed_masks(feats, m), model.text_with_void(text),
                                       model.backbone.logit_scale, VOCAB.num_synonyms)[0]
    assert (no_cdt - expected).abs().max() > 0.5

    # the trainer's periodic evaluation predicts the same classes
    class OneImage:
        def __getitem__(self, index):
            return {"image": image, "masks": masks, "labels": torch.tensor([0, 1, 2, 3])}

    eval_set = EvalSet("one", VOCAB, 1, 255, OneImage(), resize=preset.test_size)
    metrics = evaluate_gt_masks(model, eval_set, text, VOCAB.num_synonyms)
    predicted = expected[:, :C].argmax(-1)
    assert metrics["accuracy"] == pytest.approx(100.0 * float((predicted == torch.arange(4)).float().mean()))


def test_gt_semantic_output_paints_the_predicted_class_of_each_mask(maftp):
    image, labels = scene_and_labels()
    res = classify_ground_truth(maftp.model, image, labels, VOCAB, tasks=("semantic",))
    assert res.class_ids.tolist() == [0, 1, 2, 3]
    for c, p in zip(res.class_ids.tolist(), res.predicted.tolist()):
        assert torch.all(res.semantic[labels == c] == p)
    assert torch.all(res.semantic[labels == 255] == 255)
    assert res.panoptic is None and res.instances is None
    with pytest.raises(ValueError, match="is_thing"):
        classify_ground_truth(maftp.model, image, labels, VOCAB, tasks=("panoptic",))


def test_gt_panoptic_follows_the_official_rules_by_hand():
    # 3 disjoint GT masks on a 2x4 image; logits chosen so the probabilities are easy to follow
    masks = torch.zeros(3, 2, 4, dtype=torch.bool)
    masks[0, :, :2] = True       # left half
    masks[1, 0, 2:] = True       # top right
    masks[2, 1, 2:] = True       # bottom right
    logits = torch.tensor([[4.0, 0.0, 0.0, 0.0],    # class 0 (a thing)
                           [0.0, 3.0, 0.0, 0.0],    # class 1 (stuff)
                           [0.0, 2.5, 0.0, 0.0]])   # class 1 again: merged with the mask above (stuff)
    probs = logits.softmax(-1)
    pan, segments = ground_truth_panoptic(probs, masks, is_thing=[True, False, False])
    # official: scores = max of softmax(probs) (a second softmax), no sigmoid on the 0/1 masks
    second = probs.softmax(-1)
    expected_scores = second.max(-1).values
    assert [s["category_id"] for s in segments] == [0, 1]
    assert [s["isthing"] for s in segments] == [True, False]
    assert segments[0]["score"] == pytest.approx(float(expected_scores[0]))
    assert segments[1]["score"] == pytest.approx(float(expected_scores[1:].max()))  # merged stuff keeps the max
    assert pan.tolist() == [[1, 1, 2, 2], [1, 1, 2, 2]] and segments[1]["area"] == 4


def test_gt_panoptic_drops_a_mask_whose_class_is_void():
    masks = torch.zeros(2, 2, 2, dtype=torch.bool)
    masks[0, 0] = True
    masks[1, 1] = True
    probs = torch.tensor([[0.7, 0.1, 0.2], [0.1, 0.1, 0.8]])  # mask 1: void wins
    pan, segments = ground_truth_panoptic(probs, masks, is_thing=[True, True])
    assert [s["category_id"] for s in segments] == [0] and pan.tolist() == [[1, 1], [0, 0]]


def test_gt_instances_use_sigmoid_of_probabilities_and_thing_classes_only():
    masks = torch.zeros(2, 3, 3, dtype=torch.bool)
    masks[0, :2, :2] = True
    masks[1, 2, :] = True
    probs = torch.tensor([[0.6, 0.3, 0.1],     # classes 0, 1 and void
                          [0.2, 0.7, 0.1]])
    inst = ground_truth_instances(probs, masks, is_thing=[True, False], top_k=3)
    # top-3 of sigmoid(probs[:, :2]) over (mask, class): (1,1)=s(.7), (0,0)=s(.6), (0,1)=s(.3); class 1 is stuff
    assert inst.classes.tolist() == [0] and len(inst) == 1
    area = 4
    assert float(inst.scores[0]) == pytest.approx(torch.sigmoid(torch.tensor(0.6)).item() * area / (area + 1e-6))
    assert torch.equal(inst.masks[0], masks[0])
    every = ground_truth_instances(probs, masks, is_thing=None, top_k=10)
    assert len(every) == 4 and every.scores.tolist() == sorted(every.scores.tolist(), reverse=True)


def test_gt_mode_with_all_three_tasks_on_a_model(maftp):
    image, labels = scene_and_labels()
    is_thing = [True, False, False, False]
    res = classify_ground_truth(maftp.model, image, labels, VOCAB, tasks=("semantic", "panoptic", "instance"),
                                is_thing=is_thing)
    probs = res.logits.softmax(-1)
    pan, segments = ground_truth_panoptic(probs, torch.stack([labels == c for c in (0, 1, 2, 3)]), is_thing)
    assert torch.equal(res.panoptic, pan) and res.segments == segments
    assert all(is_thing[int(c)] for c in res.instances.classes)
    assert res.panoptic.shape == labels.shape
