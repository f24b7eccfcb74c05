"""The per-image prediction cache of an evaluation: what makes a run resumable and its metrics reproducible.

Layout (``output_dir/predictions``, one set per image, ``<id>`` = image file stem):

* ``<id>.json``: the record, written last (its presence marks the image as done): tasks, image size,
  panoptic ``segments`` (id, category_id, isthing, score, area), ``instances`` (category_id, score, COCO RLE),
  and in ground-truth-mask mode the GT class of each mask with its predicted class;
* ``<id>_sem.png``: semantic map (:func:`~maskadapter.inference.writers.encode_label_map`);
* ``<id>_pan.png``: panoptic ids as RGB (``id = R + 256 G + 65536 B``, 0 = no segment).

``output_dir/cache.json`` records what produced the cache (dataset, classes, model, weights, precision,
mode); a resumed run with another configuration is refused. Every file is written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image

from .. import distributed
from ..data.datasets import SegmentationDataset, id_to_rgb, read_array, rgb_to_id
from ..fileio import atomic_save_image, atomic_write_json
from ..inference.writers import decode_label_map, encode_label_map

__all__ = ["PredictionCache", "CACHE_FORMAT"]

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1


class PredictionCache:
    """Reads and writes the cached predictions of one evaluation (see the module doc)."""

    def __init__(self, output_dir: Path, num_classes: int) -> None:
        self.output_dir = Path(output_dir).expanduser()
        self.dir = self.output_dir / "predictions"
        self.num_classes = num_classes

    @staticmethod
    def config(dataset: SegmentationDataset, model: str, weights: str, gt_masks: bool, precision: str) -> dict:
        """What identifies the predictions: compared with ``cache.json`` on resume."""
        classes = hashlib.sha256(json.dumps(dataset.vocabulary.classes).encode()).hexdigest()[:16]
        return {"format": CACHE_FORMAT, "dataset": dataset.name, "classes": classes,
                "num_classes": len(dataset.vocabulary), "model": model, "weights": weights,
                "gt_masks": bool(gt_masks), "precision": precision}

    def prepare(self, config: dict, resume: bool, rank: int = 0) -> None:
        """Create (or, without ``resume``, empty) the cache on rank 0; refuse one made by another configuration.
        Every rank raises the same error, so none is left waiting in a collective."""
        meta = self.output_dir / "cache.json"
        error = None
        if rank == 0:
            try:
                if not resume and self.dir.exists():
                    shutil.rmtree(self.dir)
                if resume and meta.is_file() and self.dir.is_dir():
                    old = json.loads(meta.read_text(encoding="utf-8"))
                    if old != config:
                        diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
                        error = (f"{self.output_dir} holds predictions of another evaluation (differs in {diff}); "
                                 f"pass --no-resume (resume=False) to replace them, or use another output folder")
                if error is None:
                    self.dir.mkdir(parents=True, exist_ok=True)
                    atomic_write_json(meta, config)
            except (OSError, json.JSONDecodeError) as exc:
                error = f"cannot prepare the prediction cache in {self.output_dir}: {exc}"
        error = distributed.broadcast_object(error)
        if error:
            raise ValueError(error)
        distributed.barrier()

    def paths(self, image_id: str) -> tuple[Path, Path, Path]:
        """Record JSON, semantic PNG and panoptic PNG of an image."""
        return self.dir / f"{image_id}.json", self.dir / f"{image_id}_sem.png", self.dir / f"{image_id}_pan.png"

    def read(self, image_id: str, tasks: tuple[str, ...], gt_masks: bool) -> Optional[dict]:
        """The cached prediction of an image (``record``, ``semantic``, ``panoptic``), or None when absent,
        incomplete, of another mode or unreadable."""
        record_path, sem_path, pan_path = self.paths(image_id)
        if not record_path.is_file():
            return None
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
            if not set(tasks) <= set(record.get("tasks", [])) or bool(record.get("gt_masks")) != gt_masks:
                return None
            pred: dict = {"record": record}
            if "semantic" in tasks:
                pred["semantic"] = decode_label_map(read_array(sem_path), self.num_classes)
            if "panoptic" in tasks:
                pred["panoptic"] = torch.from_numpy(rgb_to_id(read_array(pan_path)))
            return pred
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
            logger.info("cached prediction of %s is unusable (%s); recomputing it", image_id, exc)
            return None

    def write(self, image_id: str, size: tuple[int, int], tasks: tuple[str, ...], gt_masks: bool, outputs: Any,
              extra: Optional[dict] = None) -> None:
        """Write one image's prediction (record last). ``outputs`` has ``semantic`` [H, W] (-1 = none),
        ``panoptic`` [H, W] + ``segments`` and ``instances`` as the tasks need them."""
        record_path, sem_path, pan_path = self.paths(image_id)
        record: dict = {"image_id": image_id, "height": size[0], "width": size[1], "tasks": list(tasks),
                        "gt_masks": gt_masks, **(extra or {})}
        if "semantic" in tasks:
            atomic_save_image(_image(encode_label_map(outputs.semantic, self.num_classes)), sem_path)
        if "panoptic" in tasks:
            atomic_save_image(_image(id_to_rgb(outputs.panoptic.cpu().numpy())), pan_path)
            record["segments"] = [{"id": int(s["id"]), "category_id": int(s["category_id"]),
                                   "isthing": bool(s.get("isthing", False)), "score": float(s.get("score", 0.0)),
                                   "area": int(s.get("area", 0))} for s in outputs.segments]
        if "instance" in tasks:
            inst = outputs.instances
            record["instances"] = [{"category_id": int(c), "score": float(s), "segmentation": r} for r, s, c
                                   in zip(inst.rles, inst.scores.float().tolist(), inst.classes.tolist())]
        atomic_write_json(record_path, record, indent=None)


def _image(array: np.ndarray) -> "PIL.Image.Image":  # noqa: F821

    return Image.fromarray(array)
