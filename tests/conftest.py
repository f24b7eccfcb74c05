"""Shared tiny configurations: random weights, real open_clip/timm module structure, CPU-fast."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from maskadapter import ClipConfig, HeadConfig, MaskAdapterModel

# A timm convnext_atto trunk (dims 40/80/160/320) with a 1-layer, 32-wide text tower.
TINY_MODEL_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"timm_model_name": "convnext_atto", "timm_model_pretrained": False, "timm_pool": "",
                   "timm_proj": "mlp", "timm_drop": 0.0, "timm_drop_path": 0.1, "image_size": 64},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def tiny_clip_config(proj: str = "mlp") -> ClipConfig:
    cfg = copy.deepcopy(TINY_MODEL_CFG)
    cfg["vision_cfg"]["timm_proj"] = proj
    return ClipConfig(name=f"tiny-convnext-{proj}", model_cfg=cfg)


TINY_HEAD = HeadConfig(clip_dim=32, num_channels=32)


def random_photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """[H, W, 3] uint8 noise: a stand-in photo."""
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def save_random_photo(path: Path, h: int, w: int, seed: int = 0) -> Path:
    """:func:`random_photo` written to ``path`` (format from its suffix; parent folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(random_photo(h, w, seed)).save(path)
    return path


def randomize_(module: torch.nn.Module, seed: int = 0, std: float = 0.3) -> torch.nn.Module:
    """Give every parameter random values (layer scales and norms included, so no layer is a no-op)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return module


@pytest.fixture(autouse=True)
def _isolated_user_cache(tmp_path_factory, monkeypatch):
    """Every default cache (text embeddings, evaluation outputs) goes to a fresh folder, never ~/.cache."""
    monkeypatch.setenv("MASKADAPTER_CACHE", str(tmp_path_factory.mktemp("user-cache")))
    monkeypatch.delenv("MASKADAPTER_TEXT_CACHE", raising=False)


@pytest.fixture(scope="session")
def tiny_model() -> MaskAdapterModel:
    torch.manual_seed(0)
    model = MaskAdapterModel(tiny_clip_config(), TINY_HEAD)
    randomize_(model.mask_adapter, seed=1)
    return model.eval()


def tiny_architecture(embed_dim: int = 32, num_queries: int = 10):
    """A whole model (CLIP, adapter, FC-CLIP-style generator) small enough for CPU tests."""
    from maskadapter.modeling.build import ArchitectureConfig
    from maskadapter.modeling.generators.fcclip import FCCLIPHeadConfig
    from maskadapter.modeling.generators.pixel_decoder import PixelDecoderConfig
    from maskadapter.modeling.generators.transformer_decoder import TransformerDecoderConfig

    cfg = copy.deepcopy(TINY_MODEL_CFG)
    cfg["embed_dim"] = embed_dim
    generator = FCCLIPHeadConfig(
        PixelDecoderConfig(in_channels={"res2": 40, "res3": 80, "res4": 160, "res5": 320}, conv_dim=32, mask_dim=32,
                           num_encoder_layers=1, nheads=4, dim_feedforward=64, num_groups=8),
        TransformerDecoderConfig(in_channels=32, hidden_dim=32, num_queries=num_queries, nheads=4,
                                 dim_feedforward=64, dec_layers=3, mask_dim=32, clip_embedding_dim=embed_dim))
    return ArchitectureConfig(ClipConfig(f"tiny-convnext-{embed_dim}", cfg), HeadConfig(embed_dim, 32), generator, 4)


def tiny_preset(base: str = "fcclip-large", **changes):
    """A released preset's constants on a 64-pixel test size (so the tiny model runs fast)."""
    import dataclasses

    from maskadapter.presets import get_preset

    return dataclasses.replace(get_preset(base), name=f"tiny-{base}", test_size=64, **changes)


def write_tiny_preset(path: Path, base: str = "fcclip-large", embed_dim: int = 32, num_queries: int = 10,
                      **preset_changes: Any) -> Path:
    """A preset JSON file (``load_preset_file`` format) with the tiny test architecture."""
    arch = tiny_architecture(embed_dim, num_queries)
    preset = dataclasses.asdict(tiny_preset(base, **preset_changes))
    data = {
        "preset": preset,
        "architecture": {
            "clip": {"name": arch.clip.name, "model_cfg": arch.clip.model_cfg},
            "head": dataclasses.asdict(arch.head),
            "pixel_decoder": dataclasses.asdict(arch.generator.pixel_decoder),
            "transformer_decoder": dataclasses.asdict(arch.generator.predictor),
            "cdt_heads": arch.cdt_heads,
        },
    }
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def write_tiny_checkpoint(root: Path, base: str = "fcclip-large", seed: int = 0) -> tuple[Path, Path]:
    """A tiny preset JSON and a checkpoint of random weights in the official layout: (preset file, weights)."""
    from maskadapter.modeling.build import build_model, load_preset_file

    preset_file = write_tiny_preset(root / "tiny.json", base)
    preset, arch = load_preset_file(preset_file)
    torch.manual_seed(seed)
    weights = root / "tiny.pth"
    torch.save({"model": build_model(preset, arch).state_dict()}, weights)
    return preset_file, weights


def count_model_calls(monkeypatch) -> list[int]:
    """Patch ``Predictor.predict_prepared`` to record the batch size of every model call."""
    from maskadapter.inference.predictor import Predictor

    calls: list[int] = []
    real = Predictor.predict_prepared

    def counting(self, batch, *args, **kwargs):
        calls.append(len(batch))
        return real(self, batch, *args, **kwargs)

    monkeypatch.setattr(Predictor, "predict_prepared", counting)
    return calls


@pytest.fixture(scope="module")
def tiny_fcclip():
    """A tiny FC-CLIP-style model with random weights (seed 0), shared by a test module."""
    from maskadapter.modeling.build import build_model

    torch.manual_seed(0)
    return build_model(tiny_preset(), tiny_architecture())


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say so when browser tests were skipped (no chromium or playwright): the skip is easy to miss."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "browser" in getattr(r, "keywords", {})]
    if skipped:
        reasons = sorted({str(r.longrepr[2]).replace("Skipped: ", "") for r in skipped
                          if isinstance(r.longrepr, tuple)})
        terminalreporter.write_sep("=", "browser tests skipped", yellow=True)
        terminalreporter.write_line(f"{len(skipped)} browser test(s) of the demo did not run: {'; '.join(reasons)}. "
                                    "Install chromium and playwright to run them (see README, Web demo).")
