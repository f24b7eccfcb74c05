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

from .page import DEMO_INSTALL_HINT, SAM_HELP, build_demo, require_gradio
from .requests import (
                       CLICK_TABLE_HEADERS,
                       READY_VOCABULARIES,
                       TABLE_HEADERS,
                       SamTools,
                       click_request,
                       everything_request,
                       make_example_images,
                       ready_vocabulary_of,
                       segment_request,
                       vocabulary_text,
)
from .workdir import OWNER_FILE, WORK_PREFIX, make_work_dir, remove_stale_work_dirs

__all__ = ["segment_request", "click_request", "everything_request", "build_demo", "SamTools", "READY_VOCABULARIES",
           "vocabulary_text", "ready_vocabulary_of", "make_example_images", "TABLE_HEADERS", "CLICK_TABLE_HEADERS",
           "DEMO_INSTALL_HINT", "SAM_HELP", "require_gradio", "make_work_dir", "remove_stale_work_dirs",
           "OWNER_FILE", "WORK_PREFIX"]
