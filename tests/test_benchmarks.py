"""Argument checks of the hand-run benchmark scripts (their figures are not tested here)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("argv, match", [
    (["--inplane", "5"], "--inplane 5.0"),
    (["--noise", "30", "10"], "0 <= LO <= HI for the noise"),
    (["--psf", "0", "0.5"], "0 < LO <= HI for the PSF"),
    (["--from-csv", "no/such_accuracy.csv"], "no such file"),
])
def test_measurement_benchmark_rejects_bad_arguments_in_one_line(argv, match):
    bench = _load("measurement")
    with pytest.raises(SystemExit, match=match):
        bench.main(argv)
    # nothing of a bad invocation stays behind for the next run in the process
    assert (bench.INPLANE, bench.NOISE_HU, bench.PSF_MM) == (0.7, (10.0, 30.0), (0.5, 0.7))
