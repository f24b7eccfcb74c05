"""SAM stand-ins for tests: tiny random-weight SAM / SAM 2 networks built with the real packages, and a fake
prompt predictor with SamPredictor's API whose masks are known in advance.

* :func:`tiny_sam` - a segment-anything ``Sam`` with a 64-pixel, 1-block ViT (25k parameters);
  :func:`register_tiny_sam` adds it to ``segment_anything.sam_model_registry`` as ``vit_b`` so the
  package's own builder (checkpoint loading included) runs.
* :data:`TINY_SAM2_OVERRIDES` - hydra overrides that shrink ``configs/sam2.1/sam2.1_hiera_t.yaml`` to a
  1-block-per-stage Hiera with 8 channels (SAM2ImagePredictor needs the 1024-pixel input, which stays);
  :func:`patch_tiny_sam2` makes ``sam2.build_sam.build_sam2`` apply them.
* :class:`FakeSamPredictor` - SamPredictor's ``set_image`` / ``predict`` without a network: the mask of a
  prompt is the set of pixels whose colour equals the colour under the first positive point (or the box's
  centre), minus the colours under negative points, inside the box; it counts ``set_image`` calls.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

import numpy as np
import torch

TINY_SAM2_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
TINY_SAM2_OVERRIDES = [
    "++model.image_encoder.trunk.embed_dim=8", "++model.image_encoder.trunk.num_heads=1",
    "++model.image_encoder.trunk.stages=[1,1,1,1]", "++model.image_encoder.trunk.global_att_blocks=[]",
    "++model.image_encoder.trunk.window_pos_embed_bkg_spatial_size=[4,4]",
    "++model.image_encoder.neck.d_model=16", "++model.image_encoder.neck.backbone_channel_list=[64,32,16,8]",
    "++model.image_encoder.neck.position_encoding.num_pos_feats=16",
    "++model.memory_attention.d_model=16", "++model.memory_attention.num_layers=1",
    "++model.memory_attention.layer.d_model=16", "++model.memory_attention.layer.dim_feedforward=16",
    "++model.memory_attention.layer.self_attention.embedding_dim=16",
    "++model.memory_attention.layer.cross_attention.embedding_dim=16",
    "++model.memory_attention.layer.cross_attention.kv_in_dim=8",
    "++model.memory_encoder.out_dim=8", "++model.memory_encoder.in_dim=16",
    "++model.memory_encoder.position_encoding.num_pos_feats=8",
    "++model.memory_encoder.mask_downsampler.embed_dim=16", "++model.memory_encoder.fuser.layer.dim=16",
]


def tiny_sam(seed: int = 0, depth: int = 1) -> torch.nn.Module:
    """A segment-anything ``Sam`` small enough for CPU tests (64-pixel input, 4x4 embedding, 16 channels);
    ``depth=12`` gives vit_b's layout (its encoder depth) at that size."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(seed)
    encoder = ImageEncoderViT(img_size=64, patch_size=16, embed_dim=16, depth=depth, num_heads=1, out_chans=16,
                              norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6), window_size=0,
                              global_attn_indexes=())
    prompt = PromptEncoder(embed_dim=16, image_embedding_size=(4, 4), input_image_size=(64, 64), mask_in_chans=4)
    decoder = MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(depth=1, embedding_dim=16,
                                                                                 mlp_dim=32, num_heads=2),
                          transformer_dim=16, iou_head_depth=1, iou_head_hidden_dim=16)
    return Sam(image_encoder=encoder, prompt_encoder=prompt, mask_decoder=decoder).eval()


def register_tiny_sam(monkeypatch, path: Path, model_type: str = "vit_b") -> Path:
    """Save a tiny SAM's weights to ``path`` and make ``sam_model_registry[model_type]`` build tiny SAMs that
    load a checkpoint the way segment-anything's builders do (``torch.load`` + strict ``load_state_dict``)."""
    import segment_anything

    torch.save(tiny_sam().state_dict(), path)

    def build(checkpoint: Optional[str] = None) -> torch.nn.Module:
        sam = tiny_sam(seed=123)  # other weights: the checkpoint must replace them
        if checkpoint is not None:
            with open(checkpoint, "rb") as f:
                sam.load_state_dict(torch.load(f))
        return sam

    monkeypatch.setitem(segment_anything.sam_model_registry, model_type, build)
    return path


