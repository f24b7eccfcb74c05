"""Training datasets (COCO-Panoptic, COCO-Stuff), GT-mask sampling and batch collation, as the official training mappers.

A training sample is ``{"image": uint8 [3, H, W], "masks": bool [N, H, W], "labels": int64 [N],
"file_name": str}``: contiguous class ids of ``dataset.vocabulary``, no crowd regions, no empty masks.

Determinism: sample ``i`` of epoch ``e`` is a pure function of ``(seed, e, i)``. Its augmentation draws from
:func:`sample_generator`, never from the global RNG, so a resumed run sees the same data. Call
``set_epoch(e)`` before each epoch; with DataLoader workers use ``persistent_workers=False`` (or rebuild the
loader), because persistent workers keep their own copy of the dataset and miss the new epoch.

Images without a usable mask are *returned* with N = 0 (never skipped, so indices stay stable and the
training loop decides): the official stage-1 code trains on them with an all-padding target (zero loss).
``empty_indices`` lists them: known at construction for COCO-Panoptic (no non-crowd segment in the JSON),
after :meth:`CocoStuffTrain.scan_empty` for COCO-Stuff (it has to read every label PNG). Cropping can also
leave a sample with N = 0; those are not listed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from ..images import to_rgb_tensor
from ..vocabulary import Vocabulary
from .samples import DatasetError, Sample, SegmentationDataset
from .transforms import label_map_to_masks
from .vocabularies import _read_lines, builtin_vocabulary

__all__ = ["sample_generator", "CocoPanopticTrain", "CocoStuffTrain", "SegmentationTrain", "sample_gt_masks",
           "collate_masks", "Transform", "gt_masks_of"]

logger = logging.getLogger(__name__)

#: A training transform: ``transform(sample, generator) -> sample`` (e.g. ``LargeScaleJitter``).
Transform = Callable[[dict[str, Any], torch.Generator], dict[str, Any]]

COCO_STUFF_NUM_CLASSES = 171
COCO_STUFF_IGNORE = 255


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from a hash of ``(seed, epoch, index)`` (nearby triples do not collide)."""
    digest = hashlib.blake2b(f"{int(seed)}:{int(epoch)}:{int(index)}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2 ** 63 - 1))


def _require_dir(path: Path, what: str, root: Path) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what} folder not found: expected {path} (root={root} must be the folder that "
                                f"contains coco/, e.g. $DETECTRON2_DATASETS)")
    return path


def _category_ids(vocabulary_name: str) -> list[int]:
    """Dataset category id of every class of a built-in vocabulary, in vocabulary order (the ``id:`` prefixes)."""
    ids = []
    for line in _read_lines(vocabulary_name):
        match = re.match(r"^(\d+)\s*:(.*)$", line.strip())
        if match and int(match.group(1)) != 0 and match.group(2).strip() != "invalid_class_id":
            ids.append(int(match.group(1)))
    return ids


