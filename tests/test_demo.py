"""`maskadapter demo`: the request function (no gradio needed), the page builder, the command, and the page
driven in a real headless Chromium (playwright) against a tiny random-weight model."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maskadapter.cli import main
from maskadapter.data.vocabularies import builtin_vocabulary
from maskadapter.demo import (CLICK_TABLE_HEADERS, OWNER_FILE, READY_VOCABULARIES, SAM_HELP, TABLE_HEADERS,
                              WORK_PREFIX, SamTools, click_request, everything_request, make_example_images, make_work_dir,
                              ready_vocabulary_of, remove_stale_work_dirs, require_gradio, segment_request,
                              vocabulary_text)
from maskadapter.modeling.generators.sam import SamMaskGenerator, SamPromptPredictor
from maskadapter.inference.writers import label_map_image, overlay_image
from maskadapter.inference.predictor import Predictor
from maskadapter.modeling.build import build_model
from maskadapter.vocabulary import Vocabulary

from conftest import tiny_architecture, tiny_preset
from conftest import write_tiny_preset
from sam_fakes import FakeAutomaticGenerator, FakeSamPredictor

VOCAB = "cat, sofa|couch; sky"
# gradio's queue calls pandas options that pandas 3 deprecates; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def _require(available: bool, reason: str) -> None:
    """Skip when a tool is missing, except under CI (CI=1), where the demo tests must run."""
    if not available:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is set, so this test must run (install it in .ci/run)")
        pytest.skip(reason)


def _gradio():
    _require(importlib.util.find_spec("gradio") is not None, "gradio is not installed (pip install -e '.[dev]')")
    import gradio

    return gradio


@pytest.fixture(scope="module")
def model(tiny_fcclip):
    return tiny_fcclip


@pytest.fixture(scope="module")
def predictor(model):
    return Predictor(model, tiny_preset(), precision="fp32", text_cache_dir=False)


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("demo-img") / "my photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(autouse=True)
def _no_gradio_analytics(monkeypatch):
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")


# ---------------------------------------------------------------------------------------------- request function
@pytest.mark.parametrize("task", ["semantic", "panoptic", "instance"])
def test_segment_request_outputs(predictor, image_file, tmp_path, task):
    overlay, rows, label_path, json_path, status = segment_request(
        predictor, str(image_file), VOCAB, task, output_dir=tmp_path, name=image_file.name)
    # the overlay is the CLI's overlay of the same result, at the image's size
    expected = predictor.predict(str(image_file), VOCAB, tasks=("semantic",) if task == "semantic"
                                 else ("semantic", task))
    rgb = np.array(Image.open(image_file).convert("RGB"))
    assert overlay.size == (120, 90) and overlay.mode == "RGB"
    assert np.array_equal(np.asarray(overlay), np.asarray(overlay_image(rgb, expected, task)))
    # downloads in the given folder, named after the upload
    assert {p.name for p in tmp_path.iterdir()} == {"my_photo_labels.png", "my_photo.json"}
    labels = np.array(Image.open(label_path))
    assert labels.shape == (90, 120) and labels.dtype == np.uint8
    assert np.array_equal(labels, np.asarray(label_map_image(expected)))
    assert set(np.unique(labels)) <= {0, 1, 2, 255}
    data = json.loads(open(json_path, encoding="utf-8").read())
    assert (data["height"], data["width"], data["task"], data["file_name"]) == (90, 120, task, "my photo.png")
    assert [c["synonyms"] for c in data["categories"]] == [["cat"], ["sofa", "couch"], ["sky"]]
    for s in data["semantic"]:
        assert s["area"] == int((labels == s["category_id"]).sum())
    # the table lists the task's segments: class, score, share of the image
    listed = data[{"semantic": "semantic", "panoptic": "segments_info", "instance": "instances"}[task]]
    assert len(rows) == len(listed) > 0 and all(len(r) == len(TABLE_HEADERS) for r in rows)
    assert sorted(r[0] for r in rows) == list(range(1, len(listed) + 1))
    for number, label, score, share in rows:
        seg = listed[number - 1]
        assert label == data["categories"][seg["category_id"]]["name"]
        assert share == pytest.approx(100 * seg["area"] / (90 * 120), abs=0.006)
        if task == "semantic":
            assert score == "-"
        else:
            assert float(score) == pytest.approx(seg["score"], abs=5e-4)
    if task == "semantic":
        assert sum(r[3] for r in rows) == pytest.approx(100 * (labels != 255).mean(), abs=0.05)
    if task == "instance":
        assert [float(r[2]) for r in rows] == sorted((float(r[2]) for r in rows), reverse=True)
    assert status.startswith(f"{task}: {len(rows)} segment") and "120x90" in status


def test_segment_request_default_output_dir_is_temporary(predictor, image_file, tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    _, _, label_path, json_path, _ = segment_request(predictor, Image.open(image_file), VOCAB, "semantic")
    try:
        assert list(cwd.iterdir()) == []  # nothing written to the working directory
        assert os.path.dirname(label_path) == os.path.dirname(json_path)
        assert os.path.commonpath([label_path, tempfile.gettempdir()]) == tempfile.gettempdir()
        assert os.path.basename(label_path) == "image_labels.png"  # no file name known: a neutral one
    finally:
        shutil.rmtree(os.path.dirname(label_path))


def test_text_classifier_cached_across_requests(predictor, image_file, tmp_path, monkeypatch):
    calls = []
    encode = predictor.text_classifier.encode
    monkeypatch.setattr(predictor.text_classifier, "encode", lambda vocab: calls.append(vocab) or encode(vocab))
    for i in range(3):
        out = segment_request(predictor, str(image_file), "zebra, giraffe|camelopard", "semantic",
                              output_dir=tmp_path / str(i))
        assert out[0] is not None
    assert len(calls) == 1  # the vocabulary was encoded once, then served from the Predictor's cache


def _bad_file(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"this is not a PNG")
    return str(path)


@pytest.mark.parametrize("case, expected", [
    ("no image", "no image: upload an image or pick an example"),
    ("unreadable file", "cannot read image"),
    ("empty vocabulary", "empty vocabulary"),
    ("only separators", "vocabulary is empty"),
    ("repeated class", "'Cat' appears twice"),
    ("image too large", "over the limit of 5000 pixels"),
    ("unknown task", "task must be one of semantic, panoptic, instance"),
])
def test_segment_request_readable_failures(model, predictor, image_file, tmp_path, case, expected):
    image, vocab, task, pred = str(image_file), VOCAB, "semantic", predictor
    if case == "no image":
        image = None
    elif case == "unreadable file":
        image = _bad_file(tmp_path)
    elif case == "empty vocabulary":
        vocab = "   "
    elif case == "only separators":
        vocab = " , ;\n"
    elif case == "repeated class":
        vocab = "cat, dog, Cat"
    elif case == "image too large":  # 120x90 = 10800 pixels
        pred = Predictor(model, tiny_preset(), precision="fp32", max_image_pixels=5000)
    elif case == "unknown task":
        task = "depth"
    out_dir = tmp_path / "out"
    overlay, rows, label_path, json_path, status = segment_request(pred, image, vocab, task, output_dir=out_dir)
    assert (overlay, rows, label_path, json_path) == (None, [], None, None)
    assert status.startswith("error: ") and expected in status, status
    assert "Traceback" not in status and not out_dir.exists()


def test_limits_are_checked_before_any_work(predictor, tmp_path, monkeypatch):
    # a 12000 x 12000 PNG (a few hundred KB) was decoded (+1.4 GB, 9 s) before being refused; a 12k-character
    # vocabulary held the page's queue for 52 s: every limit is checked before decoding or encoding anything
    import maskadapter.demo.requests as requests
    import maskadapter.images

    big = tmp_path / "huge.png"
    Image.new("1", (12000, 12000)).save(big)
    assert big.stat().st_size < 2_000_000
    monkeypatch.setattr(maskadapter.images, "_pil_to_array", lambda *a: pytest.fail("the image was decoded"))
    predictor = type("Refusing", (), {"max_image_pixels": predictor.max_image_pixels,  # limit 100 MP, as released
                                      "predict": lambda *a, **k: pytest.fail("the model ran")})()
    status = segment_request(predictor, str(big), VOCAB, "semantic", output_dir=tmp_path / "out")[4]
    assert status.startswith("error: ") and "12000x12000" in status and "100000000" in status, status
    long_text = ", ".join(f"class number {i}" for i in range(800))  # 12k characters
    status = segment_request(predictor, str(big), long_text, "semantic")[4]
    assert f"over the demo's limit of {requests.MAX_VOCABULARY_CHARS}" in status, status
    many = ", ".join(f"c{i}" for i in range(requests.MAX_VOCABULARY_NAMES + 1))
    assert len(many) <= requests.MAX_VOCABULARY_CHARS
    status = segment_request(predictor, str(big), many, "semantic")[4]
    assert f"{requests.MAX_VOCABULARY_NAMES + 1} class names and synonyms" in status, status
    monkeypatch.setattr(requests, "MAX_UPLOAD_BYTES", 1000)
    status = segment_request(predictor, str(big), VOCAB, "semantic")[4]
    assert "over the demo's upload limit" in status, status
    assert not (tmp_path / "out").exists()
    # the ready vocabularies stay within the limits
    for label in READY_VOCABULARIES:
        text = vocabulary_text(label)
        vocab = Vocabulary.parse(text)
        assert len(text) <= requests.MAX_VOCABULARY_CHARS
        assert sum(len(c) for c in vocab.classes) <= requests.MAX_VOCABULARY_NAMES


def test_overlay_legend_keeps_clear_of_the_image_buttons(predictor, image_file, tmp_path, monkeypatch):
    # gradio draws its download / full-screen buttons over the top-right corner: a legend there was cut off
    import maskadapter.demo.requests as requests

    seen = []
    overlay_image = requests.overlay_image
    monkeypatch.setattr(requests, "overlay_image", lambda *a, **k: seen.append(k) or overlay_image(*a, **k))
    assert segment_request(predictor, str(image_file), VOCAB, "semantic", output_dir=tmp_path)[0] is not None
    corners = seen[0]["legend_corners"]
    assert "top-right" not in corners and set(corners) <= {"top-left", "bottom-left", "bottom-right"}
    # the SAM tab's canvas too
    clicked = []
    prompt_overlay = requests.prompt_overlay
    monkeypatch.setattr(requests, "prompt_overlay", lambda *a, **k: clicked.append(k) or prompt_overlay(*a, **k))
    street, vocab, _ = make_example_images(tmp_path / "img")[0]
    assert click_request(predictor, fake_sam_tools(tmp_path), street, vocab, [[245, 262, True]])[0] is not None
    assert clicked[0]["legend_corners"] == corners


def test_ready_vocabularies_round_trip():
    for label, name in READY_VOCABULARIES.items():
        vocab = Vocabulary.parse(vocabulary_text(label))
        assert vocab == builtin_vocabulary(name)
    assert len(Vocabulary.parse(vocabulary_text("ADE20K-150"))) == 150
    assert len(Vocabulary.parse(vocabulary_text("COCO (panoptic)"))) == 133
    assert len(Vocabulary.parse(vocabulary_text("Pascal Context 59"))) == 59
    assert vocabulary_text("ADE20K-150").startswith("wall|walls|brick wall|stone wall|interior wall, building|")


def test_example_images(tmp_path, predictor):
    rows = make_example_images(tmp_path)
    assert len(rows) == 3 and len({r[0] for r in rows}) == 3
    for path, vocab, task in rows:
        with Image.open(path) as im:
            assert im.size == (480, 320) and im.mode == "RGB"
            assert len(np.unique(np.asarray(im).reshape(-1, 3), axis=0)) > 5  # a drawn scene, not a flat fill
        assert len(Vocabulary.parse(vocab)) >= 4 and task in ("semantic", "panoptic", "instance")
    path, vocab, task = rows[0]
    assert segment_request(predictor, path, vocab, task, output_dir=tmp_path / "out")[0].size == (480, 320)


def fake_sam_tools(folder) -> SamTools:
    """SAM tools around the fakes of sam_fakes.py: colour-region masks for clicks, one mask per colour for
    'everything'."""
    ckpt = folder / "fake-sam.pth"
    ckpt.write_bytes(b"")
    return SamTools(SamPromptPredictor(ckpt, builder=FakeSamPredictor),
                    SamMaskGenerator(ckpt, builder=FakeAutomaticGenerator), "Fake SAM")


def test_click_request(predictor, tmp_path):
    sam = fake_sam_tools(tmp_path)
    street, vocab, _ = make_example_images(tmp_path / "img")[0]  # 480x320, a red car at x 190..300, y 245..290
    rgb = np.array(Image.open(street).convert("RGB"))
    overlay, table, label_path, json_path, status = click_request(predictor, sam, street, vocab, [])
    assert np.array_equal(np.asarray(overlay), rgb)  # no point yet: the image itself
    assert table == {"headers": CLICK_TABLE_HEADERS, "data": []} and status.startswith("click on an object")
    overlay, table, label_path, json_path, status = click_request(predictor, sam, street, vocab, [[245, 262, True]])
    car = (rgb == rgb[262, 245]).all(-1)
    changed = (np.asarray(overlay).astype(int) != rgb).any(-1)
    assert changed[car].mean() > 0.9 and changed[~car].mean() < 0.02  # the clicked object, not the rest
    assert table["headers"] == CLICK_TABLE_HEADERS and [r[0] for r in table["data"]] == [1, 2, 3, 4, 5]
    probabilities = [float(r[2]) for r in table["data"]]
    assert probabilities == sorted(probabilities, reverse=True) and (label_path, json_path) == (None, None)
    assert status.startswith(f"click: {table['data'][0][1]} ({probabilities[0]:.2f}), mask {100 * car.mean():.1f}%")
    assert "Fake SAM score 0.90, 1 point" in status and "embedding reused" not in status
    status = click_request(predictor, sam, street, vocab, [[245, 262, True], [10, 10, False]])[4]
    assert "2 points" in status and "SAM embedding reused" in status
    assert sam.prompts.embeddings_computed == 1
    failed = click_request(predictor, sam, street, vocab, [[900, 10, True]])
    assert failed[0] is None and failed[4].startswith("error: points[0] (900, 10) is outside the 480x320 image")
    assert click_request(predictor, sam, None, vocab, [[1, 1, True]])[4].startswith("error: no image")


def test_everything_request(predictor, tmp_path):
    sam = fake_sam_tools(tmp_path)
    beach, vocab, _ = make_example_images(tmp_path / "img")[1]
    overlay, table, label_path, json_path, status = everything_request(predictor, sam, beach, vocab,
                                                                       output_dir=tmp_path / "out", name="beach.png")
    colors = len(np.unique(np.array(Image.open(beach).convert("RGB")).reshape(-1, 3), axis=0))
    data = json.loads(open(json_path, encoding="utf-8").read())
    assert len(data["segments_info"]) == colors  # one segment per automatic mask (the fake: one per colour)
    assert table["headers"] == TABLE_HEADERS and len(table["data"]) == colors
    assert status.startswith(f"everything: {colors} segments") and overlay.size == (480, 320)
    assert predictor.mask_generator is None  # the page's predictor is not changed


def test_ready_vocabulary_follows_the_text():
    for label in READY_VOCABULARIES:
        assert ready_vocabulary_of(vocabulary_text(label)) == label
    ade = vocabulary_text("ADE20K-150")
    assert ready_vocabulary_of(ade.replace(", ", ";\n")) == "ADE20K-150"  # other separators: same classes
    assert ready_vocabulary_of(ade + ", zebra") == "custom"
    assert ready_vocabulary_of(ade.replace("wall|", "", 1)) == "custom"  # a synonym less
    assert ready_vocabulary_of("") == ready_vocabulary_of("cat, Cat") == "custom"


def test_stale_work_folders_of_ended_runs_are_removed(tmp_path):
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(ended.stdout)
    folders = {name: tmp_path / f"maskadapter-demo-{name}" for name in ("dead", "alive", "orphan-old", "orphan-new",
                                                                         "garbled")}
    for folder in folders.values():
        folder.mkdir()
        (folder / "labels.png").write_bytes(b"x")
    (folders["dead"] / OWNER_FILE).write_text(str(dead_pid))
    (folders["alive"] / OWNER_FILE).write_text(str(os.getppid()))
    (folders["garbled"] / OWNER_FILE).write_text("not a pid")
    os.utime(folders["orphan-old"], (time.time() - 7200, time.time() - 7200))
    (tmp_path / "other-folder").mkdir()
    removed = remove_stale_work_dirs(tmp_path)
    assert sorted(p.name for p in removed) == ["maskadapter-demo-dead", "maskadapter-demo-orphan-old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["maskadapter-demo-alive", "maskadapter-demo-orphan-new", "maskadapter-demo-garbled", "other-folder"])
    mine = make_work_dir()
    try:
        assert mine.name.startswith("maskadapter-demo-") and (mine / OWNER_FILE).read_text() == str(os.getpid())
        assert mine not in remove_stale_work_dirs(mine.parent)  # this process is alive
    finally:
        shutil.rmtree(mine)


# ---------------------------------------------------------------------------------------------- page and command
def test_missing_gradio_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'maskadapter\[demo\]'"):
        require_gradio()
    predictor = type("Stub", (), {"predict": lambda self, *a, **k: pytest.fail("not reached")})()
    assert segment_request(predictor, None, "cat", "semantic")[4].startswith("error: no image")  # no gradio needed
    assert main(["demo", "--preset", "fcclip-large", "--device", "cpu"]) == 1
    assert "pip install 'maskadapter[demo]'" in capsys.readouterr().err


def _segment_fn(demo):
    (segment,) = [fn for fn in demo.fns.values() if fn.api_name == "segment"]
    return segment


def test_build_demo_page_function(predictor, image_file, monkeypatch):
    gr = _gradio()
    import maskadapter.demo
    from maskadapter.demo import build_demo

    monkeypatch.setattr(maskadapter.demo.workdir, "_KEEP_REQUEST_DIRS", 2)

    demo = build_demo(predictor, examples=[])
    assert isinstance(demo, gr.Blocks)
    segment = _segment_fn(demo)
    assert segment.concurrency_limit == 1 and segment.queue and not segment.preprocess
    # the page's handler: a gradio upload payload in, the request's outputs out, in a temporary folder
    # that keeps only the last few requests' downloads
    payload = {"path": str(image_file), "orig_name": "my photo.png", "meta": {"_type": "gradio.FileData"}}
    for _ in range(4):
        overlay, rows, label_path, json_path, status = segment.fn(payload, VOCAB, "panoptic")
    assert overlay.size == (120, 90) and status.startswith("panoptic: ")
    assert os.path.basename(label_path) == "my_photo_labels.png" and os.path.basename(json_path) == "my_photo.json"
    outputs = os.path.dirname(os.path.dirname(label_path))
    assert os.path.commonpath([outputs, tempfile.gettempdir()]) == tempfile.gettempdir()
    assert len(os.listdir(outputs)) == 2 and os.path.isfile(label_path)  # older requests' folders removed
    assert segment.fn(None, VOCAB, "semantic")[4].startswith("error: no image")
    with pytest.raises(FileNotFoundError, match="example image not found"):
        build_demo(predictor, examples=["/no/such/image.png"])


def test_gradio_upload_cache_lives_in_the_work_folder(predictor, monkeypatch, tmp_path):
    # gradio's own cache (193 MB after a few requests) stayed in /tmp/gradio across restarts
    gr = _gradio()
    from gradio.utils import get_upload_folder

    from maskadapter.demo import build_demo

    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)
    demo = build_demo(predictor, examples=[])
    cache = Path(get_upload_folder())
    work = cache.parent
    assert work.name.startswith(WORK_PREFIX) and (work / OWNER_FILE).read_text() == str(os.getpid())
    images = [b for b in demo.blocks.values() if isinstance(b, gr.Image)]
    assert images and all(Path(b.GRADIO_CACHE) == cache for b in images)
    assert tuple(demo.delete_cache) == (600, 3600)  # a long session sweeps files older than an hour
    # the work folder of an ended run goes, gradio's cache with it
    (cache / "upload").mkdir(parents=True)
    (cache / "upload" / "photo.png").write_bytes(b"x")
    (work / OWNER_FILE).write_text("999999999")
    assert work in remove_stale_work_dirs(work.parent) and not cache.exists()
    # a GRADIO_TEMP_DIR the user chose is kept
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "mine"))
    build_demo(predictor, examples=[])
    assert get_upload_folder() == str(tmp_path / "mine")


def test_cli_demo_checks_before_importing_torch_or_gradio(tmp_path):
    # offline without the weights, the error took 11-18 s: gradio and torch were imported first
    probe = ("import sys\nfrom maskadapter.cli import main\ncode = main(sys.argv[1:])\n"
             "print('exit', code, 'torch' in sys.modules, 'gradio' in sys.modules)\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    cases = [(["demo"], "fcclip_convnext_large_maskadapter.pth"),
             (["demo", "--preset", "nope"], "unknown preset 'nope'"),
             (["demo", "--preset", "maftp-base", "--weights", str(tmp_path / "no.pth")], "--weights file not found"),
             (["demo", "--sam-checkpoint", str(tmp_path / "sam.pth")], "--sam-checkpoint file not found"),
             (["demo", "--generator", "sam"], "--generator sam needs --sam-checkpoint"),
             (["demo", "--device", "cpu", "--precision", "fp16"], "fp16 needs a CUDA device"),
             (["demo", "--weights", __file__, "--examples", str(tmp_path / "none")], "--examples folder not found")]
    for argv, expected in cases:
        proc = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=120,
                              env=env)
        assert proc.stdout.split() == ["exit", "1", "False", "False"], (argv, proc.stdout, proc.stderr)
        assert expected in proc.stderr and proc.stderr.count("error:") == 1, (argv, proc.stderr)


def test_build_demo_unexpected_failure_is_a_short_page_error(image_file, caplog):
    gr = _gradio()
    from maskadapter.demo import build_demo

    class Broken:
        def predict(self, *args, **kwargs):
            raise RuntimeError("out of memory")

    segment = _segment_fn(build_demo(Broken(), examples=[]))
    with pytest.raises(gr.Error, match=r"segmentation failed \(RuntimeError: out of memory\)"):
        segment.fn({"path": str(image_file)}, VOCAB, "semantic")
    assert "demo request failed" in caplog.text and "Traceback" in caplog.text  # details go to the terminal


def _config(demo):
    return demo.get_config_file()


def _markdowns(demo) -> list[str]:
    return [c["props"]["value"] for c in _config(demo)["components"] if c["type"] == "markdown"]


def _selected_tab(demo):
    (tabs,) = [c for c in _config(demo)["components"] if c["type"] == "tabs"]
    return tabs["props"]["selected"]


def test_page_header_shows_resolved_precision_and_sam_help(model):
    _gradio()
    from maskadapter.demo import build_demo

    predictor = Predictor(model, tiny_preset(), precision="auto", text_cache_dir=False)
    demo = build_demo(predictor, examples=[])
    header = _markdowns(demo)[0]
    assert f"on `cpu` (precision `{predictor.resolved_precision}`)" in header and "auto" not in header
    assert SAM_HELP in _markdowns(demo) and "--sam-checkpoint" in SAM_HELP  # the SAM tab says how to enable it
    assert _selected_tab(demo) == "preset"
    assert not [fn for fn in demo.fns.values() if fn.api_name in ("click", "everything")]


@pytest.mark.slow  # builds a page and runs three SAM requests
def test_sam_page_functions(predictor, tmp_path):
    gr = _gradio()
    from maskadapter.demo import build_demo

    demo = build_demo(predictor, examples=[], sam=fake_sam_tools(tmp_path))
    assert "Fake SAM for the SAM tab" in _markdowns(demo)[0]
    fns = {fn.api_name: fn for fn in demo.fns.values() if fn.api_name}
    assert {"segment", "click", "undo", "everything"} <= set(fns)
    for name in ("segment", "click", "undo", "everything"):  # one model run at a time, across both tabs
        assert fns[name].concurrency_id == "model" and fns[name].concurrency_limit == 1, name
    (street, vocab, _), _, (room, room_vocab, _) = make_example_images(tmp_path / "img")
    payload = {"path": street, "orig_name": "street.png"}
    points = []
    for x, y, kind in ((245, 262, "positive (on the object)"), (10, 10, "negative (not the object)")):
        *outputs, points = fns["click"].fn(payload, vocab, kind, points,
                                           gr.SelectData(None, {"index": [x, y], "value": None}))
    assert points == [[245.0, 262.0, True], [10.0, 10.0, False]] and outputs[-1].startswith("click: ")
    *outputs, points = fns["undo"].fn(payload, vocab, points)
    assert points == [[245.0, 262.0, True]] and "1 point," in outputs[-1]
    overlay, table, label_path, json_path, status = fns["everything"].fn({"path": room, "orig_name": "room.png"},
                                                                         room_vocab)
    assert status.startswith("everything: ") and os.path.basename(json_path) == "room.json"


def test_adapter_only_page_opens_on_the_sam_tab(tmp_path):
    _gradio()
    from types import SimpleNamespace

    from maskadapter.demo import build_demo

    adapter_only = SimpleNamespace(model=SimpleNamespace(sem_seg_head=None), mask_generator=None, device="cpu",
                                   resolved_precision="fp32", preset=SimpleNamespace(name="fcclip-large"))
    demo = build_demo(adapter_only, examples=[], sam=fake_sam_tools(tmp_path))
    assert _selected_tab(demo) == "sam"
    assert any("adapter-only" in m for m in _markdowns(demo))


@pytest.fixture(scope="module")
def preset_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo-cli")
    preset_file = write_tiny_preset(root / "tiny.json")
    torch.manual_seed(0)
    weights = root / "tiny.pth"
    torch.save({"model": build_model(tiny_preset(), tiny_architecture()).state_dict()}, weights)
    return preset_file, weights


def test_cli_demo_loads_model_once_then_launches(preset_files, tmp_path, monkeypatch):
    gr = _gradio()
    import maskadapter.cli.demo
    import maskadapter.demo

    preset_file, weights = preset_files
    examples = tmp_path / "examples"
    examples.mkdir()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(examples / "green.jpg")
    Image.new("RGB", (40, 30), (200, 10, 30)).save(examples / "red.png")
    (examples / "red.txt").write_text("apple\nfire truck, fire engine\n")  # red.png's own vocabulary
    (examples / "notes.txt").write_text("not an image")
    loads, built, launched = [], [], []
    build_predictor, build_demo = maskadapter.cli.demo.build_predictor, maskadapter.demo.build_demo
    monkeypatch.setattr(maskadapter.cli.demo, "build_predictor", lambda args: loads.append(args) or
                        build_predictor(args))
    monkeypatch.setattr(maskadapter.demo, "build_demo", lambda p, examples=None, sam=None:
                        built.append((p, examples)) or build_demo(p, examples=examples, sam=sam))
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: launched.append((self, kw)))
    sigterm = signal.getsignal(signal.SIGTERM)
    code = main(["demo", "--preset", str(preset_file), "--weights", str(weights), "--port", "7999",
                 "--precision", "fp32", "--device", "cpu", "--examples", str(examples)])
    assert code == 0
    assert signal.getsignal(signal.SIGTERM) is sigterm  # the command's SIGTERM handler is not left behind
    assert len(loads) == 1 and len(built) == 1 and len(launched) == 1
    predictor, example_paths = built[0]
    assert isinstance(predictor, Predictor) and predictor.preset.name == "tiny-fcclip-large"
    assert example_paths == [str(examples / "green.jpg"), (str(examples / "red.png"), "apple, fire truck|fire engine")]
    demo, kwargs = launched[0]
    assert isinstance(demo, gr.Blocks)
    assert kwargs["server_name"] == "127.0.0.1" and kwargs["server_port"] == 7999
    assert kwargs["allowed_paths"] == [str(examples.resolve())]
    # no public link, even with GRADIO_SHARE set, and no gradio banner with its share=True hint
    assert kwargs["share"] is False and kwargs["quiet"] is True
    assert kwargs["max_file_size"] == maskadapter.demo.MAX_UPLOAD_BYTES  # gradio refuses larger uploads itself


def test_cli_demo_loads_sam_once_for_both_tabs(preset_files, tmp_path, monkeypatch):
    gr = _gradio()
    import maskadapter.demo

    preset_file, weights = preset_files
    sam_file = tmp_path / "sam_vit_b_01ec64.pth"
    sam_file.write_bytes(b"")
    loads, built = [], []
    monkeypatch.setattr(maskadapter.demo.SamTools, "load", classmethod(
        lambda cls, *args, **kwargs: loads.append(args) or fake_sam_tools(tmp_path)))
    build_demo = maskadapter.demo.build_demo
    monkeypatch.setattr(maskadapter.demo, "build_demo", lambda p, examples=None, sam=None:
                        built.append((p, sam)) or build_demo(p, examples=[], sam=sam))
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: None)
    code = main(["demo", "--preset", str(preset_file), "--weights", str(weights), "--precision", "fp32",
                 "--device", "cpu", "--sam-checkpoint", str(sam_file), "--sam-backend", "sam", "--generator", "sam"])
    assert code == 0 and len(loads) == 1 and loads[0][:2] == (str(sam_file), "sam")
    predictor, sam = built[0]
    assert sam is not None  # --generator sam: the same network
    assert getattr(predictor.mask_generator, "proposer", predictor.mask_generator) is sam.generator


def test_cli_demo_adapter_only(preset_files, model, tmp_path, monkeypatch, capsys):
    gr = _gradio()
    import maskadapter.demo

    preset_file, weights = preset_files
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: pytest.fail("launched"))
    assert main(["demo", "--preset", str(preset_file), "--weights", str(weights), "--adapter-only"]) == 1
    assert "--adapter-only has no mask decoder: give --sam-checkpoint PATH" in capsys.readouterr().err
    assert main(["demo", "--preset", str(preset_file), "--clip-weights", str(weights)]) == 1
    assert "--clip-weights goes with --adapter-only" in capsys.readouterr().err
    adapter = tmp_path / "adapter.pth"
    torch.save({"model": {k: v for k, v in model.state_dict().items() if k.startswith("mask_adapter.")}}, adapter)
    sam_file = tmp_path / "sam.pth"
    sam_file.write_bytes(b"")
    monkeypatch.setattr(maskadapter.demo.SamTools, "load", classmethod(lambda cls, *a, **k: fake_sam_tools(tmp_path)))
    built = []
    page = type("Page", (), {"launch": lambda self, **kw: None})()
    monkeypatch.setattr(maskadapter.demo, "build_demo", lambda p, examples=None, sam=None: built.append(p) or page)
    code = main(["demo", "--preset", str(preset_file), "--weights", str(adapter), "--adapter-only", "--clip-weights",
                 str(weights), "--sam-checkpoint", str(sam_file), "--device", "cpu"])
    assert code == 0 and built[0].model.sem_seg_head is None
    assert main(["demo", "--preset", str(preset_file), "--weights", str(adapter), "--adapter-only",
                 "--sam-checkpoint", str(sam_file), "--device", "cpu"]) == 2  # no CLIP weights: a checkpoint error
    assert "pass clip_weights=" in capsys.readouterr().err


def test_cli_demo_missing_weights_reported_at_start(monkeypatch, capsys):
    gr = _gradio()
    import huggingface_hub

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: pytest.fail("launched without a model"))
    assert main(["demo", "--preset", "maftp-base", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "maftp_convnext_base_maskadapter.pth" in err and "--weights PATH" in err


# ---------------------------------------------------------------------------------------------- real browser
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(model, tmp_path_factory):
    """The page on 127.0.0.1 (a gradio server thread) around a Predictor that records concurrent calls."""
    _gradio()
    _require(shutil.which("chromium") is not None, "chromium is not installed (apt-get install chromium)")
    _require(importlib.util.find_spec("playwright") is not None, "playwright (python) is not installed")
    from maskadapter.demo import build_demo

    analytics = os.environ.get("GRADIO_ANALYTICS_ENABLED")
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    predictor = Predictor(model, tiny_preset(), precision="fp32", text_cache_dir=False)
    stats = {"active": 0, "max_active": 0, "calls": 0, "delay": 0.0, "ends": []}
    lock = threading.Lock()
    predict = predictor.predict

    def tracked(*args, **kwargs):
        with lock:
            stats["active"] += 1
            stats["calls"] += 1
            stats["max_active"] = max(stats["max_active"], stats["active"])
        try:
            time.sleep(stats["delay"])
            return predict(*args, **kwargs)
        finally:
            with lock:
                stats["active"] -= 1
                stats["ends"].append(time.monotonic())

    class Tracked:  # the Predictor is immutable: a stand-in that counts its predict calls
        def __getattr__(self, name):
            return getattr(predictor, name)

        predict = staticmethod(tracked)

    cwd = tmp_path_factory.mktemp("demo-cwd")
    old_cwd = os.getcwd()
    os.chdir(cwd)
    demo = build_demo(Tracked(), sam=fake_sam_tools(tmp_path_factory.mktemp("demo-sam")))
    port = _free_port()
    try:
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
        yield f"http://127.0.0.1:{port}", stats
    finally:
        demo.close()
        os.chdir(old_cwd)
        if analytics is None:
            os.environ.pop("GRADIO_ANALYTICS_ENABLED", None)
        else:
            os.environ["GRADIO_ANALYTICS_ENABLED"] = analytics
    assert list(cwd.iterdir()) == []  # the server wrote nothing to its working directory


@pytest.fixture(scope="module")
def browser(served):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:  # playwright gives each launch a fresh temporary profile
        b = pw.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        yield b
        b.close()


def _open_page(browser, url, external):
    """A page with every request outside the demo's server aborted (the demo must work offline)."""
    page = browser.new_page(viewport={"width": 1280, "height": 1000})

    def route(r):
        if r.request.url.startswith(url) or r.request.url.startswith(("data:", "blob:")):
            r.continue_()
        else:
            external.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.goto(url + "/")
    page.wait_for_selector("#segment-button", timeout=30_000)
    return page


