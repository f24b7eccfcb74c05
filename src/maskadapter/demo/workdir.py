"""Work folders of the demo: one per run under the system's temporary directory, with an owner file, so that
a later start removes the folders of killed runs."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional, Union

from ..fileio import atomic_write_text

logger = logging.getLogger(__name__)


WORK_PREFIX = "maskadapter-demo-"

OWNER_FILE = "owner.pid"
#: What the SAM tab says when the demo runs without SAM.

_ORPHAN_AGE_S = 3600.0  # work folders without an owner file (older versions) are removed after this age

_KEEP_REQUEST_DIRS = 8  # downloads of older requests are deleted (gradio has copied them to its cache by then)


def make_work_dir() -> Path:
    """A new ``maskadapter-demo-*`` folder in the temporary directory, owned by this process (``owner.pid``)."""
    path = Path(tempfile.mkdtemp(prefix=WORK_PREFIX))
    atomic_write_text(path / OWNER_FILE, str(os.getpid()))
    return path


def keep_gradio_files_in(work: Path) -> Path:
    """Point gradio's upload cache into the work folder ``work`` (``GRADIO_TEMP_DIR``, which gradio reads each time
    it stores a file), so the removal of work folders removes it too; returns the cache folder. A
    ``GRADIO_TEMP_DIR`` the user set (not one of ours) is kept."""
    current = os.environ.get("GRADIO_TEMP_DIR")
    if current and not Path(current).parent.name.startswith(WORK_PREFIX):
        return Path(current)
    cache = work / "gradio"
    os.environ["GRADIO_TEMP_DIR"] = str(cache)
    return cache


def remove_stale_work_dirs(root: Optional[Union[str, os.PathLike]] = None) -> list[Path]:
    """Remove the ``maskadapter-demo-*`` folders under ``root`` (default: the temporary directory) of ended runs:
    their owner process is gone, or (older versions) they have no owner file and are over an hour old. Only
    this user's folders are touched; returns the removed ones."""
    removed = []
    for path in Path(root or tempfile.gettempdir()).glob(WORK_PREFIX + "*"):
        try:
            if path.is_symlink() or not path.is_dir() or (hasattr(os, "getuid") and path.stat().st_uid != os.getuid()):
                continue
            if not _ended(path):
                continue
        except OSError:  # removed meanwhile by another run
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    if removed:
        logger.info("removed %d work folders of ended demo runs", len(removed))
    return removed


def _ended(path: Path) -> bool:
    """Whether the run that made work folder ``path`` has ended."""
    try:
        pid = int((path / OWNER_FILE).read_text(encoding="utf-8").strip())
    except FileNotFoundError:
        return time.time() - path.stat().st_mtime > _ORPHAN_AGE_S
    except (ValueError, OSError):
        return False
    return pid != os.getpid() and not _pid_alive(pid)


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":  # os.kill(pid, 0) would stop the process on Windows: keep the folder
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _request_dir(root: Path) -> Path:
    """A fresh directory under ``root`` for one request's downloads; the oldest beyond a few are removed."""
    root.mkdir(parents=True, exist_ok=True)
    old = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    for stale in old[:max(0, len(old) - _KEEP_REQUEST_DIRS + 1)]:
        shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=root))
