"""Tests of nodulegrowth.cohort: manifest validation and the runner's mechanics.

The runner's mechanics (manifest order, one failed pair not stopping the
cohort, atomic per-pair results, resume) are tested with a stand-in for
``process_pair`` so they run in milliseconds; the real chain is exercised end
to end in ``tests/test_pipeline.py``.
"""
from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from nodulegrowth import cohort
from nodulegrowth.cohort import (CONTRACT_COLUMNS, ManifestRow, PipelineConfig, make_tasks,
                                 read_manifest, run_cohort)
from nodulegrowth.errors import ManifestError

HEADER = "patient_id,nodule_id,t1_image,t2_image,t1_date,t2_date,t1_x,t1_y,t1_z,t1_diameter_mm,diagnosis"


def write(tmp_path: Path, text: str, name: str = "manifest.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_valid_rows_are_parsed_and_paths_resolved(tmp_path):
    m = read_manifest(write(tmp_path, HEADER + "\n"
                            "P1,1,a/t1.nii.gz,a/t2.nii.gz,2020-01-02,2021-01-02,1.5,-2,30,8.1,malignant\n"
                            "P1,2,a/t1.nii.gz,a/t2.nii.gz,2020-01-02,2021-01-02,4,5,6,,benign\n"
                            "P2,,/abs/t1.mha,/abs/t2.mha,,,7,8,9,,\n"))
    assert [r.error for r in m.rows] == [None, None, None]
    r0 = m.rows[0]
    assert r0.t1_point == (1.5, -2.0, 30.0)
    assert r0.t1_date == dt.date(2020, 1, 2) and r0.t2_date == dt.date(2021, 1, 2)
    assert r0.t1_diameter_mm == 8.1 and r0.diagnosis == "malignant"
    assert Path(r0.t1_image) == (tmp_path / "a" / "t1.nii.gz").resolve()
    assert m.rows[2].nodule_id == "1"  # the contract's default
    assert m.rows[2].t1_image == "/abs/t1.mha"
    assert m.rows[2].t1_date is None
    tasks = make_tasks(m)
    assert [len(t.rows) for t in tasks] == [2, 1]  # a shared pair is loaded once


def test_voxel_index_form_is_accepted(tmp_path):
    m = read_manifest(write(tmp_path, "patient_id,t1_image,t2_image,t1_i,t1_j,t1_k\nP,a,b,10,20,3\n"))
    assert m.rows[0].error is None
    assert m.rows[0].t1_index == (10.0, 20.0, 3.0) and m.rows[0].t1_point is None


@pytest.mark.parametrize("row, message", [
    ("P1,1,a,b,2020-13-01,,1,2,3,,", r"row 1 \(line 2, patient P1, nodule 1\): column 't1_date': '2020-13-01' is not an ISO date"),
    ("P1,1,a,b,,,abc,2,3,,", r"column 't1_x': 'abc' is not a number"),
    ("P1,1,a,b,,,1,,3,,", r"incomplete coordinates, t1_y empty"),
    ("P1,1,a,b,,,,,,,", r"no T1 location"),
    (",1,a,b,,,1,2,3,,", r"required column 'patient_id' is empty"),
    ("P1,1,,b,,,1,2,3,,", r"required column 't1_image' is empty"),
    ("P1,1,a,b,,,1,2,3,-4,", r"'t1_diameter_mm': -4.0 must be positive"),
    ("P1,1,a,b,,,1,2,inf,,", r"'t1_z': 'inf' is not a finite number"),
])
def test_bad_row_is_recorded_not_raised(tmp_path, row, message):
    m = read_manifest(write(tmp_path, HEADER + "\n" + row + "\nP9,1,a,b,,,1,2,3,,\n"))
    assert m.rows[0].error is not None
    assert re.search(message, m.rows[0].error), m.rows[0].error
    assert m.rows[1].error is None  # the other rows go on
    assert len(m.valid_rows) == 1


def test_duplicate_nodule_is_a_row_error(tmp_path):
    m = read_manifest(write(tmp_path, HEADER + "\nP1,1,a,b,,,1,2,3,,\nP1,1,a,b,,,4,5,6,,\n"))
    assert m.rows[0].error is None
    assert "duplicate patient_id/nodule_id" in m.rows[1].error


@pytest.mark.parametrize("text, message", [
    ("patient_id,t1_image,t1_x,t1_y,t1_z\nP,a,1,2,3\n", r"missing required column\(s\): t2_image"),
    ("patient_id,t1_image,t2_image,t1_x,t1_y\nP,a,b,1,2\n", r"t1_x/t1_y/t1_z \(or t1_i/t1_j/t1_k\)"),
    (HEADER + "\n", r"no data rows"),
    ("", r"cannot be read as CSV"),
])
def test_unreadable_manifest_raises(tmp_path, text, message):
    with pytest.raises(ManifestError, match=message):
        read_manifest(write(tmp_path, text))


def test_missing_manifest_raises(tmp_path):
    with pytest.raises(ManifestError, match=r"no such file"):
        read_manifest(tmp_path / "nope.csv")


# ---------------------------------------------------------------------------
# runner mechanics, with a stand-in for the image chain
# ---------------------------------------------------------------------------
def fake_process_pair(task, config, out_dir):
    """Fails pairs whose T1 path contains 'bad'; 'ok' results otherwise."""
    if "bad" in task.t1_image:
        return [cohort.failed_result(r, f"cannot read {task.t1_image}") for r in task.rows]
    return [{"patient_id": r.patient_id, "nodule_id": r.nodule_id, "diagnosis": r.diagnosis,
             "status": "ok", "error": "", "t1_volume_mm3": 100.0 * (r.position + 1),
             "vdt_days": float("nan"), "qc_flags": ""} for r in task.rows]


@pytest.fixture
def manifest_path(tmp_path):
    return write(tmp_path, HEADER + "\n"
                 "P1,1,p1a,p1b,,,1,2,3,,\n"
                 "P2,1,bad,p2b,,,1,2,3,,\n"
                 "P1,2,p1a,p1b,,,1,2,3,,\n"
                 "P3,1,p3a,p3b,,,x,2,3,,\n"
                 "P4,1,p4a,p4b,,,1,2,3,,\n")


def test_runner_keeps_manifest_order_and_isolates_failures(tmp_path, manifest_path, monkeypatch):
    monkeypatch.setattr(cohort, "process_pair", fake_process_pair)
    out = tmp_path / "out"
    frame = run_cohort(manifest_path, out, report=False, progress=False)
    written = pd.read_csv(out / "measurements.csv", dtype=str, keep_default_na=False)
    assert list(written.columns[:len(CONTRACT_COLUMNS)]) == list(CONTRACT_COLUMNS)
    assert list(written["patient_id"]) == ["P1", "P2", "P1", "P3", "P4"]
    assert list(written["status"]) == ["ok", "failed", "ok", "failed", "ok"]
    assert written.loc[1, "error"] == "cannot read " + str(tmp_path / "bad")
    assert "'t1_x': 'x' is not a number" in written.loc[3, "error"]
    assert written.loc[0, "vdt_days"] == ""  # NaN is an empty cell
    assert float(written.loc[4, "t1_volume_mm3"]) == 500.0
    assert len(frame) == 5
    # one result file per pair, no temporary file left behind
    assert len(list((out / ".rows").glob("*.json"))) == 3
    assert not [p for p in out.rglob("*.tmp")]


def test_resume_reuses_finished_pairs(tmp_path, manifest_path, monkeypatch):
    monkeypatch.setattr(cohort, "process_pair", fake_process_pair)
    out = tmp_path / "out"
    run_cohort(manifest_path, out, report=False, progress=False)
    first = (out / "measurements.csv").read_text()

    def must_not_run(task, config, out_dir):
        raise AssertionError("a finished pair was recomputed")

    monkeypatch.setattr(cohort, "process_pair", must_not_run)
    run_cohort(manifest_path, out, report=False, progress=False, resume=True)
    assert (out / "measurements.csv").read_text() == first


def test_resume_key_changes_with_the_row(tmp_path):
    row = ManifestRow(position=0, line=2, patient_id="P", t1_image="a", t2_image="b",
                      t1_point=(1.0, 2.0, 3.0))
    moved = ManifestRow(position=0, line=2, patient_id="P", t1_image="a", t2_image="b",
                        t1_point=(1.0, 2.0, 4.0))
    assert cohort.PairTask("a", "b", (row,)).key != cohort.PairTask("a", "b", (moved,)).key


def test_crashing_pair_fails_only_its_rows(tmp_path, manifest_path, monkeypatch):
    def explode(task, config, out_dir):
        if "p1a" in task.t1_image:
            raise RuntimeError("boom")
        return fake_process_pair(task, config, out_dir)

    monkeypatch.setattr(cohort, "process_pair", explode)
    frame = run_cohort(manifest_path, tmp_path / "out", report=False, progress=False)
    assert list(frame["status"]) == ["failed", "failed", "failed", "failed", "ok"]
    assert frame.loc[0, "error"] == "internal error (RuntimeError: boom)"
    assert frame.loc[2, "error"] == "internal error (RuntimeError: boom)"


def test_unexpected_errors_become_internal_error_lines():
    assert cohort._one_line(ValueError("bad\nthing")) == "internal error (ValueError: bad thing)"
    assert cohort._one_line(ManifestError("row 1: x")) == "row 1: x"


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "m.csv"
    cohort.atomic_write_text(target, "a\n")
    cohort.atomic_write_text(target, "b\n")
    assert target.read_text() == "b\n"
    assert [p.name for p in tmp_path.iterdir()] == ["m.csv"]


def test_config_defaults_are_sane():
    config = PipelineConfig()
    assert config.voi_half_size_mm >= 20
    assert config.growth_criterion == "lung_rads_2022"


def test_rows_json_is_plain(tmp_path, manifest_path, monkeypatch):
    monkeypatch.setattr(cohort, "process_pair", fake_process_pair)
    out = tmp_path / "out"
    run_cohort(manifest_path, out, report=False, progress=False)
    for path in (out / ".rows").glob("*.json"):
        data = json.loads(path.read_text())
        assert all(isinstance(k, str) and k.isdigit() for k in data)


# --------------------------------------------------------------------------
# one nodule type for both time points
# --------------------------------------------------------------------------
def _fake(nodule_type, flags=()):
    from types import SimpleNamespace
    return (SimpleNamespace(nodule_type=nodule_type, flags=tuple(flags)), f"m-{nodule_type}", "voi")


@pytest.mark.parametrize("type1, type2, redone", [
    ("solid", "part_solid", "T1"), ("part_solid", "ground_glass", "T2"),
])
def test_harmonise_types_redoes_the_time_point_that_is_not_part_solid(type1, type2, redone):
    calls = []

    def redo(which):
        return lambda t: calls.append((which, t)) or _fake(t, ["touches_pleura"])

    r1, r2, flags = cohort.harmonise_types(_fake(type1), _fake(type2), {"T1": redo("T1"), "T2": redo("T2")})
    assert calls == [(redone, "part_solid")]
    assert r1[0].nodule_type == r2[0].nodule_type == "part_solid"
    assert flags == ["touches_pleura", "nodule_type_from_both_time_points"]


@pytest.mark.parametrize("type1, type2", [("solid", "ground_glass"), ("part_solid", "part_solid")])
def test_harmonise_types_leaves_other_pairs_alone(type1, type2):
    def never(t):
        raise AssertionError("no segmentation should be redone")

    a, b = _fake(type1), _fake(type2)
    assert cohort.harmonise_types(a, b, {"T1": never, "T2": never}) == (a, b, [])


def test_harmonise_types_keeps_the_original_when_the_forced_one_leaks():
    a, b = _fake("solid"), _fake("part_solid")
    leaky = {"T1": lambda t: _fake(t, ["segmentation_leak"]), "T2": None}
    assert cohort.harmonise_types(a, b, leaky) == (a, b, [])


def _leveled(volume, level, nodule_type="ground_glass", flags=(), parenchyma=-850.0, source="deepest"):
    """A (Segmentation, measurement, voi) result with a tissue level (HU) and a volume (mm3)."""
    import numpy as np
    from types import SimpleNamespace
    from nodulegrowth.segment import Segmentation
    seg = Segmentation(mask=np.ones((1, 1, 1), bool), nodule_type=nodule_type, location="isolated",
                       solid_mask=None, threshold_hu=-700.0, flags=tuple(flags), parenchyma_hu=parenchyma,
                       tissue_hu=level, tissue_level_source=source)
    return seg, SimpleNamespace(volume_mm3=volume), "voi"


@pytest.mark.parametrize("v1, v2, redone, level", [(100.0, 150.0, "T1", -610.0), (150.0, 100.0, "T2", -640.0)])
def test_share_tissue_level_redoes_the_smaller_nodule_at_the_larger_ones_level(v1, v2, redone, level):
    calls = []

    def redo(which):
        return lambda t, lv: calls.append((which, t, lv)) or _leveled(93.0, lv)

    r1, r2, flags = cohort.share_tissue_level(_leveled(v1, -640.0), _leveled(v2, -610.0),
                                              {"T1": redo("T1"), "T2": redo("T2")})
    assert calls == [(redone, "ground_glass", level)]
    assert (r1 if redone == "T1" else r2)[1].volume_mm3 == 93.0
    assert (r2 if redone == "T1" else r1)[1].volume_mm3 == (v2 if redone == "T1" else v1)
    assert r1[0].tissue_hu == r2[0].tissue_hu == level
    assert flags == []


def test_share_tissue_level_flags_levels_too_far_apart():
    def never(*a):
        raise AssertionError("no segmentation should be redone")

    # contrast about 250 HU; levels 150 HU apart (> half of it): a denser nodule, not noise
    a, b = _leveled(100.0, -675.0), _leveled(150.0, -525.0)
    assert cohort.share_tissue_level(a, b, {"T1": never, "T2": never}) == (a, b, ["tissue_level_changed"])
    # 100 HU apart is within half the contrast
    calls = []
    cohort.share_tissue_level(_leveled(100.0, -650.0), _leveled(150.0, -550.0),
                              {"T1": lambda t, lv: calls.append(lv) or _leveled(1.0, lv), "T2": never})
    assert calls == [-550.0]


@pytest.mark.parametrize("case", ["types", "missing", "equal", "narrow"])
def test_share_tissue_level_leaves_other_pairs_alone(case):
    def never(*a):
        raise AssertionError("no segmentation should be redone")

    a, b = {"types": (_leveled(100.0, -600.0, "solid"), _leveled(150.0, -620.0, "ground_glass")),
            "missing": (_leveled(100.0, float("nan")), _leveled(150.0, -620.0)),
            "equal": (_leveled(100.0, -620.0), _leveled(150.0, -620.0)),
            "narrow": (_leveled(100.0, -640.0, source="deepest_narrow"), _leveled(150.0, -620.0))}[case]
    assert cohort.share_tissue_level(a, b, {"T1": never, "T2": never}) == (a, b, [])


def test_share_tissue_level_keeps_the_first_when_the_redone_one_leaks_and_keeps_level_doubts():
    a, b = _leveled(100.0, -640.0), _leveled(150.0, -610.0)
    leaky = {"T1": lambda t, lv: _leveled(120.0, lv, flags=["segmentation_leak"]), "T2": None}
    assert cohort.share_tissue_level(a, b, leaky) == (a, b, [])
    # a forced type raises no tissue_level_uncertain: the first segmentation's doubt stays
    a = _leveled(100.0, -640.0, flags=["tissue_level_uncertain"])
    r1, _, _ = cohort.share_tissue_level(a, b, {"T1": lambda t, lv: _leveled(90.0, lv), "T2": None})
    assert r1[1].volume_mm3 == 90.0 and "tissue_level_uncertain" in r1[0].flags


@pytest.mark.parametrize("redone, kept", [(87.5, True), (60.0, True), (130.0, True), (57.0, False), (133.0, False),
                                          (400.0, False)])
def test_share_tissue_level_keeps_the_first_when_the_redone_one_is_not_the_first_rescaled(redone, kept):
    # T1's 100 mm3 at -640 HU in lung of -850 HU, rescaled to T2's -610 HU:
    # 100 * 210 / 240 = 87.5 mm3; kept within a factor 1.5 of that
    a, b = _leveled(100.0, -640.0), _leveled(150.0, -610.0)
    r1, r2, flags = cohort.share_tissue_level(a, b, {"T1": lambda t, lv: _leveled(redone, lv), "T2": None})
    assert cohort.LEVEL_RESCALE_TOLERANCE == 1.5
    assert r1[1].volume_mm3 == (redone if kept else 100.0) and r2 is b and flags == []
