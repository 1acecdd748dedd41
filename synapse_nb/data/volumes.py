"""One lazy reader for every volume format users hold, plus per-window resampling.

:func:`open_volume` turns a folder of 2-D slices, an HDF5 dataset, a zarr (v2 / v3, incl.
OME-Zarr) array, an N5 dataset, a multi-page TIFF, a layer of a local webKnossos dataset or a
neuroglancer precomputed volume into a :class:`Volume`: a read-only
(z, y, x) array-like that reads only the window asked for, so a volume larger than memory
works (cube building reads a few windows around each synapse).

Documented choices
------------------
Format
    Inferred from the path: ``.h5/.hdf5/.hdf`` (or the HDF5 signature) -> ``hdf5``;
    ``.tif/.tiff`` file -> ``tiff``; a folder named ``*.zarr`` or holding ``zarr.json`` /
    ``.zarray`` / ``.zgroup`` -> ``zarr``; ``*.n5`` or ``attributes.json`` -> ``n5``; a folder
    of ``.tif/.tiff/.png`` slices -> ``slices``; a folder holding ``datasource-properties.json``
    -> ``webknossos``; a folder holding an ``info`` JSON of ``@type``
    ``neuroglancer_multiscale_volume`` (or a ``file://`` URL of one) -> ``precomputed``.
    ``fmt`` overrides the guess.
Keys
    HDF5 needs ``key`` (the dataset path; the error lists the datasets present). A zarr or N5
    group needs ``key`` (array path) unless it is OME-Zarr: then level 0 of its first
    ``multiscales`` entry is read, and ``key`` may name another level (its dataset path, or
    its index). A webKnossos dataset needs ``key`` (the layer name); ``mag`` picks the
    magnification ("1", "2-2-1"; default: the layer's finest). A precomputed volume takes an
    optional ``key`` (a sub-folder holding the ``info``); ``mag`` is its scale index or scale
    key (default: scale 0).
Global voxels
    webKnossos and precomputed volumes are seen in global voxels of their magnification: the
    volume spans from voxel 0 to the end of the stored data, and voxels outside the stored
    box (a layer that starts at an offset) read as 0. Their voxel size (dataset voxel size
    times the mag; the scale's resolution) is the ``voxel_size_hint_nm``.
Axes
    Volumes are 3-D (z, y, x). Leading axes of size 1 (OME-Zarr ``t``/``c``) are dropped; a
    trailing axis of 3 or 4 channels is RGB(A): raw goes to luma gray, labels take channel 0
    (as :mod:`synapse_nb.data.slices` does for slices). N5 lists dimensions fastest-first (x, y, z,
    the Java convention); they are reversed to (z, y, x) like zarr 2's N5 store and z5py do.
    webKnossos arrays are (c, x, y, z) and precomputed ones (x, y, z, c): both are presented
    as (z, y, x) (with a trailing channel axis when there are several channels).
N5
    Read through TensorStore (zarr 3 has no N5 store); its chunk cache is off, so memory stays
    at the window read.
Resampling (:class:`ResampledVolume`)
    Voxel-centre convention: native index ``i`` on an axis of voxel size ``v`` sits at
    physical ``(i + 0.5) * v`` nm from the volume's corner, target index ``j`` at
    ``(j + 0.5) * t``; so ``i = (j + 0.5) * t / v - 0.5``. The resampled grid has
    ``floor(N * v / t + 0.5)`` voxels per axis (the count that best covers the same extent).
    Raw is interpolated linearly (separable 1-D interpolation per axis = trilinear, the same
    values as ``scipy.ndimage.map_coordinates(order=1, mode="nearest")``, which the tests
    check), integer raw is rounded back to its dtype; labels take the nearest native voxel
    with ties rounded up (``floor(i + 0.5)``), so they only ever take existing values.
    Outside the outermost native voxel centres values are held (``mode="nearest"``). No
    anti-alias smoothing: typical EM downsampling factors are below 2.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .slices import LUMA, SliceStack, list_slices
from .chunk_cache import ChunkCache
from ..core.errors import DataError, shorten

logger = logging.getLogger(__name__)

FORMATS = ("slices", "hdf5", "zarr", "n5", "tiff", "webknossos", "precomputed")
FORMAT_ALIASES = {
    "h5": "hdf5", "hdf": "hdf5", "ome-zarr": "zarr", "omezarr": "zarr", "tif": "tiff", "png": "slices", "folder": "slices",
    "wk": "webknossos", "wkw": "webknossos", "neuroglancer": "precomputed", "neuroglancer_precomputed": "precomputed",
}
#: Formats whose volumes have several magnifications (``mag`` picks one).
MAG_FORMATS = ("webknossos", "precomputed")
_WK_MARKER = "datasource-properties.json"
_PRECOMPUTED_TYPE = "neuroglancer_multiscale_volume"
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
TIFF_SUFFIXES = (".tif", ".tiff")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup")
_MAX_LISTED = 20


# --------------------------------------------------------------------------------------
# the lazy volume
# --------------------------------------------------------------------------------------
def _to_gray(arr: np.ndarray, kind: str) -> np.ndarray:
    """(..., C) -> (...): raw RGB(A) to luma gray in its own dtype, labels to channel 0."""
    if kind == "raw" and arr.shape[-1] >= 3:
        gray = arr[..., :3].astype(np.float32) @ LUMA.astype(np.float32)
        if np.issubdtype(arr.dtype, np.integer):
            info = np.iinfo(arr.dtype)
            return np.clip(np.rint(gray), info.min, info.max).astype(arr.dtype)
        return gray.astype(arr.dtype)
    return np.ascontiguousarray(arr[..., 0])


def _index_plan(key: Any, shape: Sequence[int]) -> tuple[list[int], list[int], list[Any]]:
    """Split a basic index into a contiguous window (lo, hi) and what to apply to it after."""
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is Ellipsis for k in key):
        i = next(n for n, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (len(shape) - len(key) + 1) + key[i + 1 :]
    if len(key) > len(shape):
        raise IndexError(f"too many indices ({len(key)}) for a {len(shape)}-D volume")
    key = key + (slice(None),) * (len(shape) - len(key))
    lo, hi, post = [], [], []
    for k, n in zip(key, shape):
        if isinstance(k, (int, np.integer)) and not isinstance(k, bool):
            i = int(k) + (n if int(k) < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"index {int(k)} is out of range for an axis of size {n}")
            a, b, after = i, i + 1, 0
        elif isinstance(k, slice):
            r = range(*k.indices(n))
            if len(r) == 0:
                a, b, after = 0, 0, slice(None)
            else:
                a, b = min(r[0], r[-1]), max(r[0], r[-1]) + 1
                after = slice(None) if r.step == 1 else np.asarray(r, dtype=np.int64) - a
        else:
            raise TypeError(f"volumes take integers and slices only, got {k!r}")
        lo.append(a)
        hi.append(b)
        post.append(after)
    return lo, hi, post


def _apply_post(arr: np.ndarray, post: list[Any]) -> np.ndarray:
    """Integers drop their axis, index arrays apply a step (last axis first: indices stay valid)."""
    for axis in reversed(range(len(post))):
        if not isinstance(post[axis], slice):
            arr = np.take(arr, post[axis], axis=axis)
    return arr


class Volume:
    """A read-only, lazy (z, y, x) volume: ``vol[z0:z1, y0:y1, x0:x1]`` returns numpy.

    Only the asked window (the chunks it touches) is read from disk. ``voxels_read`` counts
    the voxels returned (for tests and benchmarks that prove no whole-volume read happens).
    ``voxel_size_hint_nm`` is the voxel size (z, y, x) the file's own metadata states
    (OME-Zarr), else None; :func:`synapse_nb.data.description.open_bbox` warns when a description
    disagrees with it.
    """

    ndim = 3

    def __init__(
        self,
        source: Any,
        *,
        path: Path,
        fmt: str,
        key: str | None = None,
        kind: str = "raw",
        lead: int = 0,
        channels: bool = False,
        closer: Callable[[], None] | None = None,
        voxel_size_hint_nm: tuple[float, float, float] | None = None,
    ) -> None:
        self._source = source
        self.path = Path(path)
        self.fmt = fmt
        self.key = key
        self.kind = kind
        self._lead = lead
        self._channels = channels
        self._closer = closer
        full = tuple(int(s) for s in source.shape)
        self.shape: tuple[int, int, int] = full[lead : lead + 3]  # type: ignore[assignment]
        self.dtype = np.dtype(source.dtype)
        self.voxel_size_hint_nm = voxel_size_hint_nm
        self.voxels_read = 0
        self.reads = 0
        self._chunks: ChunkCache | None = None

    def cache_chunks(self, max_bytes: int, chunk: Sequence[int] | None = None) -> None:
        """Keep up to ``max_bytes`` of recently read storage chunks (``chunk``: the file's own,
        else 64^3), so windows of neighbouring synapses are read from the store once; 0 turns
        it off. ``voxels_read`` and ``reads`` then count what the store delivered."""
        if max_bytes <= 0:
            self._chunks = None
            return
        self._chunks = ChunkCache(self._read_store, self.shape, tuple(chunk or self.chunk_shape or (64, 64, 64)),
                                  max_bytes)

    def prefetch(self, boxes: Sequence[tuple[Sequence[int], Sequence[int]]], threads: int = 8) -> int:
        """Fetch the chunks of the windows ``boxes`` ((lo, hi) in z, y, x) concurrently into the
        chunk cache (nothing without one); returns the number of chunks fetched."""
        return self._chunks.prefetch(boxes, threads) if self._chunks is not None else 0

    @property
    def where(self) -> str:
        return f"{self.path}" + (f" (key {self.key!r})" if self.key else "")

    def __len__(self) -> int:
        return self.shape[0]

    def _read(self, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
        if any(b <= a for a, b in zip(lo, hi)):
            return np.zeros(tuple(max(0, b - a) for a, b in zip(lo, hi)), dtype=self.dtype)
        if self._chunks is not None:
            return self._chunks.read(lo, hi)
        return self._read_store(lo, hi)

    def _read_store(self, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
        sel = (0,) * self._lead + tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        if self._channels:
            sel = sel + (slice(None),)
        try:
            arr = np.asarray(self._source[sel])
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - re-raised naming the file
            raise DataError(f"cannot read window {list(lo)}..{list(hi)} of volume {self.where}: {exc}") from exc
        if self._channels:
            arr = _to_gray(arr, self.kind)
        self.reads += 1
        self.voxels_read += int(arr.size)
        return arr

    def read_window(self, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
        """Voxels [lo, hi) (z, y, x), clipped to the volume; nothing is padded."""
        lo_c = [min(max(int(a), 0), n) for a, n in zip(lo, self.shape)]
        hi_c = [min(max(int(b), a), n) for a, b, n in zip(lo_c, hi, self.shape)]
        return self._read(lo_c, hi_c)

    def __getitem__(self, key: Any) -> np.ndarray:
        lo, hi, post = _index_plan(key, self.shape)
        return _apply_post(self._read(lo, hi), post)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        arr = self._read((0, 0, 0), self.shape)
        return arr.astype(dtype) if dtype is not None else arr

    @property
    def chunk_shape(self) -> tuple[int, int, int] | None:
        """The storage chunk (z, y, x) of the file (the unit a read fetches), None without one."""
        chunks = getattr(self._source, "chunks", None)
        try:
            out = tuple(int(c) for c in chunks[self._lead : self._lead + 3])  # type: ignore[index]
        except (TypeError, ValueError):
            return None
        return out if len(out) == 3 and min(out) > 0 else None  # type: ignore[return-value]

    def clear_cache(self) -> None:
        """Forget cached slices (slice folders keep a small cache of opened slices) and chunks."""
        if self._chunks is not None:
            self._chunks.clear()
        clear = getattr(self._source, "clear_cache", None)
        if callable(clear):
            clear()

    def close(self) -> None:
        if self._closer is not None:
            self._closer()
            self._closer = None

    def __repr__(self) -> str:
        return f"Volume({self.fmt}: {self.where}, shape={self.shape}, dtype={self.dtype})"


# --------------------------------------------------------------------------------------
# format detection and the backends
# --------------------------------------------------------------------------------------
def detect_format(path: str | Path) -> str:
    """The format of ``path`` from its suffix or contents (see the module doc)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"volume not found: {p}")
    suffix = p.suffix.lower()
    if p.is_file():
        if suffix in HDF5_SUFFIXES:
            return "hdf5"
        if suffix in TIFF_SUFFIXES:
            return "tiff"
        with open(p, "rb") as f:
            if f.read(8) == _HDF5_SIGNATURE:
                return "hdf5"
        raise DataError(
            f"unknown volume format for {p}: expected .h5/.hdf5/.hdf, .tif/.tiff, a .zarr or .n5 folder, a webKnossos "
            f"dataset or precomputed folder, or a folder of .tif/.png slices; give the format explicitly (one of {list(FORMATS)})"
        )
    if (p / _WK_MARKER).is_file():
        return "webknossos"
    if _read_json(p / "info").get("@type") == _PRECOMPUTED_TYPE:
        return "precomputed"
    if suffix == ".zarr" or any((p / m).is_file() for m in _ZARR_MARKERS):
        return "zarr"
    if suffix == ".n5" or (p / "attributes.json").is_file():
        return "n5"
    if list_slices(p):
        return "slices"
    raise DataError(
        f"unknown volume format for folder {p}: no zarr / N5 metadata, no webKnossos or precomputed metadata and no "
        ".tif/.tiff/.png slices in it; "
        f"give the format explicitly (one of {list(FORMATS)})"
    )


