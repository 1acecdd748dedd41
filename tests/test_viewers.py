"""Links that open a synapse in webKnossos or Neuroglancer: validation, content, escaping.

A link must carry nothing but what the user configured plus the position; a hostile template,
source or label must never turn into script in an HTML report.
"""
from __future__ import annotations

import json
from urllib.parse import unquote, urlsplit

import numpy as np
import pandas as pd
import pytest

from synapse_nb.core import labels as L
from synapse_nb.data import check_viewer, link_html, viewer_link, viewer_links

X, Y, Z = L.CENTER_COLUMNS
WK = {"webknossos": "https://wk.example.org/datasets/lab/{dataset}/view#{x},{y},{z},0,1.3"}
NG = {"neuroglancer": {
    "base_url": "https://neuroglancer-demo.appspot.com/",
    "layers": {"raw": "precomputed://gs://bucket/raw", "seg": "precomputed://gs://bucket/seg",
               "cells": {"source": "zarr://https://host/cells.zarr", "type": "segmentation"}},
}}


def ng_state(url: str) -> dict:
    prefix, fragment = url.split("#!", 1)
    assert prefix == NG["neuroglancer"]["base_url"]
    return json.loads(unquote(fragment))


def table() -> pd.DataFrame:
    return pd.DataFrame({
        L.NAME_COLUMN: ["secret_name_a", "secret_name_b"],
        X: [10, 1234], Y: [20.4, 5678], Z: [30, 91],
        "source_path": ["/home/lab/private/connectome.zarr", "/data/x.h5"],
        "pre_id": [77777, 88888],
    }, index=[5, 9])


# --- check_viewer -----------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("viewer", "words"),
    [
        ({"webknossos": "javascript:alert(1)//{x}"}, ["viewer.webknossos", "http(s)"]),
        ({"webknossos": "ftp://host/{dataset}"}, ["viewer.webknossos", "http(s)"]),
        ({"webknossos": "https://host/{dataset}/{token}"}, ["{token}", "only {dataset}, {x}, {y}, {z}"]),
        ({"webknossos": "https://host/{x:>10}"}, ["{x}", "format spec"]),
        ({"webknossos": "https://host/{dataset!r}"}, ["{dataset}", "conversion"]),
        ({"webknossos": "https://host/{}"}, ["placeholder {}"]),
        ({"webknossos": "https://host/{x"}, ["cannot be read"]),
        ({"webknossos": "https://{dataset}.evil.org/{x}"}, ["https://<host>/"]),
        ({"webknossos": 'https://host/"onmouseover=x/{x}'}, ["quote"]),
        ({"neuroglancer": {"base_url": "https://ng/", "layers": {}}}, ["viewer.neuroglancer.layers", "at least one"]),
        ({"neuroglancer": {"base_url": "javascript:alert(1)", "layers": {"raw": "precomputed://x"}}}, ["neuroglancer.base_url"]),
        ({"neuroglancer": {"base_url": "https://ng/", "layers": {"../raw": "precomputed://x"}}}, ["layer name '../raw'", "plain name"]),
        ({"neuroglancer": {"base_url": "https://ng/", "layers": {"raw": {"source": "p://x", "type": "mesh"}}}}, ["raw.type", "image or segmentation"]),
        ({"neuroglancer": {"base_url": "https://ng/", "layers": {"raw": 3}}}, ["layers.raw", "source"]),
        ({"neuroglancer": {"base_url": "https://ng/", "layers": {"raw": "p://x"}, "token": "abc"}}, ["unknown key(s) token"]),
        ({"webknossos": WK["webknossos"], **NG}, ["exactly one"]),
        ({"napari": "x"}, ["unknown key(s) napari"]),
    ],
)
def test_bad_viewer_sections_are_one_line_errors_naming_the_key(viewer, words):
    with pytest.raises(ValueError) as err:
        check_viewer(viewer)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_good_viewer_sections_pass():
    check_viewer(None)
    check_viewer(WK)
    check_viewer(NG)


# --- links ----------------------------------------------------------------------------------------

