from pathlib import Path

import pytest
import yaml

from synapse_nb.core import config as C
from synapse_nb.core import labels as L


def test_defaults_are_valid_and_match_spec():
    cfg = C.make_config()
    assert cfg.cube_size == 80
    assert cfg.gray_value == 0.6
    assert cfg.presynapse_weight == 0.7
    assert cfg.voxel_size_nm == [8.0, 8.0, 8.0]
    assert cfg.segmentation_type in L.SEGMENTATION_TYPES


def test_unknown_key_is_named():
    with pytest.raises(C.ConfigError, match=r"unknown parameter 'alpah'"):
        C.make_config({"alpah": 0.5})


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("alpha", 1.5, r"'alpha'.*less than or equal to 1"),
        ("segmentation_type", 12, r"'segmentation_type'.*less than or equal to 11"),
        ("segmentation_type", "3", r"'segmentation_type'.*valid integer"),
        ("cube_size", 70, r"'cube_size'.*multiple of 16"),
        ("pooling_method", "mean", r"'pooling_method'"),
        ("bboxes", ["../etc"], r"'bboxes'.*invalid bbox name"),
        ("voxel_size_nm", [8, 8], r"'voxel_size_nm'.*three positive"),
        ("label_table", {"bbox9": {"mito": 1}}, r"'label_table'.*exactly the keys"),
        ("layer_num", 34, r"'layer_num'"),
    ],
)
def test_bad_values_name_the_key(key, value, message):
    with pytest.raises(C.ConfigError, match=message):
        C.make_config({key: value})


def test_yaml_round_trip(tmp_path: Path):
    cfg = C.make_config({"alpha": 0.5, "bboxes": ["bbox1", "bbox3"], "label_table": {"bbox9": {"mito": 1, "vesicle": 2, "cleft": 3, "cleft2": 4}}})
    path = C.save_config(cfg, tmp_path / "p.yaml")
    assert yaml.safe_load(path.read_text())["alpha"] == 0.5
    again = C.load_config(path)
    assert again == cfg
    assert again.label_ids()["bbox9"] == L.LabelIds(mito=1, vesicle=2, cleft=3, cleft2=4)
    assert again.label_ids()["bbox2"] == L.SEED_LABEL_TABLE["bbox2"]
    assert not list(tmp_path.glob(".*tmp*")), "temporary files left behind"


def test_load_config_errors_name_the_file(tmp_path: Path):
    with pytest.raises(C.ConfigError, match="not found"):
        C.load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(C.ConfigError, match="mapping"):
        C.load_config(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("alpha: 2\n")
    with pytest.raises(C.ConfigError, match=r"wrong.yaml[\s\S]*'alpha'"):
        C.load_config(wrong)


def test_from_namespace_takes_only_config_keys():
    cfg = C.from_namespace({"alpha": 0.25, "n_preview": 3, "run_dir": "", "__name__": "x"})
    assert cfg.alpha == 0.25


def test_shipped_parameter_files_are_valid():
    root = Path(__file__).resolve().parents[1] / "parameters"
    files = sorted(root.glob("*.yaml"))
    assert files, "no parameter files shipped"
    from synapse_nb.data import connectome
    from synapse_nb.data import description as dataset
    from synapse_nb.pipeline import runner, sweep

    for path in files:
        data = yaml.safe_load(path.read_text())
        if dataset.is_description(data):
            dataset.load_dataset_description(path)
        elif connectome.is_connectome_description(data):
            connectome.load_connectome_description(path)
        elif "grid" in data:
            sweep.validate(sweep.expand(sweep.read_spec(path)), list(runner.PIPELINE), str(path))
        else:
            runner.plan_parameters(data, runner.PIPELINE, source=str(path))


def test_seed_label_table():
    assert L.label_ids_for("bbox2") == L.LabelIds(mito=1, vesicle=3, cleft=2, cleft2=4)
    assert L.label_ids_for("bbox3") == L.LabelIds(mito=6, vesicle=7, cleft=9, cleft2=8)
    assert L.label_ids_for("bbox4") == L.LabelIds(mito=3, vesicle=2, cleft=1, cleft2=4)
    assert L.label_ids_for("bbox7") == L.LabelIds(mito=1, vesicle=2, cleft=4, cleft2=3)
    assert L.label_ids_for("bbox6") == L.label_ids_for("bbox1") == L.LabelIds(mito=5, vesicle=6, cleft=7, cleft2=7)
    assert L.label_ids_for("bbox42") == L.DEFAULT_LABEL_IDS
    assert L.label_ids_for("bbox5") == L.label_ids_for("bbox2")
    assert L.mask_folder_name("bbox3") == "bbox_3"
    assert L.mask_folder_name("sample") == "sample"


def test_k_range_checked_across_keys():
    with pytest.raises(C.ConfigError, match=r"k_max \(3\) must be at least k_min \(5\)"):
        C.make_config({"k_min": 5, "k_max": 3})


def test_every_config_field_is_in_exactly_one_section():
    listed = [key for keys in C.SECTIONS.values() for key in keys]
    duplicated = sorted({k for k in listed if listed.count(k) > 1})
    assert not duplicated, f"keys in more than one section: {duplicated}"
    assert not set(listed) - set(C.Config.model_fields), "SECTIONS names keys Config does not have"
    assert set(C.Config.model_fields) <= set(listed), f"keys in no section: {sorted(set(C.Config.model_fields) - set(listed))}"
    assert all(title and keys for title, keys in C.SECTIONS.items())


def test_validation_messages_have_one_wording():
    with pytest.raises(C.ConfigError) as exc:
        C.make_config({"cube_size": 70, "alpah": 1})
    lines = str(exc.value).splitlines()
    assert lines[0] == "invalid parameters in parameters:"
    assert "  parameter 'cube_size': must be a multiple of 16 (the network halves it four times) (got 70)" in lines
    assert "  unknown parameter 'alpah'" in lines
    assert lines[-1].startswith("  known parameters: raw_dir, seg_dir")  # listed once, after the problems
    with pytest.raises(C.ConfigError) as exc:  # a check across keys names no single key
        C.make_config({"k_min": 5, "k_max": 3})
    assert str(exc.value).splitlines()[1] == "  k_max (3) must be at least k_min (5)"


def test_input_range_choices_follow_the_network_convention():
    from typing import get_args

    from synapse_nb.core.layers import INPUT_RANGES

    assert get_args(C.Config.model_fields["input_range"].annotation) == ("auto", *INPUT_RANGES)
