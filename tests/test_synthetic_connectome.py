"""The synthetic connectome: files, table consistency with the volumes, agglomerates, determinism."""
from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml
import zarr

from synapse_nb.data.synthetic_connectome import CLEFT_THRESHOLD, MASK_LABELS, make_synthetic_connectome

SHAPE = (128, 256, 256)
N = 80


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return make_synthetic_connectome(tmp_path_factory.mktemp("syn") / "c", shape_zyx=SHAPE, n_synapses=N, seed=0,
                                     progress=False)


def test_files_and_descriptions(small):
    for p in [small.zarr, small.webknossos, small.description, small.description_webknossos, small.agglomerates,
              *small.tables.values()]:
        assert p.exists(), p
    group = zarr.open_group(str(small.zarr), mode="r")
    assert {k: (group[k].shape, group[k].dtype) for k in ("raw", "seg", "cleft", "mask")} == {
        "raw": (SHAPE, np.uint8), "seg": (SHAPE, np.uint32), "cleft": (SHAPE, np.uint8), "mask": (SHAPE, np.uint8)}
    doc = yaml.safe_load(small.description.read_text())
    assert doc["synapses"]["partner_ids"] == "segments"
    assert doc["layers"]["cleft"]["threshold"] == CLEFT_THRESHOLD
    assert doc["layers"]["mask"]["labels"] == MASK_LABELS
    assert doc["synapses"]["columns"]["keep"] == ["synapse_class", "region"]
    wk_doc = yaml.safe_load(small.description_webknossos.read_text())
    assert wk_doc["synapses"]["path"] == "synapses.h5" and wk_doc["layers"]["seg"]["format"] == "webknossos"
    table = small.table
    assert 0.85 * N <= len(table) <= N
    assert set(table["synapse_class"]) == {"A_spine_bigcloud", "B_shaft_mito", "C_perforated"}
    assert set(table["region"]) == {"q1", "q2", "q3", "q4"}
    pd.testing.assert_frame_equal(pd.read_csv(small.tables["csv"]), table, check_dtype=False)
    with h5py.File(small.tables["h5"], "r") as f:
        assert list(f["synapses"]["synapse_id"][:]) == list(table["synapse_id"])
        assert [v.decode() for v in f["synapses"]["synapse_class"][:]] == list(table["synapse_class"])


def test_positions_on_cleft_between_partners(small):
    group = zarr.open_group(str(small.zarr), mode="r")
    seg, cleft, mask = group["seg"][:], group["cleft"][:], group["mask"][:]
    table = small.table
    z, y, x = table["z"].to_numpy(), table["y"].to_numpy(), table["x"].to_numpy()
    assert (z >= 0).all() and (z < SHAPE[0]).all() and (y < SHAPE[1]).all() and (x < SHAPE[2]).all()
    assert (cleft[z, y, x] >= CLEFT_THRESHOLD).all()
    assert (seg[z, y, x] == 0).all()  # the cleft is the gap between the partners
    for row in table.itertuples():
        window = seg[max(row.z - 9, 0):row.z + 10, max(row.y - 9, 0):row.y + 10, max(row.x - 9, 0):row.x + 10]
        assert row.pre_segment in window and row.post_segment in window, row.synapse_id
        big = mask[max(row.z - 35, 0):row.z + 36, max(row.y - 35, 0):row.y + 36, max(row.x - 35, 0):row.x + 36]
        assert (big == MASK_LABELS["vesicle"]).any(), row.synapse_id
    # false-positive blobs: above-threshold prediction away from every synapse exists
    far = np.ones(SHAPE, bool)
    for row in table.itertuples():
        far[max(row.z - 20, 0):row.z + 21, max(row.y - 20, 0):row.y + 21, max(row.x - 20, 0):row.x + 21] = False
    assert (cleft[far] >= CLEFT_THRESHOLD).any()
    assert set(np.unique(mask)) == {0, MASK_LABELS["mito"], MASK_LABELS["vesicle"]}


