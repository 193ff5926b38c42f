#!/usr/bin/env python
"""Run the nodulegrowth pipeline on a cohort manifest.

    python pipelines/run_growth_pipeline.py MANIFEST.csv --out OUTDIR [--jobs N] [--resume]

The same code path as ``nodulegrowth run`` (see ``docs/CONTRACT.md``): it only
forwards its arguments to :func:`nodulegrowth.cli.main`.
"""
import sys
from pathlib import Path

try:
    from nodulegrowth.cli import main
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from nodulegrowth.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
