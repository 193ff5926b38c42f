"""The ``nodulegrowth`` command.

Thin commands in the TorchIO manner: each parses its arguments and calls one
library function; heavy imports happen inside the command, so ``--help`` is
instant.

Commands
--------
``nodulegrowth run MANIFEST.csv --out OUTDIR [--jobs N] [--resume] [--no-report]``
    The whole pipeline on a cohort (:func:`nodulegrowth.cohort.run_cohort`).
    ``python pipelines/run_growth_pipeline.py`` is the same code path.
``nodulegrowth report MEASUREMENTS.csv --out DIR``
    Re-render the cohort report from an existing ``measurements.csv``.
``nodulegrowth validate MANIFEST.csv``
    Check a manifest and list its invalid rows without running anything.
``nodulegrowth phantom --out DIR [--pairs N] [--preset small|full] [--format F]``
    Write a synthetic cohort with known truth (:mod:`nodulegrowth.phantom`).

Exit status (``docs/CONTRACT.md`` section 2): 0 when every row was processed,
even if some rows failed; 2 when the manifest (or the measurements CSV) cannot
be read; 3 when the output folder cannot be written.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_OUTPUT = 3


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="nodulegrowth",
        description="Longitudinal lung nodule growth analysis on paired chest CT.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the pipeline on a cohort manifest",
                         description="Run the whole pipeline on a cohort manifest "
                                     "(docs/CONTRACT.md) and write measurements.csv and the report.")
    run.add_argument("manifest", help="cohort manifest CSV")
    run.add_argument("--out", required=True, help="output folder (created if needed)")
    run.add_argument("--jobs", type=_positive_int, default=1,
                     help="image pairs processed in parallel (default 1)")
    run.add_argument("--resume", action="store_true",
                     help="reuse the finished pairs of an interrupted run in the same --out")
    run.add_argument("--no-report", action="store_true", help="write measurements.csv only")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(func=_cmd_run)

    rep = sub.add_parser("report", help="re-render the report from measurements.csv",
                         description="Re-render report.pdf, figures/*.png and cohort_summary.csv "
                                     "from an existing measurements.csv, recomputing nothing.")
    rep.add_argument("measurements", help="measurements.csv written by 'nodulegrowth run'")
    rep.add_argument("--out", required=True, help="output folder")
    rep.add_argument("--nodules", default=None,
                     help="folder of per-nodule PNGs (default: 'nodules' beside the CSV)")
    rep.set_defaults(func=_cmd_report)

    ph = sub.add_parser("phantom", help="write a synthetic cohort with known truth",
                        description="Write synthetic chest-CT pairs (nodulegrowth.phantom) with a "
                                    "manifest.csv and a truth.csv, e.g. to try a set-up or to "
                                    "measure accuracy with nodulegrowth.evaluate.")
    ph.add_argument("--out", required=True, help="output folder")
    ph.add_argument("--pairs", type=_positive_int, default=2, help="number of patients (default 2)")
    ph.add_argument("--seed", type=int, default=0, help="seed of the first pair (default 0)")
    ph.add_argument("--preset", choices=("small", "full"), default="small",
                    help="small: coarse, seconds per pair; full: 512x512, ~0.7 mm")
    ph.add_argument("--format", choices=("nifti", "mha", "nrrd", "dicom"), default="nifti",
                    dest="fmt", help="image format (default nifti)")
    ph.set_defaults(func=_cmd_phantom)

    val = sub.add_parser("validate", help="check a manifest without running it")
    val.add_argument("manifest", help="cohort manifest CSV")
    val.set_defaults(func=_cmd_validate)
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    from .cohort import run_cohort

    frame = run_cohort(args.manifest, args.out, jobs=args.jobs, resume=args.resume,
                       report=not args.no_report, progress=not args.quiet)
    failed = frame[frame["status"] == "failed"]
    print(f"{len(frame) - len(failed)} of {len(frame)} rows ok; results in {args.out}/measurements.csv")
    for _, row in failed.iterrows():
        print(f"  failed: patient {row['patient_id']}, nodule {row['nodule_id']}: {row['error']}")
    return EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    import pandas as pd

    from .errors import ManifestError
    from .report import make_report

    path = Path(args.measurements)
    try:
        frame = pd.read_csv(path, dtype={"patient_id": str, "nodule_id": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ManifestError(f"measurements {path}: cannot be read ({' '.join(str(exc).split())})") from None
    nodules = Path(args.nodules) if args.nodules else path.parent / "nodules"
    pdf = make_report(frame, args.out, nodule_dir=nodules)
    print(f"report written: {pdf}")
    return EXIT_OK


def _cmd_phantom(args: argparse.Namespace) -> int:
    from .phantom import make_pair, write_cohort

    pairs = [(make_pair(args.seed + k, args.preset), args.fmt) for k in range(args.pairs)]
    manifest, truth = write_cohort(args.out, pairs)
    print(f"wrote {len(pairs)} pairs: {manifest} and {truth}")
    return EXIT_OK


def _cmd_validate(args: argparse.Namespace) -> int:
    from .cohort import make_tasks, read_manifest

    manifest = read_manifest(args.manifest)
    bad = [r for r in manifest.rows if r.error]
    print(f"{len(manifest.rows)} rows, {len(manifest.rows) - len(bad)} valid, "
          f"{len(make_tasks(manifest))} image pairs")
    for row in bad:
        print(f"  invalid: {row.error}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nodulegrowth`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    from .errors import NoduleGrowthError

    try:
        return args.func(args)
    except NoduleGrowthError as exc:
        print(f"nodulegrowth: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        print(f"nodulegrowth: error: cannot write output: {exc}", file=sys.stderr)
        return EXIT_OUTPUT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
