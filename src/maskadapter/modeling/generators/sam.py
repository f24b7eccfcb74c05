"""Class-agnostic masks from SAM or SAM 2: automatic mask generation (:class:`SamMaskGenerator`) and point / box
prompts (:class:`SamPromptPredictor`), for the optional extras ``maskadapter[sam]`` / ``maskadapter[sam2]``.

The adapter classifies these masks on its own (no in-vocabulary head, no void). ``segment-anything`` and
``sam2`` are imported only when a network is loaded, with an install hint when they are missing. One loaded
network (:func:`load_sam`, a :class:`SamModel`) can serve both the automatic and the prompt mode.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from ...checkpoint import read_state_dict
from .source import MaskOutput, MaskProposer, PromptPredictor, ProposalSource, SourceInput

__all__ = ["MaskProposer", "PromptPredictor", "SamModel", "SamMaskGenerator", "SamPromptPredictor", "load_sam",
           "resolve_sam_model_type", "infer_sam_model", "SAM_BACKENDS", "SAM_MODEL_TYPES", "SAM2_CONFIGS"]

logger = logging.getLogger(__name__)

SAM_BACKENDS = ("sam", "sam2")
#: SAM (segment-anything) model types, largest first.
SAM_MODEL_TYPES = ("vit_h", "vit_l", "vit_b")
#: SAM 2 short names -> the config names of the ``sam2`` package (its hydra configs).
SAM2_CONFIGS = {f"{version}_hiera_{size}": f"configs/{version}/{version}_hiera_{size}.yaml"
                for version in ("sam2.1", "sam2") for size in ("t", "s", "b+", "l")}
# words of the released checkpoint file names (sam2.1_hiera_base_plus.pt, sam_vit_h_4b8939.pth)
_SAM2_SIZES = {"tiny": "t", "small": "s", "base_plus": "b+", "large": "l", "t": "t", "s": "s", "b+": "b+", "l": "l"}
# what tells the released networks apart in a state dict: SAM's ViT depth, SAM 2's Hiera block count (its stages
# summed), and SAM 2.1's extra no-object embedding
_SAM_DEPTHS = {12: "vit_b", 24: "vit_l", 32: "vit_h"}
_SAM2_BLOCKS = {12: "t", 16: "s", 24: "b+", 48: "l"}
_SAM_BLOCK = re.compile(r"^image_encoder\.blocks\.(\d+)\.")
_SAM2_BLOCK = re.compile(r"^image_encoder\.trunk\.blocks\.(\d+)\.")
_SAM2_FILE = re.compile(r"(sam2(?:\.1)?)_hiera_(tiny|small|base_plus|large|b\+|t|s|l)(?![a-z])")
PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class SamModel:
    """A loaded SAM / SAM 2 network, shared by :class:`SamMaskGenerator` and :class:`SamPromptPredictor`."""

    backend: str  #: ``sam`` or ``sam2``
    model_type: str  #: SAM model type (vit_h ...) or SAM 2 config name
    network: torch.nn.Module
    checkpoint: str

    def describe(self) -> str:
        """A short human-readable name, e.g. ``SAM 2 (sam2.1_hiera_l)``."""
        name = Path(self.model_type).stem if self.backend == "sam2" else self.model_type
        return f"{'SAM 2' if self.backend == 'sam2' else 'SAM'} ({name})"


# sam2 ships as source only: pip would build it against a freshly downloaded torch and try its CUDA extension
_SAM2_BUILD_HINT = ("; sam2 builds from source - to build it against the installed torch without its optional CUDA "
                    "extension: pip install hydra-core iopath && SAM2_BUILD_CUDA=0 pip install --no-build-isolation "
                    "--no-deps 'sam2>=1.1'")


def _import(module: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        hint = _SAM2_BUILD_HINT if extra == "sam2" else ""
        raise ImportError(f"SAM needs the '{module.split('.')[0]}' package: pip install 'maskadapter[{extra}]'"
                          f"{hint} ({exc})") from exc


def _package(backend: str) -> Any:
    """The module that builds networks of ``backend``: segment_anything or sam2.build_sam (ImportError: the fix)."""
    _check_backend(backend)
    return _import("segment_anything", "sam") if backend == "sam" else _import("sam2.build_sam", "sam2")


def _check_backend(backend: str) -> None:
    if backend not in SAM_BACKENDS:
        raise ValueError(f"backend must be 'sam' or 'sam2', got {backend!r}")


def resolve_sam_model_type(backend: str, model_type: Optional[str], checkpoint: PathLike) -> str:
    """The model type to build: ``model_type`` (a SAM 2 short name becomes its config name), else guessed from
    the released checkpoint's file name (``sam_vit_b_01ec64.pth``, ``sam2.1_hiera_large.pt``).

    A SAM type (``vit_*``) given with ``backend="sam2"`` is ignored in favour of the file name, since the command
    line's default type is a SAM one."""
    _check_backend(backend)
    name = Path(checkpoint).name.lower()
    if backend == "sam":
        if model_type is not None:
            if model_type not in SAM_MODEL_TYPES:
                raise ValueError(f"unknown SAM model type {model_type!r}; one of {', '.join(SAM_MODEL_TYPES)}")
            return model_type
        found = [t for t in SAM_MODEL_TYPES if t in name]
        return found[0] if found else "vit_h"
    if model_type is not None and not model_type.startswith("vit_"):
        return SAM2_CONFIGS.get(model_type, model_type)
    match = _SAM2_FILE.search(name)
    if match is None:
        raise ValueError(f"cannot tell the SAM 2 model of {checkpoint} from its file name: give the config "
                         f"(--sam-model / model_type), one of {', '.join(SAM2_CONFIGS)} or a sam2 config path")
    return SAM2_CONFIGS[f"{match.group(1)}_hiera_{_SAM2_SIZES[match.group(2)]}"]


