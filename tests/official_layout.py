"""The official checkpoint key layout, written out by hand from the spec (not derived from our modules)."""

from __future__ import annotations

import open_clip
import torch

from conftest import TINY_MODEL_CFG

D, C = 24, 32


def official_key_shapes(clip_dim: int, channels: int, k: int = 16, mask_in: int = 16) -> dict[str, tuple]:
    """The official ``mask_adapter.*`` keys and shapes, written out by hand."""
    keys = {
        "mask_downscaling.0.weight": (mask_in // 4, 1, 3, 3), "mask_downscaling.0.bias": (mask_in // 4,),
        "mask_downscaling.1.weight": (mask_in // 4,), "mask_downscaling.1.bias": (mask_in // 4,),
        "mask_downscaling.3.weight": (mask_in, mask_in // 4, 3, 3), "mask_downscaling.3.bias": (mask_in,),
        "mask_downscaling.4.weight": (mask_in,), "mask_downscaling.4.bias": (mask_in,),
        "mask_downscaling.6.weight": (clip_dim, mask_in, 1, 1), "mask_downscaling.6.bias": (clip_dim,),
        "fuse.weight": (channels, clip_dim, 1, 1), "fuse.bias": (channels,),
        "norm.weight": (channels,), "norm.bias": (channels,),
        "final.weight": (k, channels, 1, 1), "final.bias": (k,),
    }
    for i in (1, 2, 3):
        keys.update({
            f"cnext{i}.dwconv.weight": (channels, 1, 7, 7), f"cnext{i}.dwconv.bias": (channels,),
            f"cnext{i}.norm.weight": (channels,), f"cnext{i}.norm.bias": (channels,),
            f"cnext{i}.pwconv1.weight": (4 * channels, channels), f"cnext{i}.pwconv1.bias": (4 * channels,),
            f"cnext{i}.pwconv2.weight": (channels, 4 * channels), f"cnext{i}.pwconv2.bias": (channels,),
            f"cnext{i}.gamma": (channels,),
        })
    return keys


def fabricated_state(clip_dim: int = D, channels: int = C, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=gen) * 0.3 for k, s in official_key_shapes(clip_dim, channels).items()}



def fabricated_official_checkpoint(seed: int = 0) -> dict[str, torch.Tensor]:
    """A full official-layout state dict of the tiny configuration: an independently built open_clip CLIP
    under ``backbone.clip_model.``, the adapter under ``mask_adapter.``, the void embedding, plus parts a
    mask-adapter-only model does not use (``sem_seg_head.``, ``cdt.``) and the ignored ``criterion.``."""
    torch.manual_seed(seed)
    clip = open_clip.CLIP(**TINY_MODEL_CFG)
    dim = TINY_MODEL_CFG["embed_dim"]
    state = {f"backbone.clip_model.{k}": v.clone() for k, v in clip.state_dict().items()}
    state.update({f"mask_adapter.{k}": v for k, v in fabricated_state(dim, C, seed).items()})
    state["void_embedding.weight"] = torch.randn(1, dim)
    state["sem_seg_head.predictor.query_feat.weight"] = torch.randn(250, 256)
    state["sem_seg_head.predictor.logit_scale"] = torch.tensor(2.6593)
    state["cdt.cross_atten.MLP.weight"] = torch.randn(dim, dim)
    state["criterion.empty_weight"] = torch.ones(134)
    return state
