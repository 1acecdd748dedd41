"""Canonical orientation of a synapse cube: the same synapse in any pose gives (nearly) the same cube.

With random network weights the deep features answer a cube's pose as much as its shape. An
oriented cube is rotated about its centre into the synapse's own frame: the cleft normal along
z (axis 0) pointing from the presynaptic to the postsynaptic side (presynaptic side at low z),
and the cleft's long axis along x. :func:`cleft_frame` finds that frame from the structure bits
of a larger source cube around the same centre, :func:`orient_cube` resamples the ``S^3`` cube
from it (raw linear, bits nearest, so bits stay valid combinations) and
:func:`orientation_info` records the rotation in the cube table so points map back to the
volume (:func:`cube_to_volume`, :func:`volume_to_cube`). The rules are explained in
``docs/cubes.md`` ("Canonical orientation").
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..core import labels as L
from .geometry import (
    ROTATION_COLUMNS,
    CropBox,
    orient_window_edge,
    rotation_from_info,
    source_index_affine,
)

#: Least-to-middle variance ratio above which the cleft is called elongated: its long axis gives x.
ELONGATION = 1.15
#: An in-plane offset (voxels) shorter than this gives no direction.
MIN_OFFSET = 0.5

BASIS_PREPOST = "pre->post"
BASIS_PREPOST_SIDES = "pre->post (side points)"
BASIS_SIDES = "side1->side2"
BASIS_NO_CLEFT = "side points (no cleft label)"
BASIS_VESICLE = "vesicle->cleft"
BASIS_ARBITRARY = "cleft normal, sign arbitrary"
BASIS_NONE = "none: no cleft and no side points, not rotated"

_AXES = "zyx"
#: Pads of the source cube the oriented cube was resampled from.
ORIENT_PAD_COLUMNS = tuple(f"orient_pad_{a}_{s}" for a in _AXES for s in ("before", "after"))


@dataclass(frozen=True, eq=False)
class CleftFrame:
    """A synapse's own frame: rows of ``rotation`` are its z, y, x axes in volume (z, y, x) components."""

    rotation: np.ndarray  # (3, 3) proper rotation: cube offset d -> volume offset rotation.T @ d
    basis: str  # what the z axis (normal and its sign) was taken from
    in_plane: str  # what the x axis was taken from


# --------------------------------------------------------------------------------------
# the frame
# --------------------------------------------------------------------------------------
def _unit(v: np.ndarray) -> np.ndarray | None:
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-12 else None


def _snap(v: np.ndarray) -> np.ndarray:
    """Numerical noise set to zero, so an axis-aligned frame is exactly the identity."""
    v = np.where(np.abs(v) < 1e-9, 0.0, v)
    return v / np.linalg.norm(v)


