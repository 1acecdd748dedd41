"""Connectome descriptions: table formats, webKnossos / precomputed layers, agglomerate
mapping, the virtual seg and mask volumes, and every bad input named clearly."""
from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml
import zarr

from synapse_nb.core import labels as L
from synapse_nb.core.errors import DataError
from synapse_nb.data.agglomerates import AgglomerateMapping
from synapse_nb.data.connectome import (
    CLEFT_LABEL,
    is_connectome_description,
    load_connectome_description,
    open_connectome,
)
from synapse_nb.data.volumes import ResampledVolume, detect_format, open_volume

SHAPE = (12, 16, 24)  # z, y, x
MAPPING = np.array([0, 10, 10, 11, 12, 13, 14], dtype=np.uint32)  # segment id -> agglomerate id


def _volumes() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, SHAPE, dtype=np.uint8)
    seg = np.zeros(SHAPE, np.uint32)
    seg[:, :, :12] = 3
    seg[:, :, 12:] = 5
    seg[:, :8, 20:] = 6
    cleft = np.zeros(SHAPE, np.uint8)
    cleft[:, :, 11:13] = 200
    cleft[:, 0:2, 0:2] = 100  # below the threshold: not cleft
    mask = np.zeros(SHAPE, np.uint8)
    mask[2:5, 2:5, 2:5] = 2  # mito
    mask[6:9, 6:9, 14:18] = 3  # vesicle cloud
    mask[0, 0, 0] = 9  # another structure: zeroed
    return {"raw": raw, "seg": seg, "cleft": cleft, "mask": mask}


def _table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "synapse_id": [100, 101, 102, 103, 104, 105],
            "x": [5.0, 20.0, 50.0, np.nan, 1.0, 2.0],
            "y": [5.0, 10.0, 5.0, 5.0, 1.0, 2.0],
            "z": [5.0, 8.0, 5.0, 5.0, 1.0, 2.0],
            "pre_segment": [3.0, 5.0, 3.0, 3.0, 9.0, np.nan],
            "post_segment": [5.0, 3.0, 5.0, 5.0, 3.0, 6.0],
            "synapse_class": ["a", "b", "a", "b", "a", "c"],
        }
    )


def _write(folder: Path, *, table_format: str = "parquet", layers: dict | None = None, extra: dict | None = None,
           vols: dict[str, np.ndarray] | None = None) -> Path:
    """A connectome folder: zarr layers, agglomerate file, table and the YAML; returns the YAML."""
    folder.mkdir(parents=True, exist_ok=True)
    vols = vols or _volumes()
    g = zarr.open_group(str(folder / "c.zarr"), mode="w")
    for name, arr in vols.items():
        g.create_array(name, data=arr, chunks=(4, 8, 8))
    with h5py.File(folder / "agglomerates.h5", "w") as f:
        f["segment_to_agglomerate"] = MAPPING
    t = _table()
    synapses: dict = {
        "columns": {"id": "synapse_id", "position": ["x", "y", "z"], "pre": "pre_segment", "post": "post_segment",
                    "keep": ["synapse_class"]},
        "partner_ids": "segments",
    }
    if table_format == "parquet":
        t.to_parquet(folder / "syn.parquet")
        synapses["path"] = "syn.parquet"
    elif table_format == "csv":
        t.to_csv(folder / "syn.csv", index=False)
        synapses["path"] = "syn.csv"
    elif table_format == "h5group":
        with h5py.File(folder / "syn.h5", "w") as f:
            grp = f.create_group("synapses")
            for c in t.columns:
                v = t[c].to_numpy()
                if c.endswith("_segment"):
                    v = np.nan_to_num(v, nan=0).astype(np.int64)  # 0 = unknown partner
                grp[c] = v.astype("S") if v.dtype == object else v
        synapses.update(path="syn.h5", key="synapses")
    elif table_format == "h5compound":
        rec = np.zeros(len(t), dtype=[("synapse_id", "i8"), ("x", "f8"), ("y", "f8"), ("z", "f8"),
                                      ("pre_segment", "i8"), ("post_segment", "i8"), ("synapse_class", "S4")])
        for c in t.columns:
            v = t[c].to_numpy()
            rec[c] = np.nan_to_num(v, nan=0).astype(np.int64) if c.endswith("_segment") else v
        with h5py.File(folder / "syn.h5", "w") as f:
            f["table"] = rec
        synapses.update(path="syn.h5", key="table")
    doc = {
        "name": "toy_connectome",
        "voxel_size_nm": [40.0, 8.0, 8.0],
        "synapses": synapses,
        "layers": layers or {
            "raw": {"path": "c.zarr", "key": "raw"},
            "seg": {"path": "c.zarr", "key": "seg"},
            "cleft": {"path": "c.zarr", "key": "cleft", "threshold": 128},
            "mask": {"path": "c.zarr", "key": "mask", "labels": {"mito": 2, "vesicle": 3}},
        },
        "agglomerates": {"path": "agglomerates.h5"},
    }
    for k, v in (extra or {}).items():
        if v is None:
            doc.pop(k, None)
        else:
            doc[k] = v
    path = folder / "connectome.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# --------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------
