"""A synthetic, learnable segmentation dataset of textured shapes, for CPU training tests and smoke runs.

Each class is a texture: a colour and a pattern (stripes, checks, dots, waves) with its own period and
orientation. An image is a background texture (one class) with 1..``max_shapes`` shapes (circle,
rectangle, triangle, blob) of other classes on top; every instance is jittered (brightness, period,
orientation, phase) and pixel noise is added, so a class is a distribution of looks, not one patch.

With a random-weight CLIP, text embeddings carry no class information. :meth:`SyntheticShapes.class_prototypes`
provides the stand-in: the CLIP embedding of pure patches of each texture. Used as the "text" classifier,
pooling CLIP features inside a mask identifies its class, while pooling over the whole image does not; that
is the signal the adapter learns to exploit.
"""

from __future__ import annotations

import hashlib
import logging
import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..vocabulary import Vocabulary

if TYPE_CHECKING:
    from ..modeling.clip_backbone import ClipBackbone

__all__ = ["SyntheticShapes", "COLOURS", "PATTERNS", "SHAPES"]

logger = logging.getLogger(__name__)

#: Colour names and RGB values (13 colours x 4 patterns: class c gets colour c % 13 and pattern c % 4,
#: which is unique for c < 52).
COLOURS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("red", (220, 40, 40)), ("green", (40, 160, 60)), ("blue", (40, 80, 220)), ("yellow", (230, 210, 40)),
    ("purple", (140, 60, 180)), ("orange", (240, 140, 30)), ("cyan", (40, 200, 210)), ("pink", (240, 130, 190)),
    ("brown", (130, 80, 40)), ("white", (235, 235, 235)), ("black", (35, 35, 35)), ("olive", (128, 128, 20)),
    ("teal", (0, 120, 130)),
)
PATTERNS: tuple[str, ...] = ("stripes", "checks", "dots", "waves")
SHAPES: tuple[str, ...] = ("circle", "rectangle", "triangle", "blob")
MAX_CLASSES = 52  # lcm(13, 4): beyond it two classes would share colour and pattern


def _generator(*keys: Any) -> torch.Generator:
    digest = hashlib.blake2b(":".join(str(k) for k in keys).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2 ** 63 - 1))


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))


