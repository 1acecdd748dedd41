"""Sampling policies over a synapse table: every guarantee a run relies on, checked.

No synapse twice, the same seed gives the same sample (whatever the table order), exact counts
per stratum, ROI bounds, per-axon caps, and clear errors for bad plans and duplicate names.
"""
from __future__ import annotations

import ast
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "synapse_nb_hypothesis"))

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from synapse_nb.core import labels as L
from synapse_nb.sampling import SamplePlan, sample_synapses

X, Y, Z = L.CENTER_COLUMNS
PROPS = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def make_table(n: int, *, seed: int = 0, n_axons: int = 20, unknown_pre: float = 0.1, size: int = 100) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    pre = pd.array(rng.integers(0, n_axons, n), dtype="Int64")
    pre[rng.random(n) < unknown_pre] = pd.NA
    return pd.DataFrame({
        L.NAME_COLUMN: [f"syn{i}" for i in range(n)],
        X: rng.integers(0, size, n),
        Y: rng.integers(0, size, n),
        Z: rng.integers(0, size, n),
        "pre_id": pre,
        "table_row": np.arange(n),
        "region": rng.choice(["north", "south", "east"], n),
    })


def names(result) -> list[str]:
    return result.table[L.NAME_COLUMN].tolist()


# --- plan validation ----------------------------------------------------------------------

@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"policy": "sometimes"}, ["policy", "all, random, stratified, per_axon"]),
        ({"policy": "random", "n": 0}, ["n", ">= 1"]),
        ({"policy": "random"}, ["n", "missing"]),
        ({"policy": "stratified", "per_stratum": 3}, ["strata_column", "strata_boxes"]),
        ({"policy": "stratified", "strata_column": "region", "strata_boxes": {"a": ((0, 0, 0), (1, 1, 1))}, "per_stratum": 1},
         ["both given"]),
        ({"policy": "stratified", "strata_boxes": {"a": ((0, 0, 0), (0, 1, 1))}, "per_stratum": 1}, ["strata_boxes['a']", "lo >= hi"]),
        ({"roi": (((0, 0, 5), (1, 1, 5)),)}, ["roi[0]", "lo >= hi"]),
        ({"policy": "per_axon", "per_axon": 0}, ["per_axon", ">= 1"]),
        ({"policy": "per_axon"}, ["per_axon", "missing"]),
        ({"policy": "all", "per_axon": 2}, ["per_axon", "only used by policy 'per_axon'"]),
        ({"policy": "all", "n": 5}, ["n", "not used by policy 'all'"]),
        ({"policy": "stratified", "strata_boxes": {"a": ((0, 0, 0), (1, 1, 1))}, "per_stratum": {"b": 2}}, ["per_stratum", "b", "use one of a"]),
        ({"roi": ((("0", 0, 0), (1, 1, 1)),)}, ["roi[0]", "not a box"]),
    ],
)
def test_bad_plans_are_one_line_errors_naming_the_field(kwargs, words):
    with pytest.raises(ValueError) as err:
        SamplePlan(**kwargs)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_unknown_strata_column_names_the_available_columns():
    plan = SamplePlan(policy="stratified", strata_column="layer", per_stratum=2)
    with pytest.raises(ValueError, match=r"strata_column 'layer'.*use one of Var1, .*region"):
        sample_synapses(make_table(30), plan)


def test_plan_round_trips_through_its_plain_form():
    plan = SamplePlan(policy="stratified", strata_boxes={"a": ((0, 0, 0), (5, 5, 5))}, per_stratum={"a": 3}, seed=4,
                      roi=(((0, 0, 0), (9, 9, 9)),))
    assert SamplePlan.from_dict(plan.as_dict()) == plan
    with pytest.raises(ValueError, match="unknown key.*size"):
        SamplePlan.from_dict({"policy": "all", "size": 3})


def test_duplicate_names_are_refused_naming_both_rows():
    table = make_table(50)
    table.loc[37, L.NAME_COLUMN] = "syn12"
    with pytest.raises(ValueError, match=r"'syn12' appears twice .*table rows 12 and 37"):
        sample_synapses(table, SamplePlan())


# --- guarantees ------------------------------------------------------------------------------

