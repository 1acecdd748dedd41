"""Building cubes: the two entry points that turn volumes and synapse tables into cubes.

:func:`build_synapse` cuts one synapse out of lazy volumes: it reads one local window per
volume, decides pre/post (:mod:`.prepost`), places the cube (:mod:`.geometry`), paints the
structure bits, pads and measures it. :func:`build_cubes` does that for every synapse of a
dataset and gathers a :class:`~.store.CubeSet`, recording the synapses it has to skip. The
rules they follow are explained in ``docs/cubes.md``.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..core import labels as L
from ..core.errors import DataError
from ..core.progress_bars import progress as progress_bar
from ..data.bbox import BboxData
from ..data.volumes import target_to_native
from .components import closest_component
from .connectome import (
    AGREES_COLUMN,
    FROM_TABLE,
    Partners,
    partner_points,
    sides_missing,
    table_partners,
    table_polarity,
)
from .descriptors import Annotated, measure_cube
from .geometry import (
    CropBox,
    CubeGeometry,
    CubeGrid,
    LabelWindows,
    SynapseError,
    bbox_grid,
    check_points,
    crop_centre,
    decision_box,
    fmt_extent,
    fmt_xyz,
    label_window,
    round_half_up,
    valid_mask_from_pads,
)
from .morphometry import add_physical_units
from .orientation import cleft_frame, orient_cube, orientation_info
from .prepost import PartnerSides, PrePost, check_sides, decide_pre_post, far_side_reasons
from .rendering import RenderSettings, render
from .store import CubeSet

logger = logging.getLogger(__name__)


@dataclass
class SynapseCube:
    """One synapse: raw cube, structure bits and what was decided while building it."""

    raw: np.ndarray  # (S,S,S) native dtype, padded where the cube leaves the volume
    bits: np.ndarray  # (S,S,S) uint8 structure bits (labels.BIT_*)
    valid: np.ndarray | None = None  # not stored: see valid_mask() (the pads describe it)
    info: dict = field(default_factory=dict)

    def valid_mask(self) -> np.ndarray:
        """Boolean (S,S,S): True where the cube lies inside the volume."""
        return valid_mask_from_pads(self.raw.shape[0], self.info)

    def render(self, settings: RenderSettings) -> np.ndarray:
        return render(self.raw, self.bits, settings)


# --------------------------------------------------------------------------------------
# one synapse
# --------------------------------------------------------------------------------------
def build_synapse(
    raw,
    seg,
    mask,
    center_xyz: Sequence[float],
    side1_xyz: Sequence[float],
    side2_xyz: Sequence[float],
    ids: L.LabelIds,
    geometry: CubeGeometry = CubeGeometry(),
    *,
    bbox: str | None = None,
    synapse: str | None = None,
    table_row: int | None = None,
    voxel_nm: tuple[float, float, float] = (8.0, 8.0, 8.0),
    annotated: Annotated | None = None,
    windows: LabelWindows | None = None,
    partners: Partners | None = None,
) -> SynapseCube:
    """Cut one synapse out of lazy volumes indexed [z, y, x]; coordinates are (x, y, z).

    Reads one window per volume (see ``docs/cubes.md``). ``voxel_nm`` (z, y, x) is the cube's
    voxel for the descriptors; ``annotated`` says which structures the dataset annotates
    (None: from ``ids`` and which volumes are given). ``windows``: the label window
    (:func:`.geometry.label_window` of the centre) when the caller has read it already, so it is
    not read twice. ``partners``: the (pre, post) ids a connectome table names, for the polarity
    rule of :func:`.connectome.table_polarity`. Raises :class:`SynapseError`
    naming ``bbox``, ``synapse`` and ``table_row`` when the synapse cannot be built.
    """
    where = _where(bbox, synapse, table_row)
    shape = _check_shapes(where, raw, seg, mask)
    c, s1, s2 = check_points(where, shape, center_xyz, side1_xyz, side2_xyz)
    box = label_window(c, geometry, shape)
    if windows is None:
        windows = LabelWindows.read(seg, mask, box)
    elif not (np.array_equal(windows.box.lo, box.lo) and np.array_equal(windows.box.hi, box.hi)):
        raise ValueError(f"{where}: the label window given is not the synapse's {box.lo}..{box.hi}")
    sides = PartnerSides(s1, s2, windows.seg_id_at(s1), windows.seg_id_at(s2))
    reasons = check_sides(where, sides, has_seg=seg is not None)
    reasons += far_side_reasons(where, sides, c, int(geometry.size))
    decision = windows.crop(decision_box(c, int(geometry.size), shape))
    prepost = decide_pre_post(sides, decision, c, ids)
    agrees = None
    if partners is not None:
        vesicle_known = mask is not None and int(ids.vesicle) != 0
        prepost, agrees = table_polarity(prepost, partners, vesicle_known=vesicle_known)
    center, fallback = crop_centre(geometry, c, decision, prepost.pre_id)
    reasons += [*prepost.reasons, *([fallback] if fallback else [])]

    crop = _place_cube(where, center, int(geometry.size), shape, windows)
    raw_v = _read_raw(where, raw, crop)
    same_region = bool(
        np.all(crop.inside.lo == decision.box.lo) and np.all(crop.inside.hi == decision.box.hi) and np.all(center == c)
    )
    known = {int(ids.vesicle): prepost.vesicle} if same_region else {}  # same region, same target: reuse
    bits_v = _paint_structure_bits(windows.crop(crop.inside), prepost, ids, crop.target, known)
    raw_cube, bits, pad_value = _pad_into_cube(raw_v, bits_v, crop)
    info = _synapse_info(prepost, reasons, geometry.crop_mode, crop, pad_value)
    if partners is not None:
        info[AGREES_COLUMN] = agrees
    # voxel morphometrics and descriptors, one call (docs/cubes.md, "Descriptors")
    info.update(measure_cube(raw_cube, bits, voxel_nm=voxel_nm, annotated=annotated or _annotated(ids, seg, mask)))
    if geometry.orient:  # everything above is measured on the plain cube; the rotated one is stored
        raw_cube, bits, oriented = _oriented_cube(where, raw, windows, prepost, ids, center, geometry, shape)
        info.update(oriented)
    return SynapseCube(raw=raw_cube, bits=bits, valid=None, info=info)


def _oriented_cube(
    where: str,
    raw,
    windows: LabelWindows,
    prepost: PrePost,
    ids: L.LabelIds,
    center: np.ndarray,
    geometry: CubeGeometry,
    shape: tuple[int, int, int],
) -> tuple[np.ndarray, np.ndarray, dict]:
    """The cube rotated into the synapse's frame and its table columns (:mod:`.orientation`).

    The larger source cube around the same centre is built like the plain one (same pre/post,
    bits, padding), so every voxel of the rotated cube is sampled from real or padded data.
    """
    source = _place_cube(where, center, geometry.source_edge, shape, windows)
    raw_s, bits_s, pad_value = _pad_into_cube(
        _read_raw(where, raw, source),
        _paint_structure_bits(windows.crop(source.inside), prepost, ids, source.target, {}),
        source,
    )
    # side points as offsets from the cube centre (the source cube's centre voxel)
    s1, s2 = (None if p is None else p - center for p in (prepost.sides.point1, prepost.sides.point2))
    frame = cleft_frame(bits_s, size=int(geometry.size), pre_side=prepost.pre_side, side1=s1, side2=s2)
    raw_o, bits_o = orient_cube(raw_s, bits_s, frame.rotation, size=int(geometry.size))
    return raw_o, bits_o, orientation_info(frame, source, pad_value)


def _annotated(ids: L.LabelIds, seg, mask) -> Annotated:
    """What a synapse's volumes annotate: label ids that are not 0, a seg volume for the partners."""
    return Annotated.from_ids(ids, has_seg=seg is not None, has_mask=mask is not None)