def _segment(page, timeout=30_000) -> str:
    """Press Segment and wait until the status box reports the request's end; returns the status."""
    before = page.locator("#status textarea").input_value()
    page.locator("#segment-button").click()
    page.wait_for_function(
        """before => { const t = document.querySelector('#status textarea');
                       return t && t.value && t.value !== before; }""", arg=before, timeout=timeout)
    return page.locator("#status textarea").input_value()


def _overlay_size(page) -> tuple[int, int]:
    page.wait_for_function("() => { const i = document.querySelector('#overlay img');"
                           " return i && i.complete && i.naturalWidth > 0; }", timeout=10_000)
    return tuple(page.evaluate("() => { const i = document.querySelector('#overlay img');"
                               " return [i.naturalWidth, i.naturalHeight]; }"))


@pytest.mark.browser
def test_browser_segment_upload(served, browser, tmp_path):
    url, stats = served
    external: list[str] = []
    street = make_example_images(tmp_path / "img")[0][0]  # 480x320 drawing
    page = _open_page(browser, url, external)
    assert "Mask-Adapter" in page.title()
    page.locator("#input-image input[type=file]").set_input_files(street)
    page.wait_for_selector("#input-image img", timeout=10_000)
    # gradio keeps the upload in the page's work folder (removed with it), not in a shared /tmp/gradio
    from gradio.utils import get_upload_folder

    uploads = list(Path(get_upload_folder()).rglob("street.png"))
    assert uploads and Path(get_upload_folder()).parent.name.startswith(WORK_PREFIX)
    page.locator("#vocabulary textarea").fill("sky, building|house, road, tree, car")
    page.locator("#task").get_by_label("instance").check()
    page.locator("#task").get_by_label("semantic").check()
    status = _segment(page)
    assert status.startswith("semantic: ") and "480x320" in status, status
    assert _overlay_size(page) == (480, 320)
    rows = int(page.locator("#segments-table [role=grid]").get_attribute("aria-rowcount")) - 1
    assert rows == int(status.split(": ")[1].split(" segment")[0]) > 0
    # the downloads: a label map at the image's size and the segments JSON
    label_href = page.locator("#label-file a[data-testid=download-link]").get_attribute("href")
    json_href = page.locator("#json-file a[data-testid=download-link]").get_attribute("href")
    assert label_href.endswith("street_labels.png") and json_href.endswith("street.json")
    label_png = tmp_path / "labels.png"
    label_png.write_bytes(page.request.get(label_href).body())
    labels = np.array(Image.open(label_png))
    assert labels.shape == (320, 480) and set(np.unique(labels)) <= {0, 1, 2, 3, 4, 255}
    data = json.loads(page.request.get(json_href).body())
    assert (data["width"], data["height"], data["task"]) == (480, 320, "semantic")
    assert [c["name"] for c in data["categories"]] == ["sky", "building", "road", "tree", "car"]
    assert len(data["semantic"]) == rows and sum(s["area"] for s in data["semantic"]) == 480 * 320
    for s in data["semantic"]:
        assert s["area"] == int((labels == s["category_id"]).sum())
    shot = tmp_path / "demo_page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert Image.open(shot).size[0] == 1280
    print(f"screenshot: {shot}")
    page.close()
    assert external == [], f"the page asked for resources outside the demo server: {external}"


