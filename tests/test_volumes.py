"""One reader interface over HDF5, zarr (v2, v3, OME-Zarr), N5, multi-page TIFF and slice folders."""
from __future__ import annotations

import io
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from synapse_nb.core.errors import DataError
from synapse_nb.data import volumes as V

from .conftest import REALDATA

GALA = REALDATA / "gala_tiny_fib"
SHAPE = (6, 20, 30)


@pytest.fixture(scope="module")
def source() -> np.ndarray:
    return np.arange(np.prod(SHAPE), dtype=np.uint16).reshape(SHAPE)


def assert_same_everywhere(vol, src: np.ndarray) -> None:
    """Full read, windows, steps, negative steps and integers all equal numpy's answer."""
    assert vol.shape == src.shape and vol.ndim == 3 and vol.dtype == src.dtype
    np.testing.assert_array_equal(np.asarray(vol), src)
    for key in (
        np.s_[1:4, 5:17, 3:29],
        np.s_[2],
        np.s_[..., 7],
        np.s_[:, -5:, ::3],
        np.s_[::-2, 3, 1:9],
        np.s_[5:2, :, :],
    ):
        np.testing.assert_array_equal(vol[key], src[key], err_msg=str(key))


# --------------------------------------------------------------------------------------
# real HDF5 data (gala FIB-SEM crops)
# --------------------------------------------------------------------------------------
class CountingFile(io.RawIOBase):
    """A read-only file that counts the bytes HDF5 actually pulls from disk."""

    def __init__(self, path: Path) -> None:
        self._f = open(path, "rb")
        self.bytes_read = 0

    def readinto(self, b) -> int:
        n = self._f.readinto(b)
        self.bytes_read += n or 0
        return n

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def close(self) -> None:
        self._f.close()
        super().close()


@pytest.fixture
def gala():
    if not (GALA / "train-image.h5").is_file():
        pytest.skip(f"real data not found: {GALA}")
    return GALA


@pytest.mark.realdata
@pytest.mark.parametrize("name, dtype", [("train-image.h5", np.uint8), ("train-gt.lzf.h5", np.int32)])
def test_hdf5_real_windows_equal_full_read(gala, name, dtype):
    with h5py.File(gala / name, "r") as f:
        full = f["stack"][()]
    vol = V.open_volume(gala / name, key="stack", kind="label" if "gt" in name else "raw")
    assert vol.fmt == "hdf5" and vol.shape == (50, 100, 200) and vol.dtype == dtype
    np.testing.assert_array_equal(vol[10:17, 30:55, 100:150], full[10:17, 30:55, 100:150])
    np.testing.assert_array_equal(vol.read_window((45, -5, 190), (60, 10, 400)), full[45:, :10, 190:])
    assert vol.read_window((60, 0, 0), (70, 5, 5)).shape == (0, 5, 5)  # clipped, nothing padded
    vol.close()


@pytest.mark.realdata
def test_hdf5_window_reads_only_its_chunks(gala, monkeypatch):
    """A one-chunk window of the LZF labels reads a small part of the file, never all of it."""
    real_file = h5py.File
    handles: list[CountingFile] = []

    def counting_file(path, mode="r", **kw):
        handles.append(CountingFile(Path(path)))
        return real_file(handles[-1], mode, **kw)

    monkeypatch.setattr(h5py, "File", counting_file)
    vol = V.open_volume(gala / "train-gt.lzf.h5", key="stack", kind="label")
    assert vol._source.chunks == (7, 25, 50)
    before = handles[0].bytes_read
    window = vol[7:14, 25:50, 50:150]  # exactly two chunks
    used = handles[0].bytes_read - before
    size = (gala / "train-gt.lzf.h5").stat().st_size
    assert window.shape == (7, 25, 100)
    assert 0 < used < size / 20, (used, size)
    assert vol.voxels_read == window.size
    vol.close()


@pytest.mark.realdata
def test_hdf5_spy_sees_only_the_window(gala):
    vol = V.open_volume(gala / "train-image.h5", key="stack")
    asked = []
    real = vol._source

    class Spy:
        shape, dtype = real.shape, real.dtype

        def __getitem__(self, key):
            asked.append(key)
            return real[key]

    vol._source = Spy()
    vol[3:9, 40:60, 10:20]
    vol.read_window((48, 95, 190), (52, 105, 210))
    assert asked == [np.s_[3:9, 40:60, 10:20], np.s_[48:50, 95:100, 190:200]]
    vol.close()


