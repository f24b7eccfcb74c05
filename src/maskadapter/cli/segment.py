"""``maskadapter segment``: run a Predictor over images and write overlays, label maps and JSON."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..constants import IMAGE_SUFFIXES, TASKS
from ..vocabulary import FILE_SYNTAX, INLINE_SYNTAX
from .common import add_model_arguments, build_predictor, check_output_folder

__all__ = ["register", "run_segment"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``segment`` sub-command."""
    p = subparsers.add_parser("segment", help="segment images with any vocabulary",
                              description="Segment images (files or folders) into the classes of a vocabulary and "
                                          "write, per image, an overlay PNG, a label-map PNG and a JSON of segments.")
    p.add_argument("images", nargs="+", help="image files or folders of images")
    vocab = p.add_mutually_exclusive_group(required=True)
    vocab.add_argument("--vocab", help=f"the classes inline: {INLINE_SYNTAX}")
    vocab.add_argument("--vocab-file", help=f"a class file: {FILE_SYNTAX}")
    p.add_argument("--task", choices=list(TASKS), default="semantic")
    p.add_argument("--things", help="classes that are countable objects (panoptic/instance), comma separated; "
                                    "default: classes matching a COCO thing class")
    p.add_argument("-o", "--output", required=True, help="output folder (created if missing)")
    add_model_arguments(p)
    p.set_defaults(func=_cmd_segment)


def _expand_images(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ValueError(f"folder {path} has no images ({', '.join(IMAGE_SUFFIXES)})")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such image or folder: {path}")
    return files


def _cmd_segment(args: argparse.Namespace) -> int:
    return run_segment(args, _expand_images(args.images))


def run_segment(args: argparse.Namespace, images: list[Path]) -> int:
    """Segment every image; print a summary table; exit status 1 if any image failed."""
    from tqdm import tqdm

    from ..images import to_rgb_tensor
    from ..inference.writers import label_map_image, overlay_image, result_to_json
    from ..vocabulary import Vocabulary

    vocab = Vocabulary.from_file(args.vocab_file) if args.vocab_file else Vocabulary.parse(args.vocab)
    things = [t.strip() for t in args.things.split(",") if t.strip()] if args.things else None
    out_dir = check_output_folder(args.output)
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
