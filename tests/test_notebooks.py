"""Notebook hygiene, parameter validation and the papermill run of the pipeline."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from synapse_nb.core import config as C
from synapse_nb.pipeline import artifacts, runner

from .conftest import PROJECT_ROOT

NOTEBOOKS = sorted((PROJECT_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_pipeline_notebooks_exist():
    names = {p.stem for p in NOTEBOOKS}
    assert set(runner.PIPELINE) <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_hygiene(path: Path):
    nb = nbformat.read(str(path), as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == runner.KERNEL_NAME
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "commit notebooks without outputs"
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    assert code[0].source.startswith("import synapse_nb as snb") and "snb.setup()" in code[0].source
    assert code.index(tagged[0]) == 1, "the parameters cell comes right after the setup cell"
    # every line of the parameters cell is a typed literal with a comment that papermill parses
    lines = [ln for ln in tagged[0].source.splitlines() if ln.strip()]
    declared = runner.notebook_parameters(path.stem)
    assert len(declared) == len(lines)
    for line in lines:
        assert re.match(r"^\w+: (int|float|str|bool|list|dict) = .+  # .+", line), line
    # notebooks stay thin: no loops, no function definitions
    for cell in code:
        assert not re.search(r"^\s*(for|while|def|class) ", cell.source, re.M), cell.source


def test_unknown_yaml_key_fails_before_running(tiny_params):
    with pytest.raises(C.ConfigError, match=r"unknown parameter 'n_previews'"):
        runner.plan_parameters({**tiny_params, "n_previews": 2}, runner.PIPELINE)
    with pytest.raises(C.ConfigError, match=r"parameter 'n_preview' must be int"):
        runner.plan_parameters({**tiny_params, "n_preview": "two"}, runner.PIPELINE)
    with pytest.raises(C.ConfigError, match=r"'run_dir' is set by the runner"):
        runner.plan_parameters({**tiny_params, "run_dir": "x"}, runner.PIPELINE)
    with pytest.raises(C.ConfigError, match=r"parameter 'alpha'"):
        runner.plan_parameters({**tiny_params, "alpha": 3.0}, runner.PIPELINE)


def test_plan_splits_parameters_per_notebook(tiny_params):
    cfg, per_step = runner.plan_parameters({**tiny_params, "n_preview": 2, "pooling_method": "max"}, runner.PIPELINE)
    assert cfg.pooling_method == "max"
    assert per_step["01_load"]["n_preview"] == 2 and "n_preview" not in per_step["03_extract"]
    assert per_step["03_extract"]["pooling_method"] == "max" and "pooling_method" not in per_step["01_load"]
    assert per_step["01_load"]["cube_size"] == 32


def test_display_keys_of_steps_not_run_are_known():
    # ci.yaml sets n_preview, a display key of 01_load only: running later steps must accept it
    values = C.read_yaml(PROJECT_ROOT / "parameters" / "ci.yaml")
    assert "n_preview" in values
    for steps in (runner.select_steps(start="03_extract"), runner.select_steps(only=["04_reduce"])):
        _, per_step = runner.plan_parameters(values, steps)
        assert list(per_step) == steps
        assert all("n_preview" not in params for params in per_step.values())
    with pytest.raises(C.ConfigError, match=r"unknown parameter 'n_previews'"):
        runner.plan_parameters({**values, "n_previews": 1}, runner.select_steps(only=["04_reduce"]))


def test_select_steps():
    assert runner.select_steps(start="04_reduce") == ["04_reduce", "05_cluster", "06_attention", "07_presynapse", "08_report"]
    assert runner.select_steps(only=["01_load"]) == ["01_load"]
    with pytest.raises(runner.RunnerError, match="unknown step"):
        runner.select_steps(only=["09_nope"])


@pytest.mark.notebooks
def test_kernel_runs_in_runner_environment(tmp_path: Path):
    import papermill

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": runner.KERNEL_NAME, "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("import sys, json\nprint(json.dumps([sys.prefix, sys.executable]))")]
    src, out = tmp_path / "env.ipynb", tmp_path / "env_out.ipynb"
    nbformat.write(nb, str(src))
    papermill.execute_notebook(str(src), str(out), kernel_name=runner.KERNEL_NAME, progress_bar=False)
    text = nbformat.read(str(out), as_version=4).cells[0].outputs[0]["text"]
    prefix, _ = json.loads(text)
    assert prefix == sys.prefix


@pytest.mark.notebooks
def test_pipeline_run_writes_everything(pipeline_run):
    result, base = pipeline_run
    run = result.run
    ran = [s for s in runner.PIPELINE if s != "02_pretrain"]  # ci.yaml does not ask for pretraining
    assert result.ok and [s.notebook for s in result.steps] == ran
    assert "02_pretrain" in result.not_asked
    assert re.fullmatch(r"run_\d{8}_\d{6}(_\d+)?", run.name)
    for name in ("params.yaml", "versions.json", "run.log", "params_01_load.yaml", "params_03_extract.yaml"):
        assert (run.path / name).is_file(), name
    assert "step 03_extract ok" in run.log_path.read_text()
    features = pd.read_parquet(run.tables_dir / "features.parquet")
    feat_cols = [c for c in features.columns if c.startswith("feat_")]
    assert len(feat_cols) == 192  # standard trunk, avg pooling
    assert {"bbox", "Var1", "synapse_class", "pre_side", "ambiguous"} <= set(features.columns)
    csv = run.tables_dir / "features_avg_seg10_alpha1_0.csv"
    assert csv.is_file() and len(pd.read_csv(csv)) == len(features)
    assert (run.tables_dir / "skipped.csv").is_file()
    emb = run.read(artifacts.EMBEDDINGS)
    assert len(emb) == len(features)
    assert {"umap_1", "umap_2", "tsne_1", "umap3d_3", "pca_1"} <= set(emb.columns)
    clusters = pd.read_csv(run.tables_dir / "clusters.csv")
    assert list(clusters["Var1"]) == list(features["Var1"]) and clusters["cluster"].nunique() >= 2
    agreement = run.read(artifacts.AGREEMENT)
    assert agreement.loc[0, "truth"] == "synapse_class" and -1 <= agreement.loc[0, "ari"] <= 1
    import anndata

    adata = anndata.read_h5ad(run.path / "synapses.h5ad")
    assert adata.shape == (len(features), 192) and adata.obsm["X_umap"].shape == (len(features), 2)
    assert not (run.notebooks_dir / "02_pretrain.ipynb").exists()
    for step in ran:
        executed = nbformat.read(str(run.notebooks_dir / f"{step}.ipynb"), as_version=4)
        assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
        assert (base / "reports" / run.name / f"{step}.html").is_file()


@pytest.mark.notebooks
def test_html_reports_have_no_code_and_load_nothing_remote(pipeline_run):
    result, _ = pipeline_run
    for step in result.steps:
        html = step.html.read_text()
        body = html.split("<body", 1)[1]
        code_cells = re.findall(r'class="jp-Cell jp-CodeCell[^"]*"', body)
        assert code_cells and all("jp-mod-noInput" in c for c in code_cells), "code cells must be hidden"
        assert "snb.setup()" not in body
        assert "import synapse_nb" not in html
        assert not re.search(r"<script[^>]+src=[\"']https?://", html), "no script from the internet"
        assert "<img" in html or "plotly" in html
    cluster_html = result.steps[3].html.read_text()
    assert "data:image/gif;base64," in cluster_html, "cluster GIFs embedded inline"
    assert cluster_html.count("Plotly.newPlot") >= 6
    report_html = result.steps[-1].html.read_text()
    assert result.steps[-1].notebook == "08_report"
    assert "RANDOM weights" in report_html and "ARI" in report_html
    assert 'href="01_load.html"' in report_html
    assert 'href="06_attention.html"' in report_html and 'href="presynapse_summary.html"' in report_html
    assert "Grad-CAM target <strong>cluster</strong>" in report_html
    assert "presynaptic neurites</strong> make more than one synapse" in report_html
    extract_html = result.steps[1].html.read_text()
    assert "features_avg_seg10_alpha1_0.csv" in extract_html
    assert "RANDOM weights" in extract_html
    assert extract_html.count("Plotly.newPlot") >= 1


def test_markdown_safe_escapes_user_strings_outside_code():
    from synapse_nb.core.notebook import markdown_safe

    out = markdown_safe("weights <script>alert(1)</script> in `a<b>.pt` **bold**")
    assert "<script>" not in out and "&lt;script&gt;" in out
    assert "`a<b>.pt`" in out and "**bold**" in out
