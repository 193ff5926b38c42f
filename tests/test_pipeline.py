"""End to end: the shipped sample cohort through the whole chain.

One run of ``nodulegrowth run data_samples/manifest.csv`` (module fixture,
two jobs, as a user would start it) is checked against the contract and
against the phantom truth shipped in ``data_samples/truth.csv``.

The error bounds below were measured on this run (see docs/VALIDATION.md, "The
shipped sample cohort", and the issue note) and hold with a margin. The sample
cohort is coarse on purpose (2.8-3.3 mm voxels, to stay a few MiB), so these
bounds are much wider than the accuracy on clinical resolutions, which
``benchmarks/measurement.py`` and ``benchmarks/registration.py`` measure.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nodulegrowth import cli
from nodulegrowth.cohort import CONTRACT_COLUMNS
from nodulegrowth.evaluate import compare_with_truth

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data_samples"


def tree_hash(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    before = tree_hash(DATA)
    status = cli.main(["run", str(DATA / "manifest.csv"), "--out", str(out), "--jobs", "2", "--quiet"])
    after = tree_hash(DATA)
    table = pd.read_csv(out / "measurements.csv", dtype={"patient_id": str, "nodule_id": str},
                        keep_default_na=True)
    return {"out": out, "status": status, "before": before, "after": after, "table": table}


def test_exit_status_and_inputs_untouched(demo):
    assert demo["status"] == 0
    assert demo["before"] == demo["after"]


def test_contract_columns_in_manifest_order(demo):
    table = demo["table"]
    manifest = pd.read_csv(DATA / "manifest.csv", dtype=str)
    assert list(table.columns[:len(CONTRACT_COLUMNS)]) == list(CONTRACT_COLUMNS)
    assert list(table["patient_id"]) == list(manifest["patient_id"])
    assert list(table["nodule_id"]) == list(manifest["nodule_id"])


def test_every_row_ok_and_complete(demo):
    table = demo["table"]
    assert list(table["status"]) == ["ok"] * len(table), table[["patient_id", "nodule_id", "error"]]
    numeric = [c for c in CONTRACT_COLUMNS
               if c.endswith(("_mm", "_mm3", "_x", "_y", "_z", "_pct", "_days")) and c != "vdt_days"]
    assert not table[numeric].isna().any().any(), table[numeric].isna().sum()
    assert set(table["growth"]) <= {"grew", "stable", "shrank"}
    # contract formulas hold between the columns
    np.testing.assert_allclose(table["t1_mean_diameter_mm"],
                               (table["t1_long_axis_mm"] + table["t1_short_axis_mm"]) / 2, rtol=1e-4)
    np.testing.assert_allclose(table["diameter_change_mm"],
                               table["t2_mean_diameter_mm"] - table["t1_mean_diameter_mm"], atol=1e-4)
    np.testing.assert_allclose(table["volume_change_pct"],
                               100 * (table["t2_volume_mm3"] - table["t1_volume_mm3"]) / table["t1_volume_mm3"],
                               rtol=1e-4)
    vdt = table["interval_days"] * np.log(2) / np.log(table["t2_volume_mm3"] / table["t1_volume_mm3"])
    np.testing.assert_allclose(table["vdt_days"], vdt, rtol=1e-4)


def test_type_and_location_at_both_time_points(demo):
    table = demo["table"]
    types = {"solid", "part_solid", "ground_glass"}
    assert set(table["nodule_type"]) <= types and set(table["t2_nodule_type"]) <= types
    assert set(table["t2_location"]) <= {"isolated", "juxtavascular", "juxtapleural"}
    changed = table["nodule_type"] != table["t2_nodule_type"]
    flagged = table["qc_flags"].fillna("").str.split(";").apply(lambda f: "nodule_type_changed" in f)
    assert list(changed) == list(flagged)


def test_interval_from_manifest_and_from_dicom(demo):
    truth = pd.read_csv(DATA / "truth.csv", dtype={"patient_id": str, "nodule_id": str})
    merged = demo["table"].merge(truth, on=["patient_id", "nodule_id"], suffixes=("", "_true"))
    # DICOM rows have no dates in the manifest: they come from AcquisitionDate
    np.testing.assert_array_equal(merged["interval_days"], merged["interval_days_true"])


def test_errors_against_truth_within_measured_bounds(demo):
    truth = pd.read_csv(DATA / "truth.csv")
    e = compare_with_truth(demo["table"], truth)
    assert len(e) == len(truth)
    assert e["t1_center_error_mm"].max() <= BOUNDS["center_mm"]
    assert e["t2_center_error_mm"].max() <= BOUNDS["center_mm"]
    for tp in ("t1", "t2"):
        assert e[f"{tp}_volume_error_pct"].abs().median() <= BOUNDS["volume_median_pct"]
        assert e[f"{tp}_mean_diameter_error_mm"].abs().mean() <= BOUNDS["mean_diameter_mean_abs_mm"]
    agree = int((e["growth"] == e["growth_true"]).sum())
    assert agree >= BOUNDS["growth_agreement_min"], e[["patient_id", "nodule_id", "growth", "growth_true"]]


#: Measured on the sample cohort on 2026-11-25 after the segmentation changes
#: of commit 0c92b9b (worst of T1/T2: centre 1.8 mm, volume median |error|
#: 12.4 %, mean-diameter MAE 1.3 mm, growth agreement 3 of 5; before them
#: 2.9 mm, 17.5 %, 2.8 mm, 3 of 5), and after the smoothed axial axes of
#: commits fd3586c and 309db4f (mean-diameter MAE 0.71 / 0.96 mm at T1 / T2, growth
#: agreement 4 of 5: the stable ground-glass nodule of PH00101, called grown
#: before, is stable, but by a measured change of +1.42 mm against the 1.5 mm
#: threshold, so the bound stays at 3). What is left at this coarse resolution: the
#: juxtavascular nodule of PH00101 keeps part of a vessel at T1 (+25 %;
#: flagged `segmentation_leak` then, no longer since 0774e49, by git bisect
#: on the demo, and again since 6e0e2ea: too small on its grid for an
#: opening; mean-diameter MAE now 0.76 / 0.96 mm), and the stable juxtapleural nodule of
#: PH00202 is called shrunk (its volume is 12 % and 17 % low; it was flagged
#: `change_within_measurement_error` until the uncertainty model refitted at
#: PIPELINE_VERSION 5 rated solid volumes as more repeatable). These bounds
#: stop regressions; they are not accuracy claims. Not to be loosened.
BOUNDS = {"center_mm": 2.5, "volume_median_pct": 15.0, "mean_diameter_mean_abs_mm": 1.5,
          "growth_agreement_min": 3}


def test_the_vessel_kept_on_the_coarse_sample_is_flagged(demo):
    # PH00101's juxtavascular nodule keeps part of its vessel at T1 (+25 %):
    # on 3.3 mm pixels it is too small for any opening, which the leak flag
    # says since 6e0e2ea (it carried no flag from 0774e49 until then)
    table = demo["table"]
    row = table[(table["patient_id"] == "PH00101") & (table["nodule_id"] == "1")].iloc[0]
    assert row["location"] == "juxtavascular"
    assert "segmentation_leak" in str(row["qc_flags"]).split(";")


def test_report_and_images_written(demo):
    out = demo["out"]
    assert (out / "report.pdf").stat().st_size > 10_000
    assert (out / "cohort_summary.csv").is_file()
    figures = sorted((out / "figures").glob("*.png"))
    assert figures
    nodules = sorted(p.name for p in (out / "nodules").glob("*.png"))
    expected = sorted(f"{p}_{n}.png" for p, n in zip(demo["table"]["patient_id"], demo["table"]["nodule_id"]))
    assert nodules == expected
    assert not list(out.rglob("*.tmp")), "a temporary file was left behind"


def test_no_phi_in_any_output(demo):
    """The DICOM sample carries synthetic PHI; none of it may reach an output."""
    import pydicom

    first = next(p for p in sorted((DATA / "PH00101" / "T1").iterdir()) if p.is_file())
    ds = pydicom.dcmread(first, stop_before_pixels=True)
    phi = [str(ds.PatientName), str(ds.PatientBirthDate), str(getattr(ds, "InstitutionName", "")),
           str(getattr(ds, "AccessionNumber", "")), str(ds.StudyInstanceUID)]
    phi = [v for v in phi if len(v) >= 4]
    assert phi
    from pypdf import PdfReader

    for path in demo["out"].rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if path.suffix == ".pdf":  # page streams are compressed: look at the text
                data += "".join(page.extract_text() for page in PdfReader(path).pages).encode()
            for value in phi:
                assert value.encode() not in data, f"{value!r} found in {path}"
