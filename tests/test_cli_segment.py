"""`maskadapter segment` end to end: a preset JSON + fabricated checkpoint, folders of generated images.
Output names that never collide, resumable folder runs, options checked before the model loads, the summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util

from maskadapter.cli import main
from maskadapter.cli import segment as segment_cmd
from maskadapter.fileio import is_temporary
from maskadapter.modeling.build import build_model, load_preset_file

from conftest import count_model_calls, tiny_architecture, tiny_preset, write_tiny_preset


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
    assert main(["segment", str(images / "a.png"), "--vocab-file", str(vocab_file), *base]) == 1
    assert "holds outputs of another run (differs in vocabulary); pass --overwrite" in capsys.readouterr().err
    assert main(["segment", str(images / "a.png"), "--vocab-file", str(vocab_file), *base, "--overwrite"]) == 0


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


def run(setup, inputs, out, *extra: str, vocab: str = "cat, sofa|couch, sky") -> int:
    _, preset_file, weights, _ = setup
    return main(["segment", *map(str, inputs), "--vocab", vocab, "--preset", str(preset_file), "--weights",
                 str(weights), "-o", str(out), "--workers", "0", "--quiet", *extra])


def save(path: Path, h: int, w: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def size_of(path: Path) -> tuple[int, int]:
    """(H, W) of a PNG."""
    with Image.open(path) as im:
        return im.height, im.width


def test_same_file_name_in_two_folders_keeps_both(setup, tmp_path, capsys):
    save(tmp_path / "d1" / "img.png", 40, 30)
    save(tmp_path / "d2" / "img.png", 30, 50)
    out = tmp_path / "out"
    assert run(setup, [tmp_path / "d1", tmp_path / "d2"], out) == 0
    captured = capsys.readouterr()
    assert "renamed so their outputs stay apart" in captured.err and "d2/img.png -> img_2" in captured.err
    assert size_of(out / "img_labels.png") == (40, 30) and size_of(out / "img_overlay.png") == (40, 30)
    assert size_of(out / "img_2_labels.png") == (30, 50) and size_of(out / "img_2_overlay.png") == (30, 50)
    assert json.loads((out / "img_2.json").read_text())["width"] == 50
    assert "30x40" in captured.out and "50x30" in captured.out and "2 images: 2 segmented" in captured.out


def test_same_stem_with_two_suffixes_keeps_both(setup, tmp_path, capsys):
    save(tmp_path / "in" / "pic.jpg", 20, 30)
    save(tmp_path / "in" / "pic.png", 30, 20)
    out = tmp_path / "out"
    assert run(setup, [tmp_path / "in"], out) == 0
    assert "pic.jpg -> pic_jpg" in capsys.readouterr().err
    assert size_of(out / "pic_jpg_labels.png") == (20, 30) and size_of(out / "pic_png_labels.png") == (30, 20)
    assert json.loads((out / "pic_jpg.json").read_text())["file_name"] == "pic.jpg"
    assert sorted(p.name for p in out.glob("pic*")) == [
        "pic_jpg.json", "pic_jpg_labels.png", "pic_jpg_overlay.png", "pic_png.json", "pic_png_labels.png",
        "pic_png_overlay.png"]


def test_nested_folders_with_and_without_recursive(setup, tmp_path, capsys):
    src = tmp_path / "in"
    save(src / "top.png", 20, 20)
    save(src / "sub" / "deep.png", 24, 16)
    save(src / "sub" / "deeper" / "x.png", 16, 24)
    (src / "notes.txt").write_text("not an image")
    flat = tmp_path / "flat"
    assert run(setup, [src], flat) == 0
    err = capsys.readouterr().err
    assert "1 sub-folder(s) not entered (add --recursive)" in err and str(src / "sub") in err
    assert "not images skipped" in err and "notes.txt" in err
    assert sorted(p.name for p in flat.glob("*.png")) == ["top_labels.png", "top_overlay.png"]
    deep = tmp_path / "deep"
    assert run(setup, [src], deep, "--recursive") == 0
    assert size_of(deep / "sub" / "deep_labels.png") == (24, 16)
    assert size_of(deep / "sub" / "deeper" / "x_labels.png") == (16, 24)
    assert json.loads((deep / "sub" / "deep.json").read_text())["file_name"] == "sub/deep.png"
    assert "not entered" not in capsys.readouterr().err


def test_interrupted_folder_run_resumes_and_overwrite_recomputes(setup, tmp_path, monkeypatch, capsys):
    src = tmp_path / "in"
    for i, name in enumerate("abc"):
        save(src / f"{name}.png", 20 + i, 30)
    out = tmp_path / "out"
    calls = count_model_calls(monkeypatch)
    assert run(setup, [src], out, "--limit", "2") == 0 and len(calls) == 2  # a run stopped after two images
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("[ab]*")}
    assert run(setup, [src], out) == 0 and len(calls) == 3  # only c
    assert "3 images: 3 segmented (1 now, 2 done before)" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("[ab]*")} == first
    # killed while writing c: its outputs exist (one half-written as a hidden temporary), its record does not
    (out / "records" / "c.json").unlink()
    (out / ".c_labels.tmp-1-ab12cd34.png").write_bytes(b"half a png")
    assert run(setup, [src], out) == 0 and len(calls) == 4
    assert run(setup, [src], out, "--overwrite") == 0 and len(calls) == 7
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("[ab]*")} != first
    assert run(setup, [src], out, vocab="cat, dog") == 1 and len(calls) == 7  # another vocabulary: refused
    assert "holds outputs of another run (differs in things, vocabulary); pass --overwrite" in capsys.readouterr().err
    assert run(setup, [src], out, "--overwrite", vocab="cat, dog") == 0 and len(calls) == 10
    assert [p.name for p in out.rglob("*") if is_temporary(p)] == [".c_labels.tmp-1-ab12cd34.png"]


def test_options_are_checked_before_the_model_loads(setup, tmp_path, monkeypatch, capsys):
    loads = []
    real = segment_cmd.build_predictor
    monkeypatch.setattr(segment_cmd, "build_predictor", lambda args: loads.append(1) or real(args))
    images = setup[3]
    out = tmp_path / "out"
    assert run(setup, [images], out, "--things", "cat, dog") == 1
    assert "--things names classes not in the vocabulary: ['dog']" in capsys.readouterr().err
    assert run(setup, [images], out, "--task", "panoptic,depth") == 1
    assert "--task must name some of semantic, panoptic, instance" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert run(setup, [images], tmp_path / "file") == 1
    assert "exists and is not a folder" in capsys.readouterr().err
    assert run(setup, [images], out, "--batch-size", "0") == 1
    assert run(setup, [images / "missing.png"], out) == 1
    assert run(setup, [images], out, vocab=" ; |, ") == 1
    assert "vocabulary is empty" in capsys.readouterr().err
    assert run(setup, [images], images) == 1
    assert "is an input folder" in capsys.readouterr().err
    loads.clear()
    assert run(setup, [images], out, "--things", "Sofa", "--task", "panoptic") == 0 and loads == [1]
    data = json.loads((out / "a.json").read_text())
    assert all(s["isthing"] == (s["category_id"] == 1) for s in data["segments_info"])


def test_large_runs_print_totals_instead_of_rows(setup, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(segment_cmd, "TABLE_LIMIT", 1)
    assert run(setup, [setup[3]], tmp_path / "out") == 0
    printed = capsys.readouterr().out
    assert "top classes" not in printed and "2 images: 2 segmented (2 now, 0 done before)" in printed
    assert "time share: input wait" in printed


@pytest.mark.slow
def test_summary_shows_downscaled_output_and_warnings_keep_off_the_bar(setup, tmp_path):
    _, preset_file, weights, _ = setup
    for i in range(5):
        save(tmp_path / "in" / f"p{i}.png", 90, 120, seed=i)
    script = tmp_path / "run.py"
    script.write_text(
        "import sys\n"
        "import maskadapter.cli.segment as seg\n"
        "real = seg.build_predictor\n"
        "seg.build_predictor = lambda args: real(args, max_output_pixels=2000)\n"
        "from maskadapter.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    proc = subprocess.run(
        [sys.executable, str(script), "segment", str(tmp_path / "in"), "--vocab", "cat, sky", "--preset",
         str(preset_file), "--weights", str(weights), "-o", str(tmp_path / "out"), "--workers", "0"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("120x90->51x38") == 5  # input size -> output size where they differ
    assert "5 image(s) have maps smaller than the image" in proc.stdout
    warnings = [line for line in proc.stderr.split("\n") if "downscaled" in line]
    assert len(warnings) == 3 and "further warnings like this one are not shown" in warnings[-1]
    assert "segment:" in proc.stderr  # the bar was drawn
    for line in warnings:  # each warning on a line of its own: what follows the bar's last redraw
        assert line.rsplit("\r", 1)[-1].startswith("WARNING maskadapter.inference.predictor: output maps")
