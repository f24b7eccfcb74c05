"""`maskadapter demo`: the request function (no gradio needed), the page builder, the command, and the page
driven in a real headless Chromium (playwright) against a tiny random-weight model."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

import maskadapter.cli
from maskadapter.cli import main
from maskadapter.data.vocabularies import builtin_vocabulary
from maskadapter.demo import (READY_VOCABULARIES, TABLE_HEADERS, make_example_images, require_gradio,
                              segment_request, vocabulary_text)
from maskadapter.inference.writers import label_map_image, overlay_image
from maskadapter.inference.predictor import Predictor
from maskadapter.modeling.build import build_model
from maskadapter.vocabulary import Vocabulary

from conftest import tiny_architecture, tiny_preset
from conftest import write_tiny_preset

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
def model():
    torch.manual_seed(0)
    return build_model(tiny_preset(), tiny_architecture())


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

    monkeypatch.setattr(maskadapter.demo, "_KEEP_REQUEST_DIRS", 2)

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
    (examples / "notes.txt").write_text("not an image")
    loads, built, launched = [], [], []
    build_predictor, build_demo = maskadapter.cli.demo.build_predictor, maskadapter.demo.build_demo
    monkeypatch.setattr(maskadapter.cli.demo, "build_predictor", lambda args: loads.append(args) or
                        build_predictor(args))
    monkeypatch.setattr(maskadapter.demo, "build_demo", lambda p, examples=None: built.append((p, examples)) or
                        build_demo(p, examples=examples))
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: launched.append((self, kw)))
    sigterm = signal.getsignal(signal.SIGTERM)
    code = main(["demo", "--preset", str(preset_file), "--weights", str(weights), "--port", "7999",
                 "--precision", "fp32", "--device", "cpu", "--examples", str(examples)])
    assert code == 0
    assert signal.getsignal(signal.SIGTERM) is sigterm  # the command's SIGTERM handler is not left behind
    assert len(loads) == 1 and len(built) == 1 and len(launched) == 1
    predictor, example_paths = built[0]
    assert isinstance(predictor, Predictor) and predictor.preset.name == "tiny-fcclip-large"
    assert example_paths == [str(examples / "green.jpg")]
    demo, kwargs = launched[0]
    assert isinstance(demo, gr.Blocks)
    assert kwargs["server_name"] == "127.0.0.1" and kwargs["server_port"] == 7999
    assert kwargs["allowed_paths"] == [str(examples.resolve())]


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

    predictor.predict = tracked
    cwd = tmp_path_factory.mktemp("demo-cwd")
    old_cwd = os.getcwd()
    os.chdir(cwd)
    demo = build_demo(predictor)
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


def test_browser_segment_upload(served, browser, tmp_path):
    url, stats = served
    external: list[str] = []
    street = make_example_images(tmp_path / "img")[0][0]  # 480x320 drawing
    page = _open_page(browser, url, external)
    assert "Mask-Adapter" in page.title()
    page.locator("#input-image input[type=file]").set_input_files(street)
    page.wait_for_selector("#input-image img", timeout=10_000)
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
    page.locator("#vocabulary textarea").fill("  ")
    assert _segment(page).startswith("error: empty vocabulary")
    assert page.locator("#overlay img").count() == 0
    page.close()
    assert external == []


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