def _where(bbox, synapse, table_row) -> str:
    """How error messages name a synapse: bbox, synapse and (if known) table row."""
    parts = [f"bbox {bbox if bbox is not None else '?'}", f"synapse {synapse if synapse is not None else '?'}"]
    if table_row is not None:
        parts.append(f"table row {table_row}")
    return ", ".join(parts)


def _check_shapes(where: str, raw, seg, mask) -> tuple[int, int, int]:
    """The common (z, y, x) shape of the volumes; :class:`SynapseError` if they differ."""
    shape = tuple(int(s) for s in raw.shape)
    if len(shape) != 3:
        raise SynapseError(f"{where}: raw volume must be 3-D (z, y, x), got shape {shape}")
    other = {k: tuple(v.shape) for k, v in (("seg", seg), ("mask", mask)) if v is not None}
    if any(v != shape for v in other.values()):
        detail = ", ".join(f"{k} {v}" for k, v in other.items())
        raise SynapseError(f"{where}: raw {shape} and {detail} volumes differ in shape; fix the input volumes")
    return shape  # type: ignore[return-value]


def _place_cube(
    where: str, center: np.ndarray, size: int, shape: tuple[int, int, int], windows: LabelWindows
) -> CropBox:
    """The cube around ``center``; it must touch the volume and lie within the label windows."""
    crop = CropBox.around(center, size, shape)
    if not crop.overlaps_volume:
        raise SynapseError(
            f"{where}: the cube around {fmt_xyz(center)} does not overlap the volume {fmt_extent(shape)}"
        )
    if not windows.box.contains(crop.inside):  # cannot happen by construction
        raise AssertionError(
            f"{where}: cube {crop.lo}..{crop.hi} escapes the window {windows.box.lo}..{windows.box.hi}"
        )
    return crop