def _ball_voxels(bits: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (n, 3) from the centre voxel and bits values of the labelled voxels within ``radius``.

    Only the ball's bounding box is searched (a sixth of the source cube's voxels).
    """
    centre = np.array([s // 2 for s in bits.shape])
    r = int(np.ceil(radius))
    lo = np.maximum(centre - r, 0)
    sub = bits[tuple(slice(int(a), int(b)) for a, b in zip(lo, centre + r + 1))]
    idx = np.nonzero(sub)
    pts = np.stack(idx, axis=1).astype(np.float64) + (lo - centre)
    keep = np.einsum("ij,ij->i", pts, pts) <= radius * radius
    return pts[keep], sub[idx][keep]


def _side_direction(pre_side: int, side1: np.ndarray | None, side2: np.ndarray | None) -> tuple[np.ndarray | None, str]:
    """Pre -> post from the side points when pre/post is known, else side1 -> side2."""
    if side1 is None or side2 is None:
        return None, ""
    d = _unit(np.asarray(side2, np.float64) - np.asarray(side1, np.float64))
    if d is None:
        return None, ""
    if pre_side == 2:
        return -d, BASIS_PREPOST_SIDES
    return d, BASIS_PREPOST_SIDES if pre_side == 1 else BASIS_SIDES


def _normal_sign(
    normal: np.ndarray, pre: np.ndarray, post: np.ndarray, ves: np.ndarray, cleft_c: np.ndarray, side_dir: np.ndarray | None, side_basis: str
) -> tuple[np.ndarray, str]:
    """The normal pointing pre -> post, and what decided that."""
    if len(pre) and len(post):
        s = float(normal @ (post.mean(axis=0) - pre.mean(axis=0)))
        if abs(s) > 1e-9:
            return (normal if s > 0 else -normal), BASIS_PREPOST
    if side_dir is not None:
        s = float(normal @ side_dir)
        if abs(s) > 1e-9:
            return (normal if s > 0 else -normal), side_basis
    if len(ves):  # the vesicle cloud lies on the presynaptic side
        s = float(normal @ (cleft_c - ves.mean(axis=0)))
        if abs(s) > 1e-9:
            return (normal if s > 0 else -normal), BASIS_VESICLE
    return normal, BASIS_ARBITRARY


def _in_plane_cue(normal: np.ndarray, groups: list[np.ndarray], origin: np.ndarray) -> np.ndarray | None:
    """In-plane offset of the first non-empty group's centroid from ``origin`` (None if too short)."""
    for pts in groups:
        if len(pts):
            v = pts.mean(axis=0) - origin
            v = v - (v @ normal) * normal
            if np.linalg.norm(v) >= MIN_OFFSET:
                return v
    return None


def cleft_frame(
    bits: np.ndarray,
    *,
    size: int,
    pre_side: int = 0,
    side1: np.ndarray | None = None,
    side2: np.ndarray | None = None,
) -> CleftFrame:
    """The synapse frame from the structure bits of a source cube centred on the cube centre.

    Only voxels within ``size / 2`` of the centre count, a region every pose sees alike.
    z: the cleft's axis of least variance (cleft and cleft2 voxels), signed pre -> post by the
    pre and post centroids, else by the side points (``side1``/``side2``: (z, y, x) offsets from
    the centre; ``pre_side`` orders them), else vesicle cloud -> cleft; without cleft voxels the
    side-point direction itself. x: the cleft's long axis when it is elongated, signed towards
    the vesicle cloud (else pre, else post) centroid; for a round cleft that in-plane offset itself.
    """
    pts, vals = _ball_voxels(np.asarray(bits), int(size) / 2.0)
    cleft, pre, post, ves = (
        pts[(vals & np.uint8(bit)) != 0] for bit in (L.BIT_CLEFT | L.BIT_CLEFT2, L.BIT_PRE, L.BIT_POST, L.BIT_VESICLE)
    )
    side_dir, side_basis = _side_direction(int(pre_side), side1, side2)

    long_axis: np.ndarray | None = None
    skew_sign = 0.0
    if len(cleft) >= 3:
        cleft_c = cleft.mean(axis=0)
        vals, vecs = np.linalg.eigh(np.cov(cleft, rowvar=False))
        normal, basis = _normal_sign(_snap(vecs[:, 0]), pre, post, ves, cleft_c, side_dir, side_basis)
        if vals[2] > ELONGATION * max(vals[1], 1e-12):
            long_axis = _snap(vecs[:, 2])
            skew_sign = float(np.sum(((cleft - cleft_c) @ long_axis) ** 3))
    elif side_dir is not None:
        cleft_c = cleft.mean(axis=0) if len(cleft) else np.zeros(3)
        normal, basis = _snap(side_dir), BASIS_NO_CLEFT
    else:
        return CleftFrame(np.eye(3), BASIS_NONE, "none")

    cue = _in_plane_cue(normal, [ves, pre, post], cleft_c)
    if long_axis is not None:
        s = float(long_axis @ cue) if cue is not None else 0.0
        if abs(s) < 1e-9:
            s = skew_sign
        x_axis, in_plane = (long_axis if s >= 0 else -long_axis), "cleft long axis"
    elif cue is not None:
        x_axis, in_plane = _snap(cue), "in-plane offset of the vesicle/pre/post centroid"
    else:  # nothing in the plane tells directions apart: the volume axis closest to the plane
        ref = np.eye(3)[2 - int(np.argmin(np.abs(normal)[::-1]))]  # ties prefer x
        x_axis, in_plane = _snap(ref - (ref @ normal) * normal), "arbitrary (round cleft, no in-plane cue)"
    y_axis = np.cross(x_axis, normal)  # makes (normal, y, x) a proper rotation in (z, y, x) components
    rot = np.stack([normal, _snap(y_axis), x_axis])
    return CleftFrame(rot, basis, in_plane)


