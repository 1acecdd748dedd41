"""A folder of 2-D slices read lazily as one (z, y, x) volume.

The original tool's layout, and the ``slices`` volume format, store a volume as one image per
z section. :class:`SliceStack` opens only the slices a window touches (uncompressed TIFFs are
memory-mapped), so cube building can cut windows out of a bbox far larger than memory. RGB
raw slices become luma gray; multi-channel label slices keep their first channel.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from natsort import natsorted

from ..core.errors import DataError

logger = logging.getLogger(__name__)

SLICE_SUFFIXES = (".tif", ".tiff", ".png")
LUMA = np.array([0.299, 0.587, 0.114])


def list_slices(folder: Path) -> list[Path]:
    """Slice files of ``folder`` in natural order (slice_2 before slice_10)."""
    files = [p for p in folder.iterdir() if p.suffix.lower() in SLICE_SUFFIXES and not p.name.startswith(".")]
    return natsorted(files, key=lambda p: p.name)


@dataclass(frozen=True)
class _TiffLayout:
    """Where the pixels of an uncompressed, contiguous TIFF sit in its file."""

    offset: int
    shape: tuple[int, ...]
    dtype: np.dtype
    file_size: int


def _contiguous_offset(page) -> int | None:
    """File offset of a page's pixels if they are stored uncompressed in one run, else None.

    ``TiffPage.is_contiguous`` was an ``(offset, bytecount)`` tuple in old tifffile versions
    and is a bool in current ones (the offset is then ``dataoffsets[0]``); both are handled.
    """
    contiguous = page.is_contiguous
    if not contiguous:
        return None
    if isinstance(contiguous, tuple):
        return int(contiguous[0])
    offsets = page.dataoffsets
    return int(offsets[0]) if len(offsets) else None


def _tiff_layout(path: Path) -> _TiffLayout | None:
    """The layout of a one-page TIFF whose pixels can be mapped as they are, else None."""
    with tifffile.TiffFile(path) as tif:
        if len(tif.pages) != 1:
            return None
        page = tif.pages.first
        # is_final: also no predictor, bit fill order or subsampling that mapping would ignore
        if page.dtype is None or not getattr(page, "is_final", True):
            return None
        offset = _contiguous_offset(page)
        if offset is None:
            return None
        dtype = np.dtype(page.dtype).newbyteorder(tif.byteorder)
        return _TiffLayout(offset, tuple(int(n) for n in page.shape), dtype, path.stat().st_size)


def _read_slice(path: Path, kind: str, layout: _TiffLayout | None = None) -> np.ndarray:
    """Read one 2-D slice; RGB raw -> luma gray, multi-channel labels -> first channel.

    With the ``layout`` of a sibling slice and an equal file size, the pixels are mapped
    directly (a stack written by one writer shares it), which is ~3x cheaper than parsing
    every TIFF header.
    """
    try:
        if layout is not None and path.stat().st_size == layout.file_size:
            arr = np.memmap(path, dtype=layout.dtype, mode="r", offset=layout.offset, shape=layout.shape)
        elif path.suffix.lower() == ".png":
            from PIL import Image

            with Image.open(path) as im:
                arr = np.asarray(im)
        else:
            try:
                arr = tifffile.memmap(path, mode="r")
            except ValueError:  # compressed or non-contiguous TIFF: decode instead
                arr = tifffile.imread(path)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise DataError(f"cannot read slice {path}: {exc}") from exc
    if arr.ndim == 3:
        if kind == "raw":
            arr = (arr[..., :3].astype(np.float32) @ LUMA.astype(np.float32)).round().astype(np.uint8) if arr.shape[-1] >= 3 else arr[..., 0]
        else:
            arr = arr[..., 0]
    if arr.ndim != 2:
        raise DataError(f"slice {path} has shape {arr.shape}; expected a 2-D image (or 2-D with channels)")
    return arr


class SliceStack:
    """A folder of 2-D slices seen as a lazy (z, y, x) volume.

    Only the slices a window touches are opened (uncompressed TIFFs are memory-mapped), so a
    synapse window costs a few megabytes whatever the bbox size.
    """

    def __init__(self, folder: str | Path, kind: str = "raw", cache_slices: int = 256) -> None:
        self.folder = Path(folder)
        self.kind = kind
        if not self.folder.is_dir():
            raise DataError(f"slice folder not found: {self.folder}")
        self.files = list_slices(self.folder)
        if not self.files:
            raise DataError(f"no .tif/.tiff/.png slices in {self.folder}")
        first = _read_slice(self.files[0], kind)
        self._layout = self._fast_layout(first)
        self._plane_shape = first.shape
        self.dtype = first.dtype
        self.shape = (len(self.files), *first.shape)
        self._slice = functools.lru_cache(maxsize=cache_slices)(self._load)

    ndim = 3

    def _fast_layout(self, first: np.ndarray) -> _TiffLayout | None:
        """The first slice's TIFF layout, used to map its siblings directly; None if unusable.

        It is only trusted when mapping the first slice with it gives exactly ``first``.
        """
        path = self.files[0]
        if path.suffix.lower() not in (".tif", ".tiff"):
            return None
        try:
            layout = _tiff_layout(path)
            if layout is None:
                return None
            if np.array_equal(_read_slice(path, self.kind, layout), first):
                return layout
            logger.warning("%s: mapping its pixels directly does not match tifffile; reading slices the slow way", path)
        except Exception as exc:  # noqa: BLE001 - the slow path still works; say why it is taken
            logger.warning("%s: fast slice reading unavailable (%s: %s); reading slices the slow way",
                           path, type(exc).__name__, exc)
        return None

    def clear_cache(self) -> None:
        """Forget opened slices (call when done with a bbox to release its mappings)."""
        self._slice.cache_clear()

    def _load(self, z: int) -> np.ndarray:
        arr = _read_slice(self.files[z], self.kind, self._layout)
        if arr.shape != self._plane_shape:
            raise DataError(
                f"slice {self.files[z]} has shape {arr.shape} but {self.files[0].name} has {self._plane_shape}; "
                "all slices of a volume must have the same size"
            )
        return arr

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (3 - len(key))
        zkey, ykey, xkey = key
        if isinstance(zkey, (int, np.integer)):
            return np.asarray(self._slice(int(zkey))[ykey, xkey])
        zs = range(*zkey.indices(self.shape[0]))
        out = np.empty((len(zs), *np.empty(self._plane_shape, dtype=bool)[ykey, xkey].shape), dtype=self.dtype)
        for i, z in enumerate(zs):
            out[i] = self._slice(z)[ykey, xkey]
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        arr = self[:, :, :]
        return arr.astype(dtype) if dtype is not None else arr

    def __repr__(self) -> str:
        return f"SliceStack({str(self.folder)!r}, shape={self.shape}, dtype={self.dtype})"
