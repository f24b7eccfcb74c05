"""SAM / SAM 2 wrappers with the real packages and tiny random-weight networks (tests/sam_fakes.py): model types
from released file names, loading errors, the prompt predictor (same masks as the package's own predictor, one
image embedding per image), and automatic masks through the Predictor for both SAM and SAM 2."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from maskadapter.demo import SamTools
from maskadapter.errors import CheckpointError, UnsafeCheckpointError
from maskadapter.inference.predictor import Predictor
from maskadapter.modeling.build import build_model
from maskadapter.modeling.generators.sam import (SAM2_CONFIGS, SamMaskGenerator, SamModel, SamPromptPredictor,
                                                 infer_sam_model, load_sam, resolve_sam_model_type)

from conftest import tiny_architecture, tiny_preset, write_tiny_preset
from sam_fakes import patch_tiny_sam2, register_tiny_sam, tiny_sam

# sam2's transforms call torch.jit.script, which torch deprecates; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")


def _scene(H: int = 60, W: int = 80) -> np.ndarray:
    image = np.full((H, W, 3), (200, 220, 240), np.uint8)
    image[H // 2:, :] = (90, 90, 95)
    image[10:30, 15:40] = (200, 30, 30)
    return image


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    return Predictor(build_model(tiny_preset(), tiny_architecture()), tiny_preset(), precision="fp32",
                     text_cache_dir=False)


def _encoder_calls(network: torch.nn.Module) -> list:
    calls: list = []
    network.image_encoder.register_forward_hook(lambda *args: calls.append(1))
    return calls


# ---------------------------------------------------------------------------------------------- model types
@pytest.mark.parametrize("backend, model_type, file, expected", [
    ("sam", None, "sam_vit_b_01ec64.pth", "vit_b"),
    ("sam", None, "sam_vit_l_0b3195.pth", "vit_l"),
    ("sam", None, "my_sam.pth", "vit_h"),  # the historical default
    ("sam", "vit_l", "sam_vit_b_01ec64.pth", "vit_l"),  # given wins over the file name
    ("sam2", None, "sam2.1_hiera_base_plus.pt", "configs/sam2.1/sam2.1_hiera_b+.yaml"),
    ("sam2", None, "sam2_hiera_tiny.pt", "configs/sam2/sam2_hiera_t.yaml"),
    ("sam2", "vit_h", "sam2.1_hiera_large.pt", "configs/sam2.1/sam2.1_hiera_l.yaml"),  # the CLI's SAM default
    ("sam2", "sam2.1_hiera_s", "weights.pt", "configs/sam2.1/sam2.1_hiera_s.yaml"),
    ("sam2", "configs/custom/mine.yaml", "weights.pt", "configs/custom/mine.yaml"),
])
def test_model_type_from_released_file_names(backend, model_type, file, expected):
    assert resolve_sam_model_type(backend, model_type, f"/ckpt/{file}") == expected


def test_model_type_errors():
    with pytest.raises(ValueError, match="cannot tell the SAM 2 model of .*weights.pt.*sam2.1_hiera_l"):
        resolve_sam_model_type("sam2", None, "weights.pt")
    with pytest.raises(ValueError, match="unknown SAM model type 'vit_x'; one of vit_h, vit_l, vit_b"):
        resolve_sam_model_type("sam", "vit_x", "sam.pth")
    with pytest.raises(ValueError, match="backend must be 'sam' or 'sam2'"):
        resolve_sam_model_type("sam3", None, "sam.pth")
    assert set(SAM2_CONFIGS) >= {"sam2.1_hiera_t", "sam2.1_hiera_l", "sam2_hiera_b+"}


# ---------------------------------------------------------------------------------------------- loading
def test_load_errors_name_the_file_and_the_fix(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="SAM checkpoint not found: .*missing.pth"):
        load_sam(tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match="SAM checkpoint not found"):
        SamPromptPredictor(tmp_path / "missing.pth")
    ckpt = tmp_path / "sam_vit_b.pth"
    ckpt.write_bytes(b"not a checkpoint")
    monkeypatch.setitem(sys.modules, "segment_anything", None)  # import -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'maskadapter\[sam\]'"):
        SamPromptPredictor(ckpt, "sam")
    monkeypatch.setitem(sys.modules, "sam2.build_sam", None)
    with pytest.raises(ImportError, match=r"pip install 'maskadapter\[sam2\]'"):
        load_sam(ckpt, "sam2", "sam2.1_hiera_t")


def test_checkpoint_that_does_not_fit_is_a_value_error(tmp_path, monkeypatch):
    pytest.importorskip("segment_anything")
    register_tiny_sam(monkeypatch, tmp_path / "tiny.pth")
    garbage = tmp_path / "sam_vit_b_garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"could not read .*sam_vit_b_garbage.pth"):
        load_sam(garbage, "sam")
    other = tmp_path / "sam_vit_b_other.pth"
    torch.save({"image_encoder.pos_embed": torch.zeros(1)}, other)
    with pytest.raises(ValueError, match="does not load as sam 'vit_b'"):
        load_sam(other, "sam")


def test_unknown_sam2_config_lists_the_known_ones(tmp_path, monkeypatch):
    pytest.importorskip("sam2")
    ckpt = patch_tiny_sam2(monkeypatch, tmp_path / "sam2.1_hiera_tiny.pt")
    with pytest.raises(ValueError, match=r"unknown SAM 2 config 'configs/nope.yaml'; one of .*sam2.1_hiera_t"):
        load_sam(ckpt, "sam2", "configs/nope.yaml")


# ---------------------------------------------------------------------------------------------- prompts
def test_sam_prompt_predictor_matches_the_package_and_embeds_once(tmp_path, monkeypatch):
    sa = pytest.importorskip("segment_anything")
    ckpt = register_tiny_sam(monkeypatch, tmp_path / "sam_vit_b_01ec64.pth")
    sam = SamPromptPredictor(ckpt, "sam")
    assert sam.model.model_type == "vit_b" and sam.model.describe() == "SAM (vit_b)"
    with pytest.raises(RuntimeError, match="no image set"):
        sam.predict(np.array([[5.0, 5.0]]), np.array([1]))
    calls = _encoder_calls(sam.model.network)
    image = _scene()
    assert sam.set_image(image) is True and sam.image_size == (60, 80)
    assert sam.set_image(image.copy()) is False  # same pixels, another array: reused
    coords, labels = np.array([[20.0, 15.0], [60.0, 50.0]]), np.array([1, 0])
    masks, scores = sam.predict(coords, labels, multimask_output=True)
    box_masks, box_scores = sam.predict(box=np.array([10.0, 5.0, 45.0, 35.0]), multimask_output=False)
    assert calls == [1]  # one embedding for two prompts
    reference = sa.SamPredictor(tiny_sam())  # the package's own predictor, same weights
    reference.set_image(image)
    ref_masks, ref_scores, _ = reference.predict(coords, labels, multimask_output=True)
    assert masks.dtype == torch.bool and masks.shape == (3, 60, 80)
    assert torch.equal(masks, torch.from_numpy(ref_masks))
    assert torch.allclose(scores, torch.from_numpy(ref_scores))
    assert box_masks.shape == (1, 60, 80) and box_scores.shape == (1,)
    other = image.copy()
    other[0, 0] = 0  # one pixel differs: a new image
    assert sam.set_image(other) is True and calls == [1, 1] and sam.embeddings_computed == 2


@pytest.mark.slow  # SAM 2's predictor works at 1024x1024 whatever the network's size
def test_sam2_prompt_predictor(tmp_path, monkeypatch):
    pytest.importorskip("sam2")
    ckpt = patch_tiny_sam2(monkeypatch, tmp_path / "sam2.1_hiera_tiny.pt")
    sam = SamPromptPredictor(ckpt, "sam2")  # the config comes from the file name
    assert sam.model.model_type == "configs/sam2.1/sam2.1_hiera_t.yaml"
    assert sam.model.describe() == "SAM 2 (sam2.1_hiera_t)"
    calls = _encoder_calls(sam.model.network)
    image = _scene()
    sam.set_image(image)
    masks, scores = sam.predict(np.array([[20.0, 15.0]]), np.array([1]), multimask_output=True)
    assert masks.dtype == torch.bool and masks.shape == (3, 60, 80) and scores.shape == (3,)
    assert bool(((scores > 0) & (scores < 1)).all())  # SAM 2's IoU head ends in a sigmoid
    boxed, _ = sam.predict(box=np.array([10.0, 5.0, 45.0, 35.0]), multimask_output=False)
    assert sam.set_image(image) is False and boxed.shape == (1, 60, 80) and calls == [1]


def test_one_network_serves_both_modes(tmp_path, monkeypatch):
    sa = pytest.importorskip("segment_anything")
    ckpt = register_tiny_sam(monkeypatch, tmp_path / "sam_vit_b_01ec64.pth")
    builds = []
    build = sa.sam_model_registry["vit_b"]
    monkeypatch.setitem(sa.sam_model_registry, "vit_b", lambda checkpoint=None: builds.append(1) or build(checkpoint))
    tools = SamTools.load(ckpt, "sam", points_per_side=4)
    assert builds == [1] and tools.name == "SAM (vit_b)"
    assert tools.prompts.model is tools.generator.model and isinstance(tools.generator.model, SamModel)
    model = load_sam(ckpt, "sam")
    assert SamPromptPredictor(model).model is model and SamMaskGenerator(model).model is model


# ---------------------------------------------------------------------------------------------- automatic masks
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sam", "sam2"])
def test_automatic_masks_end_to_end(tmp_path, monkeypatch, predictor, backend):
    if backend == "sam":
        pytest.importorskip("segment_anything")
        ckpt = register_tiny_sam(monkeypatch, tmp_path / "sam_vit_b_01ec64.pth")
    else:
        pytest.importorskip("sam2")
        ckpt = patch_tiny_sam2(monkeypatch, tmp_path / "sam2.1_hiera_tiny.pt")
    # random weights: keep every mask the generator finds (its quality filters would drop them)
    generator = SamMaskGenerator(ckpt, backend, points_per_side=4, pred_iou_thresh=-10.0, stability_score_thresh=0.0)
    image = _scene()
    masks, scores = generator(image)
    assert masks.dtype == torch.bool and masks.shape[1:] == (60, 80) and len(masks) == len(scores) >= 1
    areas = masks.flatten(1).sum(1)
    assert bool((areas > 0).all()) and areas.tolist() == sorted(areas.tolist(), reverse=True)
    sam_predictor = Predictor(predictor.model, predictor.preset, precision="fp32", text_cache_dir=False,
                              mask_generator=generator)
    result = sam_predictor.predict(image, "sky, road, car", tasks=("semantic", "panoptic"))
    expected = predictor.classify_masks(image, masks, "sky, road, car")
    assert torch.equal(result.semantic, expected.semantic)  # the masks, classified by the adapter alone
    assert len(result.segments) >= 1 and all(s["category_id"] == int(expected.labels[s["id"] - 1])
                                             for s in result.segments)


# ---------------------------------------------------------------------------------------------- weights-only, variants
def _layout(prefix: str, blocks: int, *extra: str) -> dict:
    """A state dict with only the keys that tell SAM networks apart (one tiny tensor each)."""
    keys = [f"{prefix}.{i}.norm1.weight" for i in range(blocks)] + list(extra) + ["mask_decoder.iou_token.weight"]
    return {k: torch.zeros(1) for k in keys}


@pytest.mark.parametrize("state, expected", [
    (_layout("image_encoder.blocks", 12), ("sam", "vit_b")),
    (_layout("image_encoder.blocks", 24), ("sam", "vit_l")),
    (_layout("image_encoder.blocks", 32), ("sam", "vit_h")),
    (_layout("image_encoder.blocks", 3), ("sam", None)),
    (_layout("image_encoder.trunk.blocks", 12, "no_obj_embed_spatial"), ("sam2", SAM2_CONFIGS["sam2.1_hiera_t"])),
    (_layout("image_encoder.trunk.blocks", 16), ("sam2", SAM2_CONFIGS["sam2_hiera_s"])),
    (_layout("image_encoder.trunk.blocks", 24, "no_obj_embed_spatial"), ("sam2", SAM2_CONFIGS["sam2.1_hiera_b+"])),
    (_layout("image_encoder.trunk.blocks", 48), ("sam2", SAM2_CONFIGS["sam2_hiera_l"])),
    ({"backbone.x": torch.zeros(1)}, (None, None)),
])
def test_the_variant_is_read_from_the_state_dict(state, expected):
    assert infer_sam_model(state) == expected


def test_sam_checkpoint_is_read_weights_only(tmp_path, monkeypatch):
    """Even with torch's weights-only loading switched off, a code-running pickle is refused, never run."""
    pytest.importorskip("segment_anything")
    register_tiny_sam(monkeypatch, tmp_path / "tiny.pth")
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "sam_vit_b_evil.pth"
    torch.save({"image_encoder.pos_embed": Payload()}, evil)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(UnsafeCheckpointError, match="sam_vit_b_evil.pth"):
        load_sam(evil)
    assert not marker.exists()