def test_hdf5_needs_a_key_and_lists_datasets(tmp_path, source):
    path = tmp_path / "vol.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("volumes/raw", data=source, chunks=(2, 10, 10))
        f.create_dataset("volumes/labels", data=source.astype(np.uint32))
        f.create_dataset("flat", data=source[0])
    with pytest.raises(DataError, match=r"vol.h5 needs a key naming the dataset.*'flat', 'volumes/labels', 'volumes/raw'"):
        V.open_volume(path)
    with pytest.raises(DataError, match=r"vol.h5 has no dataset 'volumes/seg'; datasets present: 'flat'"):
        V.open_volume(path, key="volumes/seg")
    with pytest.raises(DataError, match=r"vol.h5 \(key 'flat'\) has shape \(20, 30\); expected a 3-D"):
        V.open_volume(path, key="flat")
    vol = V.open_volume(path, key="volumes/raw")
    assert_same_everywhere(vol, source)
    vol.close()


def test_hdf5_signature_without_suffix(tmp_path, source):
    path = tmp_path / "volume.data"
    with h5py.File(path, "w") as f:
        f["x"] = source
    assert V.detect_format(path) == "hdf5"
    assert_same_everywhere(V.open_volume(path, key="x"), source)


# --------------------------------------------------------------------------------------
# zarr v2 / v3, groups, OME-Zarr
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_array_and_group(tmp_path, source, zarr_format):
    arr_path = tmp_path / f"a{zarr_format}.zarr"
    z = zarr.create_array(str(arr_path), shape=SHAPE, chunks=(2, 8, 8), dtype=source.dtype, zarr_format=zarr_format)
    z[...] = source
    vol = V.open_volume(arr_path)
    assert vol.fmt == "zarr"
    assert_same_everywhere(vol, source)
    with pytest.raises(DataError, match=r"is an array, not a group: it takes no key"):
        V.open_volume(arr_path, key="raw")

    grp_path = tmp_path / f"g{zarr_format}"  # no .zarr suffix: found by its metadata
    g = zarr.open_group(str(grp_path), mode="w", zarr_format=zarr_format)
    g.create_array("volumes/raw", shape=SHAPE, chunks=(3, 10, 10), dtype=source.dtype)[...] = source
    g.create_array("seg", shape=SHAPE, chunks=(3, 10, 10), dtype=np.uint32)[...] = source
    assert V.detect_format(grp_path) == "zarr"
    assert_same_everywhere(V.open_volume(grp_path, key="volumes/raw"), source)
    with pytest.raises(DataError, match=r"without OME-Zarr multiscales metadata: give key.*'seg', 'volumes/raw'"):
        V.open_volume(grp_path)
    with pytest.raises(DataError, match=r"has no array 'labels'; arrays present: 'seg', 'volumes/raw'"):
        V.open_volume(grp_path, key="labels")


def _ome_group(path: Path, source: np.ndarray, version: str):
    zarr_format = 2 if version == "0.4" else 3
    g = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    lvl0 = source[None]  # (c=1, z, y, x)
    lvl1 = source[None, :, ::2, ::2]
    for name, data in (("s0", lvl0), ("s1", lvl1)):
        g.create_array(name, shape=data.shape, chunks=(1, 3, 8, 8), dtype=data.dtype)[...] = data
    ms = [
        {
            "version": version,
            "axes": [
                {"name": "c", "type": "channel"},
                {"name": "z", "type": "space", "unit": "nanometer"},
                {"name": "y", "type": "space", "unit": "nanometer"},
                {"name": "x", "type": "space", "unit": "micrometer"},
            ],
            "datasets": [
                {"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": [1, 40.0, 4.0, 0.004]}]},
                {"path": "s1", "coordinateTransformations": [{"type": "scale", "scale": [1, 40.0, 8.0, 0.008]}]},
            ],
        }
    ]
    g.attrs.update({"multiscales": ms} if version == "0.4" else {"ome": {"version": version, "multiscales": ms}})


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_levels(tmp_path, source, version):
    path = tmp_path / "image.ome.zarr"
    _ome_group(path, source, version)
    vol = V.open_volume(path)
    assert vol.key == "s0" and vol.voxel_size_hint_nm == (40.0, 4.0, 4.0)
    assert_same_everywhere(vol, source)  # the size-1 channel axis is dropped
    for key in ("s1", "1"):
        low = V.open_volume(path, key=key)
        np.testing.assert_array_equal(np.asarray(low), source[:, ::2, ::2])
    assert V.open_volume(path, key="s1").voxel_size_hint_nm == (40.0, 8.0, 8.0)
    assert V.open_volume(path, key="1").voxel_size_hint_nm == (40.0, 8.0, 8.0)  # the level by its index


