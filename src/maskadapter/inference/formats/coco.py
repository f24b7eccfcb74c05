"""``--format coco``: dataset-level COCO files for evaluation tools.

Per image: ``semantic/KEY.png`` (class index per pixel, as ``--format files``), ``panoptic/KEY.png`` (with the
panoptic task) and ``overlays/KEY.png`` (optional). At the end, from the records:

* ``panoptic.json``: panopticapi's format. Each PNG holds segment ids as ``id = R + 256 G + 65536 B``
  (0 = no segment); each annotation has ``image_id``, ``file_name`` (the PNG, relative to ``panoptic/``) and
  ``segments_info`` with ``id``, ``category_id``, ``iscrowd`` (0), ``bbox`` ``[x, y, w, h]`` and ``area`` (plus
  ``isthing`` and ``score``); ``categories`` carry ``isthing``;
* ``instances.json``: a COCO results list (``pycocotools.coco.COCO.loadRes``): ``image_id``, ``category_id``,
  ``segmentation`` (RLE, ``counts`` a string), ``score``, ``bbox``, ``area``.

Category ids are vocabulary indices (0-based), the values of the label maps. Large files are streamed from
temporary spools (a million images never sit in memory).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from ...constants import TASKS
from ...fileio import JsonSpool, atomic_path, atomic_save_image, write_json_with_arrays
from . import DoneImage, ImageOutput, save_overlay

__all__ = ["Format", "CocoWriter", "PANOPTIC_JSON", "INSTANCES_JSON", "segments_info", "instance_results",
           "panoptic_png"]

PANOPTIC_JSON = "panoptic.json"
INSTANCES_JSON = "instances.json"
_SEGMENT_KEYS = ("id", "category_id", "iscrowd", "bbox", "area", "isthing", "score")
_INSTANCE_KEYS = ("category_id", "segmentation", "score", "bbox", "area")


class Format:
    """Label maps, panoptic PNGs and overlays in folders; ``panoptic.json`` / ``instances.json`` at the end."""

    name = "coco"

    def __init__(self, tasks: Sequence[str] = ("semantic",), overlays: Optional[bool] = None,
                 overlay_task: str = "semantic") -> None:
        self.tasks = tuple(t for t in TASKS if t in tasks or t == "semantic")
        self.overlays = False if overlays is None else bool(overlays)
        self.overlay_task = overlay_task
        self.needs_image = self.overlays

    def describe(self) -> dict:
        """Name, tasks, overlays and the task they draw."""
        return {"name": self.name, "tasks": list(self.tasks), "overlays": self.overlays,
                "overlay_task": self.overlay_task}

    def paths(self, key: str) -> dict[str, str]:
        """``semantic``, with the panoptic task ``panoptic``, with overlays ``overlay``."""
        out = {"semantic": f"semantic/{key}.png"}
        if "panoptic" in self.tasks:
            out["panoptic"] = f"panoptic/{key}.png"
        if self.overlays:
            out["overlay"] = f"overlays/{key}.png"
        return out

    def write(self, folder: Path, image: ImageOutput) -> dict:
        """The image's PNGs; its ``segments_info`` and instance results go into its record."""
        from ..writers import label_map_image  # torch

        paths = self.paths(image.key)
        atomic_save_image(label_map_image(image.result), folder / paths["semantic"])
        extra: dict = {}
        if "panoptic" in paths:
            atomic_save_image(panoptic_png(image.result.panoptic), folder / paths["panoptic"])
            extra["segments_info"] = segments_info(image.data)
        if self.overlays:
            save_overlay(folder / paths["overlay"], image)
        if "instance" in self.tasks:
            extra["instances"] = instance_results(image.data)
        return extra

    def finish(self, folder: Path, head: dict, images: Iterable[DoneImage]) -> list[str]:
        """``panoptic.json`` and / or ``instances.json`` of the done images."""
        from ... import __version__

        info = {"description": "maskadapter batch segmentation", "version": __version__, "run_id": head["run_id"]}
        with CocoWriter(folder, self.tasks, head["categories"], info) as writer:
            for done in images:
                writer.add(done.image_id, done.name, self.paths(done.key).get("panoptic", ""), done.record)
            return [p.name for p in writer.finish()]


def segments_info(data: dict) -> list[dict]:
    """panopticapi ``segments_info`` of a :func:`~maskadapter.inference.writers.result_to_json` dict."""
    return [{k: s[k] for k in _SEGMENT_KEYS if k in s} for s in data.get("segments_info", [])]


def instance_results(data: dict) -> list[dict]:
    """COCO instance results (no ``image_id`` yet) of a ``result_to_json`` dict: RLE, score, bbox, area."""
    return [{k: r[k] for k in _INSTANCE_KEYS} for r in data.get("instances", [])]


def panoptic_png(panoptic: Any) -> "PIL.Image.Image":  # noqa: F821
    """The panopticapi PNG (RGB, ``id = R + 256 G + 65536 B``) of segment ids [H, W]."""
    import numpy as np
    from PIL import Image

    from ...data.datasets import id_to_rgb

    ids = panoptic.cpu().numpy() if hasattr(panoptic, "cpu") else np.asarray(panoptic)
    return Image.fromarray(id_to_rgb(ids))


class CocoWriter:
    """Streams per-image records into ``panoptic.json`` and / or ``instances.json`` of ``folder``."""

    def __init__(self, folder: Path, tasks: Sequence[str], cats: list[dict], info: dict) -> None:
        self.folder, self.cats, self.info = Path(folder), cats, info
        self.panoptic = "panoptic" in tasks
        self.instance = "instance" in tasks
        self._stack = contextlib.ExitStack()
        self._images = self._spool() if self.panoptic else None
        self._annotations = self._spool() if self.panoptic else None
        self._instances = self._spool() if self.instance else None

    def _spool(self) -> JsonSpool:
        spool = JsonSpool(self.folder)
        self._stack.callback(spool.close)
        return spool

    def __enter__(self) -> "CocoWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    def add(self, image_id: int, file_name: str, panoptic_path: str, record: dict) -> None:
        """Add one segmented image: its record holds ``height``, ``width``, ``segments_info``, ``instances``;
        ``panoptic_path``: its PNG relative to the output folder (``panoptic/KEY.png``)."""
        if self._images is not None and self._annotations is not None:
            self._images.add({"id": image_id, "file_name": file_name, "height": record["height"],
                              "width": record["width"]})
            self._annotations.add({"image_id": image_id, "file_name": panoptic_path.split("/", 1)[-1],
                                   "segments_info": record.get("segments_info", [])})
        if self._instances is not None:
            for inst in record.get("instances", []):
                self._instances.add({"image_id": image_id, **inst})

    def finish(self) -> list[Path]:
        """Write the JSON files; returns their paths."""
        written = []
        if self._images is not None and self._annotations is not None:
            path = self.folder / PANOPTIC_JSON
            write_json_with_arrays(path, {"info": self.info, "licenses": [], "categories": self.cats},
                                   {"images": self._images, "annotations": self._annotations})
            written.append(path)
        if self._instances is not None:
            path = self.folder / INSTANCES_JSON
            with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
                self._instances.copy_to(out)
            written.append(path)
        return written