def patch_tiny_sam2(monkeypatch, path: Path) -> Path:
    """Save a tiny SAM 2 checkpoint (``{"model": state_dict}``, the released layout) to ``path`` and make
    ``sam2.build_sam.build_sam2`` build every config with :data:`TINY_SAM2_OVERRIDES` added."""
    import sam2.build_sam

    original = sam2.build_sam.build_sam2
    torch.manual_seed(0)
    network = original(TINY_SAM2_CONFIG, None, device="cpu", hydra_overrides_extra=TINY_SAM2_OVERRIDES)
    torch.save({"model": network.state_dict()}, path)

    def build(config_file, ckpt_path=None, device="cuda", mode="eval", hydra_overrides_extra=(), **kwargs):
        return original(config_file, ckpt_path, device=device, mode=mode,
                        hydra_overrides_extra=list(hydra_overrides_extra) + TINY_SAM2_OVERRIDES, **kwargs)

    monkeypatch.setattr(sam2.build_sam, "build_sam2", build)
    return path


class FakeSamPredictor:
    """SamPredictor's API with colour-region masks (see the module doc); three outputs, the second best.

    Outputs for a prompt: [the region in a 3-pixel disk around the first point, the colour region, the
    region's bounding box], with predicted IoUs [0.5, 0.9, 0.3], so the best-IoU choice is the colour region.
    """

    def __init__(self, checkpoint=None, **kwargs) -> None:
        self.kwargs = kwargs
        self.set_image_calls = 0
        self.predict_calls: list[dict] = []
        self.image: Optional[np.ndarray] = None

    def set_image(self, image: np.ndarray) -> None:
        self.set_image_calls += 1
        self.image = image.copy()

    def predict(self, point_coords=None, point_labels=None, box=None, multimask_output=True):
        assert self.image is not None, "set_image first"
        self.predict_calls.append({"point_coords": point_coords, "point_labels": point_labels, "box": box,
                                   "multimask_output": multimask_output})
        region, anchor = self._region(point_coords, point_labels, box)
        disk = np.zeros_like(region)
        ys, xs = np.ogrid[:region.shape[0], :region.shape[1]]
        disk[(xs - anchor[0]) ** 2 + (ys - anchor[1]) ** 2 <= 9] = True
        hull = np.zeros_like(region)
        if region.any():
            rows, cols = np.nonzero(region)
            hull[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
        masks = np.stack([region & disk, region, hull])
        scores = np.array([0.5, 0.9, 0.3], dtype=np.float32)
        if not multimask_output:
            masks, scores = masks[1:2], scores[1:2]
        return masks, scores, np.zeros((len(masks), 256, 256), np.float32)

    def _region(self, coords, labels, box):
        image = self.image.astype(np.int32)
        H, W = image.shape[:2]
        inside = np.ones((H, W), bool)
        if box is not None:
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            inside = np.zeros((H, W), bool)
            inside[y0:y1, x0:x1] = True
        positives = [] if coords is None else [c for c, lab in zip(coords, labels) if lab == 1]
        negatives = [] if coords is None else [c for c, lab in zip(coords, labels) if lab == 0]
        if positives:
            anchor = positives[0]
        else:
            anchor = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        color = image[int(anchor[1]), int(anchor[0])]
        region = (image == color).all(-1) & inside
        for x, y in negatives:
            region &= ~(image == image[int(y), int(x)]).all(-1)
        return region, anchor


class FakeAutomaticGenerator:
    """SamAutomaticMaskGenerator's ``generate``: one record per distinct colour of the image (largest first)."""

    def __init__(self, checkpoint=None, **kwargs) -> None:
        self.kwargs = kwargs

    def generate(self, image: np.ndarray) -> list[dict]:
        colors, inverse = np.unique(image.reshape(-1, 3), axis=0, return_inverse=True)
        inverse = inverse.reshape(image.shape[:2])
        return [{"segmentation": inverse == i, "area": int((inverse == i).sum()), "predicted_iou": 0.8}
                for i in range(len(colors))]
