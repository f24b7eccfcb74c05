"""Predictor end to end on tiny FC-CLIP / MAFT+ models with fabricated official-layout checkpoints, SAM with a
stub generator, presets and hub errors, image decoding and every bad-input case of the inference issue."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from maskadapter import CheckpointError
from maskadapter.hub import WeightsUnavailableError, resolve_weights
from maskadapter.inference import postprocess as pp
from maskadapter.inference.predictor import Predictor
from maskadapter.modeling.build import build_model
from maskadapter.modeling.text import TextClassifier
from maskadapter.images import to_rgb_tensor
from maskadapter.inference.preprocess import resize_longest_side
from maskadapter.presets import PRESETS, get_preset, guess_preset

from conftest import tiny_architecture, tiny_preset

VOCAB = "cat, sofa|couch, sky"


def scene(h: int = 75, w: int = 100) -> np.ndarray:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
    img[: h // 2] += np.array([0, 60, 150], dtype=np.uint8)
    return img


@pytest.fixture(scope="module")
def fcclip_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(tiny_preset(), tiny_architecture())
    path = tmp_path_factory.mktemp("ckpt") / "tiny_fcclip.pth"
    torch.save({"model": {**model.state_dict(), "criterion.empty_weight": torch.ones(4)}}, path)
    return path


@pytest.fixture(scope="module")
def predictor(fcclip_ckpt):
    return Predictor.from_checkpoint(fcclip_ckpt, tiny_preset(), tiny_architecture(), precision="fp32", text_cache_dir=False)


def test_predict_end_to_end(predictor):
    result = predictor.predict(scene(), VOCAB)
    assert result.image_size == (75, 100) and result.class_names == ["cat", "sofa", "sky"]
    assert result.semantic.shape == (75, 100) and result.semantic.dtype == torch.int64
    assert 0 <= int(result.semantic.min()) and int(result.semantic.max()) < 3
    ids = set(result.panoptic.unique().tolist()) - {0}
    assert ids == {s["id"] for s in result.segments}
    for s in result.segments:
        assert s["area"] == int((result.panoptic == s["id"]).sum()) and s["label"] == result.class_names[s["category_id"]]
    inst = result.instances
    assert inst["masks"].shape[1:] == (75, 100) and inst["masks"].dtype == torch.bool
    assert len(inst["scores"]) == len(inst["classes"]) == inst["masks"].shape[0] > 0
    assert torch.all((inst["scores"] >= 0) & (inst["scores"] <= 1)) and int(inst["classes"].max()) < 3


def test_predict_matches_the_pipeline_composed_by_hand(predictor):
    """The semantic map equals ensemble + official semantic inference recomputed from the model's parts."""
    model, preset = predictor.model, predictor.preset
    rgb = torch.from_numpy(scene()).permute(2, 0, 1)
    resized = resize_longest_side(rgb, preset.test_size)
    h, w = resized.shape[1:]
    from maskadapter.inference.preprocess import normalize_and_pad
    from maskadapter.modeling.text import append_void, classification_logits
    from maskadapter.vocabulary import Vocabulary
    from maskadapter.data.vocabularies import builtin_vocabulary

    images, _ = normalize_and_pad([resized])
    vocab = Vocabulary.parse(VOCAB)
    text = append_void(TextClassifier(model.backbone).encode(vocab), model.void_embedding.weight)
    with torch.no_grad():
        feats = model.dense_features(images)
        out = model.sem_seg_head(feats, text, vocab.num_synonyms)
        emb = model.embed_masks(feats, out["pred_masks"].sigmoid() > preset.mask_threshold)
        adapter = classification_logits(emb, text, model.backbone.logit_scale, vocab.num_synonyms)
    seen = pp.category_overlap(vocab, builtin_vocabulary("coco_panoptic"))
    assert seen.tolist() == [True, True, True]  # cat, couch and sky are COCO panoptic classes
    cls = pp.geometric_ensemble(out["pred_logits"], adapter, seen, 0.7, 0.9)[0]
    masks = torch.nn.functional.interpolate(out["pred_masks"], size=images.shape[-2:], mode="bilinear",
                                            align_corners=False)[0]
    expected = pp.semantic_inference(cls, pp.sem_seg_postprocess(masks, (h, w), 75, 100)).argmax(0)
    assert torch.equal(predictor.predict(scene(), VOCAB, tasks=["semantic"]).semantic, expected)


