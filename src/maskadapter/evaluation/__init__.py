"""Evaluators for the paper's benchmarks: mIoU, PQ, mask AP and GT-mask classification accuracy.

Each evaluator has ``reset()``, ``process(...)`` (one image), ``evaluate() -> dict`` (percent) and the state
protocol ``state() -> dict`` (JSON-serialisable) / ``merge(state)`` / ``load_state(state)``: states of several
processes or of an interrupted run combine exactly. :func:`reduce_evaluator` does the same across
``torch.distributed`` ranks.
"""

from .classification import MaskClassificationEvaluator
from .state import STATE_FORMAT, StatefulEvaluator, reduce_evaluator
from .instance import InstanceEvaluator, encode_masks
from .panoptic import OFFSET, VOID, PanopticEvaluator
from .semantic import SemSegEvaluator

__all__ = [
    "SemSegEvaluator", "PanopticEvaluator", "InstanceEvaluator", "MaskClassificationEvaluator",
    "StatefulEvaluator", "reduce_evaluator", "encode_masks", "STATE_FORMAT", "OFFSET", "VOID",
]
