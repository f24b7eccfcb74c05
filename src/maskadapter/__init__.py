"""maskadapter: Mask-Adapter (CVPR 2025) for open-vocabulary segmentation in pure PyTorch.

Heavy dependencies (open_clip) are imported only when a CLIP model is built.
"""

from .checkpoint import (CheckpointError, UnsafeCheckpointError, convert_checkpoint, load_part,
                         read_state_dict, save_safetensors, split_checkpoint)
from .config import ClipConfig, HeadConfig
from .ground_truth import GroundTruthResult, classify_ground_truth, label_map_to_masks
from .modeling.clip_backbone import ClipBackbone
from .modeling.head import MaskAdapterHead
from .modeling.model import MaskAdapterModel
from .modeling.pooling import activation_pool, mask_crop_embeddings, mask_embeddings, mask_pool
from .modeling.text import VILD_TEMPLATES, TextClassifier, Vocabulary, append_void, classification_logits
from .precision import resolve_precision

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "UnsafeCheckpointError", "convert_checkpoint", "load_part", "read_state_dict",
    "save_safetensors", "split_checkpoint", "ClipConfig", "HeadConfig", "GroundTruthResult",
    "classify_ground_truth", "label_map_to_masks", "ClipBackbone", "MaskAdapterHead", "MaskAdapterModel",
    "activation_pool", "mask_crop_embeddings", "mask_embeddings", "mask_pool", "VILD_TEMPLATES",
    "TextClassifier", "Vocabulary", "append_void", "classification_logits", "resolve_precision",
]
