"""Convert the real *Drosophila* VNC ssTEM stack into a dataset the pipeline reads (issue 6).

Source: ``stack1`` of the annotated ssTEM dataset of Gerhard, Funke, Martel, Cardona and
Fetter (2013), licensed CC BY-NC-SA 3.0 (non-commercial, attribution, share-alike). It stays
where it is (``../shared/realdata/drosophila_vnc_sstem``); :func:`convert_vnc` writes a
derived copy into a git-ignored folder (``data/vnc``) with the same license and citation::

    <out>/vnc.zarr          zarr v3 group: raw uint8, seg uint32, mask uint8, all (z, y, x)
    <out>/synapses.csv      one row per synapse (seed columns + provenance columns)
    <out>/dataset.yaml      the dataset description :mod:`synapse_nb.data.description` loads
    <out>/README.md         what was derived and how, source, license, citation
    <out>/LICENSE_NOTICE.txt
    <out>/conversion.json   counts and settings of this conversion (also marks the folder)

What is derived, and how
------------------------
Synapse centres
    26-connected 3-D components of the synapse masks (the same components as the source's
    ``synapse_components_stack1.csv``). The centre is the voxel *inside* the component nearest
    (in nm, so the 50 nm sections weigh 11x more than the 4.6 nm pixels) to its centroid: a
    curved cleft's centroid can lie outside it. Ties: the first voxel in C order.
mask (extra labels)
    ``cleft`` = 2 from the synapse masks, ``mito`` = 1 from the mitochondria masks (they never
    overlap in stack1; if they did, cleft would win). There is no vesicle annotation, so the
    dataset YAML declares ``vesicle: 0`` and the types that need vesicle clouds are refused.
    The synapse masks mark the synaptic contact (cleft plus the T-bar region on the membrane),
    not a thin cleft sheet; ``cleft2`` is the same label.
seg (neurite ids)
    Per section, 4-connected components of ``labels == 255`` (intracellular); each
    mitochondrion profile (``labels == 191``) is given to the intracellular component with the
    largest contact along its border, so a neurite contains its mitochondria as in a neurite
    segmentation. Membranes, junctions, glia/extracellular space and synapse pixels stay 0.
    Linking across the ~50 nm sections: two profiles on neighbouring sections get the same id
    only when each is the other's best match by overlap (intersection over union) and that
    IoU is at least ``link_min_iou`` (default 0.5). The 4.6 nm pixels are 11x finer than the
    sections, so neurites shift a lot between sections (median IoU of mutual best matches is
    about 0.55) and linking is unreliable, as the source says. The rule is chosen to split
    rather than merge: with mutual best matches every profile continues into at most one
    profile per neighbouring section, so two neurites can only merge through a wrong match of
    high overlap; a neurite whose profile moves too much is split into pieces instead. Without
    any linking every neurite would be one section (50 nm) thick, which makes the pre/post
    masks flat slabs; ``link_min_iou=None`` gives exactly that (ids unique per section).
Sides (partner neurites)
    On the centre's section, the synapse component's profile is dilated by
    ``contact_radius_px`` pixels; the two distinct neurite ids with the largest number of
    pixels in that ring are the partners. The side point of each is the pixel of that neurite
    within ``side_radius_px`` of the synapse profile that lies deepest inside it (distance to
    its border, capped at ``side_depth_px``), ties going to the pixel nearest the centre, so
    the point is inside the neurite and next to the synapse. With fewer than two partners on
    that section both sides are NaN (``side_status`` says why).
Pre/post
    Cannot be decided: there is no vesicle label and *Drosophila* synapses are polyadic (one
    presynaptic T-bar faces several postsynaptic neurites), so the two partners are simply the
    two largest contacts (side 1 the larger); which one is presynaptic is not known. Segmentation types that need the presynaptic
    side (1, 2, 10, 11) or vesicles (4, 5, 6, 9) cannot be served; 0 (raw), 3 (pre + post =
    both partners, order-free), 7 (cleft) and 8 (mitochondrion) can. The smart crop
    (``crop_mode`` presynapse) is refused for the same reason.

Everything is written into a temporary sibling folder and renamed into place
(:func:`synapse_nb.core.atomic.atomic_dir`), so a crash never leaves half a conversion.
"""
from __future__ import annotations

