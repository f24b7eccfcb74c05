"""The predictor's shape: one model loader (a preset resolved once per command), a vocabulary prepared once, an
immutable predictor whose timings come with its results, results that print briefly, bounded class names."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import maskadapter.data.vocabularies as vocabularies
from maskadapter.checkpoint import CheckpointError
from maskadapter.inference.predictor import Predictor
from maskadapter.inference.vocabularies import PreparedVocabulary
from maskadapter.modeling.load import ADAPTER_PARTS, load_model
from maskadapter.vocabulary import MAX_NAME_LENGTH, Vocabulary

from conftest import random_photo, tiny_architecture, tiny_preset, write_tiny_checkpoint

VOCAB = "sky, road|street, car"


@pytest.fixture(scope="module")
def predictor(tiny_fcclip):
    return Predictor(tiny_fcclip, tiny_preset(), precision="fp32", text_cache_dir=False)


def image(seed: int = 0) -> np.ndarray:
    return random_photo(40, 56, seed)


# ---------------------------------------------------------------------------------------------- vocabularies
def test_one_preparation_and_no_class_file_read_per_predict_after_the_first(tiny_fcclip, monkeypatch):
    p = Predictor(tiny_fcclip, tiny_preset(), precision="fp32", text_cache_dir=False)
    builds, reads = [], []
    build = PreparedVocabulary.build.__func__
    monkeypatch.setattr(PreparedVocabulary, "build", classmethod(lambda cls, *a, **k: builds.append(1)
                                                                 or build(cls, *a, **k)))
    read = vocabularies._read_lines
    monkeypatch.setattr(vocabularies, "_read_lines", lambda name: reads.append(name) or read(name))
    first = p.predict(image(0), VOCAB)
    assert builds == [1] and reads == ["coco_panoptic"]  # the default things: COCO's thing classes, read once
    for seed in (1, 2, 3):
        p.predict(image(seed), VOCAB)
        p.with_options(band_mb=64).predict(image(seed), VOCAB)  # copies share the preparations
    assert builds == [1] and reads == ["coco_panoptic"]
    prepared = p.prepare_vocabulary(VOCAB)
    again = p.predict(image(0), prepared)
    assert builds == [1] and torch.equal(again.semantic, first.semantic)
    p.predict(image(0), VOCAB, things=["car"])  # other things: one more preparation, no file read
    assert builds == [1, 1] and reads == ["coco_panoptic"]


def test_a_prepared_vocabulary_holds_what_the_model_needs(predictor, tiny_fcclip):
    prepared = predictor.prepare_vocabulary(VOCAB, things=["car"])
    assert prepared.names == ["sky", "road", "car"] and prepared.num_synonyms == [1, 2, 1]
    assert prepared.synonyms == ["sky", "road", "street", "car"] and len(prepared) == 3
    assert prepared.text.shape == (4, tiny_fcclip.backbone.embed_dim)
    assert prepared.is_thing.tolist() == [False, False, True] and prepared.seen.dtype == torch.bool
    assert predictor.prepare_vocabulary(prepared) is prepared
    with pytest.raises(ValueError, match="things are part of a PreparedVocabulary"):
        predictor.predict(image(), prepared, things=["sky"])
    other = Predictor(tiny_fcclip.__class__(tiny_fcclip.backbone.config, None), tiny_preset(), text_cache_dir=False)
    with pytest.raises(ValueError, match="prepared for another model"):
        other.classify_masks(image(), np.ones((1, 40, 56), bool), prepared)


def test_tasks_are_checked_in_one_place(predictor):
    from maskadapter.inference.options import check_tasks

    assert check_tasks("semantic, panoptic") == ("semantic", "panoptic")
    for bad in ((), ("depth",), ""):
        with pytest.raises(ValueError, match="tasks must name some of semantic, panoptic, instance"):
            predictor.predict(image(), VOCAB, tasks=bad)


def test_class_names_have_a_maximum_length():
    assert len(Vocabulary.parse("x" * MAX_NAME_LENGTH)) == 1
    with pytest.raises(ValueError, match=r"vocabulary class 1 'yyyy.*'\.\.\. has a name of 201 characters; class names "
                                         r"have at most 200"):
        Vocabulary.parse("cat, " + "y" * 201)
    with pytest.raises(ValueError, match="has a name of 100000 characters"):
        Vocabulary.from_classes([("dog", "z" * 100_000)])


# ---------------------------------------------------------------------------------------------- immutability
def test_the_predictor_is_immutable_and_timings_come_with_results(predictor):
    for name, value in (("options", None), ("timings", {}), ("mask_source", None), ("preset", None)):
        with pytest.raises(AttributeError, match="a Predictor is immutable"):
            setattr(predictor, name, value)
    with pytest.raises(AttributeError, match="immutable"):
        del predictor.options
    assert not hasattr(predictor, "timings")
    fp32 = predictor.with_options(precision="bf16")
    assert fp32.options.precision == "bf16" and predictor.options.precision == "fp32" and fp32.model is predictor.model
    with pytest.raises(AttributeError, match="immutable"):
        fp32.options = predictor.options
    result = predictor.predict(image(), VOCAB, tasks=("semantic",))
    assert {"preprocess", "text", "backbone", "generator", "adapter", "postprocess"} <= set(result.timings)
    batch = predictor.predict_batch([image(1), image(2)], VOCAB, tasks=("semantic",))
    assert batch[0].timings == batch[1].timings and batch[0].timings is not batch[1].timings


def test_results_print_shapes_not_run_lengths(predictor):
    result = predictor.predict(image(), VOCAB)
    text = repr(result)
    assert text.startswith("SegmentationResult(3 classes, image_size=(40, 56)") and "int64[40, 56]" in text
    assert "counts" not in text and len(text) < 300
    named = predictor.classify_masks(image(), np.ones((2, 40, 56), bool), VOCAB)
    assert repr(named).startswith("MaskClassification(3 classes, 2 masks") and len(repr(named)) < 300


# ---------------------------------------------------------------------------------------------- loading
def test_load_model_whole_adapter_and_random(tmp_path, tiny_fcclip):
    preset_file, weights = write_tiny_checkpoint(tmp_path)
    model, preset = load_model(preset_file, weights)
    assert preset.name == "tiny-fcclip-large" and model.sem_seg_head is not None and not model.training
    state = torch.load(weights, weights_only=True)["model"]
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    adapter = {k: v for k, v in state.items() if k.startswith("mask_adapter.")}
    clip = {k: v for k, v in state.items() if k.startswith("backbone.clip_model.")}
    torch.save(adapter, tmp_path / "adapter.pth")
    torch.save(clip, tmp_path / "clip.pth")
    only, _ = load_model(preset_file, tmp_path / "adapter.pth", parts=ADAPTER_PARTS, clip_weights=tmp_path / "clip.pth")
    assert only.sem_seg_head is None and torch.equal(only.mask_adapter.final.weight, state["mask_adapter.final.weight"])
    with pytest.raises(CheckpointError, match="holds no CLIP weights.*pass clip_weights="):
        load_model(preset_file, tmp_path / "adapter.pth", parts=ADAPTER_PARTS)
    with pytest.raises(CheckpointError, match="has no mask_adapter.* keys: it is not an adapter checkpoint"):
        load_model(preset_file, tmp_path / "clip.pth", parts=ADAPTER_PARTS)
    with pytest.raises(ValueError, match="a preset file needs --weights"):
        load_model(preset_file)
    fresh, _ = load_model(tiny_preset(), False, architecture=tiny_architecture())
    assert fresh.sem_seg_head is not None


def test_segment_resolves_the_preset_once(tmp_path, monkeypatch, capsys):
    import maskadapter.modeling.build as build
    from PIL import Image

    from maskadapter.cli import main

    preset_file, weights = write_tiny_checkpoint(tmp_path)
    Image.fromarray(image()).save(tmp_path / "photo.png")
    reads = []
    real = build.load_preset_file
    monkeypatch.setattr(build, "load_preset_file", lambda path: reads.append(path) or real(path))
    code = main(["segment", str(tmp_path / "photo.png"), "--vocab", VOCAB, "--preset", str(preset_file),
                 "--weights", str(weights), "--precision", "fp32", "--no-text-cache", "--workers", "0",
                 "-o", str(tmp_path / "out"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert len(reads) == 1
