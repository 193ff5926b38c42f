"""nodulegrowth: longitudinal lung nodule growth analysis on paired chest CT.

One module per stage of the pipeline:

``io`` (read DICOM / NIfTI / MHA / NRRD with exact LPS geometry),
``phantom`` (synthetic chest-CT pairs with known truth),
``lung`` (lung and body masks), ``register`` (elastix T2 -> T1),
``propagate`` (T1 points into T2, re-identification),
``segment`` (seed-point nodule segmentation), ``measure`` (diameters, volume),
``growth`` (volume doubling time, growth criteria), ``cohort`` (manifest and
runner), ``report`` (cohort PDF and PNGs), ``cli`` (the ``nodulegrowth``
command).

Conventions: numpy arrays are ``(z, y, x)``; a ``spacing`` that goes with an
array is ``(z, y, x)`` in mm; physical points are LPS ``(x, y, z)`` in mm, as
ITK and DICOM use them.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import NoduleGrowthError  # noqa: F401
