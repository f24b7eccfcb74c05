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


def write_own_dataset(folder: Path, num_images: int = 6, size: tuple[int, int] = (48, 64), seed: int = 0) -> dict:
    """A small learnable dataset in all three formats: each image is a colour background (class ``sky``) with one
    rectangle whose colour decides its class (``red``, ``green``, ``blue``).

    Writes ``images/*.png``, ``instances.json`` (polygons; image 0 also gets a crowd annotation), ``panoptic.json``
    + ``panoptic/*.png``, ``labels/*.png`` + ``classes.txt``. Returns the paths and, per image, the rectangles
    ``(x0, y0, x1, y1, class index)`` (class indices: red 0, green 1, blue 2, sky 3)."""
    import json

    import numpy as np
    from PIL import Image

    colours = [(200, 30, 30), (30, 180, 40), (30, 40, 200), (150, 200, 240)]
    names = ["red", "green", "blue", "sky"]
    h, w = size
    rng = np.random.default_rng(seed)
    for sub in ("images", "panoptic", "labels"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    images, anns, pan_anns, boxes = [], [], [], []
    for i in range(num_images):
        c = int(i % 3)
        x0, y0 = int(rng.integers(2, w // 3)), int(rng.integers(2, h // 3))
        x1, y1 = x0 + int(rng.integers(w // 4, w // 2)), y0 + int(rng.integers(h // 4, h // 2))
        image = np.empty((h, w, 3), np.uint8)
        image[:] = colours[3]
        image[y0:y1, x0:x1] = colours[c]
        image = np.clip(image.astype(int) + rng.integers(-10, 10, image.shape), 0, 255).astype(np.uint8)
        name = f"img{i:02d}.png"
        Image.fromarray(image).save(folder / "images" / name)
        label = np.full((h, w), 3, np.uint8)
        label[y0:y1, x0:x1] = c
        Image.fromarray(label).save(folder / "labels" / name)
        pan = np.full((h, w, 3), 0, np.uint8)
        pan[..., 0] = 1
        pan[y0:y1, x0:x1, 0] = 2
        Image.fromarray(pan).save(folder / "panoptic" / name)
        images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
        anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": c + 1, "iscrowd": 0,
                     "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]], "area": (x1 - x0) * (y1 - y0)})
        pan_anns.append({"image_id": i + 1, "file_name": name, "segments_info": [
            {"id": 1, "category_id": 4, "iscrowd": 0}, {"id": 2, "category_id": c + 1, "iscrowd": 0}]})
        boxes.append((x0, y0, x1, y1, c))
    anns.append({"id": len(anns) + 1, "image_id": 1, "category_id": 1, "iscrowd": 1,
                 "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]], "area": 16})
    cats = [{"id": k + 1, "name": n, "isthing": int(k < 3)} for k, n in enumerate(names)]
    (folder / "instances.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                       "categories": cats[:3]}))
    (folder / "panoptic.json").write_text(json.dumps({"images": images, "annotations": pan_anns, "categories": cats}))
    (folder / "classes.txt").write_text("\n".join(names) + "\n")
    return {"root": folder, "images": folder / "images", "instances": folder / "instances.json",
            "panoptic": folder / "panoptic.json", "labels": folder / "labels", "classes": folder / "classes.txt",
            "boxes": boxes, "names": names}
