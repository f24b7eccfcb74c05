"""`maskadapter segment` end to end: a preset JSON + fabricated checkpoint, a folder of generated images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util

from maskadapter.cli import main
from maskadapter.modeling.build import build_model, load_preset_file

from conftest import tiny_architecture, tiny_preset, write_tiny_preset


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    preset_file = write_tiny_preset(root / "tiny.json")
    preset, arch = load_preset_file(preset_file)
    assert arch == tiny_architecture() and preset == tiny_preset()
    torch.manual_seed(0)
    weights = root / "tiny.pth"
    torch.save({"model": build_model(preset, arch).state_dict()}, weights)
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(images / "a.png")
    Image.fromarray(rng.integers(0, 255, (64, 48, 3), dtype=np.uint8)).save(images / "b.jpg")
    return root, preset_file, weights, images


@pytest.mark.parametrize("task", ["semantic", "panoptic", "instance"])
def test_segment_folder(setup, task, capsys):
    root, preset_file, weights, images = setup
    out = root / f"out-{task}"
    code = main(["segment", str(images), "--vocab", "cat, sofa|couch; sky", "--preset", str(preset_file),
                 "--weights", str(weights), "--task", task, "-o", str(out), "--precision", "fp32"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "a.png" in printed and "b.jpg" in printed and "120x90" in printed
    for stem, (h, w) in (("a", (90, 120)), ("b", (64, 48))):
        overlay = Image.open(out / f"{stem}_overlay.png")
        assert overlay.size == (w, h) and overlay.mode == "RGB"
        labels = np.array(Image.open(out / f"{stem}_labels.png"))
        assert labels.shape == (h, w) and labels.dtype == np.uint8 and labels.max() < 3
        data = json.loads((out / f"{stem}.json").read_text())
        assert data["height"] == h and data["width"] == w and data["task"] == task
        assert [c["name"] for c in data["categories"]] == ["cat", "sofa", "sky"]
        assert data["categories"][1]["synonyms"] == ["sofa", "couch"]
        assert sum(s["area"] for s in data["semantic"]) == h * w
        for s in data["semantic"]:
            assert s["area"] == int((labels == s["category_id"]).sum())
        if task == "panoptic":
            assert data["segments_info"] and all({"id", "category_id", "bbox", "area", "isthing", "score"}
                                                 <= set(s) for s in data["segments_info"])
        if task == "instance":
            inst = data["instances"]
            assert inst
            rle = dict(inst[0]["segmentation"], counts=inst[0]["segmentation"]["counts"].encode())
            decoded = mask_util.decode(rle)
            assert decoded.shape == (h, w) and int(decoded.sum()) == inst[0]["area"]


def test_segment_reports_bad_images_and_inputs(setup, capsys):
    root, preset_file, weights, images = setup
    broken = root / "broken"
    broken.mkdir()
    (broken / "bad.png").write_bytes(b"not a png")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(broken / "ok.png")
    base = ["--preset", str(preset_file), "--weights", str(weights), "-o", str(root / "out-bad")]
    assert main(["segment", str(broken), "--vocab", "cat, dog", *base]) == 1
    err = capsys.readouterr().err
    assert "bad.png" in err and "cannot read image" in err and "1 of 2 images failed" in err
    assert (root / "out-bad" / "ok.json").exists()
    assert main(["segment", str(images), "--vocab", " , ", *base]) == 1
    assert "vocabulary is empty" in capsys.readouterr().err
    assert main(["segment", str(images), "--vocab", "cat, cat", *base]) == 1
    assert "appears twice" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse: one of --vocab / --vocab-file is required
        main(["segment", str(images), *base])
    assert exit_info.value.code == 2
    assert main(["segment", str(root / "nope"), "--vocab", "cat", *base]) == 1
    assert "no such image or folder" in capsys.readouterr().err
    vocab_file = root / "classes.txt"
    vocab_file.write_text("1:cat,kitty\n2:dog\n")
    assert main(["segment", str(images / "a.png"), "--vocab-file", str(vocab_file), *base]) == 0


def test_segment_without_weights_offline(setup, monkeypatch, capsys):
    import huggingface_hub

    root, _, _, images = setup

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    code = main(["segment", str(images), "--vocab", "cat", "--preset", "fcclip-large", "-o", str(root / "o")])
    assert code == 1
    err = capsys.readouterr().err
    assert "fcclip_convnext_large_maskadapter.pth" in err and "--weights" in err
