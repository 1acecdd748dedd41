"""Where a synapse's cleft centre and side points fall in its cube, and how slices mark them.

A montage of grey planes does not say which neurite is which. The cube table keeps what is
needed to find the table's points again: the centre and side points (x, y, z in the volume's
native voxels), the grid the cube was cut from (``resampled``, ``native_voxel_*_nm``,
``cube_voxel_*_nm``), the cube centre and, for oriented cubes, the rotation. The points are
mapped as :mod:`synapse_nb.cubes.build` maps them (native -> cube grid, rounded half up), then
into the cube by :func:`synapse_nb.cubes.orientation.volume_to_cube`. Side points are labelled
"pre" / "post" where the synapse's side is decided, else "1" / "2"
(:func:`synapse_nb.cubes.prepost.partner_labels`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..core import labels as L
from ..cubes.orientation import volume_to_cube
from ..cubes.prepost import partner_labels
from ..data.volumes import native_to_target

if TYPE_CHECKING:
    import matplotlib.axes

#: Marker colours: the cleft centre, decided partners, undecided sides.
MARK_COLORS = {"cleft": "#ffd400", "pre": "#ff3b5c", "post": "#35b6ff", "1": "#ff9f1c", "2": "#2ee6b6"}
#: (row axis, column axis) of the image of each plane, axes numbered z, y, x = 0, 1, 2.
PLANE_AXES = {"z": (1, 2), "y": (0, 2), "x": (0, 1)}
_AXIS = {"z": 0, "y": 1, "x": 2}


@dataclass(frozen=True, eq=False)
class CubeMarker:
    """One point of a synapse in its cube's voxels (z, y, x; may lie outside the cube)."""

    kind: str  # "cleft", "side1" or "side2"
    label: str  # "cleft", "pre" / "post", or "1" / "2" when the side is undecided
    zyx: np.ndarray


@dataclass(frozen=True)
class PlaneMark:
    """A marker on one plane image: pixel row and column, and whether the point lies in the slice
    (else it is projected onto it from another depth)."""

    kind: str
    label: str
    row: float
    col: float
    in_slice: bool

    @property
    def color(self) -> str:
        return MARK_COLORS.get(self.label, MARK_COLORS["cleft"])


def marker_note(polarity_known: bool) -> str:
    """The legend line montages print under their title."""
    sides = "side points pre / post (1 / 2 where undecided)" if polarity_known else "side points 1 / 2 (pre/post undecided)"
    return f"markers: + cleft centre, o {sides}; hollow = projected from another depth"


def _grid_point(row: Mapping[str, Any], columns: Sequence[str]) -> np.ndarray | None:
    """A table point (x, y, z native voxels) as the (z, y, x) cube-grid voxel the build used."""
    try:
        xyz = np.array([float(row[c]) for c in columns], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        return None
    if not np.all(np.isfinite(xyz)):
        return None
    zyx = xyz[::-1]
    resampled = row.get("resampled", False)
    if isinstance(resampled, (bool, np.bool_)) and bool(resampled):
        native = [float(row[f"native_voxel_{a}_nm"]) for a in "zyx"]
        zyx = native_to_target(zyx, native, float(row["cube_voxel_z_nm"]))
    return np.floor(zyx + 0.5)


def cube_markers(row: Mapping[str, Any] | pd.Series, size: int, *, known: bool = True) -> list[CubeMarker]:
    """The cleft centre and the side points of one cube-table row, in that cube's voxels.

    Without the table's centre columns a cleft-centred plain cube still gets its centre; a row
    without ``cube_center_*`` (not a cube table) gets no marker. ``known`` is the table's
    :func:`synapse_nb.cubes.prepost.polarity_known`.
    """
    row = dict(row)
    if not all(f"cube_center_{a}" in row for a in "zyx"):
        return []
    points = {"cleft": _grid_point(row, L.CENTER_COLUMNS), "side1": _grid_point(row, L.SIDE1_COLUMNS),
              "side2": _grid_point(row, L.SIDE2_COLUMNS)}
    labels = {"cleft": "cleft", **dict(zip(("side1", "side2"), partner_labels(row, known=known, short=True)))}
    out = []
    for kind, p in points.items():
        if p is None:
            if kind == "cleft" and row.get("crop_mode", "cleft") == "cleft" and not bool(row.get("oriented", False)):
                out.append(CubeMarker(kind, labels[kind], np.full(3, float(int(size) // 2))))
            continue
        out.append(CubeMarker(kind, labels[kind], volume_to_cube(p, row, int(size))[0]))
    return out


def plane_marks(markers: Sequence[CubeMarker], axis: str, depth: int, size: int) -> list[PlaneMark]:
    """The markers that fall on the plane ``axis`` = ``depth`` of a ``size``-voxel cube: in the
    slice (within half a voxel) or projected onto it; points outside the plane's extent are left out."""
    r, c = PLANE_AXES[axis]
    out = []
    for m in markers:
        row, col = float(m.zyx[r]), float(m.zyx[c])
        if not (-0.5 <= row <= size - 0.5 and -0.5 <= col <= size - 0.5):
            continue
        out.append(PlaneMark(m.kind, m.label, row, col, bool(abs(float(m.zyx[_AXIS[axis]]) - depth) <= 0.5)))
    return out


def draw_marks(ax: "matplotlib.axes.Axes", marks: Sequence[PlaneMark], *, fontsize: float = 6, size: float = 5) -> None:
    """Draw ``marks`` on an image axes (the image keeps its extent). Each marker is a line whose
    gid is ``snb-mark-<kind>`` and whose label is the marker's text."""
    xlim, ylim = ax.get_xlim(), ax.get_ylim()
    for m in marks:
        cross = m.kind == "cleft"
        ax.plot([m.col], [m.row], linestyle="none", marker="+" if cross else "o", markersize=size + (2 if cross else 0),
                markeredgewidth=1.2, color=m.color, markerfacecolor=m.color if (m.in_slice and not cross) else "none",
                alpha=1.0 if m.in_slice else 0.75, gid=f"snb-mark-{m.kind}", label=m.label)
        if not cross:
            ax.annotate(m.label, (m.col, m.row), xytext=(3, 3), textcoords="offset points", color=m.color,
                        fontsize=fontsize, fontweight="bold", gid=f"snb-mark-{m.kind}-text")
    ax.set_xlim(xlim)
    ax.set_ylim(ylim)
