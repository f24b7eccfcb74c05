"""What the page's buttons run, without gradio (so it is tested directly): segment an image, click to segment
with SAM, segment everything; the tables and the example images they show."""

from __future__ import annotations

import functools
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageDraw

from ..data.vocabularies import builtin_vocabulary
from ..fileio import atomic_save_image, atomic_write_json
from ..images import ImageInput, to_rgb_tensor
from ..inference import formats
from ..inference.options import InferenceOptions
from ..inference.prompts import draw_prompts, prompt_overlay, segment_prompts
from ..inference.writers import label_map_image, overlay_image, result_to_json
from ..modeling.generators.sam import MaskProposer, PromptPredictor, SamMaskGenerator, SamPromptPredictor, load_sam
from ..vocabulary import Vocabulary
from .workdir import make_work_dir

logger = logging.getLogger(__name__)


READY_VOCABULARIES = {"ADE20K-150": "ade20k_150", "COCO (panoptic)": "coco_panoptic",
                      "Pascal Context 59": "pascal_ctx_59"}

TABLE_HEADERS = ["#", "class", "score", "area %"]

CLICK_TABLE_HEADERS = ["rank", "class", "probability"]

Points = list[list[Any]]  # [[x, y, positive], ...]: JSON-friendly, kept in the page's session state

ClickOutput = tuple[Optional[Image.Image], dict, Optional[str], Optional[str], str]

_TASK_OUTPUTS = {"semantic": ("semantic",), "panoptic": ("semantic", "panoptic"),
                 "instance": ("semantic", "instance")}

Rows = list[list[Any]]

MAX_UPLOAD_BYTES = 50 * 2**20  #: largest image file a request takes (the page refuses larger uploads too)

MAX_VOCABULARY_CHARS = 10_000  #: longest vocabulary text a request takes (ADE20K-150's is 3,649)

MAX_VOCABULARY_NAMES = 600  #: most class names + synonyms a request takes (ADE20K-150 has 403)

#: Where the overlay's legend may go: not the top-right corner, under gradio's image buttons.
LEGEND_CORNERS = ("top-left", "bottom-left", "bottom-right")

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


def segment_request(predictor: Any, image: Optional[ImageInput], vocabulary_text: Optional[str], task: str,
                    output_dir: Optional[Union[str, os.PathLike]] = None, name: Optional[str] = None
                    ) -> RequestOutput:
    """One page request: segment ``image`` into ``vocabulary_text`` (inline syntax) for ``task``.

    Returns (overlay image at the result's size, table rows ``[#, class, score, area %]``, label-map PNG
    path, segments JSON path, status line). Bad input (no image, an unreadable file, an empty or invalid
    vocabulary, an image over the Predictor's size limit, over :data:`MAX_UPLOAD_BYTES`, a vocabulary over
    :data:`MAX_VOCABULARY_CHARS` or :data:`MAX_VOCABULARY_NAMES`) gives ``(None, [], None, None, "error: ...")``
    instead of raising, so the page shows the reason. Files go to ``output_dir`` (default: a new temporary
    directory, :func:`make_work_dir`), never to the working directory.
    """
    start = time.perf_counter()
    try:
        if task not in _TASK_OUTPUTS:
            raise ValueError(f"task must be one of {', '.join(_TASK_OUTPUTS)}, got {task!r}")
        rgb, vocab = _image_and_vocabulary(image, vocabulary_text, predictor)
        result = predictor.predict(rgb, vocab, tasks=_TASK_OUTPUTS[task])
    except (ValueError, TypeError, OSError) as exc:
        logger.info("demo request refused: %s", exc)
        return None, [], None, None, f"error: {exc}"
    overlay = overlay_image(rgb.permute(1, 2, 0).numpy(), result, task, legend_corners=LEGEND_CORNERS)
    stem = _safe_stem(name)
    data = result_to_json(result, Path(name).name if name else "image", task)
    out_dir = Path(output_dir) if output_dir is not None else make_work_dir()
    names = formats.create("files", overlays=False).paths(stem)  # the per-image files of `segment --format files`
    label_path, json_path = out_dir / names["labels"], out_dir / names["json"]
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


def _image_and_vocabulary(image: Optional[ImageInput], text: Optional[str], predictor: Any = None
                          ) -> tuple[Any, Vocabulary]:
    """The decoded image [3, H, W] uint8 and the parsed vocabulary of a request; ValueError saying what is missing
    or over a limit. The limits are checked before any work: the vocabulary's size, the file's size, and the
    image's pixels from its header (``predictor.max_image_pixels``, as ``maskadapter segment`` does)."""
    if image is None or (isinstance(image, str) and not image.strip()):
        raise ValueError("no image: upload an image or pick an example")
    if not text or not text.strip():
        raise ValueError('empty vocabulary: type class names separated by "," (synonyms joined by "|"), '
                         "or pick a ready vocabulary")
    if len(text) > MAX_VOCABULARY_CHARS:
        raise ValueError(f"the vocabulary has {len(text)} characters, over the demo's limit of "
                         f"{MAX_VOCABULARY_CHARS}: use maskadapter segment --vocab-file for large vocabularies")
    vocab = Vocabulary.parse(text)
    names = sum(len(synonyms) for synonyms in vocab.classes)
    if names > MAX_VOCABULARY_NAMES:  # each name is encoded by CLIP's text tower (14 templates) on a new vocabulary
        raise ValueError(f"the vocabulary has {names} class names and synonyms, over the demo's limit of "
                         f"{MAX_VOCABULARY_NAMES}: use maskadapter segment --vocab-file for large vocabularies")
    size = Path(image).stat().st_size if isinstance(image, (str, os.PathLike)) and Path(image).is_file() else 0
    if size > MAX_UPLOAD_BYTES:
        raise ValueError(f"the image file is {size / 2**20:.0f} MB, over the demo's upload limit of "
                         f"{MAX_UPLOAD_BYTES // 2**20} MB")
    limit = getattr(predictor, "max_image_pixels", None) or InferenceOptions().max_image_pixels
    return to_rgb_tensor(image, max_pixels=limit), vocab


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
        rgb, vocab = _image_and_vocabulary(image, vocabulary_text, predictor)
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
    return (prompt_overlay(image_array, result, legend_corners=LEGEND_CORNERS), _table(CLICK_TABLE_HEADERS, rows),
            None, None, status)


def everything_request(predictor: Any, sam: SamTools, image: Optional[ImageInput], vocabulary_text: Optional[str],
                       output_dir: Optional[Union[str, os.PathLike]] = None, name: Optional[str] = None
                       ) -> ClickOutput:
    """Segment everything: SAM's automatic masks, each classified by the adapter (one panoptic segment per mask).

    Returns what :func:`segment_request` returns for the panoptic task, the rows as ``{"headers", "data"}``."""
    if sam.generator is None:
        return None, _table(TABLE_HEADERS), None, None, "error: this SAM has no automatic mask generator"
    # the page's model, text cache and options; only the masks come from SAM
    automatic = predictor.with_mask_source(sam.generator)
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
