"""``maskadapter train``: run a training recipe (stage 1 or 2), single process or under ``torchrun``.

    maskadapter train --data coco:ann.json,images/ --init fcclip-large --output-dir runs/mine --val-fraction 0.1
    maskadapter train --config configs/fcclip_large_stage2.yaml --set run.output_dir=runs/s2 solver.lr=5e-5
    maskadapter train --config configs/fcclip_large_stage2.yaml --output-dir runs/s2 --resume
    torchrun --nproc-per-node 4 -m maskadapter train --config configs/fcclip_large_stage2.yaml ...
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["register", "run_train"]

_EPILOG = """\
Your own data (--data): coco:ANNOTATIONS.json,IMAGES_DIR (COCO instances, polygons or RLE),
panoptic:PANOPTIC.json,IMAGES_DIR[,PNG_DIR] (COCO panoptic; `segment --format coco` writes it) or
labels:IMAGES_DIR,LABELS_DIR,CLASS_FILE (label PNGs, 255 ignored) - the same spelling `eval --dataset` takes.
--init PRESET fine-tunes that preset's released model (a preset JSON starts from random weights) with the
official stage-2 recipe (--stage 1: the GT-mask warm-up); at the end, OUTPUT_DIR/model.safetensors (the best
checkpoint as a complete model) and OUTPUT_DIR/classes.txt work with `segment --weights` and `demo --weights`.
Overrides use dotted keys and YAML values: --set solver.lr=2e-4 train.matcher=hungarian solver.steps=[100,200].
Several processes or machines: torchrun --nproc-per-node N -m maskadapter train --config ... (NCCL on GPUs,
gloo on CPU); solver.batch_size is the global batch. --resume continues from <output_dir>/last.pt (or the given
file), which must come from the same config."""


def _add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="training recipe (YAML), e.g. configs/fcclip_large_stage2.yaml")
    own = p.add_argument_group("fine-tune on your own data (instead of --config)")
    own.add_argument("--data", help="coco:ANN.json,IMAGES | panoptic:PAN.json,IMAGES[,PNGS] | labels:IMAGES,LABELS,CLASSES")
    own.add_argument("--init", help="preset to start from: fcclip-large, maftp-base, maftp-large or a preset JSON")
    own.add_argument("--weights", help="starting checkpoint instead of the preset's released one")
    own.add_argument("--stage", type=int, choices=[1, 2], default=2, help="2: mixed masks (default); 1: GT masks")
    own.add_argument("--epochs", type=int, default=20, help="passes over the training images (default 20)")
    own.add_argument("--batch-size", type=int, default=8, help="global batch size (default 8)")
    own.add_argument("--image-size", type=int, help="training size (default 1024 in stage 2, 768 in stage 1)")
    held = own.add_mutually_exclusive_group()
    held.add_argument("--val-fraction", type=float, default=0.0, help="share of the images held out for evaluation")
    held.add_argument("--val-data", help="held-out data in the --data spelling (e.g. coco:val.json,images/)")
    own.add_argument("--augmentation", choices=["lsj", "resize"], default=None,
                     help="lsj: official scale jitter + crop (default); resize: fixed size + flip (cacheable)")
    own.add_argument("--cache-features", action="store_true",
                     help="compute the frozen CLIP features once into OUTPUT_DIR/feature_cache (needs "
                          "--augmentation resize; the size is shown first)")
    own.add_argument("--cache-limit-gb", type=float, default=32.0, help="refuse a larger feature cache (default 32)")
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
    from ..training.config import config_to_dict
    from ..training.trainer import NonFiniteLossError, Trainer

    overrides = [item for group in args.overrides for item in group]
    config = _config(args, overrides)
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
        if result.model_file:
            print(f"  complete model: {result.model_file} - segment with: maskadapter segment IMAGES --preset "
                  f"{config.model.preset} --weights {result.model_file} --vocab-file "
                  f"{result.model_file.parent / 'classes.txt'} -o OUT")
            _print_held_out(config, result)
        if result.skipped_images:
            print(f"  {result.skipped_images} images without a usable mask were skipped")
        sys.stdout.flush()
    return 0


def _print_held_out(config: Any, result: Any) -> None:
    """The finished model on the held-out images of your own data (mIoU, PQ, AP as the data allows)."""
    from ..evaluation.runner import summary_metrics
    from ..training.data import held_out_dataset
    from ..training.evaluate import evaluate_held_out

    held_out = held_out_dataset(config)
    if held_out is None:
        return
    folder = result.output_dir / "held-out-eval"
    results = evaluate_held_out(result.model_file, config.model.preset, held_out, folder)
    scores = ", ".join(f"{name.split(' ', 1)[1]} {value:.1f}" for name, value in summary_metrics(results).items()
                       if value is not None)
    print(f"  held-out images ({len(held_out)}): {scores} ({folder / 'results.json'})")


def _config(args: argparse.Namespace, overrides: list) -> Any:
    """The config of ``--config`` or, for ``--data``, the fine-tuning recipe; ``--set`` applied last."""
    from ..training.config import load_config
    from ..training.recipes import finetune_config

    if (args.config is None) == (args.data is None):
        raise ValueError("give --config RECIPE.yaml, or --data DATA with --init PRESET (fine-tuning on your data)")
    if args.config is not None:
        if args.init or args.cache_features or args.val_fraction or args.val_data or args.augmentation:
            raise ValueError("--init, --val-*, --augmentation and --cache-features go with --data; with --config "
                             "use --set data.* / eval.* keys")
        if args.output_dir:
            overrides.append(f"run.output_dir={args.output_dir}")
        return load_config(args.config, overrides)
    if not args.init or not args.output_dir:
        raise ValueError("--data needs --init PRESET and --output-dir DIR")
    return finetune_config(args.data, args.init, args.output_dir, stage=args.stage, epochs=args.epochs,
                           batch_size=args.batch_size, val_fraction=args.val_fraction, val_data=args.val_data,
                           image_size=args.image_size, augmentation=args.augmentation or "lsj",
                           cache_features=args.cache_features, cache_limit_gb=args.cache_limit_gb,
                           weights=args.weights, overrides=overrides)
