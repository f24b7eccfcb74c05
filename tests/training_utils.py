"""Helpers shared by the training tests: a tiny preset JSON file and small synthetic configs."""

from __future__ import annotations

from pathlib import Path

from conftest import tiny_architecture, tiny_preset, write_tiny_preset  # noqa: F401 (re-exported)


def synthetic_config(tmp_path: Path, stage: str = "warmup", **sections: dict) -> dict:
    """A nested config dict for a fast synthetic run in ``tmp_path`` (sections are merged in)."""
    preset = tmp_path / "tiny_preset.json"
    tmp_path.mkdir(parents=True, exist_ok=True)
    if not preset.exists():
        write_tiny_preset(preset)
    cfg = {
        "name": "test",
        "model": {"preset": str(preset)},
        "data": {"dataset": "synthetic", "text": "prototypes", "synthetic_num_classes": 8, "synthetic_size": 64,
                 "synthetic_num_images": 16, "num_workers": 0},
        "train": {"stage": stage, "num_gt_masks": 8 if stage == "warmup" else 4, "num_pred_masks": 2},
        "solver": {"batch_size": 4, "max_iter": 4, "lr": 1e-3, "steps": [3], "precision": "fp32",
                   "weight_decay": 0.05},
        "run": {"output_dir": str(tmp_path / "run"), "seed": 0, "checkpoint_period": 2, "tensorboard": False,
                "progress": False, "log_period": 1},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    return cfg
