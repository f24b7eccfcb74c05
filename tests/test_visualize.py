"""Overlays: one picture-level rule per test, checked on the layout the renderer reports (no OCR)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from maskadapter.inference.instances import Instances
from maskadapter.inference.predictor import SegmentationResult
from maskadapter.inference.visualize import EMPTY_MESSAGE, font_size_for, overlay_segments, render_overlay
from maskadapter.inference.writers import display_segments, overlay_image
from maskadapter.vocabulary import Vocabulary

LONG = "a remarkably long class name that will not fit"


def _photo(H: int, W: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8)


def _grid(H: int, W: int, rows: int, cols: int) -> tuple[np.ndarray, list[dict]]:
    """A rows x cols grid of segments, ids 1.., class k for segment k."""
    ids = (np.arange(H)[:, None] * rows // H) * cols + (np.arange(W)[None, :] * cols // W) + 1
    return ids.astype(np.int32), [{"id": k + 1, "category_id": k} for k in range(rows * cols)]


def _blobs(H: int, W: int, n: int, seed: int) -> tuple[np.ndarray, list[dict]]:
    """n random rectangles of random sizes painted over each other (later on top), some touching the edges."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((H, W), np.int32)
    for k in range(n):
        h, w = rng.integers(H // 12, H // 2), rng.integers(W // 12, W // 2)
        y, x = rng.integers(-h // 2, H - h // 2), rng.integers(-w // 2, W - w // 2)
        ids[max(0, y):y + h, max(0, x):x + w] = k + 1
    present = [int(i) for i in np.unique(ids) if i]
    return ids, [{"id": i, "category_id": i % 7} for i in present]


def _inside(box, H: int, W: int) -> bool:
    x0, y0, x1, y1 = box
    return 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


NAMES = ["road", "person", LONG, "sky", "tree", "car", "traffic light"] + [f"class {i}" for i in range(7, 100)]


@pytest.mark.parametrize("seed", range(4))
def test_label_boxes_stay_inside_the_image(seed):
    # segments cut by the border, a 6 px strip along the left edge, and a class name wider than the image
    H, W = 180, 240
    ids, segs = _blobs(H, W, 10, seed)
    ids[:, :6] = 99
    ids[60:120, 80:160] = 98
    ids[:8, 30:210] = 97  # a band thinner than a label along the top: its label must be pushed down
    segs = [s for s in segs if (ids == s["id"]).any()]
    segs += [{"id": 99, "category_id": 1}, {"id": 98, "category_id": 2}, {"id": 97, "category_id": 3}]
    _, layout = render_overlay(_photo(H, W), ids, segs, NAMES, legend=False)
    assert layout.labels and all(_inside(b, H, W) for b in layout.text_boxes())
    assert 97 in {lab.segment_id for lab in layout.labels}
    long_labels = [lab for lab in layout.labels if lab.segment_id == 98]
    assert long_labels and long_labels[0].text.endswith("…") and LONG.startswith(long_labels[0].text[:-1])
    assert not any(lab.box[0] == 0 or lab.box[2] == W for lab in layout.labels)  # a margin from the border
    # the strip's label would sit almost entirely on its neighbours: it is left to the legend instead
    assert 99 in layout.unlabeled


@pytest.mark.parametrize("seed", range(4))
def test_label_boxes_never_overlap_and_the_least_important_are_dropped(seed):
    H, W = 240, 320
    ids, segs = _grid(H, W, 8, 10)  # 80 cells of 30 x 32 px: names are wider than cells, so labels collide
    big = _blobs(H, W, 3, seed)[0] > 0  # three large segments over the grid, the most important labels
    ids[big] = 1000
    segs = [s for s in segs if (ids == s["id"]).any()] + [{"id": 1000, "category_id": 5}]
    _, layout = render_overlay(_photo(H, W), ids, segs, NAMES, legend=False)
    boxes = [lab.box for lab in layout.labels]
    assert len(boxes) > 5 and layout.unlabeled  # crowded: some placed, some dropped
    assert not any(_overlap(a, b) for a, b in itertools.combinations(boxes, 2))
    assert 1000 in {lab.segment_id for lab in layout.labels}  # the largest segment keeps its label


@pytest.mark.parametrize("seed", range(3))
def test_labels_never_hide_under_the_legend(seed):
    H, W = 300, 400
    ids, segs = _grid(H, W, 3, 4)
    segs = [{"id": s["id"], "category_id": s["id"] * 3 % len(NAMES)} for s in segs]
    photo = _photo(H, W, seed)
    _, free = render_overlay(photo, ids, segs, NAMES, legend=False)
    _, layout = render_overlay(photo, ids, segs, NAMES)
    assert layout.legend_box is not None and _inside(layout.legend_box, H, W)
    # without a legend some label sat where the legend now is: the rule is exercised, not vacuous
    assert any(_overlap(lab.box, layout.legend_box) for lab in free.labels)
    assert not any(_overlap(lab.box, layout.legend_box) for lab in layout.labels)
    assert len(layout.labels) + len(layout.unlabeled) == len(segs)


def test_legend_ends_with_more_when_cut_and_stays_small():
    H, W = 240, 320
    ids, segs = _grid(H, W, 6, 10)  # 60 classes, more than fit in 45 % of the height
    ids[:, :100] = 1  # class 0 is the largest, so it comes first
    segs = [s for s in segs if (ids == s["id"]).any()]
    _, layout = render_overlay(_photo(H, W), ids, segs, NAMES)
    shown = len(layout.legend_rows) - 1
    assert layout.legend_hidden == len(segs) - shown > 0
    assert layout.legend_rows[-1] == f"+{layout.legend_hidden} more"
    assert layout.legend_rows[0].startswith("road")
    x0, y0, x1, y1 = layout.legend_box
    assert (y1 - y0) <= 0.45 * H and (x1 - x0) <= 0.4 * W
    # every class fits: no "+N more"; a tiny image has no legend at all
    _, few = render_overlay(_photo(H, W), *_grid(H, W, 2, 2), NAMES)
    assert few.legend_hidden == 0 and len(few.legend_rows) == 4 and not any("more" in r for r in few.legend_rows)
    _, tiny = render_overlay(_photo(60, 80), *_grid(60, 80, 2, 2), NAMES)
    assert tiny.legend_box is None and tiny.legend_rows == []


def test_font_size_grows_with_the_image():
    sizes = [(120, 160), (600, 800), (1200, 1600)]
    layouts = [render_overlay(_photo(H, W), *_grid(H, W, 2, 2), NAMES)[1] for H, W in sizes]
    fonts = [lay.font_size for lay in layouts]
    heights = [lay.labels[0].box[3] - lay.labels[0].box[1] for lay in layouts]
    assert fonts[0] < fonts[1] < fonts[2] and heights[0] < heights[1] < heights[2]
    assert font_size_for(3000, 4000) > fonts[2] and font_size_for(20, 20) >= 10  # bounded, still readable


def _result(H: int, W: int, **outputs) -> SegmentationResult:
    return SegmentationResult(Vocabulary.parse("cat, dog, sky"), (H, W), **outputs)


def test_instances_of_one_class_get_different_colours_and_a_contour():
    H, W = 120, 160
    masks = torch.zeros(3, H, W, dtype=torch.bool)
    masks[0, 20:100, 10:70] = True
    masks[1, 20:100, 70:130] = True  # touches instance 0: only colour and contour tell them apart
    masks[2, 40:60, 135:150] = True
    inst = Instances.from_masks(masks, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([1, 1, 0]))
    result = _result(H, W, semantic=torch.full((H, W), -1), instances=inst)
    ids, segs = display_segments(result, "instance")
    photo = np.full((H, W, 3), 128, np.uint8)
    image, layout = render_overlay(photo, ids, segs, result.class_names)
    assert layout.colors[1] != layout.colors[2]  # same class "dog", two instances
    pixels = np.asarray(image).astype(int)
    left, right = pixels[92, 30], pixels[92, 110]  # away from the labels at the instance centres
    assert np.abs(left - right).sum() > 30
    assert pixels[92, 69].sum() < min(left.sum(), right.sum())  # a darker line where the two meet
    assert np.array_equal(np.asarray(overlay_image(photo, result, "instance")), pixels)


@pytest.mark.parametrize("task", ["semantic", "panoptic", "instance"])
def test_empty_result_says_no_segments_found(task):
    H, W = 150, 200
    empty = _result(H, W, semantic=torch.full((H, W), -1), panoptic=torch.zeros(H, W, dtype=torch.int32),
                    segments=[], instances=Instances.from_masks(torch.zeros(0, H, W, dtype=torch.bool),
                                                               torch.zeros(0), torch.zeros(0, dtype=torch.long)))
    photo = _photo(H, W)
    _, layout = render_overlay(photo, *display_segments(empty, task), empty.class_names)
    assert layout.message == EMPTY_MESSAGE and _inside(layout.message_box, H, W)
    assert not layout.labels and layout.legend_box is None
    drawn = np.asarray(overlay_image(photo, empty, task))
    x0, y0, x1, y1 = layout.message_box
    assert not np.array_equal(drawn[y0:y1, x0:x1], photo[y0:y1, x0:x1])  # not the bare photo
    assert np.array_equal(np.delete(drawn, np.s_[y0:y1], axis=0), np.delete(photo, np.s_[y0:y1], axis=0))


def test_missing_task_output_is_an_error_not_another_task():
    result = _result(10, 10, semantic=torch.zeros(10, 10, dtype=torch.long))
    with pytest.raises(ValueError, match="no panoptic output"):
        display_segments(result, "panoptic")
    with pytest.raises(ValueError, match="task must be"):
        display_segments(result, "depth")


@pytest.mark.parametrize("shape", [(1, 1), (7, 300), (301, 5), (97, 131), (480, 640)])
def test_output_has_the_input_size(shape):
    H, W = shape
    ids, segs = _grid(H, W, min(H, 3), min(W, 3))
    out = overlay_segments(_photo(H, W), ids, segs, NAMES)
    assert out.size == (W, H) and out.mode == "RGB"
    assert overlay_segments(_photo(H, W), np.zeros((H, W), np.int32), [], NAMES).size == (W, H)


def test_bad_input_names_the_argument():
    ids, segs = _grid(20, 20, 2, 2)
    with pytest.raises(TypeError, match="image"):
        overlay_segments(_photo(20, 20).astype(np.float32), ids, segs, NAMES)
    with pytest.raises(ValueError, match="must match"):
        overlay_segments(_photo(20, 21), ids, segs, NAMES)
    with pytest.raises(ValueError, match="category_id"):
        overlay_segments(_photo(20, 20), ids, segs, NAMES[:2])


def test_many_segments_are_painted_like_few():
    # above 127 segments the colours come from a numpy gather instead of an 8-bit palette: same pixels
    from maskadapter.inference.visualize import _paint

    H, W = 60, 80
    ids = _grid(H, W, 15, 20)[0]  # 300 segments
    colors = np.random.default_rng(0).integers(0, 255, (300, 3)).astype(np.uint8)
    photo = _photo(H, W)
    many = _paint(photo, ids, colors, 0.55)
    few_ids = np.where(ids <= 100, ids, 0)
    few = _paint(photo, few_ids, colors[:100], 0.55)
    assert np.array_equal(many[few_ids > 0], few[few_ids > 0])
    assert not np.array_equal(many[few_ids == 0], photo[few_ids == 0])


@pytest.mark.parametrize("dtype, offset", [(np.uint8, 0), (np.uint16, 0), (np.int64, 0), (np.uint32, 5_000_000),
                                           (np.int64, 5_000_000)])
def test_segment_ids_of_any_integer_type_and_size(dtype, offset):
    # COCO-style panoptic ids (R + 256 G + 256^2 B) reach millions; unknown ids in the map are not drawn
    H, W = 120, 160
    ids, segs = _grid(H, W, 2, 2)
    ids = (ids + offset).astype(dtype)
    ids[:12] = 7 + offset  # an id no segment names
    segs = [{"id": s["id"] + offset, "category_id": s["category_id"]} for s in segs]
    photo = np.full((H, W, 3), 100, np.uint8)
    out = np.asarray(overlay_segments(photo, ids, segs, NAMES, legend=False))
    assert np.array_equal(out[:12], photo[:12])
    assert len({tuple(out[y, x]) for y, x in [(20, 5), (20, 155), (115, 5), (115, 155)]}) == 4


# ---------------------------------------------------------------------------------------------- bounded work, legend
def test_a_huge_class_name_costs_a_bounded_number_of_text_measures(monkeypatch):
    # a 100 KB class name took over 14 minutes (one measure per cut point, each of the whole prefix)
    import maskadapter.inference.visualize as vis

    measured = {"calls": 0, "chars": 0}
    width = vis._text_width

    def counting(font, text):
        measured["calls"] += 1
        measured["chars"] += len(text)
        if measured["calls"] > 2000:
            raise AssertionError("text fitting measures the text once per character")
        return width(font, text)

    monkeypatch.setattr(vis, "_text_width", counting)
    H, W = 240, 320
    ids, segs = _grid(H, W, 2, 2)
    names = ["x" * 100_000, "person " * 15_000, "sky", "a" + "\u0301" * 50_000]  # long, spaced, zero-width marks
    _, layout = render_overlay(_photo(H, W), ids, segs, names)
    assert measured["calls"] < 400 and measured["chars"] < 200 * W  # independent of the names' length
    texts = [lab.text for lab in layout.labels] + layout.legend_rows
    assert any(t.startswith("xxx") and t.endswith("…") for t in texts)
    assert all(len(t) <= W for t in texts)


@pytest.mark.parametrize("text, width", [("short", 1000), ("a fairly long class name", 60),
                                         ("a fairly long class name", 47), ("a fairly long class name", 68), ("wall", 3),
                                         ("", 50)])
def test_fitted_text_is_the_longest_prefix_that_fits(text, width):
    from maskadapter.inference.visualize import _fit_text, _font, _text_width

    font = _font(14)
    fitted = _fit_text(font, text, width)
    if _text_width(font, text) <= width:
        assert fitted == text
        return
    if fitted is None:  # not even one letter and the ellipsis
        assert _text_width(font, text[:1] + "…") > width
        return
    assert fitted.endswith("…") and _text_width(font, fitted) <= width
    n = len(fitted) - 1
    longer = [text[:m].rstrip() + "…" for m in range(1, len(text)) if len(text[:m].rstrip()) > n]
    assert all(_text_width(font, t) > width for t in longer)  # no longer cut fits: as a scan of every cut finds


def test_legend_counts_instances_hidden_under_others():
    # 12 "person" instances, 10 of them entirely under the two highest-scoring ones: the legend says 12
    H, W = 240, 320
    masks = torch.zeros(13, H, W, dtype=torch.bool)
    masks[0, 20:200, 20:150] = True
    masks[1, 20:200, 170:300] = True
    for k in range(2, 12):
        masks[k, 40 + k:120 + k, 30 + k:100 + k] = True  # inside instance 0
    masks[12, 210:235, 10:60] = True  # a dog
    scores = torch.tensor([0.95, 0.9] + [0.5 - 0.01 * k for k in range(10)] + [0.8])
    classes = torch.tensor([0] * 12 + [1])
    result = _result(H, W, semantic=torch.full((H, W), -1),
                     instances=Instances.from_masks(masks, scores, classes))
    ids, segs = display_segments(result, "instance")
    assert len(segs) == 13
    _, layout = render_overlay(_photo(H, W), ids, segs, ["person", "dog", "sky"])
    assert layout.legend_rows[0].startswith("person (12)")
    assert layout.legend_rows[1].startswith("dog") and len(layout.legend_rows) == 2
    assert set(layout.colors) == {1, 2, 13}  # the hidden ones are not drawn


def test_legend_swatches_are_outlined_on_any_background():
    # a dark-blue class on a dark-blue sky: the swatch needs a light outline to be seen
    from maskadapter.inference.visualize import SWATCH_OUTLINE, _font, _pad, _text_height

    H, W = 300, 400
    ids, segs = _grid(H, W, 2, 2)
    photo = np.zeros((H, W, 3), np.uint8)
    photo[..., 2] = 90
    names = ["sky", "night", "sea", "road"]
    for corners in (["top-left"], ["bottom-right"]):
        image, layout = render_overlay(photo, ids, segs, names, legend_corners=corners)
        pixels = np.asarray(image)
        x0, y0 = layout.legend_box[:2]
        pad, side = _pad(layout.legend_font_size), _text_height(_font(layout.legend_font_size))
        for i in range(len(layout.legend_colors)):
            y = y0 + pad + i * (side + pad)
            border = pixels[y, x0 + pad:x0 + pad + side]  # the swatch's top edge
            assert (border == SWATCH_OUTLINE).all(), (i, border[:3])
        right = corners == ["bottom-right"]
        assert (layout.legend_box[2] > W // 2) == right and (layout.legend_box[3] > H // 2) == right
    with pytest.raises(ValueError, match="legend_corners"):
        render_overlay(photo, ids, segs, names, legend_corners=["middle"])