@pytest.mark.browser
def test_browser_readable_errors_and_ready_vocabulary(served, browser, tmp_path):
    url, _ = served
    external: list[str] = []
    page = _open_page(browser, url, external)
    page.locator("#vocabulary textarea").fill("cat, sky")
    assert _segment(page) == "error: no image: upload an image or pick an example"
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not a PNG")
    page.locator("#input-image input[type=file]").set_input_files(str(bad))
    page.wait_for_timeout(500)
    status = _segment(page)
    assert status.startswith("error: cannot read image") and "broken.png" in status, status
    # a ready vocabulary fills the text box; an empty one is refused with a reason
    page.locator("#ready-vocabulary input").click()
    page.get_by_role("option", name="Pascal Context 59").click()
    page.wait_for_function("() => document.querySelector('#vocabulary textarea').value.startsWith('aeroplane|')")
    assert page.locator("#vocabulary textarea").input_value() == vocabulary_text("Pascal Context 59")
    assert page.locator("#ready-vocabulary input").input_value() == "Pascal Context 59"
    # the menu follows the text: an edit makes it "custom", the ready text typed back names it again
    page.locator("#vocabulary textarea").fill(vocabulary_text("Pascal Context 59") + ", zebra")
    page.wait_for_function("() => document.querySelector('#ready-vocabulary input').value === 'custom'")
    page.locator("#vocabulary textarea").fill(vocabulary_text("ADE20K-150"))
    page.wait_for_function("() => document.querySelector('#ready-vocabulary input').value === 'ADE20K-150'")
    page.locator("#vocabulary textarea").fill("  ")
    assert _segment(page).startswith("error: empty vocabulary")
    assert page.locator("#overlay img").count() == 0
    page.close()
    assert external == []


