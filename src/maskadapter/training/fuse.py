"""Between and after the stages: fuse a stage-1 adapter with a segmentor, export trained weights.

:func:`fuse_checkpoints` does what the official ``tools/weight_fuse_{fcclip,maftp}.py`` do: every
key of the segmentor checkpoint that starts with ``sem_seg_head`` or ``void`` is copied into the stage-1
checkpoint's ``model`` dict (so the stage-1 void embedding is replaced by the segmentor's), everything
else of the stage-1 file is kept, and the result is saved. The segmentor may be ``{'model': sd}``
(FC-CLIP) or a bare state dict (MAFT+).

:func:`export_state` turns a training checkpoint into a state dict in the official key layout: the trained
parameters alone, or (``full=True``) on top of the frozen parts of the run's initial weights, which gives
the same layout as an official stage-1 (no ``sem_seg_head``) or final (with it) checkpoint.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch

from ..checkpoint import (CheckpointError, non_tensor_reason, read_checkpoint, read_state_dict, save_safetensors,
                          split_checkpoint)
from .checkpointing import atomic_save, is_training_checkpoint, load_training_checkpoint
from .config import config_from_dict
from .setup import initial_weights, resolve_preset, seeded_model

__all__ = ["fuse_checkpoints", "export_state", "save_state", "write_model", "FUSED_PREFIXES", "MODEL_FILE"]

logger = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]

#: The complete model a finished run leaves in its output folder (``segment --weights`` reads it).
MODEL_FILE = "model.safetensors"
#: Key prefixes the official fuse scripts copy from the segmentor.
FUSED_PREFIXES = ("sem_seg_head", "void")


def export_state(checkpoint: PathLike, full: bool = False, base: Optional[PathLike] = None) -> dict[str, torch.Tensor]:
    """Official-layout tensors of a training checkpoint: ``mask_adapter.*`` (+ ``void_embedding.weight`` when it
    was trained); with ``full``, plus the frozen parts of the model from ``base`` (default: the run's
    ``model.weights``), restricted to the parts the run's model had (and to its ``model.load_parts``).

    A run that started from random weights (no ``model.weights``) has its frozen parts rebuilt from ``run.seed``,
    exactly as the run built them, with the preset's whole architecture (its mask generator too), so the result is
    a complete model that ``segment --weights`` loads (random frozen weights: for trying the tools offline)."""
    ckpt = load_training_checkpoint(checkpoint)
    trained = {k: v for k, v in ckpt["model"].items()}
    if not full:
        return trained
    cfg = ckpt["config"]
    if base is None and not cfg["model"].get("weights"):
        logger.warning("%s: the run had no model.weights; its frozen parts are rebuilt from run.seed (random "
                       "weights)", checkpoint)
        state = seeded_model(config_from_dict(cfg)).state_dict()
        state.update(trained)
        return state
    base = base if base is not None else initial_weights(config_from_dict(cfg), resolve_preset(config_from_dict(cfg))[0])
    split = split_checkpoint(read_state_dict(base))
    parts = {"backbone.clip_model", "mask_adapter", "void_embedding"}
    if cfg["train"]["stage"] == "mixed":
        parts.add("sem_seg_head")
    if ckpt.get("generator") == "maftp" or "cdt" in split.parts:
        parts.add("cdt")
    load_parts = cfg["model"].get("load_parts")
    state: dict[str, torch.Tensor] = {}
    for part in sorted(parts):
        if part in split.parts and (load_parts is None or part in load_parts):
            state.update({f"{part}.{k}": v for k, v in split.parts[part].items()})
    state.update(trained)
    missing = [p for p in ("backbone.clip_model", "mask_adapter", "void_embedding")
               if not any(k.startswith(p + ".") for k in state)]
    if missing:
        logger.warning("exported state has no %s (the base file %s does not hold them)", ", ".join(missing), base)
    return state


def save_state(state: Mapping[str, torch.Tensor], path: PathLike, metadata: Optional[dict[str, str]] = None) -> Path:
    """Write ``state`` as ``.safetensors`` (flat) or ``.pth`` (``{'model': state}``, the official container)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        save_safetensors(state, path, metadata=metadata)
    elif path.suffix in (".pth", ".pt"):
        atomic_save({"model": {k: v.detach().cpu().contiguous() for k, v in state.items()}}, path)
    else:
        raise ValueError(f"output file must end in .safetensors, .pth or .pt, got {path}")
    return path


def write_model(checkpoint: PathLike, output: PathLike) -> Path:
    """A complete official-layout model (:func:`export_state` ``full=True``) of ``checkpoint`` as safetensors."""
    return save_state(export_state(checkpoint, full=True), output,
                      metadata={"format": "pt", "producer": "maskadapter train", "source": Path(checkpoint).name})


def fuse_checkpoints(stage1: PathLike, segmentor: PathLike, output: PathLike, base: Optional[PathLike] = None,
                     force: bool = False) -> dict[str, int]:
    """Copy ``sem_seg_head*`` and ``void*`` keys of ``segmentor`` into the stage-1 checkpoint; save to ``output``.

    ``stage1`` is an official stage-1 file (``{'model': sd, ...}``) or a training checkpoint of this package
    (exported with :func:`export_state` ``full=True`` first, ``base`` as there). Returns the number of copied
    keys per prefix. A stage-1 file that already holds ``sem_seg_head`` keys (a stage-2 or fused model) is
    refused unless ``force``: fusing it would replace its trained void embedding (maintainer, issue #17).
    """
    stage1, output = Path(stage1), Path(output)
    raw: Any = read_checkpoint(stage1)  # a safetensors file comes back as a bare state dict
    if is_training_checkpoint(raw):
        fused: dict[str, Any] = {"model": export_state(stage1, full=True, base=base)}
    elif isinstance(raw, dict) and isinstance(raw.get("model"), dict):
        fused = dict(raw)
        fused["model"] = dict(raw["model"])
    elif isinstance(raw, dict) and any(isinstance(v, torch.Tensor) for v in raw.values()):
        fused = {"model": dict(raw)}  # a bare state dict: wrap it like detectron2 does
    else:
        raise CheckpointError(f"{stage1} is neither a checkpoint with a 'model' dict nor a state dict")
    reason = non_tensor_reason(fused["model"])
    if reason:
        raise CheckpointError(f"{stage1} is not a usable stage-1 checkpoint: {reason}")
    model = fused["model"]
    if any(k.startswith("sem_seg_head.") for k in model) and not force:
        raise ValueError(f"{stage1} already holds sem_seg_head.* keys (a stage-2 or already fused model, or a "
                         "legacy stage-1 file with the adapter under sem_seg_head); fusing would replace its "
                         "void embedding and generator keys. Pass force=True (--force) to do it anyway")
    seg = read_state_dict(segmentor)
    counts = {p: 0 for p in FUSED_PREFIXES}
    for key, value in seg.items():
        for prefix in FUSED_PREFIXES:
            if key.startswith(prefix):
                model[key] = value
                counts[prefix] += 1
    if counts["sem_seg_head"] == 0:
        raise CheckpointError(f"{segmentor} has no sem_seg_head.* keys: it is not an FC-CLIP / MAFT+ checkpoint")
    if output.suffix == ".safetensors":
        save_safetensors(model, output, metadata={"format": "pt", "producer": "maskadapter fuse"})
    else:
        atomic_save(fused, output)
    logger.info("fused %s + %s -> %s (%s)", stage1, segmentor, output, counts)
    return counts
