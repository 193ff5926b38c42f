"""Tests of nodulegrowth.growth: VDT, changes and the named growth criteria."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from nodulegrowth.errors import MeasurementError
from nodulegrowth.growth import (
    CRITERIA,
    GrowthResult,
    assess_growth,
    diameter_change_mm,
    fleischner_2017,
    lung_rads_2022,
    nelson,
    nelson_vdt_category,
    volume_change_pct,
    volume_doubling_time,
)


def meas(d, v):
    return SimpleNamespace(mean_diameter_mm=d, volume_mm3=v)


@pytest.mark.parametrize("vdt", [50.0, 400.0, 1234.5, -300.0])
@pytest.mark.parametrize("interval", [30.0, 365.0, 900.0])
@pytest.mark.parametrize("v1", [4.2, 500.0])
def test_vdt_recovers_exponential_growth(vdt, interval, v1):
    v2 = v1 * 2.0 ** (interval / vdt)
    assert volume_doubling_time(v1, v2, interval) == pytest.approx(vdt, rel=1e-9)


def test_vdt_special_values():
    assert math.isnan(volume_doubling_time(100.0, 100.0, 90))  # no change -> empty cell
    assert math.isnan(volume_doubling_time(100.0, 0.0, 90))  # vanished
    assert volume_doubling_time(100.0, 50.0, 90) == pytest.approx(-90.0)


@pytest.mark.parametrize("args, match", [
    ((0.0, 100.0, 90), "v1"),
    ((-5.0, 100.0, 90), "v1"),
    ((100.0, -1.0, 90), "v2"),
    ((float("nan"), 100.0, 90), "v1"),
    ((100.0, float("inf"), 90), "v2"),
    ((100.0, 120.0, 0), "interval_days"),
    ((100.0, 120.0, -30), "interval_days"),
    ((100.0, 120.0, "soon"), "interval_days"),
])
def test_vdt_errors(args, match):
    with pytest.raises(MeasurementError, match=match):
        volume_doubling_time(*args)


def test_changes():
    assert volume_change_pct(200.0, 150.0) == pytest.approx(-25.0)
    assert volume_change_pct(200.0, 0.0) == -100.0
    assert diameter_change_mm(5.5, 7.25) == pytest.approx(1.75)
    with pytest.raises(MeasurementError, match="d1"):
        diameter_change_mm(-1.0, 3.0)


@pytest.mark.parametrize("d2, expected", [
    (7.5, "stable"),   # exactly +1.5 mm is not "more than 1.5 mm"
    (7.51, "grew"),
    (4.49, "shrank"),
    (4.5, "stable"),
    (6.0, "stable"),
])
def test_lung_rads_threshold(d2, expected):
    assert lung_rads_2022(6.0, d2, 200) == expected


@pytest.mark.parametrize("d2, expected", [
    (8.0, "grew"),     # at least 2 mm
    (7.99, "stable"),
    (4.0, "shrank"),
    (4.01, "stable"),
])
def test_fleischner_threshold(d2, expected):
    assert fleischner_2017(6.0, d2) == expected


@pytest.mark.parametrize("v2, interval, expected", [
    (125.0, 100, "grew"),     # +25 %, VDT = 311 d
    (124.0, 100, "stable"),   # below +25 %
    (125.0, 200, "stable"),   # +25 % but VDT = 621 d: slow
    (200.0, 399, "grew"),     # VDT 399 d
    (200.0, 400, "stable"),   # VDT 400 d is not < 400
    (80.0, 100, "shrank"),    # ratio 1/1.25
    (81.0, 100, "stable"),
])
def test_nelson_rule(v2, interval, expected):
    assert nelson(100.0, v2, interval) == expected


def test_nelson_vdt_category():
    assert nelson_vdt_category(399) == "fast"
    assert nelson_vdt_category(400) == "intermediate"
    assert nelson_vdt_category(600) == "intermediate"
    assert nelson_vdt_category(601) == "slow"
    assert nelson_vdt_category(-50) == ""
    assert nelson_vdt_category(float("nan")) == ""


def test_assess_growth_all_criteria_and_contract_names():
    r = assess_growth(meas(6.0, 113.1), meas(8.0, 268.1), 180)
    assert isinstance(r, GrowthResult)
    assert r.criterion == "lung_rads_2022" and r.growth == "grew"
    assert set(r.by_criterion) == set(CRITERIA)
    assert r.by_criterion == {"lung_rads_2022": "grew", "fleischner_2017": "grew", "nelson": "grew"}
    assert r.vdt_days == pytest.approx(180 * math.log(2) / math.log(268.1 / 113.1))
    d = r.as_dict()
    for key in ["interval_days", "diameter_change_mm", "volume_change_pct", "vdt_days", "growth",
                "growth_criterion", "growth_lung_rads_2022", "growth_fleischner_2017", "growth_nelson"]:
        assert key in d
    assert d["diameter_change_mm"] == pytest.approx(2.0)
    assert d["nelson_vdt_category"] == "fast"


@pytest.mark.parametrize("criterion", list(CRITERIA))
def test_assess_growth_criterion_selects_growth_column(criterion):
    # +1.8 mm (Lung-RADS grew, Fleischner stable), +10 % volume (NELSON stable)
    r = assess_growth(meas(6.0, 100.0), meas(7.8, 110.0), 365, criterion=criterion)
    assert r.growth == r.by_criterion[criterion]
    assert r.by_criterion["lung_rads_2022"] == "grew"
    assert r.by_criterion["fleischner_2017"] == "stable"
    assert r.by_criterion["nelson"] == "stable"


def test_assess_growth_flags_and_vanished():
    r = assess_growth(meas(6.0, 100.0), meas(0.0, 0.0), 500)
    assert set(r.by_criterion.values()) == {"shrank"}
    assert "nodule_vanished" in r.flags and "interval_exceeds_12_months" in r.flags
    assert math.isnan(r.vdt_days)
    r2 = assess_growth(meas(6.0, 100.0), meas(6.0, 100.0), 100)
    assert r2.growth == "stable" and math.isnan(r2.vdt_days) and r2.flags == ()


def test_assess_growth_errors():
    with pytest.raises(MeasurementError, match="criterion"):
        assess_growth(meas(6, 100), meas(7, 120), 100, criterion="recist")
    with pytest.raises(MeasurementError, match="interval_days"):
        assess_growth(meas(6, 100), meas(7, 120), 0)
    with pytest.raises(MeasurementError, match="v1"):
        assess_growth(meas(6, 0.0), meas(7, 120), 30)


# --------------------------------------------------------------------------
# measurement-uncertainty intervals
# --------------------------------------------------------------------------
def model(k=0.3, p=1.0):
    import pandas as pd

    return pd.DataFrame({"nodule_type": ["solid", "ground_glass"], "quantity": ["volume", "volume"],
                         "k": [k, 2 * k], "p": [p, p]})


def test_volume_cv_model():
    from nodulegrowth.growth import volume_cv

    assert volume_cv(10.0, 1.0, "solid", model=model()) == pytest.approx(0.03)
    # no type: the most conservative row
    assert volume_cv(10.0, 1.0, None, model=model()) == pytest.approx(0.06)
    assert math.isnan(volume_cv(0.0, 1.0, "solid", model=model()))
    assert math.isnan(volume_cv(10.0, float("nan"), "solid", model=model()))


@pytest.mark.parametrize("v2, exceeds", [(200.0, True), (102.0, False), (50.0, True)])
def test_assess_growth_intervals(v2, exceeds):
    m1 = SimpleNamespace(mean_diameter_mm=8.0, volume_mm3=100.0, voxel_size_mm=0.8)
    m2 = SimpleNamespace(mean_diameter_mm=8.0, volume_mm3=v2, voxel_size_mm=0.8)
    r = assess_growth(m1, m2, 200, nodule_type="solid", uncertainty_model=model())
    cv = 0.3 * 0.8 / 8.0
    s = math.sqrt(2) * cv
    lo, hi = r.volume_change_pct_ci95
    assert lo < r.volume_change_pct < hi
    assert hi == pytest.approx(100 * (v2 / 100.0 * math.exp(1.96 * s) - 1))
    assert r.change_exceeds_measurement_error is exceeds
    assert ("change_within_measurement_error" in r.flags) is (not exceeds)
    if exceeds:
        vlo, vhi = r.vdt_days_ci95
        assert vlo < r.vdt_days < vhi
    else:
        assert all(math.isnan(v) for v in r.vdt_days_ci95)
    d = r.as_dict()
    assert d["change_exceeds_measurement_error"] is exceeds


def test_assess_growth_without_voxel_size_has_no_interval():
    r = assess_growth(meas(6.0, 100.0), meas(8.0, 200.0), 100, uncertainty_model=model())
    assert r.change_exceeds_measurement_error is None
    assert all(math.isnan(v) for v in r.volume_change_pct_ci95)
