"""Vocabularies, prompt templates, the cached CLIP text classifier and mask classification logits.

Vocabulary syntax (inline, e.g. ``--vocab``)
    Classes are separated by commas, semicolons or new lines - all three mean the same thing, so
    ``"cat, sofa; dog"`` is three classes. Synonyms of one class are joined with ``|``:
    ``"sofa|couch, cat"`` is two classes, the first with two synonyms. Surrounding blanks are ignored;
    empty items (``"cat,,dog"``, a trailing comma) are skipped; a class given twice is an error.

Class files (``--vocab-file``, the benchmarks' ``*_with_prompt_eng.txt``)
    One class per line, ``id:syn1,syn2,...`` (commas separate *synonyms* here, as in the official
    files). Lines with id 0 or the name ``invalid_class_id`` are skipped unless ``keep_id0`` is set
    (Pascal VOC-21 keeps its background line). Lines without ``id:`` are read as inline syntax.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional, Sequence, Union

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .clip_backbone import ClipBackbone

__all__ = [
    "VILD_TEMPLATES", "Vocabulary", "TextClassifier", "classification_logits", "append_void",
]

logger = logging.getLogger(__name__)

#: The 14 ViLD prompt templates, in the official order and punctuation (templates 2-5 have no period).
VILD_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)


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

    @classmethod
    def coerce(cls, vocabulary: Union["Vocabulary", str, Sequence[str]]) -> "Vocabulary":
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
            seen: dict[str, int] = {}
            for i, syns in enumerate(vocab.classes):
                key = syns[0].lower()
                if key in seen:
                    raise ValueError(f"class {syns[0]!r} appears twice in the vocabulary "
                                     f"(positions {seen[key]} and {i})")
                seen[key] = i
        return vocab

    @classmethod
    def from_file(cls, path: Union[str, os.PathLike], keep_id0: bool = False) -> "Vocabulary":
        """Read a class file (``id:syn1,syn2`` lines, see the module doc)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"vocabulary file not found: {path}")
        return cls.from_lines(path.read_text(encoding="utf-8").splitlines(), keep_id0=keep_id0)

    @classmethod
    def from_lines(cls, lines: Iterable[str], keep_id0: bool = False) -> "Vocabulary":
        """Parse class-file lines; ``id:`` lines split synonyms on commas (``', '`` counts as ``','``)."""
        classes: list[tuple[str, ...]] = []
        for line in lines:
            line = line.strip()
            if not line:
                continue
            match = re.match(r"^(\d+)\s*:(.*)$", line)
            if match is None:
                classes.extend(Vocabulary.parse(line).classes)
                continue
            idx, names = int(match.group(1)), match.group(2)
            if (idx == 0 and not keep_id0) or names.strip() == "invalid_class_id":
                continue
            syns = tuple(s.strip() for s in names.replace(", ", ",").split(",") if s.strip())
            classes.append(syns)
        if not classes:
            raise ValueError("vocabulary file has no classes")
        return cls(tuple(classes))

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


def append_void(text: torch.Tensor, void_weight: torch.Tensor) -> torch.Tensor:
    """Append the normalised void embedding ``void_weight`` [1, D] to ``text`` [S, D] -> [S+1, D]."""
    return torch.cat([text, F.normalize(void_weight.to(text.dtype), dim=-1)], dim=0)


def classification_logits(
    embeddings: torch.Tensor,
    text: torch.Tensor,
    logit_scale: Union[torch.Tensor, float],
    num_synonyms: Sequence[int],
) -> torch.Tensor:
    """Class logits [B, N, C(+1)] of mask ``embeddings`` [B, N, D] against ``text`` [S(+1), D] or [B, S(+1), D].

    ``logit_scale`` is in log space as CLIP stores it: the scale is ``min(exp(logit_scale), 100)``.
    Each class takes the max over its ``num_synonyms[c]`` columns. When ``text`` has one row more than
    the synonyms (the void embedding, last), the void logit is kept as the last column.
    """
    if embeddings.dim() != 3:
        raise ValueError(f"embeddings must have shape [B, N, D], got {list(embeddings.shape)}")
    if text.dim() not in (2, 3) or text.shape[-1] != embeddings.shape[-1]:
        raise ValueError(f"text must have shape [S, {embeddings.shape[-1]}] or [B, S, "
                         f"{embeddings.shape[-1]}], got {list(text.shape)}")
    if text.dim() == 3 and text.shape[0] != embeddings.shape[0]:
        raise ValueError(f"batch sizes differ: text has {text.shape[0]}, embeddings has {embeddings.shape[0]}")
    counts = [int(c) for c in num_synonyms]
    if not counts or min(counts) < 1:
        raise ValueError("num_synonyms must list at least one class, each with at least one synonym")
    S = sum(counts)
    if text.shape[-2] not in (S, S + 1):
        raise ValueError(f"text has {text.shape[-2]} rows but num_synonyms sums to {S} "
                         f"(expected {S} rows, or {S + 1} with the void embedding last)")
    scale = torch.as_tensor(logit_scale, dtype=embeddings.dtype, device=embeddings.device).exp().clamp(max=100)
    x = F.normalize(embeddings, dim=-1)
    text = text.to(x.dtype)
    logits = scale * (x @ text.transpose(-1, -2))  # [B, N, S(+1)]
    return _max_over_synonyms(logits, counts, has_void=text.shape[-2] == S + 1)


