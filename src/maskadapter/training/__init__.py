"""Training the Mask-Adapter: GT-mask warm-up (stage 1) and mixed-mask training (stage 2).

``TrainConfig`` / ``load_config`` / ``finetune_config`` (your own data) describe a run, ``Trainer`` runs it (resumable, DDP under torchrun);
``IoUMatcher`` / ``HungarianMatcher``, ``MaskAdapterLoss`` and ``build_optimizer`` are the pieces.
"""

from .config import TrainConfig, apply_overrides, config_from_dict, config_to_dict, load_config
from .fuse import export_state, fuse_checkpoints
from .losses import MaskAdapterLoss
from .matcher import HungarianMatcher, IoUMatcher, MatchResult
from .optim import WarmupLRSchedule, build_optimizer, build_param_groups, lr_factor
from .recipes import finetune_config
from .trainer import NonFiniteLossError, Trainer, TrainResult, build_training_model

__all__ = [
    "TrainConfig", "load_config", "apply_overrides", "config_from_dict", "config_to_dict",
    "Trainer", "TrainResult", "NonFiniteLossError", "build_training_model",
    "IoUMatcher", "HungarianMatcher", "MatchResult", "MaskAdapterLoss",
    "build_optimizer", "build_param_groups", "lr_factor", "WarmupLRSchedule",
    "fuse_checkpoints", "export_state", "finetune_config",
]