def test_zarr_not_3d_and_rgb(tmp_path, source):
    z = zarr.create_array(str(tmp_path / "four.zarr"), shape=(2, *SHAPE), chunks=(1, 2, 8, 8), dtype=source.dtype)
    z[...] = np.stack([source, source])
    with pytest.raises(DataError, match=r"four.zarr has shape \(2, 6, 20, 30\); expected a 3-D \(z, y, x\) volume"):
        V.open_volume(tmp_path / "four.zarr")
    rgb = np.stack([source % 256, (source // 2) % 256, (source // 3) % 256], axis=-1).astype(np.uint8)
    z = zarr.create_array(str(tmp_path / "rgb.zarr"), shape=rgb.shape, chunks=(2, 8, 8, 3), dtype=np.uint8)
    z[...] = rgb
    gray = (rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).round().astype(np.uint8)
    np.testing.assert_array_equal(V.open_volume(tmp_path / "rgb.zarr")[1:3], gray[1:3])
    np.testing.assert_array_equal(V.open_volume(tmp_path / "rgb.zarr", kind="label")[...], rgb[..., 0])


# --------------------------------------------------------------------------------------
# N5 (through TensorStore)
# --------------------------------------------------------------------------------------
def write_n5(root: Path, name: str, data: np.ndarray, block=(8, 8, 2)) -> None:
    """N5 the way Java tools write it: dimensions listed x, y, z (fastest first)."""
    import tensorstore as ts

    (root).mkdir(parents=True, exist_ok=True)
    (root / "attributes.json").write_text(json.dumps({"n5": "2.3.0"}))
    spec = {
        "driver": "n5",
        "kvstore": {"driver": "file", "path": str(root / name)},
        "metadata": {
            "dimensions": list(data.shape[::-1]),
            "blockSize": list(block),
            "dataType": str(data.dtype),
            "compression": {"type": "gzip"},
        },
        "create": True,
        "delete_existing": True,
    }
    store = ts.open(spec).result()
    store.T[...].write(data).result()


def test_n5_dataset_in_a_container(tmp_path, source):
    root = tmp_path / "vol.n5"
    write_n5(root, "volumes/raw", source)
    write_n5(root, "seg", source.astype(np.uint64))
    attrs = json.loads((root / "volumes/raw/attributes.json").read_text())
    assert attrs["dimensions"] == [30, 20, 6]  # x, y, z on disk
    vol = V.open_volume(root, key="volumes/raw")
    assert vol.fmt == "n5"
    assert_same_everywhere(vol, source)
    assert V.open_volume(root / "seg").dtype == np.uint64  # the dataset folder itself
    with pytest.raises(DataError, match=r"vol.n5 is an N5 group: give key.*'seg', 'volumes/raw'"):
        V.open_volume(root)
    with pytest.raises(DataError, match=r"vol.n5 has no dataset 'mask'; datasets present: 'seg', 'volumes/raw'"):
        V.open_volume(root, key="mask")


# --------------------------------------------------------------------------------------
# multi-page TIFF and slice folders
# --------------------------------------------------------------------------------------
def test_multipage_tiff_is_lazy_per_page(tmp_path, source):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, source, compression="zlib")
    vol = V.open_volume(path)
    assert vol.fmt == "tiff"
    assert_same_everywhere(vol, source)
    vol.close()
    # corrupt the compressed pixels of the last page: windows on other pages still read,
    # so a window never decodes pages it does not need
    with tifffile.TiffFile(path) as tif:
        off, count = tif.pages[-1].dataoffsets[0], tif.pages[-1].databytecounts[0]
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(b"\xff" * count)
    vol = V.open_volume(path)
    np.testing.assert_array_equal(vol[0:5, 2:9, :], source[0:5, 2:9, :])
    with pytest.raises(DataError, match=r"cannot read window \[5, 0, 0\]\.\.\[6, 20, 30\] of volume .*stack.tif"):
        vol[5]
    vol.close()


def test_uncompressed_tiff_and_2d_tiff(tmp_path, source):
    tifffile.imwrite(tmp_path / "plain.tiff", source)
    assert_same_everywhere(V.open_volume(tmp_path / "plain.tiff"), source)
    tifffile.imwrite(tmp_path / "flat.tif", source[0])
    with pytest.raises(DataError, match=r"flat.tif has shape \(20, 30\); expected a 3-D"):
        V.open_volume(tmp_path / "flat.tif")


def test_png_and_tiff_slice_folders(tmp_path, source):
    png = tmp_path / "png"
    png.mkdir()
    small = (source % 251).astype(np.uint8)
    for z, plane in enumerate(small):
        Image.fromarray(plane).save(png / f"s{z}.png")
    vol = V.open_volume(png)
    assert vol.fmt == "slices"
    assert_same_everywhere(vol, small)
    rgb_dir = tmp_path / "rgb"
    rgb_dir.mkdir()
    rgb = np.stack([small, small // 2, small // 3], axis=-1)
    for z, plane in enumerate(rgb):
        Image.fromarray(plane).save(rgb_dir / f"s{z}.png")
    gray = (rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).round().astype(np.uint8)
    np.testing.assert_array_equal(V.open_volume(rgb_dir)[...], gray)
    np.testing.assert_array_equal(V.open_volume(rgb_dir, kind="label")[...], small)
    tif = tmp_path / "tif"
    tif.mkdir()
    for z, plane in enumerate(source):
        tifffile.imwrite(tif / f"slice_{z}.tif", plane)
    assert_same_everywhere(V.open_volume(tif), source)
    with pytest.raises(DataError, match=r"folder of slices: it takes no key"):
        V.open_volume(tif, key="raw")


# --------------------------------------------------------------------------------------
# format inference and errors
# --------------------------------------------------------------------------------------
def test_format_inference_and_override(tmp_path, source):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"volume not found: .*nothing.h5"):
        V.open_volume(tmp_path / "nothing.h5")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"unknown volume format for .*notes.txt: expected .h5/.hdf5/.hdf"):
        V.open_volume(tmp_path / "notes.txt")
    with pytest.raises(DataError, match=r"unknown volume format for folder .*empty: no zarr / N5 metadata"):
        V.open_volume(tmp_path / "empty")
    with pytest.raises(DataError, match=r"unknown volume format 'nrrd' for .*notes.txt; choose one of"):
        V.open_volume(tmp_path / "notes.txt", fmt="nrrd")
    # an HDF5 file with a TIFF name is read as HDF5 when told so
    with h5py.File(tmp_path / "odd.tif", "w") as f:
        f["v"] = source
    with pytest.raises(DataError, match=r"cannot read TIFF .*odd.tif"):
        V.open_volume(tmp_path / "odd.tif")
    assert_same_everywhere(V.open_volume(tmp_path / "odd.tif", key="v", fmt="h5"), source)


def test_index_errors(tmp_path, source):
    path = tmp_path / "a.zarr"
    zarr.create_array(str(path), shape=SHAPE, chunks=(2, 8, 8), dtype=source.dtype)[...] = source
    vol = V.open_volume(path)
    with pytest.raises(IndexError, match="index 6 is out of range for an axis of size 6"):
        vol[6]
    with pytest.raises(IndexError, match="too many indices"):
        vol[0, 0, 0, 0]
    with pytest.raises(TypeError, match="integers and slices only"):
        vol[[1, 2]]
    assert vol[-1, -1, -1] == source[-1, -1, -1]
    assert "zarr" in repr(vol) and "(6, 20, 30)" in repr(vol)
