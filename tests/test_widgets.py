"""The control panel and the exploration widget, driven as plain Python objects (no browser).

Widget values are set the way a click would set them; the tests assert the resulting config,
the saved YAML, the preview arrays (against cubes built independently), the messages shown for
bad input, a run and a sweep launched from the panel, and a clean stop.
"""
from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Literal

import ipywidgets as W
import numpy as np
import pandas as pd
import pytest
import yaml
from plotly.callbacks import Points
from pydantic import Field as PField
from pydantic.fields import FieldInfo

from synapse_nb.core import config as C
from synapse_nb.core import labels as L
from synapse_nb.cubes import store as _cubes_store
from synapse_nb.cubes.rendering import RenderSettings
from synapse_nb.data import datasets as _data_datasets
from synapse_nb.pipeline import artifacts, runner, sweep
from synapse_nb.pipeline import steps as _pipeline_steps
from synapse_nb.ui import panel as widgets
from synapse_nb.ui.fields import field_for
from synapse_nb.ui.reports import ReportsList, list_runs, report_href
from synapse_nb.ui.runs import executed_progress, finish_status

from .conftest import PROJECT_ROOT

RUN_TIMEOUT_S = 600


@pytest.fixture()
def panel(tiny_params, tmp_path) -> widgets.ControlPanel:
    return widgets.ControlPanel(tiny_params, runs_root=tmp_path / "runs", reports_root=tmp_path / "reports",
                                params_dir=tmp_path / "parameters")


def text_of(html_widget: W.HTML) -> str:
    return html_widget.value


# --------------------------------------------------------------------------------------
# the form
# --------------------------------------------------------------------------------------
def test_form_has_a_widget_for_every_parameter(panel):
    form = panel.form
    assert set(C.Config.model_fields) <= set(form.widgets)
    # display parameters of the notebooks appear too; runner-set and interactive-only ones do not
    assert {"n_preview", "n_representatives"} <= set(form.widgets)
    assert "run_dir" not in form.widgets and "interactive" not in form.widgets
    seg = form.widgets["segmentation_type"]
    assert isinstance(seg, W.Dropdown) and len(seg.options) == len(L.SEGMENTATION_TYPES)
    assert seg.options[10] == (f"10: {L.SEGMENTATION_TYPES[10]}", 10)
    assert isinstance(form.widgets["alpha"], W.FloatSlider) and (form.widgets["alpha"].min, form.widgets["alpha"].max) == (0.0, 1.0)
    assert isinstance(form.widgets["gray_value"], W.FloatSlider)
    assert list(form.widgets["pooling_method"].options) == ["avg", "max", "concat_avg_max", "spp"]
    assert list(form.widgets["extraction_method"].options) == ["standard", "stage_specific"]
    assert form.widgets["cube_size"].step == 16 and form.widgets["cube_size"].value == 32
    assert isinstance(form.widgets["bboxes"], W.SelectMultiple)
    assert list(form.widgets["bboxes"].options) == ["bbox1", "bbox2"]  # read from raw_dir
    assert form.errors() == {} and form.warnings() == {}


def test_form_sections_are_the_config_sections(panel):
    from synapse_nb.ui.form import NOTEBOOK_SECTION, config_sections

    acc = panel.form.widget.children[1]
    assert isinstance(acc, W.Accordion)
    titles = [acc.get_title(i) for i in range(len(acc.children))]
    assert titles == [*C.SECTIONS, NOTEBOOK_SECTION]
    assert config_sections()["alpha"] == "synapse cubes" and set(config_sections().values()) == set(C.SECTIONS)


def test_notebook_values_are_checked_by_the_runner_s_rule():
    assert runner.check_notebook_value(3, "int") is None and runner.check_notebook_value(3, "float") is None
    assert runner.check_notebook_value(True, "int") == "must be int, got True"
    assert runner.check_notebook_value("abc", "int") == "must be int, got 'abc'"
    assert runner.check_notebook_value(3, "bool") == "must be bool, got 3"
    assert runner.check_notebook_value(object, "None") is None  # a type papermill could not infer


def test_a_new_config_key_gets_a_widget_from_its_type():
    choice = FieldInfo.from_annotated_attribute(Literal["a", "b"], PField("a", description="pick one"))
    bounded = FieldInfo.from_annotated_attribute(int, PField(3, ge=1, le=9, description="small int"))
    open_float = FieldInfo.from_annotated_attribute(float, PField(1.0, gt=0.0, description="positive"))
    ints = FieldInfo.from_annotated_attribute(list[int], PField(default_factory=list, description="ints"))
    assert isinstance(field_for("x", choice).widget, W.Dropdown) and list(field_for("x", choice).widget.options) == ["a", "b"]
    slider = field_for("n", bounded).widget
    assert isinstance(slider, W.IntSlider) and (slider.min, slider.max) == (1, 9)
    assert isinstance(field_for("f", open_float).widget, W.FloatText)
    f = field_for("layers", ints)
    f.widget.value = "3, 20,27"
    assert f.get() == [3, 20, 27] and "ints" in f.help.value
    # a bounded float becomes a 0.01-step slider, unless its default is finer than the step
    coarse = FieldInfo.from_annotated_attribute(float, PField(0.5, ge=0.0, le=1.0, description="share"))
    fine = FieldInfo.from_annotated_attribute(float, PField(1e-3, gt=0.0, le=1.0, description="learning rate"))
    assert isinstance(field_for("share", coarse).widget, W.FloatSlider)
    rate = field_for("rate", fine)
    assert isinstance(rate.widget, W.FloatText)
    rate.set(1e-3)
    assert rate.get() == 1e-3


def test_widget_values_make_the_config(panel):
    w = panel.form.widgets
    w["segmentation_type"].value = 5
    w["alpha"].value = 0.5
    w["gray_value"].value = 0.25
    w["pooling_method"].value = "spp"
    w["extraction_method"].value = "stage_specific"
    w["bboxes"].value = ("bbox2",)
    w["voxel_size_nm"].value = "8, 8, 4"
    w["label_table"].value = "{bbox2: {mito: 1, vesicle: 3, cleft: 2, cleft2: 4}}"
    w["n_preview"].value = 3
    cfg = panel.config()
    assert (cfg.segmentation_type, cfg.alpha, cfg.gray_value, cfg.pooling_method) == (5, 0.5, 0.25, "spp")
    assert cfg.extraction_method == "stage_specific" and cfg.bboxes == ["bbox2"] and cfg.voxel_size_nm == [8.0, 8.0, 4.0]
    assert cfg.label_ids()["bbox2"] == L.LabelIds(1, 3, 2, 4)
    assert panel.form.parameters()["n_preview"] == 3