def _read_raw(where: str, raw, crop: CropBox) -> np.ndarray:
    """The raw voxels of the cube's in-volume part (the only raw read of a synapse)."""
    raw_v = np.asarray(raw[crop.inside.slices()])
    if raw_v.size == 0:
        raise SynapseError(f"{where}: empty raw window around {fmt_xyz(crop.center)}; check the raw volume")
    return raw_v


def _paint_structure_bits(
    labels: LabelWindows, prepost: PrePost, ids: L.LabelIds, target: np.ndarray, known: dict[int, np.ndarray]
) -> np.ndarray:
    """Structure bits of the cube's in-volume part; components closest to ``target`` win.

    ``known`` holds closest components already computed for this same region and target.
    """
    shape = labels.box.shape
    bits_v = np.zeros(shape, dtype=np.uint8)
    seg_c, mask_c = labels.seg, labels.mask

    def put(sel: np.ndarray, bit: int) -> None:
        np.bitwise_or(bits_v, np.uint8(bit), out=bits_v, where=sel)

    def closest(label: int) -> np.ndarray:
        label = int(label)
        if label == 0 or mask_c is None:  # 0 = not annotated, never the background
            return np.zeros(shape, dtype=bool)
        if label not in known:
            known[label] = closest_component(mask_c == label, target)
        return known[label]

    if prepost.pre_id:
        put(seg_c == prepost.pre_id, L.BIT_PRE)
    if prepost.post_id:
        put(seg_c == prepost.post_id, L.BIT_POST)
    put(closest(ids.vesicle), L.BIT_VESICLE)
    put(closest(ids.cleft), L.BIT_CLEFT)
    put(closest(ids.cleft2), L.BIT_CLEFT2)
    mito_any = (mask_c == ids.mito) if (mask_c is not None and int(ids.mito) != 0) else np.zeros(shape, dtype=bool)
    if mito_any.any():
        put(mito_any, L.BIT_MITO_ANY)
        put(closest_component(mito_any, target), L.BIT_MITO)
    return bits_v


def _pad_into_cube(raw_v: np.ndarray, bits_v: np.ndarray, crop: CropBox) -> tuple[np.ndarray, np.ndarray, float]:
    """Full ``S^3`` raw and bits cubes and the raw pad value recorded (NaN when not padded).

    Labels are padded with 0, raw with the mean of the in-volume raw voxels (rounded half up
    for integer dtypes), so padding never changes the cube's min-max.
    """
    if not crop.padded:
        return np.ascontiguousarray(raw_v), bits_v, float("nan")
    if np.issubdtype(raw_v.dtype, np.integer):
        pad_value = int(round_half_up(raw_v.mean()))
    else:
        pad_value = float(raw_v.mean())
    S = crop.size
    inner = crop.inner_slices()
    raw_cube = np.full((S, S, S), pad_value, dtype=raw_v.dtype)
    raw_cube[inner] = raw_v
    bits = np.zeros((S, S, S), dtype=np.uint8)
    bits[inner] = bits_v
    return raw_cube, bits, float(pad_value)