import json
import logging
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import yaml
from natsort import natsorted
from scipy import ndimage

from ..core import labels as L
from ..core.atomic import atomic_dir
from ..core.errors import DataError
from ..core.progress_bars import progress as progress_bar

logger = logging.getLogger(__name__)

# --- the source (see its ORIGINAL_README.md) -------------------------------------------
STACK = "stack1"
SOURCE_FOLDERS = {"raw": ".tif", "labels": ".png", "synapses": ".png", "mitochondria": ".png"}
VOXEL_SIZE_NM = (50.0, 4.6, 4.6)  # z, y, x: 45-50 nm sections, 4.6 nm pixels
LABEL_INTRACELLULAR = 255
LABEL_SYNAPSE = 223
LABEL_MITO = 191
LABEL_GLIA = 159
LABEL_MEMBRANE = (0, 32, 64, 96, 128)  # four orientations and junctions

# --- what we write ------------------------------------------------------------------------
MASK_MITO = 1
MASK_CLEFT = 2
LABEL_IDS = L.LabelIds(mito=MASK_MITO, vesicle=0, cleft=MASK_CLEFT, cleft2=MASK_CLEFT)
DATASET_NAME = "vnc_stack1"
BBOX = "stack1"
ZARR_NAME = "vnc.zarr"
TABLE_NAME = "synapses.csv"
YAML_NAME = "dataset.yaml"
MARKER_NAME = "conversion.json"
CHUNKS = (4, 256, 256)
#: Segmentation types this dataset can serve (for its README; the refusal itself follows the
#: YAML's labels, see synapse_nb.data.description.refused_types).
SUPPORTED_TYPES = (0, 3, 7, 8)

LICENSE = "CC BY-NC-SA 3.0 (https://creativecommons.org/licenses/by-nc-sa/3.0/)"
CITATION = (
    "Segmented anisotropic ssTEM dataset of neural tissue. Stephan Gerhard, Jan Funke, Julien Martel, "
    "Albert Cardona, Richard Fetter. figshare 2013. doi:10.6084/m9.figshare.856713"
)
SOURCE_URL = "https://github.com/unidesigner/groundtruth-drosophila-vnc"

#: Columns of synapses.csv beyond the seed's (provenance, read by nobody else).
EXTRA_COLUMNS = (
    "synapse_id", "n_voxels", "centroid_z", "centroid_y", "centroid_x",
    "z0", "z1", "y0", "y1", "x0", "x1", "side1_contact_px", "side2_contact_px", "n_partners", "side_status",
)


@dataclass(frozen=True)
class VncSettings:
    """Choices of the conversion (recorded in conversion.json)."""

    link_min_iou: float | None = 0.5
    contact_radius_px: int = 4
    side_radius_px: int = 20
    side_depth_px: int = 6

    def __post_init__(self) -> None:
        if self.link_min_iou is not None and not 0.0 < self.link_min_iou <= 1.0:
            raise ValueError(f"link_min_iou must be in (0, 1] or None (no linking), got {self.link_min_iou!r}")
        for key in ("contact_radius_px", "side_radius_px", "side_depth_px"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be at least 1, got {getattr(self, key)!r}")


@dataclass
class VncStack:
    """The source volumes, indexed (z, y, x)."""

    raw: np.ndarray  # uint8
    labels: np.ndarray  # uint8, 9-class map
    synapse: np.ndarray  # bool
    mito: np.ndarray  # bool
    files: dict[str, list[Path]]


# --------------------------------------------------------------------------------------
# reading the source
# --------------------------------------------------------------------------------------
def source_files(src: str | Path) -> dict[str, list[Path]]:
    """The slice files of each source folder, natural-sorted; errors name what is missing."""
    src = Path(src)
    if not src.is_dir():
        raise DataError(f"VNC source folder not found: {src}; give the drosophila_vnc_sstem folder (it holds {STACK}/)")
    stack = src / STACK
    if not stack.is_dir():
        raise DataError(f"VNC source {src} has no {STACK}/ folder; give the drosophila_vnc_sstem folder")
    files: dict[str, list[Path]] = {}
    for name, suffix in SOURCE_FOLDERS.items():
        folder = stack / name
        if not folder.is_dir():
            raise DataError(f"VNC source is missing the folder {folder} (needs {', '.join(SOURCE_FOLDERS)} under {stack})")
        found = natsorted((p for p in folder.iterdir() if p.suffix.lower() == suffix and not p.name.startswith(".")), key=lambda p: p.name)
        if not found:
            raise DataError(f"no {suffix} slices in {folder}")
        files[name] = found
    counts = {k: len(v) for k, v in files.items()}
    if len(set(counts.values())) > 1:
        detail = ", ".join(f"{stack / k}: {n}" for k, n in counts.items())
        raise DataError(f"VNC source folders hold different numbers of sections ({detail}); every folder needs one file per section")
    return files


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.array(im.convert("L"))
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise DataError(f"cannot read {path}: {exc}") from exc


def _read_tif(path: Path) -> np.ndarray:
    import tifffile

    try:
        arr = tifffile.imread(path)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"cannot read {path}: {exc}") from exc
    if arr.dtype != np.uint8:
        raise DataError(f"{path} has dtype {arr.dtype}; the VNC raw sections are 8-bit gray")
    return arr