def test_validation_messages_next_to_the_fields(panel):
    form, w = panel.form, panel.form.widgets
    w["k_min"].value = 5
    w["k_max"].value = 3
    assert form.errors()["k_max"] == "k_max (3) must be at least k_min (5)"
    assert "k_max (3) must be at least k_min (5)" in form.fields["k_min"].message.value
    assert "k_max" in form.status.value and "snb-error" in form.status.value
    w["k_max"].value = 10
    w["n_neighbors"].value = 1
    assert form.errors() == {"n_neighbors": "Input should be greater than or equal to 2"}
    assert "greater than or equal to 2" in form.fields["n_neighbors"].message.value
    with pytest.raises(C.ConfigError, match=r"parameter 'n_neighbors': Input should be greater than or equal to 2"):
        form.config()
    w["n_neighbors"].value = 15
    w["voxel_size_nm"].value = "8, eight, 8"
    assert form.errors() == {"voxel_size_nm": "give comma-separated float values, e.g. 1, 2, 3"}
    w["voxel_size_nm"].value = "8, 8, -1"
    assert form.errors() == {"voxel_size_nm": "give three positive voxel sizes z, y, x in nm"}
    w["voxel_size_nm"].value = "8, 8, 8"
    w["label_table"].value = "{bbox1: [1, 2"
    assert form.errors()["label_table"].startswith("not valid YAML")
    w["label_table"].value = "{bbox1: {mito: 1}}"
    assert "must have exactly the keys ['cleft', 'cleft2', 'mito', 'vesicle']" in form.errors()["label_table"]
    w["label_table"].value = ""
    w["attention_layers"].value = "3, 5"
    assert "bad: [5]" in form.errors()["attention_layers"]
    w["attention_layers"].value = "3, 20"
    assert form.errors() == {} and "all parameters valid" in form.status.value


def test_missing_folder_is_a_visible_message_not_a_traceback(panel, tmp_path):
    missing = tmp_path / "nowhere" / "raw"
    panel.form.widgets["raw_dir"].value = str(missing)
    assert panel.form.warnings()["raw_dir"] == f"folder not found: {missing}"
    assert f"folder not found: {missing}" in panel.form.fields["raw_dir"].message.value
    assert "cannot open the dataset" in panel.preview.message.value and str(missing) in panel.preview.message.value
    assert panel.preview.rendered is None and panel.preview.images["z"].value == b""
    assert list(panel.form.widgets["bboxes"].options) == []
    with pytest.raises(C.ConfigError, match="fix before running: raw_dir: folder not found"):
        panel.runs.start_run()
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_missing_demo_data_says_how_to_make_it(tmp_path):
    demo = tmp_path / "data" / "demo"
    panel = widgets.ControlPanel({k: str(demo / k.removesuffix("_dir")) for k in ("raw_dir", "seg_dir", "mask_dir")}
                                 | {"table_dir": str(demo / "tables")}, runs_root=tmp_path / "runs", params_dir=tmp_path)
    assert "make demo-data" in panel.preview.message.value and "Traceback" not in panel.preview.message.value


