"""Class-agnostic masks from SAM or SAM 2 automatic mask generation (optional extra ``maskadapter[sam]``).

The adapter classifies these masks on its own (no in-vocabulary head, no void). ``segment-anything`` and
``sam2`` are imported only when a generator is built, with an install hint when they are missing.
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import Any, Callable, Literal, Optional, Protocol, Union

import numpy as np
import torch

__all__ = ["MaskProposer", "SamMaskGenerator"]

logger = logging.getLogger(__name__)


class MaskProposer(Protocol):
    """Anything that proposes binary masks for an RGB image: ``(image [H, W, 3] uint8) -> masks [N, H, W] bool, scores [N]``."""

    def __call__(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        ...


def _import(module: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"the SAM generator needs the '{module.split('.')[0]}' package: "
                          f"pip install 'maskadapter[{extra}]'") from exc


class SamMaskGenerator:
    """SAM (``backend="sam"``, model types vit_h/vit_l/vit_b) or SAM 2 (``backend="sam2"``, a config name)
    automatic mask generation; extra keyword arguments go to the automatic mask generator."""

    def __init__(
        self,
        checkpoint: Union[str, os.PathLike],
        backend: Literal["sam", "sam2"] = "sam",
        model_type: str = "vit_h",
        device: Union[str, torch.device] = "cpu",
        min_area: int = 0,
        builder: Optional[Callable[..., Any]] = None,
        **generator_kwargs: Any,
    ) -> None:
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"SAM checkpoint not found: {checkpoint}")
        self.min_area = min_area
        if builder is not None:  # injected (tests, custom models): builder(checkpoint) -> generator
            self._generator = builder(checkpoint, **generator_kwargs)
        elif backend == "sam":
            sam = _import("segment_anything", "sam")
            if model_type not in sam.sam_model_registry:
                raise ValueError(f"unknown SAM model type {model_type!r}; one of {sorted(sam.sam_model_registry)}")
            model = sam.sam_model_registry[model_type](checkpoint=str(checkpoint)).to(device)
            self._generator = sam.SamAutomaticMaskGenerator(model, **generator_kwargs)
        elif backend == "sam2":
            build = _import("sam2.build_sam", "sam2")
            amg = _import("sam2.automatic_mask_generator", "sam2")
            model = build.build_sam2(model_type, str(checkpoint), device=str(device))
            self._generator = amg.SAM2AutomaticMaskGenerator(model, **generator_kwargs)
        else:
            raise ValueError(f"backend must be 'sam' or 'sam2', got {backend!r}")

    def __call__(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks [N, H, W] bool (largest first) and their predicted IoU scores [N] for ``image`` [H, W, 3] uint8."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be an RGB uint8 array [H, W, 3], got {image.dtype} {image.shape}")
        records = [r for r in self._generator.generate(image) if int(r["area"]) > self.min_area]
        H, W = image.shape[:2]
        if not records:
            return torch.zeros((0, H, W), dtype=torch.bool), torch.zeros(0)
        records.sort(key=lambda r: -int(r["area"]))
        masks = torch.from_numpy(np.stack([np.asarray(r["segmentation"], dtype=bool) for r in records]))
        scores = torch.tensor([float(r.get("predicted_iou", 1.0)) for r in records])
        logger.info("SAM proposed %d masks", len(records))
        return masks, scores
