"""``maskadapter fuse`` and ``maskadapter export``: between and after the training stages.

    maskadapter fuse runs/stage1/best.pt fcclip_cocopan.pth stage1_fused.pth
    maskadapter export runs/stage2/best.pt adapter.safetensors            # trained weights only
    maskadapter export runs/stage2/best.pt model.pth --full                # complete official-layout model
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["register", "run_fuse", "run_export"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``fuse`` and ``export`` sub-commands."""
    f = subparsers.add_parser(
        "fuse", help="combine a stage-1 adapter with an FC-CLIP / MAFT+ checkpoint for stage 2",
        description="As the official tools/weight_fuse_*.py: copy every sem_seg_head* and void* key of the "
                    "segmentor into the stage-1 checkpoint (the stage-1 void embedding is replaced) and save.")
    f.add_argument("stage1", help="stage-1 checkpoint: official file or a `maskadapter train` checkpoint")
    f.add_argument("segmentor", help="fcclip_cocopan.pth ({'model': sd}) or maftp_*.pth (bare state dict)")
    f.add_argument("output", help="fused checkpoint (.pth, official container; or .safetensors)")
    f.add_argument("--base", help="for a training checkpoint: file holding its frozen weights "
                                  "(default: the run's model.weights)")
    f.add_argument("--force", action="store_true", help="overwrite an existing output; fuse a stage-2 model anyway")
    f.set_defaults(func=run_fuse)

    e = subparsers.add_parser(
        "export", help="export a training checkpoint's weights (safetensors or official .pth)",
        description="Write the trained parameters of a `maskadapter train` checkpoint under their official names "
                    "(mask_adapter.*, void_embedding.weight when trained); with --full, on top of the frozen "
                    "parts of the run's initial weights, which is a complete official-layout model.")
    e.add_argument("checkpoint", help="last.pt / best.pt of a training run")
    e.add_argument("output", help=".safetensors (flat) or .pth ({'model': state}, the official container)")
    e.add_argument("--full", action="store_true", help="include CLIP, generator, CDT and void from the base weights")
    e.add_argument("--base", help="file with the frozen weights (default: the run's model.weights)")
    e.add_argument("--force", action="store_true", help="overwrite an existing output file")
    e.set_defaults(func=run_export)


def _refuse_overwrite(path: Path, force: bool) -> bool:
    if path.exists() and not force:
        print(f"error: {path} exists; pass --force to overwrite", file=sys.stderr)
        return True
    return False


def run_fuse(args: argparse.Namespace) -> int:
    """Fuse and print the copied key counts."""
    from ..training.fuse import fuse_checkpoints

    output = Path(args.output)
    if _refuse_overwrite(output, args.force):
        return 2
    counts = fuse_checkpoints(args.stage1, args.segmentor, output, base=args.base, force=args.force)
    print(f"fused {args.stage1} + {args.segmentor} -> {output}: "
          + ", ".join(f"{n} {prefix}* keys" for prefix, n in counts.items()))
    sys.stdout.flush()
    return 0


def run_export(args: argparse.Namespace) -> int:
    """Export and print what was written."""
    from ..checkpoint import OFFICIAL_PARTS
    from ..training.fuse import export_state, save_state

    output = Path(args.output)
    if _refuse_overwrite(output, args.force):
        return 2
    state = export_state(args.checkpoint, full=args.full, base=args.base)
    save_state(state, output, metadata={"format": "pt", "producer": "maskadapter export",
                                        "source": Path(args.checkpoint).name})
    parts: dict[str, int] = {}
    for key in state:
        part = next((p for p in OFFICIAL_PARTS if key.startswith(p + ".")), "(other)")
        parts[part] = parts.get(part, 0) + 1
    print(f"exported {args.checkpoint} -> {output}: " + ", ".join(f"{n} {p}" for p, n in parts.items()))
    sys.stdout.flush()
    return 0