def test_a_bad_starting_file_shows_a_message_and_defaults(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("alpha: 7\n")
    panel = widgets.ControlPanel(bad, runs_root=tmp_path / "runs", params_dir=tmp_path)
    assert f"invalid parameters in {bad}" in panel.header.value and "parameter 'alpha'" in panel.header.value
    assert "defaults shown" in panel.header.value
    assert panel.form.widgets["alpha"].value == C.Config().alpha


# --------------------------------------------------------------------------------------
# parameter files
# --------------------------------------------------------------------------------------
def test_save_load_reset_round_trip(panel, tmp_path):
    w = panel.form.widgets
    w["alpha"].value = 0.35
    w["segmentation_type"].value = 7
    w["n_representatives"].value = 5
    panel.files.name.value = "mine.yaml"
    path = panel.files.save()
    assert path == tmp_path / "parameters" / "mine.yaml" and "saved" in panel.files.message.value
    saved = yaml.safe_load(path.read_text())
    assert saved["alpha"] == 0.35 and saved["segmentation_type"] == 7 and saved["n_representatives"] == 5
    assert set(C.Config.model_fields) <= set(saved)
    runner.plan_parameters(saved, runner.PIPELINE)  # the runner accepts what the panel saves
    assert "mine.yaml" in panel.files.choice.options and panel.files.choice.value is not None
    panel.files.reset()
    assert w["alpha"].value == C.Config().alpha and w["segmentation_type"].value == C.Config().segmentation_type
    assert w["raw_dir"].value == C.Config().raw_dir
    assert panel.files.load("mine.yaml")
    assert w["alpha"].value == 0.35 and w["segmentation_type"].value == 7 and w["n_representatives"].value == 5
    assert panel.config() == C.make_config({k: v for k, v in saved.items() if k in C.Config.model_fields})


def test_nothing_is_written_when_invalid_or_badly_named(panel, tmp_path):
    panel.files.name.value = "keep.yaml"
    path = panel.files.save()
    before = path.read_text()
    panel.form.widgets["k_min"].value = 9
    panel.form.widgets["k_max"].value = 3
    assert panel.files.save() is None
    assert "not saved" in panel.files.message.value and "k_max (3) must be at least k_min (9)" in panel.files.message.value
    assert path.read_text() == before
    panel.form.widgets["k_max"].value = 10
    for name in ("../escape.yaml", "sub/x.yaml", "x.txt", ""):
        panel.files.name.value = name
        assert panel.files.save() is None and "invalid file name" in panel.files.message.value
    assert sorted(p.name for p in (tmp_path / "parameters").iterdir()) == ["keep.yaml"]  # no temporary left behind
    assert not (tmp_path / "escape.yaml").exists()


def test_save_never_replaces_a_file_unasked(panel, tmp_path):
    files = panel.files
    files.name.value = "mine.yaml"
    path = files.save()
    before = path.read_text()
    panel.form.widgets["alpha"].value = 0.25
    assert files.save() is None
    assert f"not saved: {path} exists: tick 'overwrite' to replace it, or choose another name" in files.message.value
    assert path.read_text() == before
    files.overwrite.value = True
    assert files.save() == path and yaml.safe_load(path.read_text())["alpha"] == 0.25
    assert files.overwrite.value is False  # asked again for the next replacement
    panel.form.widgets["alpha"].value = 0.5
    assert files.save() is None and yaml.safe_load(path.read_text())["alpha"] == 0.25


@pytest.mark.parametrize("name", ["demo.yaml", "ci.yaml", "vnc.yaml", "sweep_segtypes.yaml", "dataset_example.yaml", "Demo.yaml"])
def test_save_never_replaces_a_shipped_file(panel, tmp_path, name):
    folder = tmp_path / "parameters"
    folder.mkdir()
    (folder / name).write_text("alpha: 0.9\n")
    panel.files.name.value = name
    panel.files.overwrite.value = True
    assert panel.files.save() is None
    assert f"{name} is shipped with synapse-nb and is never overwritten: save under another name" in panel.files.message.value
    assert (folder / name).read_text() == "alpha: 0.9\n"
    with pytest.raises(C.ConfigError, match="never overwritten"):
        panel.form.save("ci.yaml", overwrite=True)


def test_a_file_that_is_not_utf8_is_left_out_and_the_panel_opens(tiny_params, tmp_path, caplog):
    folder = tmp_path / "parameters"
    folder.mkdir()
    (folder / "latin1.yaml").write_bytes("alpha: 0.5\nraw_dir: caf\xe9\n".encode("latin-1"))
    (folder / "good.yaml").write_text("alpha: 0.5\n")
    (folder / "broken.yaml").write_text("alpha: [\n")
    with caplog.at_level(logging.WARNING, logger="synapse_nb"):
        panel = widgets.ControlPanel(tiny_params, runs_root=tmp_path / "runs", params_dir=folder)
    assert list(panel.files.choice.options) == ["broken.yaml", "good.yaml"]
    note = panel.files.skipped.value
    assert "latin1.yaml left out:" in note and "is not UTF-8 text (byte 23 is 0xe9): save it as UTF-8" in note
    assert "snb-warning" in note and panel.files.skipped in panel.files.widget.children
    assert any("latin1.yaml is not UTF-8 text" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert panel.files.load("good.yaml") and panel.form.widgets["alpha"].value == 0.5
    assert not panel.files.load("latin1.yaml") and "is not UTF-8 text" in panel.files.message.value
    started = widgets.ControlPanel(folder / "latin1.yaml", runs_root=tmp_path / "runs", params_dir=folder)
    assert "is not UTF-8 text" in started.header.value and "defaults shown" in started.header.value


def test_loading_a_file_with_many_unknown_keys_is_a_short_message(panel, tmp_path):
    (tmp_path / "parameters").mkdir()
    (tmp_path / "parameters" / "many.yaml").write_text("".join(f"typo_{i}: 1\n" for i in range(150)))
    assert not panel.files.load("many.yaml")
    message = panel.files.message.value
    assert "unknown parameter(s) ['typo_0', 'typo_1'" in message
    assert "... and 145 more unknown]" in message and message.count("typo_") == 5 and len(message) < 2000


@pytest.mark.parametrize(
    "text, message",
    [
        ("alpha: [0.5\n", "is not valid YAML"),
        ("alpha: 3.0\n", "parameter 'alpha': Input should be less than or equal to 1"),
        ("alhpa: 0.5\n", "unknown parameter(s) ['alhpa']"),
        ("base: {}\ngrid: {alpha: [0.5]}\n", "is a sweep file"),
        ("- 1\n- 2\n", "must hold a mapping"),
    ],
)
def test_loading_a_bad_file_leaves_the_form_unchanged(panel, tmp_path, text, message):
    (tmp_path / "parameters").mkdir(exist_ok=True)
    (tmp_path / "parameters" / "bad.yaml").write_text(text)
    panel.form.widgets["alpha"].value = 0.42
    before = panel.config()
    assert not panel.files.load("bad.yaml")
    assert message in panel.files.message.value and "parameters unchanged" in panel.files.message.value
    assert panel.config() == before


# --------------------------------------------------------------------------------------
# preview
# --------------------------------------------------------------------------------------
def reference_cube(tiny_params, bbox: str, name: str) -> _cubes_store.CubeSet:
    cfg = C.make_config(tiny_params)
    b = next(b for b in _data_datasets.open_dataset(cfg) if b.name == bbox)
    b.table = b.table[b.table[L.NAME_COLUMN] == name]
    return _pipeline_steps.make_cubes([b], cfg, progress=False)


def test_preview_shows_the_cube_the_network_sees(panel, tiny_params):
    pv = panel.preview
    assert list(pv.bbox.options) == ["bbox1", "bbox2"]
    pv.bbox.value = "bbox2"
    name = pv.synapse.options[2][1]
    pv.synapse.value = name
    ref = reference_cube(tiny_params, "bbox2", name)
    assert pv.rendered.shape == (32, 32, 32) and pv.depth.max == 31 and pv.depth.value == 16
    np.testing.assert_array_equal(pv.rendered, ref.rendered(RenderSettings(10, alpha=1.0, gray_value=0.6, intensity_normalization="mask"))[0])
    np.testing.assert_array_equal(pv.planes["z"], pv.rendered[16])
    np.testing.assert_array_equal(pv.planes["x"], pv.rendered[:, :, 16])
    assert pv.images["z"].value[:8] == b"\x89PNG\r\n\x1a\n"
    assert name in pv.title.value and L.SEGMENTATION_TYPES[10] in pv.title.value
    vesicle = ref.table["vesicle_volume_vox"].iloc[0]
    assert f"<td>vesicle_volume_vox</td><td style='text-align:right'>{int(vesicle):,}</td>" in pv.morph.value
    # segmentation type and alpha re-render the same cube; the depth slider moves the planes
    z_png = pv.images["z"].value
    panel.form.widgets["segmentation_type"].value = 1
    panel.form.widgets["alpha"].value = 0.5
    np.testing.assert_array_equal(pv.rendered, ref.rendered(RenderSettings(1, alpha=0.5, gray_value=0.6, intensity_normalization="mask"))[0])
    assert pv.images["z"].value != z_png
    pv.depth.value = 5
    np.testing.assert_array_equal(pv.planes["y"], pv.rendered[:, 5])
    # a bigger cube is rebuilt, and the slider follows it
    panel.form.widgets["cube_size"].value = 48
    assert pv.rendered.shape == (48, 48, 48) and pv.depth.max == 47 and pv.depth.value == 24


def test_preview_flags_an_empty_mask(panel):
    pv = panel.preview
    types = [t for t in L.SEGMENTATION_TYPES if t]
    empty = None
    for bbox in pv.bbox.options:
        pv.bbox.value = bbox
        for _, name in pv.synapse.options:
            pv.synapse.value = name
            found = [t for t in types if len(pv.cubes.empty_mask_rows(t))]
            if found:
                empty = found[0]
                break
        if empty:
            break
    if empty is None:
        pytest.skip("every structure is present in every tiny demo cube")
    panel.form.widgets["segmentation_type"].value = empty
    assert f"the mask of segmentation type {empty} is empty" in pv.message.value


def test_a_synapse_without_a_cube_is_a_message(tiny_params, tmp_path):
    tables = tmp_path / "tables"
    shutil.copytree(tiny_params["table_dir"], tables)
    df = pd.read_excel(tables / "bbox1.xlsx")
    df.loc[0, "central_coord_1"] = 10_000  # x outside the volume
    df.to_excel(tables / "bbox1.xlsx", index=False)
    panel = widgets.ControlPanel({**tiny_params, "table_dir": str(tables)}, runs_root=tmp_path / "runs", params_dir=tmp_path)
    pv = panel.preview
    pv.select("bbox1", str(df.loc[0, "Var1"]))
    assert f"synapse {df.loc[0, 'Var1']} of bbox1 has no cube" in pv.message.value
    assert "lies outside the volume" in pv.message.value
    assert pv.rendered is None and pv.images["x"].value == b"" and pv.morph.value == ""
    pv.select("bbox1", str(df.loc[1, "Var1"]))
    assert pv.rendered is not None and pv.message.value == ""


# --------------------------------------------------------------------------------------
# reports list and status files
# --------------------------------------------------------------------------------------
def fake_run(root: Path, name: str, status: dict | None, pages=("01_load",)) -> Path:
    path = root / name
    (path / "html").mkdir(parents=True)
    for page in pages:
        (path / "html" / f"{page}.html").write_text(f"<html><body><p>{page} & <b>report</b></p></body></html>")
    if status is not None:
        (path / runner.STATUS_NAME).write_text(json.dumps(status))
    return path


def test_reports_list_reads_status_and_links(tmp_path, monkeypatch):
    for var in ("VOILA_BASE_URL", "JPY_SESSION_NAME"):
        monkeypatch.delenv(var, raising=False)
    runs = tmp_path / "runs"
    ok = fake_run(runs, "run_20250101_000000", {"status": "ok", "steps": ["01_load", "03_extract"], "started": "2025-01-01T00:00:00",
                                                "step_status": {"01_load": {"status": "ok"}, "03_extract": {"status": "ok"}}},
                  pages=("03_extract", "01_load"))
    fake_run(runs, "run_20250102_000000", {"status": "running", "pid": 2**22 + 12345, "steps": ["01_load"],
                                           "step_status": {"01_load": {"status": "running"}}}, pages=())
    fake_run(runs, "run_20250103_000000", None, pages=())
    sweep_dir = fake_run(runs, "sweep_20250104_000000", {"kind": "sweep", "status": "stopped", "combinations": {"alpha0_5": "stopped"}}, pages=())
    (sweep_dir / "index.html").write_text("<p>index</p>")
    (runs / "cache").mkdir()
    entries = {e.name: e for e in list_runs(runs)}
    assert list(entries) == ["sweep_20250104_000000", "run_20250103_000000", "run_20250102_000000", "run_20250101_000000"]
    assert entries["run_20250101_000000"].status == "ok"
    assert [p.name for p in entries["run_20250101_000000"].pages] == ["01_load.html", "03_extract.html"]  # pipeline order
    assert entries["run_20250102_000000"].status == "interrupted"  # says running, but its process is gone
    assert entries["run_20250103_000000"].status == "no status file"
    assert entries["sweep_20250104_000000"].kind == "sweep" and entries["sweep_20250104_000000"].steps == {"alpha0_5": "stopped"}
    reports = ReportsList(runs, root=tmp_path)
    assert f"href='{(ok / 'html' / '01_load.html').as_uri()}' target='_blank'>01_load</a>" in reports.table.value
    assert reports.page.options[0] == ("sweep_20250104_000000 / index", str(sweep_dir / "index.html"))
    assert reports.page.value == str(sweep_dir / "index.html")  # a page is chosen, ready to show
    assert "interrupted" in reports.table.value
    reports.show(ok / "html" / "01_load.html")
    assert "<iframe sandbox='allow-scripts' srcdoc=\"&lt;html&gt;" in reports.viewer.value
    assert "01_load &amp; &lt;b&gt;report" in reports.viewer.value
    reports.show(tmp_path / "gone.html")
    assert "report not found" in reports.viewer.value


def test_report_links_where_the_panel_is_served(tmp_path, monkeypatch):
    page = PROJECT_ROOT / "runs" / "run_1" / "html" / "01 load.html"
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    monkeypatch.setenv("VOILA_BASE_URL", "/")
    assert report_href(page, PROJECT_ROOT) == "/voila/files/runs/run_1/html/01%20load.html"
    monkeypatch.delenv("VOILA_BASE_URL")
    monkeypatch.setenv("JPY_SESSION_NAME", "notebooks/00_control_panel.ipynb")
    assert report_href(page, PROJECT_ROOT) == "/files/runs/run_1/html/01%20load.html"
    monkeypatch.setenv("JPY_SESSION_NAME", f"{PROJECT_ROOT.name}/notebooks/00_control_panel.ipynb")  # server started one level up
    assert report_href(page, PROJECT_ROOT) == f"/files/{PROJECT_ROOT.name}/runs/run_1/html/01%20load.html"
    monkeypatch.delenv("JPY_SESSION_NAME")
    assert report_href(page, PROJECT_ROOT) == page.as_uri()


def test_an_unfinished_status_file_is_closed(tmp_path):
    (tmp_path / runner.STATUS_NAME).write_text(json.dumps({
        "status": "running", "steps": ["a", "b", "c"],
        "step_status": {"a": {"status": "ok"}, "b": {"status": "running"}, "c": {"status": "pending"}}}))
    finish_status(tmp_path, "stopped", "killed by the panel")
    data = runner.read_status(tmp_path)
    assert data["status"] == "stopped" and data["error"] == "killed by the panel" and data["finished"]
    assert {k: v["status"] for k, v in data["step_status"].items()} == {"a": "ok", "b": "stopped", "c": "not run"}
    finish_status(tmp_path, "failed", "again")  # a finished file is never rewritten
    assert runner.read_status(tmp_path)["status"] == "stopped"


def test_executed_progress_counts_papermill_cells(tmp_path):
    nb = {"cells": [{"metadata": {"papermill": {"status": s}}} for s in ("completed", "completed", "running", "pending")]}
    (tmp_path / "a.ipynb").write_text(json.dumps(nb))
    (tmp_path / "b.ipynb").write_text('{"cells": [')  # papermill is rewriting it
    assert executed_progress(tmp_path / "a.ipynb") == (2, 4)
    assert executed_progress(tmp_path / "b.ipynb") == (0, 0) == executed_progress(tmp_path / "none.ipynb")


def test_sweep_file_errors_are_messages(panel, tmp_path):
    panel.runs._guarded(lambda: panel.runs.start_sweep(None))
    assert "choose a sweep file" in panel.runs.message.value
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"base": {}, "grid": {"pooling_method": ["avg", "mean"]}}))
    panel.runs._guarded(lambda: panel.runs.start_sweep(spec))
    assert "'pooling_method': Input should be" in panel.runs.message.value
    assert not panel.runs.running and not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------------------
