"""Turning a :class:`SegmentationResult` into files people and programs read: overlay, label map, JSON.

Shared by the CLI and the demo so both write the same formats.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from .inference.predictor import SegmentationResult
from .visualize import overlay_segments

__all__ = ["label_map_image", "overlay_image", "result_to_json", "display_segments"]


def label_map_image(result: SegmentationResult) -> Image.Image:
    """Semantic label map as a PNG-ready image: class index per pixel; 255 (uint8) or 65535 (uint16,
    when there are more than 255 classes) where no class was assigned."""
    if result.semantic is None:
        raise ValueError("the result has no semantic map (predict with 'semantic' in tasks)")
    sem = result.semantic.cpu().numpy()
    if len(result.vocabulary) <= 255:
        return Image.fromarray(np.where(sem < 0, 255, sem).astype(np.uint8))
    return Image.fromarray(np.where(sem < 0, 65535, sem).astype(np.uint16))


def display_segments(result: SegmentationResult, task: str) -> tuple[np.ndarray, list[dict]]:
    """A segment-id map [H, W] (0 = none) and segment dicts to draw for ``task``."""
    if task == "panoptic" and result.panoptic is not None:
        return result.panoptic.cpu().numpy(), result.segments
    if task == "instance" and result.instances is not None:
        ids = np.zeros(result.image_size, dtype=np.int32)
        segments = []
        inst = result.instances
        for i in torch.argsort(inst["scores"].float()).tolist():  # highest score painted last, on top
            ids[inst["masks"][i].cpu().numpy()] = i + 1
        for i in range(len(inst["scores"])):
            if (ids == i + 1).any():
                segments.append({"id": i + 1, "category_id": int(inst["classes"][i])})
        return ids, segments
    if result.semantic is None:
        raise ValueError(f"the result has no {task} output")
    sem = result.semantic.cpu().numpy()
    present = [int(c) for c in np.unique(sem) if c >= 0]
    return np.where(sem < 0, 0, sem + 1), [{"id": c + 1, "category_id": c} for c in present]


def overlay_image(image: np.ndarray, result: SegmentationResult, task: str = "semantic") -> Image.Image:
    """The segments of ``task`` over ``image`` [H, W, 3] uint8 (resized to the result's size if needed)."""
    if image.shape[:2] != tuple(result.image_size):
        image = np.asarray(Image.fromarray(image).resize(result.image_size[::-1], Image.BILINEAR))
    ids, segments = display_segments(result, task)
    return overlay_segments(image, ids, segments, result.class_names)


def _bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return [0, 0, 0, 0]
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def result_to_json(result: SegmentationResult, file_name: str, task: str) -> dict[str, Any]:
    """A JSON-ready dict: vocabulary, COCO-panoptic-style ``segments_info``, instances with RLE masks."""
    H, W = result.image_size
    out: dict[str, Any] = {
        "file_name": file_name, "height": H, "width": W, "task": task,
        "categories": [{"id": i, "name": syns[0], "synonyms": list(syns)}
                       for i, syns in enumerate(result.vocabulary.classes)],
    }
    if result.semantic is not None:
        sem = result.semantic.cpu().numpy()
        values, counts = np.unique(sem[sem >= 0], return_counts=True)
        out["semantic"] = [{"category_id": int(v), "label": result.class_names[int(v)], "area": int(n)}
                           for v, n in sorted(zip(values, counts), key=lambda vc: -vc[1])]
    if result.panoptic is not None:
        pan = result.panoptic.cpu().numpy()
        out["segments_info"] = [{**{k: _plain(v) for k, v in s.items()}, "iscrowd": 0,
                                 "bbox": _bbox(pan == s["id"])} for s in result.segments]
    if result.instances is not None:
        from pycocotools import mask as mask_util

        inst = result.instances
        rows = []
        for m, score, c in zip(inst["masks"].cpu().numpy(), inst["scores"].tolist(), inst["classes"].tolist()):
            rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            rows.append({"category_id": int(c), "label": result.class_names[int(c)], "score": float(score),
                         "area": int(m.sum()), "bbox": _bbox(m), "segmentation": rle})
        out["instances"] = rows
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item()
    if isinstance(value, (np.generic,)):
        return value.item()
    return value