@PROPS
@given(n_rows=st.integers(0, 300), n=st.integers(1, 400), seed=st.integers(0, 2**32 - 1))
def test_random_never_repeats_and_takes_min_of_asked_and_available(n_rows, n, seed):
    table = make_table(n_rows, seed=seed % 1000)
    result = sample_synapses(table, SamplePlan(policy="random", n=n, seed=seed))
    got = names(result)
    assert len(got) == len(set(got)) == min(n, n_rows)
    assert set(got) <= set(table[L.NAME_COLUMN])
    rows = result.table["table_row"].to_numpy()
    assert np.all(np.diff(rows) > 0)  # fixed order: by table row
    if n >= n_rows:
        assert got == table[L.NAME_COLUMN].tolist()
    assert result.summary[["available", "asked", "taken"]].iloc[0].tolist() == [n_rows, n, min(n, n_rows)]


def test_same_seed_same_sample_whatever_the_row_order_other_seed_another():
    table = make_table(2000)
    plan = SamplePlan(policy="random", n=100, seed=7)
    first = names(sample_synapses(table, plan))
    shuffled = table.sample(frac=1.0, random_state=3)
    assert names(sample_synapses(shuffled, plan)) == first
    assert names(sample_synapses(table, SamplePlan(policy="random", n=100, seed=8))) != first
    # a larger n with the same seed keeps the smaller sample
    assert set(first) <= set(names(sample_synapses(table, SamplePlan(policy="random", n=300, seed=7))))


def test_random_with_more_asked_than_available_takes_all_and_says_so():
    table = make_table(40)
    result = sample_synapses(table, SamplePlan(policy="random", n=100, seed=1))
    assert names(result) == table[L.NAME_COLUMN].tolist()
    assert result.notes == ["random: 100 asked, 40 available: all 40 taken"]


box_coord = st.integers(0, 99)


@st.composite
def boxes(draw):
    lo = [draw(box_coord) for _ in range(3)]
    hi = [draw(st.integers(v + 1, 100)) for v in lo]
    return (tuple(lo), tuple(hi))


@PROPS
@given(roi=st.lists(boxes(), min_size=1, max_size=3), seed=st.integers(0, 10_000), policy=st.sampled_from(["all", "random", "per_axon"]))
def test_roi_keeps_only_positions_inside_a_half_open_box(roi, seed, policy):
    table = make_table(400, seed=seed)
    extra = {"n": 50} if policy == "random" else {"per_axon": 3} if policy == "per_axon" else {}
    result = sample_synapses(table, SamplePlan(policy=policy, roi=tuple(roi), seed=seed, **extra))
    xyz = result.table[list(L.CENTER_COLUMNS)].to_numpy()
    inside = np.zeros(len(xyz), dtype=bool)
    for lo, hi in roi:
        inside |= np.all((xyz >= lo) & (xyz < hi), axis=1)
    assert inside.all()
    if policy == "all":  # and nothing inside was lost
        all_xyz = table[list(L.CENTER_COLUMNS)].to_numpy()
        expected = np.zeros(len(all_xyz), dtype=bool)
        for lo, hi in roi:
            expected |= np.all((all_xyz >= lo) & (all_xyz < hi), axis=1)
        assert len(result.table) == int(expected.sum())


def test_roi_upper_bound_is_excluded():
    table = make_table(3)
    table[list(L.CENTER_COLUMNS)] = [[0, 0, 0], [10, 5, 5], [9, 9, 9]]
    result = sample_synapses(table, SamplePlan(roi=(((0, 0, 0), (10, 10, 10)),)))
    assert names(result) == ["syn0", "syn2"]


@PROPS
@given(per=st.integers(1, 60), seed=st.integers(0, 10_000), n_rows=st.integers(0, 200))
def test_stratified_by_column_counts_are_exact(per, seed, n_rows):
    table = make_table(n_rows, seed=seed)
    result = sample_synapses(table, SamplePlan(policy="stratified", strata_column="region", per_stratum=per, seed=seed))
    got = names(result)
    assert len(got) == len(set(got))
    available = table["region"].value_counts()
    taken = result.table["stratum"].value_counts()
    for region, count in available.items():
        assert taken.get(region, 0) == min(per, count)
    assert (result.table["stratum"] == result.table["region"]).all()
    summary = result.summary.set_index("group")
    for region, count in available.items():
        assert summary.loc[region, "taken"] == min(per, count)


