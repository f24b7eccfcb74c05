"""The ``maskadapter`` command line. Only this module prints; the library logs."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from . import __version__
from .checkpoint import CheckpointError, convert_checkpoint

__all__ = ["main"]


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
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``maskadapter`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (CheckpointError, FileNotFoundError, ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
