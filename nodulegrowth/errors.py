"""Exception hierarchy of nodulegrowth.

Every error the library raises on bad input is a :class:`NoduleGrowthError`
whose message is one line naming the offending file, manifest row or value and
a hint on how to fix it. Only the cohort runner (:mod:`nodulegrowth.cohort`)
and the command line (:mod:`nodulegrowth.cli`) catch them, one manifest row at
a time, so that one bad row never stops a cohort.
"""
from __future__ import annotations


class NoduleGrowthError(Exception):
    """Base class of all errors raised by nodulegrowth on bad input or data."""


class ManifestError(NoduleGrowthError):
    """The cohort manifest, or one of its rows, is invalid."""


class ImageReadError(NoduleGrowthError):
    """An image (DICOM series folder or volume file) cannot be read as a CT."""


class ImageWriteError(NoduleGrowthError):
    """An image or DICOM series cannot be written (bad argument or I/O failure)."""


class GeometryError(NoduleGrowthError):
    """Image geometry is unusable (missing slices, uneven spacing, point outside the image)."""


class LungMaskError(NoduleGrowthError):
    """No credible lung mask could be extracted from an image."""


class RegistrationError(NoduleGrowthError):
    """Registration of T2 onto T1 failed."""


class SegmentationError(NoduleGrowthError):
    """No nodule could be segmented at the given seed point."""


class MeasurementError(NoduleGrowthError):
    """A measurement is undefined for the given mask (e.g. an empty mask)."""


class PhantomSpecError(NoduleGrowthError):
    """A phantom specification is invalid (unknown kind, size out of range, ...)."""


class ReportError(NoduleGrowthError):
    """The measurements table cannot be turned into a report."""


class DeidentificationError(NoduleGrowthError):
    """DICOM de-identification failed; the data must not leave the site."""