# runs from the panel (child processes running the notebooks)
# --------------------------------------------------------------------------------------
def ci_values(tiny_params) -> dict:
    return {**yaml.safe_load((PROJECT_ROOT / "parameters" / "ci.yaml").read_text()), **tiny_params}


def wait_for(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.mark.notebooks
def test_run_from_the_panel_completes(panel_run):
    # the session's shared run (conftest.panel_run): started from a panel on ci.yaml, the
    # panel's state right after the start and a refused second start recorded there
    panel, run, status, tmp_path = panel_run.panel, panel_run.run, panel_run.status, panel_run.base
    started = panel_run.at_start
    assert started["running"] and started["stop_disabled"] is False and started["run_disabled"]
    assert "already running" in started["second_start"]
    log = "".join(panel.runs.log_lines)
    assert status["status"] == "ok", log[-3000:]
    steps, _ = runner.asked_steps(runner.PIPELINE, C.load_config(run / "params.yaml"))  # 02_pretrain only when asked
    assert status["steps"] == steps and all(status["step_status"][s]["status"] == "ok" for s in steps)
    for s in steps:
        assert (run / "html" / f"{s}.html").is_file() and (tmp_path / "reports" / run.name / f"{s}.html").is_file()
        row = panel.runs._rows[s]
        assert row.state == "ok" and row.bar.value == row.bar.max > 1 and row.bar.bar_style == "success"
    assert "step 08_report ok" in log and "step 08_report ok" in panel.runs.log.value
    assert yaml.safe_load((run / "params.yaml").read_text())["cube_size"] == 32
    assert "run ok" in panel.runs.message.value and not panel.runs.run_button.disabled and panel.runs.stop_button.disabled
    entry = next(e for e in panel.reports.entries if e.name == run.name)  # refreshed when the run ended
    assert entry.status == "ok" and sorted(p.stem for p in entry.pages) == sorted([*steps, "presynapse_summary"])


@pytest.mark.notebooks
def test_stop_ends_the_run_and_keeps_finished_steps(tiny_params, tmp_path):
    import psutil

    panel = widgets.ControlPanel(ci_values(tiny_params), runs_root=tmp_path / "runs", reports_root=tmp_path / "reports",
                                 params_dir=tmp_path)
    run = panel.runs.start_run()
    step_state = lambda s: runner.read_status(run).get("step_status", {}).get(s, {}).get("status")  # noqa: E731
    wait_for(lambda: step_state("03_extract") == "running" or not panel.runs.running, RUN_TIMEOUT_S, "03_extract to start")
    assert panel.runs.running, "".join(panel.runs.log_lines)[-3000:]
    wait_for(lambda: executed_progress(run / "notebooks" / "03_extract.ipynb")[0] >= 2, 120, "03_extract's first cells")
    kernels = psutil.Process(panel.runs.proc.pid).children(recursive=True)
    assert kernels, "the runner has a kernel while a notebook runs"
    panel.runs.stop()
    status = panel.runs.wait(120)
    assert status["status"] == "stopped", "".join(panel.runs.log_lines)[-3000:]
    assert "finished steps kept: 01_load" in status["error"]
    states = {k: v["status"] for k, v in status["step_status"].items()}
    assert states["01_load"] == "ok" and states["03_extract"] == "stopped"
    assert states["02_pretrain"] == runner.NOT_ASKED  # ci.yaml does not ask for pretraining
    assert all(states[s] == "not run" for s in runner.PIPELINE[3:])
    assert (run / "html" / "01_load.html").is_file() and (run / "notebooks" / "01_load.ipynb").is_file()
    assert (run / "html" / "03_extract.html").is_file()  # the interrupted step's partial record
    assert "KeyboardInterrupt" in status["step_status"]["03_extract"]["error"]
    assert panel.runs.proc.returncode is not None
    wait_for(lambda: not any(k.is_running() and k.status() != psutil.STATUS_ZOMBIE for k in kernels), 30, "the kernel to shut down")
    assert panel.runs._rows["03_extract"].bar.bar_style == "warning" and "stopped" in panel.runs.message.value
    assert next(e for e in panel.reports.entries if e.name == run.name).status == "stopped"


@pytest.mark.notebooks
def test_stopping_a_sweep_stops_its_combination_and_starts_no_other(tiny_params, tmp_path):
    spec = tmp_path / "sweep.yaml"
    spec.write_text(yaml.safe_dump({"base": ci_values(tiny_params), "grid": {"alpha": [0.5, 1.0]}}))
    panel = widgets.ControlPanel(ci_values(tiny_params), runs_root=tmp_path / "runs", reports_root=tmp_path / "reports",
                                 params_dir=tmp_path)
    names = [c.name for c in sweep.expand(sweep.read_spec(spec))]
    folder = panel.runs.start_sweep(spec)
    first = folder / names[0]
    wait_for(lambda: runner.read_status(first).get("step_status", {}).get("01_load", {}).get("status") == "running"
             or not panel.runs.running, RUN_TIMEOUT_S, "the first combination to start")
    panel.runs.stop()
    status = panel.runs.wait(120)
    assert status["kind"] == "sweep" and status["status"] == "stopped", "".join(panel.runs.log_lines)[-3000:]
    assert status["combinations"] == {names[0]: "stopped", names[1]: "not run"}
    assert runner.read_status(first)["status"] == "stopped" and not (folder / names[1]).exists()
    assert pd.read_csv(folder / "summary.csv")["status"].tolist() == ["stopped"]


# --------------------------------------------------------------------------------------
# the notebooks
# --------------------------------------------------------------------------------------
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


@pytest.mark.notebooks
def test_control_panel_notebook_executes(tiny_params, tmp_path):
    import nbformat
    import papermill

    params = tmp_path / "start.yaml"
    params.write_text(yaml.safe_dump({**tiny_params, "alpha": 0.3}))
    out = tmp_path / "00.ipynb"
    papermill.execute_notebook(str(PROJECT_ROOT / "notebooks" / "00_control_panel.ipynb"), str(out), kernel_name="python3",
                               parameters={"params_file": str(params), "runs_root": str(tmp_path / "runs")},
                               cwd=str(PROJECT_ROOT), progress_bar=False)
    nb = nbformat.read(str(out), as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert any(WIDGET_MIME in o.get("data", {}) for o in outputs)
    assert not any(o.get("output_type") == "error" for o in outputs)


@pytest.fixture(scope="module")
def explorer_parts(pipeline_run):
    from synapse_nb.figures import maps

    result, _ = pipeline_run
    run = result.run
    features, emb = run.read(artifacts.FEATURES), run.read(artifacts.EMBEDDINGS)
    clusters = run.read(artifacts.CLUSTERS)
    frame = maps.analysis_frame(features, emb, clusters["cluster"].to_numpy())
    cubes = _cubes_store.CubeSet.load(run.cubes_dir)
    return frame, cubes, C.load_config(run.path / "params.yaml")


@pytest.mark.notebooks
def test_explorer_shows_clicked_and_selected_synapses(explorer_parts):
    frame, cubes, cfg = explorer_parts
    ex = widgets.explorer(frame, cubes, cfg)
    assert sum(len(t.x) for t in ex.fig.data) == len(frame) and len(ex.fig.data) >= 2
    trace = ex.fig.data[1]
    ex._on_click(trace, Points(point_inds=[0], xs=[], ys=[], trace_name=trace.name, trace_index=1))
    row = ex.selected[0]
    assert len(ex.selected) == 1
    assert (frame.loc[row, "umap_1"], frame.loc[row, "umap_2"]) == pytest.approx((trace.x[0], trace.y[0]))
    assert str(frame.loc[row, "cluster"]) == trace.name
    S = cfg.cube_size
    assert ex.montage_array.shape == (S, 3 * S + 4) and ex.images.value[:4] == b"\x89PNG"
    ref = cubes.rendered(RenderSettings.from_config(cfg), indices=[int(np.flatnonzero(cubes.table["Var1"] == frame.loc[row, "Var1"])[0])])[0]
    np.testing.assert_array_equal(ex.montage_array[:, :S], ref[S // 2])
    assert str(frame.loc[row, "Var1"]) in ex.table.value
    # a lasso over two traces: every trace reports its part of one gesture
    for i, t in enumerate(ex.fig.data):
        ex._on_selection(t, Points(point_inds=[0, 1] if i < 2 else [], xs=[], ys=[], trace_name=t.name, trace_index=i))
    assert len(ex.selected) == 4 and "4 synapse(s) selected" in ex.message.value
    assert ex.montage_array.shape[0] == 4 * S + 3 * 2
    ex.select(list(range(len(frame))))
    assert f"{len(frame)} synapse(s) selected, first 6 shown" in ex.message.value


@pytest.mark.notebooks
def test_explorer_names_synapses_without_a_cube(explorer_parts):
    frame, cubes, cfg = explorer_parts
    frame = frame.copy()
    frame.loc[0, "Var1"] = "not_built"
    ex = widgets.explorer(frame, cubes, cfg)
    ex.select([0, 1])
    assert "no cube stored for not_built" in ex.message.value and ex.montage_array.shape[0] == cfg.cube_size


@pytest.mark.notebooks
def test_cluster_notebook_shows_the_explorer_when_interactive(pipeline_run, tmp_path):
    import nbformat
    import papermill

    result, _ = pipeline_run
    run_copy = tmp_path / "run"
    shutil.copytree(result.run.path, run_copy)  # follows the cubes link into the cache
    out = tmp_path / "04.ipynb"
    papermill.execute_notebook(str(PROJECT_ROOT / "notebooks" / "05_cluster.ipynb"), str(out), kernel_name="python3",
                               parameters={"run_dir": str(run_copy), "interactive": True, "n_bootstrap": 2},
                               cwd=str(PROJECT_ROOT), progress_bar=False)
    nb = nbformat.read(str(out), as_version=4)
    cell = next(c for c in nb.cells if c.source.startswith("snb.ui.explorer("))
    assert any(WIDGET_MIME in o.get("data", {}) for o in cell.outputs)
    batch = nbformat.read(str(result.run.notebooks_dir / "05_cluster.ipynb"), as_version=4)
    cell = next(c for c in batch.cells if c.source.startswith("snb.ui.explorer("))
    assert cell.outputs == []  # batch runs stay free of widgets


def test_load_list_holds_run_parameters_only(panel, tmp_path):
    folder = tmp_path / "parameters"
    folder.mkdir()
    (folder / "run.yaml").write_text("alpha: 0.5\n")
    (folder / "sweep.yaml").write_text(yaml.safe_dump({"base": {}, "grid": {"alpha": [0.5]}}))
    (folder / "dataset_x.yaml").write_text(yaml.safe_dump({"voxel_size_nm": [8, 8, 8], "bboxes": {"b": {}}}))
    (folder / "broken.yaml").write_text("alpha: [\n")
    assert panel.form.parameter_files() == ["broken.yaml", "run.yaml"]
    assert not panel.files.load("dataset_x.yaml") and "is a dataset description" in panel.files.message.value


def test_loading_a_file_updates_the_preview(panel, tmp_path):
    (tmp_path / "parameters").mkdir()
    (tmp_path / "parameters" / "seg7.yaml").write_text(yaml.safe_dump({**panel.form.parameters(), "segmentation_type": 7, "alpha": 0.2}))
    assert panel.files.load("seg7.yaml")
    assert "type 7:" in panel.preview.title.value and "alpha 0.2" in panel.preview.title.value
    np.testing.assert_array_equal(panel.preview.rendered, panel.preview.cubes.rendered(RenderSettings(7, alpha=0.2, gray_value=0.6, intensity_normalization="mask"))[0])


# --------------------------------------------------------------------------------------
# review fixes
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, message", [("n_preview: abc\nalpha: 0.3\n", "parameter 'n_preview': must be int, got 'abc'"),
                                           ("alpha: 0.3\nwithin_bbox: 3\n", "parameter 'within_bbox': must be bool, got 3")])
def test_a_display_parameter_of_the_wrong_type_is_a_message(panel, tmp_path, text, message):
    (tmp_path / "parameters").mkdir()
    bad = tmp_path / "parameters" / "bad.yaml"
    bad.write_text(text)
    before = panel.config()
    assert not panel.files.load("bad.yaml")  # was a TraitError with alpha already changed
    assert message in panel.files.message.value and str(bad) in panel.files.message.value
    assert panel.config() == before and panel.form.widgets["alpha"].value == before.alpha
    started = widgets.ControlPanel(bad, runs_root=tmp_path / "runs", params_dir=tmp_path / "parameters")
    assert message in started.header.value and "defaults shown" in started.header.value


def test_load_takes_names_from_the_parameters_folder(panel, tmp_path, monkeypatch):
    (tmp_path / "parameters").mkdir()
    (tmp_path / "parameters" / "mine.yaml").write_text("alpha: 0.35\n")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    (elsewhere / "mine.yaml").write_text("alpha: 0.9\n")
    monkeypatch.chdir(elsewhere)
    assert panel.files.load("mine.yaml")
    assert panel.form.widgets["alpha"].value == 0.35 and panel.form.source == tmp_path / "parameters" / "mine.yaml"


def test_a_runner_that_fails_to_start_leaves_the_panel_idle(panel, tmp_path):
    runs = panel.runs
    runs.python = str(tmp_path / "no_python")
    runs._guarded(runs.start_run)
    assert "No such file or directory" in runs.message.value
    assert not runs.running and not runs.run_button.disabled
    assert runs.wait(1) == {}


def test_a_runner_that_ignores_stop_is_killed_with_its_children(panel, tmp_path, caplog):
    import psutil

    runs = panel.runs
    runs.kill_after_s, runs.poll_s = 1.0, 0.1
    runs.on_finish(lambda _: 1 / 0)
    script = ("import signal, subprocess, sys, time; signal.signal(signal.SIGUSR1, signal.SIG_IGN); "
              "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
              "print('child', child.pid, flush=True); time.sleep(120)")
    folder = tmp_path / "runs" / "run_fake"
    folder.mkdir(parents=True)
    runs._launch("run", folder, [sys.executable, "-c", script], ["01_load"])
    wait_for(lambda: any(line.startswith("child ") for line in runs.log_lines), 30, "the fake runner to start")
    child = psutil.Process(int(next(line for line in runs.log_lines if line.startswith("child ")).split()[1]))
    runs.stop()
    status = runs.wait(30)
    assert status["status"] == "stopped" and "stopped from the panel (runner exit code -9)" in status["error"]
    assert "did not stop within 1 s and was killed" in runs.log.value
    assert runs.proc.returncode == -9
    wait_for(lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, 10, "the runner's child to end")
    assert any("run-finished callback failed" in r.message for r in caplog.records)
    assert not runs.running and runs.stop_button.disabled and not runs.run_button.disabled


def test_stop_signal_sets_the_event_and_the_handler_is_restored():
    import os
    import signal
    import threading

    before = signal.getsignal(runner.STOP_SIGNAL)
    stop = threading.Event()
    with runner.stop_on_signal(stop):
        assert signal.getsignal(runner.STOP_SIGNAL) is not before
        os.kill(os.getpid(), runner.STOP_SIGNAL)
        wait_for(stop.is_set, 5, "the stop event")
    assert signal.getsignal(runner.STOP_SIGNAL) is before


def test_a_handler_not_set_from_python_is_restored_as_the_default(monkeypatch):
    import signal
    import threading

    real, calls = signal.signal, []

    def reports_none_first(signum, handler):  # what signal.signal returns for a handler installed from C
        previous = real(signum, handler)
        calls.append(handler)
        return None if len(calls) == 1 else previous

    before = signal.getsignal(runner.STOP_SIGNAL)
    monkeypatch.setattr(signal, "signal", reports_none_first)
    try:
        with runner.stop_on_signal(threading.Event()):
            pass
        assert calls[-1] == signal.SIG_DFL
    finally:
        real(runner.STOP_SIGNAL, before)


def test_preview_refuses_a_type_the_dataset_cannot_serve(tiny_params, tmp_path):
    """Without a vesicle label, switching the preview to type 5 shows the pipeline's refusal."""
    no_vesicle = {b: {"mito": 5, "vesicle": 0, "cleft": 7, "cleft2": 7} for b in ("bbox1", "bbox2")}
    panel = widgets.ControlPanel({**tiny_params, "label_table": no_vesicle, "segmentation_type": 7},
                                 runs_root=tmp_path / "runs", params_dir=tmp_path)
    pv = panel.preview
    pv.select("bbox1", pv.synapse.options[0][1])
    assert pv.rendered is not None and "error" not in pv.message.value
    panel.form.widgets["segmentation_type"].value = 5
    assert pv.rendered is None and pv.planes == {} and all(img.value == b"" for img in pv.images.values())
    assert "segmentation type 5 (pre + post + vesicle + cleft) needs a vesicle-cloud label" in pv.message.value
    panel.form.widgets["segmentation_type"].value = 7
    assert pv.rendered is not None and pv.message.value == ""


# --------------------------------------------------------------------------------------
# checks up front, and the widgets of the newer parameters
# --------------------------------------------------------------------------------------
def test_the_panel_refuses_a_type_the_dataset_cannot_serve_before_any_run_folder(tiny_params, tmp_path):
    no_vesicle = {b: {"mito": 5, "vesicle": 0, "cleft": 7, "cleft2": 7} for b in ("bbox1", "bbox2")}
    panel = widgets.ControlPanel({**tiny_params, "label_table": no_vesicle, "segmentation_type": 7},
                                 runs_root=tmp_path / "runs", params_dir=tmp_path)
    form, runs = panel.form, panel.runs
    assert "all parameters valid" in form.status.value and not runs.run_button.disabled
    form.widgets["segmentation_type"].value = 6
    status = form.status.value
    assert "all parameters valid" not in status and "snb-error" in status
    assert "segmentation type 6 (vesicle) needs a vesicle-cloud label" in status and "Types this dataset supports: 0, 3, 7, 8" in status
    assert "labels.vesicle: 0" in form.fields["segmentation_type"].message.value
    assert runs.run_button.disabled and "segmentation type 6" in runs.run_button.tooltip and "Run is off" in runs.blocked.value
    runs._guarded(runs.start_run)  # a click that gets through anyway is refused before any folder exists
    assert "segmentation type 6 (vesicle)" in runs.message.value and not (tmp_path / "runs").exists()
    # a smart crop needs the presynaptic side, which this dataset cannot tell
    form.widgets["segmentation_type"].value = 7
    assert not runs.run_button.disabled and runs.blocked.value == ""
    form.widgets["crop_mode"].value = "presynapse"
    assert runs.run_button.disabled and "crop_mode 'presynapse'" in form.fields["crop_mode"].message.value
    form.widgets["crop_mode"].value = "cleft"
    assert "all parameters valid" in form.status.value and not runs.run_button.disabled
    # a sweep started from the panel names its combinations the dataset cannot serve
    spec = tmp_path / "bad_sweep.yaml"
    spec.write_text(yaml.safe_dump({"base": {**tiny_params, "label_table": no_vesicle}, "grid": {"segmentation_type": [7, 6]}}))
    runs._guarded(lambda: runs.start_sweep(spec))
    assert "1 of 2 combination(s)" in runs.message.value and "combination segmentation_type6-" in runs.message.value
    assert not (tmp_path / "runs").exists()


def test_newer_parameters_get_fitting_widgets_and_an_int_choice_round_trips(panel, tmp_path):
    w = panel.form.widgets
    rot = w["rotation_averaging"]
    assert isinstance(rot, W.Dropdown) and list(rot.options) == [1, 2, 4] and rot.value == 1
    assert isinstance(w["orient_cubes"], W.Checkbox)
    assert isinstance(w["descriptor_weight"], W.FloatSlider) and (w["descriptor_weight"].min, w["descriptor_weight"].max) == (0.0, 1.0)
    for key, options in (("intensity_normalization", ["minmax", "cube", "mask"]), ("feature_set", ["deep", "descriptors", "hybrid"]),
                         ("k_selection", ["silhouette", "gap", "stability", "consensus"])):
        assert isinstance(w[key], W.Dropdown) and list(w[key].options) == options
    rot.value = 4
    cfg = panel.config()
    assert cfg.rotation_averaging == 4 and type(cfg.rotation_averaging) is int
    panel.files.name.value = "rot.yaml"
    saved = yaml.safe_load(panel.files.save().read_text())
    assert saved["rotation_averaging"] == 4 and type(saved["rotation_averaging"]) is int
    rot.value = 2
    assert panel.files.load("rot.yaml") and rot.value == 4 and panel.config().rotation_averaging == 4
    panel.form.set_values({**saved, "rotation_averaging": 2})
    assert rot.value == 2 and panel.config().rotation_averaging == 2


def test_preview_marks_the_cleft_and_names_undecided_sides_1_and_2(tiny_params, tmp_path):
    import io

    from PIL import Image

    from synapse_nb.figures.markers import MARK_COLORS
    from synapse_nb.ui.preview import mark_pixel

    no_vesicle = {b: {"mito": 5, "vesicle": 0, "cleft": 7, "cleft2": 7} for b in ("bbox1", "bbox2")}
    for labels, sides in (({}, {"pre", "post"}), (no_vesicle, {"1", "2"})):
        panel = widgets.ControlPanel({**tiny_params, "label_table": labels, "segmentation_type": 0},
                                     runs_root=tmp_path / "runs", params_dir=tmp_path)
        pv = panel.preview
        pv.select("bbox1", pv.synapse.options[0][1])
        marks = {m.kind: m for m in pv.marks["z"]}
        assert (marks["cleft"].row, marks["cleft"].col, marks["cleft"].in_slice) == (16, 16, True)
        assert {m.label for m in pv.markers if m.kind != "cleft"} == sides
        img = Image.open(io.BytesIO(pv.images["z"].value)).convert("RGB")
        scale = img.size[0] // 32
        cleft_rgb = tuple(int(MARK_COLORS["cleft"][i:i + 2], 16) for i in (1, 3, 5))
        assert img.getpixel(mark_pixel(marks["cleft"], scale)) == cleft_rgb
        assert "+ cleft centre" in pv.title.value
        if labels:  # undecided: the table names sides 1 and 2 and leaves out pre/post measures
            assert "<td>side 1</td>" in pv.morph.value and "pre ·" not in pv.morph.value and "post ·" not in pv.morph.value
            assert "pre_volume_vox" not in pv.morph.value and "post_volume_vox" not in pv.morph.value
        else:
            assert "pre · seg" in pv.morph.value and "pre_volume_vox" in pv.morph.value
        pv.depth.value = 3  # far from the cleft: its marker is projected onto the slice
        assert not {m.kind: m for m in pv.marks["z"]}["cleft"].in_slice
