"""A local web page (gradio) to segment an image with any vocabulary: ``maskadapter demo``.

The page adds nothing to the library: the same :class:`~maskadapter.inference.predictor.Predictor`, the same
post-processing and the same writers (:mod:`maskadapter.inference.writers`) as ``maskadapter segment``. gradio is an
optional dependency (``pip install 'maskadapter[demo]'``), imported only by :func:`build_demo`;
:func:`segment_request`, :func:`click_request` and :func:`everything_request`, the functions the page calls, need
no gradio and are tested directly. The SAM tab (click to segment, or segment everything) needs a SAM / SAM 2
checkpoint (:class:`SamTools`); without one it says how to enable it.

Files: every run works in a ``maskadapter-demo-*`` folder of the system's temporary directory holding an
``owner.pid`` file; a later start removes the folders whose owner process has ended (a killed earlier run).
Every file is written atomically (:mod:`maskadapter.fileio`).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageDraw

from .data.vocabularies import builtin_vocabulary
from .fileio import atomic_save_image, atomic_write_json, atomic_write_text
from .images import ImageInput, to_rgb_tensor
from .inference.prompts import draw_prompts, prompt_overlay, segment_prompts
from .inference.writers import label_map_image, overlay_image, result_to_json
from .modeling.generators.sam import MaskProposer, PromptPredictor, SamMaskGenerator, SamPromptPredictor, load_sam
from .vocabulary import Vocabulary

__all__ = ["segment_request", "click_request", "everything_request", "build_demo", "SamTools", "READY_VOCABULARIES",
           "vocabulary_text", "ready_vocabulary_of", "make_example_images", "TABLE_HEADERS", "CLICK_TABLE_HEADERS",
           "DEMO_INSTALL_HINT", "SAM_HELP", "require_gradio", "make_work_dir", "remove_stale_work_dirs"]

logger = logging.getLogger(__name__)

DEMO_INSTALL_HINT = "pip install 'maskadapter[demo]'"
#: The ready vocabularies offered on the page: display name -> built-in vocabulary.
READY_VOCABULARIES = {"ADE20K-150": "ade20k_150", "COCO (panoptic)": "coco_panoptic",
                      "Pascal Context 59": "pascal_ctx_59"}
TABLE_HEADERS = ["#", "class", "score", "area %"]
CLICK_TABLE_HEADERS = ["rank", "class", "probability"]
WORK_PREFIX = "maskadapter-demo-"
OWNER_FILE = "owner.pid"
#: What the SAM tab says when the demo runs without SAM.
SAM_HELP = ("SAM is not loaded. Start the demo with a SAM or SAM 2 checkpoint to click on objects (SAM segments "
            "them, Mask-Adapter names them) or segment everything:\n\n"
            "    pip install 'maskadapter[sam]'   # or 'maskadapter[sam2]'\n"
            "    maskadapter demo --sam-checkpoint sam_vit_b_01ec64.pth --sam-backend sam --sam-model vit_b\n"
            "    maskadapter demo --sam-checkpoint sam2.1_hiera_large.pt --sam-backend sam2\n\n"
            "Checkpoints: the SAM / SAM 2 releases of facebookresearch (the model type is read from the released "
            "file name; --sam-model names it otherwise).")
_ORPHAN_AGE_S = 3600.0  # work folders without an owner file (older versions) are removed after this age
Points = list[list[Any]]  # [[x, y, positive], ...]: JSON-friendly, kept in the page's session state
ClickOutput = tuple[Optional[Image.Image], dict, Optional[str], Optional[str], str]
_TASK_OUTPUTS = {"semantic": ("semantic",), "panoptic": ("semantic", "panoptic"),
                 "instance": ("semantic", "instance")}
_KEEP_REQUEST_DIRS = 8  # downloads of older requests are deleted (gradio has copied them to its cache by then)

Rows = list[list[Any]]
RequestOutput = tuple[Optional[Image.Image], Rows, Optional[str], Optional[str], str]


def vocabulary_text(name: str) -> str:
    """A built-in vocabulary (``READY_VOCABULARIES`` key or built-in name) in the inline syntax of ``--vocab``."""
    return builtin_vocabulary(READY_VOCABULARIES.get(name, name)).to_text()


def ready_vocabulary_of(text: Optional[str]) -> str:
    """The ``READY_VOCABULARIES`` entry whose classes ``text`` spells (blanks and separators may differ), else
    ``"custom"``: what the page's "Ready vocabularies" menu shows for the text box."""
    try:
        vocab = Vocabulary.parse(text or "")
    except (ValueError, TypeError):
        return "custom"
    for label in READY_VOCABULARIES:
        if vocab == _ready_vocabulary(label):
            return label
    return "custom"


