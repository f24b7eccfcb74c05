"""Optimizer parameter groups (detectron2's rules, as the official training builds them) and the warm-up multi-step / poly LR schedules.

Weight-decay rules, per trainable parameter, by the type of the module that owns it:

* ``torch.nn`` norm layers (LayerNorm, GroupNorm, BatchNorm*, InstanceNorm*, LocalResponseNorm) get
  ``weight_decay_norm`` (0); ``nn.Embedding`` (the void embedding) gets ``weight_decay_embed`` (0);
* everything else gets ``weight_decay``, *including* the adapter's own ``LayerNorm2d`` /
  ``ChannelsLastLayerNorm`` (not ``nn.LayerNorm`` subclasses) and the blocks' ``gamma`` - the official quirk;
* a parameter under a module whose name contains ``backbone`` has ``lr x backbone_multiplier``.
"""

from __future__ import annotations

import bisect
import math
from typing import Any, Literal, Sequence

import torch
from torch import nn

__all__ = ["NORM_MODULE_TYPES", "build_param_groups", "build_optimizer", "lr_factor", "WarmupLRSchedule"]

NORM_MODULE_TYPES: tuple[type, ...] = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.LocalResponseNorm,
)


def build_param_groups(model: nn.Module, lr: float, weight_decay: float, weight_decay_norm: float = 0.0,
                       weight_decay_embed: float = 0.0, backbone_multiplier: float = 0.1) -> list[dict[str, Any]]:
    """Parameter groups of ``model``'s trainable parameters, one per distinct (lr, weight decay).

    Each group lists its parameter names under ``"names"`` (AdamW keeps extra keys), so the rules can be
    inspected; merging parameters with equal hyper-parameters changes nothing in the update.
    """
    groups: dict[tuple[float, float], dict[str, Any]] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            p_lr, p_wd = lr, weight_decay
            if "backbone" in module_name:
                p_lr = lr * backbone_multiplier
            if "relative_position_bias_table" in param_name or "absolute_pos_embed" in param_name:
                p_wd = 0.0
            if isinstance(module, NORM_MODULE_TYPES):
                p_wd = weight_decay_norm
            if isinstance(module, nn.Embedding):
                p_wd = weight_decay_embed
            group = groups.setdefault((p_lr, p_wd), {"params": [], "names": [], "lr": p_lr, "weight_decay": p_wd})
            group["params"].append(param)
            group["names"].append(f"{module_name}.{param_name}" if module_name else param_name)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return list(groups.values())


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, weight_decay_norm: float = 0.0,
                    weight_decay_embed: float = 0.0, backbone_multiplier: float = 0.1,
                    betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW over :func:`build_param_groups` (official: lr 1e-4, default betas and eps)."""
    groups = build_param_groups(model, lr, weight_decay, weight_decay_norm, weight_decay_embed, backbone_multiplier)
    # foreach=False: the per-tensor loop gives bit-identical updates however parameters are grouped.
    return torch.optim.AdamW(groups, lr=lr, betas=(float(betas[0]), float(betas[1])), eps=eps, foreach=False)


def lr_factor(iteration: int, schedule: Literal["multistep", "poly"], max_iter: int, steps: Sequence[int] = (),
              gamma: float = 0.1, warmup_iters: int = 0, warmup_factor: float = 1.0, power: float = 0.9,
              constant_ending: float = 0.0) -> float:
    """Multiplier of the base lr at ``iteration`` (0-based), as detectron2's WarmupMultiStepLR / WarmupPolyLR.

    Linear warm-up: ``warmup_factor * (1 - a) + a`` with ``a = iteration / warmup_iters`` before
    ``warmup_iters``. Multi-step: ``gamma ** (number of steps <= iteration)``. Poly:
    ``(1 - iteration / max_iter) ** power``, or ``constant_ending`` once it falls below it (after warm-up).
    """
    warm = 1.0
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        warm = warmup_factor * (1 - alpha) + alpha
    if schedule == "multistep":
        return warm * gamma ** bisect.bisect_right(list(steps), iteration)
    if schedule == "poly":
        poly = math.pow(max(0.0, 1.0 - iteration / max_iter), power)
        if constant_ending > 0 and warm == 1.0 and poly < constant_ending:
            return constant_ending
        return warm * poly
    raise ValueError(f"schedule must be 'multistep' or 'poly', got {schedule!r}")


class WarmupLRSchedule:
    """Sets every group's lr to ``base_lr x lr_factor(iteration)``; its state is the next iteration."""

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: Literal["multistep", "poly"], max_iter: int,
                 steps: Sequence[int] = (), gamma: float = 0.1, warmup_iters: int = 0, warmup_factor: float = 1.0,
                 power: float = 0.9, constant_ending: float = 0.0) -> None:
        if schedule not in ("multistep", "poly"):
            raise ValueError(f"schedule must be 'multistep' or 'poly', got {schedule!r}")
        self.optimizer = optimizer
        self.kwargs = dict(schedule=schedule, max_iter=max_iter, steps=list(steps), gamma=gamma,
                           warmup_iters=warmup_iters, warmup_factor=warmup_factor, power=power,
                           constant_ending=constant_ending)
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.iteration = 0
        self.apply(0)

    def factor(self, iteration: int) -> float:
        """The lr multiplier at ``iteration``."""
        return lr_factor(iteration, **self.kwargs)

    def apply(self, iteration: int) -> None:
        """Set the learning rates for ``iteration``."""
        f = self.factor(iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * f
        self.iteration = iteration

    def step(self) -> None:
        """Advance one iteration (call after ``optimizer.step()``)."""
        self.apply(self.iteration + 1)

    def get_last_lr(self) -> list[float]:
        """Current lr of every group."""
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """Iteration and schedule parameters."""
        return {"iteration": self.iteration, **self.kwargs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the iteration (the schedule parameters come from the config)."""
        self.apply(int(state["iteration"]))
