"""Vocabularies: the classes to segment, each a tuple of synonyms (data only; no torch).

Inline syntax (``--vocab``, ``Vocabulary.parse``, the demo's text box)
    Classes are separated by commas, semicolons or new lines - all three mean the same thing, so
    ``"cat, sofa; dog"`` is three classes. Synonyms of one class are joined with ``|``:
    ``"sofa|couch, cat"`` is two classes, the first with two synonyms. Surrounding blanks are ignored;
    empty items (``"cat,,dog"``, a trailing comma) are skipped; a class given twice is an error.

Class files (``--vocab-file``, ``Vocabulary.from_file``, the benchmarks' ``*_with_prompt_eng.txt``)
    Exactly one class per line, so line k is class k and a line can never shift the classes after it.
    Inside a line, synonyms are separated by ``|`` or ``,``: ``rocket, spaceship`` and ``rocket|spaceship``
    are both ONE class with two synonyms. The official ``id:syn1,syn2,...`` lines keep working: lines with id
    0 or the name ``invalid_class_id`` are skipped unless ``keep_id0`` is set (Pascal VOC-21 keeps its
    background line). Blank lines and lines starting with ``#`` are skipped.

A class name (each synonym) has at most ``MAX_NAME_LENGTH`` (200) characters: longer text is a ValueError naming
the class, since every name is encoded, drawn and written once per use.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence, Union

__all__ = ["Vocabulary", "VocabularyLike", "INLINE_SYNTAX", "FILE_SYNTAX", "MAX_NAME_LENGTH"]

#: The longest class name (synonym) a vocabulary accepts, in characters.
MAX_NAME_LENGTH = 200

#: One-line summaries of the two syntaxes, shown by ``--help`` and the demo.
INLINE_SYNTAX = 'classes separated by "," ";" or new lines; synonyms of a class joined by "|", e.g. "cat, sofa|couch"'
FILE_SYNTAX = ('one class per line; synonyms inside a line separated by "|" or ",", e.g. "sofa, couch" is one '
               'class; official "id:name,synonym" lines work too')

_ID_LINE = re.compile(r"^(\d+)\s*:(.*)$")


@dataclass(frozen=True)
class Vocabulary:
    """An ordered list of classes, each a tuple of synonyms (the first is the display name)."""

    classes: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        if not self.classes:
            raise ValueError("vocabulary is empty: give at least one class name")
        for i, syns in enumerate(self.classes):
            if not syns or any(not s.strip() for s in syns):
                raise ValueError(f"vocabulary class {i} has an empty name: {syns!r}")
            long = next((s for s in syns if len(s) > MAX_NAME_LENGTH), None)
            if long is not None:
                raise ValueError(f"vocabulary class {i} {long[:40]!r}... has a name of {len(long)} characters; "
                                 f"class names have at most {MAX_NAME_LENGTH}")

    @classmethod
    def coerce(cls, vocabulary: "VocabularyLike") -> "Vocabulary":
        """A Vocabulary from itself, inline syntax (str) or a list of class names / synonym lists."""
        if isinstance(vocabulary, Vocabulary):
            return vocabulary
        if isinstance(vocabulary, str):
            return cls.parse(vocabulary)
        return cls.from_classes(vocabulary)

    @classmethod
    def parse(cls, text: str) -> "Vocabulary":
        """Parse inline syntax: classes split by ``,`` ``;`` or newline, synonyms joined by ``|``."""
        if not isinstance(text, str):
            raise TypeError(f"vocabulary text must be a str, got {type(text).__name__}")
        items = [item.strip() for item in re.split(r"[,;\n]", text)]
        classes = [tuple(s.strip() for s in item.split("|") if s.strip()) for item in items if item]
        return cls.from_classes([c for c in classes if c], allow_duplicates=False)

    @classmethod
    def from_classes(cls, classes: Iterable[Union[str, Sequence[str]]],
                     allow_duplicates: bool = False) -> "Vocabulary":
        """Build from a list whose items are a name (``"sofa|couch"`` allowed) or a list of synonyms."""
        out = []
        for item in classes:
            syns = item.split("|") if isinstance(item, str) else list(item)
            if not all(isinstance(s, str) for s in syns):
                raise TypeError(f"class names must be strings, got {item!r}")
            out.append(tuple(s.strip() for s in syns if s.strip()))
        vocab = cls(tuple(out))
        if not allow_duplicates:
            vocab.check_unique()
        return vocab

    @classmethod
    def from_file(cls, path: Union[str, os.PathLike], keep_id0: bool = False) -> "Vocabulary":
        """Read a class file: one class per line (see the module doc); errors name the file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"vocabulary file not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read vocabulary file {path}: {exc}") from exc
        try:
            return cls.from_lines(text.splitlines(), keep_id0=keep_id0)
        except ValueError as exc:
            raise ValueError(f"vocabulary file {path}: {exc}") from exc

    @classmethod
    def from_lines(cls, lines: Iterable[str], keep_id0: bool = False) -> "Vocabulary":
        """Parse class-file lines: one class per line, synonyms split on ``|`` or ``,``."""
        classes: list[tuple[str, ...]] = []
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            match = _ID_LINE.match(line)
            if match is not None:
                idx, line = int(match.group(1)), match.group(2)
                if (idx == 0 and not keep_id0) or line.strip() == "invalid_class_id":
                    continue
            syns = tuple(s.strip() for s in re.split(r"[|,]", line) if s.strip())
            if syns:
                classes.append(syns)
        if not classes:
            raise ValueError("no classes (one class per line expected)")
        return cls(tuple(classes))

    def check_unique(self) -> None:
        """ValueError if two classes share their display name (case-insensitive)."""
        seen: dict[str, int] = {}
        for i, syns in enumerate(self.classes):
            key = syns[0].lower()
            if key in seen:
                raise ValueError(f"class {syns[0]!r} appears twice in the vocabulary "
                                 f"(positions {seen[key]} and {i})")
            seen[key] = i

    def to_text(self) -> str:
        """The inline syntax of this vocabulary (``parse(v.to_text()) == v`` for names without , ; |)."""
        return ", ".join("|".join(synonyms) for synonyms in self.classes)

    @property
    def names(self) -> list[str]:
        """Display name of every class (its first synonym)."""
        return [syns[0] for syns in self.classes]

    @property
    def num_synonyms(self) -> list[int]:
        """Number of synonyms of every class (the official ``num_templates``)."""
        return [len(syns) for syns in self.classes]

    @property
    def synonyms(self) -> list[str]:
        """All synonyms, class by class (S entries)."""
        return [s for syns in self.classes for s in syns]

    def __len__(self) -> int:
        return len(self.classes)


VocabularyLike = Union[Vocabulary, str, Sequence[str]]
