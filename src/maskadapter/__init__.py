"""maskadapter: Mask-Adapter (CVPR 2025) for open-vocabulary segmentation in pure PyTorch.

    from maskadapter import Predictor
    p = Predictor.from_pretrained("fcclip-large")
    result = p.predict("photo.jpg", vocabulary="cat, sofa|couch, window")

The public names below are loaded on first use, so ``import maskadapter`` (and the command line's ``--help``)
imports neither torch nor the model code.
"""

from __future__ import annotations

from .lazy import lazy_attributes

__version__ = "0.1.0"

#: public name -> module (relative to this package) that defines it
_EXPORTS: dict[str, str] = {
    # inference
    "Predictor": "inference.predictor", "SegmentationResult": "inference.results",
    "MaskClassification": "inference.results", "InferenceOptions": "inference.options",
    "PreparedVocabulary": "inference.vocabularies", "PromptSegmenter": "inference.prompts",
    "GroundTruthResult": "inference.ground_truth", "classify_ground_truth": "inference.ground_truth",
    # presets, vocabularies, precision
    "PRESETS": "presets", "PresetConfig": "presets", "get_preset": "presets",
    "Vocabulary": "vocabulary", "builtin_vocabulary": "data.vocabularies", "resolve_precision": "precision",
    "label_map_to_masks": "data.transforms",
    # building blocks
    "ClipConfig": "config", "HeadConfig": "config", "ClipBackbone": "modeling.clip_backbone",
    "MaskAdapterHead": "modeling.head", "MaskAdapterModel": "modeling.model", "build_model": "modeling.build",
    "load_model": "modeling.load", "MaskSource": "modeling.generators.source",
    "activation_pool": "modeling.pooling", "mask_crop_embeddings": "modeling.pooling",
    "mask_embeddings": "modeling.pooling", "mask_pool": "modeling.pooling",
    "VILD_TEMPLATES": "modeling.text", "TextClassifier": "modeling.text", "append_void": "modeling.text",
    "classification_logits": "modeling.text",
    # checkpoints and errors
    "CheckpointError": "errors", "UnsafeCheckpointError": "errors", "WeightsUnavailableError": "errors",
    "convert_checkpoint": "checkpoint", "load_part": "checkpoint", "read_state_dict": "checkpoint",
    "save_safetensors": "checkpoint", "split_checkpoint": "checkpoint",
}

__all__ = ["__version__", *_EXPORTS]


__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS, (), globals())
