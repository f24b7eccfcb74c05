"""Frozen features computed once: a memory-mapped cache of CLIP's dense maps (and stage 2's predicted masks).

CLIP is frozen in both stages and, in stage 2, so is the mask generator. With a fixed-size augmentation (the long
side resized to ``data.image_size``, padded; the flip stored as a second entry) every training image has exactly two
looks, so their features can be computed once and read back every epoch: later epochs run only the adapter.

Per entry (``2 * index + flipped``) the cache keeps ``clip_vis_dense`` [Cv, h, w] and ``clip_vis_dense_proj``
[D, h, w] (what the adapter, the pooling and MAFT+'s CDT read) and, in stage 2, the generator's ``pred_masks``
[Q, H/4, W/4] (they do not depend on the text classifier). Values are stored in float32 as computed, one ``.npy``
file per key under ``<output_dir>/feature_cache``; ``meta.json`` records what they were computed from, so a
resumed run reuses them and any change (weights, size, images) recomputes them.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from .. import distributed as dist_utils
from ..data.train_datasets import SegmentationTrain
from ..fileio import atomic_write_text
from ..inference.preprocess import normalize_and_pad
from ..modeling.model import MaskAdapterModel

__all__ = ["FeatureCache", "CachedFeatures", "cache_keys", "feature_shapes", "compute_features", "open_cache"]

logger = logging.getLogger(__name__)

CACHE_FOLDER = "feature_cache"
_FORMAT = 1


def cache_keys(stage: str) -> tuple[str, ...]:
    """What the cache keeps for a stage (``warmup`` or ``mixed``)."""
    dense = ("clip_vis_dense", "clip_vis_dense_proj")
    return dense + ("pred_masks",) if stage == "mixed" else dense


@torch.no_grad()
def compute_features(model: MaskAdapterModel, images: list[torch.Tensor], stage: str, text: torch.Tensor,
                     num_synonyms: list[int]) -> dict[str, torch.Tensor]:
    """The cached values of uint8 images [3, S, S] on the model's device: ``cache_keys(stage)`` -> [B, ...] fp32."""
    batch, _ = normalize_and_pad(images)
    feats = model.dense_features(batch)
    if stage == "mixed":
        feats["pred_masks"] = model.sem_seg_head(feats, model.text_with_void(text), num_synonyms)["pred_masks"]
    return {k: feats[k].float() for k in cache_keys(stage)}


def feature_shapes(model: MaskAdapterModel, image_size: int, stage: str, text: torch.Tensor,
                   num_synonyms: list[int]) -> dict[str, tuple[int, ...]]:
    """Per-entry shape of each cached tensor (from one forward of a blank image)."""
    device = next(model.parameters()).device
    blank = torch.zeros((3, image_size, image_size), dtype=torch.uint8, device=device)
    return {k: tuple(v.shape[1:]) for k, v in compute_features(model, [blank], stage, text, num_synonyms).items()}