def test_table_formats_give_the_same_table_and_rejections(tmp_path):
    tables = {}
    for fmt in ("parquet", "csv", "h5group", "h5compound"):
        con = open_connectome(_write(tmp_path / fmt, table_format=fmt))
        tables[fmt] = con
    ref = tables["parquet"]
    t = ref.table
    assert t[L.NAME_COLUMN].tolist() == ["100", "101", "105"]
    assert t["table_row"].tolist() == [0, 1, 5]
    assert t[list(L.CENTER_COLUMNS)].to_numpy().tolist() == [[5, 5, 5], [20, 10, 8], [2, 2, 2]]
    assert t[list(L.SIDE1_COLUMNS + L.SIDE2_COLUMNS)].isna().all().all()
    # pre / post mapped to agglomerates (3 -> 11, 5 -> 13, 6 -> 14), unknown stays <NA>
    assert str(t["pre_id"].dtype) == "Int64"
    assert t["pre_id"].tolist()[:2] == [11, 13] and t["pre_id"].isna().tolist() == [False, False, True]
    assert t["post_id"].tolist() == [13, 11, 14]
    assert t["synapse_class"].tolist() == ["a", "b", "c"]
    rej = ref.rejected.set_index("table_row")["reason"]
    assert sorted(rej.index) == [2, 3, 4]
    assert "(x=50, y=5, z=5) lies outside the raw layer (x < 24, y < 16, z < 12)" in rej[2]
    assert "position (nan, 5.0, 5.0) in columns ['x', 'y', 'z'] is not three finite numbers" in rej[3]
    assert "pre segment id 9" in rej[4] and "agglomerates.h5" in rej[4]
    for fmt, con in tables.items():
        pd.testing.assert_frame_equal(con.table, t, check_dtype=False, obj=fmt)
        assert con.rejected["table_row"].tolist() == [2, 3, 4], fmt


def test_no_id_column_uses_row_numbers_and_sides(tmp_path):
    t = pd.DataFrame({"px": [3.0, 4.0], "py": [3.0, 4.0], "pz": [3.0, 4.0], "a1": [1.0, np.nan], "a2": [1.0, 2.0],
                      "a3": [1.0, 2.0], "b1": [6.0, 7.0], "b2": [6.0, 7.0], "b3": [6.0, 7.0]})
    path = _write(tmp_path, extra={"agglomerates": None})
    t.to_parquet(tmp_path / "two.parquet")
    doc = yaml.safe_load(path.read_text())
    doc["synapses"] = {"path": "two.parquet", "columns": {"position": ["px", "py", "pz"], "side1": ["a1", "a2", "a3"],
                                                          "side2": ["b1", "b2", "b3"]}}
    path.write_text(yaml.safe_dump(doc))
    con = open_connectome(path)
    assert con.table[L.NAME_COLUMN].tolist() == ["0", "1"]
    assert con.table[list(L.SIDE1_COLUMNS)].to_numpy()[0].tolist() == [1, 1, 1]
    assert con.table[list(L.SIDE1_COLUMNS)].iloc[1].isna().all()  # one coordinate missing: side unknown
    assert con.table[list(L.SIDE2_COLUMNS)].to_numpy()[1].tolist() == [7, 7, 7]
    assert con.table["pre_id"].isna().all()


