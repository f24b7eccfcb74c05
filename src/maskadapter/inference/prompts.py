"""Click to segment: SAM / SAM 2 point and box prompts, each mask named by the adapter.

    sam = SamPromptPredictor("sam_vit_b_01ec64.pth", device="cuda")
    p = Predictor.from_adapter("adapter.safetensors", clip_weights="fcclip_cocopan.pth")
    segmenter = PromptSegmenter(p, sam)          # wraps both, the way SamPredictor wraps Sam
    r = segmenter("photo.jpg", "cat, sofa, window", points=[(120, 80, True)])
    r.labels, r.top(0)          # class of the clicked object, its top-5 (name, probability)

Prompt groups: all points form one group (one object: positive points on it, negative points off it); each box
is a group of its own; points given with exactly one box refine that box (one group, as in SAM's box-and-click
use). Points with several boxes are refused: which box would they refine? Each group gives one mask, chosen by
SAM's own rule (:func:`use_multimask`): for a single click, whose object is ambiguous, the best of SAM's three
masks by predicted IoU; for several clicks, a box, or a box with clicks, SAM's single mask. The masks are
classified by :meth:`Predictor.classify_masks`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..images import ImageInput, to_rgb_tensor
from ..modeling.generators.sam import point_arrays
from ..modeling.generators.source import PromptPredictor
from ..vocabulary import Vocabulary, VocabularyLike
from .results import MaskClassification
from .visualize import font_size_for, overlay_segments
from .vocabularies import PreparedVocabulary

if TYPE_CHECKING:  # only a type here: the segmenter calls the predictor's public methods
    from .predictor import Predictor

__all__ = ["PromptGroup", "PromptSegmentation", "PromptSegmenter", "segment_prompts", "use_multimask",
           "prompt_groups", "parse_points", "parse_boxes", "prompt_overlay", "POINTS_SYNTAX", "BOXES_SYNTAX"]

Point = tuple[float, float, bool]
Box = tuple[float, float, float, float]
#: One-line summaries of the text syntaxes of :func:`parse_points` / :func:`parse_boxes` (``--help``).
POINTS_SYNTAX = ('"x,y;x,y" in pixels of the image; "+x,y" (the default) marks a point on the object, "-x,y" a '
                 'point off it, e.g. "+120,80;-200,40" (on the command line, a value starting with "-" is given as '
                 '--points="-20,70")')
BOXES_SYNTAX = '"x0,y0,x1,y1;..." in pixels (left, top, right, bottom), each box one object'
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"  # pixel coordinates: never negative, so no sign


@dataclass(frozen=True)
class PromptGroup:
    """The prompts that make one mask: points (x, y, positive) in image pixels and at most one box."""

    points: tuple[Point, ...] = ()
    box: Optional[Box] = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"points": [[x, y, 1|0], ...], "box": [x0, y0, x1, y1] | None}``."""
        return {"points": [[x, y, int(positive)] for x, y, positive in self.points],
                "box": list(self.box) if self.box is not None else None}


