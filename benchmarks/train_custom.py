"""Benchmark: fine-tuning on your own data with and without the feature cache (``data.cache_features``).

A fabricated, learnable dataset is written as a ``labels:`` folder (images, label PNGs, class file): textured shapes
of :class:`maskadapter.data.synthetic.SyntheticShapes` whose texture decides the class. CLIP has random weights here,
so its text tower knows nothing of the class names; as in ``configs/synthetic.yaml`` the class embeddings are the
texture prototypes (CLIP embeddings of pure texture patches). Stage 1 (GT masks), fixed-size resize + flip.

Per architecture (the tiny test preset; FC-CLIP ConvNeXt-L dimensions, random weights) and per mode (no cache /
cache) a fresh child process trains ``--epochs`` epochs and reports: seconds per epoch (the cached run: the first
epoch includes building the cache, later epochs are reported separately), peak RSS, cache size, and the held-out
mIoU (GT-mask classification of the held-out images) before training (untrained adapter) and after, with chance
= 100 / number of classes as reference.

    python benchmarks/train_custom.py                                  # tiny 64 images at 512 px + ConvNeXt-L rows
    python benchmarks/train_custom.py --large-images 16 --large-size 256 --large-epochs 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from common import run_child  # benchmarks/common.py (scripts run from their folder)

REPO = Path(__file__).resolve().parents[1]
NUM_CLASSES = 6


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))


def write_dataset(folder: Path, num_images: int, size: int) -> str:
    """The fabricated ``labels:`` dataset; returns its spelling."""
    import numpy as np
    from PIL import Image

    from maskadapter.data.synthetic import SyntheticShapes

    ds = SyntheticShapes(num_classes=NUM_CLASSES, size=size, num_images=num_images, seed=7)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    for i in range(len(ds)):
        s = ds[i]
        label = np.full((size, size), 255, np.uint8)
        for mask, c in zip(s["masks"].numpy(), s["labels"].tolist()):
            label[mask] = c
        Image.fromarray(s["image"].permute(1, 2, 0).numpy()).save(folder / "images" / f"{i:03d}.png")
        Image.fromarray(label).save(folder / "labels" / f"{i:03d}.png")
    (folder / "classes.txt").write_text("".join(f"{n}\n" for n in ds.vocabulary.names))
    return f"labels:{folder / 'images'},{folder / 'labels'},{folder / 'classes.txt'}"


def child(spec: dict) -> dict:
    """One training run; prints its measurements as JSON."""
    import torch

    from maskadapter.data.synthetic import SyntheticShapes
    from maskadapter.data.train_datasets import SegmentationTrain
    from maskadapter.training.config import config_from_dict
    from maskadapter.training.data import build_train_dataset
    from maskadapter.training.trainer import Trainer

    torch.set_num_threads(spec["threads"])
    textures = SyntheticShapes(num_classes=NUM_CLASSES, size=64, num_images=1, seed=7)

    class Textured(SegmentationTrain):
        def class_prototypes(self, backbone):  # the texture prototypes: random CLIP knows no class names
            return textures.class_prototypes(backbone)

    cfg = {"name": spec["name"], "model": {"preset": spec["preset"]},
           "data": {"dataset": spec["data"], "augmentation": "resize", "image_size": spec["size"], "text": "prototypes",
                    "val_fraction": 0.25, "cache_features": spec["cache"], "num_workers": 0},
           "train": {"stage": "warmup", "num_gt_masks": 8},
           "solver": {"batch_size": spec["batch"], "max_iter": 10 ** 6, "lr": 2e-3, "steps": [10 ** 6 - 1],
                      "precision": "fp32"},
           "eval": {"dataset": "split", "image_size": spec["size"], "metric": "miou"},
           "run": {"output_dir": spec["out"], "seed": 0, "tensorboard": False, "progress": False,
                   "checkpoint_period": 0, "export_model": False}}
    config = config_from_dict(cfg)
    base = build_train_dataset(config)
    dataset = Textured(base.source, base.transform, seed=0)
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer = Trainer(config, dataset=dataset)
    setup, setup_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    untrained = trainer.evaluate()["mIoU"]
    epochs, cpu = [], []
    for epoch in range(spec["epochs"]):
        tick, cpu_tick = time.perf_counter(), time.process_time()
        trainer.train(stop_after=(epoch + 1) * trainer.steps_per_epoch)
        epochs.append(time.perf_counter() - tick)
        cpu.append(time.process_time() - cpu_tick)
    trained = trainer.evaluate()["mIoU"]
    cache = trainer.feature_cache
    return {"setup_s": setup, "setup_cpu_s": setup_cpu, "epochs_s": epochs, "epochs_cpu_s": cpu, "peak_rss_gb": _status("VmHWM:") / 1e9,
            "cache_gb": cache.total_bytes / 1e9 if cache is not None else 0.0, "untrained": untrained,
            "trained": trained, "train_images": len(dataset), "steps_per_epoch": trainer.steps_per_epoch}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--child")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--large-images", type=int, default=16, help="images of the ConvNeXt-L rows (CPU time)")
    p.add_argument("--large-size", type=int, default=256)
    p.add_argument("--large-epochs", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-large", action="store_true")
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import write_tiny_preset

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tiny = str(write_tiny_preset(tmp / "tiny.json"))
        arches = [("tiny", tiny, args.images, args.size, args.epochs)]
        if not args.skip_large:
            arches.append(("fcclip-large dims", "fcclip-large", args.large_images, args.large_size, args.large_epochs))
        for label, preset, n, size, epochs in arches:
            data = write_dataset(tmp / f"data-{n}-{size}", n, size)
            for cache in (False, True):
                spec = {"name": label, "preset": preset, "data": data, "size": size, "epochs": epochs,
                        "cache": cache, "batch": args.batch, "threads": args.threads,
                        "out": str(tmp / f"run-{label.split()[0]}-{cache}")}
                r = run_child(__file__, spec)
                rows.append((label, n, size, epochs, cache, r))
                print(f"done: {label} cache={cache}: {r}", file=sys.stderr, flush=True)
    print(f"\nheld-out mIoU chance level: {100 / NUM_CLASSES:.1f} ({NUM_CLASSES} classes); stage 1, batch {args.batch}, "
          f"{args.threads} threads, fp32, CPU")
    print("| model | images x px | cache | s/epoch (1st) | s/epoch (later) | CPU s/epoch (later) | peak RSS GB | "
          "cache GB | mIoU untrained | mIoU after N epochs |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, n, size, epochs, cache, r in rows:
        first, later, later_cpu = r["epochs_s"][0], r["epochs_s"][1:], r["epochs_cpu_s"][1:]
        first += r["setup_s"] if cache else 0.0  # the cache is built while the trainer is set up
        later_s = f"{sum(later) / len(later):.1f}" if later else "-"
        later_c = f"{sum(later_cpu) / len(later_cpu):.1f}" if later_cpu else "-"
        print(f"| {label} | {n} x {size} | {'yes' if cache else 'no'} | {first:.1f} | {later_s} | {later_c} | "
              f"{r['peak_rss_gb']:.2f} | {r['cache_gb']:.3f} | {r['untrained']:.1f} | {r['trained']:.1f} "
              f"(N={epochs}) |")
    for label in dict.fromkeys(row[0] for row in rows):
        plain = [r for lab, *_, c, r in rows if lab == label and not c]
        cached = [r for lab, *_, c, r in rows if lab == label and c]
        if plain and cached and len(cached[0]["epochs_s"]) > 1:
            for key, what in (("epochs_s", "wall"), ("epochs_cpu_s", "CPU")):
                p_s = sum(plain[0][key][1:]) / len(plain[0][key][1:])
                c_s = sum(cached[0][key][1:]) / len(cached[0][key][1:])
                print(f"{label}: cached later epochs take {p_s / c_s:.1f}x less {what} time than uncached ones")


if __name__ == "__main__":
    main()