class FeatureCache:
    """Memory-mapped float32 arrays [entries, ...] per key under ``folder``; :meth:`read` gives one entry."""

    def __init__(self, folder: Path, shapes: dict[str, tuple[int, ...]], entries: int) -> None:
        self.folder, self.shapes, self.entries = Path(folder), dict(shapes), int(entries)
        self._arrays: dict[str, np.ndarray] = {}

    @property
    def entry_bytes(self) -> int:
        """Bytes of one entry over all keys."""
        return sum(4 * int(np.prod(s)) for s in self.shapes.values())

    @property
    def total_bytes(self) -> int:
        """Bytes of the whole cache."""
        return self.entry_bytes * self.entries

    def describe(self) -> str:
        """``1.23 GB (128 entries x 9.6 MB)``."""
        return f"{self.total_bytes / 1e9:.2f} GB ({self.entries} entries x {self.entry_bytes / 1e6:.1f} MB)"

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.npy"

    def _array(self, key: str, mode: str) -> np.ndarray:
        if mode == "w+":
            return np.lib.format.open_memmap(self._path(key), mode="w+", dtype=np.float32,
                                             shape=(self.entries, *self.shapes[key]))
        return np.load(self._path(key), mmap_mode=mode)

    def read(self, entry: int) -> dict[str, torch.Tensor]:
        """Entry ``entry``: key -> float32 tensor (a copy; the file stays mapped, not loaded)."""
        if not self._arrays:  # opened lazily, so DataLoader workers map the files themselves
            self._arrays = {k: self._array(k, "r") for k in self.shapes}
        return {k: torch.from_numpy(np.array(a[entry])) for k, a in self._arrays.items()}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": {}}

    # ------------------------------------------------------------------ building
    def check_limit(self, limit_gb: float) -> None:
        """ValueError when the cache would exceed ``limit_gb`` or the free disk space of its folder."""
        advice = "lower data.image_size, train on fewer images, or raise data.cache_limit_gb (--cache-limit-gb)"
        if self.total_bytes > limit_gb * 1e9:
            raise ValueError(f"the feature cache would take {self.describe()} in {self.folder}, above the limit of "
                             f"{limit_gb:g} GB: {advice}")
        probe = self.folder if self.folder.exists() else self.folder.parent
        probe.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(probe).free
        if self.total_bytes > free:
            raise ValueError(f"the feature cache would take {self.describe()} but {probe} has only "
                             f"{free / 1e9:.2f} GB free: {advice}")

    def matches(self, meta: dict[str, Any]) -> bool:
        """True when a complete cache computed from ``meta`` is already in the folder."""
        try:
            old = json.loads((self.folder / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return old == {**meta, "complete": True} and all(self._path(k).is_file() for k in self.shapes)

    def build(self, model: MaskAdapterModel, dataset: SegmentationTrain, stage: str, text: torch.Tensor,
              num_synonyms: list[int], meta: dict[str, Any], rank: int = 0, world: int = 1, batch_size: int = 4,
              progress: bool = True) -> None:
        """Compute every entry (process ``rank`` of ``world`` takes its share) and mark the cache complete.

        The arrays are filled in place; only the atomic ``meta.json`` written last makes them count, so an
        interrupted build is recomputed, never read."""
        if rank == 0:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / "meta.json").unlink(missing_ok=True)
            for key in self.shapes:
                self._array(key, "w+").flush()  # creates the file at its full size
        dist_utils.barrier()
        arrays = {k: self._array(k, "r+") for k in self.shapes}
        mine = dist_utils.shard(range(self.entries), rank, world)
        device = next(model.parameters()).device
        bar = tqdm(total=len(mine), desc=f"feature cache {self.total_bytes / 1e9:.2f} GB", unit="img",
                   disable=not progress, leave=False)
        was_training = model.training
        model.eval()
        try:
            for start in range(0, len(mine), batch_size):
                chunk = mine[start:start + batch_size]
                images = [dataset.look(e // 2, bool(e % 2))["image"].to(device) for e in chunk]
                values = compute_features(model, images, stage, text, num_synonyms)
                for key, value in values.items():
                    arrays[key][chunk] = value.cpu().numpy()
                bar.update(len(chunk))
        finally:
            bar.close()
            model.train(was_training)
        for array in arrays.values():
            array.flush()
        del arrays
        dist_utils.barrier()
        if rank == 0:
            atomic_write_text(self.folder / "meta.json", json.dumps({**meta, "complete": True}, sort_keys=True))
        dist_utils.barrier()


class CachedFeatures(Dataset):
    """A :class:`SegmentationTrain` whose samples also carry their cached ``features`` (the look of the epoch)."""

    def __init__(self, dataset: SegmentationTrain, cache: FeatureCache) -> None:
        self.dataset, self.cache = dataset, cache
        self.vocabulary = dataset.vocabulary

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (its flips)."""
        self.dataset.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        flip = self.dataset.flip_of(index)
        sample = self.dataset.look(index, flip)
        return {**sample, "features": self.cache.read(2 * int(index) + int(flip))}


def open_cache(model: MaskAdapterModel, dataset: SegmentationTrain, output_dir: Path, stage: str, image_size: int,
               text: torch.Tensor, num_synonyms: list[int], limit_gb: float, progress: bool, rank: int = 0,
               world: int = 1, extra: Optional[dict[str, Any]] = None) -> FeatureCache:
    """The feature cache of a run: reused when complete and computed from the same inputs, else (re)built."""
    shapes = feature_shapes(model, image_size, stage, text, num_synonyms)
    cache = FeatureCache(Path(output_dir) / CACHE_FOLDER, shapes, 2 * len(dataset))
    meta = {"format": _FORMAT, "stage": stage, "image_size": image_size, "weights": model.weights_fingerprint(),
            "images": [s.image_id for s in dataset.source.samples], "shapes": {k: list(v) for k, v in shapes.items()},
            **(extra or {})}
    if dist_utils.broadcast_object(cache.matches(meta)):  # one decision for every process
        logger.info("feature cache %s reused: %s", cache.folder, cache.describe())
        return cache
    cache.check_limit(limit_gb)
    logger.info("feature cache %s: computing %s", cache.folder, cache.describe())
    cache.build(model, dataset, stage, text, num_synonyms, meta, rank, world, progress=progress)
    return cache
