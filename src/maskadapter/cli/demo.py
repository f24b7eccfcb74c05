"""``maskadapter demo``: a local web page to segment images with any vocabulary (needs ``maskadapter[demo]``)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Optional

from ..constants import IMAGE_SUFFIXES
from .common import add_model_arguments, build_predictor, check_model_arguments

__all__ = ["register", "run_demo"]

_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` sub-command to the ``maskadapter`` parser."""
    p = subparsers.add_parser(
        "demo", help="a local web page to segment images with any vocabulary (pip install 'maskadapter[demo]')",
        description="Load the model once and serve a page (gradio) where you upload or pick an image, type a "
                    "vocabulary, choose semantic / panoptic / instance, and get the overlay, a table of segments, "
                    "the label-map PNG and the segments JSON. With --sam-checkpoint, a SAM tab segments the object "
                    "you click on (or everything) and names it. Requests run one at a time.")
    add_model_arguments(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to serve on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--examples", help="folder of example images to offer (default: a few generated drawings); "
                                      "a class file NAME.txt beside NAME.jpg gives that example its vocabulary")
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    """Check the options, gradio and the weights at once (before torch and gradio are imported: seconds), load
    the model (its errors end here, in the terminal), serve the page."""
    from ..demo.dependencies import check_gradio

    check_gradio()
    if args.adapter_only and not args.sam_checkpoint:
        raise ValueError("--adapter-only has no mask decoder: give --sam-checkpoint PATH to segment with SAM")
    check_model_arguments(args)  # offline without the weights: the message comes now, not after the imports
    examples, allowed = _examples(args.examples)
    from ..demo import MAX_UPLOAD_BYTES, SamTools, build_demo, require_gradio

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry nor version check from gradio
    require_gradio()
    print(f"loading model (preset {args.preset}) ...", file=sys.stderr)
    start = time.perf_counter()
    predictor, sam = _load(args, SamTools)
    print(f"model loaded in {time.perf_counter() - start:.1f} s on {predictor.device} "
          f"(precision {predictor.resolved_precision})" + (f", {sam.name}" if sam else ""), file=sys.stderr)
    if args.host not in _LOCAL_HOSTS:
        print(f"warning: serving on {args.host}: other machines on the network can use this page",
              file=sys.stderr)
    demo = build_demo(predictor, examples=examples, sam=sam)
    print(f"serving on http://{args.host}:{args.port} (Ctrl+C to stop)", file=sys.stderr)
    # SIGTERM ends the command like Ctrl+C does, so the page's temporary files are removed at exit
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        # share=False, not None: gradio would otherwise read GRADIO_SHARE and open a public link; quiet: its
        # own banner (and its share=True hint) would repeat or contradict the lines above
        demo.launch(server_name=args.host, server_port=args.port, allowed_paths=allowed, inbrowser=False,
                    show_error=False, share=False, quiet=True, max_file_size=MAX_UPLOAD_BYTES)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _load(args: argparse.Namespace, tools: Any) -> tuple[Any, Optional[Any]]:
    """The Predictor and, with --sam-checkpoint, the SAM tools: one SAM network serves the SAM tab (prompts and
    everything) and, with --generator sam, the Segment tab."""
    sam = None
    if args.sam_checkpoint:
        from ..distributed import resolve_device

        sam = tools.load(args.sam_checkpoint, args.sam_backend, args.sam_model, resolve_device(args.device))
    # the predictor without SAM (loaded above, once), then given SAM's automatic masks (the SAM tab takes its
    # prompt model from the SAM tools)
    predictor = build_predictor(argparse.Namespace(**{**vars(args), "sam_checkpoint": None, "generator": "preset"}))
    if sam is not None and args.generator == "sam":
        predictor = predictor.with_mask_source(sam.generator)
    return predictor, sam


def _examples(folder_arg: Optional[str]) -> tuple[Optional[list], list[str]]:
    """(example rows, allowed paths) of --examples: images sorted by name, each with the vocabulary of a class
    file of the same name when there is one."""
    if not folder_arg:
        return None, []
    from ..vocabulary import Vocabulary

    folder = Path(folder_arg)
    if not folder.is_dir():
        raise FileNotFoundError(f"--examples folder not found: {folder}")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ValueError(f"--examples folder {folder} has no images ({', '.join(IMAGE_SUFFIXES)})")
    rows: list[Any] = []
    for path in images:
        classes = path.with_suffix(".txt")
        rows.append((str(path), Vocabulary.from_file(classes).to_text()) if classes.is_file() else str(path))
    return rows, [str(folder.resolve())]


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)
