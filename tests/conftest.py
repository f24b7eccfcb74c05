"""Shared tiny configurations: random weights, real open_clip/timm module structure, CPU-fast."""

from __future__ import annotations

import copy

import pytest
import torch

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


def randomize_(module: torch.nn.Module, seed: int = 0, std: float = 0.3) -> torch.nn.Module:
    """Give every parameter random values (layer scales and norms included, so no layer is a no-op)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return module


@pytest.fixture(scope="session")
def tiny_model() -> MaskAdapterModel:
    torch.manual_seed(0)
    model = MaskAdapterModel(tiny_clip_config(), TINY_HEAD)
    randomize_(model.mask_adapter, seed=1)
    return model.eval()
