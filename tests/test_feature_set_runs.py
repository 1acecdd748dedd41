"""The pipeline from 04_reduce on with another feature set, on a copy of the shared pipeline run."""
from __future__ import annotations

import re
import shutil

import pytest
import yaml

from synapse_nb.pipeline import artifacts, runner

from .conftest import SHARED_RUN_VALUES

pytestmark = pytest.mark.notebooks


def test_rerun_from_reduce_with_the_descriptor_feature_set(pipeline_run, ci_values, tmp_path):
    """04_reduce..08_report rerun with feature_set 'descriptors' (the shared run used the default,
    'hybrid'): every step succeeds, 06 explains the network's features and says so, 08 names the
    feature set; the shared run is left as it was."""
    shared, _ = pipeline_run
    assert shared.ok
    source = shared.run.path
    shared_05 = (source / "params_06_attention.yaml").read_bytes()
    copy = tmp_path / "descriptor_run"
    shutil.copytree(source, copy, symlinks=True)
    for link in [p for p in copy.rglob("*") if p.is_symlink()]:  # the cube cache link is relative to the run
        target = (source / link.relative_to(copy)).resolve()
        link.unlink()
        link.symlink_to(target, target_is_directory=target.is_dir())
    values = {**ci_values, **SHARED_RUN_VALUES, "feature_set": "descriptors"}  # the shared run's values but the set

    steps = ["04_reduce", "05_cluster", "06_attention", "08_report"]  # 07 reads the same clusters as any set
    result = runner.run_pipeline(values, run_dir=copy, runs_root=tmp_path / "runs", reports_root=tmp_path / "reports",
                                 only=steps)

    assert [s.notebook for s in result.steps] == steps
    assert all(s.status == "ok" for s in result.steps), [(s.notebook, s.error) for s in result.steps]
    run = result.run
    assert run.path == copy.resolve()
    assert run.read(artifacts.STEP_PARAMS, step="04_reduce")["feature_set"] == "descriptors"
    quality = run.read(artifacts.CLUSTER_QUALITY)
    assert quality["feature_set"] == "descriptors" and quality["feature_columns"].get("descriptors", 0) > 0
    assert not quality["feature_columns"].get("deep")
    samples = run.read(artifacts.ATTENTION_SAMPLES)
    assert len(samples) and (samples["clustered_on"] == "descriptors").all() and (samples["target"] == "cluster").all()
    assert samples["feature_match"].min() > 0.99  # same cubes and network as 03_extract
    page_05 = (run.html_dir / "06_attention.html").read_text()
    assert "descriptors" in page_05 and "played no part in the clustering" in page_05
    page_07 = (run.html_dir / "08_report.html").read_text()
    assert re.search(r"on (<strong>|\*\*)descriptors(</strong>|\*\*) features", page_07), "08_report does not name the feature set"
    # the shared fixture's run is untouched: it still clustered the default hybrid set, and its
    # 06 page says what its maps explain
    assert yaml.safe_load((source / "params_04_reduce.yaml").read_text())["feature_set"] == "hybrid"
    assert (source / "params_06_attention.yaml").read_bytes() == shared_05
    assert (shared.run.read(artifacts.ATTENTION_SAMPLES)["clustered_on"] == "hybrid").all()
    assert "not the descriptors" in (shared.run.html_dir / "06_attention.html").read_text()
