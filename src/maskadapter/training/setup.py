"""The model a training run starts from: preset and architecture of the config, seeded random build, initial
weights (a file, or the preset's released checkpoint), trainable parts."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Optional, Sequence

import torch

from ..checkpoint import CheckpointError
from ..errors import WeightsUnavailableError
from ..hub import resolve_weights
from ..modeling.build import default_architecture, load_preset
from ..modeling.load import load_model
from ..modeling.model import MaskAdapterModel
from ..presets import PresetConfig
from .config import TrainConfig

__all__ = ["resolve_preset", "build_training_model", "seeded_model", "initial_weights", "set_trainable"]

logger = logging.getLogger(__name__)


def resolve_preset(config: TrainConfig) -> tuple[PresetConfig, Any]:
    """The preset and architecture the config names (a released preset or a preset JSON file), with the
    head sizes, the stage's generator and the CDT mode of the config applied."""

    preset, arch = load_preset(config.model.preset)
    arch = arch or default_architecture(preset)
    if config.model.cdt_mode is not None:
        if preset.cdt_mode is None:
            raise ValueError(f"config key 'model.cdt_mode' is set but preset {preset.name!r} has no CDT "
                             f"(only MAFT+ presets do)")
        preset = dataclasses.replace(preset, cdt_mode=config.model.cdt_mode)
    head = dataclasses.replace(arch.head, num_output_maps=config.model.num_output_maps,
                               num_blocks=config.model.num_blocks)
    generator = arch.generator if config.train.stage == "mixed" else None
    if config.train.stage == "mixed" and generator is None:
        raise ValueError(f"stage 'mixed' needs a mask generator, and preset {preset.name!r} has none")
    return preset, dataclasses.replace(arch, head=head, generator=generator)


def build_training_model(config: TrainConfig) -> tuple[MaskAdapterModel, PresetConfig]:
    """The model of ``config`` (seeded by ``run.seed``), initial weights loaded, trainable parts unfrozen."""

    preset, arch = resolve_preset(config)
    model = _seeded_build(preset, arch, config.run.seed)
    if config.model.weights:
        _load(model, initial_weights(config, preset), "model.weights", config.model.load_parts, require_all=False)
    elif config.data.dataset != "synthetic":
        logger.warning("model.weights is not set: CLIP%s start from random weights",
                       " and the mask generator" if model.sem_seg_head is not None else "")
    if config.model.adapter_weights:
        _load(model, config.model.adapter_weights, "model.adapter_weights", ["mask_adapter"])
    resolved = config.resolved(preset.generator)
    set_trainable(model, resolved.train_void)
    model.mask_adapter.grad_checkpoint = config.model.grad_checkpoint
    return model, preset


def _seeded_build(preset: PresetConfig, arch: Any, seed: int) -> MaskAdapterModel:
    """Random weights through the one loader, from ``seed`` (the initial weights then load part by part)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return load_model(preset, False, architecture=arch)[0]


def seeded_model(config: TrainConfig) -> MaskAdapterModel:
    """The random initial weights a run of ``config`` starts from, with the preset's whole architecture (the mask
    generator too, also in stage 1): the parts a run builds come out identical, because the generator is built
    after CLIP, the adapter and the void embedding."""
    preset, arch = resolve_preset(config)
    full = load_preset(config.model.preset)[1] or default_architecture(preset)
    return _seeded_build(preset, dataclasses.replace(arch, generator=full.generator), config.run.seed)


def initial_weights(config: TrainConfig, preset: PresetConfig) -> Optional[str]:
    """The file of ``model.weights``: ``released`` is the preset's released checkpoint (downloaded once)."""
    if config.model.weights != "released":
        return config.model.weights
    try:
        return str(resolve_weights(preset))
    except (FileNotFoundError, ValueError, WeightsUnavailableError) as exc:
        raise type(exc)(f"config key 'model.weights' = released: {exc}") from exc


def _load(model: MaskAdapterModel, path: str, key: str, parts: Optional[Sequence[str]], require_all: bool = True
          ) -> None:
    """Load ``parts`` of the checkpoint ``path`` (config key ``key``); errors name the key and the file."""
    try:
        model.load_official(path, parts=parts, require_all=require_all)
    except CheckpointError as exc:  # same class: an UnsafeCheckpointError stays one
        raise type(exc)(f"config key '{key}': {exc}") from exc
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"config key '{key}': {exc}") from exc
    except ValueError as exc:
        raise ValueError(f"config key '{key.replace('weights', 'load_parts')}': {exc}") from exc


def set_trainable(model: MaskAdapterModel, train_void: bool) -> None:
    """Freeze everything but the adapter (and the void embedding when ``train_void``)."""
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.mask_adapter.parameters():
        p.requires_grad_(True)
    model.void_embedding.weight.requires_grad_(train_void)