def infer_sam_model(state: Mapping[str, torch.Tensor]) -> tuple[Optional[str], Optional[str]]:
    """(backend, model type) a SAM / SAM 2 state dict fits, from its layout: SAM's ViT depth (12 blocks: vit_b,
    24: vit_l, 32: vit_h), SAM 2's Hiera block count (12: t, 16: s, 24: b+, 48: l; SAM 2.1 has
    ``no_obj_embed_spatial``). (backend or None, None) when the layout names no released network."""
    sam = {int(m.group(1)) for k in state if (m := _SAM_BLOCK.match(k))}
    sam2 = {int(m.group(1)) for k in state if (m := _SAM2_BLOCK.match(k))}
    if sam2:
        size = _SAM2_BLOCKS.get(max(sam2) + 1)
        version = "sam2.1" if "no_obj_embed_spatial" in state else "sam2"
        return "sam2", SAM2_CONFIGS[f"{version}_hiera_{size}"] if size else None
    if sam:
        return "sam", _SAM_DEPTHS.get(max(sam) + 1)
    return None, None


def load_sam(checkpoint: PathLike, backend: Optional[str] = None, model_type: Optional[str] = None,
             device: Union[str, torch.device] = "cpu") -> SamModel:
    """Build a SAM (``backend="sam"``, types vit_h / vit_l / vit_b) or SAM 2 (``"sam2"``, a config name) network
    and load ``checkpoint`` into it.

    The file is read with the package's weights-only reader (never the SAM packages' own ``torch.load``) and the
    network is built without a checkpoint path. ``backend`` / ``model_type`` None: read from the state dict's
    layout (:func:`infer_sam_model`), else from the released file name (``sam_vit_b_01ec64.pth``)."""
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"SAM checkpoint not found: {checkpoint}")
    if backend is not None:
        _package(backend)  # a missing package is reported before the file is read
    state = read_state_dict(checkpoint)
    found_backend, found_type = infer_sam_model(state)
    backend = backend or found_backend or "sam"
    if model_type is None and found_backend == backend and found_type is not None:
        model_type = found_type
    model_type = resolve_sam_model_type(backend, model_type, checkpoint)
    if backend == "sam":
        network = _package(backend).sam_model_registry[model_type](checkpoint=None)
    else:
        network = _build_sam2(_package(backend), model_type)
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:  # weights of another model: missing, unexpected or mis-shaped keys
        raise ValueError(f"SAM checkpoint {checkpoint} does not load as {backend} {model_type!r}: "
                         f"{str(exc).splitlines()[0][:300]}") from exc
    network = network.to(device).eval()
    logger.info("loaded %s %s from %s on %s", backend, model_type, checkpoint, device)
    return SamModel(backend, model_type, network, str(checkpoint))


