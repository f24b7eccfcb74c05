"""Output formats of batch segmentation: what files one segmented image becomes, and the set's closing files.

An :class:`OutputFormat` names the files of an image (relative paths for its key), writes them, and at the end
writes the dataset-level files from the per-image records. The batch runner (:func:`~maskadapter.inference.batch.
run_batch`) takes a format by name (:data:`NAMES`) or any object with this shape, so a new format is one file.
Importing this package costs no torch: the CLI lists the names and the per-image files before a model loads.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional, Protocol, Sequence, runtime_checkable

from ...fileio import atomic_save_image

if TYPE_CHECKING:
    import numpy as np

    from ..predictor import SegmentationResult

__all__ = ["OutputFormat", "ImageOutput", "DoneImage", "NAMES", "create", "from_description", "save_overlay"]

#: the formats the package ships: name -> module of this package holding its ``Format`` class
_BUILTIN = {"files": "files", "coco": "coco"}
NAMES = tuple(_BUILTIN)


@dataclass(frozen=True)
class ImageOutput:
    """One segmented image, handed to :meth:`OutputFormat.write`."""

    key: str  #: the image's output name (relative, ``/``-separated, no suffix)
    name: str  #: the input's relative file name (``sub/pic.jpg``)
    result: "SegmentationResult"
    data: dict  #: :func:`~maskadapter.inference.writers.result_to_json` of the result
    rgb: "Optional[np.ndarray]"  #: the image [H, W, 3] uint8 when the format ``needs_image``, else None
    task: str  #: the task overlays draw and JSONs name


@dataclass(frozen=True)
class DoneImage:
    """One image segmented by a run, handed to :meth:`OutputFormat.finish` in input order."""

    image_id: int
    name: str
    key: str
    record: dict  #: its record: sizes, summary and the fields :meth:`OutputFormat.write` returned


@runtime_checkable
class OutputFormat(Protocol):
    """What a batch run's files look like (see the module doc)."""

    name: str  #: recorded in the manifest
    needs_image: bool  #: whether :meth:`write` gets the decoded image (overlays)

    def describe(self) -> dict:
        """Everything that changes this format's files, JSON-ready (part of the run's fingerprint)."""

    def paths(self, key: str) -> dict[str, str]:
        """The files of the image ``key``: kind -> path relative to the output folder (distinct per kind)."""

    def write(self, folder: Path, image: ImageOutput) -> dict:
        """Write the files of ``image`` under ``folder`` (atomically); returns fields for its record."""

    def finish(self, folder: Path, head: dict, images: Iterable[DoneImage]) -> list[str]:
        """Write the dataset-level files from the done images (``head``: the manifest's head, with ``categories``
        and ``run_id``); returns their paths relative to ``folder``."""


def create(name: str, tasks: Sequence[str] = ("semantic",), overlays: Optional[bool] = None,
           overlay_task: str = "semantic") -> OutputFormat:
    """The built-in format ``name`` (:data:`NAMES`); ``overlays`` None: that format's default."""
    if name not in _BUILTIN:
        raise ValueError(f"format must be one of {', '.join(NAMES)}, got {name!r}")
    module = importlib.import_module(f"{__name__}.{_BUILTIN[name]}")
    return module.Format(tasks=tuple(tasks), overlays=overlays, overlay_task=overlay_task)


def from_description(description: Any) -> OutputFormat:
    """The built-in format a manifest describes (:meth:`OutputFormat.describe`); ValueError for another."""
    if not isinstance(description, dict) or description.get("name") not in _BUILTIN:
        raise ValueError(f"output format {description!r} is not a built-in one ({', '.join(NAMES)})")
    settings = {k: description[k] for k in ("tasks", "overlays", "overlay_task") if k in description}
    return create(description["name"], **settings)


def save_overlay(path: Path, image: ImageOutput) -> None:
    """Write the overlay of ``image`` (its segments of ``image.task`` over the RGB image) to ``path`` atomically."""
    from ..writers import overlay_image  # torch

    if image.rgb is None:
        raise ValueError("an overlay needs the image: the format must set needs_image")
    atomic_save_image(overlay_image(image.rgb, image.result, image.task), path)
