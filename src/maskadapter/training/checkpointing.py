"""Training checkpoints: atomic writes, RNG states, and a format that the weights-only loader accepts.

A training checkpoint is a dict::

    {"format": "maskadapter-train", "version": 1,
     "model": {official key: tensor}  # trained parameters only: mask_adapter.* (+ void_embedding.weight)
     "config": {...}, "iteration": int, "epoch": int, "batch_in_epoch": int,
     "optimizer": ..., "scheduler": ..., "scaler": ..., "rng": ..., "best_metric": float | None, ...}

Because the trained tensors sit under ``"model"`` with official names, ``maskadapter.checkpoint.read_state_dict``
reads a training checkpoint as an adapter state dict too (e.g. as ``model.adapter_weights`` of stage 2).
Every file is written to a temporary name in the same folder, flushed to disk, then renamed over the
target, so a crash never leaves a half-written checkpoint under the real name.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from ..checkpoint import CheckpointError, non_tensor_reason, read_checkpoint

__all__ = ["CHECKPOINT_FORMAT", "atomic_save", "rng_state", "set_rng_state", "load_training_checkpoint",
           "is_training_checkpoint"]

CHECKPOINT_FORMAT = "maskadapter-train"
CHECKPOINT_VERSION = 1
PathLike = Union[str, os.PathLike]


def atomic_save(obj: Any, path: PathLike) -> Path:
    """``torch.save`` ``obj`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        try:  # make the rename itself durable
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:  # pragma: no cover - some file systems do not support fsync on folders
            pass
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA RNG states as plain containers and tensors."""
    py = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state` output."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np_state[1].numpy().astype(np.uint32), np_state[2], np_state[3], np_state[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def is_training_checkpoint(obj: Any) -> bool:
    """True for a dict written by the trainer."""
    return isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT


def load_training_checkpoint(path: PathLike) -> dict[str, Any]:
    """Read a training checkpoint (weights-only unpickling); CheckpointError naming the file if it is not one
    or is damaged, FileNotFoundError if it does not exist."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"training checkpoint not found: {path}")
    obj = read_checkpoint(path)
    if not is_training_checkpoint(obj):
        raise CheckpointError(f"{path} is not a maskadapter training checkpoint (no format '{CHECKPOINT_FORMAT}'); "
                              "an official or exported file can be used as model.weights / model.adapter_weights")
    version = obj.get("version", 0)
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint version {version!r}, not one this maskadapter understands "
                              f"(up to {CHECKPOINT_VERSION})")
    for key in ("model", "config", "iteration", "optimizer"):
        if key not in obj:
            raise CheckpointError(f"training checkpoint {path} lacks '{key}': it is damaged")
    problem = _damage(obj)
    if problem:
        raise CheckpointError(f"training checkpoint {path} is damaged: {problem}")
    return obj


def _damage(obj: dict[str, Any]) -> str:
    """What is malformed in a training checkpoint's entries (empty when nothing is)."""
    if not isinstance(obj["model"], dict):
        return f"'model' is a {type(obj['model']).__name__}, not a state dict"
    reason = non_tensor_reason(obj["model"])
    if reason:
        return f"its 'model' state dict is not usable: {reason}"
    config = obj["config"]
    if not isinstance(config, dict) or not all(isinstance(config.get(s), dict) for s in ("model", "train")):
        return "'config' is not a config dict with 'model' and 'train' sections"
    if not isinstance(obj["iteration"], int) or obj["iteration"] < 0:
        return f"'iteration' is {obj['iteration']!r}, not a step count"
    if not isinstance(obj["optimizer"], dict):
        return f"'optimizer' is a {type(obj['optimizer']).__name__}, not an optimizer state"
    return ""
