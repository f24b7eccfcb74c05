"""Fine-tuning recipes: a whole training config from your data and a preset, after the official recipes.

``finetune_config("coco:ann.json,images/", "fcclip-large")`` continues training the adapter of the preset's
released checkpoint (its CLIP, mask generator and CDT frozen) on your classes: stage 2 (mixed masks: 16 GT, 8 matched
predictions and their GT; IoU matcher 0.7) by default, stage 1 (32 GT masks) with ``stage=1``. Losses, optimiser,
clipping and the per-variant rules (FC-CLIP: multi-step schedule, weight decay 0.05; MAFT+: poly schedule, weight
decay 2e-5) are the official ones; the length is counted in epochs of your data, with the two learning-rate drops at
88 % and 96 % of it as in the official FC-CLIP schedule, and a held-out evaluation and a checkpoint every epoch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Sequence

from ..data.user_data import load_user_dataset, split_dataset
from ..modeling.build import load_preset
from ..presets import PRESETS
from .config import TrainConfig, apply_overrides

__all__ = ["finetune_config"]


def finetune_config(data: str, init: str, output_dir: str, stage: int = 2, epochs: int = 20, batch_size: int = 8,
                    val_fraction: float = 0.0, val_data: Optional[str] = None, image_size: Optional[int] = None,
                    augmentation: str = "lsj", cache_features: bool = False, cache_limit_gb: float = 32.0,
                    weights: Optional[str] = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """The config of fine-tuning preset ``init`` on ``data`` (a ``coco:`` / ``panoptic:`` / ``labels:`` spelling).

    ``weights``: the starting checkpoint (default: a released preset's own file; a preset JSON starts from random
    weights built from the seed). ``val_fraction`` or ``val_data`` (another spelling) choose the held-out images.
    ``overrides``: ``section.key=value`` strings applied last."""
    if stage not in (1, 2):
        raise ValueError(f"--stage must be 1 (GT-mask warm-up) or 2 (mixed masks), got {stage}")
    if epochs <= 0 or batch_size <= 0:
        raise ValueError(f"--epochs and --batch-size must be positive, got {epochs} and {batch_size}")
    if val_fraction and val_data:
        raise ValueError("give --val-fraction or --val-data, not both")
    preset, _ = load_preset(init)
    dataset = load_user_dataset(data)
    train_images = len(split_dataset(dataset, val_fraction, 0)[0]) if val_fraction else len(dataset)
    batch = min(batch_size, train_images)
    per_epoch = train_images // batch
    max_iter = epochs * per_epoch
    maftp = preset.generator == "maftp"
    released = Path(str(init)).suffix != ".json" and str(init) in PRESETS
    tree: dict[str, Any] = {
        "name": f"finetune-{Path(str(init)).stem}-stage{stage}",
        "model": {"preset": str(init), "weights": weights or ("released" if released else None)},
        "data": {"dataset": data, "image_size": image_size or (1024 if stage == 2 else 768), "text": "clip",
                 "augmentation": augmentation, "val_fraction": val_fraction, "cache_features": cache_features,
                 "cache_limit_gb": cache_limit_gb, "num_workers": 2},
        "train": {"stage": "mixed" if stage == 2 else "warmup", "num_gt_masks": 16 if stage == 2 else 32,
                  "num_pred_masks": 8, "matcher": "iou", "iou_threshold": 0.7},
        "loss": {"ce_weight": 2.0, "cos_weight": 5.0},
        "solver": {"batch_size": batch, "max_iter": max_iter, "lr": 1e-4, "grad_clip": 1.0, "precision": "auto",
                   "weight_decay": 2e-5 if maftp else 0.05, "warmup_iters": 10 if maftp else 0,
                   "schedule": "poly" if maftp else "multistep",
                   "steps": sorted({max(1, math.floor(max_iter * f)) for f in (0.88, 0.96)})},
        "eval": {"dataset": "split" if val_fraction else (val_data or "none"), "period": per_epoch,
                 "image_size": image_size or (1024 if stage == 2 else 768), "metric": "miou"},
        "run": {"output_dir": output_dir, "checkpoint_period": per_epoch, "seed": 123},
    }
    return apply_overrides(tree, overrides)
