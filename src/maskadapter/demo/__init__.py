"""A local web page (gradio) to segment an image with any vocabulary: ``maskadapter demo``.

The page adds nothing to the library: the same :class:`~maskadapter.inference.predictor.Predictor`, the same
post-processing and the same writers (:mod:`maskadapter.inference.writers`) as ``maskadapter segment``. gradio is an
optional dependency (``pip install 'maskadapter[demo]'``), imported only by :func:`build_demo`;
:func:`segment_request`, :func:`click_request` and :func:`everything_request`, the functions the page calls, need
no gradio and are tested directly. The SAM tab (click to segment, or segment everything) needs a SAM / SAM 2
checkpoint (:class:`SamTools`); without one it says how to enable it.

Files: every run works in a ``maskadapter-demo-*`` folder of the system's temporary directory holding an
``owner.pid`` file, gradio's upload cache included; a later start removes the folders whose owner process has
ended (a killed earlier run). Every file is written atomically (:mod:`maskadapter.fileio`).

The names below load on first use, so ``maskadapter demo`` checks its options and gradio (:mod:`.dependencies`)
before torch and gradio are imported.
"""

from __future__ import annotations

from ..lazy import lazy_attributes

#: public name -> module of this package that defines it
_EXPORTS: dict[str, str] = {
    "build_demo": "page", "SAM_HELP": "page",
    "DEMO_INSTALL_HINT": "dependencies", "require_gradio": "dependencies", "check_gradio": "dependencies",
    "gradio_installed": "dependencies",
    "segment_request": "requests", "click_request": "requests", "everything_request": "requests",
    "SamTools": "requests", "READY_VOCABULARIES": "requests", "vocabulary_text": "requests",
    "ready_vocabulary_of": "requests", "make_example_images": "requests", "TABLE_HEADERS": "requests",
    "CLICK_TABLE_HEADERS": "requests", "MAX_UPLOAD_BYTES": "requests", "MAX_VOCABULARY_CHARS": "requests",
    "make_work_dir": "workdir", "remove_stale_work_dirs": "workdir", "OWNER_FILE": "workdir",
    "WORK_PREFIX": "workdir",
}
_SUBMODULES = ("dependencies", "page", "requests", "workdir")

__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS, _SUBMODULES, globals())
