"""Point and box prompts: parsing, validation, grouping, prompt -> SAM mask -> adapter class round trips (a fake
SAM with known masks, and a real tiny SAM), one image embedding for many prompts, the prompt overlay."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from maskadapter.inference.predictor import Predictor
from maskadapter.inference.prompts import (PromptGroup, PromptSegmenter, parse_boxes, parse_points, prompt_groups,
                                           prompt_overlay, segment_prompts)
from maskadapter.modeling.generators.sam import SamPromptPredictor

from conftest import tiny_preset, write_tiny_preset
from sam_fakes import FakeSamPredictor, register_tiny_sam

VOCAB = "sky, road, car"
SKY, ROAD, CAR, TREE = (120, 180, 240), (90, 90, 95), (200, 30, 30), (40, 140, 50)


def scene() -> np.ndarray:
    """80x60: sky above, road below, a red car (x 15..39, y 35..49) and a green tree (x 60..69, y 10..29)."""
    image = np.empty((60, 80, 3), np.uint8)
    image[:30], image[30:] = SKY, ROAD
    image[35:50, 15:40] = CAR
    image[10:30, 60:70] = TREE
    return image


def region(image: np.ndarray, color) -> torch.Tensor:
    return torch.from_numpy((image == np.array(color, np.uint8)).all(-1))


@pytest.fixture(scope="module")
def model(tiny_fcclip):
    return tiny_fcclip


@pytest.fixture(scope="module")
def predictor(model):
    return Predictor(model, tiny_preset(), precision="fp32", text_cache_dir=False)


@pytest.fixture
def fake_sam(tmp_path):
    ckpt = tmp_path / "fake.pth"
    ckpt.write_bytes(b"")
    return SamPromptPredictor(ckpt, builder=FakeSamPredictor)


# ---------------------------------------------------------------------------------------------- text syntax
def test_parse_points():
    assert parse_points("10,20; -30.5, 40 ;+5,6;") == [(10.0, 20.0, True), (30.5, 40.0, False), (5.0, 6.0, True)]
    assert parse_points(" - 1e2 , .5 ") == [(100.0, 0.5, False)]


@pytest.mark.parametrize("text, message", [
    ("", "--points is empty: expected \"x,y;x,y\""),
    (" ; ", "--points is empty"),
    ("10", "--points: item 1 '10' is not x,y"),
    ("1,2;10,20,30", "--points: item 2 '10,20,30' is not x,y"),
    ("a,b", "item 1 'a,b' is not x,y"),
    ("--5,6", "item 1 '--5,6' is not x,y"),
    ("+,5", "item 1 '+,5' is not x,y"),
])
def test_parse_points_errors(text, message):
    with pytest.raises(ValueError) as info:
        parse_points(text)
    assert message in str(info.value)
    with pytest.raises(TypeError, match="--points must be text"):
        parse_points(None)


def test_parse_boxes():
    assert parse_boxes("1,2,30,40; 0,0,5.5,6") == [(1.0, 2.0, 30.0, 40.0), (0.0, 0.0, 5.5, 6.0)]
    with pytest.raises(ValueError, match=r"--boxes: item 1 '1,2,3' is not x0,y0,x1,y1"):
        parse_boxes("1,2,3")
    with pytest.raises(ValueError, match=r"box 2 '30,2,10,40' is empty: it needs x0 < x1 and y0 < y1"):
        parse_boxes("1,2,30,40;30,2,10,40")
    with pytest.raises(ValueError, match="boxes is empty"):
        parse_boxes(";", name="boxes")


# ---------------------------------------------------------------------------------------------- groups
def test_prompt_groups():
    size = (60, 80)
    assert prompt_groups([(1, 2, True), (3, 4, False)], [], size) == [PromptGroup(((1, 2, True), (3, 4, False)))]
    assert prompt_groups([(1, 2)], None, size) == [PromptGroup(((1.0, 2.0, True),))]  # a bare (x, y) is positive
    assert prompt_groups([], [(0, 0, 10, 10), (5, 5, 80, 60)], size) == [PromptGroup((), (0, 0, 10, 10)),
                                                                         PromptGroup((), (5, 5, 80, 60))]
    group, = prompt_groups([(4, 4, False)], [(0, 0, 10, 10)], size)  # points refine their box
    assert group == PromptGroup(((4, 4, False),), (0, 0, 10, 10))
    assert group.to_dict() == {"points": [[4, 4, 0]], "box": [0, 0, 10, 10]}


@pytest.mark.parametrize("points, boxes, error, message", [
    ([], [], ValueError, "no prompt: give at least one point (points=) or one box (boxes=)"),
    ([(1, 2)], [(0, 0, 5, 5), (1, 1, 6, 6)], ValueError, "points refine one box, but 2 boxes were given"),
    ([(1, 2, False)], [], ValueError, "points has only negative points"),
    ([(1, 2), (80, 10)], [], ValueError, "points[1] (80, 10) is outside the 80x60 image (0 <= x < 80"),
    ([(-0.5, 10)], [], ValueError, "points[0] (-0.5, 10) is outside"),
    ([(1, float("nan"))], [], ValueError, "points[0] y must be finite"),
    ([(1, "2")], [], TypeError, "points[0] y must be a number"),
    ([(1,)], [], TypeError, "points[0] must be (x, y) or (x, y, positive)"),
    ([(1, 2, "yes")], [], TypeError, "points[0] positive must be True/False"),
    ("1,2", [], TypeError, "points must be a list of tuples"),
    ([], [(0, 0, 81, 10)], ValueError, "boxes[0] (0, 0, 81, 10) is not inside the 80x60 image"),
    ([], [(10, 0, 10, 10)], ValueError, "boxes[0] (10, 0, 10, 10) is empty"),
    ([], [(0, 0, 10)], TypeError, "boxes[0] must be (x0, y0, x1, y1)"),
])
def test_prompt_errors_name_the_argument(points, boxes, error, message):
    with pytest.raises(error) as info:
        prompt_groups(points, boxes, (60, 80))
    assert message in str(info.value)


# ---------------------------------------------------------------------------------------------- round trips
def test_click_to_class_round_trip(predictor, fake_sam):
    image = scene()
    result = segment_prompts(predictor, fake_sam, image, VOCAB, points=[(20, 40, True)])
    car = region(image, CAR)
    assert result.masks.shape == (1, 60, 80) and torch.equal(result.masks[0], car)
    assert result.sam_scores.tolist() == pytest.approx([0.9])  # the best of SAM's three outputs by its IoU
    call = fake_sam._predictor.predict_calls[-1]
    assert call["point_coords"].tolist() == [[20.0, 40.0]] and call["point_labels"].tolist() == [1]
    assert call["box"] is None and call["multimask_output"] is True
    # the class comes from the adapter's classification of exactly that mask
    expected = predictor.classify_masks(image, car[None], VOCAB)
    assert torch.allclose(result.classification.logits, expected.logits)
    assert result.labels.tolist() == expected.labels.tolist() == result.top_classes[:, 0].tolist()
    assert result.scores.tolist() == pytest.approx(expected.scores.tolist())
    assert result.top_classes.shape == (1, 3)  # top_k=5 clipped to the 3 classes
    assert result.top_scores[0].tolist() == sorted(result.top_scores[0].tolist(), reverse=True)
    assert float(result.top_scores.sum()) == pytest.approx(1.0, abs=1e-5)
    assert torch.equal(result.semantic, torch.where(car, result.labels[0], -1))
    name, probability = result.top(0)[0]
    assert name == VOCAB.split(", ")[int(result.labels[0])] and probability == pytest.approx(float(result.scores[0]))
    record, = json.loads(json.dumps(result.records()))
    assert record["area"] == int(car.sum()) == 15 * 25 and record["bbox"] == [15, 35, 25, 15]
    assert record["points"] == [[20.0, 40.0, 1]] and record["box"] is None and record["sam_score"] == pytest.approx(0.9)
    assert record["label"] == name and len(record["top_k"]) == 3


def test_negative_points_boxes_and_single_mask(predictor, fake_sam):
    image = scene()
    # a box around car and road: its centre is road; a negative point on the car keeps the car out
    boxed = segment_prompts(predictor, fake_sam, image, VOCAB, points=[(30, 55, True), (20, 40, False)],
                            boxes=[(10, 32, 50, 58)], multimask=False)
    call = fake_sam._predictor.predict_calls[-1]
    assert call["box"].tolist() == [10, 32, 50, 58] and call["point_labels"].tolist() == [1, 0]
    assert call["multimask_output"] is False and boxed.sam_scores.tolist() == pytest.approx([0.9])
    expected = region(image, ROAD)
    expected[:32] = expected[58:] = False
    expected[:, :10] = expected[:, 50:] = False
    assert torch.equal(boxed.masks[0], expected)
    two = segment_prompts(predictor, fake_sam, image, VOCAB, boxes=[(14, 34, 41, 51), (55, 5, 75, 35)], top_k=2)
    assert len(two.groups) == 2 and two.top_classes.shape == (2, 2)
    assert torch.equal(two.masks[0], region(image, CAR)) and torch.equal(two.masks[1], region(image, TREE))
    expected = predictor.classify_masks(image, two.masks, VOCAB)
    assert torch.allclose(two.classification.logits, expected.logits)
    assert torch.equal(two.semantic, expected.semantic)


def test_embedding_computed_once_for_many_prompts(predictor, fake_sam, tmp_path):
    from PIL import Image

    image = scene()
    path = tmp_path / "scene.png"
    Image.fromarray(image).save(path)
    first = segment_prompts(predictor, fake_sam, path, VOCAB, points=[(20, 40)])
    clicks = [segment_prompts(predictor, fake_sam, source, VOCAB, points=pts) for source, pts in (
        (path, [(20, 40), (65, 20)]), (image, [(5, 5)]), (image.copy(), [(70, 50), (65, 20, False)]))]
    assert first.embedding_computed and not any(c.embedding_computed for c in clicks)
    assert fake_sam._predictor.set_image_calls == 1 and fake_sam.embeddings_computed == 1
    assert len(fake_sam._predictor.predict_calls) == 4  # ...but every prompt was segmented
    other = image.copy()
    other[0, 0] = 0
    assert segment_prompts(predictor, fake_sam, other, VOCAB, points=[(20, 40)]).embedding_computed
    assert fake_sam._predictor.set_image_calls == 2


def test_request_errors(predictor, fake_sam, model):
    image = scene()
    with pytest.raises(ValueError, match="top_k must be a positive int"):
        segment_prompts(predictor, fake_sam, image, VOCAB, points=[(1, 1)], top_k=0)
    with pytest.raises(ValueError, match="'Car' appears twice"):
        segment_prompts(predictor, fake_sam, image, "car, Car", points=[(1, 1)])
    small = Predictor(model, tiny_preset(), precision="fp32", text_cache_dir=False, max_image_pixels=1000)
    with pytest.raises(ValueError, match="over the limit of 1000 pixels"):
        segment_prompts(small, fake_sam, image, VOCAB, points=[(1, 1)])
    with pytest.raises(ValueError, match=r"points\[0\] \(99, 1\) is outside the 80x60 image"):
        segment_prompts(predictor, fake_sam, image, VOCAB, points=[(99, 1)])
    assert fake_sam._predictor.set_image_calls == 0  # refused before SAM ran


def test_empty_sam_mask_has_no_class(predictor, tmp_path):
    class Empty(FakeSamPredictor):
        def predict(self, **kwargs):
            masks, scores, low = super().predict(**kwargs)
            return np.zeros_like(masks), scores, low

    ckpt = tmp_path / "fake.pth"
    ckpt.write_bytes(b"")
    result = segment_prompts(predictor, SamPromptPredictor(ckpt, builder=Empty), scene(), VOCAB, points=[(5, 5)])
    assert result.labels.tolist() == [-1] and result.scores.tolist() == [0.0]
    assert result.records()[0]["label"] is None and result.records()[0]["top_k"] == []
    assert bool((result.semantic == -1).all())
    assert prompt_overlay(scene(), result).size == (80, 60)


def test_prompt_overlay_shows_mask_and_points(predictor, fake_sam):
    image = np.kron(scene(), np.ones((4, 4, 1), np.uint8))  # 320x240, room for labels
    result = segment_prompts(predictor, fake_sam, image, VOCAB, points=[(100, 170, True), (20, 20, False)])
    picture = np.asarray(prompt_overlay(image, result)).astype(int)
    assert picture.shape == image.shape
    green, red = picture[170, 100], picture[20, 20]
    assert green[1] > 150 and green[0] < 100 and red[0] > 180 and red[1] < 100  # positive / negative markers
    car = region(image, CAR).numpy()
    tinted = np.abs(picture - image.astype(int)).sum(-1)
    assert tinted[car].mean() > 20 and np.median(tinted[~car]) == 0  # only the mask is coloured


@pytest.fixture
def tiny_sam_prompts(tmp_path, monkeypatch):
    """A real segment-anything SamPredictor around a tiny random SAM, and the package's own predictor (same
    weights) to compare with."""
    sa = pytest.importorskip("segment_anything")
    from sam_fakes import tiny_sam

    ckpt = register_tiny_sam(monkeypatch, tmp_path / "sam_vit_b_01ec64.pth")
    reference = sa.SamPredictor(tiny_sam())
    reference.set_image(scene())
    return SamPromptPredictor(ckpt, "sam"), reference


RULE_CASES = {  # name: (points, boxes, SAM's rule asks for three masks)
    "one click": ([(20, 40, True)], [], True),
    "+/- clicks": ([(20, 40, True), (70, 5, False)], [], False),
    "3 clicks": ([(20, 40, True), (30, 45, True), (70, 5, False)], [], False),
    "clicks + box": ([(30, 42, True)], [(14, 34, 41, 51)], False),
    "box": ([], [(14, 34, 41, 51)], False),
}


@pytest.mark.parametrize("case", list(RULE_CASES))
def test_sam_mask_choice_rule(predictor, tiny_sam_prompts, case):
    """SAM's rule: the best of three masks by predicted IoU for a single click, SAM's single mask for several
    clicks, a box, or a box with clicks; with these test weights the two choices differ in every case."""
    sam, reference = tiny_sam_prompts
    points, boxes, multimask = RULE_CASES[case]
    result = PromptSegmenter(predictor, sam)(scene(), VOCAB, points=points, boxes=boxes)
    coords = np.array([[x, y] for x, y, _ in points], np.float32) if points else None
    labels = np.array([int(positive) for _, _, positive in points]) if points else None
    box = np.array(boxes[0], np.float32) if boxes else None
    three, iou3, _ = reference.predict(coords, labels, box, multimask_output=True)
    single, iou1, _ = reference.predict(coords, labels, box, multimask_output=False)
    best = int(np.argmax(iou3))
    expected, score = (three[best], iou3[best]) if multimask else (single[0], iou1[0])
    other = single[0] if multimask else three[best]
    assert not np.array_equal(expected, other)  # the rule decides something here
    assert torch.equal(result.masks[0], torch.from_numpy(expected))
    assert float(result.sam_scores[0]) == pytest.approx(float(score))
    named = predictor.classify_masks(scene(), torch.from_numpy(expected)[None], VOCAB)
    assert torch.equal(result.classification.logits, named.logits)


def test_multimask_overrides_the_rule(predictor, tiny_sam_prompts):
    sam, reference = tiny_sam_prompts
    clicks = [(20, 40, True), (70, 5, False)]
    coords, labels = np.array([[20.0, 40.0], [70.0, 5.0]], np.float32), np.array([1, 0])
    three, iou3, _ = reference.predict(coords, labels, multimask_output=True)
    single, _, _ = reference.predict(np.array([[20.0, 40.0]], np.float32), np.array([1]), multimask_output=False)
    forced = PromptSegmenter(predictor, sam, multimask=True)(scene(), VOCAB, points=clicks)
    assert torch.equal(forced.masks[0], torch.from_numpy(three[int(np.argmax(iou3))]))
    one = PromptSegmenter(predictor, sam)(scene(), VOCAB, points=clicks[:1], multimask=False)
    assert torch.equal(one.masks[0], torch.from_numpy(single[0]))
    with pytest.raises(TypeError, match="multimask must be True, False or None"):
        PromptSegmenter(predictor, sam, multimask="yes")


def test_adapter_only_predictor(model, predictor, fake_sam, tmp_path):
    preset_file = write_tiny_preset(tmp_path / "tiny.json")
    state = model.state_dict()
    adapter = {k: v for k, v in state.items() if k.startswith(("mask_adapter.", "void_embedding."))}
    clip = {k: v for k, v in state.items() if k.startswith("backbone.clip_model.")}
    torch.save({"model": adapter}, tmp_path / "adapter.pth")
    torch.save({"model": clip}, tmp_path / "clip.pth")
    adapter_only = Predictor.from_adapter(tmp_path / "adapter.pth", preset_file, clip_weights=tmp_path / "clip.pth",
                                          precision="fp32", text_cache_dir=False)
    assert adapter_only.model.sem_seg_head is None
    image = scene()
    result = segment_prompts(adapter_only, fake_sam, image, VOCAB, points=[(20, 40)])
    expected = predictor.classify_masks(image, region(image, CAR)[None], VOCAB)
    assert torch.allclose(result.classification.logits, expected.logits, atol=1e-5)


def test_prompt_segmenter_wraps_a_predictor_and_sam(model, fake_sam):
    plain = Predictor(model, tiny_preset(), precision="fp32", text_cache_dir=False)
    assert not hasattr(plain, "segment_prompts") and not hasattr(plain, "prompt_model")
    image = scene()
    segmenter = PromptSegmenter(plain, fake_sam)
    via_object = segmenter(image, VOCAB, points=[(20, 40, True)])
    via_function = segment_prompts(plain, fake_sam, image, VOCAB, points=[(20, 40, True)])
    assert torch.equal(via_object.masks, via_function.masks) and torch.equal(via_object.masks[0], region(image, CAR))
    assert torch.allclose(via_object.classification.logits, via_function.classification.logits)
    assert fake_sam.embeddings_computed == 1  # the second call reused the embedding
    prepared = plain.prepare_vocabulary(VOCAB)
    assert torch.equal(segmenter(image, prepared, points=[(20, 40)]).classification.logits,
                       via_object.classification.logits)
    with pytest.raises(TypeError, match="sam must be a prompt predictor"):
        PromptSegmenter(plain, object())


def test_segment_command_with_points_and_boxes(model, tmp_path, monkeypatch, capsys):
    from PIL import Image

    from maskadapter.cli import main

    sam_file = register_tiny_sam(monkeypatch, tmp_path / "sam_vit_b_01ec64.pth")
    preset_file = write_tiny_preset(tmp_path / "tiny.json")
    weights = tmp_path / "tiny.pth"
    torch.save({"model": model.state_dict()}, weights)
    image = tmp_path / "scene.png"
    Image.fromarray(scene()).save(image)
    out = tmp_path / "out"
    base = ["segment", str(image), "--vocab", VOCAB, "--preset", str(preset_file), "--weights", str(weights),
            "--precision", "fp32", "-o", str(out), "--no-text-cache"]
    assert main([*base, "--points", "+20,40;-70,10", "--boxes", "14,34,41,51", "--sam-checkpoint",
                 str(sam_file), "--sam-model", "vit_b"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("#1 ") and "(SAM " in printed and "top:" in printed
    data = json.loads((out / "scene.json").read_text())
    assert [p["points"] for p in data["prompts"]] == [[[20.0, 40.0, 1], [70.0, 10.0, 0]]]
    assert data["prompts"][0]["box"] == [14.0, 34.0, 41.0, 51.0] and data["height"] == 60
    labels = np.array(Image.open(out / "scene_labels.png"))
    assert labels.shape == (60, 80) and Image.open(out / "scene_overlay.png").size == (80, 60)
    # every mistake is reported before any model loads
    for extra, message in ((["--points", "20,40"], "need --sam-checkpoint"),
                           (["--points", "20,40;x", "--sam-checkpoint", str(sam_file)], "--points"),
                           (["--boxes", "1,2,3", "--sam-checkpoint", str(sam_file)], "--boxes")):
        assert main([*base, *extra]) == 1
        assert message in capsys.readouterr().err
    assert main([*base[:2], str(image), *base[2:], "--points", "1,1", "--sam-checkpoint", str(sam_file)]) == 1
    assert "one image" in capsys.readouterr().err


def test_prompt_options_are_checked_before_the_model_loads(model, tmp_path, monkeypatch, capsys):
    """Empty --points / --boxes are errors (they used to segment the whole image), a leading negative point
    parses, and prompts outside the image (size from its header, EXIF-aware) are reported before any load."""
    import maskadapter.modeling.load as load
    from PIL import Image

    from maskadapter.cli import main

    sam_file = register_tiny_sam(monkeypatch, tmp_path / "sam_vit_b_01ec64.pth")
    weights = tmp_path / "tiny.pth"
    torch.save({"model": model.state_dict()}, weights)
    image = tmp_path / "scene.png"
    Image.fromarray(scene()).save(image)
    loads = []
    real = load.load_model
    monkeypatch.setattr(load, "load_model", lambda *a, **k: loads.append(1) or real(*a, **k))
    base = ["segment", str(image), "--vocab", VOCAB, "--preset", str(write_tiny_preset(tmp_path / "tiny.json")),
            "--weights", str(weights), "--precision", "fp32", "-o", str(tmp_path / "out"), "--no-text-cache",
            "--sam-checkpoint", str(sam_file)]
    for extra, message in ((["--points", ""], "--points is empty"), (["--boxes", ""], "--boxes is empty"),
                           (["--points", " ; "], "--points is empty"),
                           (["--points", "+90,10"], r"points[0] (90, 10) is outside the 80x60 image"),
                           (["--boxes", "10,10,81,20"], "is not inside the 80x60 image"),
                           (["--multimask"], "--multimask / --no-multimask go with --points")):
        assert main([*base, *extra]) == 1
        assert message in capsys.readouterr().err, extra
    assert loads == [] and not (tmp_path / "out" / "scene.json").exists()
    rotated = tmp_path / "rotated.jpg"  # stored 80x60, shown 60x80: x = 70 is outside once upright
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(scene()).save(rotated, exif=exif)
    assert main([*base[:1], str(rotated), *base[2:], "--points", "70,10"]) == 1
    assert "outside the 60x80 image" in capsys.readouterr().err and loads == []
    assert main([*base, "--points", "-20,50;+35,40", "--no-multimask"]) == 0  # a negative first point
    data = json.loads((tmp_path / "out" / "scene.json").read_text())
    assert data["prompts"][0]["points"] == [[20.0, 50.0, 0], [35.0, 40.0, 1]] and loads == [1]
