"""Atomic file writes: every file the package writes appears whole or not at all.

A file is written to a hidden temporary name beside its destination and renamed over it with
``os.replace`` (atomic on POSIX and Windows within one file system), so a crash, a kill or a full disk
never leaves a half-written output that a later run would trust.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, Iterator, Union

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_save_image",
           "is_temporary"]

PathLike = Union[str, os.PathLike]
_TMP_MARK = ".tmp-"


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``, on error removed.

    The temporary name keeps the destination's suffix (so writers that pick a format from it work) and
    starts with a dot (so folder listings skip it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}{_TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def is_temporary(path: PathLike) -> bool:
    """True for a leftover temporary file of :func:`atomic_path` (a writer that was killed)."""
    name = Path(path).name
    return name.startswith(".") and _TMP_MARK in name


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: PathLike, obj: Any, indent: Union[int, None] = 1) -> None:
    """Write ``obj`` as JSON (UTF-8, non-ASCII kept) to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False))


def atomic_save_image(image: "PIL.Image.Image", path: PathLike, **save_kwargs: Any) -> None:  # noqa: F821
    """Save a PIL image to ``path`` atomically (format from the suffix)."""
    with atomic_path(path) as tmp:
        image.save(tmp, **save_kwargs)
