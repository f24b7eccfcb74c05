"""The ``maskadapter`` command line (``maskadapter ...`` or ``python -m maskadapter ...``).

One module per command, each with ``register(subparsers)``; shared options live in :mod:`.common`. Building
the parser imports neither torch nor the model code, so ``--help`` answers at once; a command imports what it
needs when it runs. Only this package prints; the library logs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from .. import __version__
from ..errors import CheckpointError, WeightsUnavailableError
from . import convert, demo, eval as eval_cmd, fuse, merge, prepare, segment, train

__all__ = ["main", "build_parser"]

#: Libraries that attach their own log handler (their records would otherwise also reach the root handler).
_SELF_LOGGING = ("huggingface_hub",)

#: Sub-command modules, in the order ``--help`` lists them.
COMMANDS = (segment, merge, demo, eval_cmd, prepare, train, fuse, convert)


def build_parser(commands: Sequence = COMMANDS) -> argparse.ArgumentParser:
    """The argument parser of the ``maskadapter`` command (``commands``: the sub-command modules to add)."""
    parser = argparse.ArgumentParser(
        prog="maskadapter", description="Mask-Adapter open-vocabulary segmentation (pure PyTorch).")
    parser.add_argument("--version", action="version", version=f"maskadapter {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details (INFO level)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in commands:
        module.register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None, commands: Sequence = COMMANDS) -> int:
    """Entry point of the ``maskadapter`` console script; returns the exit status.

    Bad input ends with one ``error:`` line on stderr: status 2 for an unusable checkpoint, 1 otherwise.
    """
    args = build_parser(commands).parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    for name in _SELF_LOGGING:  # libraries with a handler of their own: print their lines once, not twice
        logging.getLogger(name).propagate = False
    try:
        return args.func(args)
    except CheckpointError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, TypeError, ImportError, WeightsUnavailableError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    """A multi-line message on one line: lines joined by "; ", except after a line that ends with ":"."""
    text = ""
    for line in (part.strip() for part in str(exc).splitlines()):
        if line:
            text += ("" if not text else " " if text.endswith(":") else "; ") + line
    return text
