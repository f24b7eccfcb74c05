"""The package's own exceptions (no heavy imports, so the command line can catch them cheaply)."""

from __future__ import annotations

__all__ = ["CheckpointError", "UnsafeCheckpointError", "WeightsUnavailableError"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file and the reason."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle that would run code on load; it was refused, nothing in it was executed."""


class WeightsUnavailableError(RuntimeError):
    """The weights of a preset could not be found locally nor downloaded."""
