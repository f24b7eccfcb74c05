"""Overlays people can read: translucent segment colours, contours, labels on segments and a legend.

Layout rules: labels sit inside the image and never on each other nor on the legend (a label moves to another
point of its segment, or is dropped, least important first); text scales with the image; segments that share
a class get distinct shades of the class colour; an empty result says so; the overlay has the image's size.
:func:`render_overlay` returns the :class:`OverlayLayout` it drew, so the rules can be checked without pixels.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["palette", "segment_colors", "font_size_for", "overlay_segments", "render_overlay", "OverlayLayout",
           "PlacedLabel", "EMPTY_MESSAGE", "CORNERS"]

Box = tuple[int, int, int, int]  #: x0, y0, x1, y1 in pixels, half-open: [x0, x1) x [y0, y1)
RGB = tuple[int, int, int]
EMPTY_MESSAGE = "no segments found"
CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")  #: where a legend may go, preferred first
SWATCH_OUTLINE = (235, 235, 235)  #: outline of the legend's colour swatches
MIN_FONT, MAX_FONT = 11, 80
_GAP = 2  # pixels kept free between two text boxes (at least)
_DT_SIDE = 320  # long side of the map on which label positions are searched
_MIN_LABEL_AREA = 0.001  # segments under this share of the image get no label (the legend still lists them)
_MIN_LABEL_COVER = 0.2  # least share of a label box that must lie on its own segment
_LEGEND_MAX_H, _LEGEND_MAX_W, _LEGEND_MIN_SIDE = 0.45, 0.4, 120  # legend size limits, image shares / pixels


@dataclass
class PlacedLabel:
    """A label drawn on segment ``segment_id``: its text and box."""

    segment_id: int
    text: str
    box: Box


@dataclass
class OverlayLayout:
    """Everything :func:`render_overlay` drew besides colours: text boxes, legend rows, the empty message."""

    size: tuple[int, int]  #: (H, W) of the overlay
    font_size: int  #: label font size in pixels
    colors: dict[int, RGB] = field(default_factory=dict)  #: fill colour of each drawn segment id
    labels: list[PlacedLabel] = field(default_factory=list)
    unlabeled: list[int] = field(default_factory=list)  #: drawn segment ids without a label (small or no room)
    legend_box: Optional[Box] = None  #: None when there is no legend (tiny image, or legend=False)
    legend_rows: list[str] = field(default_factory=list)  #: the rows shown; the last is "+N more" when cut
    legend_colors: list[RGB] = field(default_factory=list)  #: swatch colour of each class row
    legend_hidden: int = 0  #: classes left out of the legend (the N of "+N more")
    legend_font_size: int = 0
    message: Optional[str] = None  #: EMPTY_MESSAGE when nothing was drawn
    message_box: Optional[Box] = None  #: None if even a small font does not fit the image
    message_font_size: int = 0

    def text_boxes(self) -> list[Box]:
        """Boxes of every text element: labels, legend, message."""
        boxes = [lab.box for lab in self.labels]
        return boxes + [b for b in (self.legend_box, self.message_box) if b is not None]


@dataclass
class _Segment:
    index: int  # 1-based position in the segments list: its value in the index map
    id: int
    category: int
    name: str
    area: int
    score: float
    anchors: list[tuple[float, float, float]] = field(default_factory=list)  # x, y, depth


# ---------------------------------------------------------------------------------------------------- colours
def palette(n: int, seed: int = 0) -> np.ndarray:
    """``n`` distinct, fairly saturated RGB colours [n, 3] uint8 (golden-ratio hue steps, deterministic)."""
    hues = (seed * 0.1 + np.arange(n) * 0.6180339887) % 1.0
    rows = [colorsys.hsv_to_rgb(h, 0.65 + 0.3 * ((i * 7) % 3) / 2, 0.95 - 0.25 * ((i * 5) % 2))
            for i, h in enumerate(hues)]
    return (np.array(rows).reshape(n, 3) * 255).round().astype(np.uint8)


def segment_colors(category_ids: Sequence[int], num_classes: int) -> np.ndarray:
    """Colours [K, 3] uint8 of K segments: the class colour, or distinct shades of it when a class has several."""
    base = palette(max(num_classes, 1))
    cats = np.asarray(category_ids, dtype=np.int64).reshape(-1)
    out = base[cats % len(base)]
    for c in np.unique(cats):
        members = np.flatnonzero(cats == c)
        if len(members) > 1:
            hue, _, sat = colorsys.rgb_to_hls(*(base[c % len(base)] / 255.0))
            for j, k in enumerate(members):
                out[k] = _shade(hue, sat, j)
    return out


def _shade(hue: float, saturation: float, j: int) -> np.ndarray:
    """Shade ``j`` of a hue: golden-ratio steps in lightness and a small hue swing keep any two apart."""
    t = (j * 0.6180339887) % 1.0
    rgb = colorsys.hls_to_rgb((hue + 0.06 * (t - 0.5)) % 1.0, 0.3 + 0.45 * t, max(saturation, 0.6))
    return (np.array(rgb) * 255).round().astype(np.uint8)


# ---------------------------------------------------------------------------------------------------- text
def font_size_for(height: int, width: int) -> int:
    """Label font size in pixels for an image of ``height`` x ``width``: min(H, W) / 36, within [11, 80]."""
    return int(min(MAX_FONT, max(MIN_FONT, round(min(height, width) / 36))))


def _pad(font_size: int) -> int:
    return max(2, round(font_size * 0.3))


@lru_cache(maxsize=32)
def _font(size: int) -> Any:
    """A font of ``size`` px: DejaVu Sans (wide glyph coverage) where installed, else Pillow's own."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        pass
    try:
        return ImageFont.load_default(size=size)  # scalable on Pillow >= 10.1
    except TypeError:  # older Pillow: one fixed bitmap size
        return ImageFont.load_default()