def _synapse_info(prepost: PrePost, reasons: list[str], crop_mode: str, crop: CropBox, pad_value: float) -> dict:
    """What was decided for a synapse, as one table row (morphometrics are added after)."""
    info: dict = {
        "pre_side": int(prepost.pre_side),
        "pre_seg_id": int(prepost.pre_id),
        "post_seg_id": int(prepost.post_id),
        "side1_seg_id": int(prepost.sides.id1),
        "side2_seg_id": int(prepost.sides.id2),
        "overlap_side1": int(prepost.overlap1),
        "overlap_side2": int(prepost.overlap2),
        "ambiguous": any(r != FROM_TABLE for r in reasons),  # a polarity the table gives is no doubt
        "ambiguity_reason": "; ".join(reasons),
        "crop_mode": crop_mode,
        "cube_center_z": int(crop.center[0]),
        "cube_center_y": int(crop.center[1]),
        "cube_center_x": int(crop.center[2]),
    }
    pad_before, pad_after = crop.pad_before, crop.pad_after
    for i, a in enumerate("zyx"):
        info[f"pad_{a}_before"] = int(pad_before[i])
        info[f"pad_{a}_after"] = int(pad_after[i])
    info["pad_value"] = pad_value
    return info


# --------------------------------------------------------------------------------------
# a dataset
# --------------------------------------------------------------------------------------
SKIPPED_COLUMNS = (L.BBOX_COLUMN, L.NAME_COLUMN, "table_row", "reason")


def build_cubes(
    bboxes: Sequence[BboxData],
    geometry: CubeGeometry = CubeGeometry(),
    voxel_size_nm: Sequence[float] = (8.0, 8.0, 8.0),
    progress: bool = True,
    target_voxel_nm: float | None = None,
) -> CubeSet:
    """Build the cubes of every synapse of every bbox.

    ``voxel_size_nm`` is the data's voxel size for bboxes that carry none of their own
    (``BboxData.voxel_size_nm``, set by dataset descriptions). With ``target_voxel_nm`` set
    (> 0) and a different data voxel size, every synapse's windows are resampled to that
    isotropic grid (see :mod:`synapse_nb.data.volumes`): table points are mapped exactly onto
    it (voxel centres coincide physically) and the cube is built there unchanged.

    A synapse that raises :class:`SynapseError` (or a :class:`DataError` while reading its
    window) is recorded in ``skipped`` with the reason and the others continue. If no synapse
    can be built at all, :class:`DataError` lists the first reasons.
    """
    grids, cube_voxel = _cube_grids(bboxes, voxel_size_nm, target_voxel_nm, geometry)
    out = _CubeBuffers.allocate(sum(len(b.table) for b in bboxes), int(geometry.size), _raw_dtype(bboxes))
    offset = 0
    with progress_bar(total=out.total, desc="synapse cubes", unit="syn", enabled=progress) as bar:
        for b, grid in zip(bboxes, grids):
            _build_table(b, b.table, grid, geometry, out, offset, lambda: bar.update(1))
            offset += len(b.table)
            _release_reader_caches(b)
    return out.to_cubeset(geometry, cube_voxel)


def build_rows(
    bbox: BboxData,
    rows: pd.DataFrame,
    geometry: CubeGeometry = CubeGeometry(),
    *,
    voxel_size_nm: Sequence[float] = (8.0, 8.0, 8.0),
    target_voxel_nm: float | None = None,
    progress: bool = False,
) -> CubeSet:
    """The cubes of some rows of one bbox's table (a batch of a connectome), built as
    :func:`build_cubes` builds them, in the order given.

    ``rows`` carry the table's columns (``table_row`` included). Rows naming partner ids
    (``pre_id`` / ``post_id``) without side points get their side points from the segmentation
    (:mod:`.connectome`). Unlike :func:`build_cubes`, a batch where nothing can be built gives
    an empty :class:`CubeSet` (0 rows, every row in ``skipped``): a batch is one part of a run.
    """
    grids, cube_voxel = _cube_grids([bbox], voxel_size_nm, target_voxel_nm, geometry)
    out = _CubeBuffers.allocate(len(rows), int(geometry.size), _raw_dtype([bbox]))
    with progress_bar(total=out.total, desc="synapse cubes", unit="syn", enabled=progress) as bar:
        _build_table(bbox, rows, grids[0], geometry, out, 0, lambda: bar.update(1))
    _release_reader_caches(bbox)
    return out.to_cubeset(geometry, cube_voxel, columns=[*rows.columns, L.BBOX_COLUMN], allow_empty=True)


