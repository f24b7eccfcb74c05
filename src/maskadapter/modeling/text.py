"""Prompt templates, the cached CLIP text classifier and mask classification logits.

The vocabulary syntax lives in :mod:`maskadapter.vocabulary`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from ..constants import user_cache_dir
from ..fileio import atomic_path
from ..vocabulary import Vocabulary, VocabularyLike

if TYPE_CHECKING:
    from .clip_backbone import ClipBackbone

__all__ = ["VILD_TEMPLATES", "TextClassifier", "classification_logits", "append_void", "resolve_text_cache_dir",
           "TEXT_CACHE_ENV"]

logger = logging.getLogger(__name__)

#: Environment variable overriding the folder of the persistent text-embedding cache.
TEXT_CACHE_ENV = "MASKADAPTER_TEXT_CACHE"
_CACHE_FORMAT = 1

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


def resolve_text_cache_dir(cache_dir: Union[str, os.PathLike, None, bool] = None) -> Optional[Path]:
    """Where text embeddings persist: ``cache_dir`` itself, or for None / True the default
    (``$MASKADAPTER_TEXT_CACHE``, else the user cache's ``text`` folder), or None (memory only) for False."""
    if cache_dir is False:
        return None
    if cache_dir is None or cache_dir is True:
        env = os.environ.get(TEXT_CACHE_ENV)
        return Path(env).expanduser() if env else user_cache_dir("text")
    return Path(cache_dir).expanduser()


class TextClassifier:
    """CLIP text embeddings [S, D] of a vocabulary (one per synonym), cached per model and vocabulary.

    Each synonym is put in every template, encoded, L2-normalised, averaged over templates and normalised
    again (the official recipe). Results are cached in memory and, when ``cache_dir`` is given, as
    safetensors files there, keyed by a fingerprint of the text tower's weights, the templates and the exact
    vocabulary. A cache file that cannot be read or does not match is ignored with a warning and rewritten.
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
        #: prompts encoded by this classifier so far (0 when every vocabulary came from a cache)
        self.encoded_prompts = 0

    def __call__(self, vocabulary: VocabularyLike) -> torch.Tensor:
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
        self.encoded_prompts += len(prompts)
        emb = torch.cat(chunks).reshape(len(vocabulary.synonyms), len(self.templates), -1)
        return F.normalize(emb.mean(dim=1), dim=-1)

    def _vocab_key(self, vocab: Vocabulary) -> str:
        payload = json.dumps([list(c) for c in vocab.classes] + [list(self.templates)], ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()[:24]

    def _cache_file(self, model_key: str, vocab_key: str) -> Optional[Path]:
        if self.cache_dir is None:
            return None
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", self.backbone.config.name)
        return self.cache_dir / f"text-{name}-{model_key}-{vocab_key}.safetensors"

    def _metadata(self, model_key: str, vocab: Vocabulary) -> dict[str, str]:
        return {"format": str(_CACHE_FORMAT), "model": model_key, "templates": json.dumps(list(self.templates)),
                "synonyms": json.dumps(vocab.synonyms, ensure_ascii=False)}

    def _load_disk(self, model_key: str, vocab_key: str, vocab: Vocabulary) -> Optional[torch.Tensor]:
        path = self._cache_file(model_key, vocab_key)
        if path is None or not path.is_file():
            return None

        try:
            with safe_open(str(path), framework="pt") as f:
                if f.metadata() != self._metadata(model_key, vocab) or list(f.keys()) != ["text"]:
                    raise ValueError("it was written for another model, vocabulary or template set")
                emb = f.get_tensor("text")
            expected = (len(vocab.synonyms), self.backbone.embed_dim)
            if tuple(emb.shape) != expected or emb.dtype != torch.float32 or not bool(torch.isfinite(emb).all()):
                raise ValueError(f"it holds {emb.dtype} {list(emb.shape)}, expected finite float32 {list(expected)}")
        except Exception as exc:  # never trusted, never fatal: recomputed and rewritten
            logger.warning("ignoring text-embedding cache file %s (%s); recomputing it", path, exc)
            return None
        logger.debug("text embeddings loaded from %s", path)
        return emb.to(self.backbone.logit_scale.device)

    def _save_disk(self, model_key: str, vocab_key: str, vocab: Vocabulary, emb: torch.Tensor) -> None:
        path = self._cache_file(model_key, vocab_key)
        if path is None:
            return

        try:
            with atomic_path(path) as tmp:
                save_file({"text": emb.detach().float().cpu().contiguous()}, str(tmp),
                          metadata=self._metadata(model_key, vocab))
        except OSError as exc:  # a read-only or full cache folder costs time, not the result
            logger.warning("could not write the text-embedding cache %s: %s", path, exc)