@functools.lru_cache(maxsize=None)
def _ready_vocabulary(label: str) -> Vocabulary:
    return builtin_vocabulary(READY_VOCABULARIES[label])


def make_work_dir() -> Path:
    """A new ``maskadapter-demo-*`` folder in the temporary directory, owned by this process (``owner.pid``)."""
    path = Path(tempfile.mkdtemp(prefix=WORK_PREFIX))
    atomic_write_text(path / OWNER_FILE, str(os.getpid()))
    return path


def remove_stale_work_dirs(root: Optional[Union[str, os.PathLike]] = None) -> list[Path]:
    """Remove the ``maskadapter-demo-*`` folders under ``root`` (default: the temporary directory) of ended runs:
    their owner process is gone, or (older versions) they have no owner file and are over an hour old. Only
    this user's folders are touched; returns the removed ones."""
    removed = []
    for path in Path(root or tempfile.gettempdir()).glob(WORK_PREFIX + "*"):
        try:
            if path.is_symlink() or not path.is_dir() or (hasattr(os, "getuid") and path.stat().st_uid != os.getuid()):
                continue
            if not _ended(path):
                continue
        except OSError:  # removed meanwhile by another run
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    if removed:
        logger.info("removed %d work folders of ended demo runs", len(removed))
    return removed


def _ended(path: Path) -> bool:
    """Whether the run that made work folder ``path`` has ended."""
    try:
        pid = int((path / OWNER_FILE).read_text(encoding="utf-8").strip())
    except FileNotFoundError:
        return time.time() - path.stat().st_mtime > _ORPHAN_AGE_S
    except (ValueError, OSError):
        return False
    return pid != os.getpid() and not _pid_alive(pid)


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":  # os.kill(pid, 0) would stop the process on Windows: keep the folder
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def segment_request(predictor: Any, image: Optional[ImageInput], vocabulary_text: Optional[str], task: str,
                    output_dir: Optional[Union[str, os.PathLike]] = None, name: Optional[str] = None
                    ) -> RequestOutput:
    """One page request: segment ``image`` into ``vocabulary_text`` (inline syntax) for ``task``.

    Returns (overlay image at the result's size, table rows ``[#, class, score, area %]``, label-map PNG
    path, segments JSON path, status line). Bad input (no image, an unreadable file, an empty or invalid
    vocabulary, an image over the Predictor's size limit) gives ``(None, [], None, None, "error: ...")``
    instead of raising, so the page shows the reason. Files go to ``output_dir`` (default: a new temporary
    directory, :func:`make_work_dir`), never to the working directory.
    """
    start = time.perf_counter()
    try:
        if task not in _TASK_OUTPUTS:
            raise ValueError(f"task must be one of {', '.join(_TASK_OUTPUTS)}, got {task!r}")
        rgb, vocab = _image_and_vocabulary(image, vocabulary_text)
        result = predictor.predict(rgb, vocab, tasks=_TASK_OUTPUTS[task])
    except (ValueError, TypeError, OSError) as exc:
        logger.info("demo request refused: %s", exc)
        return None, [], None, None, f"error: {exc}"
    overlay = overlay_image(rgb.permute(1, 2, 0).numpy(), result, task)
    stem = _safe_stem(name)
    data = result_to_json(result, Path(name).name if name else "image", task)
    out_dir = Path(output_dir) if output_dir is not None else make_work_dir()
    label_path, json_path = out_dir / f"{stem}_labels.png", out_dir / f"{stem}.json"
    atomic_save_image(label_map_image(result), label_path)
    atomic_write_json(json_path, data)
    rows = _table_rows(data, task, result.image_size)
    H, W = result.image_size
    status = (f"{task}: {len(rows)} segment{'' if len(rows) == 1 else 's'}, {len(vocab)} classes in the "
              f"vocabulary, maps {W}x{H}, "
              f"{time.perf_counter() - start:.2f} s")
    if (H, W) != tuple(rgb.shape[1:]):
        status += f" (image {rgb.shape[2]}x{rgb.shape[1]} scaled down)"
    return overlay, rows, str(label_path), str(json_path), status


