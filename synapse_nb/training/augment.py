"""Augmentations for contrastive pretraining: two views of a synapse that keep its morphology.

What two views of one synapse may differ in is what the features learn to ignore, so only
nuisances are varied: the pose (the cube's 48 rotations and reflections, plus a small affine
turn and scale), the imaging (brightness, contrast, noise, blur) and partial occlusion
(coarse dropout). Shape-changing transforms (elastic warps, large crops) are left out on
purpose: they would teach the network to ignore the morphology we cluster by.

The transforms are MONAI's (they act on one channel-first cube at a time). Every view is
reproducible: the random state of the MONAI pipeline is set, before each batch, from a seed
derived from (seed, epoch, batch index) only, so a resumed run sees exactly the views an
uninterrupted one would have seen.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

_MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class AugmentSettings:
    """Strengths of the augmentations; each ``*_prob`` is the chance a view gets that change.

    Defaults follow SimCLR's recipe adapted to 3-D EM: strong pose changes (a synapse has no
    preferred orientation in the volume), moderate imaging changes (sections differ in
    brightness, contrast and noise), mild occlusion.
    """

    rotate90: bool = True  # random 90-degree turns about all three axes
    flip: bool = True  # random mirror (with the turns: all 48 symmetries of the cube)
    affine_prob: float = 0.5
    rotate_degrees: float = 10.0  # small extra rotation about each axis, up to +-this
    scale: float = 0.1  # scaled by 1 + U(-scale, scale) per axis
    contrast_prob: float = 0.5
    gamma: tuple[float, float] = (0.7, 1.5)  # contrast: intensities ** gamma within their range
    intensity_prob: float = 0.8
    intensity_scale: float = 0.15  # multiplied by 1 + U(-s, s)
    intensity_shift: float = 0.1  # shifted by U(-s, s)
    noise_prob: float = 0.5
    noise_std: float = 0.05  # Gaussian noise with std up to this (on [0, 1] intensities)
    blur_prob: float = 0.3
    blur_sigma: tuple[float, float] = (0.5, 1.0)  # in voxels of the training cube
    dropout_prob: float = 0.5
    dropout_holes: int = 3  # 1 .. this many boxes per view
    dropout_size: float = 0.25  # box edges up to this fraction of the cube edge
    dropout_fill: float = 0.5  # grey value of the boxes

    def __post_init__(self) -> None:
        for name in ("affine_prob", "contrast_prob", "intensity_prob", "noise_prob", "blur_prob", "dropout_prob"):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"augment {name} must be a probability in [0, 1], got {value!r}")
        if not 0.0 <= self.rotate_degrees <= 45.0:
            raise ValueError(f"augment rotate_degrees must be in [0, 45], got {self.rotate_degrees!r}")
        if not 0.0 <= self.scale < 0.5:
            raise ValueError(f"augment scale must be in [0, 0.5), got {self.scale!r}")
        lo, hi = self.gamma
        if not 0.0 < lo <= hi:
            raise ValueError(f"augment gamma must be (low, high) with 0 < low <= high, got {self.gamma!r}")
        lo, hi = self.blur_sigma
        if not 0.0 < lo <= hi:
            raise ValueError(f"augment blur_sigma must be (low, high) with 0 < low <= high, got {self.blur_sigma!r}")
        if self.noise_std < 0 or self.intensity_scale < 0 or self.intensity_shift < 0:
            raise ValueError("augment noise_std, intensity_scale and intensity_shift must be >= 0")
        if int(self.dropout_holes) < 1 or not 0.0 < self.dropout_size <= 0.5:
            raise ValueError(
                f"augment dropout_holes must be >= 1 and dropout_size in (0, 0.5], got "
                f"{self.dropout_holes!r} / {self.dropout_size!r}"
            )

    def as_dict(self) -> dict[str, Any]:
        """Plain values (tuples as lists) for metadata and fingerprints."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "AugmentSettings":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def derive_seed(*parts: int) -> int:
    """A 32-bit seed that depends on every part (seed, epoch, batch, ...), and on nothing else."""
    return int(np.random.SeedSequence([int(p) & _MAX_SEED for p in parts]).generate_state(1)[0])


