"""FC-CLIP's mask generator (``sem_seg_head``): pixel decoder + masked-attention decoder with in-vocab logits.

MAFT+ uses the same head (100 queries instead of 250); the attribute names ``pixel_decoder`` and
``predictor`` equal the official ``sem_seg_head.*`` keys.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import nn

from .pixel_decoder import MSDeformAttnPixelDecoder, PixelDecoderConfig
from .source import MaskOutput, SourceInput
from .transformer_decoder import FCCLIPTransformerDecoder, TransformerDecoderConfig

__all__ = ["FCCLIPHeadConfig", "FCCLIPHead"]


@dataclass(frozen=True)
class FCCLIPHeadConfig:
    """Sizes of both halves of the head."""

    pixel_decoder: PixelDecoderConfig
    predictor: TransformerDecoderConfig


class FCCLIPHead(nn.Module):
    """Class-agnostic mask proposals with FC-CLIP's in-vocabulary classification: the decoder
    :class:`~maskadapter.modeling.generators.source.MaskSource` of FC-CLIP and MAFT+."""

    needs_rgb = False  #: works on the backbone features alone

    def __init__(self, config: FCCLIPHeadConfig) -> None:
        super().__init__()
        self.config = config
        pd = {f.name: getattr(config.pixel_decoder, f.name) for f in dataclasses.fields(config.pixel_decoder)}
        self.pixel_decoder = MSDeformAttnPixelDecoder(pd.pop("in_channels"), **pd)
        self.predictor = FCCLIPTransformerDecoder(config.predictor)

    @property
    def num_queries(self) -> int:
        """Q, the number of mask proposals."""
        return self.config.predictor.num_queries

    def forward(self, features: Mapping[str, torch.Tensor], text_classifier: torch.Tensor,
                num_synonyms: Sequence[int]) -> dict[str, torch.Tensor]:
        """``features`` res2..res5 + ``text_classifier`` [S+1, D] (void last) -> ``pred_logits`` [B, Q, C+1],
        ``pred_masks`` [B, Q, H/4, W/4] (logits)."""
        mask_features, multi_scale = self.pixel_decoder.forward_features(features)
        return self.predictor(multi_scale, mask_features, text_classifier, num_synonyms)

    def propose(self, inputs: SourceInput) -> MaskOutput:
        """Mask logits [B, Q, Hp/4, Wp/4] and in-vocabulary class logits [B, Q, C+1] of a prepared batch."""
        out = self(inputs.features, inputs.text, inputs.num_synonyms)
        return MaskOutput(out["pred_masks"], out["pred_logits"])
