"""The evaluators' state protocol and its exact reduction across ``torch.distributed`` ranks.

Every evaluator keeps its whole state as

* ``counts``: int64 numpy arrays whose values add (confusion matrices, tp/fp/fn, exact fixed-point sums), and
* ``records``: lists whose items concatenate (RLE-encoded instances and predictions).

Integer counts add exactly in any order, so the reduction over ranks, the merge of saved states and a
single-process run give bit-identical metrics. No float is ever summed across images in a state: the
panoptic IoU sums are kept as exact fixed-point integers (see ``panoptic.py``).

:class:`StatefulEvaluator` implements ``state`` / ``merge`` / ``load_state`` once for all evaluators;
:func:`reduce_evaluator` all-reduces the counts and all-gathers the records.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from .. import distributed

__all__ = ["StatefulEvaluator", "reduce_evaluator", "STATE_FORMAT"]

logger = logging.getLogger(__name__)

#: Version of the ``state()`` layout; ``merge`` refuses states of another version.
STATE_FORMAT = 1

ArrayLike = Union[torch.Tensor, np.ndarray, Sequence[int]]
BoolLike = Union[torch.Tensor, np.ndarray, Sequence[bool]]


def as_int_array(x: Any, name: str) -> np.ndarray:
    """int64 numpy copy-free view of an integer tensor / array / list ``x`` (any shape); raises naming ``name``."""
    if isinstance(x, torch.Tensor):
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise TypeError(f"{name} must hold integers, got a tensor of {x.dtype}")
        # via int64 in torch: numpy has no equivalent of some torch integer dtypes (uint16/32 on old numpy)
        return x.detach().to("cpu", torch.int64).numpy()
    arr = np.asarray(x)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise TypeError(f"{name} must hold integers, got an array of {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def as_map_pair(pred: Any, gt: Any, pred_name: str, gt_name: str) -> tuple[np.ndarray, np.ndarray]:
    """int64 maps [H, W] of a prediction and its ground truth; raises naming them if not 2-D of one shape."""
    p = as_int_array(pred, pred_name)
    g = as_int_array(gt, gt_name)
    if p.ndim != 2:
        raise ValueError(f"{pred_name} must have shape [H, W], got {list(p.shape)}")
    if g.shape != p.shape:
        raise ValueError(f"{gt_name} shape {list(g.shape)} differs from {pred_name} shape {list(p.shape)}")
    return p, g


def as_bool_vector(x: Optional[BoolLike], length: int, name: str) -> Optional[list[bool]]:
    """``x`` as a list of ``length`` bools (None stays None); 0/1 integers are accepted."""
    if x is None:
        return None
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim != 1 or arr.shape[0] != length:
        raise ValueError(f"{name} must be a vector of {length} booleans, got shape {list(arr.shape)}")
    if arr.dtype != np.bool_:
        if not np.issubdtype(arr.dtype, np.integer) or not np.isin(arr, (0, 1)).all():
            raise TypeError(f"{name} must hold booleans, got {arr.dtype}")
    return [bool(v) for v in arr]


def class_name_list(class_names: Optional[Sequence[str]], num_classes: int) -> list[str]:
    """The ``num_classes`` class names (their indices as strings when None)."""
    if class_names is None:
        return [str(i) for i in range(num_classes)]
    if isinstance(class_names, str):
        raise TypeError("class_names must be a sequence of strings, not one string")
    names = [str(n) for n in class_names]
    if len(names) != num_classes:
        raise ValueError(f"class_names has {len(names)} names for num_classes={num_classes}")
    return names


def check_num_classes(num_classes: Any) -> int:
    """``num_classes`` as a positive int."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return int(num_classes)


def masked_mean(values: np.ndarray, mask: np.ndarray) -> float:
    """``sum(values[mask]) / count(mask)`` in float64, nan for an empty mask (detectron2's mean form)."""
    n = int(np.sum(mask))
    return float(np.sum(values[mask]) / n) if n else float("nan")


