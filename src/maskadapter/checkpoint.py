"""Reading, splitting, strictly loading and converting checkpoints (official ``.pth`` or safetensors).

``.pth`` files are read with ``torch.load(weights_only=True)``: a pickle that would import or call
anything beyond tensors and plain containers is refused with :class:`UnsafeCheckpointError`. Before torch
2.6 that loader could be made to run code (CVE-2025-32434), so with an older torch pickles are refused.

A file is recognised by its first bytes (safetensors header, PyTorch zip archive or legacy pickle). A suffix
that names a format (``.safetensors``, ``.pth``, ``.pt``) must match the content, so a renamed file is reported
as such instead of half-loaded. Any file that cannot be used (missing parts aside: FileNotFoundError) raises
:class:`CheckpointError` whose message names the file and the reason.
"""

from __future__ import annotations

import logging
import os
import pickle
import pickletools
import re
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from torch import nn

from .errors import CheckpointError, UnsafeCheckpointError

__all__ = [
    "CheckpointError", "UnsafeCheckpointError", "OFFICIAL_PARTS", "SplitCheckpoint", "read_checkpoint",
    "read_state_dict", "load_weights_only", "non_tensor_reason", "split_checkpoint", "load_part",
    "save_safetensors", "convert_checkpoint",
]

logger = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]

#: Official top-level prefixes, each loaded strictly into one module of ours.
OFFICIAL_PARTS = ("backbone.clip_model", "sem_seg_head", "mask_adapter", "void_embedding", "cdt")
#: Prefixes present in some official files that no model uses (training criterion, MAFT+ teacher).
IGNORED_PREFIXES = ("criterion.", "backbone_t.")
#: torch.load(weights_only=True) could be bypassed to run code before this torch version (CVE-2025-32434).
SAFE_TORCH_VERSION = (2, 6)
# Keys only the adapter has: a stage-1 file written before the official rename stored them under sem_seg_head.
_ADAPTER_MARKERS = ("fuse.weight", "mask_downscaling.0.weight", "final.weight")
_REPORT_LIMIT = 12
_PICKLE_SUFFIXES = (".pth", ".pt")
_FORMAT_NAMES = {"zip": "a PyTorch checkpoint (zip archive)", "pickle": "a pickle (legacy PyTorch format)",
                 "safetensors": "safetensors data"}
# Modules a torch pickle legitimately references; anything else in a refused pickle is reported as code.
_TORCH_PICKLE_MODULES = ("torch.", "collections.OrderedDict", "_codecs.encode")


@dataclass
class SplitCheckpoint:
    """A state dict split by official prefix: ``parts[name]`` holds keys with ``name + '.'`` removed."""

    parts: dict[str, dict[str, torch.Tensor]]
    ignored: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


