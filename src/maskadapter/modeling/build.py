"""Model architectures as data, and building a :class:`MaskAdapterModel` for a preset."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from ..config import ClipConfig, HeadConfig
from ..presets import PresetConfig, get_preset
from .generators.fcclip import FCCLIPHeadConfig
from .generators.pixel_decoder import PixelDecoderConfig
from .generators.transformer_decoder import TransformerDecoderConfig
from .model import MaskAdapterModel

__all__ = ["ArchitectureConfig", "default_architecture", "build_model", "load_preset_file", "load_preset"]


@dataclass(frozen=True)
class ArchitectureConfig:
    """Every size needed to build a model; real presets derive it, custom ones (tests) spell it out."""

    clip: ClipConfig
    head: HeadConfig
    generator: Optional[FCCLIPHeadConfig] = None
    cdt_heads: int = 8


def default_architecture(preset: PresetConfig) -> ArchitectureConfig:
    """The released architecture of ``preset``: open_clip ConvNeXt, 768-wide adapter, FC-CLIP-style head."""
    clip = ClipConfig.from_name(preset.clip_model, preset.clip_pretrained)
    widths = _convnext_widths(clip)
    generator = FCCLIPHeadConfig(
        PixelDecoderConfig(in_channels=widths),
        TransformerDecoderConfig(num_queries=preset.num_queries, clip_embedding_dim=clip.embed_dim))
    return ArchitectureConfig(clip, HeadConfig(clip_dim=clip.embed_dim), generator)


def _convnext_widths(clip: ClipConfig) -> dict[str, int]:
    import timm
    import torch

    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        trunk = timm.create_model(clip.model_cfg["vision_cfg"]["timm_model_name"], pretrained=False)
    return {f"res{i + 2}": int(info["num_chs"]) for i, info in enumerate(trunk.feature_info)}


def build_model(preset: Union[str, PresetConfig], architecture: Optional[ArchitectureConfig] = None
                ) -> MaskAdapterModel:
    """A randomly initialised model for ``preset`` (load weights with ``load_official``)."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    arch = architecture or default_architecture(preset)
    return MaskAdapterModel(arch.clip, arch.head, preset.dense_projection, generator=arch.generator,
                            cdt_mode=preset.cdt_mode, cdt_heads=arch.cdt_heads)


def load_preset(preset: Union[str, os.PathLike, PresetConfig]
                ) -> tuple[PresetConfig, Optional[ArchitectureConfig]]:
    """A preset and its architecture (None: the released one) from a preset name, a preset JSON file or a
    :class:`PresetConfig` - everything ``--preset`` accepts."""
    if isinstance(preset, PresetConfig):
        return preset, None
    if str(preset).endswith(".json") or Path(preset).is_file():
        return load_preset_file(preset)
    return get_preset(str(preset)), None


def load_preset_file(path: Union[str, os.PathLike]) -> tuple[PresetConfig, Optional[ArchitectureConfig]]:
    """A custom preset from JSON: ``{"preset": {PresetConfig fields}, "architecture": {...}}``.

    ``architecture`` (optional) has ``clip`` ({"name", "model_cfg"}), ``head`` (HeadConfig fields),
    ``pixel_decoder`` and ``transformer_decoder`` (their config fields) and ``cdt_heads``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"preset file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read preset file {path}: {exc}") from exc
    preset = _dataclass_from(PresetConfig, data.get("preset", {}), "preset")
    arch = data.get("architecture")
    if arch is None:
        return preset, None
    generator = None
    if "pixel_decoder" in arch or "transformer_decoder" in arch:
        generator = FCCLIPHeadConfig(_dataclass_from(PixelDecoderConfig, arch.get("pixel_decoder", {}), "pixel_decoder"),
                                     _dataclass_from(TransformerDecoderConfig, arch.get("transformer_decoder", {}),
                                                     "transformer_decoder"))
    return preset, ArchitectureConfig(_dataclass_from(ClipConfig, arch.get("clip", {}), "clip"),
                                      _dataclass_from(HeadConfig, arch.get("head", {}), "head"),
                                      generator, int(arch.get("cdt_heads", 8)))


def _dataclass_from(cls: Any, values: dict, where: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in '{where}'; allowed: {sorted(names)}")
    values = {k: tuple(v) if k == "transformer_in_features" else v for k, v in values.items()}
    try:
        return cls(**values)
    except TypeError as exc:
        raise ValueError(f"bad '{where}' section: {exc}") from exc
