"""Tests of nodulegrowth.report: statistics against independent computations,
the PDF / PNG / CSV outputs, and the per-nodule visual check geometry."""
from __future__ import annotations

import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from nodulegrowth import report  # noqa: E402
from nodulegrowth.errors import GeometryError, NoduleGrowthError  # noqa: E402
from nodulegrowth.report import (NOT_GIVEN, ReportError, bland_altman,  # noqa: E402
                                 cohort_statistics, load_measurements, make_report,
                                 nodule_check_figure, render_nodule_check)

pypdf = pytest.importorskip("pypdf")

REPO = Path(__file__).resolve().parents[1]
PAGE_PX = (1240, 1753)  # A4 landscape (11.69 x 8.27 in) at 150 dpi, (rows, cols)
MEAS = ["t1_mean_diameter_mm", "t2_mean_diameter_mm", "t1_long_axis_mm", "t2_long_axis_mm",
        "t1_short_axis_mm", "t2_short_axis_mm", "t1_max_3d_diameter_mm",
        "t2_max_3d_diameter_mm", "t1_volume_mm3", "t2_volume_mm3", "diameter_change_mm",
        "volume_change_pct", "vdt_days", "propagation_error_mm"]


# --------------------------------------------------------------------------
# synthetic measurement tables (spheres: analytic volumes and diameters)
# --------------------------------------------------------------------------
def make_table(n=8, *, diagnoses=("benign", "malignant"), radiologist=True, failures=(2,),
               flagged=(0,), seed=0):
    """Table of ``n`` spherical nodules, 2 per patient, with contract columns."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        d1 = rng.uniform(5, 18)
        ratio = rng.uniform(0.6, 2.5)
        v1 = math.pi / 6 * d1 ** 3
        v2 = v1 * ratio
        d2 = (6 * v2 / math.pi) ** (1 / 3)
        interval = 90.0 + 30 * (i // 2)
        row = dict(
            patient_id=f"P{i // 2:02d}", nodule_id=str(i % 2 + 1),
            diagnosis=diagnoses[i % len(diagnoses)] if diagnoses else "",
            status="ok", error="",
            t2_propagated_x=1.0, t2_propagated_y=2.0, t2_propagated_z=3.0,
            t1_center_x=0.0, t1_center_y=0.0, t1_center_z=0.0,
            t2_center_x=1.0, t2_center_y=2.0, t2_center_z=3.0,
            propagation_error_mm=abs(rng.normal(1.5, 1.0)) if radiologist else np.nan,
            t1_long_axis_mm=d1, t2_long_axis_mm=d2, t1_short_axis_mm=d1, t2_short_axis_mm=d2,
            t1_mean_diameter_mm=d1, t2_mean_diameter_mm=d2,
            t1_max_3d_diameter_mm=d1, t2_max_3d_diameter_mm=d2,
            t1_volume_mm3=v1, t2_volume_mm3=v2, interval_days=interval,
            diameter_change_mm=d2 - d1, volume_change_pct=100 * (v2 - v1) / v1,
            vdt_days=interval * math.log(2) / math.log(ratio),
            growth="grew" if ratio >= 1.25 else ("shrank" if ratio <= 0.75 else "stable"),
            growth_criterion="nelson", qc_flags="segmentation_leak" if i in flagged else "",
            t1_manufacturer="SIEMENS" if i % 3 else "GE MEDICAL SYSTEMS",
            t1_model="Definition AS" if i % 3 else "LightSpeed VCT",
            t2_manufacturer="SIEMENS", t2_model="Definition AS",
            t1_kvp=120.0, t2_kvp=100.0 if i % 4 == 0 else 120.0,
            t1_slice_thickness_mm=1.0, t2_slice_thickness_mm=1.25 if i % 5 == 0 else 1.0)
        if radiologist:
            row["t1_diameter_mm"] = d1 + rng.normal(0.3, 0.6)
            row["t2_diameter_mm"] = d2 + rng.normal(0.3, 0.6)
        rows.append(row)
    df = pd.DataFrame(rows)
    for j in failures:
        df.loc[j, MEAS] = np.nan
        df.loc[j, ["status", "error", "growth"]] = [
            "failed", "SegmentationError: no nodule could be segmented at the seed; " * 3, ""]
    return df


def ok_rows(df):
    return df[df["status"] == "ok"]


def summary_value(summary, section, statistic, group="all", detail=""):
    detail = "" if detail is None else detail
    sel = summary[(summary.section == section) & (summary.statistic == statistic)
                  & (summary.group == group) & (summary.detail.fillna("") == detail)]
    assert len(sel) == 1, (section, statistic, group, detail, len(sel))
    return float(sel.value.iloc[0])


def expected_pages(df):
    """Page count from the documented rules of make_report (small tables)."""
    ok = ok_rows(df)
    diag = df["diagnosis"].fillna("").replace("", NOT_GIVEN)
    have_size = ok[["t1_mean_diameter_mm", "t2_mean_diameter_mm"]].notna().any(axis=1)
    size_groups = diag[ok.index][have_size].nunique()
    n = 1  # cohort summary
    n += int(have_size.any())
    n += int(size_groups >= 2)
    n += int(ok[["diameter_change_mm", "volume_change_pct", "vdt_days"]].notna().any().any()
             or (df.get("growth", pd.Series(dtype=str)).fillna("") != "").any())
    n += int(ok["volume_change_pct"].notna().any())
    n += int("t1_diameter_mm" in df and df[["t1_diameter_mm", "t2_diameter_mm"]].notna()
             .any().any())
    n += int(df["propagation_error_mm"].notna().any())
    n += int(((df["status"] != "ok") | (df["qc_flags"].fillna("") != "")).any())
    return n + len(df)


def pdf_fonts_embedded(pdf_path):
    """(all fonts embedded as TrueType, number of fonts seen)."""
    reader = pypdf.PdfReader(str(pdf_path))
    seen = 0
    for page in reader.pages:
        fonts = page["/Resources"].get_object().get("/Font", {})
        for ref in fonts.values():
            font = ref.get_object()
            seen += 1
            if font["/Subtype"] == "/Type3":
                return False, seen
            if font["/Subtype"] == "/Type0":
                font = font["/DescendantFonts"][0].get_object()
            desc = font["/FontDescriptor"].get_object()
            if "/FontFile2" not in desc:
                return False, seen
    return True, seen


# --------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------
def test_load_measurements_normalises_types(tmp_path):
    df = make_table(4, diagnoses=("", "benign"))
    path = tmp_path / "m.csv"
    df.to_csv(path, index=False)
    out = load_measurements(path)
    assert out["t1_volume_mm3"].dtype == float
    np.testing.assert_allclose(out["t1_volume_mm3"], df["t1_volume_mm3"], rtol=1e-12)
    assert list(out["diagnosis"]) == [NOT_GIVEN, "benign", NOT_GIVEN, "benign"]
    assert out.loc[2, "status"] == "failed" and out.loc[0, "qc_flags"] == "segmentation_leak"
    # optional columns that are absent come back empty, not missing
    assert out["nodule_type"].eq("").all() and out["growth_nelson"].eq("").all()


def test_load_measurements_ids_read_as_numbers():
    # pandas reads a nodule_id column with an empty cell as floats (1.0);
    # file names must still be "<patient>_1.png"
    out = load_measurements(pd.DataFrame({"patient_id": ["007", "P2"],
                                          "nodule_id": [1.0, np.nan]}))
    assert list(out["patient_id"]) == ["007", "P2"]
    assert list(out["nodule_id"]) == ["1", "1"]


def test_load_measurements_infers_status_from_error():
    out = load_measurements(pd.DataFrame({"patient_id": ["a", "b"], "error": ["", "boom"]}))
    assert list(out["status"]) == ["ok", "failed"]


@pytest.mark.parametrize("content, match", [
    (None, "does not exist"),
    (b"\xff\xfe\x00\x81garbage", "cannot read"),
    (b"a,b\n1,2\n", "no 'patient_id' column"),
    (b"", "cannot read"),
])
def test_load_measurements_rejects_bad_files(tmp_path, content, match):
    path = tmp_path / "m.csv"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ReportError, match=match):
        load_measurements(path)
    assert issubclass(ReportError, NoduleGrowthError)


# --------------------------------------------------------------------------
# statistics against independent computations
# --------------------------------------------------------------------------
@pytest.mark.parametrize("n, seed", [(3, 0), (10, 1), (40, 2)])
def test_bland_altman_matches_numpy(n, seed):
    rng = np.random.default_rng(seed)
    ref = rng.uniform(4, 30, n)
    meth = ref + rng.normal(0.5, 1.0, n)
    meth[0] = np.nan  # unpaired values are ignored
    s = bland_altman(meth, ref)
    d = (meth - ref)[1:]
    assert s["n"] == n - 1
    assert s["bias"] == pytest.approx(d.mean())
    sd = d.std(ddof=1) if d.size > 1 else np.nan
    if d.size > 1:
        assert s["loa_lower"] == pytest.approx(d.mean() - 1.96 * sd)
        assert s["loa_upper"] == pytest.approx(d.mean() + 1.96 * sd)
    if d.size >= 3:
        assert s["pearson_r"] == pytest.approx(pd.Series(meth[1:]).corr(pd.Series(ref[1:])))


def test_bland_altman_rejects_unpaired_shapes():
    with pytest.raises(ReportError, match=r"paired arrays.*\(3,\).*\(2,\)"):
        bland_altman(np.ones(3), np.ones(2))


def test_cohort_statistics_match_pandas():
    df = make_table(12, diagnoses=("benign", "malignant", ""), failures=(2, 7), flagged=(0, 7))
    stats = cohort_statistics(load_measurements(df))
    diag = df["diagnosis"].replace("", NOT_GIVEN)
    ok = ok_rows(df)
    assert summary_value(stats, "cohort", "patients") == df["patient_id"].nunique()
    assert summary_value(stats, "cohort", "nodules") == len(df)
    assert summary_value(stats, "cohort", "failed") == 2
    assert summary_value(stats, "cohort", "flagged") == 2
    assert summary_value(stats, "cohort", "processed") == 10
    for g in ("benign", "malignant", NOT_GIVEN):
        sub = ok[diag[ok.index] == g]
        assert summary_value(stats, "cohort", "nodules", g) == (diag == g).sum()
        for col in ("t1_mean_diameter_mm", "t2_mean_diameter_mm"):
            assert summary_value(stats, "size", "mean", g, col) == pytest.approx(sub[col].mean())
            assert summary_value(stats, "size", "sd", g, col) == pytest.approx(sub[col].std())
    # intervals count once per scan pair (patient), not once per nodule
    pairs = df.drop_duplicates(["patient_id", "interval_days"])["interval_days"]
    assert summary_value(stats, "interval", "n", detail="interval_days") == len(pairs)
    assert summary_value(stats, "interval", "median", detail="interval_days") == \
        pytest.approx(pairs.median())
    assert summary_value(stats, "interval", "q1", detail="interval_days") == \
        pytest.approx(pairs.quantile(0.25))
    assert summary_value(stats, "interval", "q3", detail="interval_days") == \
        pytest.approx(pairs.quantile(0.75))
    vdt = ok["vdt_days"]
    assert summary_value(stats, "vdt", "n_growing", detail="vdt_days") == (vdt > 0).sum()
    assert summary_value(stats, "vdt", "n_shrinking", detail="vdt_days") == (vdt < 0).sum()
    for cat in ("grew", "stable", "shrank"):
        assert summary_value(stats, "growth_category", "count", detail=f"nelson|{cat}") == \
            (ok["growth"] == cat).sum()
    assert summary_value(stats, "qc", "count", detail="segmentation_leak") == 2


def test_informational_flags_do_not_make_a_row_flagged():
    df = make_table(6, failures=(), flagged=())
    df.loc[0, "qc_flags"] = "touches_pleura;interval_exceeds_12_months"
    df.loc[1, "qc_flags"] = "change_within_measurement_error;nodule_type_from_both_time_points"
    df.loc[2, "qc_flags"] = "touches_pleura;segmentation_leak"
    stats = cohort_statistics(load_measurements(df))
    assert summary_value(stats, "cohort", "flagged") == 1
    # every flag is still counted by name
    assert summary_value(stats, "qc", "count", detail="touches_pleura") == 2
    assert summary_value(stats, "qc", "count", detail="nodule_type_from_both_time_points") == 1


def test_a_nodule_too_small_for_its_slices_asks_for_a_look():
    # its volume may be off by tens of per cent (segment, thick_slices_for_size)
    df = make_table(3, failures=(), flagged=())
    df.loc[1, "qc_flags"] = "thick_slices_for_size;interval_exceeds_12_months"
    stats = cohort_statistics(load_measurements(df))
    assert summary_value(stats, "cohort", "flagged") == 1
    assert summary_value(stats, "qc", "count", detail="thick_slices_for_size") == 1


def test_cohort_statistics_scanner_counts_per_scan():
    df = make_table(8)
    stats = cohort_statistics(load_measurements(df))
    # 4 patients x 2 nodules: nodules 0,3,6 are GE at T1 (i % 3 == 0) but every
    # patient's nodules share scanner settings only when both are GE/Siemens
    scans = df.drop_duplicates(["patient_id", "interval_days", "t1_manufacturer", "t1_model",
                                "t1_kvp", "t1_slice_thickness_mm"])
    ge = (scans["t1_manufacturer"] == "GE MEDICAL SYSTEMS").sum()
    assert summary_value(stats, "scanner", "count",
                         detail="T1|GE MEDICAL SYSTEMS LightSpeed VCT") == ge
    assert summary_value(stats, "kvp", "count", detail="T1|120 kV") == len(scans)


def test_cohort_statistics_unknown_measure():
    with pytest.raises(ReportError, match="agreement_measure 'area'"):
        cohort_statistics(load_measurements(make_table(2)), agreement_measure="area")


def test_vdt_infinite_and_empty_are_unchanged():
    df = make_table(4, failures=())
    df.loc[0, "vdt_days"] = np.inf
    df.loc[1, "vdt_days"] = np.nan
    stats = cohort_statistics(load_measurements(df))
    assert summary_value(stats, "vdt", "n_unchanged", detail="vdt_days") == 2


# --------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------
# Rendering costs ~0.5-1.5 s of CPU per page here, so the default suite renders
# three small cohorts that together cover every case (failures and flags,
# three diagnosis groups with an empty one, one diagnosis only, no radiologist
# diameters, a single nodule without diagnosis, every row failed); the same
# cases one at a time are marked slow.
FAST = {
    "failures": dict(n=5, diagnoses=("benign", "malignant", ""), failures=(2,),
                     flagged=(0, 2)),
    "one_diagnosis_no_radiologist": dict(n=3, diagnoses=("malignant",), radiologist=False,
                                         failures=(), flagged=()),
    "single_nodule_no_diagnosis": dict(n=1, diagnoses=None, radiologist=False, failures=(),
                                       flagged=()),
    "all_failed": dict(n=2, failures=(0, 1), flagged=()),
}
SLOW = {
    "one_diagnosis": dict(n=4, diagnoses=("malignant",)),
    "no_diagnosis": dict(n=4, diagnoses=None),
    "no_radiologist": dict(n=4, radiologist=False),
    "single_nodule": dict(n=1, failures=(), flagged=()),
}
SCENARIOS = {**FAST, **SLOW}


def render(name, out_dir):
    df = make_table(**SCENARIOS[name])
    df.to_csv(out_dir / "measurements.csv", index=False)
    if name == "failures":
        # a visual check for the first nodule only: its page shows the image,
        # the others a note
        img, msk = sphere_crop(4.0, (0.8, 0.8, 2.0), (25, 25, 9))
        render_nodule_check(out_dir / "nodules" / "P00_1.png", t1_image=img, t1_mask=msk,
                            t2_image=img, t2_mask=msk, t1_center_xyz=(0, 0, 0),
                            t2_center_xyz=(0, 0, 0))
    return df, out_dir, make_report(out_dir / "measurements.csv", out_dir)


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """Render every fast scenario once; tests inspect the outputs."""
    return {name: render(name, tmp_path_factory.mktemp(name)) for name in FAST}


def check_outputs(df, d, pdf):
    assert pdf == d / "report.pdf"
    reader = pypdf.PdfReader(str(pdf))
    assert len(reader.pages) == expected_pages(df)
    embedded, seen = pdf_fonts_embedded(pdf)
    assert embedded and seen > 0
    pngs = sorted((d / "figures").glob("*.png"))
    # every page except the per-nodule ones is also a PNG
    assert len(pngs) == len(reader.pages) - len(df)
    for png in pngs:
        img = mpimg.imread(png)
        assert img.shape[:2] == PAGE_PX
        assert img[..., :3].std() > 0.01  # not a blank page
    # no temporary files left behind by the atomic writes, and the outputs
    # are as readable as any file the user creates (not mkstemp's 0600)
    assert not list(d.rglob("*.tmp"))
    umask = os.umask(0)
    os.umask(umask)
    for f in [pdf, d / "cohort_summary.csv", *pngs]:
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask
    summary = pd.read_csv(d / "cohort_summary.csv")
    assert list(summary.columns) == ["section", "statistic", "group", "detail", "value", "unit"]


@pytest.mark.parametrize("scenario", list(FAST))
def test_report_pages_fonts_and_files(reports, scenario):
    check_outputs(*reports[scenario])


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(SLOW))
def test_report_pages_fonts_and_files_each_case(tmp_path, scenario):
    check_outputs(*render(scenario, tmp_path))


@pytest.mark.parametrize("scenario", ["failures",
                                      pytest.param("single_nodule", marks=pytest.mark.slow)])
def test_summary_csv_matches_independent_computation(reports, tmp_path, scenario):
    df, d, _ = reports[scenario] if scenario in reports else render(scenario, tmp_path)
    summary = pd.read_csv(d / "cohort_summary.csv", keep_default_na=False,
                          na_values=[""], dtype={"detail": str, "group": str})
    ok = ok_rows(df)
    assert summary_value(summary, "cohort", "rows") == len(df)
    assert summary_value(summary, "cohort", "failed") == (df["status"] == "failed").sum()
    assert summary_value(summary, "cohort", "flagged") == (df["qc_flags"] != "").sum()
    for col in ("t1_mean_diameter_mm", "t2_mean_diameter_mm"):
        assert summary_value(summary, "size", "mean", detail=col) == pytest.approx(ok[col].mean())
        if len(ok) > 1:
            assert summary_value(summary, "size", "sd", detail=col) == pytest.approx(ok[col].std())
    pairs = df.drop_duplicates(["patient_id", "interval_days"])["interval_days"]
    assert summary_value(summary, "interval", "median", detail="interval_days") == \
        pytest.approx(pairs.median())
    assert summary_value(summary, "interval", "q3", detail="interval_days") == \
        pytest.approx(pairs.quantile(0.75))
    ba_t1 = ok["t1_mean_diameter_mm"] - ok["t1_diameter_mm"]
    assert summary_value(summary, "agreement", "bias", detail="T1") == \
        pytest.approx(ba_t1.mean())
    if len(ok) > 1:
        assert summary_value(summary, "agreement", "loa_lower", detail="T1") == \
            pytest.approx(ba_t1.mean() - 1.96 * ba_t1.std())
        assert summary_value(summary, "agreement", "loa_upper", detail="T1") == \
            pytest.approx(ba_t1.mean() + 1.96 * ba_t1.std())
    change = (ok["t2_mean_diameter_mm"] - ok["t1_mean_diameter_mm"]) - \
        (ok["t2_diameter_mm"] - ok["t1_diameter_mm"])
    assert summary_value(summary, "agreement", "bias", detail="change") == \
        pytest.approx(change.mean())


def test_no_radiologist_has_no_agreement_section(reports):
    _, d, _ = reports["one_diagnosis_no_radiologist"]
    summary = pd.read_csv(d / "cohort_summary.csv")
    assert not (summary.section == "agreement").any()
    assert not (d / "figures" / "agreement.png").exists()
    assert not (d / "figures" / "propagation.png").exists()


@pytest.mark.parametrize("scenario, group", [("single_nodule_no_diagnosis", NOT_GIVEN),
                                             ("one_diagnosis_no_radiologist", "malignant")])
def test_single_diagnosis_group_has_no_by_diagnosis_page(reports, scenario, group):
    _, d, _ = reports[scenario]
    summary = pd.read_csv(d / "cohort_summary.csv", keep_default_na=False)
    assert set(summary.group) == {"all", group}
    assert not (d / "figures" / "size_by_diagnosis.png").exists()
    assert (d / "figures" / "size.png").exists()


def test_nodule_png_is_placed_on_its_page(reports):
    df, _, pdf = reports["failures"]
    reader = pypdf.PdfReader(str(pdf))

    def n_images(page):
        # matplotlib shares one /Resources dict between pages, so count the
        # images this page's content stream actually paints (/I<n> Do)
        return len(re.findall(rb"/I\d+ Do", page.get_contents().get_data()))
    nodule_pages = reader.pages[len(reader.pages) - len(df):]
    assert n_images(nodule_pages[0]) >= 1  # P00 / 1 has its check image
    assert all(n_images(p) == 0 for p in nodule_pages[1:])  # the others a note


def test_interrupted_report_leaves_no_partial_file(tmp_path, monkeypatch):
    old = b"%PDF-1.4 a previous complete report"
    (tmp_path / "report.pdf").write_bytes(old)

    def boom(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(report, "_page_nodule", boom)
    with pytest.raises(KeyboardInterrupt):
        make_report(make_table(1, failures=(0,), flagged=()), tmp_path)
    # the previous report is untouched, and no temporary file remains
    assert (tmp_path / "report.pdf").read_bytes() == old
    assert not list(tmp_path.rglob("*.tmp"))
    assert not (tmp_path / "cohort_summary.csv").exists()


def test_rerender_removes_stale_figures_only(tmp_path):
    figures = tmp_path / "figures"
    figures.mkdir()
    (figures / "agreement.png").write_bytes(b"from an earlier run")
    (figures / "my_notes.png").write_bytes(b"not the report's")
    table = make_table(1, failures=(0,), radiologist=False)
    make_report(table, tmp_path)
    assert not (figures / "agreement.png").exists()  # section skipped now
    assert (figures / "my_notes.png").read_bytes() == b"not the report's"
    assert (figures / "cohort_summary.png").is_file()
    # re-rendering the same table gives the same bytes (no timestamps)
    first = (tmp_path / "report.pdf").read_bytes()
    make_report(table, tmp_path)
    assert (tmp_path / "report.pdf").read_bytes() == first


@pytest.mark.parametrize("n_rows, error_len", [(3, 20), (60, 150), (5, 20000)])
def test_failure_table_paginates_within_page(n_rows, error_len):
    df = make_table(n_rows, failures=tuple(range(0, n_rows, 2)), flagged=(1,),
                    radiologist=False)
    df["error"] = np.where(df["status"] == "failed", "E" * error_len, "")
    loaded = load_measurements(df)
    rows = report._failure_rows(loaded)
    lines = report._table_lines(rows, report._FAIL_WRAP)
    pages = report._failure_pages_split(loaded)
    assert sorted(i for p in pages for i in p) == list(range(len(rows)))  # each row once
    caps = [report._FAIL_LINES_FIRST] + [report._FAIL_LINES] * (len(pages) - 1)
    for page, cap in zip(pages, caps):
        assert sum(lines[i] for i in page) <= cap
    assert all(len(r[-1]) <= 1500 for r in rows)


def test_colours_are_fixed_and_distinct():
    groups = ["benign", "malignant", NOT_GIVEN]
    c = report.diagnosis_colours(groups)
    assert c == report.diagnosis_colours(groups)
    used = set(c.values()) | set(report.TIME_POINT_COLOURS.values()) | \
        set(report.CATEGORY_COLOURS.values())
    assert len(used) == len(c) + 2 + 3


# --------------------------------------------------------------------------
# per-nodule visual check
# --------------------------------------------------------------------------
def sphere_crop(radius_mm, spacing_xyz, size_xyz, origin=(-10.0, -12.0, -8.0),
                centre=(0.0, 0.0, 0.0)):
    """Float32 HU crop with a ball of ``radius_mm`` at ``centre`` (LPS mm) and its mask."""
    i, j, k = [np.arange(n) for n in size_xyz]
    z, y, x = np.meshgrid(origin[2] + k * spacing_xyz[2], origin[1] + j * spacing_xyz[1],
                          origin[0] + i * spacing_xyz[0], indexing="ij")
    ball = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= radius_mm ** 2
    img = sitk.GetImageFromArray(np.where(ball, 10.0, -850.0).astype(np.float32))
    img.SetSpacing(spacing_xyz)
    img.SetOrigin(origin)
    msk = sitk.GetImageFromArray(ball.astype(np.uint8))
    msk.CopyInformation(img)
    return img, msk


@pytest.mark.parametrize("spacing, size, with_t2_mask", [
    ((0.7, 0.7, 2.5), (31, 31, 9), True),
    ((1.0, 0.6, 1.0), (21, 35, 17), False),  # e.g. segmentation failed at T2
])
def test_render_nodule_check_writes_png(tmp_path, spacing, size, with_t2_mask):
    img, msk = sphere_crop(4.0, spacing, size)
    out = render_nodule_check(
        tmp_path / "sub" / "P1_1.png", t1_image=img, t1_mask=msk, t2_image=img,
        t2_mask=msk if with_t2_mask else None, t1_center_xyz=(0, 0, 0),
        t2_center_xyz=(0, 0, 0), t2_propagated_xyz=(1.0, -1.0, 0.5),
        t2_reference_xyz=None, info={"t1_volume_mm3": 268.1, "growth": "stable",
                                     "qc_flags": "touches_pleura;segmentation_leak"},
        title="P1 / 1")
    im = mpimg.imread(out)
    assert im.shape[:2] == (1080, 1650)  # 11 x 7.2 in at 150 dpi
    assert not list((tmp_path / "sub").glob("*.tmp"))


@pytest.mark.parametrize("spacing", [(0.7, 0.7, 2.5), (1.0, 0.6, 1.5)])
def test_nodule_check_geometry(spacing):
    """Markers sit at their mm offsets and contours have the ball's radius."""
    radius, centre = 4.0, (1.3, -2.1, 0.9)
    img, msk = sphere_crop(radius, spacing, (41, 41, 21), centre=centre)
    prop = (centre[0] + 3.0, centre[1] - 2.0, centre[2])
    fig = nodule_check_figure(t1_image=img, t1_mask=msk, t2_image=img, t2_mask=msk,
                              t1_center_xyz=centre, t2_center_xyz=centre,
                              t2_propagated_xyz=prop)
    try:
        axes = {a.get_gid(): a for a in fig.axes if a.get_gid()}
        ax = axes["T2_axial"]
        offsets = {c.get_label(): c.get_offsets()[0] for c in ax.collections
                   if c.get_label() in ("centre", "propagated")}
        np.testing.assert_allclose(offsets["centre"], (0, 0), atol=1e-9)
        np.testing.assert_allclose(offsets["propagated"], (3.0, -2.0), atol=1e-9)
        # image extent in mm matches the crop's physical size
        im = ax.get_images()[0]
        x0, x1, y0, y1 = im.get_extent()
        assert x1 - x0 == pytest.approx(41 * spacing[0])
        assert y0 - y1 == pytest.approx(41 * spacing[1])
        for gid in ("T1_axial", "T1_coronal"):
            cs = [c for c in axes[gid].collections if hasattr(c, "allsegs")]
            pts = np.concatenate(cs[0].allsegs[0])
            r = np.hypot(pts[:, 0], pts[:, 1])
            # contour through voxel centres at level 0.5: within one voxel of the ball
            tol = max(spacing)
            assert np.all(r < radius + tol) and np.all(r > radius - 2 * tol)
    finally:
        plt.close(fig)


