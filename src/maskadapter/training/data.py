"""Training data plumbing: dataset construction from a config, a resumable distributed sampler, loaders,
and per-image random generators keyed by (seed, iteration, dataset index).

Every random draw of a training step (GT sampling, the matcher's choices) comes from a generator keyed by
the *dataset index* of the image, never from a process-wide RNG: one process with batch B and two
processes with B/2 each see the same images with the same draws, and a resumed run repeats them exactly.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..data.synthetic import SyntheticShapes
from ..data.samples import SegmentationDataset
from ..data.train_datasets import CocoPanopticTrain, CocoStuffTrain, SegmentationTrain, collate_masks
from ..data.transforms import LargeScaleJitter
from ..data.user_data import is_user_data, load_user_dataset, split_dataset
from .config import DataSection, TrainConfig

__all__ = ["build_train_dataset", "own_data_split", "IndexedDataset", "ResumableDistributedSampler", "build_loader", "describe_dataset",
           "target_generator", "collate_indexed", "steps_per_epoch"]

logger = logging.getLogger(__name__)


def target_generator(seed: int, iteration: int, index: int) -> torch.Generator:
    """CPU generator for the training-target draws of dataset image ``index`` at ``iteration``."""
    digest = hashlib.blake2b(f"targets:{int(seed)}:{int(iteration)}:{int(index)}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2 ** 63 - 1))


def build_train_dataset(config: TrainConfig) -> Dataset:
    """The training dataset the config names (COCO-Panoptic / COCO-Stuff with LSJ, or synthetic shapes)."""
    data: DataSection = config.data
    seed = config.run.seed
    if data.dataset == "synthetic":
        return SyntheticShapes(num_classes=data.synthetic_num_classes, size=data.synthetic_size,
                               num_images=data.synthetic_num_images, seed=seed)
    if is_user_data(data.dataset):
        train, _ = own_data_split(config)
        scale = (1.0, 1.0) if data.augmentation == "resize" else (data.min_scale, data.max_scale)
        return SegmentationTrain(train, LargeScaleJitter(data.image_size, scale=scale, flip=data.flip), seed=seed)
    if data.root is None:
        raise ValueError(f"config key 'data.root' must name the dataset root for data.dataset={data.dataset}")

    if data.dataset == "coco_panoptic":
        transform = LargeScaleJitter(data.image_size, scale=(data.min_scale, data.max_scale))
        return CocoPanopticTrain(data.root, transform=transform, seed=seed)
    if data.dataset == "coco_stuff":
        # The MAFT+ semantic mapper resizes float label maps with F.interpolate: nearest="torch".
        transform = LargeScaleJitter(data.image_size, scale=(data.min_scale, data.max_scale), nearest="torch")
        return CocoStuffTrain(data.root, transform=transform, seed=seed)
    raise ValueError(f"unknown data.dataset {data.dataset!r}")  # pragma: no cover - the config checks it


def own_data_split(config: TrainConfig) -> tuple[SegmentationDataset, Optional[SegmentationDataset]]:
    """Your own data of ``data.dataset``: (training part, held-out part or None without ``data.val_fraction``)."""
    try:
        full = load_user_dataset(config.data.dataset)
    except (FileNotFoundError, ValueError) as exc:
        raise type(exc)(f"config key 'data.dataset': {exc}") from exc
    if not config.data.val_fraction:
        return full, None
    return split_dataset(full, config.data.val_fraction, config.run.seed)


def held_out_dataset(config: TrainConfig) -> Optional[SegmentationDataset]:
    """The held-out images of a run on your own data (``eval.dataset``: ``split`` or a data spelling), else None."""
    if config.eval.dataset == "split":
        return own_data_split(config)[1]
    if is_user_data(config.eval.dataset):
        return load_user_dataset(config.eval.dataset)
    return None


class IndexedDataset(Dataset):
    """Wraps a dataset so each sample also carries its dataset index (for the per-image generators)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.dataset[index]
        return {**sample, "index": int(index)}

    def set_epoch(self, epoch: int) -> None:
        """Forward the epoch to the wrapped dataset (its augmentation depends on it)."""
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)


def collate_indexed(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """:func:`maskadapter.data.train_datasets.collate_masks` plus ``indices`` (list of dataset indices) and, from a
    feature cache, ``features`` (key -> [B, ...])."""

    batch = collate_masks(samples)
    batch["indices"] = [int(s["index"]) for s in samples]
    if "features" in samples[0]:  # cached frozen features: [B, ...] per key
        batch["features"] = {k: torch.stack([s["features"][k] for s in samples]) for k in samples[0]["features"]}
    return batch


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` (shuffled per epoch from ``seed + epoch``, tail dropped) that can start mid-epoch."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.start = 0

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` indices of this rank in the current epoch (resuming)."""
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"start must lie in 0..{self.num_samples}, got {start}")
        self.start = start

    def __iter__(self):
        indices = list(super().__iter__())
        return iter(indices[self.start:])

    def __len__(self) -> int:
        return self.num_samples - self.start


def build_loader(dataset: IndexedDataset, sampler: ResumableDistributedSampler, batch_per_rank: int,
                 num_workers: int, pin_memory: bool = False) -> DataLoader:
    """A loader over ``sampler`` with ``batch_per_rank`` images per step (incomplete batches dropped)."""
    return DataLoader(dataset, batch_size=batch_per_rank, sampler=sampler, num_workers=num_workers,
                      collate_fn=collate_indexed, drop_last=True, pin_memory=pin_memory,
                      persistent_workers=False)


def steps_per_epoch(num_images: int, global_batch: int) -> int:
    """Whole global batches in one epoch (the tail is dropped); ValueError when there is none."""
    steps = num_images // global_batch
    if steps == 0:
        raise ValueError(f"the training set has {num_images} images, fewer than one global batch of "
                         f"{global_batch} (solver.batch_size)")
    return steps


def describe_dataset(dataset: Dataset) -> str:
    """Short description for logs."""
    name = type(dataset).__name__
    try:
        return f"{name} ({len(dataset)} images)"  # type: ignore[arg-type]
    except TypeError:  # pragma: no cover - iterable datasets
        return name