def _text_width(font: Any, text: str) -> int:
    if hasattr(font, "getlength"):
        return math.ceil(font.getlength(text))
    return int(font.getsize(text)[0])  # Pillow < 9.2 bitmap fonts


@lru_cache(maxsize=32)
def _text_extent(font: Any) -> tuple[int, int]:
    """Top and bottom of any text below the drawing origin (ascender to descender), in pixels."""
    probe = "Agjy|"
    box = font.getbbox(probe) if hasattr(font, "getbbox") else (0, 0, *font.getsize(probe))
    return int(box[1]), int(box[3])


def _text_height(font: Any) -> int:
    top, bottom = _text_extent(font)
    return bottom - top


def _fit_text(font: Any, text: str, max_width: int) -> Optional[str]:
    """``text``, cut with an ellipsis to at most ``max_width`` pixels; None when not even one letter fits.

    Bounded work for any text: a glyph is at least a pixel wide, so only the first ``max_width`` characters can
    show (zero-width marks beyond them are cut too), and the cut point is found by bisection: O(log) measures
    of at most ``max_width + 1`` characters each, whatever the text's length.
    """
    head = text[:max(0, max_width) + 1]
    if head == text and _text_width(font, text) <= max_width:
        return text
    lo, hi = 0, len(head) - 1  # the longest prefix that fits with its ellipsis: lo fits (0 = nothing), hi + 1 not
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _text_width(font, head[:mid].rstrip() + "…") <= max_width:
            lo = mid
        else:
            hi = mid - 1
    cut = head[:lo].rstrip()
    return cut + "…" if cut else None


# ---------------------------------------------------------------------------------------------------- geometry
def _intersects(a: Box, b: Box, gap: int = 0) -> bool:
    return a[0] < b[2] + gap and b[0] < a[2] + gap and a[1] < b[3] + gap and b[1] < a[3] + gap