def test_nodule_check_without_t2_image():
    """A nodule not found at T2 has no T2 crop: the T2 views carry a note."""
    img, msk = sphere_crop(3.0, (0.8, 0.8, 2.0), (21, 21, 7))
    fig = nodule_check_figure(t1_image=img, t1_mask=msk, t2_image=None, t2_mask=None,
                              t1_center_xyz=(0, 0, 0), t2_center_xyz=None,
                              t2_propagated_xyz=(1.0, 1.0, 1.0))
    try:
        axes = {a.get_gid(): a for a in fig.axes if a.get_gid()}
        assert not axes["T2_axial"].get_images() and axes["T1_axial"].get_images()
        assert any("no T2 image" in t.get_text() for t in axes["T2_axial"].texts)
    finally:
        plt.close(fig)
    with pytest.raises(GeometryError, match="T2 mask given without its image"):
        nodule_check_figure(t1_image=img, t1_mask=msk, t2_image=None, t2_mask=msk,
                            t1_center_xyz=(0, 0, 0), t2_center_xyz=None)


def test_check_text_handles_missing_values():
    text = report._check_text({"qc_flags": np.nan, "vdt_days": None, "t1_volume_mm3": 523.6,
                               "t2_volume_mm3": np.nan, "growth": "grew"})
    assert "QC flags: none" in text and "nan" not in text.lower()
    assert "524" in text and "grew" in text