def _build_sam2(build: Any, config: str) -> torch.nn.Module:
    """SAM 2 from a config name of the ``sam2`` package, without weights; an unknown config is a ValueError
    listing the known ones."""
    try:
        return build.build_sam2(config, None, device="cpu")
    except Exception as exc:
        if type(exc).__name__ == "MissingConfigException":  # hydra's, without importing hydra here
            raise ValueError(f"unknown SAM 2 config {config!r}; one of {', '.join(SAM2_CONFIGS)} "
                             "(or a config path inside the sam2 package)") from exc
        raise


def _model_from(checkpoint: Union[PathLike, SamModel], backend: Optional[str], model_type: Optional[str],
                device: Union[str, torch.device]) -> SamModel:
    return checkpoint if isinstance(checkpoint, SamModel) else load_sam(checkpoint, backend, model_type, device)


def _wrap(checkpoint: Union[PathLike, SamModel], backend: Optional[str], model_type: Optional[str],
          device: Union[str, torch.device], builder: Optional[Callable[..., Any]], kwargs: dict,
          sam_class: tuple[str, str], sam2_class: tuple[str, str]) -> tuple[Optional[SamModel], Any]:
    """(the loaded network, the package's ``class(network, **kwargs)`` for its backend), or with ``builder``
    (tests, custom models) ``(None, builder(checkpoint, **kwargs))``."""
    if builder is not None:
        if not isinstance(checkpoint, SamModel) and not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"SAM checkpoint not found: {checkpoint}")
        return None, builder(checkpoint, **kwargs)
    model = _model_from(checkpoint, backend, model_type, device)
    module, name = sam_class if model.backend == "sam" else sam2_class
    extra = "sam" if model.backend == "sam" else "sam2"
    return model, getattr(_import(module, extra), name)(model.network, **kwargs)


def _check_rgb(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be an RGB uint8 array [H, W, 3], got "
                         f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}")


class SamMaskGenerator:
    """SAM or SAM 2 automatic mask generation: ``(image [H, W, 3] uint8) -> masks [N, H, W], scores [N]``; a
    proposal :class:`~maskadapter.modeling.generators.source.MaskSource` for a predictor.

    ``checkpoint``: a SAM / SAM 2 file, or a :class:`SamModel` already loaded (shared with the prompt mode).
    Extra keyword arguments go to the automatic mask generator (``points_per_side``, ``pred_iou_thresh``, ...).
    ``builder(checkpoint, **kwargs)`` replaces the package's generator (tests, custom models).
    """

    def __init__(
        self,
        checkpoint: Union[PathLike, SamModel],
        backend: Optional[str] = None,
        model_type: Optional[str] = None,
        device: Union[str, torch.device] = "cpu",
        min_area: int = 0,
        builder: Optional[Callable[..., Any]] = None,
        **generator_kwargs: Any,
    ) -> None:
        self.min_area = min_area
        self.model, self._generator = _wrap(
            checkpoint, backend, model_type, device, builder, generator_kwargs,
            ("segment_anything", "SamAutomaticMaskGenerator"),
            ("sam2.automatic_mask_generator", "SAM2AutomaticMaskGenerator"))

    needs_rgb = True  #: SAM works on the full-resolution image

    def propose(self, inputs: SourceInput) -> MaskOutput:
        """Automatic masks [N_i, H, W] and predicted IoUs [N_i] of each image of a prepared batch."""
        return ProposalSource(self).propose(inputs)

    def __call__(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks [N, H, W] bool (largest first) and their predicted IoU scores [N] for ``image`` [H, W, 3] uint8."""
        _check_rgb(image)
        records = [r for r in self._generator.generate(image) if int(r["area"]) > self.min_area]
        H, W = image.shape[:2]
        if not records:
            return torch.zeros((0, H, W), dtype=torch.bool), torch.zeros(0)
        records.sort(key=lambda r: -int(r["area"]))
        masks = torch.from_numpy(np.stack([np.asarray(r["segmentation"], dtype=bool) for r in records]))
        scores = torch.tensor([float(r.get("predicted_iou", 1.0)) for r in records])
        logger.info("SAM proposed %d masks", len(records))
        return masks, scores


def image_key(image: np.ndarray) -> str:
    """A content hash of an image array (shape, dtype and pixels): equal keys mean the same image."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{image.shape}{image.dtype}".encode())
    digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()


