"""A local web page (gradio) to segment an image with any vocabulary: ``maskadapter demo``.

The page adds nothing to the library: the same :class:`~maskadapter.inference.predictor.Predictor`, the same
post-processing and the same writers (:mod:`maskadapter.inference.writers`) as ``maskadapter segment``. gradio is an
optional dependency (``pip install 'maskadapter[demo]'``), imported only by :func:`build_demo`;
:func:`segment_request`, the function the page calls, needs no gradio and is tested directly.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
import weakref
from pathlib import Path
from types import ModuleType
from typing import Any, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageDraw

from .data.vocabularies import builtin_vocabulary
from .images import ImageInput, to_rgb_tensor
from .inference.writers import label_map_image, overlay_image, result_to_json
from .vocabulary import Vocabulary

__all__ = ["segment_request", "build_demo", "READY_VOCABULARIES", "vocabulary_text", "make_example_images",
           "TABLE_HEADERS", "DEMO_INSTALL_HINT", "require_gradio"]

logger = logging.getLogger(__name__)

DEMO_INSTALL_HINT = "pip install 'maskadapter[demo]'"
#: The ready vocabularies offered on the page: display name -> built-in vocabulary.
READY_VOCABULARIES = {"ADE20K-150": "ade20k_150", "COCO (panoptic)": "coco_panoptic",
                      "Pascal Context 59": "pascal_ctx_59"}
TABLE_HEADERS = ["#", "class", "score", "area %"]
_TASK_OUTPUTS = {"semantic": ("semantic",), "panoptic": ("semantic", "panoptic"),
                 "instance": ("semantic", "instance")}
_KEEP_REQUEST_DIRS = 8  # downloads of older requests are deleted (gradio has copied them to its cache by then)

Rows = list[list[Any]]
RequestOutput = tuple[Optional[Image.Image], Rows, Optional[str], Optional[str], str]


def vocabulary_text(name: str) -> str:
    """A built-in vocabulary (``READY_VOCABULARIES`` key or built-in name) in the inline syntax of ``--vocab``."""
    vocab = builtin_vocabulary(READY_VOCABULARIES.get(name, name))
    return ", ".join("|".join(synonyms) for synonyms in vocab.classes)


def segment_request(predictor: Any, image: Optional[ImageInput], vocabulary_text: Optional[str], task: str,
                    output_dir: Optional[Union[str, os.PathLike]] = None, name: Optional[str] = None
                    ) -> RequestOutput:
    """One page request: segment ``image`` into ``vocabulary_text`` (inline syntax) for ``task``.

    Returns (overlay image at the result's size, table rows ``[#, class, score, area %]``, label-map PNG
    path, segments JSON path, status line). Bad input (no image, an unreadable file, an empty or invalid
    vocabulary, an image over the Predictor's size limit) gives ``(None, [], None, None, "error: ...")``
    instead of raising, so the page shows the reason. Files go to ``output_dir`` (default: a new temporary
    directory), never to the working directory.
    """
    start = time.perf_counter()
    try:
        if image is None or (isinstance(image, str) and not image.strip()):
            raise ValueError("no image: upload an image or pick an example")
        if task not in _TASK_OUTPUTS:
            raise ValueError(f"task must be one of {', '.join(_TASK_OUTPUTS)}, got {task!r}")
        if not vocabulary_text or not vocabulary_text.strip():
            raise ValueError('empty vocabulary: type class names separated by "," (synonyms joined by "|"), '
                             "or pick a ready vocabulary")
        vocab = Vocabulary.parse(vocabulary_text)
        rgb = to_rgb_tensor(image)
        result = predictor.predict(rgb, vocab, tasks=_TASK_OUTPUTS[task])
    except (ValueError, TypeError, OSError) as exc:
        logger.info("demo request refused: %s", exc)
        return None, [], None, None, f"error: {exc}"
    overlay = overlay_image(rgb.permute(1, 2, 0).numpy(), result, task)
    stem = _safe_stem(name)
    data = result_to_json(result, Path(name).name if name else "image", task)
    out_dir = Path(output_dir) if output_dir is not None else Path(tempfile.mkdtemp(prefix="maskadapter-demo-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    label_path, json_path = out_dir / f"{stem}_labels.png", out_dir / f"{stem}.json"
    label_map_image(result).save(label_path)
    json_path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    rows = _table_rows(data, task, result.image_size)
    H, W = result.image_size
    status = (f"{task}: {len(rows)} segment{'' if len(rows) == 1 else 's'}, {len(vocab)} classes in the "
              f"vocabulary, maps {W}x{H}, "
              f"{time.perf_counter() - start:.2f} s")
    if (H, W) != tuple(rgb.shape[1:]):
        status += f" (image {rgb.shape[2]}x{rgb.shape[1]} scaled down)"
    return overlay, rows, str(label_path), str(json_path), status


def _safe_stem(name: Optional[str]) -> str:
    """A file-name stem from an uploaded file's name: letters, digits, ``._-`` only."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem if name else "").strip("._")
    return stem[:80] or "image"


def _table_rows(data: dict[str, Any], task: str, size: tuple[int, int]) -> Rows:
    """Rows [#, class, score, area %] of the segments in ``data`` (a :func:`result_to_json` dict)."""
    total = size[0] * size[1]
    key = {"semantic": "semantic", "panoptic": "segments_info", "instance": "instances"}[task]
    names = [c["name"] for c in data["categories"]]
    segments = list(enumerate(data.get(key, [])))
    # instances by score, other segments by area; "#" stays the segment's position in the JSON list
    segments.sort(key=lambda s: -(s[1]["score"] if task == "instance" else s[1]["area"]))
    rows = []
    for i, seg in segments:
        score = seg.get("score")
        rows.append([i + 1, seg.get("label", names[seg["category_id"]]),
                     "-" if score is None else f"{score:.3f}", round(100.0 * seg["area"] / total, 2)])
    return rows


def make_example_images(directory: Union[str, os.PathLike]) -> list[tuple[str, str, str]]:
    """Draw a few synthetic example scenes into ``directory``; returns (path, vocabulary, task) rows."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    W, H = 480, 320
    ys = np.linspace(0.0, 1.0, H)[:, None, None]

    street = (np.array([110, 160, 230]) * (1 - ys) + np.array([200, 225, 250]) * ys).repeat(W, 1)
    street = Image.fromarray(street.astype(np.uint8))
    d = ImageDraw.Draw(street)
    d.rectangle((0, 230, W, H), fill=(90, 90, 95))                       # road
    d.rectangle((0, 215, W, 230), fill=(170, 170, 165))                  # pavement
    for x0, top, color in ((20, 70, (170, 120, 90)), (150, 110, (200, 190, 170)), (300, 50, (140, 140, 160))):
        d.rectangle((x0, top, x0 + 120, 215), fill=color)                # buildings with windows
        for wx in range(x0 + 12, x0 + 110, 28):
            for wy in range(top + 15, 200, 35):
                d.rectangle((wx, wy, wx + 14, wy + 20), fill=(60, 80, 110))
    d.ellipse((425, 120, 475, 190), fill=(50, 130, 50))                  # tree
    d.rectangle((445, 185, 455, 215), fill=(100, 70, 40))
    d.rounded_rectangle((190, 245, 300, 290), radius=10, fill=(200, 30, 30))  # car
    for cx in (210, 280):
        d.ellipse((cx - 12, 280, cx + 12, 304), fill=(20, 20, 20))

    beach = np.empty((H, W, 3), dtype=np.float64)
    beach[:] = np.array([120, 180, 240]) * (1 - ys) + np.array([210, 235, 250]) * ys
    beach = Image.fromarray(beach.astype(np.uint8))
    d = ImageDraw.Draw(beach)
    d.rectangle((0, 150, W, 230), fill=(30, 100, 170))                   # sea
    d.polygon([(0, 230), (W, 210), (W, H), (0, H)], fill=(225, 200, 140))  # sand
    d.ellipse((380, 30, 440, 90), fill=(255, 220, 80))                   # sun
    d.pieslice((90, 170, 210, 250), 180, 360, fill=(230, 60, 60))        # umbrella
    d.line((150, 210, 150, 290), fill=(80, 60, 40), width=4)

    room = Image.new("RGB", (W, H), (225, 215, 195))                    # wall
    d = ImageDraw.Draw(room)
    d.rectangle((0, 230, W, H), fill=(150, 100, 60))                     # floor
    d.rectangle((300, 40, 440, 150), fill=(170, 210, 240), outline=(250, 250, 250), width=6)  # window
    d.rectangle((60, 170, 260, 185), fill=(110, 70, 40))                 # table
    for x in (70, 240):
        d.rectangle((x, 185, x + 10, 260), fill=(110, 70, 40))
    d.polygon([(120, 120), (160, 120), (175, 155), (105, 155)], fill=(250, 240, 180))  # lamp
    d.rectangle((137, 155, 143, 170), fill=(60, 60, 60))
    d.rectangle((330, 190, 470, 260), fill=(80, 110, 150))               # sofa
    d.rectangle((330, 160, 470, 195), fill=(70, 95, 135))

    rows = []
    for img, file, vocab, task in (
            (street, "street.png", "sky, building, window, road, sidewalk|pavement, tree, car", "panoptic"),
            (beach, "beach.png", "sky, sea|water, sand|beach, sun, umbrella", "semantic"),
            (room, "room.png", "wall, floor, window, table, lamp, sofa|couch", "semantic")):
        img.save(directory / file)
        rows.append((str(directory / file), vocab, task))
    return rows


def _example_rows(examples: Sequence[Any]) -> list[list[str]]:
    """Example rows [path, vocabulary, task] from paths or (path, vocabulary[, task]) tuples."""
    default_vocab = "person, car, tree, sky, building, road"
    rows = []
    for item in examples:
        if isinstance(item, (str, os.PathLike)):
            item = (item,)
        path, vocab, task = (list(item) + [default_vocab, "semantic"][len(item) - 1:])[:3]
        if not Path(path).is_file():
            raise FileNotFoundError(f"example image not found: {path}")
        rows.append([str(path), vocab, task])
    return rows


def _request_dir(root: Path) -> Path:
    """A fresh directory under ``root`` for one request's downloads; the oldest beyond a few are removed."""
    root.mkdir(parents=True, exist_ok=True)
    old = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    for stale in old[:max(0, len(old) - _KEEP_REQUEST_DIRS + 1)]:
        shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=root))


