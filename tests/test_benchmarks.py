"""Argument checks and summary helpers of the hand-run benchmark scripts (their figures are not tested here)."""
from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    # registered, so that worker processes can unpickle its functions
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("argv, match", [
    (["--inplane", "5"], "--inplane 5.0"),
    (["--noise", "30", "10"], "0 <= LO <= HI for the noise"),
    (["--psf", "0", "0.5"], "0 < LO <= HI for the PSF"),
    (["--from-csv", "no/such_accuracy.csv"], "no such file"),
    (["--jobs", "0"], "--jobs 0: need at least 1"),
])
def test_measurement_benchmark_rejects_bad_arguments_in_one_line(argv, match):
    bench = _load("measurement")
    with pytest.raises(SystemExit, match=match):
        bench.main(argv)
    # nothing of a bad invocation stays behind for the next run in the process
    assert (bench.INPLANE, bench.NOISE_HU, bench.PSF_MM) == (0.7, (10.0, 30.0), (0.5, 0.7))


def _pairs(mean_change_errs, **cols):
    """Thin-slice benchmark rows of one cell: an 8 -> 9.6 mm solid nodule doubling in 200 days."""
    import pandas as pd

    n = len(mean_change_errs)
    base = dict(kind="solid", band="6-10", interval=200.0, true_mean1=8.0, true_mean2=9.6, true_vol1=100.0,
                true_vol2=200.0, vol_ratio_err_pct=0.0, type_ok=True, type_ok2=True, leak_flag=False,
                leak_flag2=False, level_flag=False, level_flag2=False)
    base.update(cols)
    return pd.DataFrame({**{k: [v] * n if not isinstance(v, list) else v for k, v in base.items()},
                         "mean_change_err": list(mean_change_errs)})


def test_noise_floor_lends_each_pair_the_change_errors_of_the_other_clean_pairs():
    bench = _load("measurement")
    # a true change of 1.6 mm grows under Lung-RADS (> 1.5 mm), not under
    # Fleischner (>= 2 mm); an error of -0.2 mm turns the first. Pair 0's
    # pool is pairs 1 and 2 (errors -0.2, 0): half right; pair 1's is 0, 0:
    # right; pair 2's is 0, -0.2: half. The flagged pair 3 lends nothing
    # (its error would turn every pair) but is scored: its pool, 0 / -0.2 / 0,
    # is right two times in three.
    d = _pairs([0.0, -0.2, 0.0, -0.5], leak_flag=[False, False, False, True])
    floor = bench._noise_floor(d)
    assert floor["lung_rads_2022"] == pytest.approx(100 * (0.5 + 1 + 0.5 + 2 / 3) / 4)
    assert floor["fleischner_2017"] == pytest.approx(100.0)
    # a volume-ratio error of -40 % takes the doubling below +25 %
    d = _pairs([0.0, 0.0, 0.0], vol_ratio_err_pct=[0.0, -40.0, 0.0])
    assert bench._noise_floor(d)["nelson"] == pytest.approx(100 * (0.5 + 1 + 0.5) / 3)


def test_level_flag_summary_counts_scans_typed_wrong_and_right():
    bench = _load("measurement")
    d = _pairs([0.0, 0.0], type_ok=[False, True], level_flag=[True, True], vol_err_pct=[-40.0, 30.0],
               vol_err2_pct=[-45.0, 1.0])
    line = bench._level_flag_summary(d)
    assert "typed wrong 1 of 1 flagged (solid 1/1)" in line
    assert "typed right 1 of 3 flagged (1 of them > 25 % off)" in line
    assert line.endswith("leak flag: 1")  # pair 0 at T2, -45 % and typed right


def test_accuracy_rows_do_not_depend_on_the_number_of_worker_processes():
    import numpy as np

    bench = _load("measurement")
    args = (1, ["solid"], [(6.0, 10.0)], [1.0], ["isolated", "juxtavascular"])
    serial = bench.accuracy(args[0], np.random.default_rng(5), *args[1:])
    parallel = bench.accuracy(args[0], np.random.default_rng(5), *args[1:], jobs=2)
    assert len(serial) == 2 and (serial["failed"] == "").all()
    assert serial.equals(parallel)


def test_growth_detection_scores_grew_against_the_rest_from_the_measured_rows():
    bench = _load("measurement")
    # 8 -> 9.6 mm doubling in 200 days grows under Lung-RADS (+1.6 mm) and
    # NELSON, not Fleischner. Pair 0 is read right; pair 1 reads T2 0.2 mm
    # small (+1.4 mm: a missed growth under Lung-RADS); pair 2 is a stable
    # nodule (8 -> 8 mm, 100 -> 100 mm^3) read 2 mm larger at T2 and +100 %
    # (a false growth under all three); pair 3 shrinks 8 -> 6 mm and is read so
    # (shrank: the rest, right).
    d = _pairs([0.0, -0.2, 2.0, 0.0], true_mean2=[9.6, 9.6, 8.0, 6.0], true_vol2=[200.0, 200.0, 100.0, 40.0],
               mean_err=0.0, mean_err2=[0.0, -0.2, 2.0, 0.0], vol_err_pct=0.0,
               vol_err2_pct=[0.0, 0.0, 100.0, 0.0])
    det = bench._growth_detection(d)
    assert det["lung_rads_2022"] == pytest.approx((50.0, 50.0, 50.0, 2, 2))
    assert det["nelson"] == pytest.approx((100.0, 2 / 3 * 100, 75.0, 2, 3))
    sens, prec, right, n_true, n_read = det["fleischner_2017"]
    assert math.isnan(sens) and prec == 0.0 and right == 75.0 and (n_true, n_read) == (0, 1)
