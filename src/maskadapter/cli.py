"""The ``maskadapter`` command line. Only this module prints; the library logs."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from . import __version__
from .checkpoint import CheckpointError, convert_checkpoint
from .cli_segment import add_model_arguments
from .hub import WeightsUnavailableError

__all__ = ["main"]

# Modules adding one sub-command each through ``register(subparsers)``; their heavy imports happen in the
# command function, so ``maskadapter --help`` stays fast.
_COMMAND_MODULES: tuple[str, ...] = ("cli_eval", "cli_prepare", "cli_train", "cli_fuse", "cli_demo")


def _cmd_convert(args: argparse.Namespace) -> int:
    src, dst = Path(args.src), Path(args.dst)
    if dst.suffix != ".safetensors":
        print(f"error: output file must end in .safetensors, got {dst}", file=sys.stderr)
        return 2
    if dst.exists() and not args.force:
        print(f"error: {dst} exists; pass --force to overwrite", file=sys.stderr)
        return 2
    counts = convert_checkpoint(src, dst)
    width = max(len(k) for k in counts)
    print(f"converted {src} -> {dst} ({dst.stat().st_size / 2**20:.1f} MiB)")
    for part, n in counts.items():
        print(f"  {part:<{width}}  {n:>5} tensors")
    return 0


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def _expand_images(paths: Sequence[str]) -> list[Path]:
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
    from .cli_segment import run_segment

    if (args.vocab is None) == (args.vocab_file is None):
        print("error: give exactly one of --vocab or --vocab-file", file=sys.stderr)
        return 2
    return run_segment(args, _expand_images(args.images))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``maskadapter`` command."""
    parser = argparse.ArgumentParser(
        prog="maskadapter", description="Mask-Adapter open-vocabulary segmentation (pure PyTorch).")
    parser.add_argument("--version", action="version", version=f"maskadapter {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details (INFO level)")
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="convert an official .pth checkpoint to safetensors",
                          description="Read an official checkpoint (weights only, never executing pickled "
                                      "code) and write its tensors, keys unchanged, to a safetensors file.")
    conv.add_argument("src", help="input checkpoint (.pth with 'model' or a bare state dict, or .safetensors)")
    conv.add_argument("dst", help="output .safetensors file")
    conv.add_argument("--force", action="store_true", help="overwrite an existing output file")
    conv.set_defaults(func=_cmd_convert)

    seg = sub.add_parser("segment", help="segment images with any vocabulary",
                         description="Segment images (files or folders) into the classes of a vocabulary and write, "
                                     "per image, an overlay PNG, a label-map PNG and a JSON of segments.")
    seg.add_argument("images", nargs="+", help="image files or folders of images")
    seg.add_argument("--vocab", help='classes separated by "," ";" or new lines; synonyms joined by "|", '
                                     'e.g. "cat, sofa|couch, window"')
    seg.add_argument("--vocab-file", help="class file: one class per line, 'id:name,synonym,...' or plain names")
    seg.add_argument("--task", choices=["semantic", "panoptic", "instance"], default="semantic")
    seg.add_argument("--things", help="classes that are countable objects (panoptic/instance), comma separated; "
                                      "default: classes matching a COCO thing class")
    seg.add_argument("-o", "--output", required=True, help="output folder (created if missing)")
    add_model_arguments(seg)
    seg.set_defaults(func=_cmd_segment)
    for module in _COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{module}").register(sub)
    return parser



def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``maskadapter`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (CheckpointError, FileNotFoundError, ValueError, TypeError, ImportError, WeightsUnavailableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