def _image_and_vocabulary(image: Optional[ImageInput], text: Optional[str]) -> tuple[Any, Vocabulary]:
    """The decoded image [3, H, W] uint8 and the parsed vocabulary of a request; ValueError saying what is missing."""
    if image is None or (isinstance(image, str) and not image.strip()):
        raise ValueError("no image: upload an image or pick an example")
    if not text or not text.strip():
        raise ValueError('empty vocabulary: type class names separated by "," (synonyms joined by "|"), '
                         "or pick a ready vocabulary")
    vocab = Vocabulary.parse(text)
    return to_rgb_tensor(image), vocab


@dataclass
class SamTools:
    """What the SAM tab runs: a prompt predictor (click mode), an automatic mask generator (everything mode)
    and a display name. :meth:`load` builds both around one SAM / SAM 2 network."""

    prompts: PromptPredictor
    generator: Optional[MaskProposer] = None
    name: str = "SAM"

    @classmethod
    def load(cls, checkpoint: Union[str, os.PathLike], backend: str = "sam", model_type: Optional[str] = None,
             device: Any = "cpu", **generator_kwargs: Any) -> "SamTools":
        """Load the network once and wrap it for both modes (``generator_kwargs`` go to the automatic generator)."""
        model = load_sam(checkpoint, backend, model_type, device)
        return cls(SamPromptPredictor(model), SamMaskGenerator(model, **generator_kwargs), model.describe())


def click_request(predictor: Any, sam: SamTools, image: Optional[ImageInput], vocabulary_text: Optional[str],
                  points: Sequence[Sequence[Any]]) -> ClickOutput:
    """One click of the SAM tab: segment the object the ``points`` ([x, y, positive] in image pixels) mark.

    Returns (overlay with the mask, its class and the points; the top-5 table as ``{"headers", "data"}`` with rows
    ``[rank, class, probability]``; no label map / JSON (None, None); status). With no points the overlay is the
    image itself. Bad input gives ``(None, empty table, None, None, "error: ...")``.
    """
    start = time.perf_counter()
    try:
        rgb, vocab = _image_and_vocabulary(image, vocabulary_text)
        if not points:
            return Image.fromarray(rgb.permute(1, 2, 0).numpy()), _table(CLICK_TABLE_HEADERS), None, None, \
                "click on an object: a positive point selects it, a negative point removes what it touches"
        result = segment_prompts(predictor, sam.prompts, rgb, vocab, points=[tuple(p) for p in points])
    except (ValueError, TypeError, OSError) as exc:
        logger.info("demo click refused: %s", exc)
        return None, _table(CLICK_TABLE_HEADERS), None, None, f"error: {exc}"
    image_array = rgb.permute(1, 2, 0).numpy()
    seconds = time.perf_counter() - start
    reused = "" if result.embedding_computed else ", SAM embedding reused"
    n = len(points)
    if int(result.areas[0]) == 0:
        overlay = draw_prompts(Image.fromarray(image_array), [tuple(p) for p in points], [])
        return overlay, _table(CLICK_TABLE_HEADERS), None, None, \
            f"{sam.name} found no mask at these points ({n} point{'s' * (n != 1)}); try another spot"
    top = result.top(0)
    rows = [[rank + 1, label, f"{score:.3f}"] for rank, (label, score) in enumerate(top)]
    share = 100 * int(result.areas[0]) / (result.image_size[0] * result.image_size[1])
    status = (f"click: {top[0][0]} ({top[0][1]:.2f}), mask {share:.1f}% of the image, {sam.name} score "
              f"{float(result.sam_scores[0]):.2f}, {n} point{'s' * (n != 1)}, {seconds:.2f} s{reused}")
    return prompt_overlay(image_array, result), _table(CLICK_TABLE_HEADERS, rows), None, None, status


