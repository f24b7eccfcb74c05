"""Content hashes that tell runs apart: SHA-256 of files (streamed, remembered per file) and of weights in memory.

A run's outputs are trusted on resume only if everything that made them is the same; a hash that samples a
few values per tensor would call two different checkpoints equal, so these read every byte.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Optional, Union

__all__ = ["sha256_file", "cached_sha256", "tensors_sha256"]

PathLike = Union[str, os.PathLike]
_CHUNK = 1 << 20


def sha256_file(path: PathLike) -> str:
    """The SHA-256 (hex) of a file's bytes, read in 1 MiB chunks (memory stays flat for any size)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def cached_sha256(path: PathLike, cache_dir: Optional[PathLike] = None) -> str:
    """:func:`sha256_file`, remembered per file by its real path, size and modification time (a 1.7 GB weights
    file is read once); one small JSON per file under ``cache_dir`` (default: the user cache folder's
    ``file-hashes``). A cache that cannot be written only costs the next call a re-read."""
    from .constants import user_cache_dir
    from .fileio import atomic_write_json

    real = os.path.realpath(path)
    stat = os.stat(real)
    folder = Path(cache_dir) if cache_dir is not None else user_cache_dir("file-hashes")
    entry = folder / f"{hashlib.sha256(real.encode('utf-8', 'surrogateescape')).hexdigest()[:32]}.json"
    stamp = {"path": real, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    with contextlib.suppress(OSError, ValueError):
        cached = json.loads(entry.read_text(encoding="utf-8"))
        if isinstance(cached, dict) and {k: cached.get(k) for k in stamp} == stamp and cached.get("sha256"):
            return str(cached["sha256"])
    digest = sha256_file(real)
    with contextlib.suppress(OSError):
        atomic_write_json(entry, {**stamp, "sha256": digest})
    return digest


def tensors_sha256(named: Iterable[tuple[str, Any]]) -> str:
    """The SHA-256 (hex) of named tensors: each name, dtype, shape and every byte, one tensor at a time (a tensor
    on a GPU is copied to the CPU alone, so memory stays at the largest tensor)."""
    import torch

    h = hashlib.sha256()
    for name, tensor in named:
        t = tensor.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()