def test_stratified_with_counts_per_stratum_and_short_strata_noted():
    table = make_table(300, seed=2)
    available = table["region"].value_counts()
    per = {"north": 5, "south": int(available["south"]) + 10, "west": 3}
    result = sample_synapses(table, SamplePlan(policy="stratified", strata_column="region", per_stratum=per, seed=1))
    counts = result.table["stratum"].value_counts()
    assert counts["north"] == 5
    assert counts["south"] == available["south"]
    assert "east" not in counts  # not listed: left out
    assert f"stratum south: {per['south']} asked, {available['south']} available: all {available['south']} taken" in result.notes
    assert "stratum west: 3 asked, 0 available: none taken" in result.notes
    assert "strata east are not listed in per_stratum: left out" in result.notes


def test_strata_boxes_first_listed_wins_and_says_so():
    table = make_table(6)
    table[list(L.CENTER_COLUMNS)] = [[1, 1, 1], [2, 2, 2], [6, 6, 6], [7, 7, 7], [4, 4, 4], [50, 50, 50]]
    boxes_ = {"north": ((0, 0, 0), (5, 5, 5)), "south": ((3, 3, 3), (10, 10, 10))}
    result = sample_synapses(table, SamplePlan(policy="stratified", strata_boxes=boxes_, per_stratum=10))
    assert dict(zip(names(result), result.table["stratum"])) == {
        "syn0": "north", "syn1": "north", "syn2": "south", "syn3": "south", "syn4": "north",
    }
    assert "1 synapses of stratum box south also lie in north: each belongs to the first box listed" in result.notes
    assert "1 synapses in no stratum box left out of stratified sampling" in result.notes


@PROPS
@given(per=st.integers(1, 8), seed=st.integers(0, 10_000), n_axons=st.integers(1, 30))
def test_per_axon_caps_every_axon_and_fills_those_with_enough(per, seed, n_axons):
    table = make_table(200, seed=seed, n_axons=n_axons)
    result = sample_synapses(table, SamplePlan(policy="per_axon", per_axon=per, seed=seed))
    got = names(result)
    assert len(got) == len(set(got))
    assert result.table["pre_id"].notna().all()
    available = table["pre_id"].value_counts()
    taken = result.table["pre_id"].value_counts()
    for axon, count in available.items():
        assert taken.get(axon, 0) == min(per, count)


def test_per_axon_leaves_out_unknown_partners_and_says_how_many():
    table = make_table(100, unknown_pre=0.0)
    table.loc[[3, 5, 8], "pre_id"] = pd.NA
    result = sample_synapses(table, SamplePlan(policy="per_axon", per_axon=2))
    assert "3 synapses without a known presynaptic partner left out of per_axon sampling" in result.notes


def test_per_axon_with_a_total_takes_random_axons_first():
    table = make_table(500, n_axons=40, unknown_pre=0.0)
    plan = SamplePlan(policy="per_axon", per_axon=3, n=31, seed=5)
    result = sample_synapses(table, plan)
    assert len(result.table) == 31
    taken = result.table["pre_id"].value_counts()
    assert (taken <= 3).all()
    assert (taken < 3).sum() <= 1  # only the last axon may be cut
    assert any("n = 31 in total" in note for note in result.notes)
    other = sample_synapses(table, SamplePlan(policy="per_axon", per_axon=3, n=31, seed=6))
    assert set(other.table["pre_id"]) != set(result.table["pre_id"])  # axons drawn at random, not lowest ids first


def test_per_axon_needs_the_pre_column():
    table = make_table(10).drop(columns="pre_id")
    with pytest.raises(ValueError, match="no column.*pre_id"):
        sample_synapses(table, SamplePlan(policy="per_axon", per_axon=1))


def test_all_keeps_the_table_in_row_order_and_extra_columns():
    table = make_table(20).sample(frac=1.0, random_state=1)
    result = sample_synapses(table, SamplePlan())
    assert result.table["table_row"].tolist() == list(range(20))
    assert "region" in result.table.columns and "stratum" not in result.table.columns


def test_sampling_imports_only_core_and_data():
    package = Path(__file__).resolve().parents[1] / "synapse_nb" / "sampling"
    found = set()
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level >= 2:  # from ..cubes import x
                found.add((node.module or "").split(".")[0] or "synapse_nb")
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("synapse_nb"):
                found.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("synapse_nb.")}
    assert found <= {"core", "data"}, found
