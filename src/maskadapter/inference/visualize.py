"""Overlays people can read: translucent segment colours, boundaries, a label on every segment and a legend."""

from __future__ import annotations

import colorsys
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["palette", "overlay_segments"]


def palette(n: int, seed: int = 0) -> np.ndarray:
    """``n`` distinct, fairly saturated RGB colours [n, 3] uint8 (golden-ratio hue steps, deterministic)."""
    hues = (seed * 0.1 + np.arange(n) * 0.6180339887) % 1.0
    rows = [colorsys.hsv_to_rgb(h, 0.65 + 0.3 * ((i * 7) % 3) / 2, 0.95 - 0.25 * ((i * 5) % 2))
            for i, h in enumerate(hues)]
    return (np.array(rows).reshape(n, 3) * 255).round().astype(np.uint8)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # scalable on Pillow >= 10.1
    except TypeError:  # older Pillow: fixed bitmap font
        return ImageFont.load_default()


def _label_point(mask: np.ndarray) -> tuple[int, int]:
    """A point well inside ``mask`` (the pixel farthest from its bounding-box border among mask pixels)."""
    ys, xs = np.nonzero(mask)
    cy, cx = np.median(ys), np.median(xs)
    i = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
    return int(xs[i]), int(ys[i])


def overlay_segments(
    image: np.ndarray,
    segment_map: np.ndarray,
    segments: Sequence[dict],
    class_names: Sequence[str],
    alpha: float = 0.55,
    legend: bool = True,
) -> Image.Image:
    """Blend ``segments`` of ``segment_map`` [H, W] (ids; 0 = nothing) over ``image`` [H, W, 3] uint8.

    Each segment dict has ``id`` and ``category_id`` (an index into ``class_names``). Segments of one
    class share its colour; the output has exactly the image's size, with the class name written on
    each segment and, where the image is large enough, a legend box of classes by area.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != segment_map.shape:
        raise ValueError(f"image [H, W, 3] and segment_map [H, W] must match, got {image.shape} and "
                         f"{segment_map.shape}")
    colors = palette(max(len(class_names), 1))
    out = image.astype(np.float32)
    edges = np.zeros(segment_map.shape, dtype=bool)
    edges[:, 1:] |= segment_map[:, 1:] != segment_map[:, :-1]
    edges[1:, :] |= segment_map[1:, :] != segment_map[:-1, :]
    areas: dict[int, int] = {}
    for seg in segments:
        mask = segment_map == seg["id"]
        color = colors[seg["category_id"] % len(colors)].astype(np.float32)
        out[mask] = (1 - alpha) * out[mask] + alpha * color
        areas[seg["category_id"]] = areas.get(seg["category_id"], 0) + int(mask.sum())
    out[edges] = 255
    canvas = Image.fromarray(out.round().clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    H, W = segment_map.shape
    font = _font(max(10, min(H, W) // 40))
    for seg in segments:
        mask = segment_map == seg["id"]
        if mask.sum() < 0.002 * H * W:  # too small to carry a readable label
            continue
        _draw_label(draw, _label_point(mask), class_names[seg["category_id"]], font)
    if legend and min(H, W) >= 160 and areas:
        _draw_legend(draw, areas, class_names, colors, font, H * W)
    return canvas


def _draw_label(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, font: ImageFont.ImageFont) -> None:
    left, top, right, bottom = draw.textbbox(xy, text, font=font, anchor="mm")
    draw.rectangle((left - 2, top - 1, right + 2, bottom + 1), fill=(0, 0, 0))
    draw.text(xy, text, fill=(255, 255, 255), font=font, anchor="mm")


def _draw_legend(draw: ImageDraw.ImageDraw, areas: dict[int, int], class_names: Sequence[str],
                 colors: np.ndarray, font: ImageFont.ImageFont, total: int,
                 max_rows: Optional[int] = 12) -> None:
    rows = sorted(areas.items(), key=lambda kv: -kv[1])[:max_rows]
    texts = [f"{class_names[c]}  {100 * a / total:.1f}%" for c, a in rows]
    line_h = max(draw.textbbox((0, 0), t, font=font)[3] for t in texts) + 4
    width = max(draw.textlength(t, font=font) for t in texts) + line_h + 12
    draw.rectangle((4, 4, 4 + width, 8 + line_h * len(texts)), fill=(0, 0, 0))
    for i, ((cls, _), text) in enumerate(zip(rows, texts)):
        y = 6 + i * line_h
        draw.rectangle((8, y + 2, 8 + line_h - 6, y + line_h - 4), fill=tuple(int(v) for v in colors[cls]))
        draw.text((12 + line_h - 4, y), text, fill=(255, 255, 255), font=font)