@dataclass
class PromptSegmentation:
    """What :func:`segment_prompts` returns: one mask per prompt group, SAM's score, the adapter's classes."""

    vocabulary: Vocabulary
    image_size: tuple[int, int]  #: (H, W)
    groups: list[PromptGroup]
    masks: torch.Tensor  #: [G, H, W] bool, the mask kept for each group
    sam_scores: torch.Tensor  #: [G] SAM's predicted IoU of the kept mask
    classification: MaskClassification  #: the adapter's logits [G, C] of the masks
    top_classes: torch.Tensor  #: [G, k] class indices, most probable first
    top_scores: torch.Tensor  #: [G, k] their softmax probabilities
    embedding_computed: bool  #: False when SAM reused the embedding of the same image from an earlier call

    @property
    def areas(self) -> torch.Tensor:
        """[G] pixels in each mask."""
        return self.masks.flatten(1).sum(1)

    @property
    def labels(self) -> torch.Tensor:
        """[G] class index of each mask, -1 where SAM returned an empty mask."""
        return torch.where(self.areas > 0, self.classification.labels, -1)

    @property
    def scores(self) -> torch.Tensor:
        """[G] softmax probability of that class (0 for an empty mask)."""
        return torch.where(self.areas > 0, self.classification.scores, 0.0)

    @property
    def semantic(self) -> torch.Tensor:
        """[H, W] int64 class per pixel (smaller masks on top), -1 where no mask is."""
        return self.classification.semantic

    @property
    def class_names(self) -> list[str]:
        """Display name of each class index."""
        return self.vocabulary.names

    def top(self, group: int) -> list[tuple[str, float]]:
        """The top-k (class name, probability) of mask ``group``."""
        return [(self.vocabulary.names[int(c)], float(s))
                for c, s in zip(self.top_classes[group], self.top_scores[group])]

    def records(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per group: prompts, label, score, SAM score, area, bbox [x, y, w, h], top-k."""
        out = []
        for g, group in enumerate(self.groups):
            label, area = int(self.labels[g]), int(self.areas[g])
            out.append({"id": g + 1, **group.to_dict(), "category_id": label if area else None,
                        "label": self.vocabulary.names[label] if area else None,
                        "score": float(self.scores[g]) if area else None, "sam_score": float(self.sam_scores[g]),
                        "area": area, "bbox": _bbox(self.masks[g]),
                        "top_k": [{"category_id": int(c), "label": self.vocabulary.names[int(c)], "score": float(s)}
                                  for c, s in zip(self.top_classes[g], self.top_scores[g])] if area else []})
        return out


# ---------------------------------------------------------------------------------------------- prompts
def prompt_groups(points: Sequence[Sequence[Any]], boxes: Sequence[Sequence[float]], image_size: tuple[int, int]
                  ) -> list[PromptGroup]:
    """Validated prompt groups for an image of ``image_size`` (H, W): see the module doc for the grouping."""
    H, W = image_size
    pts = tuple(_check_point(p, i, W, H) for i, p in enumerate(_as_list(points, "points")))
    bxs = [_check_box(b, i, W, H) for i, b in enumerate(_as_list(boxes, "boxes"))]
    if not pts and not bxs:
        raise ValueError("no prompt: give at least one point (points=) or one box (boxes=)")
    if pts and len(bxs) > 1:
        raise ValueError(f"points refine one box, but {len(bxs)} boxes were given: give points with at most one "
                         "box (boxes=), or segment the boxes without points")
    if pts and not bxs and not any(positive for _, _, positive in pts):
        raise ValueError("points has only negative points: add a positive point on the object (or a box)")
    if pts:
        return [PromptGroup(pts, bxs[0] if bxs else None)]
    return [PromptGroup((), b) for b in bxs]


def _as_list(value: Any, name: str) -> list:
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) and not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a list of tuples, got {type(value).__name__}")
    return list(value)


def _number(value: Any, what: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{what} must be a number, got {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return float(value)


def _check_point(point: Any, i: int, W: int, H: int) -> Point:
    """(x, y, positive) with 0 <= x < W and 0 <= y < H; a bare (x, y) is positive."""
    if isinstance(point, (str, bytes)) or not isinstance(point, (Sequence, np.ndarray)) or len(point) not in (2, 3):
        raise TypeError(f"points[{i}] must be (x, y) or (x, y, positive), got {point!r}")
    x, y = _number(point[0], f"points[{i}] x"), _number(point[1], f"points[{i}] y")
    positive = True if len(point) == 2 else point[2]
    if not isinstance(positive, (bool, np.bool_)) and positive not in (0, 1):
        raise TypeError(f"points[{i}] positive must be True/False (or 1/0), got {positive!r}")
    if not (0 <= x < W and 0 <= y < H):
        raise ValueError(f"points[{i}] ({x:g}, {y:g}) is outside the {W}x{H} image (0 <= x < {W}, 0 <= y < {H})")
    return (x, y, bool(positive))


def _check_box(box: Any, i: int, W: int, H: int) -> Box:
    """(x0, y0, x1, y1) with x0 < x1, y0 < y1, inside [0, W] x [0, H]."""
    if isinstance(box, (str, bytes)) or not isinstance(box, (Sequence, np.ndarray)) or len(box) != 4:
        raise TypeError(f"boxes[{i}] must be (x0, y0, x1, y1), got {box!r}")
    x0, y0, x1, y1 = (_number(v, f"boxes[{i}] {n}") for v, n in zip(box, ("x0", "y0", "x1", "y1")))
    if not (x0 < x1 and y0 < y1):
        raise ValueError(f"boxes[{i}] ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is empty: it needs x0 < x1 and y0 < y1")
    if not (0 <= x0 and 0 <= y0 and x1 <= W and y1 <= H):
        raise ValueError(f"boxes[{i}] ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is not inside the {W}x{H} image")
    return (x0, y0, x1, y1)


# ---------------------------------------------------------------------------------------------- segmentation
def use_multimask(group: PromptGroup) -> bool:
    """SAM's rule for how many masks to ask for: three (the best kept by predicted IoU) for a single click, whose
    object is ambiguous; one for several clicks, a box, or a box with clicks (SAM 2 ``_use_multimask``: at most
    one point, a box counting as two; SAM's ONNX ``select_masks``)."""
    return len(group.points) == 1 and group.box is None


class PromptSegmenter:
    """Click to segment: a SAM / SAM 2 prompt predictor makes the masks, a :class:`Predictor` names them.

    It wraps the two the way SAM's ``SamPredictor`` wraps ``Sam``: ``PromptSegmenter(predictor, sam)(image,
    vocabulary, points=..., boxes=...)``. ``predictor``: any predictor (an adapter-only one is enough);
    ``sam``: a :class:`~maskadapter.modeling.generators.source.PromptPredictor` such as ``SamPromptPredictor``,
    whose image embedding is reused while the image stays the same (interactive clicks). ``multimask``: None
    (default) follows SAM's rule (:func:`use_multimask`); True keeps the best of three masks for every group,
    False SAM's single mask for every group.
    """

    def __init__(self, predictor: Predictor, sam: PromptPredictor, multimask: Optional[bool] = None) -> None:
        if not (hasattr(sam, "set_image") and hasattr(sam, "predict")):
            raise TypeError(f"sam must be a prompt predictor (set_image, predict), got {type(sam).__name__}")
        self.predictor, self.sam, self.multimask = predictor, sam, _check_multimask(multimask)

    @torch.no_grad()
    def __call__(self, image: ImageInput, vocabulary: Union[VocabularyLike, PreparedVocabulary],
                 points: Sequence[Sequence[Any]] = (), boxes: Sequence[Sequence[float]] = (), top_k: int = 5,
                 multimask: Optional[bool] = None) -> PromptSegmentation:
        """Segment the prompts on ``image`` and classify each mask into ``vocabulary`` (top-``top_k`` classes).

        ``points``: (x, y, positive) in image pixels (a bare (x, y) is positive); ``boxes``: (x0, y0, x1, y1).
        ``multimask``: overrides the segmenter's choice for this call (None: the segmenter's)."""
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive int, got {top_k!r}")
        multimask = self.multimask if multimask is None else _check_multimask(multimask)
        vocab = self.predictor.prepare_vocabulary(vocabulary)
        rgb = to_rgb_tensor(image, max_pixels=self.predictor.max_image_pixels)
        H, W = int(rgb.shape[1]), int(rgb.shape[2])
        groups = prompt_groups(points, boxes, (H, W))
        computed = bool(self.sam.set_image(np.ascontiguousarray(rgb.permute(1, 2, 0).numpy())))
        masks, sam_scores = [], []
        for group in groups:
            mask, score = self._mask(group, use_multimask(group) if multimask is None else multimask)
            masks.append(mask)
            sam_scores.append(score)
        stacked = torch.stack(masks)
        if stacked.shape[-2:] != (H, W):
            raise ValueError(f"the prompt model returned masks of {list(stacked.shape[-2:])}, not the image's "
                             f"[{H}, {W}]")
        cls = self.predictor.classify_masks(rgb, stacked, vocab)
        k = min(top_k, len(vocab))
        top_scores, top_classes = cls.logits.softmax(-1).topk(k, dim=-1)
        return PromptSegmentation(vocab.vocabulary, (H, W), groups, stacked, torch.tensor(sam_scores), cls,
                                  top_classes, top_scores, computed)

    def _mask(self, group: PromptGroup, multimask: bool) -> tuple[torch.Tensor, float]:
        """The mask [H, W] bool SAM gives one group, and its predicted IoU: the best of three, or the single one."""
        coords, labels = point_arrays(group.points)
        box = np.array(group.box, dtype=np.float32) if group.box is not None else None
        out, iou = self.sam.predict(point_coords=coords, point_labels=labels, box=box, multimask_output=multimask)
        best = int(torch.as_tensor(iou).argmax())
        return torch.as_tensor(out[best]).bool().cpu(), float(iou[best])


def _check_multimask(multimask: Optional[bool]) -> Optional[bool]:
    if multimask is not None and not isinstance(multimask, (bool, np.bool_)):
        raise TypeError(f"multimask must be True, False or None (SAM's rule), got {multimask!r}")
    return None if multimask is None else bool(multimask)


def segment_prompts(predictor: Predictor, prompt_model: PromptPredictor, image: ImageInput,
                    vocabulary: Union[VocabularyLike, PreparedVocabulary], points: Sequence[Sequence[Any]] = (),
                    boxes: Sequence[Sequence[float]] = (), top_k: int = 5, multimask: Optional[bool] = None
                    ) -> PromptSegmentation:
    """``PromptSegmenter(predictor, prompt_model)(image, vocabulary, ...)`` in one call: masks [G, H, W] and their
    classes (see :class:`PromptSegmenter`)."""
    return PromptSegmenter(predictor, prompt_model)(image, vocabulary, points=points, boxes=boxes, top_k=top_k,
                                                    multimask=multimask)


def _bbox(mask: torch.Tensor) -> list[int]:
    """[x, y, w, h] of a bool mask [H, W] (zeros when empty)."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if ys.numel() == 0:
        return [0, 0, 0, 0]
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


# ---------------------------------------------------------------------------------------------- text syntax
def parse_points(text: str, name: str = "--points") -> list[Point]:
    """``"x,y;+x,y;-x,y"`` -> [(x, y, positive)]: ``-`` marks a negative point, ``+`` or nothing a positive one.

    Errors are ValueErrors naming ``name`` (the option) and the faulty item."""
    items = _items(text, name)
    out = []
    for i, item in enumerate(items):
        sign, body = (item[0], item[1:].strip()) if item[0] in "+-" else ("+", item)
        values = _numbers(body, 2, name, i + 1, item, "x,y")
        out.append((values[0], values[1], sign == "+"))
    return out


def parse_boxes(text: str, name: str = "--boxes") -> list[Box]:
    """``"x0,y0,x1,y1;x0,y0,x1,y1"`` -> [(x0, y0, x1, y1)] (left, top, right, bottom in pixels).

    Errors are ValueErrors naming ``name`` (the option) and the faulty item; bounds are checked against the
    image later, by :func:`segment_prompts`."""
    out = []
    for i, item in enumerate(_items(text, name)):
        x0, y0, x1, y1 = _numbers(item, 4, name, i + 1, item, "x0,y0,x1,y1")
        if not (x0 < x1 and y0 < y1):
            raise ValueError(f"{name}: box {i + 1} {item!r} is empty: it needs x0 < x1 and y0 < y1 "
                             "(left, top, right, bottom)")
        out.append((x0, y0, x1, y1))
    return out


def _items(text: str, name: str) -> list[str]:
    if not isinstance(text, str):
        raise TypeError(f"{name} must be text, got {type(text).__name__}")
    items = [item.strip() for item in text.split(";") if item.strip()]
    if not items:
        raise ValueError(f"{name} is empty: expected {POINTS_SYNTAX if 'point' in name else BOXES_SYNTAX}")
    return items


def _numbers(body: str, count: int, name: str, index: int, item: str, form: str) -> list[float]:
    parts = [p.strip() for p in body.split(",")]
    if len(parts) != count or not all(re.fullmatch(_NUMBER, p) for p in parts):
        raise ValueError(f"{name}: item {index} {item!r} is not {form} ({count} pixel coordinates, >= 0, "
                         "separated by ','; items separated by ';')")
    return [float(p) for p in parts]


# ---------------------------------------------------------------------------------------------- picture
def prompt_overlay(image: np.ndarray, result: PromptSegmentation, alpha: float = 0.55,
                   **overlay_options: Any) -> Image.Image:
    """The masks of ``result`` over ``image`` [H, W, 3] uint8, labelled with their classes, with the prompts drawn:
    positive points green, negative points red, boxes outlined (``overlay_options``: of :func:`overlay_segments`)."""
    ids = np.zeros(result.image_size, dtype=np.int32)
    order = torch.argsort(result.areas, descending=True, stable=True).tolist()
    for g in order:  # largest first, so smaller masks stay visible on top
        ids[result.masks[g].numpy()] = g + 1
    segments = [{"id": g + 1, "category_id": int(result.labels[g]), "score": float(result.scores[g])}
                for g in range(len(result.groups)) if int(result.labels[g]) >= 0]
    picture = overlay_segments(image, ids, segments, result.class_names, alpha=alpha, **overlay_options)
    draw_prompts(picture, [p for group in result.groups for p in group.points],
                 [group.box for group in result.groups if group.box is not None])
    return picture


def draw_prompts(picture: Image.Image, points: Sequence[Point], boxes: Sequence[Box]) -> Image.Image:
    """Draw points (green positive, red negative, white ring) and boxes on ``picture`` in place; returns it."""
    draw = ImageDraw.Draw(picture)
    radius = max(3, font_size_for(picture.height, picture.width) // 3)
    for x0, y0, x1, y1 in boxes:
        draw.rectangle((x0, y0, x1, y1), outline=(255, 255, 255), width=max(2, radius // 2))
    for x, y, positive in points:
        draw.ellipse((x - radius, y - radius, x + radius, y + radius),
                     fill=(40, 200, 70) if positive else (230, 40, 40), outline=(255, 255, 255), width=2)
    return picture