def read_state_dict(path: PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or ``.pth`` file (a dict with ``model`` or a bare state dict), on CPU.

    A value under an official prefix that is not a tensor is an error; other non-tensor entries are skipped.
    """
    obj = read_checkpoint(path)
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    reason = non_tensor_reason(obj, official_only=True)
    if reason:
        raise CheckpointError(f"{path} is not a usable state dict: {reason}")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    skipped = sorted(str(k) for k in obj if k not in tensors)
    if skipped:
        logger.warning("%s: ignoring %d non-tensor entries: %s", path, len(skipped), _short(skipped))
    if not tensors:
        raise CheckpointError(f"{path} contains no tensors")
    return tensors


def read_checkpoint(path: PathLike) -> Any:
    """What a checkpoint file holds: a safetensors file's tensors (a flat dict, on CPU) or the weights-only
    unpickled object of a ``.pth`` file."""
    path, kind = _inspect(path)
    if kind == "safetensors":
        return _read_safetensors(path)
    return load_weights_only(path)


def load_weights_only(path: PathLike) -> object:
    """Unpickle ``path`` with ``torch.load(weights_only=True)`` on CPU; code-referencing pickles are refused."""
    path, kind = _inspect(path)
    if kind == "safetensors":
        _open_safetensors(path)  # a damaged header is reported as such
        raise CheckpointError(f"{path} is a safetensors file (bare tensors), not a pickled PyTorch checkpoint")
    _require_safe_torch(path)
    try:
        with warnings.catch_warnings():  # torch warns about the protocol of plain pickles; we report the outcome
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _refusal(path, kind, str(exc)) from exc
    except Exception as exc:  # torch raises RuntimeError, EOFError, KeyError, ... for damaged files
        first = str(exc).split(". ")[0].splitlines()[0][:200] if str(exc) else ""
        raise CheckpointError(f"could not read {path}: the file is corrupt, truncated or not a PyTorch checkpoint "
                              f"({type(exc).__name__}: {first})") from exc


def non_tensor_reason(state: Mapping[Any, Any], prefix: str = "", official_only: bool = False) -> Optional[str]:
    """Why ``state`` is not a state dict (a key that is not a string, a value that is not a tensor), or None.

    ``prefix`` is put before the keys in the message; ``official_only`` checks only the values of keys under an
    official prefix (the ones a model would load).
    """
    for key, value in state.items():
        if not isinstance(key, str):
            return f"key {key!r} is a {type(key).__name__}, not a parameter name"
        if official_only and not key.startswith(tuple(p + "." for p in OFFICIAL_PARTS)):
            continue
        if not isinstance(value, torch.Tensor):
            return f"key '{prefix}{key}' holds a {type(value).__name__}, not a tensor"
    return None


def _inspect(path: PathLike) -> tuple[Path, str]:
    """``path`` as a Path and its format by content: ``safetensors``, ``zip``, ``pickle`` or ``unknown``.

    FileNotFoundError if it does not exist; CheckpointError if it is not a readable non-empty file or its
    suffix names another format than its content.
    """
    path = Path(path)
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise CheckpointError(f"checkpoint {path} is a directory, not a file")
        if not stat.S_ISREG(info.st_mode):
            raise CheckpointError(f"checkpoint {path} is not a regular file")
        with open(path, "rb") as f:
            head = f.read(9)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint not found: {path}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from exc
    if info.st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): the download or copy was interrupted")
    kind = _sniff(head, info.st_size)
    suffix = path.suffix.lower()
    if (suffix == ".safetensors" and kind in ("zip", "pickle")) or (suffix in _PICKLE_SUFFIXES
                                                                   and kind == "safetensors"):
        proper = ".safetensors" if kind == "safetensors" else ".pth"
        raise CheckpointError(f"{path} is named {suffix} but holds {_FORMAT_NAMES[kind]}: the file was renamed "
                              f"or mislabelled (if it is the file you meant, rename it to {proper})")
    if suffix == ".safetensors":
        kind = "safetensors"  # let the safetensors reader say what is wrong with its header
    return path, kind


def _sniff(head: bytes, size: int) -> str:
    if head[:4] == b"PK\x03\x04":
        return "zip"
    # an 8-byte little-endian size of the JSON header that follows (a pickle's first bytes give a huge size)
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    if head[:1] == b"\x80":  # pickle protocol 2 or later, as torch's legacy format writes
        return "pickle"
    return "unknown"


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # SafetensorError (bad or truncated header), OSError, ...
        raise CheckpointError(f"could not read {path}: not a valid safetensors file ({exc})") from exc


def _open_safetensors(path: Path) -> list[str]:
    """The tensor names of a safetensors file, reading its header only."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return list(f.keys())
    except Exception as exc:
        raise CheckpointError(f"could not read {path}: not a valid safetensors file ({exc})") from exc


def _require_safe_torch(path: Path) -> None:
    version = tuple(int(p) for p in re.findall(r"\d+", str(torch.__version__))[:2])
    if version < SAFE_TORCH_VERSION:
        raise UnsafeCheckpointError(
            f"refused to load {path}: torch {torch.__version__} cannot read pickles safely (its weights-only "
            "loader can be made to run code, CVE-2025-32434); install torch>=2.6, or convert the file to "
            "safetensors where a safe torch is installed")


def _refusal(path: Path, kind: str, message: str) -> CheckpointError:
    """The error for a pickle the weights-only loader refused: unsafe when it references code."""
    found = re.search(r"GLOBAL ([\w.]+)", message)
    code_ref = found.group(1) if found else (_pickled_code(path) if kind != "zip" else None)
    if code_ref is not None:
        return UnsafeCheckpointError(
            f"refused to load {path}: its pickle references code ({code_ref}), not only tensors. maskadapter "
            "loads weights only and never runs code from a checkpoint; if you trust the file, re-save its "
            "state dict with plain tensors or as safetensors.")
    return CheckpointError(f"could not read {path}: the file is corrupt or not a plain tensor checkpoint (the "
                           f"weights-only loader stopped at: {_unpickler_reason(message)})")


def _unpickler_reason(message: str) -> str:
    """The reason in torch's weights-only refusal, without its advice to file an issue or to load unsafely."""
    _, found, rest = message.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in (rest if found else message).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("Check the documentation", "Please file an issue",
                                                            "Weights only load failed", "In PyTorch"))]
    return lines[0][:200] if lines else "an unreadable pickle"


def _pickled_code(path: Path) -> Optional[str]:
    """The first callable other than torch's own that the pickles of ``path`` reference, read without running
    anything (``pickletools``); None if there is none or the stream cannot be parsed."""
    strings: list[str] = []
    try:
        with open(path, "rb") as f:
            for _ in range(4):  # torch's legacy format is a few pickles in a row
                for op, arg, _pos in pickletools.genops(f):
                    if op.name in ("GLOBAL", "INST"):
                        name = str(arg).replace(" ", ".")
                    elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                        name = ".".join(strings[-2:])
                    else:
                        if isinstance(arg, str):
                            strings = [*strings[-1:], arg]
                        continue
                    if not name.startswith(_TORCH_PICKLE_MODULES):
                        return name
    except Exception:  # noqa: BLE001 - a damaged stream: torch's own rejection stands
        return None
    return None


def split_checkpoint(state: Mapping[str, torch.Tensor], remap_legacy: bool = True) -> SplitCheckpoint:
    """Split ``state`` by the official prefixes; unknown keys and ignored prefixes are listed, not dropped silently.

    With ``remap_legacy``, a stage-1 file written before the official rename (adapter keys under
    ``sem_seg_head.``) has them moved to ``mask_adapter``.
    """
    bad_key = next((k for k in state if not isinstance(k, str)), None)
    if bad_key is not None:
        raise CheckpointError(f"state dict key {bad_key!r} is a {type(bad_key).__name__}, not a parameter name")
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
    reason = non_tensor_reason(state, prefix=part + ".")
    if reason:
        raise CheckpointError(f"checkpoint part '{part}' cannot be loaded: {reason}")
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