def _cube_grids(
    bboxes: Sequence[BboxData], voxel_size_nm: Sequence[float], target_voxel_nm: float | None, geometry: CubeGeometry
) -> tuple[list[CubeGrid], tuple[float, float, float]]:
    """The grid of every bbox and the one voxel size all their cubes share."""
    if not bboxes:
        raise DataError("no bboxes to build cubes from: select at least one bbox")
    voxel_size = tuple(float(v) for v in voxel_size_nm)
    if len(voxel_size) != 3 or min(voxel_size) <= 0:
        raise DataError(f"voxel_size_nm must be three positive numbers (z, y, x), got {voxel_size_nm!r}")
    grids = [bbox_grid(b, voxel_size, target_voxel_nm) for b in bboxes]  # type: ignore[arg-type]
    cube_voxels = {g.voxel_nm for g in grids}
    if len(cube_voxels) > 1:
        detail = ", ".join(f"{b.name}: {g.voxel_nm}" for b, g in zip(bboxes, grids))
        raise DataError(
            f"bboxes have different voxel sizes ({detail}); set target_voxel_nm to resample them to one isotropic grid"
        )
    cube_voxel = cube_voxels.pop()
    if geometry.orient and len(set(cube_voxel)) > 1:
        raise DataError(
            f"oriented cubes need isotropic voxels, the cubes' voxel is {cube_voxel} nm (z, y, x); "
            "set target_voxel_nm to resample them or turn orient_cubes off"
        )
    return grids, cube_voxel


def _raw_dtype(bboxes: Sequence[BboxData]) -> np.dtype:
    """The dtype that holds the raw voxels of every bbox."""
    return np.result_type(*(np.dtype(getattr(b.raw, "dtype", np.uint8)) for b in bboxes))


def _build_table(
    b: BboxData,
    table: pd.DataFrame,
    grid: CubeGrid,
    geometry: CubeGeometry,
    out: _CubeBuffers,
    offset: int,
    tick: Callable[[], object],
) -> None:
    """Build every synapse of ``table`` (rows of bbox ``b``) into ``out``, from row ``offset`` on.

    Synapses are visited in z order, so neighbouring windows share slices and a lazy slice
    reader opens each slice about once per bbox; results keep the table order.
    """
    records = table.to_dict("records")
    grid_info = grid.table_info()
    z = [_safe_float(r.get(L.CENTER_COLUMNS[2])) for r in records]
    for j in np.argsort(np.asarray(z), kind="stable"):
        rec = records[j]
        i = offset + int(j)
        try:
            cube = _build_record(b, grid, rec, geometry)
        except (SynapseError, DataError) as exc:
            logger.warning("skipped synapse: %s", exc)
            name, trow = rec.get(L.NAME_COLUMN), rec.get("table_row")
            out.skip(i, {L.BBOX_COLUMN: b.name, L.NAME_COLUMN: name, "table_row": trow, "reason": str(exc)})
        else:
            out.put(i, cube, {**rec, L.BBOX_COLUMN: b.name, **cube.info, **grid_info})
        tick()


def _build_record(b: BboxData, grid: CubeGrid, rec: dict, geometry: CubeGeometry) -> SynapseCube:
    """The cube of one table row of bbox ``b``, built on ``grid``.

    A row naming partner ids but no side points (a connectome table) gets its side points from
    the label window, which is then handed to :func:`build_synapse` so it is read once.
    """
    name = rec.get(L.NAME_COLUMN)
    trow = rec.get("table_row")
    points = [[rec.get(k, np.nan) for k in cols] for cols in (L.CENTER_COLUMNS, L.SIDE1_COLUMNS, L.SIDE2_COLUMNS)]
    t = grid.target_voxel_nm
    label = b.name if t is None else f"{b.name} (on its {t:g} nm resampled grid)"
    if t is not None:
        # check in the table's own (native) voxels, so errors quote its numbers
        check_points(_where(b.name, name, trow), tuple(b.raw.shape), *points)  # type: ignore[attr-defined]
        points = [grid.to_grid(p) for p in points]
    partners = table_partners(rec)
    windows = None
    found: dict = {}
    if partners is not None and partners != (None, None) and grid.seg is not None and sides_missing(rec):
        where = _where(label, name, trow)
        shape = _check_shapes(where, grid.raw, grid.seg, grid.mask)
        c = check_points(where, shape, points[0], None, None)[0]
        windows = LabelWindows.read(grid.seg, grid.mask, label_window(c, geometry, shape))
        points[1], points[2] = partner_points(where, windows, c, partners, grid.voxel_nm)  # type: ignore[call-overload]
        found = _found_side_columns(grid, points[1], points[2])
    cube = build_synapse(
        grid.raw,
        grid.seg,
        grid.mask,
        *points,
        b.label_ids,
        geometry,
        bbox=label,
        synapse=name,
        table_row=trow,
        voxel_nm=grid.voxel_nm,
        annotated=_annotated(b.label_ids, b.seg, b.mask),
        windows=windows,
        partners=partners,
    )
    if partners is not None:  # where the side points came from, and (when found) where they are
        cube.info.update({SIDE_POINTS_COLUMN: "partner ids" if windows is not None else "table", **found})
    return cube


