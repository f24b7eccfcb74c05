"""Built-in benchmark vocabularies stored as package data (see ``SOURCES.md``)."""

from __future__ import annotations

import re
from importlib import resources

import torch

from ..vocabulary import Vocabulary
from .table import BUILTIN_VOCABULARIES, VOCABULARY_FILES

__all__ = ["BUILTIN_VOCABULARIES", "builtin_vocabulary", "coco_thing_mask"]

# COCO panoptic category ids 1-90 are "things" (80 used ids), 92-200 are "stuff".
_COCO_THING_MAX_ID = 91


def _read_lines(name: str) -> list[str]:
    if name not in BUILTIN_VOCABULARIES:
        raise ValueError(f"unknown built-in vocabulary {name!r}; choose one of {', '.join(BUILTIN_VOCABULARIES)}")
    file = VOCABULARY_FILES[name][0]
    return resources.files(__package__).joinpath("classes", f"{file}.txt").read_text(encoding="utf-8").splitlines()


def builtin_vocabulary(name: str) -> Vocabulary:
    """The class list of a benchmark (one of ``BUILTIN_VOCABULARIES``) with its synonyms."""
    return Vocabulary.from_lines(_read_lines(name), keep_id0=VOCABULARY_FILES[name][1])


def coco_thing_mask(vocabulary: Vocabulary) -> torch.Tensor:
    """Bool [C]: classes sharing a synonym with a COCO panoptic *thing* class (people, animals, vehicles...).

    A user vocabulary says nothing about things and stuff; this is the default used to decide which
    classes get one panoptic segment per instance.
    """
    things: set[str] = set()
    for line in _read_lines("coco_panoptic"):
        match = re.match(r"^(\d+):(.*)$", line.strip())
        if match and 0 < int(match.group(1)) < _COCO_THING_MAX_ID and match.group(2) != "invalid_class_id":
            things.update(s.strip().lower() for s in match.group(2).split(","))
    return torch.tensor([any(s.lower() in things for s in syns) for syns in vocabulary.classes])