def _shape_plan(shape: tuple[int, ...], where: str) -> tuple[int, bool]:
    """(leading size-1 axes to drop, trailing RGB axis?) that make ``shape`` 3-D, or an error."""
    dims = list(shape)
    channels = len(dims) >= 4 and dims[-1] in (3, 4)
    core = dims[:-1] if channels else dims
    lead = 0
    while len(core) - lead > 3 and core[lead] == 1:
        lead += 1
    if len(core) - lead != 3:
        raise DataError(
            f"volume {where} has shape {tuple(shape)}; expected a 3-D (z, y, x) volume "
            "(optionally with leading axes of size 1 or a trailing RGB channel axis)"
        )
    return lead, channels


def _make(source: Any, path: Path, fmt: str, key: str | None, kind: str, closer=None, hint=None) -> Volume:
    where = f"{path}" + (f" (key {key!r})" if key else "")
    lead, channels = _shape_plan(tuple(source.shape), where)
    return Volume(source, path=path, fmt=fmt, key=key, kind=kind, lead=lead, channels=channels, closer=closer, voxel_size_hint_nm=hint)


def _listing(names: list[str]) -> str:
    shown = names[:_MAX_LISTED]
    more = f" and {len(names) - len(shown)} more" if len(names) > len(shown) else ""
    return (", ".join(repr(n) for n in shown) or "none") + more


