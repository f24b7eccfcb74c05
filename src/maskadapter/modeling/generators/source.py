"""Where a predictor's masks come from: the :class:`MaskSource` protocol.

A mask source gets a batch of prepared images with their backbone features (:class:`SourceInput`) and returns
mask logits, plus in-vocabulary class logits when it is a decoder (:class:`MaskOutput`). Decoder sources (the
FC-CLIP / MAFT+ head, ``FCCLIPHead``) give low-resolution logits aligned with the padded network input and class
logits, which the predictor ensembles with the adapter's; proposal sources (SAM / SAM 2 automatic masks, any
:class:`MaskProposer` wrapped in :class:`ProposalSource`) give binary masks at each image's full size, which the
adapter alone classifies. A new source is one class with ``needs_rgb`` and ``propose``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Protocol, Sequence, Union, runtime_checkable

import numpy as np
import torch

__all__ = ["SourceInput", "MaskOutput", "MaskSource", "MaskProposer", "PromptPredictor", "ProposalSource"]


@dataclass(frozen=True)
class SourceInput:
    """A batch of B prepared images and their features, as a mask source sees it."""

    images: torch.Tensor  #: [B, 3, Hp, Wp] normalised network input, zero-padded bottom/right
    sizes: Sequence[tuple[int, int]]  #: (h, w) of each resized image inside the padding
    input_sizes: Sequence[tuple[int, int]]  #: (H, W) of each input image
    features: Mapping[str, torch.Tensor]  #: the model's ``dense_features(images)`` (res2..res5, dense maps)
    text: torch.Tensor  #: [S+1, D] normalised synonym embeddings, void last
    num_synonyms: Sequence[int]  #: synonyms per class (C entries summing to S)
    rgb: Sequence[Optional[torch.Tensor]] = ()  #: uint8 [3, H, W] per image, for sources with ``needs_rgb``


@dataclass(frozen=True)
class MaskOutput:
    """What a mask source returns for a batch.

    Decoder sources: ``mask_logits`` [B, Q, h, w] aligned with the padded input (any h, w: resized to it) and
    ``class_logits`` [B, Q, C+1] (void last). Proposal sources: ``mask_logits`` a list of B tensors [N_i, H, W]
    at each input image's size (bool, or logits: a pixel is in the mask where the logit is > 0), no class
    logits, and optionally ``scores``: B tensors [N_i] of mask quality (instance scores are multiplied by it).
    """

    mask_logits: Union[torch.Tensor, Sequence[torch.Tensor]]
    class_logits: Optional[torch.Tensor] = None
    scores: Optional[Sequence[torch.Tensor]] = None


@runtime_checkable
class MaskSource(Protocol):
    """Anything with ``needs_rgb`` (keep the decoded full-resolution image) and ``propose(SourceInput) ->
    MaskOutput``. Optionally ``describe() -> dict``: the settings that change its masks, which resumable batch
    runs fingerprint (without it, the source's plain attributes are taken)."""

    needs_rgb: bool

    def propose(self, inputs: SourceInput) -> MaskOutput:
        ...


class MaskProposer(Protocol):
    """Anything that proposes binary masks: ``(image [H, W, 3] uint8) -> masks [N, H, W] bool, scores [N]``."""

    def __call__(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        ...


class PromptPredictor(Protocol):
    """Anything that segments prompts on one image at a time, like SAM's ``SamPredictor``.

    ``set_image(image [H, W, 3] uint8)`` prepares the image (returns whether work was done), then
    ``predict(point_coords [N, 2] xy pixels | None, point_labels [N] 1 = positive / 0 = negative | None,
    box [4] x0 y0 x1 y1 pixels | None, multimask_output) -> masks [K, H, W] bool, predicted IoU scores [K]``.
    """

    def set_image(self, image: np.ndarray) -> bool:
        ...

    def predict(self, point_coords: Optional[np.ndarray] = None, point_labels: Optional[np.ndarray] = None,
                box: Optional[np.ndarray] = None, multimask_output: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor]:
        ...


class ProposalSource:
    """A :class:`MaskSource` around a :class:`MaskProposer` (one full-resolution image at a time)."""

    needs_rgb = True

    def __init__(self, proposer: MaskProposer) -> None:
        self.proposer = proposer

    def propose(self, inputs: SourceInput) -> MaskOutput:
        """Each image's proposals: masks [N_i, H, W] bool and their quality [N_i]."""
        masks, scores = [], []
        # the proposer keeps its own precision: the predictor's autocast is for the backbone, decoder and adapter
        with torch.autocast(inputs.images.device.type, enabled=False):
            for rgb in inputs.rgb:
                if rgb is None:
                    raise ValueError("a proposal source needs the decoded image (PreparedImage.rgb)")
                m, s = self.proposer(rgb.permute(1, 2, 0).cpu().numpy())
                masks.append(m)
                scores.append(s)
        return MaskOutput(masks, scores=scores)