class SyntheticShapes(Dataset):
    """``num_images`` textured-shape images of ``size`` x ``size`` over ``num_classes`` texture classes.

    ``__getitem__(i)`` -> ``{"image": uint8 [3, S, S], "masks": bool [N, S, S], "labels": int64 [N],
    "file_name": str}``: one mask per visible shape plus the background mask (label = the background
    class), no overlaps; shapes whose visible part is under 1% of the image are not drawn. Sample ``i`` is
    a pure function of ``(seed, i)``; the background class is ``i % num_classes`` (balanced), shape classes
    are drawn uniformly among the other classes (distinct within an image).
    """

    def __init__(self, num_classes: int = 24, size: int = 128, num_images: int = 256, seed: int = 0,
                 max_shapes: int = 4) -> None:
        if not isinstance(num_classes, int) or not 2 <= num_classes <= MAX_CLASSES:
            raise ValueError(f"num_classes must be an int in 2..{MAX_CLASSES}, got {num_classes!r}")
        if not isinstance(size, int) or size < 16:
            raise ValueError(f"size must be an int >= 16, got {size!r}")
        if not isinstance(num_images, int) or num_images <= 0:
            raise ValueError(f"num_images must be a positive int, got {num_images!r}")
        if not isinstance(max_shapes, int) or not 1 <= max_shapes <= num_classes - 1:
            raise ValueError(f"max_shapes must be an int in 1..num_classes-1, got {max_shapes!r}")
        self.num_classes = num_classes
        self.size = size
        self.num_images = num_images
        self.seed = int(seed)
        self.max_shapes = max_shapes
        self.epoch = 0
        self.empty_indices: list[int] = []  # every image has at least its background mask
        names = [f"{COLOURS[c % len(COLOURS)][0]} {PATTERNS[c % len(PATTERNS)]}" for c in range(num_classes)]
        self.vocabulary = Vocabulary.from_classes(names)
        # Per-class texture constants: a pattern period of 5..13 px and an orientation, spread over classes.
        self._period = [5.0 + (c * 7) % 9 for c in range(num_classes)]
        self._angle = [math.radians((c * 47) % 180) for c in range(num_classes)]
        yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                                indexing="ij")
        self._yy, self._xx = yy, xx

    def __len__(self) -> int:
        return self.num_images

    def set_epoch(self, epoch: int) -> None:
        """Recorded for interface parity with the COCO datasets; samples do not depend on the epoch."""
        self.epoch = int(epoch)

    # ------------------------------------------------------------------ rendering
    def texture(self, cls: int, g: torch.Generator, size: int | None = None) -> torch.Tensor:
        """One jittered instance of class ``cls``'s texture -> float [3, size, size] on the 0-255 scale."""
        s = self.size if size is None else size
        if (s, s) == tuple(self._yy.shape):
            yy, xx = self._yy, self._xx
        else:
            yy, xx = torch.meshgrid(torch.arange(s, dtype=torch.float32), torch.arange(s, dtype=torch.float32),
                                    indexing="ij")
        period = self._period[cls] * _uniform(g, 0.8, 1.25)
        angle = self._angle[cls] + math.radians(_uniform(g, -12.0, 12.0))
        phase_u, phase_v = _uniform(g, 0, 2 * math.pi), _uniform(g, 0, 2 * math.pi)
        u = xx * math.cos(angle) + yy * math.sin(angle)
        v = -xx * math.sin(angle) + yy * math.cos(angle)
        w = 2 * math.pi / period
        pattern = PATTERNS[cls % len(PATTERNS)]
        if pattern == "stripes":
            p = torch.sigmoid(4 * torch.sin(w * u + phase_u))
        elif pattern == "checks":
            p = torch.sigmoid(12 * torch.sin(w * u + phase_u) * torch.sin(w * v + phase_v))
        elif pattern == "dots":
            p = torch.sigmoid(10 * ((torch.cos(w * u + phase_u) + torch.cos(w * v + phase_v)) / 2 - 0.4))
        else:  # waves
            p = torch.sigmoid(4 * torch.sin(w * u + 1.5 * torch.sin(0.5 * w * v + phase_v) + phase_u))
        primary = torch.tensor(COLOURS[cls % len(COLOURS)][1], dtype=torch.float32).view(3, 1, 1)
        secondary = primary * 0.3 + 20.0
        brightness = _uniform(g, 0.75, 1.25)
        image = (secondary + (primary - secondary) * p) * brightness
        image = image + 10.0 * torch.randn(image.shape, generator=g)
        return image.clamp(0, 255)

    def _shape_mask(self, g: torch.Generator) -> torch.Tensor:
        """A random shape's bool mask [S, S]."""
        S = float(self.size)
        xx, yy = self._xx, self._yy
        kind = SHAPES[int(torch.randint(len(SHAPES), (), generator=g))]
        cx, cy = _uniform(g, 0.15, 0.85) * S, _uniform(g, 0.15, 0.85) * S
        if kind == "circle":
            r = _uniform(g, 0.12, 0.28) * S
            return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        if kind == "rectangle":
            hw, hh, a = _uniform(g, 0.1, 0.25) * S, _uniform(g, 0.1, 0.25) * S, _uniform(g, 0, math.pi)
            du = (xx - cx) * math.cos(a) + (yy - cy) * math.sin(a)
            dv = -(xx - cx) * math.sin(a) + (yy - cy) * math.cos(a)
            return (du.abs() <= hw) & (dv.abs() <= hh)
        if kind == "triangle":
            r, a0 = _uniform(g, 0.15, 0.32) * S, _uniform(g, 0, 2 * math.pi)
            pts = [(cx + r * math.cos(a0 + k * 2 * math.pi / 3 + _uniform(g, -0.3, 0.3)),
                    cy + r * math.sin(a0 + k * 2 * math.pi / 3 + _uniform(g, -0.3, 0.3))) for k in range(3)]
            signs = []
            for (x1, y1), (x2, y2) in zip(pts, pts[1:] + pts[:1]):
                signs.append((x2 - x1) * (yy - y1) - (y2 - y1) * (xx - x1) >= 0)
            return (signs[0] & signs[1] & signs[2]) | (~signs[0] & ~signs[1] & ~signs[2])
        # blob: a wobbly radius
        r0 = _uniform(g, 0.12, 0.25) * S
        a1, a2 = _uniform(g, 0, 2 * math.pi), _uniform(g, 0, 2 * math.pi)
        theta = torch.atan2(yy - cy, xx - cx)
        radius = r0 * (1 + 0.25 * torch.sin(2 * theta + a1) + 0.15 * torch.sin(3 * theta + a2))
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= radius ** 2

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Sample ``index`` (deterministic from ``(seed, index)``)."""
        if not -len(self) <= int(index) < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
        index = int(index) % len(self)
        g = _generator("synthetic-shapes", self.seed, index)
        background = index % self.num_classes
        k = int(torch.randint(1, self.max_shapes + 1, (), generator=g))
        others = [c for c in range(self.num_classes) if c != background]
        shape_classes = [others[int(i)] for i in torch.randperm(len(others), generator=g)[:k]]
        shapes = [self._shape_mask(g) for _ in shape_classes]
        # Later shapes are on top. Drop shapes whose visible part is too small, then recompute visibility.
        min_area = 0.01 * self.size * self.size
        while True:
            visible, covered = [], torch.zeros_like(self._xx, dtype=torch.bool)
            for m in reversed(shapes):
                visible.append(m & ~covered)
                covered |= m
            visible.reverse()
            small = [i for i, m in enumerate(visible) if m.sum() < min_area]
            if not small:
                break
            shapes = [m for i, m in enumerate(shapes) if i not in small]
            shape_classes = [c for i, c in enumerate(shape_classes) if i not in small]
        image = self.texture(background, g)
        for m, c in zip(visible, shape_classes):
            image = torch.where(m, self.texture(c, g), image)
        masks = [~covered] + visible
        labels = [background] + shape_classes
        keep = [i for i, m in enumerate(masks) if bool(m.any())]
        return {
            "image": image.round().to(torch.uint8),
            "masks": torch.stack([masks[i] for i in keep]),
            "labels": torch.tensor([labels[i] for i in keep], dtype=torch.long),
            "file_name": f"synthetic-shapes-{self.seed}-{index:06d}",
        }

    # ------------------------------------------------------------------ classifier
    @torch.no_grad()
    def class_prototypes(self, backbone: "ClipBackbone", samples_per_class: int = 4) -> torch.Tensor:
        """Stand-in text classifier [C, D]: L2-normalised mean CLIP embedding of pure patches of each texture.

        Each patch (``size`` rounded up to a multiple of 32, at least 64) goes through ``backbone``; its
        ``clip_vis_dense`` map is mean-pooled over the patch and projected with ``project_pooled``; the
        projections of a class are averaged over ``samples_per_class`` jittered patches and normalised.
        """
        if not isinstance(samples_per_class, int) or samples_per_class <= 0:
            raise ValueError(f"samples_per_class must be a positive int, got {samples_per_class!r}")
        patch = max(64, -(-self.size // 32) * 32)
        g = _generator("synthetic-shapes-prototypes", self.seed)
        param = next(backbone.parameters())
        images = torch.stack([self.texture(c, g, patch).round() for c in range(self.num_classes)
                              for _ in range(samples_per_class)])  # class-major [C*n, 3, P, P]
        embeddings = []
        for chunk in images.split(64):  # bounded memory, few forward calls
            chunk = chunk.to(device=param.device, dtype=param.dtype)
            dense = backbone(backbone.normalize(chunk))["clip_vis_dense"]  # [b, Cv, h, w]
            embeddings.append(backbone.project_pooled(dense.mean(dim=(2, 3))[:, None])[:, 0])  # [b, D]
        protos = torch.cat(embeddings).view(self.num_classes, samples_per_class, -1).mean(dim=1)
        return F.normalize(protos.float(), dim=-1)
