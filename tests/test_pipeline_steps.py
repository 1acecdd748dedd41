"""The step layer: what a run records, and the one cache protocol."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from synapse_nb.core import config as C
from synapse_nb.pipeline import artifacts as A
from synapse_nb.pipeline import cache, runner, steps
from synapse_nb.pipeline.runs import Run


def _description(tmp_path: Path) -> Path:
    path = tmp_path / "desc" / "fib.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump({
        "name": "fib", "voxel_size_nm": [10.0, 10.0, 10.0],
        "bboxes": {"block1": {"raw": {"path": "vol.h5", "key": "raw"}, "seg": {"path": "vol.h5", "key": "seg"},
                              "mask": {"path": "vol.h5", "key": "mask"}, "table": "syn.csv",
                              "labels": {"mito": 0, "vesicle": 0, "cleft": 3, "cleft2": 3}}},
    }))
    return path


def test_resolved_parameters_record_the_dataset_not_the_demo(tmp_path):
    desc = _description(tmp_path)
    cfg, per_step = runner.plan_parameters({"dataset": str(desc), "segmentation_type": 3}, ["01_load", "03_extract"])
    assert cfg.voxel_size_nm == [10.0, 10.0, 10.0]
    assert cfg.raw_dir == cfg.seg_dir == cfg.mask_dir == cfg.table_dir == ""
    assert cfg.label_table == {"block1": {"mito": 0, "vesicle": 0, "cleft": 3, "cleft2": 3}}
    assert per_step["01_load"]["voxel_size_nm"] == [10.0, 10.0, 10.0] and per_step["01_load"]["raw_dir"] == ""
    # without a description nothing changes
    plain = C.make_config({"voxel_size_nm": [8.0, 8.0, 8.0]})
    assert steps.resolve_parameters(plain) is plain


def test_an_invalid_description_names_the_key_and_a_missing_one_waits_for_01_load(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nvoxel_size_nm: [1, 1]\nbboxes: {}\n")
    with pytest.raises(C.ConfigError, match=r"parameter 'dataset': invalid dataset description"):
        steps.resolve_parameters(C.make_config({"dataset": str(bad)}))
    missing = C.make_config({"dataset": str(tmp_path / "nope.yaml")})
    assert steps.resolve_parameters(missing) is missing


def test_cache_protocol_computes_once_and_marks_complete_entries(tmp_path):
    run = Run(tmp_path / "run")
    cfg = C.make_config({"cache_dir": str(tmp_path / "cache")})
    calls = []

    def compute():
        calls.append(1)
        return "result"

    def store(value, folder):
        folder.mkdir(parents=True)
        (folder / "v.txt").write_text(value)

    def load(folder):
        return (folder / "v.txt").read_text()

    first, entry = cache.reuse_or_compute(run, cfg, "cubes", compute=compute, store=store, load=load)
    again, entry2 = cache.reuse_or_compute(run, cfg, "cubes", compute=compute, store=store, load=load)
    assert first == again == "result" and entry == entry2 and len(calls) == 1
    assert (entry / cache.ENTRY_MARKER).is_file()
    assert run.read(A.CACHE_RECORD)["cubes"] == {"key": entry.name, "hit": True}
    # an entry without its marker (a crash before it was complete) is computed again
    (entry / cache.ENTRY_MARKER).unlink()
    cache.reuse_or_compute(run, cfg, "cubes", compute=compute, store=store, load=load)
    assert len(calls) == 2 and (entry / cache.ENTRY_MARKER).is_file()

    def broken_store(value, folder):
        raise OSError("disk full")

    with pytest.raises(OSError):
        cache.reuse_or_compute(run, C.make_config({"cache_dir": str(tmp_path / "other")}), "cubes",
                               compute=compute, store=broken_store, load=load)
    assert not any((tmp_path / "other" / "cubes").iterdir())  # nothing half-written left as an entry


def test_artifacts_are_declared_once_and_resolve_inside_the_run(tmp_path):
    paths = [a.path for a in A.ALL]
    assert len(paths) == len(set(paths))
    assert {a.step for a in A.ALL} <= set(A.STEPS) | {A.RUNNER, "{step}"}
    run = Run(tmp_path)
    assert run.file(A.STEP_PARAMS, step="03_extract") == tmp_path / "params_03_extract.yaml"
    for bad in ("../x.csv", "a/b.csv", "", ".."):
        with pytest.raises(ValueError, match="bare file name"):
            run.file(A.SEED_FEATURES_CSV, name=bad)
    with pytest.raises(FileNotFoundError, match="run step 04_reduce first"):
        run.read(A.EMBEDDINGS)


def test_the_architecture_doc_lists_the_current_artifacts():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text(encoding="utf-8")
    start = doc.index("<!-- artifacts table")
    table = doc[doc.index("\n", start) + 1 : doc.index("<!-- end of artifacts table")].strip()
    assert table == A.table_markdown()


def test_many_unknown_keys_give_a_bounded_message_with_the_known_keys_once():
    values = {f"typo_{i}": i for i in range(500)}
    with pytest.raises(C.ConfigError) as exc:
        runner.plan_parameters(values, ["01_load"])
    lines = str(exc.value).splitlines()
    assert len(lines) == 8 and lines[6] == "  ... and 495 more problem(s)"
    assert sum("known parameters" in line for line in lines) == 1


def test_a_dataset_description_has_the_limits_of_a_parameter_file(tmp_path):
    from synapse_nb.core.errors import DataError
    from synapse_nb.data.description import load_dataset_description

    cases = {
        "latin1.yaml": "name: caf\xe9\n".encode("latin-1"),
        "dup.yaml": b"name: a\nname: b\nvoxel_size_nm: [1, 1, 1]\nbboxes: {}\n",
        "bomb.yaml": b"a: &a [1, 1]\nb: [*a, *a]\n",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError) as exc:
            load_dataset_description(tmp_path / name)
        assert name in str(exc.value) and "\n" not in str(exc.value)
