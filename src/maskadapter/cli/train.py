"""``maskadapter train``: run a training recipe (stage 1 or 2), single process or under ``torchrun``.

    maskadapter train --config configs/fcclip_large_stage2.yaml --set run.output_dir=runs/s2 solver.lr=5e-5
    maskadapter train --config configs/fcclip_large_stage2.yaml --output-dir runs/s2 --resume
    torchrun --nproc-per-node 4 -m maskadapter train --config configs/fcclip_large_stage2.yaml ...
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["register", "run_train"]

_EPILOG = """\
Overrides use dotted keys and YAML values: --set solver.lr=2e-4 train.matcher=hungarian solver.steps=[100,200].
Several processes or machines: torchrun --nproc-per-node N -m maskadapter train --config ... (NCCL on GPUs,
gloo on CPU); solver.batch_size is the global batch. --resume continues from <output_dir>/last.pt (or the given
file), which must come from the same config."""


def _add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="training recipe (YAML), e.g. configs/fcclip_large_stage2.yaml")
    p.add_argument("--set", dest="overrides", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override config keys (repeatable), e.g. --set solver.lr=2e-4 run.seed=1")
    p.add_argument("--output-dir", help="shortcut for --set run.output_dir=DIR")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                   help="continue from <output_dir>/last.pt, or from CHECKPOINT")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    p.set_defaults(func=run_train)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` sub-command."""
    p = subparsers.add_parser("train", help="train the Mask-Adapter (GT warm-up or mixed masks)",
                              description="Train the Mask-Adapter head from a YAML recipe (configs/*.yaml).",
                              epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_train_arguments(p)


def run_train(args: argparse.Namespace) -> int:
    """Load the config, train, print a summary (rank 0)."""
    from ..distributed import env_rank
    from ..training.config import config_to_dict, load_config
    from ..training.trainer import NonFiniteLossError, Trainer

    overrides = [item for group in args.overrides for item in group]
    if args.output_dir:
        overrides.append(f"run.output_dir={args.output_dir}")
    config = load_config(args.config, overrides)
    main_rank = env_rank() == 0
    if args.print_config:
        print(json.dumps(config_to_dict(config), indent=2))
        return 0
    trainer = Trainer(config, resume=args.resume)
    try:
        result = trainer.train()
    except NonFiniteLossError as exc:
        if main_rank:
            print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        trainer.close()
    if main_rank:
        print(f"finished {config.name}: {result.iteration} iterations in {result.seconds / 60:.1f} min")
        print(f"  last checkpoint: {result.last_checkpoint}")
        if result.train_stats:
            print(f"  last step: loss {result.train_stats['loss']:.4f} (ce {result.train_stats['loss_ce']:.4f}, "
                  f"cos {result.train_stats['loss_cosine']:.4f}), lr {result.train_stats['lr']:.3g}")
        if result.metrics:
            print(f"  GT-mask accuracy {result.metrics['accuracy']:.2f}, mIoU {result.metrics['mIoU']:.2f}"
                  f" (best {config.eval.metric}: {result.best_metric:.2f}, {result.output_dir / 'best.pt'})")
        if result.skipped_images:
            print(f"  {result.skipped_images} images without a usable mask were skipped")
        sys.stdout.flush()
    return 0