def test_render_nodule_check_rejects_mismatched_mask(tmp_path):
    img, _ = sphere_crop(3.0, (1.0, 1.0, 1.0), (15, 15, 7))
    _, small = sphere_crop(3.0, (1.0, 1.0, 1.0), (11, 15, 7))
    with pytest.raises(GeometryError, match=r"T2 mask size \(11, 15, 7\) differs"):
        render_nodule_check(tmp_path / "x.png", t1_image=img, t1_mask=None, t2_image=img,
                            t2_mask=small, t1_center_xyz=None, t2_center_xyz=None)
    with pytest.raises(GeometryError, match="not a 3-D SimpleITK image"):
        render_nodule_check(tmp_path / "x.png", t1_image=np.zeros((3, 3, 3)), t1_mask=None,
                            t2_image=img, t2_mask=None, t1_center_xyz=None, t2_center_xyz=None)
    assert not (tmp_path / "x.png").exists()


# --------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------
def test_make_cohort_report_script(tmp_path):
    script = REPO / "pipelines" / "make_cohort_report.py"
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    r = subprocess.run([sys.executable, str(script), str(bad), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "patient_id" in r.stderr
    good = tmp_path / "m.csv"
    make_table(1, failures=(0,), flagged=()).to_csv(good, index=False)
    # the successful run in-process: a second interpreter start costs seconds
    spec = importlib.util.spec_from_file_location("make_cohort_report", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([str(good), "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "report.pdf").is_file()
    assert (tmp_path / "o" / "cohort_summary.csv").is_file()
