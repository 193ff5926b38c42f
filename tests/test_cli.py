"""Tests of the command line: exit statuses, one-line errors, one code path."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nodulegrowth import cli

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("run", "report", "validate", "phantom"):
        assert command in out


def test_missing_manifest_is_exit_2_with_one_line(tmp_path, capsys):
    status = cli.main(["run", str(tmp_path / "none.csv"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == cli.EXIT_BAD_INPUT
    assert len(err) == 1 and "none.csv: no such file" in err[0]


def test_manifest_without_required_column_is_exit_2(tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text("patient_id,t1_image\nP,a\n")
    assert cli.main(["run", str(manifest), "--out", str(tmp_path / "o")]) == cli.EXIT_BAD_INPUT
    assert "missing required column(s): t2_image" in capsys.readouterr().err


def test_unwritable_output_is_exit_3(tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text("patient_id,t1_image,t2_image,t1_x,t1_y,t1_z\nP,a,b,1,2,3\n")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert cli.main(["run", str(manifest), "--out", str(blocker / "out"), "--quiet"]) == cli.EXIT_OUTPUT
    assert "cannot write output" in capsys.readouterr().err


def test_bad_rows_still_exit_0(tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text("patient_id,t1_image,t2_image,t1_x,t1_y,t1_z\n"
                        "P1,missing1.nii.gz,missing2.nii.gz,1,2,3\nP2,a,b,x,2,3\n")
    status = cli.main(["run", str(manifest), "--out", str(tmp_path / "out"), "--quiet", "--no-report"])
    out = capsys.readouterr().out
    assert status == cli.EXIT_OK
    assert "0 of 2 rows ok" in out
    assert "missing1.nii.gz" in out  # the failed row names the file


def test_validate_lists_invalid_rows(tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text("patient_id,t1_image,t2_image,t1_x,t1_y,t1_z\nP1,a,b,1,2,3\nP2,a,b,,2,3\n")
    assert cli.main(["validate", str(manifest)]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "2 rows, 1 valid, 1 image pairs" in out
    assert "incomplete coordinates, t1_x empty" in out


@pytest.mark.parametrize("jobs", ["0", "two"])
def test_bad_jobs_value_is_a_usage_error(jobs, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "m.csv", "--out", "o", "--jobs", jobs])
    assert exc.value.code == 2


def test_pipeline_script_is_the_same_code_path(tmp_path):
    """The script and the command print the same thing for the same input."""
    manifest = tmp_path / "m.csv"
    manifest.write_text("patient_id,t1_image\nP,a\n")
    script = subprocess.run([sys.executable, str(ROOT / "pipelines" / "run_growth_pipeline.py"),
                             str(manifest), "--out", str(tmp_path / "o1")],
                            capture_output=True, text=True)
    module = subprocess.run([sys.executable, "-m", "nodulegrowth", "run", str(manifest),
                             "--out", str(tmp_path / "o1")], capture_output=True, text=True, cwd=ROOT)
    assert script.returncode == module.returncode == cli.EXIT_BAD_INPUT
    assert script.stderr == module.stderr


def test_phantom_writes_a_valid_cohort(tmp_path, capsys):
    out = tmp_path / "cohort"
    assert cli.main(["phantom", "--out", str(out), "--pairs", "1", "--seed", "5"]) == cli.EXIT_OK
    assert cli.main(["validate", str(out / "manifest.csv")]) == cli.EXIT_OK
    text = capsys.readouterr().out
    assert "0 valid" not in text and "invalid" not in text
    assert (out / "truth.csv").is_file()
