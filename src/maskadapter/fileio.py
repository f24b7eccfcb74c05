"""Atomic file writes: every file the package writes appears whole or not at all.

A file is written to a hidden temporary name beside its destination and renamed over it with
``os.replace`` (atomic on POSIX and Windows within one file system), so a crash, a kill or a full disk
never leaves a half-written output that a later run would trust.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator, Union

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_save_image",
           "is_temporary", "remove_stale_temporaries", "JsonSpool", "write_json_with_arrays"]

PathLike = Union[str, os.PathLike]
_TMP_MARK = ".tmp-"
_TMP_PID = re.compile(r"^\..*\.tmp-(\d+)-[0-9a-f]{8}")


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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # exists (another user's), or cannot be told: keep its file
    return True


def remove_stale_temporaries(folder: PathLike) -> list[Path]:
    """Delete the temporary files under ``folder`` whose writer process is gone (killed mid-write); returns them.

    Files of a live process (same machine) are kept: it may still be writing them.
    """
    removed = []
    for root, dirs, files in os.walk(folder):
        for name in files:
            match = _TMP_PID.match(name) if is_temporary(name) else None
            if match and not _alive(int(match.group(1))):
                path = Path(root) / name
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path)
    return removed


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


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


class JsonSpool:
    """The items of one JSON array, written one by one to an anonymous temporary file in ``folder``."""

    def __init__(self, folder: PathLike) -> None:
        self.file: IO[str] = tempfile.TemporaryFile("w+", encoding="utf-8", dir=folder)
        self.count = 0

    def add(self, item: Any) -> None:
        """Append one item (JSON-serialisable)."""
        self.file.write(("," if self.count else "") + _dumps(item))
        self.count += 1

    def copy_to(self, out: IO[str]) -> None:
        """Write ``[item, ...]`` to ``out``."""
        self.file.flush()
        self.file.seek(0)
        out.write("[")
        shutil.copyfileobj(self.file, out)
        out.write("]")

    def close(self) -> None:
        """Delete the temporary file."""
        self.file.close()


def write_json_with_arrays(path: PathLike, head: dict, arrays: dict[str, JsonSpool]) -> None:
    """Write ``{**head, name: [spooled items], ...}`` to ``path`` atomically without holding the items."""
    text = _dumps(head)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        out.write(text[:-1])
        for i, (name, spool) in enumerate(arrays.items()):
            out.write(("," if (i or head) else "") + _dumps(name) + ":")
            spool.copy_to(out)
        out.write("}")