@pytest.mark.browser
def test_browser_example_and_two_users_queued(served, browser):
    url, stats = served
    external: list[str] = []
    pages = [_open_page(browser, url, external) for _ in range(2)]
    for page in pages:  # the first example: street.png, its vocabulary, panoptic
        page.locator("#examples tbody tr").first.click()
        page.wait_for_selector("#input-image img", timeout=10_000)
        assert page.locator("#vocabulary textarea").input_value().startswith("sky, building")
    stats.update(delay=1.0, max_active=0, calls=0, ends=[])
    try:
        befores = [p.locator("#status textarea").input_value() for p in pages]
        for page in pages:  # both users press Segment at (nearly) the same time
            page.locator("#segment-button").click()
        clicked = time.monotonic()
        for page, before in zip(pages, befores):
            page.wait_for_function(
                "b => { const t = document.querySelector('#status textarea'); return t.value && t.value !== b; }",
                arg=before, timeout=30_000)
            assert page.locator("#status textarea").input_value().startswith("panoptic: ")
            assert _overlay_size(page) == (480, 320)
    finally:
        stats["delay"] = 0.0
    assert clicked < min(stats["ends"])  # the second request came while the first one was running...
    assert stats["calls"] == 2 and stats["max_active"] == 1  # ...and waited: the model never ran twice at once
    for page in pages:
        page.close()
    assert external == []