def test_webknossos_link_fills_the_template_with_quoted_dataset_and_integer_voxel():
    url = viewer_link(WK, dataset="lab set/1", position_xyz=(10.0, 20.4, 29.6), voxel_size_nm_zyx=(8, 8, 8))
    assert url == "https://wk.example.org/datasets/lab/lab%20set%2F1/view#10,20,30,0,1.3"


def test_neuroglancer_link_is_the_configured_state_at_the_synapse():
    url = viewer_link(NG, dataset="ignored", position_xyz=(10, 20, 30), voxel_size_nm_zyx=(40, 8, 4))
    state = ng_state(url)
    assert set(state) == {"dimensions", "position", "crossSectionScale", "layers"}
    assert state["dimensions"] == {"x": [4e-09, "m"], "y": [8e-09, "m"], "z": [4e-08, "m"]}
    assert state["position"] == [10.5, 20.5, 30.5]
    # about 1 um across a 500-pixel panel: 2 nm per pixel = half the 4 nm canonical voxel
    assert state["crossSectionScale"] == pytest.approx(0.5)
    layers = {layer["name"]: (layer["type"], layer["source"]) for layer in state["layers"]}
    assert layers == {
        "raw": ("image", [{"url": "precomputed://gs://bucket/raw"}]),
        "seg": ("segmentation", [{"url": "precomputed://gs://bucket/seg"}]),
        "cells": ("segmentation", [{"url": "zarr://https://host/cells.zarr"}]),
    }


@pytest.mark.parametrize("viewer", [WK, NG], ids=["webknossos", "neuroglancer"])
def test_links_carry_only_the_configuration_and_the_position(viewer):
    frame = table()
    links = viewer_links(frame, viewer, dataset="lab_set", voxel_size_nm=(8, 8, 8))
    assert links.index.tolist() == [5, 9]
    for url, row in zip(links, frame.itertuples()):
        decoded = unquote(url)
        for value in ("secret_name", "/home/lab", "private", "x.h5", "77777", "88888", "source_path"):
            assert value not in decoded
        if viewer is WK:
            assert url == WK["webknossos"].format(dataset="lab_set", x=round(getattr(row, X)), y=round(getattr(row, Y)), z=int(getattr(row, Z)))
        else:
            state = ng_state(url)
            assert state["position"] == [round(v) + 0.5 for v in (getattr(row, X), getattr(row, Y), getattr(row, Z))]
            assert json.dumps(state["layers"]) == json.dumps(ng_state(viewer_link(NG, dataset="d", position_xyz=(0, 0, 0), voxel_size_nm_zyx=(8, 8, 8)))["layers"])


def test_no_viewer_gives_no_links():
    frame = table()
    links = viewer_links(frame, None, dataset="d", voxel_size_nm=(8, 8, 8))
    assert links.isna().all() and links.index.tolist() == [5, 9]
    assert viewer_link(None, dataset="d", position_xyz=(1, 2, 3), voxel_size_nm_zyx=(8, 8, 8)) is None


def test_a_row_without_position_is_named():
    frame = table()
    frame.loc[9, Y] = np.nan
    with pytest.raises(ValueError, match="row 9 has no finite position"):
        viewer_links(frame, WK, dataset="d", voxel_size_nm=(8, 8, 8))


# --- HTML -------------------------------------------------------------------------------------------

def test_link_html_escapes_hostile_text_and_url():
    text = '"><script>alert(1)</script>'
    out = link_html("https://wk.example.org/view?a=1&b=2#1,2,3", text)
    assert out == (
        '<a href="https://wk.example.org/view?a=1&amp;b=2#1,2,3" target="_blank" rel="noopener">'
        "&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;</a>"
    )
    assert "<script>" not in link_html(None, text) and link_html(None, text).startswith("&quot;&gt;&lt;script")
    for bad in ("javascript:alert(1)", 'https://x/"onclick="alert(1)', "data:text/html,<script>"):
        with pytest.raises(ValueError, match="not a plain http"):
            link_html(bad, "x")


def test_neuroglancer_link_survives_html_escaping_unchanged():
    url = viewer_link(NG, dataset="d", position_xyz=(1, 2, 3), voxel_size_nm_zyx=(8, 8, 8))
    out = link_html(url, "open")
    href = out.split('href="', 1)[1].split('"', 1)[0]
    assert href == url and urlsplit(href).scheme == "https"
