"""``maskadapter demo``: a local web page to segment images with any vocabulary (needs ``maskadapter[demo]``)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from ..constants import IMAGE_SUFFIXES
from .common import add_model_arguments, build_predictor

__all__ = ["register", "run_demo"]

_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` sub-command to the ``maskadapter`` parser."""
    p = subparsers.add_parser(
        "demo", help="a local web page to segment images with any vocabulary (pip install 'maskadapter[demo]')",
        description="Load the model once and serve a page (gradio) where you upload or pick an image, type a "
                    "vocabulary, choose semantic / panoptic / instance, and get the overlay, a table of segments, "
                    "the label-map PNG and the segments JSON. Requests run one at a time.")
    add_model_arguments(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to serve on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--examples", help="folder of example images to offer (default: a few generated drawings)")
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    """Check gradio, load the model (errors such as missing weights end here, in the terminal), serve the page."""
    from ..demo import build_demo, require_gradio

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry nor version check from gradio
    require_gradio()  # before the model load: a missing extra is reported at once
    examples, allowed = None, []
    if args.examples:
        folder = Path(args.examples)
        if not folder.is_dir():
            raise FileNotFoundError(f"--examples folder not found: {folder}")
        examples = sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not examples:
            raise ValueError(f"--examples folder {folder} has no images ({', '.join(IMAGE_SUFFIXES)})")
        allowed = [str(folder.resolve())]
    print(f"loading model (preset {args.preset}) ...", file=sys.stderr)
    start = time.perf_counter()
    predictor = build_predictor(args)
    print(f"model loaded in {time.perf_counter() - start:.1f} s on {predictor.device} "
          f"(precision {predictor.resolved_precision})", file=sys.stderr)
    if args.host not in _LOCAL_HOSTS:
        print(f"warning: serving on {args.host}: other machines on the network can use this page",
              file=sys.stderr)
    demo = build_demo(predictor, examples=examples)
    print(f"serving on http://{args.host}:{args.port} (Ctrl+C to stop)", file=sys.stderr)
    # SIGTERM ends the command like Ctrl+C does, so the page's temporary files are removed at exit
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        demo.launch(server_name=args.host, server_port=args.port, allowed_paths=allowed, inbrowser=False,
                    show_error=False)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)