class _TrainDataset(Dataset):
    """Shared epoch / seed / transform handling of the training datasets."""

    vocabulary: Vocabulary

    def __init__(self, transform: Optional[Transform], seed: int) -> None:
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable(sample, generator), got {type(transform).__name__}")
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0
        self.empty_indices: Optional[list[int]] = None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentation ``__getitem__`` reproduces."""
        if int(epoch) < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def generator(self, index: int) -> torch.Generator:
        """The augmentation generator of sample ``index`` in the current epoch."""
        return sample_generator(self.seed, self.epoch, index)

    def _finish(self, sample: dict[str, Any], index: int) -> dict[str, Any]:
        if self.transform is not None:
            sample = self.transform(sample, self.generator(index))
        keep = sample["masks"].flatten(1).any(dim=1)
        if not bool(keep.all()):
            sample = {**sample, "masks": sample["masks"][keep], "labels": sample["labels"][keep]}
        return sample

    def _check_index(self, index: int) -> int:
        n = len(self)
        if not -n <= int(index) < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} images")
        return int(index) % n


class CocoPanopticTrain(_TrainDataset):
    """COCO-Panoptic training set: one mask per non-crowd segment, 133 classes (``coco_panoptic`` vocabulary).

    Layout below ``root``: ``coco/{split}/*.jpg``, ``coco/panoptic_{split}/*.png`` (segment id
    ``R + 256 G + 65536 B``) and ``coco/annotations/panoptic_{split}.json``. Images are listed in the order of
    the JSON ``annotations``, each image named after its PNG with ``.jpg`` (as detectron2 does).
    """

    def __init__(self, root: Union[str, os.PathLike], split: str = "train2017",
                 transform: Optional[Transform] = None, seed: int = 0) -> None:
        super().__init__(transform, seed)
        root = Path(root)
        coco = root / "coco"
        self.image_dir = _require_dir(coco / split, "COCO image", root)
        self.panoptic_dir = _require_dir(coco / f"panoptic_{split}", "COCO panoptic PNG", root)
        json_path = coco / "annotations" / f"panoptic_{split}.json"
        if not json_path.is_file():
            raise FileNotFoundError(f"COCO panoptic annotation file not found: expected {json_path}")
        self.vocabulary = builtin_vocabulary("coco_panoptic")
        contiguous = {cid: i for i, cid in enumerate(_category_ids("coco_panoptic"))}
        if len(contiguous) != len(self.vocabulary):
            raise RuntimeError("coco_panoptic class file and vocabulary disagree")  # package data broken

        with open(json_path, encoding="utf-8") as f:
            info = json.load(f)
        if not isinstance(info, dict) or "annotations" not in info:
            raise ValueError(f"{json_path} is not a COCO panoptic annotation file (no 'annotations')")
        self._records: list[tuple[str, str, np.ndarray, np.ndarray]] = []
        empty = []
        for ann in info["annotations"]:
            seg_ids, labels = [], []
            for seg in ann.get("segments_info", []):
                if seg.get("iscrowd", 0):
                    continue
                cid = int(seg["category_id"])
                if cid not in contiguous:
                    raise ValueError(f"{json_path}: segment {seg.get('id')} of {ann['file_name']} has category id "
                                     f"{cid}, which is not a COCO panoptic class")
                seg_ids.append(int(seg["id"]))
                labels.append(contiguous[cid])
            if not seg_ids:
                empty.append(len(self._records))
            stem = os.path.splitext(ann["file_name"])[0]
            self._records.append((stem + ".jpg", ann["file_name"], np.asarray(seg_ids, dtype=np.int64),
                                  np.asarray(labels, dtype=np.int64)))
        if not self._records:
            raise ValueError(f"{json_path} lists no images")
        self.empty_indices = empty
        if empty:
            logger.warning("COCO panoptic %s: %d of %d images have no non-crowd segment; they are returned with "
                           "N=0 masks", split, len(empty), len(self._records))

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Sample ``index``: image, one bool mask per non-crowd segment, contiguous labels (transformed)."""
        index = self._check_index(index)
        image_name, png_name, seg_ids, labels = self._records[index]
        image_path = self.image_dir / image_name
        image = to_rgb_tensor(image_path)
        ids = _read_panoptic_png(self.panoptic_dir / png_name)
        if ids.shape != tuple(image.shape[1:]):
            raise ValueError(f"panoptic PNG {self.panoptic_dir / png_name} is {ids.shape[1]}x{ids.shape[0]} but "
                             f"image {image_path} is {image.shape[2]}x{image.shape[1]}")
        masks = torch.from_numpy(ids[None] == seg_ids[:, None, None])
        sample = {"image": image, "masks": masks, "labels": torch.from_numpy(labels.copy()),
                  "file_name": str(image_path)}
        return self._finish(sample, index)


def _read_panoptic_png(path: Path) -> np.ndarray:
    """Segment ids [H, W] (int64) of a COCO panoptic PNG: ``R + 256 G + 65536 B``."""

    if not path.is_file():
        raise FileNotFoundError(f"panoptic PNG not found: {path}")
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


class CocoStuffTrain(_TrainDataset):
    """COCO-Stuff-164k training set: one mask per class present, 171 classes (``coco_stuff``), 255 ignored.

    Layout below ``root``: ``coco/{split}/*.jpg`` and ``coco/stuffthingmaps_detectron2/{split}/*.png``
    (contiguous ids 0..170, written by ``prepare_coco_stuff_sem_seg.py``). Pairs are matched by file stem and
    sorted by it, as detectron2's ``load_sem_seg`` does; files without a partner are skipped with a warning.
    For the MAFT+ mapper's exact label geometry, use ``LargeScaleJitter(size, nearest="torch")``.
    """

    def __init__(self, root: Union[str, os.PathLike], split: str = "train2017",
                 transform: Optional[Transform] = None, seed: int = 0) -> None:
        super().__init__(transform, seed)
        root = Path(root)
        coco = root / "coco"
        self.image_dir = _require_dir(coco / split, "COCO image", root)
        self.label_dir = _require_dir(coco / "stuffthingmaps_detectron2" / split, "COCO-Stuff label", root)
        self.vocabulary = builtin_vocabulary("coco_stuff")
        if len(self.vocabulary) != COCO_STUFF_NUM_CLASSES:
            raise RuntimeError("coco_stuff vocabulary does not have 171 classes")  # package data broken
        images = {e.name[:-4]: e.name for e in os.scandir(self.image_dir) if e.name.endswith(".jpg")}
        labels = {e.name[:-4]: e.name for e in os.scandir(self.label_dir) if e.name.endswith(".png")}
        stems = sorted(images.keys() & labels.keys())
        if len(stems) != len(images) or len(stems) != len(labels):
            logger.warning("COCO-Stuff %s: %d images and %d label maps, %d pairs used", split, len(images),
                           len(labels), len(stems))
        if not stems:
            raise ValueError(f"no image / label pairs: no {self.image_dir}/*.jpg has a matching "
                             f"{self.label_dir}/*.png")
        self._pairs = [(images[s], labels[s]) for s in stems]

    def __len__(self) -> int:
        return len(self._pairs)

    def _label_map(self, index: int) -> torch.Tensor:
        path = self.label_dir / self._pairs[index][1]
        if not path.is_file():
            raise FileNotFoundError(f"COCO-Stuff label map not found: {path}")
        with Image.open(path) as im:
            array = np.asarray(im)
        if array.ndim != 2:
            raise ValueError(f"COCO-Stuff label map {path} must be single-channel, got shape {array.shape}")
        return torch.from_numpy(array.astype(np.int64))

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Sample ``index``: image, one bool mask per class present (ascending ids, 255 ignored) (transformed)."""
        index = self._check_index(index)
        image_path = self.image_dir / self._pairs[index][0]
        image = to_rgb_tensor(image_path)
        label_map = self._label_map(index)
        if tuple(label_map.shape) != tuple(image.shape[1:]):
            raise ValueError(f"label map {self.label_dir / self._pairs[index][1]} is "
                             f"{label_map.shape[1]}x{label_map.shape[0]} but image {image_path} is "
                             f"{image.shape[2]}x{image.shape[1]}")
        masks, labels = label_map_to_masks(label_map, COCO_STUFF_NUM_CLASSES, COCO_STUFF_IGNORE)
        sample = {"image": image, "masks": masks, "labels": labels.long(), "file_name": str(image_path)}
        return self._finish(sample, index)

    def scan_empty(self) -> list[int]:
        """Read every label map, store and return the indices of images whose pixels are all 255."""

        empty = [i for i in tqdm(range(len(self)), desc="scan COCO-Stuff labels", unit="img")
                 if bool((self._label_map(i) == COCO_STUFF_IGNORE).all())]
        self.empty_indices = empty
        if empty:
            logger.warning("COCO-Stuff: %d of %d images have no labelled pixel; they are returned with N=0 masks",
                           len(empty), len(self))
        return empty


class SegmentationTrain(_TrainDataset):
    """Training samples of any :class:`~maskadapter.data.samples.SegmentationDataset` (your own data:
    ``coco:``, ``panoptic:``, ``labels:``): one mask per non-crowd instance or panoptic segment, or one per
    class present in a label map (the ignore label left out), as the official mappers make them.

    With a fixed-size transform (``LargeScaleJitter(size, scale=(1, 1))``) every image has two looks, plain and
    flipped; :meth:`flip_of` says which one epoch ``e`` shows, and :meth:`look` makes either on request (the
    feature cache stores both).
    """

    def __init__(self, dataset: SegmentationDataset, transform: Optional[Transform] = None, seed: int = 0) -> None:
        super().__init__(transform, seed)
        if not isinstance(dataset, SegmentationDataset):
            raise TypeError(f"dataset must be a SegmentationDataset, got {type(dataset).__name__}")
        if len(dataset) == 0:
            raise DatasetError(f"dataset {dataset.name} is empty: no image to train on")
        self.source = dataset
        self.vocabulary = dataset.vocabulary

    def __len__(self) -> int:
        return len(self.source)

    def raw(self, index: int) -> dict[str, Any]:
        """Sample ``index`` before augmentation: image, masks [N, H, W], labels [N], file name."""
        sample = self.source.samples[self._check_index(index)]
        image, masks, labels = gt_masks_of(sample, len(self.vocabulary))
        return {"image": image, "masks": masks, "labels": labels, "file_name": str(sample.image_path)}

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Sample ``index`` of the current epoch (transformed)."""
        return self._finish(self.raw(index), self._check_index(index))

    def flip_of(self, index: int) -> bool:
        """Whether the fixed-size transform flips sample ``index`` in the current epoch."""
        transform = self.transform
        if not getattr(transform, "fixed_size", False):
            raise ValueError("flip_of needs a fixed-size transform (LargeScaleJitter with scale (1, 1))")
        return transform.get_params(1, 1, self.generator(index)).flip  # the flip draw ignores the size

    def look(self, index: int, flip: bool) -> dict[str, Any]:
        """Sample ``index`` under the fixed-size transform with the given flip (what the cache stores)."""
        sample = self.raw(index)
        h, w = int(sample["image"].shape[1]), int(sample["image"].shape[2])
        out = self.transform.apply(sample, self.transform.fixed_params(h, w, flip))
        keep = out["masks"].flatten(1).any(dim=1)
        return {**out, "masks": out["masks"][keep], "labels": out["labels"][keep]}


def gt_masks_of(sample: Sample, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Image uint8 [3, H, W], GT masks bool [N, H, W] and labels int64 [N] of one sample: panoptic segments,
    else instances, else the classes of its label map; crowd regions and the ignore label left out."""
    if sample.panoptic_path is not None:
        ex = sample.load(("panoptic",))
        segs = [s for s in ex.segments or [] if not s["iscrowd"]]
        masks = torch.stack([ex.panoptic == s["id"] for s in segs]) if segs else \
            torch.zeros((0, *ex.image.shape[1:]), dtype=torch.bool)
        return ex.image, masks, torch.tensor([s["category_id"] for s in segs], dtype=torch.long)
    if sample.instances is not None:
        ex = sample.load(("instance",))
        insts = [i for i in ex.instances or [] if not i["iscrowd"]]
        masks = torch.stack([i["mask"] for i in insts]) if insts else \
            torch.zeros((0, *ex.image.shape[1:]), dtype=torch.bool)
        return ex.image, masks, torch.tensor([i["category_id"] for i in insts], dtype=torch.long)
    ex = sample.load(("semantic",))
    try:
        masks, labels = label_map_to_masks(ex.semantic, num_classes, sample.ignore_label)
    except ValueError as exc:  # a class id outside the class list: name the file
        raise DatasetError(f"label map {sample.label_path}: category ids not in the class list of {num_classes} "
                           f"classes: {exc}") from exc
    return ex.image, masks, labels.long()


def sample_gt_masks(masks: torch.Tensor, labels: torch.Tensor, n: int,
                    generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exactly ``n`` GT masks of ``masks`` [N, H, W] / ``labels`` [N] -> ([n, H, W], int64 [n]) (``prepare_targets``).

    Masks with area > 0 are kept. If more than ``n`` remain, a random ``n`` are taken (``randperm`` drawn from
    ``generator``); otherwise all are kept, in order, followed by zero masks labelled -1.
    """
    if not isinstance(masks, torch.Tensor) or masks.dim() != 3:
        raise ValueError(f"masks must be a tensor [N, H, W], got "
                         f"{list(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__}")
    if not isinstance(labels, torch.Tensor) or labels.shape != (masks.shape[0],):
        raise ValueError(f"labels must be a tensor [{masks.shape[0]}], got "
                         f"{list(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__}")
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise ValueError(f"n must be a positive int, got {n!r}")
    valid = masks.flatten(1).sum(dim=1) > 0
    masks, labels = masks[valid], labels[valid].long()
    k = masks.shape[0]
    if k > n:
        gen_device = generator.device if generator is not None else "cpu"
        pick = torch.randperm(k, generator=generator, device=gen_device)[:n].to(masks.device)
        return masks[pick], labels[pick]
    pad = n - k
    out_masks = torch.cat([masks, masks.new_zeros((pad, *masks.shape[1:]))])
    out_labels = torch.cat([labels, torch.full((pad,), -1, dtype=torch.long, device=labels.device)])
    return out_masks, out_labels


def collate_masks(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch of samples -> ``{"images": uint8 [B, 3, H, W], "masks": [bool [N_i, H, W]], "labels": [int64 [N_i]],
    "file_names": [str]}``; N_i may differ (and be 0), image sizes must agree (use a fixed-size transform)."""
    if not samples:
        raise ValueError("samples is empty")
    sizes = {tuple(s["image"].shape) for s in samples}
    if len(sizes) != 1:
        raise ValueError(f"samples have different image sizes {sorted(sizes)}; apply a fixed-size transform "
                         "(e.g. LargeScaleJitter) before batching")
    for i, s in enumerate(samples):
        if s["masks"].shape[0] != s["labels"].shape[0] or tuple(s["masks"].shape[1:]) != tuple(s["image"].shape[1:]):
            raise ValueError(f"sample {i}: masks {list(s['masks'].shape)} do not match labels "
                             f"{list(s['labels'].shape)} / image {list(s['image'].shape)}")
    return {
        "images": torch.stack([s["image"] for s in samples]),
        "masks": [s["masks"] for s in samples],
        "labels": [s["labels"] for s in samples],
        "file_names": [s.get("file_name", "") for s in samples],
    }