def build_transform(settings: AugmentSettings, size: int) -> Any:
    """The MONAI pipeline for (1, S, S, S) cubes of edge ``size`` (box sizes scale with it)."""
    from monai.transforms import (
        Compose,
        RandAdjustContrast,
        RandAffine,
        RandCoarseDropout,
        RandFlip,
        RandGaussianNoise,
        RandGaussianSmooth,
        RandRotate90,
        RandScaleIntensity,
        RandShiftIntensity,
    )

    s = settings
    steps: list[Any] = []
    if s.rotate90:
        # k in 0..3 about each of the three planes: every rotation of the cube can occur
        steps += [RandRotate90(prob=1.0, max_k=3, spatial_axes=axes) for axes in ((0, 1), (0, 2), (1, 2))]
    if s.flip:
        steps.append(RandFlip(prob=0.5, spatial_axis=0))
    if s.affine_prob > 0 and (s.rotate_degrees > 0 or s.scale > 0):
        r = math.radians(s.rotate_degrees)
        steps.append(RandAffine(
            prob=s.affine_prob, rotate_range=(r, r, r), scale_range=(s.scale,) * 3,
            mode="bilinear", padding_mode="reflection",
        ))
    if s.contrast_prob > 0:
        steps.append(RandAdjustContrast(prob=s.contrast_prob, gamma=tuple(s.gamma)))
    if s.intensity_prob > 0 and s.intensity_scale > 0:
        steps.append(RandScaleIntensity(factors=s.intensity_scale, prob=s.intensity_prob))
    if s.intensity_prob > 0 and s.intensity_shift > 0:
        steps.append(RandShiftIntensity(offsets=s.intensity_shift, prob=s.intensity_prob))
    if s.blur_prob > 0:
        lo, hi = s.blur_sigma
        steps.append(RandGaussianSmooth(sigma_x=(lo, hi), sigma_y=(lo, hi), sigma_z=(lo, hi), prob=s.blur_prob))
    if s.noise_prob > 0 and s.noise_std > 0:
        steps.append(RandGaussianNoise(prob=s.noise_prob, mean=0.0, std=s.noise_std))
    if s.dropout_prob > 0:
        edge = max(1, int(round(s.dropout_size * size)))
        steps.append(RandCoarseDropout(
            holes=1, max_holes=int(s.dropout_holes), spatial_size=max(1, edge // 2), max_spatial_size=edge,
            fill_value=float(s.dropout_fill), prob=s.dropout_prob,
        ))
    return Compose(steps)


def _as_batch(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(B, Z, Y, X) float32 tensor from an array or tensor, or ValueError naming the shape."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).float()
    if t.ndim != 4:
        raise ValueError(f"expected cubes of shape (B, Z, Y, X), got {tuple(t.shape)}")
    return t


def resample_cubes(x: np.ndarray | torch.Tensor, size: int | None) -> torch.Tensor:
    """Cubes (B, Z, Y, X) resampled to (B, size, size, size): same field of view, other voxel count.

    Shrinking averages the input voxels each output voxel covers (``area``, i.e. adaptive
    average pooling) so thin membranes are not lost to aliasing as plain trilinear sampling
    would lose them; enlarging is trilinear. ``size`` None (or equal to the cube) returns the
    cubes unchanged.
    """
    t = _as_batch(x)
    if size is None or tuple(t.shape[1:]) == (int(size),) * 3:
        return t
    if int(size) < 1:
        raise ValueError(f"cube_size must be a positive integer, got {size!r}")
    target = (int(size),) * 3
    shrink = all(o >= n for o, n in zip(t.shape[1:], target))
    mode = "area" if shrink else "trilinear"
    kwargs = {} if shrink else {"align_corners": False}
    return F.interpolate(t.unsqueeze(1), size=target, mode=mode, **kwargs).squeeze(1)


class ResampledCubes:
    """A CubeSource whose cubes are resampled to ``size`` on reading (:func:`resample_cubes`).

    Weights trained at a smaller ``cube_size`` see structures at that scale; extracting
    features from cubes resampled the same way keeps training and extraction consistent.
    Other attributes (``normal_axes``, ``synapse_where``) are those of the wrapped source.
    """

    def __init__(self, cubes: Any, size: int) -> None:
        self.cubes = cubes
        self.size = int(size)

    def __len__(self) -> int:
        return len(self.cubes)

    def __getitem__(self, item: slice) -> np.ndarray:
        return resample_cubes(np.asarray(self.cubes[item], dtype=np.float32), self.size).numpy()

    def __getattr__(self, name: str) -> Any:
        if name in ("cubes", "size"):
            raise AttributeError(name)
        return getattr(self.cubes, name)


def _apply(transform: Any, cubes: torch.Tensor) -> torch.Tensor:
    out = []
    for cube in cubes:
        view = transform(cube.unsqueeze(0))
        out.append(torch.as_tensor(view.as_tensor() if hasattr(view, "as_tensor") else view, dtype=torch.float32)[0])
    return torch.stack(out).clamp_(0.0, 1.0)


def two_views(
    cubes: np.ndarray | torch.Tensor,
    settings: AugmentSettings,
    *,
    seed: int,
    epoch: int,
    batch: int,
    transform: Any | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two augmented views (each (B, Z, Y, X) float32 in [0, 1]) of a batch of cubes.

    The views depend only on the cubes and on (seed, epoch, batch): the MONAI random state is
    reset from those before the batch, so calling this again gives the same views, bit for bit.
    ``transform`` (from :func:`build_transform`) may be passed to avoid rebuilding it per batch.
    Values are clipped to [0, 1], the range the cube builder writes.
    """
    x = _as_batch(cubes)
    if len(set(x.shape[1:])) != 1 and settings.rotate90:
        raise ValueError(f"90-degree turns need cubes with equal edges, got {tuple(x.shape[1:])}")
    tf = transform if transform is not None else build_transform(settings, int(x.shape[1]))
    tf.set_random_state(seed=derive_seed(seed, epoch, batch))
    first = _apply(tf, x)
    second = _apply(tf, x)
    return first, second


def augmentation_examples(
    cubes: Any,
    indices: Sequence[int],
    settings: AugmentSettings = AugmentSettings(),
    *,
    n_views: int = 3,
    cube_size: int | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Central z slices of a few synapses as trained on and of ``n_views`` augmented views each.

    For the figure that shows a person what the network is taught to ignore
    (:func:`synapse_nb.figures.training.augmentation_figure`). ``cubes`` is a CubeSource
    (``len`` + slicing); the views are reproducible from ``seed``.
    """
    if n_views < 1:
        raise ValueError(f"n_views must be >= 1, got {n_views}")
    out: list[dict[str, Any]] = []
    transform = None
    for k, i in enumerate(indices):
        i = int(i)
        if not 0 <= i < len(cubes):
            raise IndexError(f"synapse index {i} is out of range for {len(cubes)} cubes")
        x = resample_cubes(np.asarray(cubes[i : i + 1], dtype=np.float32), cube_size)
        if transform is None:
            transform = build_transform(settings, int(x.shape[1]))
        transform.set_random_state(seed=derive_seed(seed, k))
        views = [_apply(transform, x)[0] for _ in range(n_views)]
        c = x.shape[1] // 2
        out.append({
            "index": i,
            "original": x[0, c].numpy(),
            "views": [v[c].numpy() for v in views],
        })
    return out