def _max_over_synonyms(logits: torch.Tensor, counts: list[int], has_void: bool) -> torch.Tensor:
    S = sum(counts)
    if max(counts) == 1:
        return logits
    # Gather every class's synonym columns into [C, max_syn], padding with a -inf column.
    padded = torch.cat([logits[..., :S], logits.new_full((*logits.shape[:-1], 1), float("-inf"))], dim=-1)
    index = torch.full((len(counts), max(counts)), S, dtype=torch.long)
    start = 0
    for c, n in enumerate(counts):
        index[c, :n] = torch.arange(start, start + n)
        start += n
    per_class = padded[..., index.to(logits.device)].amax(dim=-1)  # [B, N, C]
    return torch.cat([per_class, logits[..., S:]], dim=-1) if has_void else per_class


class TextClassifier:
    """CLIP text embeddings [S, D] of a vocabulary (one per synonym), cached per model and vocabulary.

    Each synonym is put in every template, encoded, L2-normalised, averaged over templates and
    normalised again (spec §2.4). Results are cached in memory and, when ``cache_dir`` is given, as
    safetensors files there (never anywhere else).
    """

    def __init__(
        self,
        backbone: "ClipBackbone",
        templates: Sequence[str] = VILD_TEMPLATES,
        cache_dir: Optional[Union[str, os.PathLike]] = None,
        batch_size: int = 128,
    ) -> None:
        if not templates or any("{}" not in t for t in templates):
            raise ValueError("templates must be a non-empty list of strings containing '{}'")
        self.backbone = backbone
        self.templates = tuple(templates)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.batch_size = batch_size
        self._memory: dict[tuple[str, str], torch.Tensor] = {}

    def __call__(self, vocabulary: Union[Vocabulary, str, Sequence[str]]) -> torch.Tensor:
        """Normalised text embeddings [S, D] of every synonym of ``vocabulary`` (void not included)."""
        vocab = Vocabulary.coerce(vocabulary)
        model_key = self.backbone.text_fingerprint()
        vocab_key = self._vocab_key(vocab)
        key = (model_key, vocab_key)
        if key in self._memory:
            return self._memory[key]
        emb = self._load_disk(model_key, vocab_key, vocab)
        if emb is None:
            emb = self.encode(vocab)
            self._save_disk(model_key, vocab_key, vocab, emb)
        self._memory[key] = emb
        return emb

    def encode(self, vocabulary: Vocabulary) -> torch.Tensor:
        """Encode without any cache: template-averaged normalised embeddings [S, D]."""
        prompts = [t.format(s) for s in vocabulary.synonyms for t in self.templates]
        chunks = []
        for start in range(0, len(prompts), self.batch_size):
            tokens = self.backbone.tokenize(prompts[start:start + self.batch_size])
            chunks.append(F.normalize(self.backbone.encode_text(tokens).float(), dim=-1))
        emb = torch.cat(chunks).reshape(len(vocabulary.synonyms), len(self.templates), -1)
        return F.normalize(emb.mean(dim=1), dim=-1)

    def _vocab_key(self, vocab: Vocabulary) -> str:
        payload = json.dumps([list(c) for c in vocab.classes] + [list(self.templates)], ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()[:24]

    def _cache_file(self, model_key: str, vocab_key: str) -> Optional[Path]:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"text-{self.backbone.config.name}-{model_key}-{vocab_key}.safetensors"

    def _load_disk(self, model_key: str, vocab_key: str, vocab: Vocabulary) -> Optional[torch.Tensor]:
        path = self._cache_file(model_key, vocab_key)
        if path is None or not path.is_file():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                if json.loads(f.metadata().get("synonyms", "null")) != vocab.synonyms:
                    return None
                emb = f.get_tensor("text")
        except Exception as exc:  # a damaged cache file is recomputed, not fatal
            logger.warning("ignoring unreadable text-embedding cache %s: %s", path, exc)
            return None
        logger.debug("text embeddings loaded from %s", path)
        return emb.to(self.backbone.logit_scale.device)

    def _save_disk(self, model_key: str, vocab_key: str, vocab: Vocabulary, emb: torch.Tensor) -> None:
        path = self._cache_file(model_key, vocab_key)
        if path is None:
            return
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file({"text": emb.detach().cpu().contiguous()}, str(tmp),
                  metadata={"synonyms": json.dumps(vocab.synonyms, ensure_ascii=False)})
        os.replace(tmp, path)