def _open_slices(path: Path, key: str | None, kind: str) -> Volume:
    if key:
        raise DataError(f"volume {path} is a folder of slices: it takes no key (got {key!r})")
    stack = SliceStack(path, kind="raw" if kind == "raw" else "label")
    return Volume(stack, path=path, fmt="slices", kind=kind)


def _open_hdf5(path: Path, key: str | None, kind: str) -> Volume:
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"cannot open HDF5 file {path}: {exc}") from exc
    names: list[str] = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    if not key:
        f.close()
        raise DataError(f"HDF5 file {path} needs a key naming the dataset to read; datasets present: {_listing(names)}")
    node = f.get(key)
    if not isinstance(node, h5py.Dataset):
        f.close()
        raise DataError(f"HDF5 file {path} has no dataset {key!r}; datasets present: {_listing(names)}")
    try:
        return _make(node, path, "hdf5", key, kind, closer=f.close)
    except DataError:
        f.close()
        raise


def _ome_multiscales(attrs: dict) -> list | None:
    ms = attrs.get("multiscales")
    if ms is None and isinstance(attrs.get("ome"), dict):  # OME-Zarr 0.5 nests it under "ome"
        ms = attrs["ome"].get("multiscales")
    return ms if isinstance(ms, list) and ms else None


_UNIT_NM = {"nanometer": 1.0, "nm": 1.0, "micrometer": 1000.0, "um": 1000.0, "micron": 1000.0, "angstrom": 0.1}