def test_unknown_column_and_duplicate_id_are_named(tmp_path):
    path = _write(tmp_path)
    doc = yaml.safe_load(path.read_text())
    doc["synapses"]["columns"]["pre"] = "presynaptic"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(DataError) as e:
        open_connectome(path)
    msg = str(e.value)
    assert "syn.parquet" in msg and "'presynaptic'" in msg and "'pre_segment'" in msg and "\n" not in msg

    t = _table()
    t.loc[4, "synapse_id"] = 101
    t.to_parquet(tmp_path / "syn.parquet")
    doc["synapses"]["columns"]["pre"] = "pre_segment"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(DataError, match=r"id '101' occurs more than once \(rows 1 and 4"):
        open_connectome(path)


def test_agglomerate_ids_absent_from_the_mapping_are_rejected(tmp_path):
    t = _table()
    t["pre_segment"] = [11.0, 13.0, 11.0, 11.0, 99.0, np.nan]  # 99 is no agglomerate
    t["post_segment"] = [13.0, 11.0, 13.0, 13.0, 11.0, 14.0]
    path = _write(tmp_path)
    t.to_parquet(tmp_path / "syn.parquet")
    doc = yaml.safe_load(path.read_text())
    doc["synapses"]["partner_ids"] = "agglomerates"
    path.write_text(yaml.safe_dump(doc))
    con = open_connectome(path)
    rej = con.rejected.set_index("table_row")["reason"]
    assert "pre agglomerate id 99 is not in the mapping" in rej[4] and "agglomerates.h5" in rej[4]
    assert con.table["pre_id"].tolist()[:2] == [11, 13]  # agglomerate ids are kept as given


