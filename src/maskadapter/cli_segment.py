"""``maskadapter segment``: run a Predictor over images and write overlays, label maps and JSON."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional

from .export import label_map_image, overlay_image, result_to_json
from .modeling.text import Vocabulary

__all__ = ["run_segment", "build_predictor", "add_model_arguments"]


def add_model_arguments(parser: argparse.ArgumentParser, sam: bool = True, precision: str = "auto") -> None:
    """The options that choose and run a model (shared by segment, demo and eval): preset, weights, SAM,
    device, precision, text cache. ``build_predictor`` reads them."""
    parser.add_argument("--preset", default="fcclip-large",
                        help="fcclip-large | maftp-base | maftp-large, or a preset JSON file (default fcclip-large)")
    parser.add_argument("--weights", help="checkpoint file (default: download the preset's weights once)")
    if sam:
        parser.add_argument("--generator", choices=["preset", "sam"], default="preset",
                            help="mask generator: the preset's decoder, or SAM automatic masks (needs --sam-checkpoint)")
        parser.add_argument("--sam-checkpoint", help="SAM / SAM 2 checkpoint for --generator sam")
        parser.add_argument("--sam-model", default="vit_h", help="SAM model type (vit_h, vit_l, vit_b) or SAM 2 config")
        parser.add_argument("--sam-backend", choices=["sam", "sam2"], default="sam")
    else:
        parser.set_defaults(generator="preset")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=precision,
                        help=f"numeric precision (default {precision}; auto = bf16 only where it is native and faster)")
    parser.add_argument("--text-cache-dir", help="folder to cache text embeddings across runs (default: memory only)")


def _device(requested: Optional[str]) -> str:
    import torch

    return requested or ("cuda" if torch.cuda.is_available() else "cpu")


def build_predictor(args: argparse.Namespace):
    """The Predictor the arguments of :func:`add_model_arguments` ask for (preset name or JSON file, weights, SAM)."""
    from .inference.predictor import Predictor
    from .modeling.build import load_preset_file

    args.device = _device(args.device)
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