# --------------------------------------------------------------------------------------
# resampling
# --------------------------------------------------------------------------------------
def orient_cube(raw: np.ndarray, bits: np.ndarray, rotation: np.ndarray, *, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``size^3`` raw and bits cubes of the frame ``rotation``, resampled from a larger source cube.

    Output voxel q samples source index ``E//2 + rotation.T @ (q - size//2)`` (E: source edge):
    raw linearly (rounded back to its integer dtype), bits by the nearest voxel, so every bits
    value is one that occurs in the source. An identity rotation returns the centre crop exactly.
    """
    raw = np.asarray(raw)
    E = raw.shape[0]
    if raw.shape != (E, E, E) or np.shape(bits) != raw.shape:
        raise ValueError(f"source cubes must be equal cubes, got raw {raw.shape} and bits {np.shape(bits)}")
    if E < orient_window_edge(size) - 2:
        raise ValueError(f"a {E}^3 source cube cannot hold every rotation of a {size}^3 cube; use orient_window_edge")
    matrix, offset = source_index_affine(rotation, int(size), E)
    shape = (int(size),) * 3
    out = ndimage.affine_transform(raw, matrix, offset, output_shape=shape, order=1, mode="nearest", output=np.float64)
    if np.issubdtype(raw.dtype, np.integer):
        info = np.iinfo(raw.dtype)
        out = np.clip(np.floor(out + 0.5), info.min, info.max)
    raw_o = out.astype(raw.dtype)
    bits_o = ndimage.affine_transform(np.asarray(bits, np.uint8), matrix, offset, output_shape=shape, order=0, mode="nearest")
    return raw_o, bits_o


# --------------------------------------------------------------------------------------
# the record and mapping points
# --------------------------------------------------------------------------------------
def orientation_info(frame: CleftFrame, source: CropBox, pad_value: float) -> dict:
    """The table columns of an oriented cube: the frame, its rotation and the source cube's pads."""
    info: dict = {
        "oriented": True,
        "orientation_basis": frame.basis,
        "orientation_in_plane": frame.in_plane,
        "orient_window": int(source.size),
        "orient_pad_value": float(pad_value),
    }
    for i, a in enumerate(_AXES):
        info[f"orient_pad_{a}_before"] = int(source.pad_before[i])
        info[f"orient_pad_{a}_after"] = int(source.pad_after[i])
    for k, name in enumerate(ROTATION_COLUMNS):
        info[name] = float(frame.rotation.reshape(-1)[k])
    return info


def _centre(info: Mapping) -> np.ndarray:
    return np.array([float(info[f"cube_center_{a}"]) for a in _AXES])


def cube_to_volume(points_zyx: np.ndarray, info: Mapping, size: int) -> np.ndarray:
    """Cube indices (n, 3) (z, y, x) -> volume (cube grid) indices, for plain and oriented cubes."""
    d = np.atleast_2d(np.asarray(points_zyx, dtype=np.float64)) - int(size) // 2
    return _centre(info) + d @ rotation_from_info(info)


def volume_to_cube(points_zyx: np.ndarray, info: Mapping, size: int) -> np.ndarray:
    """Volume (cube grid) indices (n, 3) (z, y, x) -> cube indices: the inverse of :func:`cube_to_volume`."""
    d = np.atleast_2d(np.asarray(points_zyx, dtype=np.float64)) - _centre(info)
    return int(size) // 2 + d @ rotation_from_info(info).T
