"""Facts used in several places of the package: pixel statistics, file suffixes, task names, cache folders.

Nothing here imports torch, so the command line can read these while printing ``--help``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PIXEL_MEAN", "PIXEL_STD", "IMAGE_SUFFIXES", "TASKS", "PRECISIONS",
           "CACHE_ENV", "user_cache_dir"]

#: CLIP's RGB normalisation on the 0-255 scale (open_clip's OPENAI_DATASET_MEAN / STD times 255), the
#: ``MODEL.PIXEL_MEAN`` / ``PIXEL_STD`` of every official config.
PIXEL_MEAN = (122.7709383, 116.7460125, 104.09373615)
PIXEL_STD = (68.5005327, 66.6321579, 70.32316305)

#: File suffixes read as images when a folder is given (lower case).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

#: Outputs a prediction can have.
TASKS = ("semantic", "panoptic", "instance")

#: Numeric precisions of inference and training. ``auto`` means bf16 where it is native and measurably faster
#: than fp32, fp32 elsewhere; ``fp16`` (CUDA only) is the official training AMP.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

#: Environment variable naming the cache root (default ``$XDG_CACHE_HOME/maskadapter`` or ``~/.cache/maskadapter``).
CACHE_ENV = "MASKADAPTER_CACHE"


def user_cache_dir(*parts: str) -> Path:
    """The user's cache folder for maskadapter (``$MASKADAPTER_CACHE``, else ``$XDG_CACHE_HOME/maskadapter``,
    else ``~/.cache/maskadapter``), joined with ``parts``; nothing is created."""
    root = os.environ.get(CACHE_ENV)
    if root:
        base = Path(root).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "maskadapter"
    return base.joinpath(*parts)