def test_any_sam_layout_file_loads_through_the_cli_without_sam_model(tmp_path, monkeypatch, capsys, tiny_fcclip):
    """A small SAM with vit_b's depth, in a file whose name says nothing: --sam-model and --sam-backend are read
    from its weights; the network is built without a checkpoint path and loaded from the state dict."""
    sa = pytest.importorskip("segment_anything")
    from PIL import Image

    from maskadapter.cli import main

    built = []

    def build(kind):
        def make(checkpoint=None):
            built.append((kind, checkpoint))
            return tiny_sam(seed=123, depth=12)
        return make

    for kind in ("vit_b", "vit_l", "vit_h"):
        monkeypatch.setitem(sa.sam_model_registry, kind, build(kind))
    weights = tmp_path / "weights.pth"
    network = tiny_sam(depth=12)
    torch.save(network.state_dict(), weights)
    assert load_sam(weights).model_type == "vit_b" and built == [("vit_b", None)]
    model_file = tmp_path / "tiny.pth"
    torch.save({"model": tiny_fcclip.state_dict()}, model_file)
    Image.fromarray(_scene()).save(tmp_path / "scene.png")
    code = main(["segment", str(tmp_path / "scene.png"), "--vocab", "sky, road, car", "--points", "20,15",
                 "--sam-checkpoint", str(weights), "--preset", str(write_tiny_preset(tmp_path / "tiny.json")),
                 "--weights", str(model_file), "--precision", "fp32", "--no-text-cache", "-o", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    assert built[-1] == ("vit_b", None) and (tmp_path / "out" / "scene.json").is_file()