def test_text_classifier_computed_once_per_vocabulary(predictor, monkeypatch):
    calls = []
    original = TextClassifier.encode
    monkeypatch.setattr(TextClassifier, "encode", lambda self, v: calls.append(v) or original(self, v))
    predictor.predict(scene(), "tree, road")
    predictor.predict(scene(60, 40), "tree, road")
    predictor.classify_masks(scene(), np.ones((1, 75, 100), bool), "tree, road")
    assert len(calls) == 1
    predictor.predict(scene(), "tree, river")
    assert len(calls) == 2


def test_maftp_preset_with_cdt(tmp_path):
    preset = tiny_preset("maftp-large")
    torch.manual_seed(1)
    model = build_model(preset, tiny_architecture())
    assert model.cdt is not None and model.cdt.mode == "panoptic" and model.dense_projection == "maft_legacy"
    path = tmp_path / "tiny_maftp.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    p = Predictor.from_checkpoint(path, preset, tiny_architecture(), precision="fp32")
    for key, value in model.state_dict().items():
        assert torch.equal(p.model.state_dict()[key], value), key
    result = p.predict(scene(), VOCAB)
    assert result.semantic.shape == (75, 100) and result.segments
    # semantic CDT mode uses the other residual formula: different per-image text, so different logits
    text = torch.nn.functional.normalize(torch.randn(4, 32), dim=-1)
    image = torch.randn(1, 32, 2, 3)
    panoptic_out = p.model.cdt(image, text)
    p.model.cdt.mode = "semantic"
    assert not torch.allclose(panoptic_out, p.model.cdt(image, text))
    assert panoptic_out.shape == (1, 4, 32)


def test_checkpoint_of_another_preset_is_refused_with_a_hint(tmp_path):
    # An FC-CLIP-shaped checkpoint (250 queries, D=768) is recognised as fcclip-large.
    arch = tiny_architecture(embed_dim=768, num_queries=250)
    fcclip_like = build_model(tiny_preset(), arch)
    path = tmp_path / "fcclip_like.pth"
    torch.save({"model": fcclip_like.state_dict()}, path)
    assert guess_preset(fcclip_like.state_dict()) == "fcclip-large"
    with pytest.raises(CheckpointError, match=r"does not fit preset 'tiny-maftp-large'.*preset 'fcclip-large'"):
        Predictor.from_checkpoint(path, tiny_preset("maftp-large"), arch)


def test_guess_preset_from_shapes():
    base = {"sem_seg_head.predictor.query_feat.weight": torch.zeros(100, 256)}
    assert guess_preset({**base, "void_embedding.weight": torch.zeros(1, 640), "cdt.x": torch.zeros(1)}) == "maftp-base"
    assert guess_preset({**base, "void_embedding.weight": torch.zeros(1, 768), "cdt.x": torch.zeros(1)}) == "maftp-large"
    assert guess_preset({**base, "void_embedding.weight": torch.zeros(1, 512)}) is None
    assert guess_preset({}) is None


