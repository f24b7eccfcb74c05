"""The gradio page around the request functions: the preset tab and the SAM tab."""

from __future__ import annotations

import functools
import logging
import shutil
import weakref
from pathlib import Path
from types import ModuleType
from typing import Any, Optional, Sequence

from .dependencies import require_gradio
from .requests import (
    _TASK_OUTPUTS,
    CLICK_TABLE_HEADERS,
    READY_VOCABULARIES,
    TABLE_HEADERS,
    Points,
    RequestOutput,
    SamTools,
    _example_rows,
    click_request,
    everything_request,
    make_example_images,
    ready_vocabulary_of,
    segment_request,
    vocabulary_text,
)
from .workdir import _request_dir, keep_gradio_files_in, make_work_dir, remove_stale_work_dirs

logger = logging.getLogger(__name__)

_DELETE_CACHE = (600, 3600)  # gradio's cache sweep: every 10 minutes, the files older than an hour


SAM_HELP = ("SAM is not loaded. Start the demo with a SAM or SAM 2 checkpoint to click on objects (SAM segments "
            "them, Mask-Adapter names them) or segment everything:\n\n"
            "    pip install 'maskadapter[sam]'   # or 'maskadapter[sam2]'\n"
            "    maskadapter demo --sam-checkpoint sam_vit_b_01ec64.pth --sam-backend sam --sam-model vit_b\n"
            "    maskadapter demo --sam-checkpoint sam2.1_hiera_large.pt --sam-backend sam2\n\n"
            "Checkpoints: the SAM / SAM 2 releases of facebookresearch (the model type is read from the released "
            "file name; --sam-model names it otherwise).")


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
    keep_gradio_files_in(work)  # before any component is made: each reads the cache folder when created
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
    # delete_cache: uploads and outputs older than an hour leave gradio's cache during a long session
    with gr.Blocks(title=f"{title} demo", analytics_enabled=False, delete_cache=_DELETE_CACHE) as demo:
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
