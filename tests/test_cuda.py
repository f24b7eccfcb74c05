"""The CUDA tier (``python -m pytest -m cuda``): every preset's architecture at tiny sizes, post-processing (the
CPU-band branch included), mask classification, ground-truth mode, SAM / SAM 2, training with AMP, the evaluation
runner, ``segment`` under torchrun and the demo - on the GPU, checked against the CPU under the numeric contract of
``tests/contract.py``. Figures (precision agreement, measured differences) are printed when the session ends.

Skipped without CUDA. ``MASKADAPTER_TEST_DEVICE=cpu`` runs it with the CPU standing in for the GPU (CPU against
CPU): the test code runs, the CUDA-only branches (TF32, the move to CPU bands, NCCL) do not.
fp32 comparisons switch TF32 off: "fp32" then means fp32; TF32's own agreement is one of the printed figures.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maskadapter.inference.predictor import Predictor
from maskadapter.modeling.build import build_model

from conftest import randomize_, tiny_architecture, tiny_clip_config, tiny_preset, write_tiny_preset
from contract import (MODEL_SCORE_RTOL, MODEL_TIE_ATOL, MODEL_TIE_RTOL, SCORE_RTOL, TIE_ATOL, TIE_RTOL,
                      assert_masks_contract, assert_outputs_contract, assert_scores_close, assert_semantic_contract,
                      deciding_values)
from cuda_utils import (Figures, allow_fp16_on_cpu, device_under_test, is_stand_in, lower_gpu_full_bytes,
                        max_relative_error, spy_postprocess)

REPO = Path(__file__).resolve().parents[1]
DEVICE, SKIP_REASON = device_under_test()
PRESETS = ("fcclip-large", "maftp-base", "maftp-large")
VOCAB = "cat, sofa|couch, sky, road"
cuda = pytest.mark.cuda
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # inside sam2


def scene(h: int = 75, w: int = 100, seed: int = 0) -> np.ndarray:
    """A photo-like test image: noise over two coloured halves and a block."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
    img[: h // 2] += np.array([0, 60, 150], dtype=np.uint8)
    img[h // 2:, w // 3: 2 * w // 3] += np.array([150, 40, 0], dtype=np.uint8)
    return img


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture
def device() -> torch.device:
    """The device under test (skips without one)."""
    if DEVICE is None:
        pytest.skip(SKIP_REASON)
    return DEVICE


@pytest.fixture(scope="session")
def figures(request):
    """Collects figure lines; pytest's terminal summary shows them at the end of the run."""
    collected = Figures(DEVICE)
    request.config.pluginmanager.register(collected, "maskadapter-cuda-figures")
    return collected


@contextlib.contextmanager
def tf32(enabled: bool):
    """TF32 for CUDA matrix products and convolutions on or off (no effect on the CPU)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture
def strict_fp32():
    """fp32 means fp32: no TF32 (torch's default allows it in cuDNN convolutions)."""
    with tf32(False):
        yield


def tiny_model(base: str):
    """(a copy of the tiny random-weight model with ``base``'s architecture and constants, its preset)."""
    model, preset = _tiny_model(base)
    return copy.deepcopy(model), preset


@functools.lru_cache(maxsize=None)
def _tiny_model(base: str):
    # random weights overlap little: a lower overlap threshold keeps panoptic segments (and its rule active)
    preset = tiny_preset(base, overlap_threshold=0.3)
    arch = tiny_architecture()
    if base == "maftp-base":  # ConvNeXt-B-W's CLIP ends in a linear projection, ConvNeXt-L-D's in an MLP
        arch = dataclasses.replace(arch, clip=tiny_clip_config("linear"))
    torch.manual_seed(0)
    model = build_model(preset, arch).eval()
    randomize_(model.mask_adapter, seed=1)  # trained-like activation maps (the default init is near zero)
    # queries of the default init agree on one class everywhere; scrambled ones split the image between classes
    randomize_(model.sem_seg_head.predictor, seed=5, std=1.0)
    if model.cdt is not None:
        randomize_(model.cdt, seed=2, std=0.5)
    return model, preset


def predictors(base: str, device: torch.device, **options):
    """(a CPU predictor, a predictor on ``device``) of the same tiny model, text in memory only."""
    model, preset = tiny_model(base)
    options = {"precision": "fp32", "text_cache_dir": False, **options}
    return (Predictor(model, preset, **options),
            Predictor(copy.deepcopy(model), preset, device=device, **options))


def model_contract(call, expected, actual) -> dict[str, int]:
    """``actual`` (device) meets the whole-model contract against ``expected`` (CPU, whose call is ``call``)."""
    return call.assert_contract(expected, actual, MODEL_TIE_ATOL, MODEL_TIE_RTOL, MODEL_SCORE_RTOL)


def _semantic_scores(call) -> torch.Tensor:
    """[C, H, W] the reference call's semantic deciding values (at its output size)."""
    return deciding_values(call.mask_cls, call.mask_pred, call.size, tuple(call.output.semantic.shape),
                           before=call.options["before"])["semantic"]


def labels_contract(logits_a: torch.Tensor, logits_b: torch.Tensor, what: str) -> int:
    """Argmax classes of [N, C] logits differ only at near-ties of the reference probabilities."""
    probs = logits_a.float().softmax(-1).T[:, :, None]  # [C, N, 1]: one "pixel" per mask
    return assert_semantic_contract(logits_a.argmax(-1)[:, None], logits_b.argmax(-1)[:, None], probs,
                                    MODEL_TIE_ATOL, MODEL_TIE_RTOL, what)


# ---------------------------------------------------------------------------------------------- predict
@cuda
@pytest.mark.parametrize("base", PRESETS)
def test_predict_fp32_on_the_device_meets_the_contract(base, device, strict_fp32, monkeypatch, figures):
    cpu, on_device = predictors(base, device)
    calls = spy_postprocess(monkeypatch)
    expected = cpu.predict(scene(), VOCAB)
    actual = on_device.predict(scene(), VOCAB)
    assert len(calls) == 2 and calls[1].device.type == device.type  # post-processed where the model ran
    assert expected.segments and len(expected.instances)  # there is something to compare
    assert actual.semantic.shape == expected.semantic.shape == (75, 100)
    counts = model_contract(calls[0], expected, actual)
    # the network's outputs themselves (what decides every output above)
    assert_scores_close(calls[1].mask_cls, calls[0].mask_cls, MODEL_TIE_RTOL, MODEL_TIE_ATOL, "log-probs")
    assert_scores_close(calls[1].mask_pred, calls[0].mask_pred, MODEL_TIE_RTOL, MODEL_TIE_ATOL, "mask logits")
    cls_err = max_relative_error(calls[1].mask_cls, calls[0].mask_cls)
    pred_err = max_relative_error(calls[1].mask_pred, calls[0].mask_pred)
    figures(f"predict fp32 {base}: max rel. diff of log-probs {cls_err:.1e}, of mask logits {pred_err:.1e}; "
            f"differing pixels {counts} of {75 * 100}")


def _agreement(ref, other) -> str:
    sem = float((other.semantic == ref.semantic).float().mean())
    return f"semantic labels {100 * sem:6.2f}% equal, {len(other.segments)} vs {len(ref.segments)} segments"


@cuda
@pytest.mark.parametrize("base", PRESETS)
def test_reduced_precisions_agree_with_fp32(base, device, monkeypatch, figures):
    """auto / bf16 / fp16 (and TF32) against strict fp32 on the device: figures; asserts only sanity."""
    allow_fp16_on_cpu(monkeypatch, device)
    _, fp32 = predictors(base, device)
    calls = spy_postprocess(monkeypatch)
    with tf32(False):
        reference = fp32.predict(scene(), VOCAB)
    runs = [("fp32+TF32", fp32, True)] + [(p, fp32.with_options(precision=p), False) for p in ("auto", "bf16", "fp16")]
    for name, predictor, allow_tf32 in runs:
        with tf32(allow_tf32):
            result = predictor.predict(scene(), VOCAB)
        call = calls[-1]
        assert bool(call.mask_cls.isfinite().all()) and bool(call.mask_pred.isfinite().all()), name
        assert result.semantic.shape == reference.semantic.shape and int(result.semantic.max()) < 4
        resolved = predictor.resolved_precision
        figures(f"{base:>12} {name:>9} (runs {resolved}): log-probs max abs diff "
                f"{float((call.mask_cls - calls[0].mask_cls).abs().max()):.2e}, mask logits "
                f"{float((call.mask_pred - calls[0].mask_pred).abs().max()):.2e}; {_agreement(reference, result)}")


# ---------------------------------------------------------------------------------------------- post-processing
@cuda
@pytest.mark.parametrize("before", [True, False])
def test_postprocess_on_the_device_meets_the_contract(before, device, strict_fp32, figures):
    from maskadapter.constants import TASKS
    from maskadapter.inference.banded import postprocess_banded, postprocess_full

    gen = torch.Generator().manual_seed(3)
    Q, C, size, out_size = 12, 5, (37, 50), (150, 200)
    mask_cls = torch.log_softmax(3 * torch.randn(Q, C + 1, generator=gen), -1)
    blobs = 6 * torch.randn(Q, 1, 5, 8, generator=gen)  # smooth masks: segments survive the overlap rule
    mask_pred = torch.nn.functional.interpolate(blobs, size=(40, 64), mode="bilinear")[:, 0]
    is_thing = torch.tensor([True, False, True, False, True])
    args = dict(before=before, object_mask_threshold=0.0, overlap_threshold=0.5, top_k=100)
    expected = postprocess_full(mask_cls, mask_pred, size, out_size, TASKS, is_thing, **args)
    actual = postprocess_banded(mask_cls.to(device), mask_pred.to(device), size, out_size, TASKS,
                                is_thing.to(device), **args)
    assert actual.semantic.device.type == device.type  # the device computed it
    assert expected.segments and len(expected.instances)
    counts = assert_outputs_contract(expected, actual, mask_cls, mask_pred, size, is_thing, **args,
                                     atol=TIE_ATOL, rtol=TIE_RTOL, score_rtol=SCORE_RTOL)
    figures(f"post-processing alone (before={before}): differing pixels {counts} of {150 * 200}")


@cuda
def test_large_outputs_go_to_cpu_bands(device, strict_fp32, monkeypatch, figures):
    """Outputs over the GPU threshold (4 GiB, lowered here to 64 KiB) are post-processed on the CPU, band by band."""
    cpu, on_device = predictors("fcclip-large", device, band_mb=1)
    image = scene(360, 480, seed=1)  # 10 queries x 360 x 480 x 4 bytes = 6.6 MB of resized logits: 1 MiB bands
    calls = spy_postprocess(monkeypatch)
    lower_gpu_full_bytes(monkeypatch, 64 * 2**10)
    expected = cpu.predict(image, VOCAB)
    actual = on_device.predict(image, VOCAB)
    assert [c.device.type for c in calls] == ["cpu", "cpu"]  # moved off the GPU
    assert calls[0].output.bands > 1 and calls[1].output.bands == calls[0].output.bands
    counts = model_contract(calls[0], expected, actual)
    if not is_stand_in(device):  # under the threshold the GPU keeps the work
        lower_gpu_full_bytes(monkeypatch, 2**40)
        on_device.predict(image, VOCAB)
        assert calls[-1].device.type == "cuda" and calls[-1].output.bands == 1
    figures(f"CPU-band branch: {calls[1].output.bands} bands, differing pixels {counts} of {360 * 480}")


# ---------------------------------------------------------------------------------------------- given masks
def _masks(h: int = 75, w: int = 100) -> torch.Tensor:
    masks = torch.zeros(4, h, w, dtype=torch.bool)
    masks[0, : h // 2] = True
    masks[1, h // 2:, : w // 3] = True
    masks[2, h // 2:, w // 3: 2 * w // 3] = True
    masks[3, 10:30, 60:90] = True
    return masks


@cuda
@pytest.mark.parametrize("base", ["fcclip-large", "maftp-large"])
def test_classify_masks_on_the_device(base, device, strict_fp32, figures):
    cpu, on_device = predictors(base, device)
    expected = cpu.classify_masks(scene(), _masks(), VOCAB)
    actual = on_device.classify_masks(scene(), _masks(), VOCAB)
    scale = float(expected.logits.abs().max())  # logits carry CLIP's logit scale: errors are relative to it
    worst = assert_scores_close(actual.logits, expected.logits, MODEL_TIE_RTOL, MODEL_TIE_ATOL * scale, "mask logits")
    differ = labels_contract(expected.logits, actual.logits, "mask classes")
    assert_scores_close(actual.scores, expected.scores, MODEL_SCORE_RTOL, 1e-6, "class probabilities")
    figures(f"classify_masks {base}: max rel. logit diff {worst:.1e}, {differ} of 4 classes differ")


@cuda
def test_ground_truth_mode_on_the_device(device, strict_fp32, figures):
    from maskadapter.inference.ground_truth import classify_ground_truth

    model, preset = tiny_model("maftp-large")
    labels = torch.full((75, 100), 255, dtype=torch.long)
    for c, mask in enumerate(_masks()):
        labels[mask] = c
    args = dict(tasks=("semantic", "panoptic", "instance"), is_thing=[True, False, False, True],
                resize=preset.test_size)
    expected = classify_ground_truth(model, scene(), labels, VOCAB, **args)
    actual = classify_ground_truth(copy.deepcopy(model).to(device), scene(), labels, VOCAB, **args)
    assert torch.equal(actual.class_ids.cpu(), expected.class_ids)
    worst = assert_scores_close(actual.logits, expected.logits, MODEL_TIE_RTOL,
                                MODEL_TIE_ATOL * float(expected.logits.abs().max()), "ground-truth logits")
    differ = labels_contract(expected.logits[:, :-1], actual.logits[:, :-1], "ground-truth classes")
    if not differ:  # the same classes paint the same maps and keep the same segments
        assert torch.equal(actual.semantic.cpu(), expected.semantic)
        assert torch.equal(actual.panoptic.cpu(), expected.panoptic)
        assert [s["category_id"] for s in actual.segments] == [s["category_id"] for s in expected.segments]
        assert_scores_close([s["score"] for s in actual.segments], [s["score"] for s in expected.segments],
                            MODEL_SCORE_RTOL, what="segment scores")
    figures(f"ground-truth mode: max rel. logit diff {worst:.1e}, {differ} of 4 classes differ")


# ---------------------------------------------------------------------------------------------- SAM / SAM 2
def _sam_checkpoint(backend: str, tmp_path: Path, monkeypatch) -> Path:
    from sam_fakes import patch_tiny_sam2, register_tiny_sam

    pytest.importorskip("segment_anything" if backend == "sam" else "sam2")
    if backend == "sam":
        return register_tiny_sam(monkeypatch, tmp_path / "sam_vit_b_01ec64.pth")
    return patch_tiny_sam2(monkeypatch, tmp_path / "sam2.1_hiera_tiny.pt")


def _sam_logits(network, backend: str, image: np.ndarray, coords: np.ndarray, labels: np.ndarray) -> torch.Tensor:
    """The package predictor's single-mask logits [1, H, W] at the image size (SAM's mask is logits > 0): for two
    clicks SAM's rule asks for one mask."""
    if backend == "sam":
        from segment_anything import SamPredictor as Package
    else:
        from sam2.sam2_image_predictor import SAM2ImagePredictor as Package
    package = Package(network)
    package.set_image(image)
    with torch.no_grad():
        logits, _, _ = package.predict(coords, labels, multimask_output=False, return_logits=True)
    return torch.as_tensor(np.asarray(logits, dtype=np.float32))


def _prompt_segmentation(predictor: Predictor, sam, image: np.ndarray, points: list):
    from maskadapter.inference.prompts import PromptSegmenter

    return PromptSegmenter(predictor, sam)(image, VOCAB, points=points)


@cuda
@pytest.mark.parametrize("backend", ["sam", "sam2"])
def test_sam_prompts_on_the_device(backend, device, strict_fp32, tmp_path, monkeypatch, figures):
    from maskadapter.modeling.generators.sam import SamPromptPredictor

    ckpt = _sam_checkpoint(backend, tmp_path, monkeypatch)
    cpu, on_device = predictors("fcclip-large", device)
    image, points = scene(), [(20, 40, True), (70, 5, False)]
    runs = {}
    for where, predictor in (("cpu", cpu), ("device", on_device)):
        sam = SamPromptPredictor(ckpt, backend, device=predictor.device)
        runs[where] = (sam, _prompt_segmentation(predictor, sam, image, points))
    (cpu_sam, expected), (_, actual) = runs["cpu"], runs["device"]
    logits = _sam_logits(cpu_sam.model.network, backend, image, np.array([[20.0, 40.0], [70.0, 5.0]], np.float32),
                         np.array([1, 0]))
    assert torch.equal(expected.masks[:1], logits > 0)  # the reference's deciding values are the right ones
    assert_scores_close(actual.sam_scores, expected.sam_scores, MODEL_SCORE_RTOL, 1e-6, "SAM IoU predictions")
    differ = assert_masks_contract(expected.masks[:1], actual.masks[:1].cpu(), logits, 0.0,
                                   MODEL_TIE_ATOL, MODEL_TIE_RTOL, f"{backend} prompt mask")
    if not differ and bool(expected.masks[0].any()):
        labels_contract(expected.classification.logits, actual.classification.logits, "prompt classes")
    figures(f"{backend} prompts: {differ} mask pixels differ of {75 * 100}")


@cuda
@pytest.mark.parametrize("backend", ["sam", "sam2"])
def test_sam_automatic_masks_on_the_device(backend, device, strict_fp32, tmp_path, monkeypatch, figures):
    from maskadapter.modeling.generators.sam import SamMaskGenerator

    ckpt = _sam_checkpoint(backend, tmp_path, monkeypatch)
    image = scene()
    # random weights: keep every mask the generator finds (its quality filters would drop them)
    args = dict(points_per_side=4, pred_iou_thresh=-10.0, stability_score_thresh=0.0)
    expected_masks, expected_scores = SamMaskGenerator(ckpt, backend, device="cpu", **args)(image)
    generator = SamMaskGenerator(ckpt, backend, device=device, **args)
    masks, scores = generator(image)
    assert masks.shape[1:] == (75, 100) and len(masks) >= 1
    # NMS and sorting by area decide near 0.7 IoU / equal areas: allow one mask more or less, compare the rest
    assert abs(len(masks) - len(expected_masks)) <= 1
    n = min(len(masks), len(expected_masks))
    disagreement = (masks[:n] != expected_masks[:n]).flatten(1).float().mean(1)
    assert float(disagreement.max()) <= 0.02, disagreement.tolist()
    _, on_device = predictors("fcclip-large", device)
    result = Predictor(on_device.model, on_device.preset, device=device, precision="fp32", text_cache_dir=False,
                       mask_generator=generator).predict(image, VOCAB, tasks=("semantic", "panoptic"))
    classified = on_device.classify_masks(image, masks, VOCAB)
    assert result.semantic.shape == (75, 100) and len(result.segments) >= 1
    assert all(s["category_id"] == int(classified.labels[s["id"] - 1]) for s in result.segments)
    figures(f"{backend} automatic: {len(masks)} masks on the device, {len(expected_masks)} on the CPU; worst mask "
            f"disagreement {100 * float(disagreement.max()):.2f}% of pixels; max IoU-score diff "
            f"{float((scores[:n] - expected_scores[:n]).abs().max()):.1e}")


# ---------------------------------------------------------------------------------------------- training, evaluation
@cuda
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_training_steps_with_amp(precision, device, tmp_path, monkeypatch, figures):
    from maskadapter.training import Trainer, config_from_dict
    from training_utils import synthetic_config

    allow_fp16_on_cpu(monkeypatch, device)
    losses = {}
    for name in ("fp32", precision):
        cfg = config_from_dict(synthetic_config(
            tmp_path / name, data={"synthetic_num_images": 4},
            solver={"precision": name, "max_iter": 2, "batch_size": 2},
            run={"device": str(device), "checkpoint_period": 0}))
        trainer = Trainer(cfg)
        assert trainer.scaler.is_enabled() == (name == "fp16")  # fp16 AMP needs the GradScaler
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
        with tf32(False):
            result = trainer.train()
        assert result.iteration == 2 and math.isfinite(result.train_stats["loss"])
        after = dict(trainer.model.named_parameters())
        assert all(bool(after[n].isfinite().all()) for n in before)
        assert any(not torch.equal(after[n].detach(), before[n]) for n in before)  # it learned something
        losses[name] = result.train_stats["loss"]
        scale = trainer.scaler.get_scale() if trainer.scaler.is_enabled() else None
    # same data, same seed: the AMP loss after 2 steps stays near fp32's (loose: AMP rounds every layer)
    assert losses[precision] == pytest.approx(losses["fp32"], rel=0.1)
    figures(f"training 2 steps: loss fp32 {losses['fp32']:.5f}, {precision} {losses[precision]:.5f}"
            + (f", GradScaler scale {scale:g}" if scale is not None else ""))


@cuda
def test_eval_runner_on_the_device(device, strict_fp32, tmp_path, monkeypatch, figures):
    from maskadapter.data.datasets import load_custom_dataset
    from maskadapter.evaluation.runner import run_evaluation

    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    rng = np.random.default_rng(3)
    for i in range(3):
        Image.fromarray(scene(30, 40, seed=i)).save(images / f"im{i}.png")
        Image.fromarray(rng.integers(0, 4, (30, 40), dtype=np.uint8)).save(labels / f"im{i}.png")
    (tmp_path / "classes.txt").write_text("cat\nsofa|couch\nsky\nroad\n", encoding="utf-8")
    dataset = load_custom_dataset(images, labels, tmp_path / "classes.txt")
    cpu, on_device = predictors("fcclip-large", device)
    calls = spy_postprocess(monkeypatch)
    expected = run_evaluation(cpu, dataset, output_dir=tmp_path / "cpu", progress=False)
    actual = run_evaluation(on_device, dataset, output_dir=tmp_path / "device", progress=False)
    assert len(calls) == 6 and [c.device.type for c in calls[3:]] == [device.type] * 3
    counts = [model_contract(c, c.output, d.output)["semantic"] for c, d in zip(calls[:3], calls[3:])]
    miou = expected["metrics"]["semantic"]["mIoU"], actual["metrics"]["semantic"]["mIoU"]
    if not any(counts):  # the same predictions: the same metrics
        assert actual["metrics"] == expected["metrics"]
    assert miou[1] == pytest.approx(miou[0], abs=1.0)
    figures(f"eval runner: mIoU CPU {miou[0]:.3f}, device {miou[1]:.3f}; differing pixels per image {counts}")


# ---------------------------------------------------------------------------------------------- torchrun, demo
@cuda
def test_segment_under_torchrun_one_process(device, strict_fp32, tmp_path, monkeypatch, figures):
    """``segment`` through torchrun (one process) on the device, against the CPU. A world of one starts no process
    group (``init_distributed``), so neither NCCL nor gloo carries anything here; the torchrun environment
    (``LOCAL_RANK`` picking the GPU, rank-0 reporting) and the decoding worker process do run."""
    model, _ = tiny_model("fcclip-large")
    preset_file = write_tiny_preset(tmp_path / "tiny.json", overlap_threshold=0.3)  # tiny_model's architecture
    weights = tmp_path / "tiny.pth"
    torch.save({"model": model.state_dict()}, weights)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(scene(60 + 10 * i, 80, seed=i)).save(folder / f"im{i}.png")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
           "-m", "maskadapter", "segment", str(folder), "--vocab", VOCAB, "--preset", str(preset_file),
           "--weights", str(weights), "--precision", "fp32", "--device", device.type, "--task", "semantic",
           "-o", str(out), "--workers", "1", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1", NVIDIA_TF32_OVERRIDE="0"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 images: 2 segmented" in proc.stdout and "on 1 process(es)" in proc.stdout, proc.stdout
    cpu = Predictor.from_checkpoint(weights, str(preset_file), precision="fp32", text_cache_dir=False)
    calls = spy_postprocess(monkeypatch)
    counts, classes = [], set()
    for i in range(2):
        expected = cpu.predict(folder / f"im{i}.png", VOCAB, tasks=("semantic",))
        label_png = out / f"im{i}_labels.png"
        labels = torch.from_numpy(np.array(Image.open(label_png)).astype(np.int64))
        labels[labels == 255] = -1
        counts.append(assert_semantic_contract(expected.semantic, labels, _semantic_scores(calls[-1]),
                                               MODEL_TIE_ATOL, MODEL_TIE_RTOL, f"{label_png.name}"))
        classes |= set(labels.unique().tolist())
    assert len(classes) > 1  # maps worth comparing
    figures(f"segment under torchrun (1 process, {device.type}): differing label pixels per image {counts}")


@cuda
def test_demo_answers_a_request_on_the_device(device, strict_fp32, tmp_path, monkeypatch, figures):
    from maskadapter.demo import segment_request
    from maskadapter.inference.writers import label_map_image

    cpu, on_device = predictors("fcclip-large", device)
    path = tmp_path / "photo.png"
    Image.fromarray(scene()).save(path)
    calls = spy_postprocess(monkeypatch)
    expected = cpu.predict(str(path), VOCAB, tasks=("semantic", "panoptic"))
    overlay, rows, label_path, json_path, status = segment_request(on_device, str(path), VOCAB, "panoptic",
                                                                   output_dir=tmp_path / "out", name="photo.png")
    assert status.startswith("panoptic:") and overlay.size == (100, 75) and rows, status
    assert calls[-1].device.type == device.type
    labels = torch.from_numpy(np.array(Image.open(label_path)).astype(np.int64))
    reference = torch.from_numpy(np.array(label_map_image(expected)).astype(np.int64))
    differ = assert_semantic_contract(reference, labels, _semantic_scores(calls[0]), MODEL_TIE_ATOL, MODEL_TIE_RTOL,
                                      "demo label map")
    data = json.loads(Path(json_path).read_text(encoding="utf-8"))
    assert len(data["segments_info"]) == len(rows)
    figures(f"demo request on {device.type}: {differ} label pixels differ from the CPU; {status}")


# ---------------------------------------------------------------------------------------------- the GPU benchmark
@pytest.mark.slow
def test_gpu_benchmark_smoke_on_cpu():
    """``benchmarks/gpu.py --device cpu --tiny`` (one preset, fp32: one child process) runs the GPU benchmark's code
    end to end and prints its table row beside the authors' figure."""
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--device", "cpu", "--tiny",
                           "--presets", "maftp-base", "--precisions", "fp32"],
                          capture_output=True, text=True, timeout=300, cwd=REPO / "benchmarks")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| tiny-")]
    assert len(rows) == 1 and rows[0].startswith("| tiny-maftp-base | fp32 (fp32) |"), proc.stdout
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert len(cells) == 11 and float(cells[4]) > 0 and cells[9] == "125"  # ms per image; the authors' 125 ms
    assert "RTX 4090" in proc.stdout