def everything_request(predictor: Any, sam: SamTools, image: Optional[ImageInput], vocabulary_text: Optional[str],
                       output_dir: Optional[Union[str, os.PathLike]] = None, name: Optional[str] = None
                       ) -> ClickOutput:
    """Segment everything: SAM's automatic masks, each classified by the adapter (one panoptic segment per mask).

    Returns what :func:`segment_request` returns for the panoptic task, the rows as ``{"headers", "data"}``."""
    if sam.generator is None:
        return None, _table(TABLE_HEADERS), None, None, "error: this SAM has no automatic mask generator"
    from .inference.predictor import Predictor

    # the page's model, text cache and options; only the masks come from SAM
    automatic = Predictor(predictor.model, predictor.preset, predictor.device, predictor.options,
                          mask_generator=sam.generator, text_classifier=predictor.text_classifier)
    overlay, rows, label_path, json_path, status = segment_request(automatic, image, vocabulary_text, "panoptic",
                                                                   output_dir=output_dir, name=name)
    return overlay, _table(TABLE_HEADERS, rows), label_path, json_path, status.replace("panoptic:", "everything:", 1)


def _table(headers: list[str], rows: Optional[Rows] = None) -> dict:
    """A table value with its own headers (the SAM tab's table shows two kinds of rows)."""
    return {"headers": list(headers), "data": rows or []}


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
        atomic_save_image(img, directory / file)
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


