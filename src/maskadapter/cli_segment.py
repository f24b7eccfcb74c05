"""``maskadapter segment``: run a Predictor over images and write overlays, label maps and JSON."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .export import label_map_image, overlay_image, result_to_json
from .modeling.text import Vocabulary

__all__ = ["run_segment", "build_predictor"]


def build_predictor(args: argparse.Namespace):
    """The Predictor the arguments ask for (preset name or JSON file, weights, SAM)."""
    from .inference.predictor import Predictor
    from .modeling.build import build_model, load_preset_file

    kwargs = dict(device=args.device, precision=args.precision, text_cache_dir=args.text_cache_dir)
    if args.generator == "sam":
        from .modeling.generators.sam import SamMaskGenerator

        if not args.sam_checkpoint:
            raise ValueError("--generator sam needs --sam-checkpoint PATH")
        kwargs["mask_generator"] = SamMaskGenerator(args.sam_checkpoint, args.sam_backend, args.sam_model,
                                                    device=args.device)
    if Path(args.preset).suffix == ".json":
        preset, arch = load_preset_file(args.preset)
        if not args.weights:
            raise ValueError(f"a preset file needs --weights (preset {preset.name!r} has no released weights)")
        return Predictor.from_checkpoint(args.weights, preset, arch, **kwargs)
    if args.weights:
        return Predictor.from_checkpoint(args.weights, args.preset, **kwargs)
    return Predictor.from_pretrained(args.preset, **kwargs)


def run_segment(args: argparse.Namespace, images: list[Path]) -> int:
    """Segment every image; print a summary table; exit status 1 if any image failed."""
    from tqdm import tqdm

    from .preprocess import to_rgb_tensor

    vocab = Vocabulary.from_file(args.vocab_file) if args.vocab_file else Vocabulary.parse(args.vocab)
    things = [t.strip() for t in args.things.split(",") if t.strip()] if args.things else None
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    predictor = build_predictor(args)
    tasks = ("semantic",) if args.task == "semantic" else ("semantic", args.task)
    rows, failures = [], 0
    for path in tqdm(images, desc="segment", unit="img", file=sys.stderr):
        start = time.perf_counter()
        try:
            rgb = to_rgb_tensor(path)
            result = predictor.predict(rgb, vocab, tasks=tasks, things=things)
        except (ValueError, OSError) as exc:
            failures += 1
            tqdm.write(f"error: {path}: {exc}", file=sys.stderr)
            continue
        image = rgb.permute(1, 2, 0).numpy()
        overlay_image(image, result, args.task).save(out_dir / f"{path.stem}_overlay.png")
        label_map_image(result).save(out_dir / f"{path.stem}_labels.png")
        data = result_to_json(result, path.name, args.task)
        (out_dir / f"{path.stem}.json").write_text(json.dumps(data, indent=1), encoding="utf-8")
        rows.append((path.name, result, data, time.perf_counter() - start))
    _print_summary(rows, args.task, out_dir)
    if failures:
        print(f"{failures} of {len(images)} images failed", file=sys.stderr)
    return 1 if failures else 0


def _print_summary(rows: list, task: str, out_dir: Path) -> None:
    if not rows:
        return
    name_w = max(5, *(len(r[0]) for r in rows))
    print(f"{'image':<{name_w}}  {'size':>9}  {'segments':>8}  {'time':>6}  top classes (share of pixels)")
    for name, result, data, seconds in rows:
        H, W = result.image_size
        total = H * W
        count = len(data.get("segments_info", data.get("instances", data.get("semantic", []))))
        top = ", ".join(f"{s['label']} {100 * s['area'] / total:.0f}%" for s in data.get("semantic", [])[:4])
        print(f"{name:<{name_w}}  {f'{W}x{H}':>9}  {count:>8}  {seconds:5.1f}s  {top}")
    print(f"outputs ({task}) written to {out_dir}/: <name>_overlay.png, <name>_labels.png, <name>.json")