def _canvas_pixels(page, tmp_path, name: str) -> np.ndarray:
    """The SAM tab's canvas image as the server sent it (pixels at the image's size)."""
    page.wait_for_function("() => { const i = document.querySelector('#sam-canvas img');"
                           " return i && i.complete && i.naturalWidth > 0; }", timeout=10_000)
    path = tmp_path / name
    path.write_bytes(page.request.get(page.locator("#sam-canvas img").get_attribute("src")).body())
    return np.array(Image.open(path).convert("RGB"))


def _click_canvas(page, x: int, y: int) -> str:
    """Click image pixel (x, y) of the SAM canvas; wait for the status to change and return it."""
    before = page.locator("#sam-status textarea").input_value()
    img = page.locator("#sam-canvas img")
    box = img.bounding_box()
    width, height = page.evaluate("() => { const i = document.querySelector('#sam-canvas img');"
                                  " return [i.naturalWidth, i.naturalHeight]; }")
    page.mouse.click(box["x"] + (x + 0.5) * box["width"] / width, box["y"] + (y + 0.5) * box["height"] / height)
    page.wait_for_function("b => document.querySelector('#sam-status textarea').value !== b", arg=before,
                           timeout=30_000)
    return page.locator("#sam-status textarea").input_value()


def _table_rows(page, selector: str) -> list[list[str]]:
    """The cells of a gradio Dataframe, row by row (its cells are role=gridcell elements with data-row/-col)."""
    cells = page.evaluate("""s => Array.from(document.querySelectorAll(s + ' [role=gridcell][data-row]')).map(
        c => [+c.dataset.row, +c.dataset.col, c.innerText.trim()])""", selector)
    rows: dict[int, dict[int, str]] = {}
    for row, col, value in cells:
        rows.setdefault(row, {})[col] = value
    return [[cols[c] for c in sorted(cols)] for _, cols in sorted(rows.items())]