def _centered_box(x: float, y: float, w: int, h: int, W: int, H: int, margin: int = 0) -> Box:
    """A w x h box centred on (x, y), shifted inside the W x H image (``margin`` from its edges where it fits)."""
    mx, my = min(margin, (W - w) // 2), min(margin, (H - h) // 2)
    x0 = int(min(max(mx, round(x - w / 2)), W - w - mx))
    y0 = int(min(max(my, round(y - h / 2)), H - h - my))
    return x0, y0, x0 + w, y0 + h


def _anchor_points(small: np.ndarray, k: int, scale: int) -> list[tuple[float, float, float]]:
    """Label centres (x, y, depth) in segment ``k`` of the downscaled index map ``small``, deepest first.

    Depth is the distance to the segment's border (or the image's) in full-size pixels: first the point
    nearest the centroid among the near-deepest, then the deepest point of each cell of a 3 x 3 grid over the
    segment's bounding box.
    """
    from scipy.ndimage import distance_transform_edt

    ys, xs = np.nonzero(small == k)
    if ys.size == 0:
        return []
    y0, x0 = int(ys.min()), int(xs.min())
    crop = small[y0:int(ys.max()) + 1, x0:int(xs.max()) + 1] == k
    depth = distance_transform_edt(np.pad(crop, 1))[1:-1, 1:-1]  # outside the box is outside the segment
    cy, cx = ys.mean() - y0, xs.mean() - x0
    deep_r, deep_c = np.nonzero(depth >= 0.9 * depth.max())  # near-deepest: take the one nearest the centroid
    best = int(np.argmin((deep_r - cy) ** 2 + (deep_c - cx) ** 2))
    cells = []
    for rows in np.array_split(np.arange(depth.shape[0]), 3):
        for cols in np.array_split(np.arange(depth.shape[1]), 3):
            cell = depth[np.ix_(rows, cols)]
            if cell.size and cell.max() > 0:
                i, j = np.unravel_index(int(np.argmax(cell)), cell.shape)
                cells.append((int(rows[i]), int(cols[j])))
    cells.sort(key=lambda rc: (-depth[rc], rc))
    points = list(dict.fromkeys([(int(deep_r[best]), int(deep_c[best]))] + cells))  # ordered, no repeats
    return [((x0 + c + 0.5) * scale, (y0 + r + 0.5) * scale, float(depth[r, c]) * scale) for r, c in points]


# ---------------------------------------------------------------------------------------------------- layout
def _place_labels(segs: list[_Segment], small: np.ndarray, scale: int, layout: OverlayLayout) -> None:
    """One label per segment, largest (then highest-scoring) first, on a free spot; else none."""
    H, W = layout.size
    font, pad = _font(layout.font_size), _pad(layout.font_size)
    h = _text_height(font) + 2 * pad
    taken = [layout.legend_box] if layout.legend_box else []
    for seg in sorted(segs, key=lambda s: (-s.area, -s.score, s.index)):
        text = _fit_text(font, seg.name, max(W // 2, min(W - 2 * pad, 6 * layout.font_size)) - 2 * pad)
        box = None
        if text is not None and h <= H and seg.anchors:
            size = (_text_width(font, text) + 2 * pad, h)
            box = _free_spot(seg.anchors, small, seg.index, scale, size, taken, (W, H))
        if box is None:
            layout.unlabeled.append(seg.id)
            continue
        taken.append(box)
        layout.labels.append(PlacedLabel(seg.id, text, box))


def _free_spot(anchors: list[tuple[float, float, float]], small: np.ndarray, k: int, scale: int,
               size: tuple[int, int], taken: list[Box], image: tuple[int, int]) -> Optional[Box]:
    """The first free box of ``size`` centred on an anchor, then on points around anchors still in segment k."""
    (w, h), (W, H) = size, image
    gap = max(_GAP, h // 6)
    shifts = [(0, 0)] + [(dx * w / 2, dy * h) for dy in (-1, 1, 0) for dx in (0, -1, 1) if dx or dy]
    for dx, dy in shifts:
        for x, y, _ in anchors:
            px, py = x + dx, y + dy
            sy, sx = int(py // scale), int(px // scale)
            if (dx or dy) and not (0 <= sy < small.shape[0] and 0 <= sx < small.shape[1] and small[sy, sx] == k):
                continue
            box = _centered_box(px, py, w, h, W, H, margin=gap)
            if _covered(small, k, scale, box) >= _MIN_LABEL_COVER and not any(_intersects(box, t, gap) for t in taken):
                return box
    return None


def _covered(small: np.ndarray, k: int, scale: int, box: Box) -> float:
    """Share of ``box`` on segment ``k``: a label mostly off its segment (moved far, or on a thin one) misleads."""
    part = small[box[1] // scale:-(-box[3] // scale), box[0] // scale:-(-box[2] // scale)]
    return float((part == k).mean()) if part.size else 0.0


def _place_legend(segs: list[_Segment], base: np.ndarray, small: np.ndarray, scale: int,
                  layout: OverlayLayout, corners: Sequence[str] = CORNERS) -> None:
    """Rows of classes by area (the last one "+N more" when cut), in the corner of ``corners`` that hides least of
    the segments. ``segs`` includes segments hidden under others (area 0): a row counts every segment of its class."""
    H, W = layout.size
    size = max(MIN_FONT, round(layout.font_size * 0.85))
    font, pad = _font(size), _pad(size)
    row_h = _text_height(font) + pad
    fit = int((_LEGEND_MAX_H * H - pad) // row_h)
    if min(H, W) < _LEGEND_MIN_SIDE or fit < 2:
        return
    by_class: dict[int, list[_Segment]] = {}
    for s in segs:
        by_class.setdefault(s.category, []).append(s)
    ranked = sorted(by_class.values(), key=lambda group: -sum(s.area for s in group))
    shown = ranked if len(ranked) <= fit else ranked[:fit - 1]
    swatch = _text_height(font)
    max_w = int(_LEGEND_MAX_W * W) - 3 * pad - swatch
    for share in (True, False):  # small images: names without shares rather than no legend
        rows = [_legend_text(font, group, H * W, max_w, share) for group in shown]
        if all(r is not None for r in rows):
            break
    else:
        return
    hidden = len(ranked) - len(shown)
    rows = rows + ([f"+{hidden} more"] if hidden else [])
    w = max(_text_width(font, r) for r in rows) + swatch + 3 * pad
    if w > W - 2 * pad:
        return
    layout.legend_rows, layout.legend_hidden, layout.legend_font_size = rows, hidden, size
    layout.legend_colors = [tuple(int(v) for v in base[g[0].category % len(base)]) for g in shown]
    layout.legend_box = _quiet_corner((w, row_h * len(rows) + pad), (W, H), small, scale, pad, corners)


def _legend_text(font: Any, group: list[_Segment], total: int, max_width: int, share: bool) -> Optional[str]:
    """A legend row, name (count) and share, within ``max_width`` px: the name is cut first; None if it cannot be."""
    suffix = f" ({len(group)})" if len(group) > 1 else ""
    if share:
        suffix += f"  {100 * sum(s.area for s in group) / total:.1f}%"
    name = _fit_text(font, group[0].name, max_width - _text_width(font, suffix))
    if name is None or (name != group[0].name and len(name) < 4):
        return None
    return name + suffix


def _quiet_corner(size: tuple[int, int], image: tuple[int, int], small: np.ndarray, scale: int, margin: int,
                  corners: Sequence[str] = CORNERS) -> Box:
    """The box of ``size`` in one of ``corners`` hiding the least of the segments, as a sum of hidden shares (the
    first corner on ties)."""
    (w, h), (W, H) = size, image
    x = {"left": min(margin, W - w), "right": max(0, W - w - margin)}
    y = {"top": min(margin, H - h), "bottom": max(0, H - h - margin)}
    boxes = [(x[c.split("-")[1]], y[c.split("-")[0]]) for c in corners]
    whole = np.maximum(np.bincount(small.ravel()), 1)

    def hidden(box: Box) -> float:
        part = small[box[1] // scale:-(-box[3] // scale), box[0] // scale:-(-box[2] // scale)]
        return float((np.bincount(part.ravel(), minlength=len(whole))[1:] / whole[1:]).sum())
    return min(((x0, y0, x0 + w, y0 + h) for x0, y0 in boxes), key=hidden)


def _place_message(layout: OverlayLayout, text: str) -> None:
    """``text`` centred on the image, in the largest font up to 1.5 x the label font that fits."""
    H, W = layout.size
    layout.message = text
    for size in range(round(layout.font_size * 1.5), 5, -1):
        font, pad = _font(size), _pad(size)
        w, h = _text_width(font, text) + 2 * pad, _text_height(font) + 2 * pad
        if w <= W and h <= H:
            layout.message_box = _centered_box(W / 2, H / 2, w, h, W, H)
            layout.message_font_size = size
            return


# ---------------------------------------------------------------------------------------------------- pixels
def _index_map(segment_map: np.ndarray, ids: Sequence[int]) -> np.ndarray:
    """[H, W] int32: k + 1 where ``segment_map`` equals ``ids[k]``, 0 elsewhere (one gather, no per-id pass)."""
    if not len(ids):
        return np.zeros(segment_map.shape, np.int32)
    ids_arr = np.asarray(ids, dtype=np.int64)
    top = int(ids_arr.max())
    if top < (1 << 22):
        lut = np.zeros(top + 2, np.int32)  # lut[-1] = lut[top + 1] = 0 catches negative and unknown ids
        lut[ids_arr] = np.arange(1, len(ids_arr) + 1)
        return lut[np.clip(segment_map, -1 if segment_map.dtype.kind == "i" else 0, top + 1)]
    order = np.argsort(ids_arr)
    pos = np.clip(np.searchsorted(ids_arr[order], segment_map), 0, len(ids_arr) - 1)
    return np.where(ids_arr[order][pos] == segment_map, order[pos] + 1, 0).astype(np.int32)


def _contours(index: np.ndarray, width: int) -> np.ndarray:
    """bool [H, W]: segment pixels less than ``width`` pixels (along rows or columns) from another index."""
    edge = np.zeros(index.shape, dtype=bool)
    dx, dy = index[:, 1:] != index[:, :-1], index[1:] != index[:-1]
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    edge[1:] |= dy
    edge[:-1] |= dy
    for axis in (0, 1):  # thicken with shifted ORs: a few cheap passes, no per-pixel loop
        grown = edge.copy()
        for s in range(1, width):
            near, far = [slice(None)] * 2, [slice(None)] * 2
            near[axis], far[axis] = slice(s, None), slice(None, -s)
            grown[tuple(near)] |= edge[tuple(far)]
            grown[tuple(far)] |= edge[tuple(near)]
        edge = grown
    return edge & (index > 0)


def _paint(image: np.ndarray, index: np.ndarray, colors: np.ndarray, alpha: float) -> np.ndarray:
    """``image`` [H, W, 3] uint8 with segment k + 1 of ``index`` blended with ``colors[k]`` and outlined."""
    H, W = index.shape
    n = len(colors) + 1
    table = np.zeros((2 * n, 3), np.uint8)  # rows n.. are contour pixels: a darker line parts same-class shades
    table[1:n], table[n + 1:] = colors, (colors.astype(np.uint16) * 3 // 5).astype(np.uint8)
    weight = np.zeros(2 * n, np.uint8)
    weight[1:n], weight[n + 1:] = round(alpha * 255), 255
    edge = _contours(index, max(1, round(min(H, W) / 600)))
    if 2 * n <= 256:  # Pillow maps 8-bit keys through a palette in C, faster than a numpy gather
        key = Image.fromarray(index.astype(np.uint8) + n * edge.view(np.uint8))
        colour = key.copy()
        colour.putpalette(np.pad(table, ((0, 256 - 2 * n), (0, 0))).ravel().tolist())
        colour, mask = colour.convert("RGB"), key.point(weight.tolist() + [0] * (256 - 2 * n))
    else:
        key = index + n * edge
        colour, mask = Image.fromarray(table[key]), Image.fromarray(weight[key])
    return np.array(Image.composite(colour, Image.fromarray(image), mask))


def _draw(pixels: np.ndarray, layout: OverlayLayout) -> Image.Image:
    """Dim the text boxes of ``layout`` on ``pixels`` [H, W, 3] uint8 and write their text."""
    boxes = layout.text_boxes()
    for x0, y0, x1, y1 in boxes:
        pixels[y0:y1, x0:x1] = pixels[y0:y1, x0:x1] // 5
    canvas = Image.fromarray(pixels)
    draw = ImageDraw.Draw(canvas)
    for lab in layout.labels:
        _write(draw, lab.box, lab.text, layout.font_size)
    if layout.legend_box is not None:
        x0, y0 = layout.legend_box[:2]
        font, pad = _font(layout.legend_font_size), _pad(layout.legend_font_size)
        side = _text_height(font)
        for i, row in enumerate(layout.legend_rows):
            y = y0 + pad + i * (side + pad)
            if i < len(layout.legend_colors):
                # a light outline: a swatch of a dark class colour stays visible on the dimmed legend box
                draw.rectangle((x0 + pad, y, x0 + pad + side - 1, y + side - 1), fill=layout.legend_colors[i],
                               outline=SWATCH_OUTLINE, width=max(1, side // 12))
            _write(draw, (x0 + side + pad, y - pad), row, layout.legend_font_size,
                   fill=(255, 255, 255) if i < len(layout.legend_colors) else (200, 200, 200))
    if layout.message_box is not None:
        _write(draw, layout.message_box, layout.message or "", layout.message_font_size)
    return canvas


def _write(draw: ImageDraw.ImageDraw, box: Sequence[int], text: str, size: int,
           fill: RGB = (255, 255, 255)) -> None:
    font, pad = _font(size), _pad(size)
    draw.text((box[0] + pad, box[1] + pad - _text_extent(font)[0]), text, fill=fill, font=font)


# ---------------------------------------------------------------------------------------------------- entry points
def render_overlay(
    image: np.ndarray,
    segment_map: np.ndarray,
    segments: Sequence[dict],
    class_names: Sequence[str],
    alpha: float = 0.55,
    legend: bool = True,
    legend_corners: Sequence[str] = CORNERS,
) -> tuple[Image.Image, OverlayLayout]:
    """:func:`overlay_segments` of ``image`` [H, W, 3] and ``segment_map`` [H, W], and the layout it drew."""
    _check_inputs(image, segment_map, segments, class_names, alpha)
    if not legend_corners or any(c not in CORNERS for c in legend_corners):
        raise ValueError(f"legend_corners must name some of {', '.join(CORNERS)}, got {list(legend_corners)}")
    H, W = segment_map.shape
    index = _index_map(segment_map, [int(s["id"]) for s in segments])
    areas = np.bincount(index.ravel(), minlength=len(segments) + 1)[1:]
    categories = [int(s["category_id"]) for s in segments]
    colors = segment_colors(categories, len(class_names))
    every = [_Segment(k + 1, int(s["id"]), categories[k], str(class_names[categories[k]]), int(areas[k]),
                      float(s.get("score", 1.0))) for k, s in enumerate(segments)]
    segs = [s for s in every if s.area > 0]  # drawn; the legend also counts those hidden under others
    layout = OverlayLayout((H, W), font_size_for(H, W))
    layout.colors = {s.id: tuple(int(v) for v in colors[s.index - 1]) for s in segs}
    if not segs:
        _place_message(layout, EMPTY_MESSAGE)
    else:
        scale = max(1, math.ceil(max(H, W) / _DT_SIDE))
        small = index[::scale, ::scale]
        for s in segs:
            if s.area >= _MIN_LABEL_AREA * H * W:
                s.anchors = _anchor_points(small, s.index, scale)
        if legend:
            _place_legend(every, palette(max(len(class_names), 1)), small, scale, layout, legend_corners)
        _place_labels(segs, small, scale, layout)
    return _draw(_paint(image, index, colors, alpha), layout), layout


def overlay_segments(
    image: np.ndarray,
    segment_map: np.ndarray,
    segments: Sequence[dict],
    class_names: Sequence[str],
    alpha: float = 0.55,
    legend: bool = True,
    legend_corners: Sequence[str] = CORNERS,
) -> Image.Image:
    """Blend ``segments`` of ``segment_map`` [H, W] (ids; 0 = nothing) over ``image`` [H, W, 3] uint8.

    Each segment dict has ``id`` and ``category_id`` (an index into ``class_names``), optionally ``score``
    (ranks labels when room is short). The output has exactly the image's size: segments in their class
    colour (distinct shades when a class has several), outlined, labelled where a label fits, a legend of
    classes by area where the image is large enough, and "no segments found" when nothing is drawn.
    Segments hidden entirely under others are not drawn but counted in their class's legend row.
    ``legend_corners``: the corners (of :data:`CORNERS`) the legend may take, e.g. to keep it clear of a
    viewer's buttons; it takes the one hiding the least of the segments.
    """
    return render_overlay(image, segment_map, segments, class_names, alpha, legend, legend_corners)[0]


def _check_inputs(image: Any, segment_map: Any, segments: Sequence[dict], class_names: Sequence[str],
                  alpha: float) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise TypeError(f"image must be a uint8 array [H, W, 3], got {getattr(image, 'dtype', type(image))} "
                        f"{list(getattr(image, 'shape', []))}")
    if not isinstance(segment_map, np.ndarray) or segment_map.dtype.kind not in "iu":
        raise TypeError(f"segment_map must be an integer array [H, W], got {getattr(segment_map, 'dtype', None)}")
    if segment_map.shape != image.shape[:2]:
        raise ValueError(f"image [H, W, 3] and segment_map [H, W] must match, got {list(image.shape)} and "
                         f"{list(segment_map.shape)}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    ids = [int(s["id"]) for s in segments]
    if len(set(ids)) != len(ids) or any(i <= 0 for i in ids):
        raise ValueError(f"segments must have distinct positive ids, got {ids}")
    bad = [int(s["category_id"]) for s in segments if not 0 <= int(s["category_id"]) < len(class_names)]
    if bad:
        raise ValueError(f"segments have category_id {bad} outside class_names (0..{len(class_names) - 1})")
