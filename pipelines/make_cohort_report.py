#!/usr/bin/env python
"""Render the nodulegrowth cohort report from a measurements table.

Usage::

    python pipelines/make_cohort_report.py OUTDIR/measurements.csv --out OUTDIR

Writes ``OUTDIR/report.pdf``, ``OUTDIR/figures/*.png`` and
``OUTDIR/cohort_summary.csv`` (see :func:`nodulegrowth.report.make_report`).
Exit status 0 on success, 2 with a one-line error when the table cannot be
read or the report cannot be written.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from nodulegrowth.errors import NoduleGrowthError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Render the cohort report (PDF, PNG figures, summary CSV) "
                    "from measurements.csv.")
    parser.add_argument("measurements", type=Path, help="measurements.csv of a pipeline run")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--nodules", type=Path, default=None,
                        help="folder of per-nodule PNGs (default: OUT/nodules)")
    parser.add_argument("--title", default="nodulegrowth cohort report", help="report title")
    parser.add_argument("--agreement-measure", default="mean_diameter",
                        choices=("mean_diameter", "long_axis", "max_3d_diameter"),
                        help="pipeline diameter compared with the radiologists' diameters")
    args = parser.parse_args(argv)
    from nodulegrowth.report import make_report
    try:
        pdf = make_report(args.measurements, args.out, nodule_dir=args.nodules,
                          title=args.title, agreement_measure=args.agreement_measure)
    except NoduleGrowthError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot write the report to {args.out}: {exc.strerror or exc}; "
              "check the folder is writable", file=sys.stderr)
        return 2
    print(pdf)
    return 0


if __name__ == "__main__":
    sys.exit(main())