SIDE_POINTS_COLUMN = "side_points_from"


def _found_side_columns(grid: CubeGrid, p1: list[float] | None, p2: list[float] | None) -> dict:
    """Side points found from partner ids as table columns, in the table's (native) voxels."""
    out: dict = {}
    for cols, p in ((L.SIDE1_COLUMNS, p1), (L.SIDE2_COLUMNS, p2)):
        if p is None:
            continue
        xyz = np.asarray(p, dtype=np.float64)
        if grid.target_voxel_nm is not None:
            xyz = target_to_native(xyz[::-1], grid.native_voxel_nm, grid.target_voxel_nm)[::-1]
        out.update({c: float(v) for c, v in zip(cols, xyz)})
    return out


@dataclass
class _CubeBuffers:
    """Cubes and table rows of a dataset while they are built, in table order."""

    raw: np.ndarray  # (total,S,S,S)
    bits: np.ndarray
    rows: list[dict | None]  # None: not (yet) built
    skipped: list[tuple[int, dict]] = field(default_factory=list)

    @classmethod
    def allocate(cls, total: int, size: int, dtype: np.dtype) -> _CubeBuffers:
        S = int(size)
        return cls(
            raw=np.empty((total, S, S, S), dtype=dtype),
            bits=np.empty((total, S, S, S), dtype=np.uint8),
            rows=[None] * total,
        )

    @property
    def total(self) -> int:
        return len(self.rows)

    def put(self, i: int, cube: SynapseCube, row: dict) -> None:
        self.raw[i] = cube.raw
        self.bits[i] = cube.bits
        self.rows[i] = row

    def skip(self, i: int, reason: dict) -> None:
        self.skipped.append((i, reason))

    def to_cubeset(
        self,
        geometry: CubeGeometry,
        voxel_size_nm: tuple[float, float, float],
        *,
        columns: Sequence[str] = (),
        allow_empty: bool = False,
    ) -> CubeSet:
        """The cube set of the built synapses; :class:`DataError` if none could be built, unless
        ``allow_empty`` (then an empty set with ``columns``)."""
        ok = np.array([r is not None for r in self.rows], dtype=bool)
        n = int(ok.sum())
        skipped = [r for _, r in sorted(self.skipped, key=lambda item: item[0])]
        skipped_df = pd.DataFrame(skipped, columns=list(SKIPPED_COLUMNS))
        if n == 0 and not allow_empty:
            detail = "; ".join(skipped_df["reason"].head(3))
            raise DataError(f"no synapse cube could be built ({len(skipped_df)} skipped). First reasons: {detail}")
        if skipped:
            logger.warning("%d of %d synapses skipped; see CubeSet.skipped", len(skipped), self.total)
        raw_all, bits_all = (self.raw, self.bits) if n == self.total else (self.raw[ok], self.bits[ok])
        if n == 0:
            table = pd.DataFrame(columns=list(dict.fromkeys(columns)))
        else:
            table = add_physical_units(pd.DataFrame([r for r in self.rows if r is not None]), voxel_size_nm)
        # readable column order: identity, input columns, then what was computed
        first = [c for c in (L.BBOX_COLUMN, L.NAME_COLUMN, "table_row") if c in table]
        table = table[first + [c for c in table.columns if c not in first]]
        return CubeSet(
            raw=raw_all, bits=bits_all, table=table, skipped=skipped_df, geometry=geometry, voxel_size_nm=voxel_size_nm
        )


def _release_reader_caches(b: BboxData) -> None:
    """Drop the lazy readers' cached slices once a bbox (or batch) is done (keeps peak RSS to ~one bbox)."""
    for vol in (b.raw, b.seg, b.mask):
        if vol is not None:
            _release_reader_cache(vol)


def _release_reader_cache(volume) -> None:
    """Drop a lazy reader's cached slices once its bbox is done (keeps peak RSS to ~one bbox)."""
    clear = getattr(volume, "clear_cache", None)
    if callable(clear):
        clear()


def _safe_float(v) -> float:
    """A z coordinate to sort by; anything not a finite number sorts last."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.inf
    return f if math.isfinite(f) else math.inf