class StatefulEvaluator:
    """Base of the evaluators: ``reset`` / ``state`` / ``merge`` / ``load_state`` over counts and records.

    Subclasses set ``_KIND``, define ``_config()`` (JSON-able, compared on merge), ``_count_shapes()``
    (name -> shape of each int64 count array), ``_RECORD_KEYS`` and, when records need checks beyond
    concatenation, ``_check_records(records_list)``.
    """

    _KIND = ""
    _RECORD_KEYS: tuple[str, ...] = ()

    def _set_classes(self, num_classes: int, class_names: Optional[Sequence[str]], seen: Optional[BoolLike]) -> None:
        """Validate and store what every evaluator has: C, the class names and the seen flags [C]."""
        self.num_classes = check_num_classes(num_classes)
        self.class_names = class_name_list(class_names, self.num_classes)
        self.seen = as_bool_vector(seen, self.num_classes, "seen")

    def _config(self) -> dict:
        """The configuration compared on merge: the class setup plus what a subclass adds."""
        return {"num_classes": self.num_classes, "class_names": list(self.class_names),
                "seen": None if self.seen is None else list(self.seen)}

    def _count_shapes(self) -> dict[str, tuple[int, ...]]:
        raise NotImplementedError

    def _check_records(self, records_list: list[dict[str, list]]) -> None:
        """Raise ValueError if the concatenation of these records (in order) would be inconsistent."""

    def reset(self) -> None:
        """Forget everything processed so far."""
        self._counts = {k: np.zeros(s, dtype=np.int64) for k, s in self._count_shapes().items()}
        self._records: dict[str, list] = {k: [] for k in self._RECORD_KEYS}

    def state(self) -> dict:
        """JSON-serialisable snapshot: ``{"evaluator", "format", "config", "counts", "records"}``."""
        return {
            "evaluator": self._KIND,
            "format": STATE_FORMAT,
            "config": copy.deepcopy(self._config()),
            "counts": {k: v.tolist() for k, v in self._counts.items()},
            "records": copy.deepcopy(self._records),
        }

    def _parse_state(self, state: Any) -> tuple[dict[str, np.ndarray], dict[str, list]]:
        """Validated (counts, records) of ``state``; ValueError if it comes from another configuration."""
        if isinstance(state, StatefulEvaluator):
            state = state.state()
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict from state(), got {type(state).__name__}")
        if state.get("evaluator") != self._KIND:
            raise ValueError(f"state comes from evaluator {state.get('evaluator')!r}, not {self._KIND!r}")
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"state has format {state.get('format')!r}, expected {STATE_FORMAT}")
        config = self._config()
        other = state.get("config")
        if other != config:
            diff = sorted(k for k in set(config) | set(other or {}) if (other or {}).get(k) != config.get(k))
            raise ValueError(f"state comes from an evaluator with another configuration (differs in {diff})")
        shapes = self._count_shapes()
        raw_counts = state.get("counts")
        if not isinstance(raw_counts, dict) or set(raw_counts) != set(shapes):
            raise ValueError(f"state counts must have the keys {sorted(shapes)}")
        counts = {}
        for k, shape in shapes.items():
            arr = np.asarray(raw_counts[k])
            if arr.shape != tuple(shape) or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
                raise ValueError(f"state counts[{k!r}] must be integers of shape {list(shape)}, "
                                 f"got {arr.dtype} {list(arr.shape)}")
            if (arr < 0).any():
                raise ValueError(f"state counts[{k!r}] has negative entries")
            counts[k] = arr.astype(np.int64)
        raw_records = state.get("records")
        if not isinstance(raw_records, dict) or set(raw_records) != set(self._RECORD_KEYS):
            raise ValueError(f"state records must have the keys {sorted(self._RECORD_KEYS)}")
        if not all(isinstance(v, list) for v in raw_records.values()):
            raise ValueError("state records must be lists")
        return counts, copy.deepcopy(raw_records)

    def merge(self, state: Union[dict, "StatefulEvaluator"]) -> None:
        """Add another evaluator's ``state()`` (same configuration) to this one, exactly; all-or-nothing."""
        counts, records = self._parse_state(state)
        self._check_records([self._records, records])
        for k, v in counts.items():
            self._counts[k] += v
        for k, v in records.items():
            self._records[k].extend(v)

    def load_state(self, state: Union[dict, "StatefulEvaluator"]) -> None:
        """Replace this evaluator's state by ``state`` (resume an interrupted evaluation)."""
        counts, records = self._parse_state(state)
        self._check_records([records])
        self._counts = counts
        self._records = records


def reduce_evaluator(evaluator: StatefulEvaluator) -> StatefulEvaluator:
    """Replace ``evaluator``'s state by the exact reduction over all ranks (no-op without a process group).

    Counts are summed with one int64 ``all_reduce``; records are ``all_gather_object``-ed and concatenated
    in rank order. Every rank ends up with the full state, so ``evaluate()`` may run on any rank. Call it
    once per evaluation: a second call would count every rank's contribution again.
    """
    if not isinstance(evaluator, StatefulEvaluator):
        raise TypeError(f"evaluator must be one of the maskadapter evaluators, got {type(evaluator).__name__}")
    if not distributed.is_distributed():
        return evaluator
    header = {"evaluator": evaluator._KIND, "format": STATE_FORMAT, "config": evaluator._config()}
    headers = distributed.all_gather_object(header)
    # every rank sees the same list, so every rank raises (no rank is left waiting in a collective)
    bad = [r for r, h in enumerate(headers) if h != headers[0]]
    if bad:
        raise ValueError(f"evaluators on ranks {bad} have another configuration than rank 0")

    keys = sorted(evaluator._counts)
    reduced = {}
    if keys:
        flat = np.concatenate([evaluator._counts[k].ravel() for k in keys]).astype(np.int64)
        total = distributed.all_reduce_sum(torch.from_numpy(flat)).numpy()
        offset = 0
        for k in keys:
            n = evaluator._counts[k].size
            reduced[k] = total[offset:offset + n].reshape(evaluator._counts[k].shape).copy()
            offset += n

    records = evaluator._records
    if evaluator._RECORD_KEYS:
        gathered = distributed.all_gather_object(records)
        evaluator._check_records(gathered)
        records = {k: [item for part in gathered for item in part[k]] for k in evaluator._RECORD_KEYS}
    evaluator._counts = reduced
    evaluator._records = records
    logger.debug("reduced %s evaluator over %d ranks", evaluator._KIND, len(headers))
    return evaluator