def test_presets_hold_the_official_constants():
    fc, mb, ml = PRESETS["fcclip-large"], PRESETS["maftp-base"], PRESETS["maftp-large"]
    assert (fc.num_queries, fc.mask_threshold, fc.alpha, fc.beta, fc.overlap_threshold) == (250, 0.5, 0.7, 0.9, 0.8)
    assert (mb.num_queries, mb.mask_threshold, mb.alpha, mb.beta, mb.cdt_mode) == (100, 0.45, 0.7, 1.0, "semantic")
    assert (ml.num_queries, ml.mask_threshold, ml.alpha, ml.beta, ml.cdt_mode) == (100, 0.4, 0.8, 1.0, "panoptic")
    assert {p.test_size for p in PRESETS.values()} == {896}
    assert mb.clip_model == "convnext_base_w_320" and ml.overlap_threshold == 0.7
    with pytest.raises(ValueError, match="unknown preset 'fcclip-huge'"):
        get_preset("fcclip-huge")


def test_offline_hub_error_says_what_to_do(monkeypatch, tmp_path):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("We have no connection")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(WeightsUnavailableError) as info:
        resolve_weights(get_preset("maftp-base"))
    msg = str(info.value)
    assert "maftp_convnext_base_maskadapter.pth" in msg and "owl10/Mask-Adapter" in msg and "--weights" in msg
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        resolve_weights(get_preset("maftp-base"), tmp_path / "missing.pth")
    assert resolve_weights(get_preset("maftp-base"), __file__).name == "test_predictor.py"


class StubSam:
    """Overlapping proposals: the whole image, its top half, and a small square inside the top half."""

    def __call__(self, image):
        H, W = image.shape[:2]
        masks = torch.zeros(3, H, W, dtype=torch.bool)
        masks[0] = True
        masks[1, : H // 2] = True
        masks[2, 5:15, 5:15] = True
        return masks, torch.tensor([0.9, 0.8, 0.7])


def test_sam_path_and_overlapping_masks(fcclip_ckpt):
    p = Predictor.from_checkpoint(fcclip_ckpt, tiny_preset(), tiny_architecture(), precision="fp32",
                                  mask_generator=StubSam())
    result = p.predict(scene(), VOCAB)
    cls = p.classify_masks(scene(), StubSam()(scene())[0], VOCAB)
    labels = cls.labels.tolist()
    assert cls.logits.shape == (3, 3)  # adapter only: C columns, no void
    torch.testing.assert_close(cls.scores, cls.logits.softmax(-1).max(-1).values)
    # smaller masks are painted on top of larger ones
    assert int(result.semantic[10, 10]) == labels[2]
    assert int(result.semantic[30, 50]) == labels[1]
    assert int(result.semantic[70, 50]) == labels[0]
    assert {s["id"] for s in result.segments} == {1, 2, 3}
    assert int(result.panoptic[10, 10]) == 3 and int(result.panoptic[70, 50]) == 1
    torch.testing.assert_close(result.instances["scores"], cls.scores * torch.tensor([0.9, 0.8, 0.7]))


def test_paint_masks_order_and_background():
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[0, :2] = True          # area 8
    masks[1, 1:3, 1:3] = True    # area 4, overlaps 0
    masks[2, 0, 0] = True        # area 1, inside 0
    out = pp.paint_masks(masks, torch.tensor([7, 8, 9]))
    expected = torch.tensor([[9, 7, 7, 7], [7, 8, 8, 7], [-1, 8, 8, -1], [-1, -1, -1, -1]])
    assert torch.equal(out, expected)


@pytest.mark.parametrize("vocab, words", [(" , ", "empty"), ("cat, dog, cat", "appears twice")])
def test_bad_vocabularies(predictor, vocab, words):
    with pytest.raises(ValueError, match=words):
        predictor.predict(scene(), vocab)


def test_bad_masks_and_tasks(predictor):
    with pytest.raises(ValueError, match=r"masks must have shape \[N, 75, 100\]"):
        predictor.classify_masks(scene(), np.ones((2, 70, 100), bool), VOCAB)
    with pytest.raises(ValueError, match="tasks"):
        predictor.predict(scene(), VOCAB, tasks=["depth"])
    with pytest.raises(ValueError, match="things names classes not in the vocabulary"):
        predictor.predict(scene(), VOCAB, things=["dog"])
    flags = predictor.predict(scene(), VOCAB, tasks=["panoptic"], things=[False, False, False])
    assert all(not s["isthing"] for s in flags.segments)


def test_image_size_limits(fcclip_ckpt):
    p = Predictor.from_checkpoint(fcclip_ckpt, tiny_preset(), tiny_architecture(), precision="fp32",
                                  max_image_pixels=5000, max_output_pixels=2000)
    with pytest.raises(ValueError, match="7500 pixels is over the limit of 5000"):
        p.predict(scene(), VOCAB)
    small = p.predict(scene(40, 60), VOCAB, tasks=["semantic"])
    assert small.image_size == (36, 54) and small.semantic.shape == (36, 54)  # documented downscale
    with pytest.raises(ValueError, match="no pixels"):
        p.predict(np.zeros((0, 10, 3), np.uint8), VOCAB)


# ----------------------------------------------------------------------------- image decoding
def _save(img: Image.Image, fmt: str, **kw) -> io.BytesIO:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    buf.seek(0)
    return buf


def test_image_modes_are_converted_correctly(tmp_path):
    rgb = Image.fromarray(scene(20, 30))
    gray = rgb.convert("L")
    t = to_rgb_tensor(gray)
    assert t.shape == (3, 20, 30) and torch.equal(t[0], t[1]) and torch.equal(t[0], torch.from_numpy(np.array(gray)))
    rgba = rgb.convert("RGBA")
    rgba.putalpha(0)  # fully transparent: composited over white
    assert torch.all(to_rgb_tensor(rgba) == 255)
    cmyk_path = tmp_path / "cmyk.jpg"
    rgb.convert("CMYK").save(cmyk_path, quality=100)
    assert (to_rgb_tensor(cmyk_path).float() - torch.from_numpy(scene(20, 30)).permute(2, 0, 1)).abs().mean() < 12
    deep = np.full((10, 12), 65535, dtype=np.uint16)
    deep[:, :6] = 257 * 100
    path16 = tmp_path / "deep.png"
    Image.fromarray(deep).save(path16)
    t16 = to_rgb_tensor(path16)
    assert int(t16[0, 0, 0]) == 100 and int(t16[0, 0, 11]) == 255  # rescaled, not clipped


def test_exif_rotation_is_applied(tmp_path):
    img = Image.fromarray(scene(20, 30))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif)
    assert to_rgb_tensor(path).shape == (3, 30, 20)


