#!/usr/bin/env python
"""Regenerate the shipped sample cohort ``data_samples/`` bit for bit.

Usage::

    python pipelines/make_sample_data.py [--out data_samples]

Two synthetic patients (see ``data_samples/README.md``): ``PH00101`` as two
DICOM series with shuffled file names (dates only in the DICOM headers) and
``PH00202`` as two NIfTI volumes (``.nii.gz``), five nodule pairs covering
solid / part-solid / ground-glass, isolated / juxtavascular / juxtapleural,
growth, stability and shrinkage. Everything is seeded (images, DICOM UIDs,
file names, reader noise in the manifest) and no time stamps are written, so
two runs give identical files (check with ``sha256sum``).
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nodulegrowth.phantom import NoduleSpec, make_pair, write_cohort  # noqa: E402

# coarse full-chest scans: small enough to ship (DICOM is uncompressed)
DICOM_T1 = {"size_xy": 100, "spacing_xy": 3.3, "n_slices": 76, "slice_spacing": 3.2,
            "slice_thickness": 3.2, "noise_sd": 12.0}
DICOM_T2 = {"size_xy": 100, "spacing_xy": 3.3, "n_slices": 76, "slice_spacing": 3.2,
            "slice_thickness": 3.2, "noise_sd": 14.0, "z_coverage_center": -32.0}
NIFTI_T1 = {"size_xy": 120, "spacing_xy": 2.8, "n_slices": 86, "slice_spacing": 2.8,
            "slice_thickness": 2.8, "noise_sd": 12.0}
NIFTI_T2 = {"size_xy": 120, "spacing_xy": 2.85, "n_slices": 88, "slice_spacing": 2.8,
            "slice_thickness": 3.0, "noise_sd": 15.0, "z_coverage_center": -30.0}


def build(out: Path) -> None:
    """Generate the cohort into ``out`` (replacing its data, keeping README.md)."""
    a = make_pair(
        101, t1_scan=DICOM_T1, t2_scan=DICOM_T2, interval_days=182,
        nodules=[
            NoduleSpec(kind="solid", shape="lobulated", location="juxtavascular", diameter_mm=11.0,
                       volume_ratio=2.0, side="right"),
            NoduleSpec(kind="ground_glass", shape="sphere", location="isolated", diameter_mm=14.0,
                       volume_ratio=1.0, side="left"),
        ],
    )
    b = make_pair(
        202, t1_scan=NIFTI_T1, t2_scan=NIFTI_T2, interval_days=371,
        nodules=[
            NoduleSpec(kind="part_solid", shape="ellipsoid", location="isolated", diameter_mm=16.0,
                       volume_ratio=1.6, side="left", core_fraction=0.55),
            NoduleSpec(kind="solid", shape="sphere", location="juxtapleural", diameter_mm=10.0,
                       volume_ratio=0.6, side="right"),
            NoduleSpec(kind="solid", shape="ellipsoid", location="isolated", diameter_mm=7.0,
                       volume_ratio=1.0, side="right"),
        ],
    )
    for item in out.iterdir() if out.exists() else ():
        if item.name == "README.md":
            continue
        shutil.rmtree(item) if item.is_dir() else item.unlink()
    # nodule 1 of PH00202 is given as a T1 voxel index (t1_i, t1_j, t1_k)
    write_cohort(out, [(a, "dicom"), (b, "nifti", [1])])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "data_samples",
                    help="output folder (default: data_samples/ of the repository)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    build(args.out)
    print(f"wrote sample cohort to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
