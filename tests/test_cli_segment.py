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

from conftest import count_model_calls, save_random_photo, tiny_architecture, tiny_preset, write_tiny_preset


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
    return save_random_photo(path, h, w, seed)


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


# ------------------------------------------------------------------------------------------- hostile inputs
def _tree(folder: Path, skip: Path) -> dict[str, bytes]:
    """Every file under ``folder`` outside ``skip``, with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and skip not in p.parents}


def test_outputs_stay_inside_the_output_folder_for_every_route(setup, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    (work / "a").mkdir(parents=True)
    for name in ("x.jpg", "y.jpg", "z.jpg"):
        save(tmp_path / name, 24, 32)
    monkeypatch.chdir(work)
    Path("ann.json").write_text(json.dumps({"images": [{"id": 5, "file_name": "../x.jpg"}]}))
    Path("list.txt").write_text("../y.jpg\n")
    out = tmp_path / "out"
    before = _tree(tmp_path, out)
    routes = [("--images-json", "ann.json"), ("--images-json", "ann.json", "--image-root", "."),
              ("--image-list", "list.txt"), ("*/../../z.jpg",)]
    for i, route in enumerate(routes):
        inputs = [route[0]] if len(route) == 1 else []
        assert run(setup, inputs, out / str(i), *route[len(inputs):]) == 0
    assert _tree(tmp_path, out) == before  # nothing written next to the inputs
    assert [sorted(p.name for p in (out / str(i)).glob("*.json") if p.name != "manifest.json")
            for i in range(4)] == [["x.json"], ["x.json"], ["y.json"], ["z.json"]]
    # COCO: the semantic and panoptic PNGs of such an input are two files inside -o
    assert run(setup, [], out / "coco", "--images-json", "ann.json", "--format", "coco", "--task", "panoptic") == 0
    semantic, panoptic = out / "coco" / "semantic" / "x.png", out / "coco" / "panoptic" / "x.png"
    with Image.open(semantic) as sem, Image.open(panoptic) as pan:
        assert sem.mode == "L" and pan.mode == "RGB"
    assert _tree(tmp_path, out) == before


def test_a_link_inside_the_output_folder_never_leads_outside(setup, tmp_path, capsys):
    data, other = tmp_path / "data", tmp_path / "other"
    save(other / "settings.jpg", 24, 32)
    (other / "settings.json").write_text('{"mine": true}')
    data.mkdir()
    (data / "link").symlink_to(other, target_is_directory=True)
    ann = data / "ann.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "link/settings.jpg"}]}))
    assert run(setup, [], data, "--images-json", str(ann)) == 1
    err = capsys.readouterr().err
    assert "leads outside the output folder" in err and "symbolic link" in err
    assert (other / "settings.json").read_text() == '{"mine": true}'
    assert sorted(p.name for p in other.iterdir()) == ["settings.jpg", "settings.json"]


def test_segmenting_into_the_input_folder_keeps_inputs_and_skips_own_outputs(setup, tmp_path, monkeypatch, capsys):
    p = tmp_path / "p"
    save(p / "cat.jpg", 24, 32)
    save(p / "cat_labels.png", 20, 20, seed=3)  # the user's own file
    mine = (p / "cat_labels.png").read_bytes()
    calls = count_model_calls(monkeypatch)
    assert run(setup, [f"{p}/*"], p) == 0 and len(calls) == 2
    assert "cat_labels.png is an input image" in capsys.readouterr().err
    assert (p / "cat_labels.png").read_bytes() == mine and (p / "cat_2_labels.png").is_file()
    assert run(setup, [f"{p}/*"], p) == 0 and len(calls) == 2  # nothing new: its own outputs are no inputs
    captured = capsys.readouterr()
    assert "written by an earlier run into the output folder skipped" in captured.err
    assert "2 images: 2 segmented (0 now, 2 done before)" in captured.out
    assert (p / "cat_labels.png").read_bytes() == mine


def test_long_file_names_never_stop_a_run(setup, tmp_path, capsys):
    src = tmp_path / "in"
    names = ["b" * 226 + ".png", "c" * 240 + ".png", "a.png"]  # 230 and 244 bytes
    for i, name in enumerate(names):
        save(src / name, 20 + i, 24)
    out = tmp_path / "out"
    assert run(setup, [src], out) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["counts"]["ok"] == 3
    keys = [e["key"] for e in manifest["images"]]
    assert all(len(k.encode()) <= 160 for k in keys) and "a" in keys
    assert run(setup, [src], out) == 0 and "3 images: 3 segmented (0 now, 3 done before)" in capsys.readouterr().out


def test_a_folder_where_an_output_goes_is_named_and_avoided(setup, tmp_path, capsys):
    save(tmp_path / "in" / "x.jpg", 24, 32)
    out = tmp_path / "out"
    (out / "x_labels.png").mkdir(parents=True)
    assert run(setup, [tmp_path / "in"], out) == 0
    err = capsys.readouterr().err
    assert f"{out.resolve() / 'x_labels.png'} is a folder" in err
    assert (out / "x_2_labels.png").is_file() and (out / "x_labels.png").is_dir()


def test_recursive_lists_linked_folders(setup, tmp_path, capsys):
    save(tmp_path / "in" / "top.png", 20, 20)
    save(tmp_path / "far" / "x.png", 20, 20)
    (tmp_path / "in" / "link").symlink_to(tmp_path / "far", target_is_directory=True)
    assert run(setup, [tmp_path / "in"], tmp_path / "out", "--recursive") == 0
    err = capsys.readouterr().err
    assert "1 link(s) to folders not entered" in err and str(tmp_path / "in" / "link") in err


def test_adding_an_image_never_renames_earlier_outputs(setup, tmp_path, capsys):
    photo = save(tmp_path / "photo.jpg", 24, 32)
    out = tmp_path / "out"
    assert run(setup, [photo], out) == 0
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("photo*")}
    assert sorted(first) == ["photo.json", "photo_labels.png", "photo_overlay.png"]
    more = save(tmp_path / "more_photos" / "photo.png", 30, 20)
    assert run(setup, [photo, more], out) == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("photo*") if p.name in first} == first
    assert not list(out.glob("photo_jpg*")) and size_of(out / "photo_png_labels.png") == (30, 20)


def test_instance_shares_stay_within_the_image(setup, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(setup, [setup[3]], out, "--task", "instance") == 0
    printed = capsys.readouterr().out
    data = json.loads((out / "a.json").read_text())
    total = data["height"] * data["width"]
    summed: dict = {}
    for inst in data["instances"]:
        summed[inst["label"]] = summed.get(inst["label"], 0) + inst["area"]
    assert max(summed.values()) > total  # overlapping instances: a sum of their areas would pass 100%
    top = json.loads((out / "records" / "a.json").read_text())["top"]
    assert top and all(0 < share <= 1 for _, share in top)
    shares = [int(s[:-1]) for line in printed.splitlines() if line.startswith(("a.png", "b.jpg"))
              for s in line.split() if s.endswith("%")]
    assert shares and max(shares) <= 100


_PRECHECK = """
import json, sys
from maskadapter.cli import main
rows = []
for case, out in json.loads(sys.argv[1]):
    code = main(["segment", *case, "-o", out, "--workers", "0", "--quiet"])
    rows.append([code, "torch" in sys.modules, __import__("os").path.exists(out)])