def test_unreadable_images(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ValueError, match="cannot read image"):
        to_rgb_tensor(bad)
    data = _save(Image.fromarray(scene()), "PNG").getvalue()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot read image"):
        to_rgb_tensor(truncated)
    with pytest.raises(FileNotFoundError):
        to_rgb_tensor(tmp_path / "missing.png")
    with pytest.raises(TypeError, match="unsupported image type"):
        to_rgb_tensor(3.5)


def test_preset_replace_keeps_other_constants():
    p = tiny_preset("maftp-base")
    assert dataclasses.replace(p, test_size=896) == dataclasses.replace(get_preset("maftp-base"), name=p.name)


@pytest.mark.parametrize("name, D, Cv, Q", [("fcclip-large", 768, 1536, 250), ("maftp-base", 640, 1024, 100),
                                            ("maftp-large", 768, 1536, 100)])
def test_released_architectures_have_the_official_key_layout(name, D, Cv, Q):
    """Real-size models (built on the meta device: shapes only) expose the official keys and shapes."""
    with torch.device("meta"):
        sd = build_model(name).state_dict()
    expected = {
        "backbone.clip_model.visual.trunk.head.norm.weight": (Cv,),
        "backbone.clip_model.logit_scale": (),
        "mask_adapter.mask_downscaling.6.weight": (D, 16, 1, 1),
        "mask_adapter.fuse.weight": (768, D, 1, 1),
        "mask_adapter.cnext3.pwconv1.weight": (3072, 768),
        "void_embedding.weight": (1, D),
        "sem_seg_head.pixel_decoder.input_proj.0.0.weight": (256, Cv, 1, 1),
        "sem_seg_head.pixel_decoder.input_proj.2.1.weight": (256,),
        "sem_seg_head.pixel_decoder.transformer.level_embed": (3, 256),
        "sem_seg_head.pixel_decoder.transformer.encoder.layers.5.linear1.weight": (1024, 256),
        "sem_seg_head.pixel_decoder.adapter_1.weight": (256, Cv // 8, 1, 1),
        "sem_seg_head.pixel_decoder.layer_1.norm.weight": (256,),
        "sem_seg_head.predictor.transformer_cross_attention_layers.8.multihead_attn.in_proj_weight": (768, 256),
        "sem_seg_head.predictor.transformer_ffn_layers.8.linear1.weight": (2048, 256),
        "sem_seg_head.predictor.query_feat.weight": (Q, 256),
        "sem_seg_head.predictor._mask_pooling_proj.1.weight": (256, 256),
        "sem_seg_head.predictor.class_embed.layers.2.weight": (D, 256),
        "sem_seg_head.predictor.logit_scale": (),
    }
    if name.startswith("maftp"):
        expected.update({"cdt.cross_atten.multihead_attn.in_proj_weight": (3 * D, D), "cdt.cross_atten.MLP.weight": (D, D),
                         "cdt.cross_atten.norm.bias": (D,)})
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert {k.split(".")[0] for k in sd} == {"backbone", "mask_adapter", "void_embedding", "sem_seg_head"} | (
        {"cdt"} if name.startswith("maftp") else set())
    assert not any("pe_layer" in k or "attn_mask" in k for k in sd)
    assert sum(v.numel() for k, v in sd.items() if k.startswith("mask_adapter.")) == (14_907_568 if D == 768 else 14_807_088)


def test_sam_generator_missing_package_and_checkpoint(tmp_path):
    import importlib.util

    from maskadapter.modeling.generators.sam import SamMaskGenerator

    with pytest.raises(FileNotFoundError, match="SAM checkpoint not found"):
        SamMaskGenerator(tmp_path / "sam.pth")
    ckpt = tmp_path / "sam.pth"
    ckpt.write_bytes(b"x")
    if importlib.util.find_spec("segment_anything") is None:
        with pytest.raises(ImportError, match=r"pip install 'maskadapter\[sam\]'"):
            SamMaskGenerator(ckpt, backend="sam")
    with pytest.raises(ValueError, match="backend must be"):
        SamMaskGenerator(ckpt, backend="sam3")

    class FakeAMG:  # the automatic mask generator's output format: dicts with segmentation, area, predicted_iou
        def __init__(self, checkpoint, **kwargs):
            self.kwargs = kwargs

        def generate(self, image):
            H, W = image.shape[:2]
            small = np.zeros((H, W), bool)
            small[:2, :2] = True
            return [{"segmentation": small, "area": 4, "predicted_iou": 0.5},
                    {"segmentation": np.ones((H, W), bool), "area": H * W, "predicted_iou": 0.9},
                    {"segmentation": np.zeros((H, W), bool), "area": 0, "predicted_iou": 0.1}]

    gen = SamMaskGenerator(ckpt, builder=FakeAMG, points_per_side=8)
    masks, scores = gen(np.zeros((6, 7, 3), np.uint8))
    assert gen._generator.kwargs == {"points_per_side": 8}
    assert masks.shape == (2, 6, 7) and masks[0].all() and scores.tolist() == pytest.approx([0.9, 0.5])  # largest first
    with pytest.raises(ValueError, match="RGB uint8"):
        gen(np.zeros((6, 7), np.uint8))
