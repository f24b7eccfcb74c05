"""Download and cache the released weights from the Hugging Face hub, with errors that say what to do."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Optional, Union
from urllib.parse import urlparse

from .errors import WeightsUnavailableError
from .presets import HUB_REPO, PresetConfig

__all__ = ["WeightsUnavailableError", "resolve_weights", "weights_url"]

logger = logging.getLogger(__name__)


def resolve_weights(preset: PresetConfig, weights: Optional[Union[str, os.PathLike]] = None,
                    cache_dir: Optional[Union[str, os.PathLike]] = None) -> Path:
    """Local path of the preset's checkpoint: ``weights`` if given, else the hub file (downloaded once).

    Offline (``HF_HUB_OFFLINE=1``, or the hub's host cannot be resolved) a file not yet in the cache fails at once,
    without the hub client's retry loop, with a message naming the file, its address and ``--weights``.
    """
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.exists():  # anything else (a folder, an unreadable file) is for the checkpoint reader to name
            raise FileNotFoundError(f"weights file not found: {path}")
        return path
    from huggingface_hub import constants, hf_hub_download

    try:  # already downloaded: no network at all
        return Path(hf_hub_download(HUB_REPO, preset.weights_file, cache_dir=cache_dir, local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the cache (or a broken cache entry): download below
        pass
    if constants.HF_HUB_OFFLINE:
        raise _unavailable(preset, "HF_HUB_OFFLINE is set and the file is not in the cache")
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError as exc:
        raise _unavailable(preset, f"cannot resolve {host}: {exc.strerror or exc}; are you offline?") from exc
    try:
        return Path(hf_hub_download(HUB_REPO, preset.weights_file, cache_dir=cache_dir, library_name="maskadapter"))
    except Exception as exc:  # no such file, hub down, connection lost: all end the same way for the user
        raise _unavailable(preset, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc


def weights_url(preset: PresetConfig) -> str:
    """The direct download address of the preset's checkpoint (the file itself, not the hub's web page of it)."""
    return f"https://huggingface.co/{HUB_REPO}/resolve/main/{preset.weights_file}"


def _unavailable(preset: PresetConfig, reason: str) -> WeightsUnavailableError:
    url = weights_url(preset)
    return WeightsUnavailableError(
        f"preset {preset.name!r} needs {preset.weights_file} from the Hugging Face repo {HUB_REPO}, which could not "
        f"be downloaded ({reason}). Download it on a machine with internet (curl -LO {url}) and pass it with "
        f"--weights PATH (CLI) or Predictor.from_checkpoint(PATH, {preset.name!r}).")