def test_agglomerates_merge_segments(small):
    with h5py.File(small.agglomerates, "r") as f:
        mapping = f["segment_to_agglomerate"][:]
    assert mapping.dtype == np.uint64 and mapping[0] == 0 and len(mapping) == small.n_segments + 1
    per_agg = pd.Series(mapping[1:]).value_counts()
    assert (per_agg >= 2).mean() > 0.5  # most neurites are over-segmented
    table = small.table
    assert (mapping[table["pre_segment"].to_numpy()] == table["axon"].to_numpy()).all()
    assert (mapping[table["post_segment"]] != mapping[table["pre_segment"]]).all()
    per_axon = table.groupby("axon").size()
    assert per_axon.max() >= 4 and (per_axon >= 2).mean() > 0.6
    # synapses of one axon sit on more than one of its segments somewhere
    assert (table.groupby("axon")["pre_segment"].nunique() > 1).any()


def test_webknossos_matches_zarr(small):
    import webknossos as wk

    ds = wk.Dataset.open(small.webknossos)
    group = zarr.open_group(str(small.zarr), mode="r")
    z0, y0, x0 = 50, 100, 60  # a window across a slab boundary (64)
    for name in ("raw", "seg", "cleft", "mask"):
        window = ds.get_layer(name).get_mag("1").read(absolute_offset=(x0, y0, z0), size=(40, 30, 30))
        window = np.asarray(window)[0].transpose(2, 1, 0)
        np.testing.assert_array_equal(window, group[name][z0:z0 + 30, y0:y0 + 30, x0:x0 + 40], err_msg=name)
    assert ds.get_segmentation_layer("seg").largest_segment_id == small.n_segments


def test_same_seed_same_bytes(tmp_path):
    # a small volume of two slabs (64 + 32 planes), made twice with one seed and once with another
    kw = {"shape_zyx": (96, 128, 128), "n_synapses": 12, "webknossos": False, "progress": False}
    first, again = (make_synthetic_connectome(tmp_path / name, seed=3, **kw) for name in ("a", "b"))
    other = make_synthetic_connectome(tmp_path / "c", seed=4, **kw)
    assert len(first.table) > 0
    pd.testing.assert_frame_equal(again.table, first.table)
    for name in ("raw", "seg", "cleft", "mask"):
        for chunk in ("0/0/0", "1/0/0"):
            a = (first.zarr / name / "c" / chunk).read_bytes()
            assert a == (again.zarr / name / "c" / chunk).read_bytes(), (name, chunk)
    assert (first.zarr / "raw" / "c" / "0/0/0").read_bytes() != (other.zarr / "raw" / "c" / "0/0/0").read_bytes()


def test_planner_places_all_asked_apart():
    from synapse_nb.data.synthetic_connectome import _plan, _spacing

    shape, n = (256, 512, 512), 375  # the default size's density on an eighth of its volume
    plan = _plan(shape, n, seed=1)
    assert len(plan.synapses) == n
    c = np.array([s.center for s in plan.synapses], float)
    d = np.linalg.norm(c[:, None] - c[None], axis=2) + np.eye(n) * 1e9
    assert d.min() >= _spacing(shape, n) - 1e-9
    # no centre inside another synapse's bouton (the painter would drop it)
    bouton = np.array([s.center - s.normal * s.db for s in plan.synapses])
    rb = np.array([s.rb for s in plan.synapses])
    db = np.linalg.norm(c[:, None] - bouton[None], axis=2) + np.eye(n) * 1e9
    assert (db >= rb[None] + 2).all()
    sizes = pd.Series([plan.axon_of[i] for i in range(n)]).value_counts()
    assert sizes.max() <= 8 and (sizes >= 2).mean() > 0.8


def test_open_connectome_reads_both_descriptions(small):
    from synapse_nb.data.connectome import open_connectome

    zarr_c = open_connectome(small.description)
    wk_c = open_connectome(small.description_webknossos)
    pd.testing.assert_frame_equal(zarr_c.table, wk_c.table)
    assert len(zarr_c.table) == len(small.table)
    assert list(zarr_c.table["pre_id"]) == list(small.table["axon"])  # partner ids mapped to agglomerates
    assert zarr_c.raw.shape == wk_c.raw.shape == SHAPE
