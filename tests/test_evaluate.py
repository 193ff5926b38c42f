"""Tests of nodulegrowth.evaluate against hand-computed errors."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nodulegrowth.errors import NoduleGrowthError
from nodulegrowth.evaluate import compare_with_truth, summarise_errors


def tables():
    measured = pd.DataFrame({
        "patient_id": ["P", "P", "Q"], "nodule_id": ["1", "2", "1"], "status": ["ok", "ok", "failed"],
        "t1_center_x": [3.0, 0.0, np.nan], "t1_center_y": [4.0, 0.0, np.nan], "t1_center_z": [0.0, 1.0, np.nan],
        "t1_volume_mm3": [90.0, 220.0, np.nan], "t1_mean_diameter_mm": [5.5, 7.0, np.nan],
        "t2_mean_diameter_mm": [8.0, 7.1, np.nan], "interval_days": [365.0, 365.0, np.nan],
        "growth": ["grew", "stable", None], "growth_criterion": ["lung_rads_2022"] * 3,
    })
    truth = pd.DataFrame({
        "patient_id": ["P", "P", "Q"], "nodule_id": [1, 2, 1],
        "t1_x": [0.0, 0.0, 0.0], "t1_y": [0.0, 0.0, 0.0], "t1_z": [0.0, 0.0, 0.0],
        "t1_volume_mm3": [100.0, 200.0, 50.0], "t1_mean_diameter_mm": [5.0, 7.0, 4.0],
        "t2_mean_diameter_mm": [7.0, 8.0, 4.0],
    })
    return measured, truth


def test_errors_are_measured_minus_true():
    e = compare_with_truth(*tables())
    assert list(e["nodule_id"]) == ["1", "2"]  # failed rows are left out
    np.testing.assert_allclose(e["t1_center_error_mm"], [5.0, 1.0])
    np.testing.assert_allclose(e["t1_volume_error_pct"], [-10.0, 10.0])
    np.testing.assert_allclose(e["t1_mean_diameter_error_mm"], [0.5, 0.0])
    # the true growth uses the same rule on the true diameters: +2.0 mm grew, +1.0 mm stable
    assert list(e["growth_true"]) == ["grew", "stable"]


def test_summary_is_over_absolute_errors():
    s = summarise_errors(compare_with_truth(*tables()))
    assert s.loc["t1_volume_error_pct", "median_abs"] == pytest.approx(10.0)
    assert s.loc["t1_volume_error_pct", "mean"] == pytest.approx(0.0)
    assert s.loc["t1_center_error_mm", "max_abs"] == pytest.approx(5.0)


def test_missing_truth_row_is_an_error():
    measured, truth = tables()
    with pytest.raises(NoduleGrowthError, match="no truth for patient P, nodule 2"):
        compare_with_truth(measured, truth.iloc[[0, 2]])
