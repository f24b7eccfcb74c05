"""ClipBackbone over tiny open_clip ConvNeXt models: features, projections (standard and MAFT+ legacy),
text encoding, frozen/eval behaviour, config errors."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F

from maskadapter import ClipBackbone, ClipConfig

from conftest import randomize_, tiny_clip_config


@pytest.fixture(scope="module", params=["mlp", "linear"])
def backbone(request) -> ClipBackbone:
    torch.manual_seed(0)
    bb = ClipBackbone(tiny_clip_config(request.param))
    randomize_(bb.clip_model.visual.head, seed=3)
    randomize_(bb.clip_model.visual.trunk.head, seed=4)
    return bb


def manual_projection(bb: ClipBackbone, vectors: torch.Tensor) -> torch.Tensor:
    """Trunk head LN (eps 1e-6, biased variance) then the visual head, from raw weights: [M, Cv] -> [M, D]."""
    norm = bb.clip_model.visual.trunk.head.norm
    u = vectors.mean(-1, keepdim=True)
    s = ((vectors - u) ** 2).mean(-1, keepdim=True)
    x = (vectors - u) / torch.sqrt(s + 1e-6) * norm.weight + norm.bias
    head = bb.clip_model.visual.head
    if hasattr(head, "mlp"):  # ConvNeXt-L style: fc1 (bias) -> GELU -> fc2 (no bias)
        x = F.gelu(x @ head.mlp.fc1.weight.T + head.mlp.fc1.bias)
        assert head.mlp.fc2.bias is None
        return x @ head.mlp.fc2.weight.T
    assert head.proj.bias is None  # ConvNeXt-B style: a single linear without bias
    return x @ head.proj.weight.T


def test_features_shapes_and_strides(backbone):
    images = torch.randn(2, 3, 64, 96)
    feats = backbone(images)
    assert [tuple(feats[f"res{i}"].shape) for i in (2, 3, 4, 5)] == [
        (2, 40, 16, 24), (2, 80, 8, 12), (2, 160, 4, 6), (2, 320, 2, 3)]
    assert backbone.dense_dim == 320 and backbone.embed_dim == 32
    torch.testing.assert_close(feats["clip_vis_dense"], feats["res5"])  # norm_pre is the identity
    assert all(f.is_contiguous() and not f.requires_grad for f in feats.values())


def test_frozen_and_always_eval(backbone):
    backbone.train()
    assert backbone.training and not backbone.clip_model.training
    assert not any(m.training for m in backbone.clip_model.modules())
    assert not any(p.requires_grad for p in backbone.parameters())
    images = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(backbone(images)["res5"], backbone(images)["res5"])  # no drop path


def test_project_dense_standard_is_per_pixel_projection(backbone):
    raw = torch.randn(2, 320, 3, 4)
    out = backbone.project_dense(raw)
    assert out.shape == (2, 32, 3, 4)
    for b, i, j in [(0, 0, 0), (1, 2, 3), (0, 1, 2)]:
        torch.testing.assert_close(out[b, :, i, j], manual_projection(backbone, raw[b, :, i, j][None])[0],
                                   rtol=1e-5, atol=1e-5)


def test_project_dense_maft_legacy_reproduces_the_scrambled_reshape(backbone):
    raw = torch.randn(2, 320, 3, 4)
    out = backbone.project_dense(raw, mode="maft_legacy")
    flat = raw.flatten()  # NCHW memory order; "pixel" p takes elements p*Cv .. (p+1)*Cv
    vectors = torch.stack([flat[p * 320:(p + 1) * 320] for p in range(2 * 3 * 4)])
    expected = manual_projection(backbone, vectors).view(2, 3, 4, 32).permute(0, 3, 1, 2)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, backbone.project_dense(raw), atol=1e-3)
    with pytest.raises(ValueError, match="mode"):
        backbone.project_dense(raw, mode="permuted")


def test_project_pooled_matches_manual_and_keeps_gradients(backbone):
    pooled = torch.randn(2, 5, 320, requires_grad=True)
    out = backbone.project_pooled(pooled)
    torch.testing.assert_close(out, manual_projection(backbone, pooled.detach().reshape(10, 320)).view(2, 5, 32),
                               rtol=1e-5, atol=1e-5)
    out.sum().backward()  # gradients reach the adapter through the frozen projection
    assert pooled.grad is not None and pooled.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="pooled must have shape"):
        backbone.project_pooled(torch.randn(2, 5, 321))


def test_text_encoding_and_tokenizer(backbone):
    tokens = backbone.tokenize(["a photo of a cat.", "There is a sofa in the scene"])
    assert tokens.shape == (2, 77) and tokens[0, 0] == 49406 and (tokens == 49407).sum() == 2
    emb = backbone.encode_text(tokens)
    assert emb.shape == (2, 32) and torch.isfinite(emb).all()
    # The EOT position is what is projected: tokens after it (padding) do not matter.
    eot = int(tokens[0].argmax())
    changed = tokens.clone()
    changed[0, eot + 1:] = 5
    torch.testing.assert_close(backbone.encode_text(changed)[0], emb[0])
    assert float(backbone.logit_scale) == pytest.approx(float(backbone.clip_model.logit_scale))
    with pytest.raises(TypeError):
        backbone.tokenize("a single string")


def test_checkpoint_keys_equal_open_clip_layout():
    cfg = tiny_clip_config()
    reference = open_clip.CLIP(**cfg.model_cfg)
    bb = ClipBackbone(cfg)
    assert set(bb.clip_model.state_dict()) == set(reference.state_dict())
    assert "attn_mask" not in bb.clip_model.state_dict()
    bb.clip_model.load_state_dict(reference.state_dict(), strict=True)
    images = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(bb.encode_image(images), reference.eval().encode_image(images))


def test_config_errors():
    with pytest.raises(ValueError, match="unknown CLIP model name 'convnext_giant_999'.*convnext_large_d_320"):
        ClipConfig.from_name("convnext_giant_999")
    with pytest.raises(ValueError, match="unknown CLIP model name 'ViT-B-16'"):
        ClipConfig.from_name("ViT-B-16")
    cfg = ClipConfig.from_name("convnext_large_d_320", "laion2b_s29b_b131k_ft_soup")
    assert cfg.embed_dim == 768 and cfg.model_cfg["vision_cfg"]["timm_proj"] == "mlp"
    assert ClipConfig.from_name("convnext_base_w_320").embed_dim == 640
    with pytest.raises(ValueError, match="not a timm ConvNeXt"):
        ClipBackbone(ClipConfig("vit", {"embed_dim": 8, "vision_cfg": {"width": 8}, "text_cfg": {}}))


def test_bad_images(backbone):
    with pytest.raises(ValueError, match="multiples of 32"):
        backbone(torch.randn(1, 3, 64, 70))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        backbone(torch.randn(3, 64, 64))


def test_encode_text_truncation_equals_open_clip_full_length(backbone):
    prompts = ["a photo of a cat.", "There is a large traffic light in the scene.", "sofa"]
    tokens = backbone.tokenize(prompts)
    ours = backbone.encode_text(tokens)
    with torch.no_grad():
        full = backbone.clip_model.encode_text(tokens, normalize=False)  # all 77 positions
    torch.testing.assert_close(ours, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(backbone.encode_text(tokens[1:2]), full[1:2], rtol=1e-5, atol=1e-5)


def _open_clip_stage_outputs(bb: ClipBackbone, images: torch.Tensor) -> list[torch.Tensor]:
    """Stage outputs of open_clip's trunk run by its own modules (timm's NCHW block forward)."""
    trunk = bb.clip_model.visual.trunk
    x = trunk.stem(images)
    outs = []
    for stage in trunk.stages:
        x = stage(x)
        outs.append(x)
    return outs


@pytest.mark.parametrize("gemm", ["mkl", "onednn"])
def test_features_equal_open_clip_trunk_computed_in_channels_last(monkeypatch, gemm):
    from timm.models.convnext import ConvNeXtBlock

    bb = ClipBackbone(tiny_clip_config())
    randomize_(bb.clip_model.visual.trunk, seed=5, std=0.2)  # layer scales of 1e-6 would hide the blocks
    images = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        expected = _open_clip_stage_outputs(bb, images)
    monkeypatch.setenv("MASKADAPTER_CPU_GEMM", gemm)
    # the fast path must really run: timm's block forward (with its permute copies) is never called
    monkeypatch.setattr(ConvNeXtBlock, "forward", lambda self, x: pytest.fail("timm block forward ran"))
    feats = bb(images)
    for i, ref in enumerate(expected):
        got = feats[f"res{i + 2}"]
        assert got.is_contiguous() and got.shape == ref.shape
        assert float((got - ref).abs().max() / ref.abs().max()) < 1e-5, f"res{i + 2}"
    assert feats["clip_vis_dense"] is feats["res5"]  # norm_pre is the identity: one map, not two copies


@pytest.mark.parametrize("conv_mlp", [False, True])  # convnext_large: Linear MLP; convnext_atto: 1x1 convs
def test_both_timm_block_designs_run_in_nhwc(monkeypatch, conv_mlp):
    from timm.models.convnext import ConvNeXtBlock

    from maskadapter.modeling.clip_backbone import _run_block

    block = randomize_(ConvNeXtBlock(16, conv_mlp=conv_mlp, drop_path=0.1), seed=6).eval()
    x = torch.randn(2, 16, 9, 7).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = block(x.clone())
        monkeypatch.setattr(ConvNeXtBlock, "forward", lambda self, x: pytest.fail("timm block forward ran"))
        got = _run_block(block, x)
    assert got.data_ptr() == x.data_ptr()  # updated in place: the caller owns x
    assert float((got - expected).abs().max() / expected.abs().max()) < 1e-5


def test_blocks_of_another_design_run_their_own_forward():
    from timm.models.convnext import ConvNeXtBlock

    from maskadapter.modeling.clip_backbone import _run_block

    block = randomize_(ConvNeXtBlock(16, use_grn=True), seed=6).eval()  # ConvNeXt V2 MLP: not the NHWC kernel
    x = torch.randn(2, 16, 5, 6).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = block(x.clone())
        torch.testing.assert_close(_run_block(block, x), expected)