def read_stack(src: str | Path, progress: bool = True) -> VncStack:
    """Read stack1 whole (20 x 1024 x 1024, ~100 MB) and check every section's shape."""
    files = source_files(src)
    n = len(files["raw"])
    planes: dict[str, list[np.ndarray]] = {k: [] for k in files}
    shape: tuple[int, ...] | None = None
    first = files["raw"][0]
    with progress_bar(total=n * len(files), desc="reading VNC sections", unit="img", enabled=progress) as bar:
        for kind, paths in files.items():
            for path in paths:
                arr = _read_tif(path) if kind == "raw" else _read_png(path)
                if arr.ndim != 2:
                    raise DataError(f"{path} has shape {arr.shape}; expected a 2-D gray section")
                if shape is None:
                    shape = arr.shape
                elif arr.shape != shape:
                    raise DataError(f"{path} has shape {arr.shape} but {first} has {shape}; all sections must have the same size")
                planes[kind].append(arr)
                bar.update(1)
    labels = np.stack(planes["labels"])
    return VncStack(
        raw=np.stack(planes["raw"]),
        labels=labels,
        synapse=np.stack(planes["synapses"]) > 0,
        mito=np.stack(planes["mitochondria"]) > 0,
        files=files,
    )


# --------------------------------------------------------------------------------------
# synapses: components and centres
# --------------------------------------------------------------------------------------
def synapse_components(synapse: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected 3-D components of the synapse mask (ids 1..n in scan order)."""
    comp, n = ndimage.label(synapse, structure=np.ones((3, 3, 3), dtype=bool))
    return comp.astype(np.int32), int(n)


def component_centres(comp: np.ndarray, n: int, voxel_size_nm: Sequence[float] = VOXEL_SIZE_NM) -> pd.DataFrame:
    """Per component: voxel count, centroid, half-open bounding box and a centre voxel inside it.

    The centre is the component voxel nearest the centroid in nm (anisotropic voxels).
    """
    spacing = np.asarray(voxel_size_nm, dtype=np.float64)
    rows = []
    for k, sl in enumerate(ndimage.find_objects(comp), start=1):
        if sl is None:
            continue
        idx = np.nonzero(comp[sl] == k)
        zyx = np.stack(idx, axis=1) + np.array([s.start for s in sl])
        centroid = zyx.mean(axis=0)
        d2 = (((zyx - centroid) * spacing) ** 2).sum(axis=1)
        cz, cy, cx = (int(v) for v in zyx[int(np.argmin(d2))])
        rows.append(
            {
                "synapse_id": k, "n_voxels": int(len(zyx)),
                "centroid_z": float(centroid[0]), "centroid_y": float(centroid[1]), "centroid_x": float(centroid[2]),
                "z0": sl[0].start, "z1": sl[0].stop, "y0": sl[1].start, "y1": sl[1].stop, "x0": sl[2].start, "x1": sl[2].stop,
                "center_z": cz, "center_y": cy, "center_x": cx,
            }
        )
    if len(rows) != n:
        raise AssertionError(f"found {len(rows)} of {n} synapse components")
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------
# neurite ids
# --------------------------------------------------------------------------------------
def _section_neurites(labels2d: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected intracellular components of one section, mitochondria given to their neurite."""
    seg, n = ndimage.label(labels2d == LABEL_INTRACELLULAR)
    mito = labels2d == LABEL_MITO
    if n == 0 or not mito.any():
        return seg, int(n)
    mcomp, m = ndimage.label(mito)
    ring = ndimage.binary_dilation(mito) & ~mito
    owner_of_ring = seg[ring]
    ring_mito = ndimage.grey_dilation(mcomp, size=(3, 3))[ring]  # the mito profile each ring pixel borders
    keep = (owner_of_ring > 0) & (ring_mito > 0)
    if keep.any():
        key = ring_mito[keep].astype(np.int64) * (n + 1) + owner_of_ring[keep]
        pairs, counts = np.unique(key, return_counts=True)
        mito_id, owner = np.divmod(pairs, n + 1)
        order = np.lexsort((-counts, mito_id))  # per mito profile, the largest contact first
        first = np.ones(len(order), dtype=bool)
        first[1:] = mito_id[order][1:] != mito_id[order][:-1]
        lut = np.zeros(m + 1, dtype=seg.dtype)
        lut[mito_id[order][first]] = owner[order][first]
        seg = np.where(mito, lut[mcomp], seg)
    return seg, int(n)


def _mutual_links(a: np.ndarray, b: np.ndarray, min_iou: float) -> list[tuple[int, int]]:
    """Pairs (id in a, id in b) that are each other's best IoU match with IoU >= min_iou."""
    both = (a > 0) & (b > 0)
    if not both.any():
        return []
    nb = int(b.max()) + 1
    key = a[both].astype(np.int64) * nb + b[both]
    pairs, inter = np.unique(key, return_counts=True)
    ia, ib = np.divmod(pairs, nb)
    size_a = np.bincount(a.ravel())
    size_b = np.bincount(b.ravel())
    iou = inter / (size_a[ia] + size_b[ib] - inter)
    best_for_a = pd.Series(iou).groupby(ia).transform("max").to_numpy()
    best_for_b = pd.Series(iou).groupby(ib).transform("max").to_numpy()
    ok = (iou == best_for_a) & (iou == best_for_b) & (iou >= min_iou)
    links: dict[int, int] = {}
    used_b: set[int] = set()
    for x, y in zip(ia[ok], ib[ok]):  # exact IoU ties: keep the first pair only, never fan out
        if int(x) not in links and int(y) not in used_b:
            links[int(x)] = int(y)
            used_b.add(int(y))
    return list(links.items())


def neurite_ids(labels: np.ndarray, link_min_iou: float | None = 0.5, progress: bool = True) -> np.ndarray:
    """Neurite ids (uint32, 0 = not intracellular) from the 9-class label map; see the module doc."""
    nz = labels.shape[0]
    seg = np.zeros(labels.shape, dtype=np.uint32)
    offsets = [0]
    for z in progress_bar(range(nz), desc="neurite profiles", unit="section", enabled=progress):
        s, n = _section_neurites(labels[z])
        seg[z] = np.where(s > 0, s.astype(np.uint32) + offsets[-1], 0)
        offsets.append(offsets[-1] + n)
    total = offsets[-1]
    if link_min_iou is None or nz < 2:
        return seg
    parent = np.arange(total + 1, dtype=np.int64)  # union-find over global ids

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    n_links = 0
    for z in range(nz - 1):
        a = np.where(seg[z] > 0, seg[z] - offsets[z], 0).astype(np.int64)
        b = np.where(seg[z + 1] > 0, seg[z + 1] - offsets[z + 1], 0).astype(np.int64)
        for x, y in _mutual_links(a, b, link_min_iou):
            ra, rb = find(x + offsets[z]), find(y + offsets[z + 1])
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
                n_links += 1
    roots = np.array([find(i) for i in range(total + 1)], dtype=np.int64)
    _, compact = np.unique(roots, return_inverse=True)  # root 0 stays 0, others 1..K in order
    logger.info("neurite ids: %d profiles in %d sections, %d links, %d ids", total, nz, n_links, int(compact.max()))
    return compact.astype(np.uint32)[seg]


# --------------------------------------------------------------------------------------
# sides
# --------------------------------------------------------------------------------------
def estimate_sides(seg: np.ndarray, comp: np.ndarray, centres: pd.DataFrame, settings: VncSettings = VncSettings()) -> pd.DataFrame:
    """Partner neurites and a side point in each, per synapse (x, y, z voxels; NaN when unknown).

    Returns columns side_1_coord_*, side_2_coord_*, side1_contact_px, side2_contact_px,
    n_partners and side_status, one row per row of ``centres``.
    """
    r, R = settings.contact_radius_px, settings.side_radius_px
    disk_r = _disk(r)
    disk_R = _disk(R)
    rows = []
    for rec in centres.itertuples(index=False):
        z, cy, cx = int(rec.center_z), int(rec.center_y), int(rec.center_x)
        pad = R + settings.side_depth_px + 2
        y0, y1 = max(int(rec.y0) - pad, 0), min(int(rec.y1) + pad, seg.shape[1])
        x0, x1 = max(int(rec.x0) - pad, 0), min(int(rec.x1) + pad, seg.shape[2])
        prof = comp[z, y0:y1, x0:x1] == rec.synapse_id
        seg_w = seg[z, y0:y1, x0:x1]
        ring = ndimage.binary_dilation(prof, structure=disk_r) & ~prof
        ids, counts = np.unique(seg_w[ring], return_counts=True)
        counts, ids = counts[ids > 0], ids[ids > 0]
        order = np.lexsort((ids, -counts))[:2]  # largest contact first, ties: smaller id
        row: dict = {"n_partners": int(len(ids))}
        if len(order) < 2:
            row["side_status"] = f"{len(ids)} neurite(s) touch the synapse on section z={z}: sides unknown"
            for k in (1, 2):
                row.update({f"side_{k}_coord_{i}": np.nan for i in (1, 2, 3)}, **{f"side{k}_contact_px": np.nan})
            if len(ids) == 1:
                row["side1_contact_px"] = int(counts[0])
            rows.append(row)
            continue
        near = ndimage.binary_dilation(prof, structure=disk_R)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        dist_c = (yy - cy) ** 2 + (xx - cx) ** 2
        for k, j in enumerate(order, start=1):
            inside = seg_w == ids[j]
            depth = np.minimum(ndimage.distance_transform_edt(inside), settings.side_depth_px)
            cand = np.flatnonzero((inside & near).ravel())
            best = cand[np.lexsort((dist_c.ravel()[cand], -depth.ravel()[cand]))[0]]
            py, px = np.unravel_index(best, inside.shape)
            row.update({f"side_{k}_coord_1": float(px + x0), f"side_{k}_coord_2": float(py + y0), f"side_{k}_coord_3": float(z)})
            row[f"side{k}_contact_px"] = int(counts[j])
        row["side_status"] = "ok" if len(ids) == 2 else f"ok: {len(ids)} neurites touch the synapse, the two largest contacts kept"
        rows.append(row)
    return pd.DataFrame(rows)


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return (yy**2 + xx**2) <= radius**2


# --------------------------------------------------------------------------------------
# the mask and the table
# --------------------------------------------------------------------------------------
def label_mask(synapse: np.ndarray, mito: np.ndarray) -> np.ndarray:
    """Extra-label volume: cleft (2) from the synapse mask, mito (1) from the mito mask; cleft wins."""
    mask = np.zeros(synapse.shape, dtype=np.uint8)
    mask[mito] = MASK_MITO
    mask[synapse] = MASK_CLEFT
    return mask


def synapse_table(centres: pd.DataFrame, sides: pd.DataFrame) -> pd.DataFrame:
    """The seed's columns (x, y, z voxels; sides may be NaN) followed by provenance columns."""
    table = pd.DataFrame(
        {
            L.NAME_COLUMN: [f"syn{k:02d}" for k in centres["synapse_id"]],
            L.CENTER_COLUMNS[0]: centres["center_x"].to_numpy(),
            L.CENTER_COLUMNS[1]: centres["center_y"].to_numpy(),
            L.CENTER_COLUMNS[2]: centres["center_z"].to_numpy(),
        }
    )
    for cols, k in ((L.SIDE1_COLUMNS, 1), (L.SIDE2_COLUMNS, 2)):
        for i, col in enumerate(cols, start=1):
            table[col] = sides[f"side_{k}_coord_{i}"].to_numpy(dtype=float)
    for col in EXTRA_COLUMNS:
        source = centres if col in centres else sides
        table[col] = source[col].to_numpy()
    return table


# --------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------
def _write_zarr(path: Path, arrays: dict[str, np.ndarray]) -> None:
    import zarr

    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.attrs.update(
        {"axes": ["z", "y", "x"], "voxel_size_nm": list(VOXEL_SIZE_NM), "source": SOURCE_URL, "license": LICENSE, "citation": CITATION}
    )
    for name, arr in arrays.items():
        chunks = tuple(min(c, s) for c, s in zip(CHUNKS, arr.shape))
        z = group.create_array(name=name, shape=arr.shape, dtype=arr.dtype, chunks=chunks, fill_value=0)
        z[...] = arr


def dataset_description() -> dict:
    """The dataset YAML contract (paths relative to the YAML's folder)."""
    ids = LABEL_IDS.as_dict()
    return {
        "name": DATASET_NAME,
        "voxel_size_nm": [float(v) for v in VOXEL_SIZE_NM],
        "columns": {
            "name": L.NAME_COLUMN,
            "center": list(L.CENTER_COLUMNS),
            "side1": list(L.SIDE1_COLUMNS),
            "side2": list(L.SIDE2_COLUMNS),
        },
        "bboxes": {
            BBOX: {
                "raw": {"path": ZARR_NAME, "key": "raw"},
                "seg": {"path": ZARR_NAME, "key": "seg"},
                "mask": {"path": ZARR_NAME, "key": "mask"},
                "table": TABLE_NAME,
                "labels": {k: int(ids[k]) for k in ("mito", "vesicle", "cleft", "cleft2")},
            }
        },
    }


def _yaml_text() -> str:
    header = (
        "# Drosophila L3 VNC ssTEM, stack1, converted by `python -m synapse_nb convert-vnc`.\n"
        f"# License: {LICENSE}; non-commercial use only, derivatives carry the same license.\n"
        f"# Cite: {CITATION}\n"
        "# vesicle: 0 = not annotated; sides are estimated partner neurites, pre/post unknown (see README.md).\n"
    )
    return header + yaml.safe_dump(dataset_description(), sort_keys=False, default_flow_style=None)


def _readme_text(stats: dict, settings: VncSettings) -> str:
    link = "not linked (ids unique per section)" if settings.link_min_iou is None else (
        f"linked between neighbouring sections only for mutual best matches with IoU >= {settings.link_min_iou}"
    )
    return f"""# Drosophila VNC ssTEM (stack1), converted for synapse-nb

Derived from the annotated ssTEM dataset of the *Drosophila melanogaster* third-instar larva
ventral nerve cord, `stack1` of {SOURCE_URL}.

**License: {LICENSE}.** Non-commercial use only, with attribution; this derived folder carries
the same license. Delete it if the project is or becomes commercial.

**Cite:** {CITATION}

Do not commit this folder; rebuild it with `python -m synapse_nb convert-vnc --src <source> --out <here>`.

## Contents
- `{ZARR_NAME}`: zarr v3 group, arrays `raw` (uint8), `seg` (uint32 neurite ids), `mask` (uint8:
  {MASK_MITO} = mitochondrion, {MASK_CLEFT} = synapse/cleft), shape (z, y, x) = {tuple(stats['shape'])},
  voxel {VOXEL_SIZE_NM[0]} x {VOXEL_SIZE_NM[1]} x {VOXEL_SIZE_NM[2]} nm (z, y, x).
- `{TABLE_NAME}`: {stats['n_synapses']} synapses, coordinates x, y, z in voxels of the arrays above.
- `{YAML_NAME}`: the dataset description synapse-nb reads (`dataset:` parameter).
- `{MARKER_NAME}`: counts and settings of this conversion.

## What was derived, and what could not be
- Synapse centres: 26-connected 3-D components of the synapse masks; the centre is the voxel of
  the component nearest its centroid (in nm).
- Cleft label: the synapse masks (they mark the contact incl. the T-bar region, not a thin sheet).
- Mitochondria label: the mitochondria masks.
- Vesicle clouds: **not annotated**; `vesicle: 0` in the YAML.
- Neurite ids: per-section 4-connected components of the intracellular class, mitochondria
  given to the neurite around them; {link}. Linking across 50 nm sections is unreliable: this
  rule splits rather than merges. {stats['n_neurite_profiles']} profiles, {stats['n_section_links']} links,
  {stats['n_neurite_ids']} ids.
- Sides: the two neurites with the largest contact with the synapse profile (dilated by
  {settings.contact_radius_px} px) on the centre's section; the side point lies inside each, within
  {settings.side_radius_px} px of the synapse. {stats['n_sides_nan']} of {stats['n_synapses']} synapses have fewer than
  two partners there and NaN sides.
- Pre/post: **cannot be decided** (no vesicle label; Drosophila synapses are polyadic, one
  presynaptic T-bar faces several postsynaptic neurites). Side 1 is the larger contact, side 2 the
  next; which of them is presynaptic is not known.

Segmentation types this dataset can serve: {', '.join(str(t) for t in SUPPORTED_TYPES)}
(raw, pre + post = both partners, cleft, mitochondrion). Types needing vesicle clouds (4, 5, 6, 9)
or the presynaptic side (1, 2, 10, 11) are refused.
"""


def _license_text() -> str:
    return (
        "This folder is derived from 'Segmented anisotropic ssTEM dataset of neural tissue' (stack1),\n"
        f"{SOURCE_URL}.\n\n"
        f"License: {LICENSE}.\n"
        "Non-commercial use only, with attribution; derivatives must carry the same license.\n\n"
        f"Required citation: {CITATION}\n"
    )


def _check_out(out: Path, src: Path) -> None:
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise DataError(f"output folder {out} lies inside the source {src}; the source stays unchanged, choose another folder")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER_NAME).is_file())):
        raise DataError(f"refusing to overwrite {out}: it exists and is not a previous VNC conversion (no {MARKER_NAME}); choose another folder")


