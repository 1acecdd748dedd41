"""The run summary of 08_report: what it says about attention and shared axons."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from synapse_nb.pipeline import report


def _run(tmp_path: Path) -> Path:
    (tmp_path / "tables").mkdir()
    (tmp_path / "html").mkdir()
    return tmp_path


def test_summary_without_attention_or_presynapse_says_so(tmp_path):
    s = report.run_summary(_run(tmp_path))
    assert s.presynapse_markdown() == "07_presynapse did not run in this run."
    assert s.attention_markdown() == "06_attention did not run in this run."


def test_presynapse_sentence_reports_the_test(tmp_path):
    run = _run(tmp_path)
    test = {"n_groups": 15, "n_grouped": 45, "p_value": 0.000999, "effect": 0.4, "ratio": 0.35, "n_permutations": 1000,
            "n_excluded": 0}
    (run / "tables" / "presynapse_test.json").write_text(json.dumps(test))
    text = report.run_summary(run).presynapse_markdown()
    assert "**15 presynaptic neurites**" in text and "(45 synapses)" in text
    assert "**more alike than**" in text and "ratio 0.35" in text and "p = 0.001" in text
    (run / "tables" / "presynapse_test.json").write_text(json.dumps({**test, "p_value": 0.4, "effect": 0.98, "ratio": 0.97}))
    assert "**not detectably more alike than**" in report.run_summary(run).presynapse_markdown()
    (run / "tables" / "presynapse_test.json").write_text(json.dumps({"n_groups": 0, "n_excluded": 7}))
    assert report.run_summary(run).presynapse_markdown() == "No presynaptic neurite makes two or more analysed synapses (7 excluded)."


def test_attention_sentence_names_the_most_attended_structure_per_layer(tmp_path):
    run = _run(tmp_path)
    (run / "attention").mkdir()
    (run / "attention" / "attention.json").write_text(json.dumps({"target": "cluster", "skipped_layers": {"27": "after layer 20"}}))
    pd.DataFrame({
        "layer": [3, 3, 20, 20],
        "structure": ["cleft", "vesicle", "cleft", "vesicle"],
        "inside_outside_ratio": [1.5, 2.5, 3.0, float("nan")],
    }).to_parquet(run / "tables" / "attention_overlap_summary.parquet")
    text = report.run_summary(run).attention_markdown()
    assert "target **cluster**" in text
    assert "features.3: vesicle (2.50x inside vs outside)" in text
    assert "features.20: cleft (3.00x inside vs outside)" in text
    assert "Skipped (after the feature layer, no gradient): features.27." in text


def test_presynapse_sentence_agrees_with_06_and_survives_undefined_numbers(tmp_path):
    """The verdict is 07_presynapse's (p and observed/null effect), and a JSON written by
    07 for one group with no other neurite to compare with (ratio None) still reads."""
    import numpy as np

    from synapse_nb.connectivity import groups as P

    run = _run(tmp_path)
    path = run / "tables" / "presynapse_test.json"
    base = {"n_groups": 3, "n_grouped": 7, "n_permutations": 200}
    path.write_text(json.dumps({**base, "p_value": 0.01, "effect": 1.2, "ratio": 0.9}))
    assert "**not detectably more alike than**" in report.run_summary(run).presynapse_markdown()
    one = pd.DataFrame({"bbox": ["bbox1"] * 2, "Var1": ["a", "b"], "pre_seg_id": [5, 5], "ambiguous": [False] * 2})
    emb = pd.DataFrame({"pca_1": [0.0, 1.0], "umap_1": [0.0, 1.0], "umap_2": [0.0, 1.0]})
    analysis = P.analyze(one, emb, None, one, n_permutations=20)
    assert np.isnan(analysis.ratio)
    path.write_text(json.dumps(analysis.summary()))
    text = report.run_summary(run).presynapse_markdown()
    assert "**not detectably more alike than**" in text
    assert "ratio n/a (no synapse of another neurite to compare with), permutation p = 1 (20 shuffles)" in text
