"""``--format files``: per image ``KEY_labels.png`` (class index per pixel), ``KEY.json`` and (optional)
``KEY_overlay.png`` beside each other, for people and scripts that read images one by one."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional, Sequence

from ...fileio import atomic_save_image, atomic_write_json
from . import DoneImage, ImageOutput, save_overlay

__all__ = ["Format"]


class Format:
    """Per-image PNGs and JSON (see the module doc); no dataset-level files."""

    name = "files"

    def __init__(self, tasks: Sequence[str] = ("semantic",), overlays: Optional[bool] = None,
                 overlay_task: str = "semantic") -> None:
        self.overlays = True if overlays is None else bool(overlays)
        self.overlay_task = overlay_task
        self.needs_image = self.overlays

    def describe(self) -> dict:
        """Name, overlays and the task they draw."""
        return {"name": self.name, "overlays": self.overlays, "overlay_task": self.overlay_task}

    def paths(self, key: str) -> dict[str, str]:
        """``labels``, ``json`` and (with overlays) ``overlay``."""
        out = {"labels": f"{key}_labels.png", "json": f"{key}.json"}
        if self.overlays:
            out["overlay"] = f"{key}_overlay.png"
        return out

    def write(self, folder: Path, image: ImageOutput) -> dict:
        """Label map, JSON and overlay of one image."""
        from ..writers import label_map_image  # torch

        paths = self.paths(image.key)
        atomic_save_image(label_map_image(image.result), folder / paths["labels"])
        atomic_write_json(folder / paths["json"], image.data)
        if self.overlays:
            save_overlay(folder / paths["overlay"], image)
        return {}

    def finish(self, folder: Path, head: dict, images: Iterable[DoneImage]) -> list[str]:
        """Nothing beyond the manifest."""
        return []