def build_demo(predictor: Any, examples: Optional[Sequence[Any]] = None, title: str = "Mask-Adapter",
               sam: Optional[SamTools] = None) -> "gradio.Blocks":  # noqa: F821
    """The page (a ``gr.Blocks``, queued so one request runs the model at a time) around ``predictor``.

    ``examples``: image paths or (path, vocabulary[, task]) tuples; ``None`` draws a few synthetic examples
    into a temporary directory (removed with the page), ``[]`` shows none. ``sam``: SAM for the SAM tab (click
    to segment, segment everything); without it the tab says how to enable it. A predictor without a mask
    generator (``Predictor.from_adapter``) opens on the SAM tab.
    """
    gr = require_gradio()
    given = _example_rows(examples) if examples is not None else None  # bad paths fail before any file is made
    remove_stale_work_dirs()
    work = make_work_dir()
    example_rows = _example_rows(make_example_images(work / "examples")) if given is None else given
    segment_fn = _guarded(gr, segment_request, "segmentation")
    click_fn, everything_fn = _guarded(gr, click_request, "SAM"), _guarded(gr, everything_request, "SAM")

    def on_segment(image: Optional[dict], text: str, task: str) -> RequestOutput:
        # The event runs with preprocess=False so an unreadable upload reaches to_rgb_tensor (and its
        # readable error) instead of failing inside gradio; gradio has already checked that the file is an
        # upload of this page.
        path, name = _uploaded_file(image)
        return segment_fn(predictor, path, text, task, output_dir=_request_dir(work / "outputs"), name=name)

    def on_click(image: Optional[dict], text: str, kind: str, points: Points, evt: gr.SelectData) -> tuple:
        x, y = (float(v) for v in evt.index[:2])
        points = list(points or []) + [[x, y, kind.startswith("positive")]]
        return (*click_fn(predictor, sam, _uploaded_file(image)[0], text, points), points)

    # gradio passes the click's pixel to the parameter annotated with the SelectData class itself; this
    # module's annotations are strings that gradio cannot resolve (gr is a local name)
    on_click.__annotations__ = {"evt": gr.SelectData}

    def on_points(image: Optional[dict], text: str, points: Points) -> tuple:  # undo / clear / new image
        return (*click_fn(predictor, sam, _uploaded_file(image)[0], text, points), points)

    def on_everything(image: Optional[dict], text: str) -> tuple:
        path, name = _uploaded_file(image)
        return everything_fn(predictor, sam, path, text, output_dir=_request_dir(work / "outputs"), name=name)

    adapter_only = getattr(getattr(predictor, "model", None), "sem_seg_head", "?") is None
    adapter_only = adapter_only and getattr(predictor, "mask_generator", None) is None
    model_kw = dict(concurrency_limit=1, concurrency_id="model")
    with gr.Blocks(title=f"{title} demo", analytics_enabled=False) as demo:
        gr.Markdown(_header(title, predictor, sam))
        with gr.Row():
            ready = gr.Dropdown(["custom"] + list(READY_VOCABULARIES), value="custom", scale=1,
                                label="Ready vocabularies", elem_id="ready-vocabulary")
            text = gr.Textbox(value=example_rows[0][1] if example_rows else "person, car, tree, sky", scale=4,
                              lines=2, max_lines=8, label="Vocabulary", elem_id="vocabulary",
                              info='classes separated by "," ";" or new lines; synonyms joined by "|", '
                                   'e.g. "cat, sofa|couch, window"')
        with gr.Tabs(selected="sam" if adapter_only else "preset"):
            with gr.Tab("Segment", id="preset", elem_id="preset-tab"):
                if adapter_only:
                    gr.Markdown("This model is adapter-only (no mask decoder): segment with the SAM tab.")
                with gr.Row():
                    with gr.Column(scale=1):
                        image = gr.Image(type="filepath", label="Image", sources=["upload", "clipboard"],
                                         elem_id="input-image")
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
            with gr.Tab("SAM: click or everything", id="sam", elem_id="sam-tab"):
                sam_ui = _sam_tab(gr, sam, example_rows, text)
        # the menu fills the text only when a person picks an entry (input, not change): the text's own change
        # sets the menu, and a change event there would write a stale text back over newer typing
        ready.input(lambda choice, current: vocabulary_text(choice) if choice in READY_VOCABULARIES else current,
                    [ready, text], text, queue=False)
        text.change(ready_vocabulary_of, text, ready, queue=False)
        button.click(on_segment, [image, text, task], [overlay, table, label_file, json_file, status],
                     preprocess=False, api_name="segment", **model_kw)
        if sam_ui is not None:
            sam_image, canvas, kind, sam_table, sam_files, sam_status, undo, clear, everything = sam_ui
            points = gr.State([])
            outputs = [canvas, sam_table, *sam_files, sam_status, points]
            canvas.select(on_click, [sam_image, text, kind, points], outputs, preprocess=False, api_name="click",
                          **model_kw)
            undo.click(lambda im, t, p: on_points(im, t, list(p or [])[:-1]), [sam_image, text, points], outputs,
                       preprocess=False, api_name="undo", **model_kw)
            for trigger in (clear.click, sam_image.change):
                trigger(lambda im, t: on_points(im, t, []), [sam_image, text], outputs, preprocess=False,
                        **model_kw)
            everything.click(on_everything, [sam_image, text], outputs[:-1], preprocess=False,
                             api_name="everything", **model_kw)
    demo.queue(default_concurrency_limit=1)
    weakref.finalize(demo, shutil.rmtree, str(work), True)
    return demo