def _ome_voxel_nm(ms: dict, level: dict) -> tuple[float, float, float] | None:
    """Voxel size (z, y, x) nm of one OME-Zarr level when its axes carry spatial units."""
    try:
        axes = ms["axes"]
        scale = next(t["scale"] for t in level.get("coordinateTransformations", []) if t.get("type") == "scale")
        by_name = {a["name"]: (float(s), _UNIT_NM.get(str(a.get("unit", "")).lower())) for a, s in zip(axes, scale)}
        out = []
        for name in "zyx":
            s, unit = by_name[name]
            if unit is None:
                return None
            out.append(s * unit)
        return (out[0], out[1], out[2])
    except (KeyError, TypeError, StopIteration, ValueError):
        return None


def _zarr_arrays(group) -> list[str]:
    import zarr

    try:
        return sorted(name for name, node in group.members(max_depth=None) if isinstance(node, zarr.Array))
    except Exception:  # noqa: BLE001 - listing is only for the error message
        return []


def _open_zarr(path: Path, key: str | None, kind: str) -> Volume:
    import zarr

    try:
        node = zarr.open(store=str(path), mode="r")
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"cannot open zarr {path}: {exc}") from exc
    hint = None
    if isinstance(node, zarr.Array):
        if key:
            raise DataError(f"zarr {path} is an array, not a group: it takes no key (got {key!r})")
        return _make(node, path, "zarr", None, kind)
    group = node
    ms = _ome_multiscales(dict(group.attrs))
    if key:
        levels = ms[0].get("datasets", []) if ms else []
        level = next((lv for lv in levels if str(lv.get("path")) == key), None)
        try:
            child = group[key]
        except KeyError:
            child = None
            if key.isdigit() and int(key) < len(levels):  # a level given by its index
                level = levels[int(key)]
                child = group[level["path"]]
        if child is None:
            raise DataError(f"zarr {path} has no array {key!r}; arrays present: {_listing(_zarr_arrays(group))}")
        if isinstance(child, zarr.Array):
            if ms and level is not None:
                hint = _ome_voxel_nm(ms[0], level)
            return _make(child, path, "zarr", key, kind, hint=hint)
        group, prefix = child, key.rstrip("/") + "/"
        ms = _ome_multiscales(dict(group.attrs))
    else:
        prefix = ""
    if not ms:
        raise DataError(
            f"zarr {path}" + (f" group {key!r}" if key else "") + " is a group without OME-Zarr multiscales metadata: "
            f"give key, the path of the array to read; arrays present: {_listing(_zarr_arrays(group))}"
        )
    levels = ms[0].get("datasets") or []
    if not levels or "path" not in levels[0]:
        raise DataError(f"zarr {path}: its OME-Zarr multiscales metadata lists no datasets; give key, the array to read")
    level0 = str(levels[0]["path"])
    try:
        arr = group[level0]
    except KeyError:
        raise DataError(f"zarr {path}: OME-Zarr level 0 {level0!r} is missing; arrays present: {_listing(_zarr_arrays(group))}") from None
    hint = _ome_voxel_nm(ms[0], levels[0])
    return _make(arr, path, "zarr", prefix + level0, kind, hint=hint)


