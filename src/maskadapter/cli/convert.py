"""``maskadapter convert``: an official ``.pth`` checkpoint to safetensors (keys unchanged)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["register", "run_convert"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``convert`` sub-command."""
    p = subparsers.add_parser("convert", help="convert an official .pth checkpoint to safetensors",
                              description="Read an official checkpoint (weights only, never executing pickled "
                                          "code) and write its tensors, keys unchanged, to a safetensors file.")
    p.add_argument("src", help="input checkpoint (.pth with 'model' or a bare state dict, or .safetensors)")
    p.add_argument("dst", help="output .safetensors file")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.set_defaults(func=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    """Convert and print the tensor count per official part."""
    src, dst = Path(args.src), Path(args.dst)
    if dst.suffix != ".safetensors":
        print(f"error: output file must end in .safetensors, got {dst}", file=sys.stderr)
        return 2
    if dst.exists() and not args.force:
        print(f"error: {dst} exists; pass --force to overwrite", file=sys.stderr)
        return 2
    from ..checkpoint import convert_checkpoint

    counts = convert_checkpoint(src, dst)
    width = max(len(k) for k in counts)
    print(f"converted {src} -> {dst} ({dst.stat().st_size / 2**20:.1f} MiB)")
    for part, n in counts.items():
        print(f"  {part:<{width}}  {n:>5} tensors")
    return 0