def _header(title: str, predictor: Any, sam: Optional[SamTools]) -> str:
    """The page's first lines: the model, where it runs and at which precision (resolved, never "auto")."""
    preset = getattr(getattr(predictor, "preset", None), "name", "?")
    device = getattr(predictor, "device", "?")
    precision = getattr(predictor, "resolved_precision", None) or getattr(predictor, "precision", "?")
    sam_line = f"{sam.name} for the SAM tab" if sam is not None else "no SAM (see the SAM tab)"
    return (f"## {title}: open-vocabulary segmentation\nModel `{preset}` on `{device}` (precision `{precision}`), "
            f"{sam_line}. Pick an image, type the classes to find, press **Segment** - or click on objects in the "
            "SAM tab. Requests are queued and run one at a time.")


def _sam_tab(gr: ModuleType, sam: Optional[SamTools], example_rows: list[list[str]], text: Any) -> Optional[tuple]:
    """The SAM tab's components, or only its help text (and None) when SAM is not loaded; examples fill the
    image and their vocabulary (``text``, the page's vocabulary box)."""
    if sam is None:
        gr.Markdown(SAM_HELP, elem_id="sam-help")
        return None
    gr.Markdown(f"**{sam.name}**: click on an object in the right image - SAM segments it and Mask-Adapter names it "
                "(top-5 classes below). Add positive points to grow the mask, negative points to cut parts off; "
                "**Segment everything** classifies all of SAM's automatic masks.")
    with gr.Row():
        with gr.Column(scale=1):
            sam_image = gr.Image(type="filepath", label="Image", sources=["upload", "clipboard"],
                                 elem_id="sam-input-image")
            kind = gr.Radio(["positive (on the object)", "negative (not the object)"], elem_id="sam-point-kind",
                            value="positive (on the object)", label="Next click adds a")
            with gr.Row():
                undo = gr.Button("Undo last point", elem_id="sam-undo")
                clear = gr.Button("Clear points", elem_id="sam-clear")
            everything = gr.Button("Segment everything", variant="primary", elem_id="sam-everything")
            if example_rows:
                gr.Examples([row[:2] for row in example_rows], inputs=[sam_image, text], label="Examples",
                            cache_examples=False, elem_id="sam-examples")
        with gr.Column(scale=1):
            # no label drawn over the image: it would hide the legend in the overlay's top-left corner
            canvas = gr.Image(type="pil", format="png", label="Click on an object", show_label=False,
                              interactive=False, elem_id="sam-canvas")
            status = gr.Textbox(label="Status", interactive=False, elem_id="sam-status")
            table = gr.Dataframe(headers=CLICK_TABLE_HEADERS, interactive=False, label="Classes",
                                 elem_id="sam-table")
            with gr.Row():
                files = (gr.File(label="Label map (PNG)", interactive=False, elem_id="sam-label-file"),
                         gr.File(label="Segments (JSON)", interactive=False, elem_id="sam-json-file"))
    return sam_image, canvas, kind, table, files, status, undo, clear, everything


def _guarded(gr: ModuleType, request: Any, what: str) -> Any:
    """``request`` with unexpected failures (a bug, out of memory) turned into a short page error; details are
    logged to the terminal."""

    @functools.wraps(request)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return request(*args, **kwargs)
        except Exception as exc:
            logger.exception("demo request failed")
            raise gr.Error(f"{what} failed ({type(exc).__name__}: {exc}); details in the terminal") from exc

    return run


def _uploaded_file(payload: Any) -> tuple[Optional[str], Optional[str]]:
    """(server path, original file name) of a gradio image payload (a FileData dict), or (None, None)."""
    if payload is None:
        return None, None
    if isinstance(payload, dict):
        path = payload.get("path")
        return (str(path) if path else None), payload.get("orig_name") or (Path(path).name if path else None)
    return str(payload), Path(str(payload)).name
