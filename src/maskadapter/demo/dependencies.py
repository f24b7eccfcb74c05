"""What the demo needs besides the package (gradio), checked without importing it, torch or the model code."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

__all__ = ["DEMO_INSTALL_HINT", "gradio_installed", "check_gradio", "require_gradio"]

DEMO_INSTALL_HINT = "pip install 'maskadapter[demo]'"


def _missing_message() -> str:
    return f"the demo needs gradio, which is not installed: {DEMO_INSTALL_HINT}"


def gradio_installed() -> bool:
    """Whether gradio can be imported, found without importing it (a 5-15 s import)."""
    if "gradio" in sys.modules:
        return sys.modules["gradio"] is not None  # None: imports of it are blocked
    return importlib.util.find_spec("gradio") is not None


def check_gradio() -> None:
    """An ImportError saying how to install the demo extra when gradio is missing; nothing is imported."""
    if not gradio_installed():
        raise ImportError(_missing_message())


def require_gradio() -> ModuleType:
    """The gradio module, or an ImportError saying how to install the demo extra."""
    try:
        import gradio
    except ImportError as exc:
        raise ImportError(_missing_message()) from exc
    return gradio
