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

from ..vocabulary import Vocabulary
from .predictor import SegmentationResult
from .visualize import overlay_segments

__all__ = ["label_map_image", "overlay_image", "result_to_json", "display_segments", "encode_label_map",
           "decode_label_map", "no_class_value", "categories_json"]


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
    """A segment-id map int32 [H, W] (0 = none) and the dicts (``id``, ``category_id``, ``score``) to draw for ``task``.

    Instances: one segment each (a class's instances get distinct shades), the highest score on top where
    masks overlap; instances hidden entirely by higher-scoring ones stay listed (the legend counts them). A
    missing output is an error, never a silent fallback to another task.
    """
    if task not in ("semantic", "panoptic", "instance"):
        raise ValueError(f"task must be 'semantic', 'panoptic' or 'instance', got {task!r}")
    output = {"semantic": result.semantic, "panoptic": result.panoptic, "instance": result.instances}[task]
    if output is None:
        raise ValueError(f"the result has no {task} output (predict with {task!r} in tasks)")
    if task == "panoptic":
        return result.panoptic.cpu().numpy().astype(np.int32), [dict(s) for s in result.segments]
    if task == "instance":
        inst = result.instances
        ids = np.zeros(result.image_size, dtype=np.int32)
        masks, scores = inst["masks"], inst["scores"].float()
        for i in torch.argsort(scores, stable=True).tolist():  # highest score painted last, on top
            ids[masks[i].cpu().numpy()] = i + 1
        return ids, [{"id": i + 1, "category_id": int(c), "score": float(scores[i])}
                     for i, c in enumerate(inst["classes"].tolist())]
    sem = result.semantic.cpu().numpy()
    present = [int(c) for c in np.unique(sem) if c >= 0]
    return np.where(sem < 0, 0, sem + 1).astype(np.int32), [{"id": c + 1, "category_id": c} for c in present]


def overlay_image(image: np.ndarray, result: SegmentationResult, task: str = "semantic",
                  **overlay_options: Any) -> Image.Image:
    """The segments of ``task`` over ``image`` [H, W, 3] uint8 at the result's size (the image resized if needed).

    Segments are labelled, classes listed in a legend, and an empty result reads "no segments found".
    """
    if image.shape[:2] != tuple(result.image_size):
        image = np.asarray(Image.fromarray(image).resize(result.image_size[::-1], Image.BILINEAR))
    ids, segments = display_segments(result, task)
    return overlay_segments(image, ids, segments, result.class_names, **overlay_options)


def _bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return [0, 0, 0, 0]
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def categories_json(vocabulary: Vocabulary) -> list[dict[str, Any]]:
    """The vocabulary as JSON categories: ``id`` (the class index of the label maps), ``name``, ``synonyms``."""
    return [{"id": i, "name": syns[0], "synonyms": list(syns)} for i, syns in enumerate(vocabulary.classes)]


def result_to_json(result: SegmentationResult, file_name: str, task: str) -> dict[str, Any]:
    """A JSON-ready dict: vocabulary, COCO-panoptic-style ``segments_info``, instances with RLE masks."""
    H, W = result.image_size
    out: dict[str, Any] = {
        "file_name": file_name, "height": H, "width": W, "task": task,
        "categories": categories_json(result.vocabulary),
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