def require_gradio() -> ModuleType:
    """The gradio module, or an ImportError saying how to install the demo extra."""
    try:
        import gradio
    except ImportError as exc:
        raise ImportError(f"the demo needs gradio, which is not installed: {DEMO_INSTALL_HINT}") from exc
    return gradio


def build_demo(predictor: Any, examples: Optional[Sequence[Any]] = None, title: str = "Mask-Adapter"
               ) -> "gradio.Blocks":  # noqa: F821
    """The page (a ``gr.Blocks``, queued so one request runs the model at a time) around ``predictor``.

    ``examples``: image paths or (path, vocabulary[, task]) tuples; ``None`` draws a few synthetic examples
    into a temporary directory (removed with the page), ``[]`` shows none.
    """
    gr = require_gradio()
    given = _example_rows(examples) if examples is not None else None  # bad paths fail before any file is made
    work = Path(tempfile.mkdtemp(prefix="maskadapter-demo-"))
    example_rows = _example_rows(make_example_images(work / "examples")) if given is None else given
    preset = getattr(getattr(predictor, "preset", None), "name", "?")
    device = getattr(predictor, "device", "?")
    precision = getattr(predictor, "precision", "?")

    def on_segment(image: Optional[dict], text: str, task: str) -> RequestOutput:
        # The event runs with preprocess=False so an unreadable upload reaches to_rgb_tensor (and its
        # readable error) instead of failing inside gradio; gradio has already checked that the file is an
        # upload of this page.
        path, name = _uploaded_file(image)
        try:
            return segment_request(predictor, path, text, task, output_dir=_request_dir(work / "outputs"),
                                   name=name)
        except Exception as exc:  # a bug, or the machine out of memory: short message here, details in the log
            logger.exception("demo request failed")
            raise gr.Error(f"segmentation failed ({type(exc).__name__}: {exc}); details in the terminal") from exc

    def on_ready_vocabulary(choice: str, current: str) -> str:
        return vocabulary_text(choice) if choice in READY_VOCABULARIES else current

    with gr.Blocks(title=f"{title} demo", analytics_enabled=False) as demo:
        gr.Markdown(f"## {title}: open-vocabulary segmentation\nModel `{preset}` on `{device}` "
                    f"(precision `{precision}`). Upload an image "
                    "or pick an example, type the classes to find, press **Segment**. Requests are queued and "
                    "run one at a time.")
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(type="filepath", label="Image", sources=["upload", "clipboard"],
                                 elem_id="input-image")
                ready = gr.Dropdown(["custom"] + list(READY_VOCABULARIES), value="custom",
                                    label="Ready vocabularies", elem_id="ready-vocabulary")
                text = gr.Textbox(value=example_rows[0][1] if example_rows else "person, car, tree, sky",
                                  lines=3, max_lines=8, label="Vocabulary", elem_id="vocabulary",
                                  info='classes separated by "," ";" or new lines; synonyms joined by "|", '
                                       'e.g. "cat, sofa|couch, window"')
                task = gr.Radio(list(_TASK_OUTPUTS), value="semantic", label="Task", elem_id="task")
                button = gr.Button("Segment", variant="primary", elem_id="segment-button")
                if example_rows:
                    gr.Examples(example_rows, inputs=[image, text, task], label="Examples",
                                cache_examples=False, elem_id="examples")
            with gr.Column(scale=1):
                # no label drawn over the image: it would hide the legend in the overlay's top-left corner
                overlay = gr.Image(type="pil", format="png", label="Segments (overlay with legend)",
                                   show_label=False, interactive=False, elem_id="overlay")
                status = gr.Textbox(label="Status", interactive=False, elem_id="status")
                table = gr.Dataframe(headers=TABLE_HEADERS, datatype=["number", "str", "str", "number"],
                                     interactive=False, label="Segments", elem_id="segments-table")
                with gr.Row():
                    label_file = gr.File(label="Label map (PNG: class index per pixel, 255 = none)",
                                         interactive=False, elem_id="label-file")
                    json_file = gr.File(label="Segments (JSON)", interactive=False, elem_id="json-file")
        ready.change(on_ready_vocabulary, [ready, text], text, queue=False)
        button.click(on_segment, [image, text, task], [overlay, table, label_file, json_file, status],
                     preprocess=False, concurrency_limit=1, concurrency_id="model", api_name="segment")
    demo.queue(default_concurrency_limit=1)
    weakref.finalize(demo, shutil.rmtree, str(work), True)
    return demo


def _uploaded_file(payload: Any) -> tuple[Optional[str], Optional[str]]:
    """(server path, original file name) of a gradio image payload (a FileData dict), or (None, None)."""
    if payload is None:
        return None, None
    if isinstance(payload, dict):
        path = payload.get("path")
        return (str(path) if path else None), payload.get("orig_name") or (Path(path).name if path else None)
    return str(payload), Path(str(payload)).name
