"""Download and cache the released weights from the Hugging Face hub, with errors that say what to do."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Union

from .errors import WeightsUnavailableError
from .presets import HUB_REPO, PresetConfig

__all__ = ["WeightsUnavailableError", "resolve_weights"]

logger = logging.getLogger(__name__)


def resolve_weights(preset: PresetConfig, weights: Optional[Union[str, os.PathLike]] = None,
                    cache_dir: Optional[Union[str, os.PathLike]] = None) -> Path:
    """Local path of the preset's checkpoint: ``weights`` if given, else the hub file (downloaded once)."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
        return path
    from huggingface_hub import hf_hub_download

    url = f"https://huggingface.co/{HUB_REPO}/blob/main/{preset.weights_file}"
    try:
        return Path(hf_hub_download(HUB_REPO, preset.weights_file, cache_dir=cache_dir,
                                    library_name="maskadapter"))
    except Exception as exc:  # offline, no such file, hub down: all end the same way for the user
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        raise WeightsUnavailableError(
            f"preset {preset.name!r} needs {preset.weights_file} from the Hugging Face repo {HUB_REPO}, "
            f"which could not be downloaded ({reason}).\nDownload it on a machine with internet ({url}) and "
            f"pass it with --weights PATH (CLI) or Predictor.from_checkpoint(PATH, {preset.name!r}).") from exc
