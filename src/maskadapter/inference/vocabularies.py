"""A vocabulary made ready for one model: names, synonyms, text embeddings, thing flags and the seen mask.

:class:`PreparedVocabulary` is built once per vocabulary and model (:meth:`Predictor.prepare_vocabulary`) and
accepted wherever a vocabulary is (``predict``, ``predict_batch``, ``classify_masks``, the batch runner, the
demo), so a long run coerces the vocabulary, encodes its text and decides its things once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ..data.vocabularies import coco_thing_mask
from ..modeling.text import TextClassifier
from ..vocabulary import Vocabulary, VocabularyLike
from .postprocess import category_overlap

__all__ = ["PreparedVocabulary", "Things", "things_mask", "things_key"]

logger = logging.getLogger(__name__)

Things = Optional[Union[Sequence[str], Sequence[bool], torch.Tensor]]


@dataclass(frozen=True, eq=False)
class PreparedVocabulary:
    """A vocabulary with everything a model needs from it, computed once."""

    vocabulary: Vocabulary
    text: torch.Tensor  #: [S, D] normalised synonym embeddings (void not included), on the model's device
    is_thing: torch.Tensor  #: bool [C]: classes that get one panoptic segment per instance
    seen: torch.Tensor  #: bool [C] on the model's device: classes sharing a synonym with the training vocabulary
    model_id: int  #: ``id`` of the model whose text tower made ``text`` (a vocabulary fits one model)

    @classmethod
    def build(cls, vocabulary: VocabularyLike, text_classifier: TextClassifier, train_vocabulary: Vocabulary,
              device: torch.device, model_id: int, things: Things = None) -> "PreparedVocabulary":
        """Coerce ``vocabulary``, encode its synonyms [S, D], decide its things and its seen classes."""
        vocab = Vocabulary.coerce(vocabulary)
        is_thing = things_mask(vocab, things)
        text = text_classifier(vocab).to(device)
        seen = category_overlap(vocab, train_vocabulary).to(device)
        logger.debug("prepared a vocabulary of %d classes (%d synonyms)", len(vocab), len(vocab.synonyms))
        return cls(vocab, text, is_thing, seen, model_id)

    @property
    def names(self) -> list[str]:
        """Display name of each class."""
        return self.vocabulary.names

    @property
    def synonyms(self) -> list[str]:
        """All synonyms, class by class (S entries)."""
        return self.vocabulary.synonyms

    @property
    def num_synonyms(self) -> list[int]:
        """Synonyms per class (C entries summing to S)."""
        return self.vocabulary.num_synonyms

    def __len__(self) -> int:
        return len(self.vocabulary)


def things_mask(vocab: Vocabulary, things: Things = None) -> torch.Tensor:
    """Bool [C]: which classes are things, from ``things`` (names or flags) or by default the COCO things."""
    if things is None:
        return coco_thing_mask(vocab)
    if isinstance(things, torch.Tensor) or (len(things) and isinstance(things[0], (bool, np.bool_))):
        flags = torch.as_tensor(things, dtype=torch.bool)
        if flags.shape != (len(vocab),):
            raise ValueError(f"things must have one flag per class ({len(vocab)}), got {tuple(flags.shape)}")
        return flags
    names = {n.lower() for n in things}
    unknown = names - {n.lower() for n in vocab.names}
    if unknown:
        raise ValueError(f"things names classes not in the vocabulary: {sorted(unknown)} "
                         f"(classes: {', '.join(vocab.names)})")
    return torch.tensor([n.lower() in names for n in vocab.names])


def things_key(things: Things) -> Optional[tuple]:
    """A hashable form of ``things`` (to reuse a preparation), None for the default."""
    if things is None:
        return None
    if isinstance(things, torch.Tensor):
        return ("flags", tuple(bool(v) for v in things.reshape(-1).tolist()))
    return ("values", tuple(bool(v) if isinstance(v, (bool, np.bool_)) else str(v) for v in things))