print(json.dumps(rows))
"""


def test_checks_come_before_torch_and_before_the_output_folder(setup, tmp_path):
    root, preset_file, weights, images = setup
    (tmp_path / "notes.txt").write_text("no image")
    model = ["--preset", str(preset_file), "--weights", str(weights), "--vocab", "cat, dog"]
    cases = {
        "unknown preset 'nope'": [str(images), "--vocab", "cat", "--preset", "nope"],
        "no such image or folder": [str(images / "missing.png"), *model],
        "--device must be cpu, cuda or cuda:N": [str(images), *model, "--device", "gpu0"],
        "--precision fp16 needs a CUDA device": [str(images), *model, "--device", "cpu", "--precision", "fp16"],
        "notes.txt is not an image": [str(tmp_path / "notes.txt"), *model],
        "--adapter-only has no mask generator": [str(images), *model, "--adapter-only"],
    }
    runs = [[case, str(tmp_path / f"out{i}")] for i, case in enumerate(cases.values())]
    proc = subprocess.run([sys.executable, "-c", _PRECHECK, json.dumps(runs)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, timeout=300)
    rows = json.loads(proc.stdout.splitlines()[-1])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == len(cases)
    for (message, _), error, (code, torch_loaded, out_exists) in zip(cases.items(), errors, rows):
        assert message in error and code == 1 and not torch_loaded and not out_exists, (message, error)