class SamPromptPredictor:
    """Point and box prompts -> masks with SAM's ``SamPredictor`` or SAM 2's ``SAM2ImagePredictor``.

    The image embedding (the expensive part) is computed once per image content: :meth:`set_image` with the
    same pixels again is free, so interactive clicks on one image reuse it. Not thread-safe (one image at a
    time); the demo runs one request at a time. ``checkpoint``: a file or a loaded :class:`SamModel`.
    ``builder(checkpoint, **kwargs)`` replaces the package's predictor (tests, custom models); it returns an
    object with SamPredictor's ``set_image(image)`` and ``predict(point_coords=, point_labels=, box=,
    multimask_output=) -> (masks, scores, low-res logits)``.
    """

    def __init__(
        self,
        checkpoint: Union[PathLike, SamModel],
        backend: Optional[str] = None,
        model_type: Optional[str] = None,
        device: Union[str, torch.device] = "cpu",
        builder: Optional[Callable[..., Any]] = None,
        **predictor_kwargs: Any,
    ) -> None:
        self.embeddings_computed = 0  #: how many times an image embedding was computed
        self._key: Optional[str] = None
        self._size: Optional[tuple[int, int]] = None
        self.model, self._predictor = _wrap(
            checkpoint, backend, model_type, device, builder, predictor_kwargs,
            ("segment_anything", "SamPredictor"), ("sam2.sam2_image_predictor", "SAM2ImagePredictor"))

    @property
    def image_size(self) -> Optional[tuple[int, int]]:
        """(H, W) of the image set last, None before any."""
        return self._size

    @torch.no_grad()
    def set_image(self, image: np.ndarray) -> bool:
        """Embed ``image`` [H, W, 3] uint8 unless it is the image embedded last; returns whether it computed."""
        _check_rgb(image)
        key = image_key(image)
        if key == self._key:
            return False
        self._key = None  # a failure below leaves no stale embedding behind
        self._predictor.set_image(image)
        self._key, self._size = key, (int(image.shape[0]), int(image.shape[1]))
        self.embeddings_computed += 1
        logger.info("SAM image embedding computed for a %dx%d image", image.shape[1], image.shape[0])
        return True

    @torch.no_grad()
    def predict(self, point_coords: Optional[np.ndarray] = None, point_labels: Optional[np.ndarray] = None,
                box: Optional[np.ndarray] = None, multimask_output: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks [K, H, W] bool (K = 3 with ``multimask_output``, else 1) and SAM's predicted IoU [K] for the
        prompts on the current image: ``point_coords`` [N, 2] (x, y) pixels, ``point_labels`` [N] (1 positive,
        0 negative), ``box`` [4] (x0, y0, x1, y1)."""
        if self._key is None:
            raise RuntimeError("no image set: call set_image(image) before predict()")
        masks, scores, _ = self._predictor.predict(point_coords=point_coords, point_labels=point_labels, box=box,
                                                   multimask_output=multimask_output)
        masks = np.asarray(masks)
        masks = masks if masks.dtype == bool else masks > 0.5  # SAM 2 returns 0/1 floats
        return torch.from_numpy(np.ascontiguousarray(masks)), torch.as_tensor(np.asarray(scores), dtype=torch.float32)


def point_arrays(points: Sequence[tuple[float, float, bool]]) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """(x, y, positive) points -> SAM's ``point_coords`` [N, 2] float32 and ``point_labels`` [N] int32, or Nones."""
    if not points:
        return None, None
    coords = np.array([[float(x), float(y)] for x, y, _ in points], dtype=np.float32)
    labels = np.array([1 if positive else 0 for _, _, positive in points], dtype=np.int32)
    return coords, labels