class _TensorStoreArray:
    """numpy-style window reads on a TensorStore, axes reversed to (z, y, x)."""

    def __init__(self, store: Any) -> None:
        self._store = store.T
        self.shape = tuple(int(s) for s in self._store.shape)
        self.dtype = np.dtype(self._store.dtype.numpy_dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self._store[key].read().result())

    @property
    def chunks(self) -> tuple[int, ...] | None:
        shape = self._store.chunk_layout.read_chunk.shape
        return tuple(int(c) for c in shape) if shape is not None else None


def _n5_datasets(root: Path, limit: int = 200) -> list[str]:
    """Dataset paths under an N5 root; block folders (numeric names) are never walked."""
    out: list[str] = []
    todo = [root]
    while todo and len(out) < limit:
        d = todo.pop()
        attrs = _read_json(d / "attributes.json")
        if "dimensions" in attrs:
            out.append(d.relative_to(root).as_posix())
            continue
        todo.extend(sorted((c for c in d.iterdir() if c.is_dir() and not c.name.isdigit()), reverse=True))
    return sorted(out)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _open_n5(path: Path, key: str | None, kind: str) -> Volume:
    target = path / key if key else path
    if not target.is_dir() or "dimensions" not in _read_json(target / "attributes.json"):
        what = f"has no dataset {key!r}" if key else "is an N5 group: give key, the path of the dataset to read"
        raise DataError(f"N5 container {path} {what}; datasets present: {_listing(_n5_datasets(path))}")
    try:
        import tensorstore as ts
    except ImportError as exc:  # pragma: no cover - tensorstore is a dependency
        raise DataError(f"reading N5 ({path}) needs the tensorstore package: pip install tensorstore") from exc
    spec = {
        "driver": "n5",
        "kvstore": {"driver": "file", "path": str(target.resolve())},
        "context": {"cache_pool": {"total_bytes_limit": 0}},
    }
    try:
        store = ts.open(spec, read=True).result()
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"cannot open N5 dataset {target}: {exc}") from exc
    return _make(_TensorStoreArray(store), path, "n5", key, kind)


def _open_tiff(path: Path, key: str | None, kind: str) -> Volume:
    import tifffile
    import zarr

    if key:
        raise DataError(f"TIFF file {path} takes no key (got {key!r})")
    try:
        tif = tifffile.TiffFile(path)
        series = tif.series[0]
        store = series.aszarr()
        node = zarr.open(store=store, mode="r")
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"cannot read TIFF {path}: {exc}") from exc
    if isinstance(node, zarr.Group):  # pyramidal TIFF: level 0
        node = node["0"]

    def closer() -> None:
        store.close()
        tif.close()

    try:
        return _make(node, path, "tiff", None, kind, closer=closer)
    except DataError:
        closer()
        raise