def convert_vnc(src: str | Path, out: str | Path, progress: bool = True, settings: VncSettings = VncSettings()) -> Path:
    """Convert the VNC source folder into ``out`` (see the module doc); returns the dataset YAML."""
    src, out = Path(src), Path(out)
    _check_out(out, src)
    stack = read_stack(src, progress=progress)
    comp, n = synapse_components(stack.synapse)
    if n == 0:
        raise DataError(f"no synapse in {src / STACK / 'synapses'}: every mask is empty")
    centres = component_centres(comp, n)
    seg = neurite_ids(stack.labels, settings.link_min_iou, progress=progress)
    n_profiles = int(sum(len(np.unique(seg[z])) - 1 for z in range(seg.shape[0])))
    sides = estimate_sides(seg, comp, centres, settings)
    table = synapse_table(centres, sides)
    mask = label_mask(stack.synapse, stack.mito)
    n_nan = int(table[L.SIDE1_COLUMNS[0]].isna().sum())
    stats = {
        "shape": list(stack.raw.shape),
        "n_synapses": int(n),
        "n_sides_nan": n_nan,
        "n_neurite_ids": int(seg.max()),
        "n_neurite_profiles": n_profiles,
        "n_section_links": n_profiles - int(seg.max()),
        "cleft_voxels": int(np.count_nonzero(mask == MASK_CLEFT)),
        "mito_voxels": int(np.count_nonzero(mask == MASK_MITO)),
        "settings": asdict(settings),
        "source": str(src.resolve()),
        "source_files": {k: [p.name for p in v] for k, v in stack.files.items()},
        "supported_segmentation_types": list(SUPPORTED_TYPES),
        "python": platform.python_version(),
    }
    with atomic_dir(out) as tmp:
        _write_zarr(tmp / ZARR_NAME, {"raw": stack.raw, "seg": seg, "mask": mask})
        table.to_csv(tmp / TABLE_NAME, index=False)
        (tmp / YAML_NAME).write_text(_yaml_text(), encoding="utf-8")
        (tmp / "README.md").write_text(_readme_text(stats, settings), encoding="utf-8")
        (tmp / "LICENSE_NOTICE.txt").write_text(_license_text(), encoding="utf-8")
        (tmp / MARKER_NAME).write_text(json.dumps(stats, indent=2), encoding="utf-8")
    logger.info(
        "VNC stack converted to %s: %d synapses (%d without sides), %d neurite ids", out, n, n_nan, stats["n_neurite_ids"]
    )
    return out / YAML_NAME
