"""The one model loader: a preset (name, JSON file or config) and a checkpoint -> a loaded :class:`MaskAdapterModel`.

Every entry point that needs a model with weights (predictors, evaluation, the demo, training, export, fuse) calls
:func:`load_model`, so the preset is resolved once per command and every checkpoint goes through the same
weights-only readers and strict, per-part loading.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Literal, Optional, Sequence, Union

from ..checkpoint import CheckpointError, read_state_dict, split_checkpoint
from ..hub import resolve_weights
from ..presets import PresetConfig, guess_preset
from .build import ArchitectureConfig, build_model, default_architecture, load_preset
from .model import MaskAdapterModel

__all__ = ["load_model", "ADAPTER_PARTS", "PresetLike", "Weights"]

logger = logging.getLogger(__name__)

PresetLike = Union[str, os.PathLike, PresetConfig]
Weights = Union[str, os.PathLike, None, Literal[False]]
#: The parts an adapter-only model (no mask decoder) is made of; ``cdt`` only for presets with a CDT.
ADAPTER_PARTS = ("backbone.clip_model", "mask_adapter", "void_embedding", "cdt")


def load_model(preset: PresetLike, weights: Weights = None, *, parts: Optional[Sequence[str]] = None,
               clip_weights: Union[str, os.PathLike, None] = None,
               architecture: Optional[ArchitectureConfig] = None,
               cache_dir: Union[str, os.PathLike, None] = None) -> tuple[MaskAdapterModel, PresetConfig]:
    """Build the model of ``preset`` and load ``weights`` into it; returns (model in eval mode, resolved preset).

    ``preset``: a released preset name, a preset JSON file or a :class:`PresetConfig` (resolved here, once).
    ``weights``: an official-layout checkpoint (``.pth`` read weights-only, or safetensors); None: the preset's
    released file (downloaded once, then cached in ``cache_dir`` / the hub cache); False: no weights (random
    initialisation, for tests and training from scratch).
    ``parts``: None builds the whole model (with the preset's mask decoder) and requires every part in
    ``weights``; a list such as :data:`ADAPTER_PARTS` builds the model without a decoder unless
    ``"sem_seg_head"`` is listed, and loads each listed part from ``weights`` or else from ``clip_weights``
    (an official-layout file with the CLIP and, for MAFT+, CDT weights, e.g. the released checkpoint);
    ``void_embedding`` is optional there (adapter-only classification has no void class).
    ``architecture``: sizes that replace the preset's (custom models, tests); a preset JSON file may hold them.
    A checkpoint of another released preset is refused with a message naming the preset it fits.
    """
    config, file_architecture = load_preset(preset)
    arch = architecture or file_architecture
    if weights is None and arch is not None and architecture is None:
        raise ValueError(f"a preset file needs --weights (preset {config.name!r} has no released weights)")
    if parts is not None:
        arch = arch or default_architecture(config)
        if "sem_seg_head" not in parts:
            arch = dataclasses.replace(arch, generator=None)
    model = build_model(config, arch)
    if weights is not False:
        path = resolve_weights(config, weights, cache_dir=cache_dir)
        if parts is None:
            _load_whole(model, path, config)
        else:
            _load_parts(model, path, parts, clip_weights, config)
    return model.eval(), config


def _load_whole(model: MaskAdapterModel, path: os.PathLike, config: PresetConfig) -> None:
    """Every part of ``model`` from ``path``, strictly; a mismatch names the preset the file fits, if any."""
    state = read_state_dict(path)
    try:
        model.load_official(state, name=str(path))
    except CheckpointError as exc:
        fits = guess_preset(state)
        hint = f" (it looks like a checkpoint for preset {fits!r})" if fits and fits != config.name else ""
        raise CheckpointError(f"{path} does not fit preset {config.name!r}{hint}:\n{exc}") from exc


def _load_parts(model: MaskAdapterModel, path: os.PathLike, parts: Sequence[str],
                clip_weights: Union[str, os.PathLike, None], config: PresetConfig) -> None:
    """The listed parts the model has, each from ``path`` or else from ``clip_weights``."""
    raw = read_state_dict(path)
    state = split_checkpoint(raw)
    if "mask_adapter" in parts and "mask_adapter" not in state.parts:
        raise CheckpointError(f"{path} has no mask_adapter.* keys: it is not an adapter checkpoint "
                              f"(it holds {', '.join(sorted(state.parts)) or 'no known part'})")
    wanted = [p for p in model.part_modules() if p in parts]
    here = [p for p in wanted if p in state.parts]
    model.load_official(raw, parts=here, name=str(path))
    elsewhere = [p for p in wanted if p not in here and p != "void_embedding"]
    if not elsewhere:
        return
    if clip_weights is None:
        if "backbone.clip_model" in elsewhere:
            raise CheckpointError(f"{path} holds no CLIP weights (backbone.clip_model.*): pass clip_weights= "
                                  f"(CLI: --clip-weights), e.g. the released {config.weights_file}")
        raise CheckpointError(f"{path} has no {', '.join(p + '.*' for p in elsewhere)} keys, which preset "
                              f"{config.name!r} needs: pass clip_weights= with them (the released "
                              f"{config.weights_file})")
    model.load_official(clip_weights, parts=elsewhere)