@pytest.mark.browser
def test_browser_sam_click_and_everything(served, browser, tmp_path):
    url, _ = served
    external: list[str] = []
    street, vocab, _ = make_example_images(tmp_path / "img")[0]  # a red car at x 190..300, y 245..290
    rgb = np.array(Image.open(street).convert("RGB"))
    page = _open_page(browser, url, external)
    page.get_by_role("tab", name="SAM: click or everything").click()
    page.wait_for_selector("#sam-input-image input[type=file]", state="attached", timeout=10_000)
    page.locator("#vocabulary textarea").fill("cat")
    page.locator("#sam-examples tbody tr").first.click()  # the street example: its image and its vocabulary
    page.wait_for_function("() => document.querySelector('#sam-status textarea').value.startsWith('click on')",
                           timeout=30_000)
    assert page.locator("#vocabulary textarea").input_value() == vocab
    assert np.array_equal(_canvas_pixels(page, tmp_path, "before.png"), rgb)
    status = _click_canvas(page, 245, 262)  # on the car
    assert status.startswith("click: ") and "1 point" in status, status
    after = _canvas_pixels(page, tmp_path, "after.png")
    car = (rgb == rgb[262, 245]).all(-1)
    changed = (after.astype(int) != rgb).any(-1)
    assert changed[car].mean() > 0.9 and changed[~car].mean() < 0.02  # the overlay changed there, only there
    rows = _table_rows(page, "#sam-table")
    assert [r[0] for r in rows] == ["1", "2", "3", "4", "5"] and rows[0][1] == status.split(": ")[1].split(" (")[0]
    assert rows[0][1] in Vocabulary.parse(vocab).names and float(rows[0][2]) >= float(rows[-1][2])
    # a negative point elsewhere, then undo and clear
    page.locator("#sam-point-kind").get_by_label("negative (not the object)").check()
    assert "2 points" in _click_canvas(page, 20, 300) and "SAM embedding reused" in \
        page.locator("#sam-status textarea").input_value()
    before = page.locator("#sam-status textarea").input_value()
    page.locator("#sam-undo").click()
    page.wait_for_function("b => document.querySelector('#sam-status textarea').value !== b", arg=before)
    assert "1 point," in page.locator("#sam-status textarea").input_value()
    page.locator("#sam-clear").click()
    page.wait_for_function("() => document.querySelector('#sam-status textarea').value.startsWith('click on')")
    assert np.array_equal(_canvas_pixels(page, tmp_path, "cleared.png"), rgb)
    # segment everything: one segment per automatic mask
    page.locator("#sam-everything").click()
    page.wait_for_function("() => document.querySelector('#sam-status textarea').value.startsWith('everything:')",
                           timeout=30_000)
    count = int(page.locator("#sam-status textarea").input_value().split(": ")[1].split(" segment")[0])
    page.wait_for_function("n => document.querySelector('#sam-table [role=grid]').getAttribute('aria-rowcount') == n",
                           arg=str(count + 1))  # the table lists every segment (a header row + one per mask)
    assert count > 5 and len(_table_rows(page, "#sam-table")[0]) == len(TABLE_HEADERS)  # "#, class, score, area %"
    assert page.locator("#sam-json-file a[data-testid=download-link]").get_attribute("href").endswith("street.json")
    shot = tmp_path / "demo_sam_page.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    page.close()
    assert external == []
