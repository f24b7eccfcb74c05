"""How a :class:`~maskadapter.inference.predictor.Predictor` runs, kept apart from the model: a frozen value.

Change options with ``predictor.with_options(precision="fp32")``, which returns another predictor that shares
the model, the text-embedding cache and the mask generator; the original is never modified.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

from ..constants import PRECISIONS, TASKS

__all__ = ["InferenceOptions", "check_tasks"]


@dataclass(frozen=True)
class InferenceOptions:
    """Run-time choices of a predictor (the preset holds the model's own constants)."""

    #: ``auto`` (bf16 where native and faster, else fp32), ``fp32``, ``bf16`` or ``fp16`` (CUDA only)
    precision: str = "auto"
    #: images with more pixels are refused (from the file header, before decoding)
    max_image_pixels: int = 100_000_000
    #: output maps of larger images are produced at a size scaled down to this many pixels; None (default): at
    #: the image's own size, whatever it is (post-processing works in bands of bounded memory)
    max_output_pixels: Optional[int] = None
    #: memory budget of one band of post-processing, in MiB (peak memory no longer grows with queries x pixels)
    band_mb: int = 256
    #: resize mask logits to the output size before semantic inference; None: the preset's choice
    postprocess_before_inference: Optional[bool] = None
    #: wait for the device at each stage boundary so ``timings`` are exact (costs a sync per stage on CUDA)
    sync_timings: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if int(self.max_image_pixels) < 1:
            raise ValueError(f"max_image_pixels must be positive, got {self.max_image_pixels}")
        if int(self.band_mb) < 1:
            raise ValueError(f"band_mb must be positive, got {self.band_mb}")
        if self.max_output_pixels is not None and int(self.max_output_pixels) < 1:
            raise ValueError(f"max_output_pixels must be positive or None, got {self.max_output_pixels}")

    def replace(self, **changes: Any) -> "InferenceOptions":
        """A copy with ``changes`` applied (unknown names are a TypeError naming them)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"unknown inference option(s) {unknown}; known: "
                            f"{[f.name for f in dataclasses.fields(self)]}")
        return dataclasses.replace(self, **changes)


def check_tasks(tasks: Union[str, Sequence[str]], name: str = "tasks") -> tuple[str, ...]:
    """``tasks`` (a sequence, one task name, or names separated by commas as on the command line) as a tuple;
    ValueError naming ``name`` unless it is a non-empty subset of ``TASKS`` (the one place tasks are checked)."""
    given = tasks
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    tasks = tuple(tasks)
    if not tasks or any(t not in TASKS for t in tasks):
        raise ValueError(f"{name} must name some of {', '.join(TASKS)}, got {given!r}")
    return tasks