def _padded(read: Callable[[list[int], list[int]], np.ndarray], key: Any, origin: Sequence[int], end: Sequence[int],
            out_shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Read the (z, y, x) slices ``key`` (step 1) of data stored in [origin, end): zeros outside."""
    lo = [int(k.start) for k in key[:3]]
    hi = [int(k.stop) for k in key[:3]]
    a = [max(x, o) for x, o in zip(lo, origin)]
    b = [min(x, e) for x, e in zip(hi, end)]
    if all(x == o for x, o in zip(lo, a)) and all(x == e for x, e in zip(hi, b)):
        return read(lo, hi)
    out = np.zeros(tuple(h - l for l, h in zip(lo, hi)) + out_shape, dtype=dtype)
    if all(y > x for x, y in zip(a, b)):
        out[tuple(slice(x - l, y - l) for x, y, l in zip(a, b, lo))] = read(a, b)
    return out


class _WebknossosArray:
    """One mag of a webKnossos layer as a (z, y, x[, c]) array in that mag's global voxels.

    Windows are read with the MagView read API (coordinates in mag 1, data (c, x, y, z)).
    """

    def __init__(self, mag_view: Any, num_channels: int) -> None:
        self._view = mag_view
        self._mag = np.asarray(mag_view.mag.to_list(), dtype=np.int64)  # x, y, z
        self._channels = int(num_channels)
        bottom = np.asarray(mag_view.bounding_box.bottomright.to_list(), dtype=np.int64)  # mag 1, x, y, z
        zyx = tuple(int(v) for v in (-(-bottom // self._mag))[::-1])
        self.shape = zyx + ((self._channels,) if self._channels > 1 else ())
        self.dtype = np.dtype(mag_view.get_dtype())
        self.chunks = tuple(int(v) for v in mag_view.info.chunk_shape.to_list()[::-1])

    def __getitem__(self, key: Any) -> np.ndarray:
        wk = import_webknossos()

        lo = np.array([int(k.start) for k in key[:3]][::-1], dtype=np.int64)  # x, y, z of this mag
        hi = np.array([int(k.stop) for k in key[:3]][::-1], dtype=np.int64)
        box = wk.BoundingBox(tuple(int(v) for v in lo * self._mag), tuple(int(v) for v in (hi - lo) * self._mag))
        data = np.asarray(self._view.read(absolute_bounding_box=box))  # (c, x, y, z), zeros outside the data
        if self._channels > 1:
            return np.ascontiguousarray(data.transpose(3, 2, 1, 0))
        return np.ascontiguousarray(data[0].transpose(2, 1, 0))


def import_webknossos() -> Any:
    """The ``webknossos`` package, imported without its start-up network call (it asks PyPI for
    a newer version in a background thread unless told not to: nothing here goes online) and
    without its warnings about optional image readers it lacks."""
    import os
    import warnings

    os.environ.setdefault("WEBKNOSSOS_SKIP_VERSION_CHECK", "True")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import webknossos as wk
    return wk


def _open_webknossos(path: Path, key: str | None, kind: str, mag: str | int | None = None) -> Volume:
    try:
        wk = import_webknossos()
    except ImportError as exc:  # pragma: no cover - webknossos is a dependency of connectome reading
        raise DataError(f"reading the webKnossos dataset {path} needs the webknossos package: pip install webknossos") from exc
    try:
        ds = wk.Dataset.open(path)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"cannot open webKnossos dataset {path}: {shorten(exc, 200)}") from None
    layers = sorted(ds.layers)
    if not key:
        raise DataError(f"webKnossos dataset {path} needs a key naming the layer to read; layers present: {_listing(layers)}")
    if key not in ds.layers:
        raise DataError(f"webKnossos dataset {path} has no layer {key!r}; layers present: {_listing(layers)}")
    layer = ds.get_layer(key)
    mags = [m.to_layer_name() for m in sorted(layer.mags)]
    if not mags:
        raise DataError(f"webKnossos dataset {path}, layer {key!r} has no mag on disk")
    try:
        view = layer.get_finest_mag() if mag is None or str(mag) == "" else layer.get_mag(mag)
    except Exception:  # noqa: BLE001 - IndexError for an absent mag, ValueError for a malformed one
        raise DataError(f"webKnossos dataset {path}, layer {key!r} has no mag {str(mag)!r}; mags present: {_listing(mags)}") from None
    factor = np.asarray(ds.voxel_size_with_unit.to_nanometer().to_list(), dtype=np.float64)  # x, y, z
    hint = tuple(float(v) for v in (factor * np.asarray(view.mag.to_list()))[::-1])
    return _make(_WebknossosArray(view, layer.num_channels), path, "webknossos", key, kind, hint=hint)  # type: ignore[arg-type]


class _PrecomputedArray:
    """A neuroglancer precomputed scale (x, y, z, c) as (z, y, x[, c]) in global voxels."""

    def __init__(self, store: Any) -> None:
        import tensorstore as ts

        channels = int(store.domain.shape[3])
        self._channels = channels
        zyx = store[ts.d["z", "y", "x", "channel"].transpose[:]]
        self._store = zyx if channels > 1 else zyx[..., 0]
        dom = store.domain
        self._origin = [int(dom.inclusive_min[i]) for i in (2, 1, 0)]
        self._end = [int(dom.exclusive_max[i]) for i in (2, 1, 0)]
        self.shape = tuple(self._end) + ((channels,) if channels > 1 else ())
        self.dtype = np.dtype(store.dtype.numpy_dtype)
        chunk = store.chunk_layout.read_chunk.shape
        self.chunks = tuple(int(chunk[i]) for i in (2, 1, 0)) if chunk is not None else None

    def _read(self, lo: list[int], hi: list[int]) -> np.ndarray:
        sel = tuple(slice(a, b) for a, b in zip(lo, hi))
        return np.asarray(self._store[sel].read().result())

    def __getitem__(self, key: Any) -> np.ndarray:
        extra = (self._channels,) if self._channels > 1 else ()
        return _padded(self._read, key, self._origin, self._end, extra, self.dtype)


def _open_precomputed(path: Path, key: str | None, kind: str, mag: str | int | None = None) -> Volume:
    folder = path / key if key else path
    info = _read_json(folder / "info")
    if info.get("@type") != _PRECOMPUTED_TYPE:
        raise DataError(
            f"precomputed volume {folder} has no info file of @type {_PRECOMPUTED_TYPE!r}"
            + (f" (key {key!r})" if key else "")
            + "; give the folder that holds the info file"
        )
    scales = info.get("scales") or []
    keys = [str(s.get("key")) for s in scales]
    if mag is None or str(mag) == "":
        index = 0
    elif str(mag) in keys:
        index = keys.index(str(mag))
    elif str(mag).isdigit() and int(mag) < len(scales):
        index = int(mag)
    else:
        raise DataError(f"precomputed volume {folder} has no scale {str(mag)!r}; give a scale index 0..{len(scales) - 1} or a key of {_listing(keys)}")
    try:
        import tensorstore as ts

        spec = {
            "driver": "neuroglancer_precomputed",
            "kvstore": {"driver": "file", "path": str(folder.resolve())},
            "scale_index": index,
            "context": {"cache_pool": {"total_bytes_limit": 0}},
        }
        store = ts.open(spec, read=True).result()
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"cannot open precomputed volume {folder} (scale {index}): {shorten(exc, 200)}") from None
    try:
        resolution = [float(v) for v in scales[index]["resolution"]]  # x, y, z nm
        hint: tuple[float, float, float] | None = (resolution[2], resolution[1], resolution[0])
    except (KeyError, TypeError, ValueError, IndexError):
        hint = None
    return _make(_PrecomputedArray(store), path, "precomputed", key, kind, hint=hint)


_OPENERS = {
    "slices": _open_slices, "hdf5": _open_hdf5, "zarr": _open_zarr, "n5": _open_n5, "tiff": _open_tiff,
    "webknossos": _open_webknossos, "precomputed": _open_precomputed,
}


def open_volume(
    path: str | Path, key: str | None = None, fmt: str | None = None, kind: str = "raw", *, mag: str | int | None = None
) -> Volume:
    """Open a 3-D (z, y, x) volume lazily; ``kind`` "raw" or "label" decides RGB handling.

    ``mag`` picks the magnification of a webKnossos layer or the scale of a precomputed
    volume. Nothing but metadata is read here; reads happen window by window.
    """
    p = Path(str(path).removeprefix("file://")).expanduser()
    if kind not in ("raw", "label"):
        raise ValueError(f"kind must be 'raw' or 'label', got {kind!r}")
    if fmt:
        name = FORMAT_ALIASES.get(fmt.lower(), fmt.lower())
        if name not in _OPENERS:
            raise DataError(f"unknown volume format {fmt!r} for {p}; choose one of {list(FORMATS)}")
        if not p.exists():
            raise DataError(f"volume not found: {p}")
    else:
        name = detect_format(p)
    if mag is not None and name not in MAG_FORMATS:
        raise DataError(f"volume {p} is {name}: mag applies to {' and '.join(MAG_FORMATS)} volumes only; remove it")
    extra = {"mag": mag} if name in MAG_FORMATS else {}
    vol = _OPENERS[name](p, key or None, kind, **extra)
    logger.debug("opened %r", vol)
    return vol


# --------------------------------------------------------------------------------------
# resampling to an isotropic grid, window by window
# --------------------------------------------------------------------------------------
def needs_resampling(native_voxel_nm: Sequence[float], target_voxel_nm: float | None) -> bool:
    """True when a target is set (> 0) and any native voxel edge differs from it."""
    if not target_voxel_nm:
        return False
    return any(not math.isclose(float(v), float(target_voxel_nm), rel_tol=1e-9) for v in native_voxel_nm)


def resampled_shape(shape: Sequence[int], native_voxel_nm: Sequence[float], target_voxel_nm: float) -> tuple[int, int, int]:
    """Voxels per axis of the resampled grid: ``floor(N * v / t + 0.5)``, at least 1."""
    t = float(target_voxel_nm)
    return tuple(max(1, int(math.floor(int(n) * float(v) / t + 0.5))) for n, v in zip(shape, native_voxel_nm))  # type: ignore[return-value]


def native_to_target(index_zyx: Sequence[float], native_voxel_nm: Sequence[float], target_voxel_nm: float) -> np.ndarray:
    """Continuous target-grid index of a native index (voxel centres coincide physically)."""
    i = np.asarray(index_zyx, dtype=np.float64)
    v = np.asarray(native_voxel_nm, dtype=np.float64)
    return (i + 0.5) * v / float(target_voxel_nm) - 0.5


def target_to_native(index_zyx: Sequence[float] | np.ndarray, native_voxel_nm: Sequence[float], target_voxel_nm: float) -> np.ndarray:
    """Continuous native index of a target-grid index (inverse of :func:`native_to_target`)."""
    j = np.asarray(index_zyx, dtype=np.float64)
    v = np.asarray(native_voxel_nm, dtype=np.float64)
    return (j + 0.5) * float(target_voxel_nm) / v - 0.5


def _interp_axis(a: np.ndarray, i: np.ndarray, axis: int, n: int, offset: int) -> np.ndarray:
    """Linear interpolation of ``a`` along ``axis`` at native positions ``i`` (held at the ends)."""
    i0 = np.floor(i)
    frac = (i - i0).astype(a.dtype)
    lo = np.clip(i0.astype(np.int64), 0, n - 1) - offset
    hi = np.clip(np.ceil(i).astype(np.int64), 0, n - 1) - offset  # = lo where the weight is 0
    shape = [1] * a.ndim
    shape[axis] = -1
    f = frac.reshape(shape)
    return np.take(a, lo, axis=axis) * (1 - f) + np.take(a, hi, axis=axis) * f


class ResampledVolume:
    """A volume seen on an isotropic grid of ``target_voxel_nm``; every read resamples only
    the native window that covers it (never the whole volume).

    ``order`` 1 (linear, for raw) or 0 (nearest, for labels). See the module doc for the
    voxel-centre convention and tie rules.
    """

    ndim = 3

    def __init__(self, volume: Any, native_voxel_nm: Sequence[float], target_voxel_nm: float, order: int) -> None:
        if order not in (0, 1):
            raise ValueError(f"order must be 0 (nearest) or 1 (linear), got {order!r}")
        if not target_voxel_nm or target_voxel_nm <= 0 or min(float(v) for v in native_voxel_nm) <= 0:
            raise ValueError(f"voxel sizes must be positive: native {native_voxel_nm!r}, target {target_voxel_nm!r}")
        self.volume = volume
        self.native_voxel_nm = tuple(float(v) for v in native_voxel_nm)
        self.target_voxel_nm = float(target_voxel_nm)
        self.order = order
        self.native_shape = tuple(int(s) for s in volume.shape)
        self.shape = resampled_shape(self.native_shape, self.native_voxel_nm, self.target_voxel_nm)
        self.dtype = np.dtype(volume.dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def _native_window(self, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
        if isinstance(self.volume, Volume):
            return self.volume.read_window(lo, hi)
        return np.asarray(self.volume[tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))])

    def read_window(self, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
        """Target voxels [lo, hi) (z, y, x), clipped to the resampled grid."""
        lo_c = [min(max(int(a), 0), n) for a, n in zip(lo, self.shape)]
        hi_c = [min(max(int(b), a), n) for a, b, n in zip(lo_c, hi, self.shape)]
        out_shape = tuple(b - a for a, b in zip(lo_c, hi_c))
        if min(out_shape) == 0:
            return np.zeros(out_shape, dtype=self.dtype)
        pos = [
            target_to_native(np.arange(a, b, dtype=np.float64), [v], self.target_voxel_nm)
            for a, b, v in zip(lo_c, hi_c, self.native_voxel_nm)
        ]
        if self.order == 0:
            idx = [np.clip(np.floor(p + 0.5).astype(np.int64), 0, n - 1) for p, n in zip(pos, self.native_shape)]
            nlo = [int(i.min()) for i in idx]
            nhi = [int(i.max()) + 1 for i in idx]
            win = self._native_window(nlo, nhi)
            return np.ascontiguousarray(win[np.ix_(*(i - a for i, a in zip(idx, nlo)))])
        nlo = [int(np.clip(np.floor(p.min()), 0, n - 1)) for p, n in zip(pos, self.native_shape)]
        nhi = [int(np.clip(np.ceil(p.max()), 0, n - 1)) + 1 for p, n in zip(pos, self.native_shape)]
        win = self._native_window(nlo, nhi)
        a = win.astype(np.float64, copy=False)  # windows are small; float64 keeps ties exact
        # shrink first: the axes whose output is smallest relative to their input go first
        for axis in sorted(range(3), key=lambda ax: len(pos[ax]) / a.shape[ax]):
            p = pos[axis]
            if a.shape[axis] == p.size and np.array_equal(p, np.arange(nlo[axis], nlo[axis] + p.size)):
                continue  # the same voxel size on this axis: nothing to interpolate
            a = _interp_axis(a, p, axis, self.native_shape[axis], nlo[axis])
        if np.issubdtype(self.dtype, np.integer):
            info = np.iinfo(self.dtype)
            return np.clip(np.rint(a), info.min, info.max).astype(self.dtype)
        return np.ascontiguousarray(a.astype(self.dtype, copy=False))

    def __getitem__(self, key: Any) -> np.ndarray:
        lo, hi, post = _index_plan(key, self.shape)
        return _apply_post(self.read_window(lo, hi), post)

    def clear_cache(self) -> None:
        clear = getattr(self.volume, "clear_cache", None)
        if callable(clear):
            clear()

    def __repr__(self) -> str:
        return (
            f"ResampledVolume({self.volume!r}, {self.native_voxel_nm} nm -> {self.target_voxel_nm} nm, "
            f"shape={self.shape}, order={self.order})"
        )
