"""Turning a :class:`SegmentationResult` into files people and programs read: overlay, label map, JSON.

Shared by the CLI, the demo, the evaluation cache and the batch path, so all write the same formats. Label
maps are PNGs of the class index per pixel: uint8 with 255 = no class for up to 255 classes, uint16 with
65535 = no class above that (:func:`encode_label_map` / :func:`decode_label_map`, the one encoder).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from .predictor import SegmentationResult
from .visualize import overlay_segments

__all__ = ["label_map_image", "overlay_image", "result_to_json", "display_segments", "encode_label_map",
           "decode_label_map", "no_class_value"]


def no_class_value(num_classes: int) -> int:
    """The label-map value meaning "no class": 255 for up to 255 classes (uint8), else 65535 (uint16)."""
    return 255 if num_classes <= 255 else 65535


def encode_label_map(semantic: "torch.Tensor | np.ndarray", num_classes: int) -> np.ndarray:
    """Class indices [H, W] (negative = no class) -> uint8 / uint16 array with :func:`no_class_value`."""
    sem = semantic.cpu().numpy() if isinstance(semantic, torch.Tensor) else np.asarray(semantic)
    none = no_class_value(num_classes)
    return np.where(sem < 0, none, sem).astype(np.uint8 if none == 255 else np.uint16)


def decode_label_map(array: np.ndarray, num_classes: int) -> torch.Tensor:
    """The inverse of :func:`encode_label_map`: int64 [H, W] with -1 where no class."""
    sem = np.asarray(array).astype(np.int64)
    sem[sem == no_class_value(num_classes)] = -1
    return torch.from_numpy(sem)


def label_map_image(result: SegmentationResult) -> Image.Image:
    """Semantic label map as a PNG-ready image (:func:`encode_label_map` of the result's semantic map)."""
    if result.semantic is None:
        raise ValueError("the result has no semantic map (predict with 'semantic' in tasks)")
    return Image.fromarray(encode_label_map(result.semantic, len(result.vocabulary)))


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
        inst = result.instances
        rows = []
        for rle, area, box, score, c in zip(inst.rles, inst.areas(), inst.boxes(), inst.scores.tolist(),
                                            inst.classes.tolist()):
            rows.append({"category_id": int(c), "label": result.class_names[int(c)], "score": float(score),
                         "area": area, "bbox": box, "segmentation": rle})
        out["instances"] = rows
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item()
    if isinstance(value, (np.generic,)):
        return value.item()
    return value
