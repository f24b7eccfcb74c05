"""Options and helpers shared by the commands: the model options of segment / demo / eval and the predictor
they describe. Nothing here imports torch until a command runs."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ..constants import PRECISIONS

__all__ = ["add_model_arguments", "check_model_arguments", "build_predictor", "build_sam", "text_cache_setting",
           "check_output_folder", "say"]


def add_model_arguments(parser: argparse.ArgumentParser, sam: bool = True, precision: str = "auto") -> None:
    """The options that choose and run a model (shared by segment, demo and eval): preset, weights, SAM,
    device, precision, text cache. :func:`build_predictor` reads them."""
    parser.add_argument("--preset", default="fcclip-large",
                        help="fcclip-large | maftp-base | maftp-large, or a preset JSON file (default fcclip-large)")
    parser.add_argument("--weights", help="checkpoint file (default: download the preset's weights once)")
    parser.add_argument("--adapter-only", action="store_true",
                        help="--weights holds the adapter (maskadapter export output, a stage-1 checkpoint, or any "
                             "checkpoint whose decoder is to be ignored): masks come from SAM, prompts or you")
    parser.add_argument("--clip-weights", help="with --adapter-only: a file with the CLIP weights "
                                               "(backbone.clip_model.*), e.g. the preset's released checkpoint")
    if sam:
        parser.add_argument("--generator", choices=["preset", "sam"], default="preset",
                            help="mask generator: the preset's decoder, or SAM automatic masks (needs --sam-checkpoint)")
        parser.add_argument("--sam-checkpoint", help="SAM / SAM 2 checkpoint for --generator sam and prompts")
        parser.add_argument("--sam-model", default=None,
                            help="SAM model type (vit_h, vit_l, vit_b) or SAM 2 config (sam2.1_hiera_l, ...); "
                                 "default: read from the checkpoint's weights (else its released file name)")
        parser.add_argument("--sam-backend", choices=["sam", "sam2"], default=None,
                            help="default: read from the checkpoint's weights")
    else:
        parser.set_defaults(generator="preset", sam_checkpoint=None, sam_model=None, sam_backend=None)
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--precision", choices=[p for p in PRECISIONS], default=precision,
                        help=f"numeric precision (default {precision}; auto = bf16 only where it is native and "
                             "faster; fp16 needs CUDA)")
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument("--text-cache-dir",
                       help="folder of the persistent text-embedding cache (default $MASKADAPTER_TEXT_CACHE or "
                            "~/.cache/maskadapter/text)")
    cache.add_argument("--no-text-cache", action="store_true", help="keep text embeddings in memory only")


def text_cache_setting(args: argparse.Namespace) -> Any:
    """What ``--text-cache-dir`` / ``--no-text-cache`` ask for: a folder, None (the default folder) or False."""
    if getattr(args, "no_text_cache", False):
        return False
    return args.text_cache_dir


def check_model_arguments(args: argparse.Namespace, weights_available: bool = True) -> None:
    """Check the options of :func:`add_model_arguments` without importing torch: their combinations, that the
    named files exist, the preset name, and (``weights_available``) that a released preset's weights are in the
    hub cache or can be downloaded (offline, WeightsUnavailableError at once). ValueError / FileNotFoundError
    name the option."""
    if args.clip_weights and not args.adapter_only:
        raise ValueError("--clip-weights goes with --adapter-only")
    if args.adapter_only and not args.weights:
        raise ValueError("--adapter-only needs --weights PATH (the adapter file, e.g. from maskadapter export)")
    if args.generator == "sam" and not args.sam_checkpoint:
        raise ValueError("--generator sam needs --sam-checkpoint PATH")
    if args.precision == "fp16" and str(args.device or "").startswith("cpu"):
        raise ValueError("--precision fp16 needs a CUDA device (on a CPU use fp32 or bf16)")
    for option in ("weights", "clip_weights", "sam_checkpoint"):
        path = getattr(args, option, None)
        if path and not Path(path).expanduser().exists():  # a folder in its place: the checkpoint reader says so
            raise FileNotFoundError(f"--{option.replace('_', '-')} file not found: {path}")
    preset_file = str(args.preset).endswith(".json") or Path(args.preset).is_file()
    if preset_file and not Path(args.preset).is_file():
        raise FileNotFoundError(f"--preset file not found: {args.preset}")
    if preset_file:
        return
    from ..presets import get_preset

    preset = get_preset(args.preset)  # ValueError listing the presets
    if weights_available and not args.weights:
        from ..hub import resolve_weights  # at call time: the hub module may be replaced (tests)

        resolve_weights(preset)


def build_predictor(args: argparse.Namespace, sam: Any = None, **options: Any) -> Any:
    """The Predictor the arguments of :func:`add_model_arguments` ask for (preset name or JSON file, weights,
    adapter only, ``--generator sam``); ``options`` are extra
    :class:`~maskadapter.inference.options.InferenceOptions` values. ``sam``: a SAM network already loaded
    (:func:`build_sam`), so one network serves both the automatic masks and the prompts."""
    from ..distributed import resolve_device
    from ..inference.predictor import Predictor
    from ..modeling.load import ADAPTER_PARTS, load_model

    check_model_arguments(args, weights_available=False)  # the download, if any, happens when the model loads
    device = resolve_device(args.device)
    source = None
    if args.generator == "sam":
        from ..modeling.generators.sam import SamMaskGenerator

        source = SamMaskGenerator(sam if sam is not None else build_sam(args, device))
    # the preset is resolved once, here, for the whole command
    model, preset = load_model(args.preset, args.weights, parts=ADAPTER_PARTS if args.adapter_only else None,
                               clip_weights=args.clip_weights)
    return Predictor(model, preset, device=device, precision=args.precision,
                     text_cache_dir=text_cache_setting(args), mask_source=source, **options)


def build_sam(args: argparse.Namespace, device: Any = None) -> Any:
    """The SAM / SAM 2 network of ``--sam-checkpoint`` (backend and model type from the file when not given)."""
    from ..distributed import resolve_device
    from ..modeling.generators.sam import load_sam

    return load_sam(args.sam_checkpoint, args.sam_backend, args.sam_model,
                    device if device is not None else resolve_device(args.device))


def check_output_folder(path: str) -> Path:
    """``path`` as a folder that exists (created) and is writable; ValueError naming it otherwise."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"output {folder} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create the output folder {folder}: {exc.strerror or exc}") from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"output folder {folder} is not writable")
    return folder


def say(message: str, quiet: bool = False) -> None:
    """A status line on stderr (results go to stdout)."""
    if not quiet:
        print(message, file=sys.stderr, flush=True)
