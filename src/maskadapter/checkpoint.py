"""Reading, splitting, strictly loading and converting checkpoints (official ``.pth`` or safetensors).

``.pth`` files are read with ``torch.load(weights_only=True)``: a pickle that would import or call
anything beyond tensors and plain containers is refused with :class:`UnsafeCheckpointError`.
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Union

import torch
from torch import nn

from .errors import CheckpointError, UnsafeCheckpointError

__all__ = [
    "CheckpointError", "UnsafeCheckpointError", "OFFICIAL_PARTS", "SplitCheckpoint",
    "read_state_dict", "load_weights_only", "split_checkpoint", "load_part", "save_safetensors", "convert_checkpoint",
]

logger = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]

#: Official top-level prefixes, each loaded strictly into one module of ours.
OFFICIAL_PARTS = ("backbone.clip_model", "sem_seg_head", "mask_adapter", "void_embedding", "cdt")
#: Prefixes present in some official files that no model uses (training criterion, MAFT+ teacher).
IGNORED_PREFIXES = ("criterion.", "backbone_t.")
# Keys only the adapter has: a stage-1 file written before the official rename stored them under sem_seg_head.
_ADAPTER_MARKERS = ("fuse.weight", "mask_downscaling.0.weight", "final.weight")
_REPORT_LIMIT = 12


@dataclass
class SplitCheckpoint:
    """A state dict split by official prefix: ``parts[name]`` holds keys with ``name + '.'`` removed."""

    parts: dict[str, dict[str, torch.Tensor]]
    ignored: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


def read_state_dict(path: PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or ``.pth`` file (a dict with ``model`` or a bare state dict), on CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): the download or copy was interrupted")
    if _is_safetensors(path):
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise CheckpointError(f"could not read safetensors file {path}: {exc}") from exc
    obj = load_weights_only(path)
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    skipped = sorted(str(k) for k in obj if k not in tensors)
    if skipped:
        logger.warning("%s: ignoring %d non-tensor entries: %s", path, len(skipped), _short(skipped))
    if not tensors:
        raise CheckpointError(f"{path} contains no tensors")
    return tensors


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as f:  # an 8-byte little-endian header size followed by a JSON '{'
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and not zipfile.is_zipfile(path)


def load_weights_only(path: Path) -> object:
    """Unpickle ``path`` with ``torch.load(weights_only=True)`` on CPU; code-referencing pickles are refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        code_ref = next((line.strip().split(" Please use")[0] for line in msg.splitlines()
                         if "GLOBAL" in line or "global" in line), None)
        if code_ref is not None:
            raise UnsafeCheckpointError(
                f"refused to load {path}: its pickle references code, not only tensors ({code_ref}). "
                "maskadapter loads weights only and never runs code from a checkpoint; if you trust the "
                "file, re-save its state dict with plain tensors or as safetensors.") from exc
        detail = next((line.strip() for line in msg.splitlines() if "Unpickler error" in line), "")
        raise CheckpointError(f"could not read {path}: the weights-only loader rejected it, so it is not a "
                              f"plain tensor checkpoint ({detail or type(exc).__name__})") from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"could not read {path}: the file is corrupt or not a PyTorch checkpoint "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc


def split_checkpoint(state: Mapping[str, torch.Tensor], remap_legacy: bool = True) -> SplitCheckpoint:
    """Split ``state`` by the official prefixes; unknown keys and ignored prefixes are listed, not dropped silently.

    With ``remap_legacy``, a stage-1 file written before the official rename (adapter keys under
    ``sem_seg_head.``) has them moved to ``mask_adapter``.
    """
    parts: dict[str, dict[str, torch.Tensor]] = {}
    out = SplitCheckpoint(parts)
    for key, value in state.items():
        part = next((p for p in OFFICIAL_PARTS if key.startswith(p + ".")), None)
        if part is not None:
            parts.setdefault(part, {})[key[len(part) + 1:]] = value
        elif key.startswith(IGNORED_PREFIXES):
            out.ignored.append(key)
        else:
            out.unknown.append(key)
    legacy = parts.get("sem_seg_head", {})
    if remap_legacy and "mask_adapter" not in parts and all(k in legacy for k in _ADAPTER_MARKERS):
        logger.info("remapping legacy stage-1 adapter keys sem_seg_head.* -> mask_adapter.*")
        parts["mask_adapter"] = parts.pop("sem_seg_head")
    if out.ignored:
        logger.info("checkpoint keys not used by any model (ignored): %s", _short(out.ignored))
    return out


def load_part(module: nn.Module, state: Mapping[str, torch.Tensor], part: str) -> None:
    """Load ``state`` into ``module`` strictly; CheckpointError lists missing, unexpected and mis-shaped keys."""
    own = module.state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    mismatched = sorted(f"{k}: checkpoint {list(state[k].shape)} vs model {list(own[k].shape)}"
                        for k in own if k in state and state[k].shape != own[k].shape)
    if missing or unexpected or mismatched:
        lines = [f"checkpoint part '{part}' does not fit {type(module).__name__}:"]
        for title, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                            ("shape mismatches", mismatched)):
            if keys:
                lines.append(f"  {len(keys)} {title}: {_short(keys)}")
        raise CheckpointError("\n".join(lines))
    module.load_state_dict(dict(state), strict=True)


def save_safetensors(state: Mapping[str, torch.Tensor], path: PathLike,
                     metadata: Optional[dict[str, str]] = None) -> None:
    """Write ``state`` to ``path`` as safetensors (contiguous copies; written to a temp file, then renamed)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=metadata or {})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def convert_checkpoint(src: PathLike, dst: PathLike) -> dict[str, int]:
    """Convert an official ``.pth`` (or any state-dict file) to safetensors; returns tensor counts per part."""
    state = read_state_dict(src)
    split = split_checkpoint(state, remap_legacy=False)
    if split.unknown:
        logger.warning("%d keys outside the official prefixes are kept as they are: %s",
                       len(split.unknown), _short(split.unknown))
    save_safetensors(state, dst, metadata={"format": "pt", "source": Path(src).name,
                                           "producer": "maskadapter convert"})
    counts = {part: len(tensors) for part, tensors in split.parts.items()}
    if split.ignored:
        counts["(ignored)"] = len(split.ignored)
    if split.unknown:
        counts["(other)"] = len(split.unknown)
    return counts


def _short(keys: list[str]) -> str:
    shown = ", ".join(keys[:_REPORT_LIMIT])
    return shown + (f", ... (+{len(keys) - _REPORT_LIMIT} more)" if len(keys) > _REPORT_LIMIT else "")