# --------------------------------------------------------------------------------------
# the virtual volumes
# --------------------------------------------------------------------------------------
def test_seg_window_is_mapped_and_mask_is_virtual(tmp_path):
    vols = _volumes()
    con = open_connectome(_write(tmp_path, vols=vols))
    bbox = con.as_bbox()
    assert bbox.name == "toy_connectome" and bbox.voxel_size_nm == (40.0, 8.0, 8.0) and len(bbox.table) == 3
    want_seg = MAPPING[vols["seg"]]
    win = bbox.seg[2:9, 3:15, 5:23]
    np.testing.assert_array_equal(win, want_seg[2:9, 3:15, 5:23])
    lo, hi, chunk = np.array([2, 3, 5]), np.array([9, 15, 23]), np.array(con.chunk_shape)
    aligned = int(np.prod(np.minimum(-(-hi // chunk) * chunk, SHAPE) - (lo // chunk) * chunk))
    assert con.seg.voxels_read == aligned  # only the storage chunks the window touches
    np.testing.assert_array_equal(bbox.seg[3:8, 4:12, 6:20], want_seg[3:8, 4:12, 6:20])
    assert con.seg.voxels_read == aligned  # a window inside them: served by the chunk cache
    want_mask = np.where(np.isin(vols["mask"], [2, 3]), vols["mask"], 0)
    want_mask[vols["cleft"] >= 128] = CLEFT_LABEL
    np.testing.assert_array_equal(bbox.mask.read_window((0, 0, 0), SHAPE), want_mask)
    assert con.label_ids == L.LabelIds(mito=2, vesicle=3, cleft=CLEFT_LABEL, cleft2=0)
    assert con.chunk_shape == (4, 8, 8)
    # under per-window resampling (anisotropic voxels -> 8 nm), as cube building wraps them
    for virtual, arr in ((bbox.seg, want_seg), (bbox.mask, want_mask)):
        rv = ResampledVolume(virtual, (40.0, 8.0, 8.0), 8.0, order=0)
        ref = ResampledVolume(arr, (40.0, 8.0, 8.0), 8.0, order=0)
        np.testing.assert_array_equal(rv[10:30, 2:14, 4:20], ref[10:30, 2:14, 4:20])
    clone = pickle.loads(pickle.dumps(con.agglomerates))
    np.testing.assert_array_equal(clone(np.array([[3, 0], [6, 1]])), [[11, 0], [14, 10]])
    shipped = pickle.loads(pickle.dumps(bbox))  # as a Dask task receives it
    np.testing.assert_array_equal(shipped.seg[2:9, 3:15, 5:23], want_seg[2:9, 3:15, 5:23])
    np.testing.assert_array_equal(shipped.mask[:, :, :], want_mask)


def test_cleft_label_moves_when_mito_uses_one(tmp_path):
    vols = _volumes()
    vols["mask"][vols["mask"] == 2] = 1
    path = _write(tmp_path, vols=vols)
    doc = yaml.safe_load(path.read_text())
    doc["layers"]["mask"]["labels"] = {"mito": 1, "vesicle": 3}
    path.write_text(yaml.safe_dump(doc))
    con = open_connectome(path)
    assert con.label_ids == L.LabelIds(mito=1, vesicle=3, cleft=2, cleft2=0)
    m = np.asarray(con.mask)
    assert set(np.unique(m)) == {0, 1, 2, 3}
    assert np.all(m[vols["cleft"] >= 128] == 2) and np.all(m[vols["mask"] == 1][vols["cleft"][vols["mask"] == 1] < 128] == 1)


def test_segment_past_the_mapping_end_in_a_window_is_a_data_error(tmp_path):
    vols = _volumes()
    vols["seg"][10, 14, 22] = 40
    con = open_connectome(_write(tmp_path, vols=vols))
    np.testing.assert_array_equal(con.seg[0:5, 0:5, 0:5], 11)  # other windows still read
    with pytest.raises(DataError, match=r"segment id 40 .*seg layer.* is not in the mapping .*agglomerates\.h5.*give the agglomerate file"):
        con.seg[8:12, 10:16, 18:24]


def test_mapping_reads_runs_lazily(tmp_path):
    ids = np.arange(200_000, dtype=np.uint64) // 3
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f.create_dataset("m", data=ids, chunks=(4096,))
    m = AgglomerateMapping(tmp_path / "a.h5", "m", max_in_memory_bytes=0)  # never read whole
    seg = np.array([[0, 5, 150_000], [199_999, 7, 5]], dtype=np.uint32)
    np.testing.assert_array_equal(m(seg), [[0, 1, 50_000], [66_666, 2, 1]])
    assert m.knows_agglomerate([0, 66_666, 66_667]).tolist() == [True, True, False]
    with pytest.raises(DataError, match=r"segment id 200000 is not in the mapping .*a\.h5 \(key 'm'"):
        m(np.array([200_000]))


# --------------------------------------------------------------------------------------
# webKnossos and precomputed layers
# --------------------------------------------------------------------------------------
def _wk():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import webknossos as wk
    return wk


def _write_wk(folder: Path, vols: dict[str, np.ndarray]) -> Path:
    with warnings.catch_warnings():  # small test chunks: webKnossos recommends larger ones
        warnings.simplefilter("ignore")
        return _write_wk_layers(folder, vols)


def _write_wk_layers(folder: Path, vols: dict[str, np.ndarray]) -> Path:
    wk = _wk()
    ds = wk.Dataset(folder / "wkds", voxel_size=(8.0, 8.0, 40.0))  # x, y, z
    for name, arr in vols.items():
        cat = wk.COLOR_CATEGORY if name == "raw" else wk.SEGMENTATION_CATEGORY
        kwargs = {} if name == "raw" else {"largest_segment_id": int(arr.max())}
        layer = ds.add_layer(name, cat, dtype=arr.dtype, **kwargs)
        m1 = layer.add_mag("1", chunk_shape=8, shard_shape=32)
        m1.write(arr.transpose(2, 1, 0), absolute_offset=(0, 0, 0), allow_resize=True)
        if name == "seg":  # a coarser mag too: the voxel-size check suggests the matching one
            m2 = layer.add_mag("2-2-1", chunk_shape=8, shard_shape=32)
            m2.write(arr[:, ::2, ::2].transpose(2, 1, 0), absolute_offset=(0, 0, 0))
    return folder / "wkds"


def test_webknossos_layers_read_the_zarr_voxels(tmp_path):
    vols = _volumes()
    wkds = _write_wk(tmp_path, {"raw": vols["raw"], "seg": vols["seg"]})
    assert detect_format(wkds) == "webknossos"
    v = open_volume(wkds, key="raw")
    assert v.shape == SHAPE and v.voxel_size_hint_nm == (40.0, 8.0, 8.0) and v.chunk_shape == (8, 8, 8)
    np.testing.assert_array_equal(v[3:10, 5:13, 7:21], vols["raw"][3:10, 5:13, 7:21])
    assert v.voxels_read == 7 * 8 * 14
    coarse = open_volume(wkds, key="seg", mag="2-2-1", kind="label")
    assert coarse.shape == (12, 8, 12) and coarse.voxel_size_hint_nm == (40.0, 16.0, 16.0)
    np.testing.assert_array_equal(coarse[:, 1:7, 2:11], vols["seg"][:, ::2, ::2][:, 1:7, 2:11])
    # as connectome layers, next to the zarr cleft / mask: the same table and windows
    path = _write(tmp_path / "c", vols=vols, layers={
        "raw": {"path": str(wkds), "key": "raw"},
        "seg": {"path": str(wkds), "key": "seg", "format": "webknossos", "mag": "1"},
        "cleft": {"path": "c.zarr", "key": "cleft", "threshold": 128},
    })
    con = open_connectome(path)
    assert con.voxel_size_nm == (40.0, 8.0, 8.0) and con.chunk_shape == (8, 8, 8)
    np.testing.assert_array_equal(con.seg[1:11, 2:14, 3:23], MAPPING[vols["seg"]][1:11, 2:14, 3:23])
    assert con.label_ids == L.LabelIds(mito=0, vesicle=0, cleft=CLEFT_LABEL, cleft2=0)
    # a layer at another mag: named, with the mag that matches raw
    doc = yaml.safe_load(path.read_text())
    doc["layers"]["seg"]["mag"] = "2-2-1"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(DataError) as e:
        open_connectome(path)
    msg = str(e.value)
    assert "layer seg has voxel size [40.0, 16.0, 16.0]" in msg and "raw has [40.0, 8.0, 8.0]" in msg
    assert "mag: '1'" in msg and "\n" not in msg


def test_precomputed_layer_reads_the_zarr_voxels(tmp_path):
    import tensorstore as ts

    raw = _volumes()["raw"]
    spec = {
        "driver": "neuroglancer_precomputed",
        "kvstore": {"driver": "file", "path": str(tmp_path / "pc")},
        "multiscale_metadata": {"type": "image", "data_type": "uint8", "num_channels": 1},
        "scale_metadata": {"size": [24, 16, 12], "resolution": [8, 8, 40], "encoding": "raw", "chunk_size": [8, 8, 4]},
        "create": True,
    }
    ts.open(spec).result()[..., 0].write(raw.transpose(2, 1, 0)).result()
    assert detect_format(tmp_path / "pc") == "precomputed"
    v = open_volume(f"file://{tmp_path / 'pc'}")
    assert v.shape == SHAPE and v.voxel_size_hint_nm == (40.0, 8.0, 8.0) and v.chunk_shape == (4, 8, 8)
    np.testing.assert_array_equal(v[3:10, 5:13, 7:21], raw[3:10, 5:13, 7:21])
    assert v.voxels_read == 7 * 8 * 14
    np.testing.assert_array_equal(open_volume(tmp_path / "pc", mag="8_8_40")[0, 0], raw[0, 0])
    # a scale stored from an offset: global voxels, zeros before the stored box
    spec["kvstore"]["path"] = str(tmp_path / "pc_offset")
    spec["scale_metadata"] = {**spec["scale_metadata"], "size": [20, 16, 12], "voxel_offset": [4, 0, 0]}
    ts.open(spec).result()[..., 0].write(raw[:, :, 4:].transpose(2, 1, 0)).result()
    off = open_volume(tmp_path / "pc_offset")
    assert off.shape == SHAPE
    want = raw.copy()
    want[:, :, :4] = 0
    np.testing.assert_array_equal(off[2:9, 1:15, 0:13], want[2:9, 1:15, 0:13])
    with pytest.raises(DataError, match="no scale '4'"):
        open_volume(tmp_path / "pc", mag=4)
    with pytest.raises(DataError, match="mag applies to webknossos and precomputed"):
        open_volume(tmp_path / "pc", fmt="zarr", mag=1)


# --------------------------------------------------------------------------------------
# bad descriptions
# --------------------------------------------------------------------------------------
def _with_layers(path: Path, **changes) -> Path:
    doc = yaml.safe_load(path.read_text())
    for role, layer in changes.items():
        doc["layers"][role] = layer
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize(
    ("layer", "pattern"),
    [
        ({"path": "nothing.zarr", "key": "seg"}, r"layer seg: .*nothing\.zarr does not exist; fix layers\.seg\.path"),
        ({"path": "c.zarr", "key": "segmentation"}, r"layer seg: zarr .* has no array 'segmentation'; arrays present: .*'seg'"),
        ({"path": "c.zarr", "key": "seg", "voxel_size_nm": [40.0, 16.0, 16.0]},
         r"layer seg has voxel size \[40\.0, 16\.0, 16\.0\] nm \(z, y, x\) but raw has \[40\.0, 8\.0, 8\.0\]"),
        ({"path": "c.zarr", "key": "small"}, r"layer seg has shape \(x=12, y=16, z=12\) but raw has \(x=24, y=16, z=12\)"),
    ],
)
def test_bad_layers_are_named(tmp_path, layer, pattern):
    vols = _volumes()
    vols["small"] = vols["seg"][:, :, :12].copy()
    path = _with_layers(_write(tmp_path, vols=vols), seg=layer)
    with pytest.raises(DataError, match=pattern) as e:
        open_connectome(path)
    assert str(path.resolve()) in str(e.value) and "\n" not in str(e.value)


def test_bad_threshold_and_description_keys(tmp_path):
    path = _with_layers(_write(tmp_path), cleft={"path": "c.zarr", "key": "cleft", "threshold": 300})
    with pytest.raises(DataError, match=r"cleft threshold 300 is outside the range of its dtype uint8"):
        open_connectome(path)
    doc = yaml.safe_load(path.read_text())
    doc["layers"]["cleft"]["treshold"] = 3
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(DataError, match=r"treshold"):
        load_connectome_description(path)
    assert is_connectome_description(path)
    assert not is_connectome_description(tmp_path / "syn.parquet")
    assert not is_connectome_description({"bboxes": {}, "voxel_size_nm": [1, 1, 1]})


def test_viewer_section_is_checked(tmp_path):
    template = "https://wk.example.org/datasets/lab/{dataset}/view#{x},{y},{z},0,1.3"
    con = open_connectome(_write(tmp_path, extra={"viewer": {"webknossos": template}}))
    assert con.viewer == {"webknossos": template}
    path = _write(tmp_path / "bad", extra={"viewer": {"webknossos": "https://wk.example.org/view#{x},{y},{depth}"}})
    with pytest.raises(DataError, match=r"placeholder \{depth\} is not allowed") as e:
        load_connectome_description(path)
    assert f"invalid connectome description {path.resolve()}" in str(e.value) and "key 'viewer'" in str(e.value)
