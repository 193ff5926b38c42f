"""Reading and writing CT images with exact LPS geometry.

This is the only module of nodulegrowth that touches image files and DICOM
headers. Everything downstream receives a :class:`Scan`: a 3-D
``SimpleITK.Image`` of ``sitkFloat32`` Hounsfield units, re-oriented to the
LPS axes, plus a :class:`ScanInfo` with technical metadata only (no names,
IDs, birth dates, UIDs, institutions or accession numbers).

Frames and conventions
----------------------
- World points are LPS ``(x, y, z)`` in millimetres, the DICOM / ITK patient
  frame: x grows to the patient's Left, y to Posterior, z to Superior.
- Voxel indices in ITK order are ``(i, j, k)`` = (column, row, slice); the
  numpy index of the same voxel is ``[k, j, i]``.
- The geometry of an image maps an index to a world point by

  .. math::

      \\mathbf{p} = \\mathbf{o} + D \\, \\operatorname{diag}(\\mathbf{s}) \\, \\mathbf{i}

  with origin :math:`\\mathbf{o}` (world mm of voxel ``(0, 0, 0)``),
  direction matrix :math:`D` (columns = world directions of the i, j, k
  axes), spacing :math:`\\mathbf{s} = (s_i, s_j, s_k)` in mm.

Supported inputs
----------------
- a DICOM series folder (searched recursively, see
  :func:`read_dicom_series`);
- a volume file read by SimpleITK: ``.nii``, ``.nii.gz`` (NIfTI; SimpleITK
  converts the RAS NIfTI frame to LPS), ``.mha``, ``.mhd`` (MetaImage),
  ``.nrrd``, ``.nhdr`` (NRRD).

References
----------
.. [1] NEMA PS3.3, C.7.6.2 "Image Plane Module" (ImagePositionPatient,
   ImageOrientationPatient, PixelSpacing) and C.11.1 "Modality LUT Module"
   (RescaleSlope, RescaleIntercept). https://dicom.nema.org/medical/dicom/current/output/html/part03.html
.. [2] NEMA PS3.3, A.3 "CT Image IOD".
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import shutil
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds
from scipy import ndimage

from .errors import GeometryError, ImageReadError, ImageWriteError

__all__ = [
    "Scan",
    "ScanInfo",
    "ImageWriteError",
    "VOLUME_SUFFIXES",
    "load_scan",
    "read_dicom_series",
    "read_volume",
    "native_index_to_world",
    "world_to_index",
    "index_to_world",
    "crop",
    "write_volume",
    "write_dicom_series",
]

logger = logging.getLogger(__name__)

#: File suffixes read by :func:`read_volume`, mapped to ``ScanInfo.format``.
VOLUME_SUFFIXES: dict[str, str] = {
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".mha": "mha",
    ".mhd": "mha",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
}

_ACCEPTED = "a DICOM series folder or a .nii, .nii.gz, .mha, .mhd or .nrrd file"

#: CT Image Storage SOP class [2]_.
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

#: Offset added to HU before storing as integers; undone by RescaleIntercept.
_HU_OFFSET = 1024


# --------------------------------------------------------------------------
# data classes
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ScanInfo:
    """Technical metadata of a loaded scan; free of PHI.

    Attributes
    ----------
    source : str
        Path of the folder or file that was read.
    format : {'dicom', 'nifti', 'mha', 'nrrd'}
        ``'mha'`` covers both MetaImage forms ``.mha`` and ``.mhd``.
    acquisition_date : datetime.date or None
        DICOM AcquisitionDate, else SeriesDate, else StudyDate; ``None`` for
        volume files and when no date could be parsed.
    manufacturer, model : str or None
        DICOM Manufacturer and ManufacturerModelName.
    kvp : float or None
        Peak tube voltage in kV (DICOM KVP).
    slice_thickness_mm : float or None
        Nominal reconstructed slice thickness in mm (DICOM SliceThickness);
        ``None`` for volume files, which do not store it.
    spacing_zyx : tuple of 3 float
        Voxel spacing in mm of the loaded (LPS re-oriented) image, numpy
        order ``(z, y, x)``.
    size_zyx : tuple of 3 int
        Array shape of the loaded image, numpy order ``(z, y, x)``.
    native_origin : tuple of 3 float
        LPS world mm of voxel ``(0, 0, 0)`` of the file as stored.
    native_spacing : tuple of 3 float
        Spacing ``(s_i, s_j, s_k)`` in mm of the file as stored, ITK order.
        For a resampled uneven DICOM series, ``s_k`` is the median gap.
    native_direction : tuple of 9 float
        Direction matrix of the file as stored, row-major (ITK
        ``GetDirection`` order): column ``a`` is the world direction of
        index axis ``a``.
    native_size : tuple of 3 int
        Size ``(n_i, n_j, n_k)`` of the file as stored, ITK order.
    notes : tuple of str
        Warnings, each ``"code: detail"``; codes are ``skipped_files``,
        ``ignored_series``, ``ignored_slices``, ``dropped_duplicate_slices``,
        ``resampled_uneven_slices``, ``missing_slices``, ``unparsable_date``,
        ``values_may_not_be_hu``, ``pixel_data_via_simpleitk``.
    native_slice_offsets_mm : tuple of float or None
        For a DICOM series whose slices were unevenly spaced (and therefore
        resampled), the position in mm of every original slice along the
        slice normal, relative to the first; ``None`` when the stored grid is
        regular. Lets :func:`native_index_to_world` honour the original slice
        numbering a reader saw in a viewer.
    """

    source: str
    format: str
    acquisition_date: _dt.date | None
    manufacturer: str | None
    model: str | None
    kvp: float | None
    slice_thickness_mm: float | None
    spacing_zyx: tuple[float, float, float]
    size_zyx: tuple[int, int, int]
    native_origin: tuple[float, float, float]
    native_spacing: tuple[float, float, float]
    native_direction: tuple[float, ...]
    native_size: tuple[int, int, int]
    notes: tuple[str, ...] = ()
    native_slice_offsets_mm: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Scan:
    """A loaded CT scan.

    Attributes
    ----------
    image : SimpleITK.Image
        3-D ``sitkFloat32`` image in HU, re-oriented with
        ``SimpleITK.DICOMOrient(image, "LPS")`` (for axis-aligned scans the
        direction is the identity and ``array[k]`` is an axial slice, inferior
        to superior).
    info : ScanInfo
        Technical metadata and the native (as stored) geometry.

    Examples
    --------
    >>> import tempfile, numpy as np, SimpleITK as sitk
    >>> im = sitk.GetImageFromArray(np.full((2, 3, 4), -1000, np.int16))
    >>> im.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, 1))  # rows stored anterior-up
    >>> with tempfile.TemporaryDirectory() as d:
    ...     scan = load_scan(write_volume(im, Path(d) / "ct.mha"))
    >>> scan.image.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    True
    >>> scan.info.native_direction[4], scan.image.GetPixelIDTypeAsString()
    (-1.0, '32-bit float')
    """

    image: sitk.Image
    info: ScanInfo


# --------------------------------------------------------------------------
# geometry helpers
# --------------------------------------------------------------------------


def _geometry(image: sitk.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return origin (3,), spacing (3,), direction (3, 3) of a 3-D image."""
    if image.GetDimension() != 3:
        raise GeometryError(
            f"image has {image.GetDimension()} dimensions; expected a 3-D image"
        )
    origin = np.asarray(image.GetOrigin(), dtype=float)
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    return origin, spacing, direction


def _as_points(values: Any, name: str) -> tuple[np.ndarray, bool]:
    """Coerce ``(3,)`` or ``(N, 3)`` input to float ``(N, 3)``; flag if single."""
    arr = np.asarray(values, dtype=float)
    single = arr.ndim == 1
    arr2 = np.atleast_2d(arr)
    if arr2.ndim != 2 or arr2.shape[1] != 3:
        raise GeometryError(
            f"{name} has shape {arr.shape}; expected (3,) or (N, 3) in ITK/LPS order"
        )
    if not np.all(np.isfinite(arr2)):
        raise GeometryError(f"{name} {arr.tolist()} is not finite; give real numbers")
    return arr2, single


def _index_to_world_arrays(
    ijk: np.ndarray, origin: np.ndarray, spacing: np.ndarray, direction: np.ndarray
) -> np.ndarray:
    # p = o + D diag(s) i, applied row-wise to (N, 3)
    return origin + (ijk * spacing) @ direction.T


def index_to_world(image: sitk.Image, ijk: Any) -> np.ndarray:
    """Map continuous voxel indices of ``image`` to LPS world points.

    .. math::

        \\mathbf{p} = \\mathbf{o} + D \\, \\operatorname{diag}(\\mathbf{s}) \\, \\mathbf{i}

    Parameters
    ----------
    image : SimpleITK.Image
        3-D image whose geometry is used.
    ijk : array_like, shape (3,) or (N, 3)
        Continuous indices in ITK order (i=column, j=row, k=slice), 0-based;
        integer values are voxel centres.

    Returns
    -------
    numpy.ndarray, shape (3,) or (N, 3)
        LPS world points ``(x, y, z)`` in mm (same leading shape as ``ijk``).

    Raises
    ------
    GeometryError
        If the image is not 3-D or ``ijk`` has the wrong shape.

    Examples
    --------
    >>> import SimpleITK as sitk
    >>> im = sitk.Image(4, 3, 2, sitk.sitkFloat32)
    >>> im.SetSpacing((0.5, 0.5, 2.0)); im.SetOrigin((10.0, 0.0, -5.0))
    >>> index_to_world(im, (2, 1, 1)).tolist()
    [11.0, 0.5, -3.0]
    """
    origin, spacing, direction = _geometry(image)
    pts, single = _as_points(ijk, "ijk")
    out = _index_to_world_arrays(pts, origin, spacing, direction)
    return out[0] if single else out


def world_to_index(image: sitk.Image, xyz: Any) -> np.ndarray:
    """Map LPS world points to continuous voxel indices of ``image``.

    .. math::

        \\mathbf{i} = \\operatorname{diag}(\\mathbf{s})^{-1} D^{-1}
        (\\mathbf{p} - \\mathbf{o})

    Parameters
    ----------
    image : SimpleITK.Image
        3-D image whose geometry is used.
    xyz : array_like, shape (3,) or (N, 3)
        LPS world points in mm.

    Returns
    -------
    numpy.ndarray, shape (3,) or (N, 3)
        Continuous indices ``(i, j, k)`` (ITK order, float); round them to get
        the voxel containing the point, whose numpy index is ``[k, j, i]``.

    Raises
    ------
    GeometryError
        If the image is not 3-D or ``xyz`` has the wrong shape.

    Examples
    --------
    >>> import SimpleITK as sitk
    >>> im = sitk.Image(4, 3, 2, sitk.sitkFloat32)
    >>> im.SetSpacing((0.5, 0.5, 2.0)); im.SetOrigin((10.0, 0.0, -5.0))
    >>> world_to_index(im, (11.0, 0.5, -3.0)).tolist()
    [2.0, 1.0, 1.0]
    """
    origin, spacing, direction = _geometry(image)
    pts, single = _as_points(xyz, "xyz")
    # solve rather than transpose: the direction need not be exactly orthonormal
    out = np.linalg.solve(direction, (pts - origin).T).T / spacing
    return out[0] if single else out


def native_index_to_world(info: ScanInfo, ijk: Any) -> np.ndarray:
    """Map a voxel index of the file *as stored* to an LPS world point.

    This is how a manifest voxel index ``(t1_i, t1_j, t1_k)`` becomes a world
    point. ``i`` is the column, ``j`` the row, ``k`` the slice, 0-based, in
    the file as stored. For a DICOM series ``k`` counts the slices sorted by
    their position along the slice normal
    :math:`\\mathbf{n} = \\mathbf{r} \\times \\mathbf{c}` (row and column
    direction cosines of ImageOrientationPatient), ascending; for a standard
    axial series that is inferior to superior (feet to head), regardless of
    file names or InstanceNumber.

    .. math::

        \\mathbf{p} = \\mathbf{o} + i s_i \\mathbf{d}_i + j s_j \\mathbf{d}_j
        + z(k) \\, \\mathbf{d}_k, \\qquad z(k) = k s_k

    where :math:`\\mathbf{d}_a` are the columns of the native direction. For
    an uneven DICOM series :math:`z(k)` is instead the linear interpolation
    of the original slice offsets ``info.native_slice_offsets_mm`` (so
    ``k`` still counts original slices).

    Parameters
    ----------
    info : ScanInfo
        Metadata of the loaded scan.
    ijk : array_like, shape (3,) or (N, 3)
        Native indices, continuous allowed.

    Returns
    -------
    numpy.ndarray, shape (3,) or (N, 3)
        LPS world points in mm.

    Raises
    ------
    GeometryError
        If ``ijk`` has the wrong shape or is not finite.

    Examples
    --------
    >>> info = ScanInfo(source="x", format="nifti", acquisition_date=None,
    ...     manufacturer=None, model=None, kvp=None, slice_thickness_mm=None,
    ...     spacing_zyx=(2.0, 1.0, 1.0), size_zyx=(2, 3, 4),
    ...     native_origin=(0.0, 0.0, 0.0), native_spacing=(1.0, 1.0, 2.0),
    ...     native_direction=(-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0),
    ...     native_size=(4, 3, 2))
    >>> native_index_to_world(info, (3, 0, 1)).tolist()
    [-3.0, 0.0, 2.0]
    """
    pts, single = _as_points(ijk, "ijk")
    origin = np.asarray(info.native_origin, dtype=float)
    spacing = np.asarray(info.native_spacing, dtype=float)
    direction = np.asarray(info.native_direction, dtype=float).reshape(3, 3)
    if info.native_slice_offsets_mm is None:
        out = _index_to_world_arrays(pts, origin, spacing, direction)
    else:
        offsets = np.asarray(info.native_slice_offsets_mm, dtype=float)
        k = pts[:, 2]
        kk = np.arange(offsets.size, dtype=float)
        # np.interp clamps; extrapolate linearly beyond the ends instead
        z = np.interp(k, kk, offsets)
        first_gap = offsets[1] - offsets[0]
        last_gap = offsets[-1] - offsets[-2]
        z = np.where(k < 0, k * first_gap, z)
        z = np.where(k > kk[-1], offsets[-1] + (k - kk[-1]) * last_gap, z)
        local = np.column_stack([pts[:, 0] * spacing[0], pts[:, 1] * spacing[1], z])
        out = origin + local @ direction.T
    return out[0] if single else out


def crop(image: sitk.Image, center_xyz: Any, half_size_mm: Any) -> sitk.Image:
    """Cut a sub-image around a world point, clipped to the image bounds.

    The crop is the smallest voxel box containing the world box
    :math:`\\mathbf{c} \\pm \\mathbf{h}` (axis-aligned in LPS), intersected
    with the image. The result keeps spacing and direction; its origin is the
    world position of its first voxel, so world coordinates are unchanged.

    Parameters
    ----------
    image : SimpleITK.Image
        3-D image (any pixel type).
    center_xyz : array_like, shape (3,)
        Centre in LPS world mm; must lie inside the image (within half a
        voxel of the outer voxel centres).
    half_size_mm : float or array_like, shape (3,)
        Half extent in mm, one value or ``(hx, hy, hz)`` along the LPS axes;
        positive.

    Returns
    -------
    SimpleITK.Image
        The cropped image.

    Raises
    ------
    GeometryError
        If the centre is outside the image or ``half_size_mm`` is not
        positive.

    Examples
    --------
    >>> import SimpleITK as sitk
    >>> im = sitk.Image(20, 20, 10, sitk.sitkFloat32)
    >>> sub = crop(im, (2.0, 10.0, 5.0), 3.0)
    >>> sub.GetSize(), sub.GetOrigin()
    ((6, 7, 7), (0.0, 7.0, 2.0))
    """
    origin, spacing, direction = _geometry(image)
    center, single = _as_points(center_xyz, "center_xyz")
    if not single:
        raise GeometryError(
            f"center_xyz has shape {np.shape(center_xyz)}; expected one LPS point (x, y, z)"
        )
    half = np.asarray(half_size_mm, dtype=float).ravel()
    if half.size == 1:
        half = np.repeat(half, 3)
    if half.size != 3 or not np.all(np.isfinite(half)) or np.any(half <= 0):
        raise GeometryError(
            f"half_size_mm={half_size_mm!r} is invalid; give a positive number of mm or (hx, hy, hz)"
        )
    size = np.asarray(image.GetSize(), dtype=int)
    c_idx = world_to_index(image, center[0])
    if np.any(c_idx < -0.5) or np.any(c_idx > size - 0.5):
        raise GeometryError(
            f"crop centre {center[0].tolist()} mm (index {np.round(c_idx, 2).tolist()}) is outside "
            f"the image of size {size.tolist()}; check the point's frame (LPS mm)"
        )
    corners = np.array(
        [[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=float
    )
    idx = world_to_index(image, center[0] + corners * half)
    # a small epsilon keeps a box edge that falls exactly on a voxel centre
    lo = np.floor(idx.min(axis=0) + 1e-6).astype(int)
    hi = np.ceil(idx.max(axis=0) - 1e-6).astype(int)
    lo = np.clip(lo, 0, size - 1)
    hi = np.clip(hi, 0, size - 1)
    return sitk.RegionOfInterest(image, (hi - lo + 1).tolist(), lo.tolist())


# --------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------


def _volume_suffix(path: Path) -> str | None:
    name = path.name.lower()
    for suffix in VOLUME_SUFFIXES:  # ".nii.gz" is tried before ".nii"
        if name.endswith(suffix):
            return suffix
    return None


def write_volume(image: sitk.Image, path: str | os.PathLike) -> Path:
    """Write an image to a volume file atomically.

    The image is first written into a temporary folder next to ``path`` and
    then moved into place with :func:`os.replace` (data file first, header
    last for ``.mhd``), so a reader never sees a half-written file and an
    interrupted run leaves the old file intact. ``.nii.gz``, ``.mha``,
    ``.nrrd`` are compressed; ``.nii`` and ``.mhd`` (with its ``.raw``) are
    not. Geometry (origin, spacing, direction) and pixel type are kept; note
    that NIfTI stores the geometry as float32.

    Parameters
    ----------
    image : SimpleITK.Image
        Image to write (any pixel type SimpleITK can store in the format).
    path : str or os.PathLike
        Target file, ending in ``.nii``, ``.nii.gz``, ``.mha``, ``.mhd``,
        ``.nrrd`` or ``.nhdr``. Its folder is created if missing.

    Returns
    -------
    pathlib.Path
        The written path.

    Raises
    ------
    ImageWriteError
        If the suffix is not supported or writing fails.

    Examples
    --------
    >>> import tempfile, SimpleITK as sitk
    >>> im = sitk.Image(4, 3, 2, sitk.sitkFloat32)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = write_volume(im, Path(d) / "ct.nii.gz")
    ...     sitk.ReadImage(str(p)).GetSize()
    (4, 3, 2)
    """
    path = Path(path)
    suffix = _volume_suffix(path)
    if suffix is None:
        raise ImageWriteError(
            f"cannot write {path}: unknown suffix; use .nii, .nii.gz, .mha, .mhd or .nrrd"
        )
    compress = suffix in (".nii.gz", ".mha", ".nrrd")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tmp_target = tmpdir / path.name
        try:
            sitk.WriteImage(image, str(tmp_target), useCompression=compress)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
            raise ImageWriteError(
                f"cannot write {path}: {first}; check the pixel type and free disk space"
            ) from exc
        produced = sorted(tmpdir.iterdir(), key=lambda p: p == tmp_target)
        for f in produced:  # the header (tmp_target) last
            os.replace(f, path.parent / f.name)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return path


# Tags a caller may not set through ``tags``: they follow from the image.
_PROTECTED_TAGS = frozenset(
    {
        "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows",
        "Columns", "PixelData", "RescaleSlope", "RescaleIntercept", "RescaleType",
        "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
        "SamplesPerPixel", "PhotometricInterpretation", "SOPInstanceUID",
        "SOPClassUID", "InstanceNumber", "SliceLocation", "Modality",
    }
)


def _uid(rng: np.random.Generator | None) -> str:
    if rng is None:
        return str(generate_uid())
    # deterministic UIDs when the caller controls the randomness
    return str(generate_uid(entropy_srcs=[str(int(x)) for x in rng.integers(0, 2**62, 4)]))


def _dicom_value(keyword: str, value: Any) -> Any:
    """Convert Python values to what pydicom expects for a keyword's VR."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise ImageWriteError(
            f"tags key {keyword!r} is not a DICOM keyword; use standard names such as 'PatientName'"
        )
    vr = dictionary_VR(tag)
    if isinstance(value, _dt.datetime):
        return value.strftime("%Y%m%d%H%M%S.%f" if vr == "DT" else ("%H%M%S" if vr == "TM" else "%Y%m%d"))
    if isinstance(value, _dt.date):
        return value.strftime("%Y%m%d")
    if isinstance(value, _dt.time):
        return value.strftime("%H%M%S")
    if vr == "DS" and isinstance(value, (int, float, np.integer, np.floating)):
        return format_number_as_ds(float(value))
    if isinstance(value, np.generic):
        return value.item()
    return value


def _ds(values: Iterable[float]) -> list[str]:
    # DS is limited to 16 characters; format_number_as_ds keeps maximal precision
    return [format_number_as_ds(float(v) + 0.0) for v in values]


def write_dicom_series(
    image: sitk.Image,
    folder: str | os.PathLike,
    tags: Mapping[str, Any] | None = None,
    *,
    series_number: int = 1,
    instance_start: int = 1,
    shuffle_names: bool = False,
    rng: np.random.Generator | int | None = None,
) -> list[Path]:
    """Write a 3-D HU image as a CT Image Storage DICOM series (one file per slice).

    Slice ``k`` of the image (numpy ``array[k]``) becomes one file with

    .. math::

        \\mathrm{IPP}_k = \\mathbf{o} + k \\, s_k \\mathbf{d}_k, \\qquad
        \\mathrm{IOP} = (\\mathbf{d}_i, \\mathbf{d}_j), \\qquad
        \\mathrm{PixelSpacing} = (s_j, s_i)

    (:math:`\\mathbf{d}_a` = columns of the direction matrix; any direction
    is allowed, including left-handed ones). Pixels are stored as signed
    16-bit integers

    .. math::

        v = \\operatorname{round}(\\mathrm{HU}) + 1024, \\qquad
        \\mathrm{HU} = 1 \\cdot v - 1024

    i.e. RescaleSlope 1, RescaleIntercept -1024, so HU values are rounded to
    the nearest integer and must lie in [-33792, 31743] (values outside are
    clipped with a warning). Files carry a valid file meta header
    (Explicit VR Little Endian) and Modality ``CT``, ImageType
    ``ORIGINAL\\PRIMARY\\AXIAL``.

    Parameters
    ----------
    image : SimpleITK.Image
        3-D scalar image in HU (any real pixel type).
    folder : str or os.PathLike
        Output folder, created if missing. Existing files are kept (several
        series may share a folder) but a file with the same name is replaced.
    tags : mapping of str to value, optional
        Extra DICOM attributes by keyword, e.g. ``PatientName``,
        ``PatientID``, ``PatientBirthDate``, ``PatientSex``, ``StudyDate``,
        ``SeriesDate``, ``AcquisitionDate``, ``StudyTime``, ``Manufacturer``,
        ``ManufacturerModelName``, ``KVP``, ``InstitutionName``,
        ``ReferringPhysicianName``, ``AccessionNumber``, ``StudyDescription``,
        ``SeriesDescription``, ``SliceThickness`` (default: the slice
        spacing), ``StudyInstanceUID``, ``SeriesInstanceUID``,
        ``FrameOfReferenceUID`` (default: generated). ``datetime.date``
        values are converted to DICOM DA strings. Geometry, pixel and
        per-instance attributes (ImagePositionPatient, RescaleSlope,
        SOPInstanceUID, InstanceNumber, ...) cannot be overridden.
    series_number : int, default 1
        SeriesNumber; also part of the default file names.
    instance_start : int, default 1
        InstanceNumber of slice 0; slice ``k`` gets ``instance_start + k``.
    shuffle_names : bool, default False
        If True, files get random hexadecimal names without suffix and are
        written in random order (to test readers against messy exports);
        otherwise ``S{series:03d}_I{instance:05d}.dcm``.
    rng : numpy.random.Generator or int, optional
        Source of randomness for shuffled names and for the UIDs; when given,
        the output is reproducible (UIDs are derived from it), otherwise UIDs
        are random.

    Returns
    -------
    list of pathlib.Path
        The written files in slice order (``k = 0, 1, ...``).

    Raises
    ------
    ImageWriteError
        If the image is not 3-D scalar, contains NaN, a tag is unknown or
        protected, or a file cannot be written.

    References
    ----------
    NEMA PS3.3, A.3 "CT Image IOD", C.7.6.2 "Image Plane Module", C.8.2.1
    "CT Image Module"; PS3.10, 7.1 "DICOM File Meta Information".

    Examples
    --------
    >>> import tempfile, numpy as np, SimpleITK as sitk
    >>> im = sitk.GetImageFromArray(np.full((3, 4, 5), -1000, np.float32))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     files = write_dicom_series(im, d, {"StudyDate": "20240131"})
    ...     len(files), load_scan(d).image.GetSize()
    (3, (5, 4, 3))
    """
    if not isinstance(image, sitk.Image) or image.GetDimension() != 3:
        raise ImageWriteError(
            f"write_dicom_series needs a 3-D SimpleITK image, got {type(image).__name__}"
            f"{'' if not isinstance(image, sitk.Image) else f' of dimension {image.GetDimension()}'}"
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageWriteError(
            f"image has {image.GetNumberOfComponentsPerPixel()} components per pixel; "
            "write a scalar HU image"
        )
    if not isinstance(rng, np.random.Generator) and rng is not None:
        rng = np.random.default_rng(rng)
    tags = dict(tags or {})
    bad = sorted(set(tags) & _PROTECTED_TAGS)
    if bad:
        raise ImageWriteError(
            f"tags {bad} follow from the image geometry/pixels and cannot be set; remove them"
        )
    values = {k: _dicom_value(k, v) for k, v in tags.items()}

    arr = sitk.GetArrayViewFromImage(image).astype(np.float64)
    if np.isnan(arr).any():
        raise ImageWriteError("image contains NaN; replace NaN by an HU value (e.g. -1024) first")
    stored = np.rint(arr) + _HU_OFFSET
    lo, hi = np.iinfo(np.int16).min, np.iinfo(np.int16).max
    if stored.min() < lo or stored.max() > hi:
        warnings.warn(
            f"HU values outside [{lo - _HU_OFFSET}, {hi - _HU_OFFSET}] clipped when writing DICOM to {folder}",
            stacklevel=2,
        )
    stored = np.clip(stored, lo, hi).astype("<i2")

    origin, spacing, direction = _geometry(image)
    n_slices, rows, cols = stored.shape
    iop = _ds(np.concatenate([direction[:, 0], direction[:, 1]]))
    pixel_spacing = _ds((spacing[1], spacing[0]))
    normal = np.cross(direction[:, 0], direction[:, 1])

    study_uid = values.pop("StudyInstanceUID", None) or _uid(rng)
    series_uid = values.pop("SeriesInstanceUID", None) or _uid(rng)
    frame_uid = values.pop("FrameOfReferenceUID", None) or _uid(rng)
    slice_thickness = values.pop("SliceThickness", None)
    if slice_thickness is None:
        slice_thickness = _ds([spacing[2]])[0]
    values.setdefault("SeriesNumber", int(series_number))
    instance_uids = [_uid(rng) for _ in range(n_slices)]

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImageWriteError(f"cannot create DICOM folder {folder}: {exc}; check permissions") from exc
    if shuffle_names:
        if rng is None:
            rng = np.random.default_rng()
        names = ["".join(f"{b:02x}" for b in rng.bytes(8)) for _ in range(n_slices)]
        order = rng.permutation(n_slices)
    else:
        names = [f"S{int(series_number):03d}_I{instance_start + k:05d}.dcm" for k in range(n_slices)]
        order = np.arange(n_slices)

    paths = [folder / name for name in names]
    for k in (int(x) for x in order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = instance_uids[k]
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = FileDataset(str(paths[k]), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = instance_uids[k]
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = "CT"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = int(instance_start + k)
        position = origin + k * spacing[2] * direction[:, 2]
        ds.ImagePositionPatient = _ds(position)
        ds.ImageOrientationPatient = iop
        ds.SliceLocation = _ds([float(position @ normal)])[0]
        ds.PixelSpacing = pixel_spacing
        ds.SliceThickness = slice_thickness
        ds.PatientPosition = "HFS"
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = cols
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = str(-_HU_OFFSET)
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        try:
            ds.save_as(paths[k], enforce_file_format=True)
        except (OSError, ValueError, TypeError) as exc:
            raise ImageWriteError(f"cannot write DICOM file {paths[k]}: {exc}; check tags and disk") from exc
    logger.debug("wrote %d DICOM slices to %s", n_slices, folder)
    return paths


# --------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------

#: Relative tolerance on slice gaps: gaps deviating from the median gap by
#: more than this fraction make a series "uneven" and trigger resampling.
UNEVEN_GAP_TOLERANCE = 0.01
#: A gap larger than this multiple of the median gap is reported as missing
#: slices (the series is still resampled, with a ``missing_slices`` note).
MISSING_GAP_FACTOR = 2.5
#: Slices whose positions along the normal differ by less than this (mm) are
#: at the same position (duplicates).
DUPLICATE_POSITION_MM = 0.01
#: In-plane shifts of slice origins up to this fraction of the pixel spacing
#: are rounding noise; larger shifts are a tilted (sheared) stack.
TILT_TOLERANCE = 0.1


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _read_header(path: Path) -> pydicom.Dataset | None:
    """Read a DICOM file with its pixel data deferred; None if not DICOM.

    Files without the 128-byte preamble and ``DICM`` prefix (old raw
    exports) are re-read with ``force=True`` and kept only if they look like
    an image (Rows and ImagePositionPatient present), so that text or binary
    junk is never mistaken for a slice.
    """
    try:
        return pydicom.dcmread(path, defer_size="4 KB")
    except InvalidDicomError:
        pass
    with open(path, "rb") as fh:
        start = fh.read(2)
    # a preamble-less DICOM file starts with a group 0x0002 or 0x0008 element
    if start not in (b"\x02\x00", b"\x08\x00"):
        return None
    try:
        ds = pydicom.dcmread(path, defer_size="4 KB", force=True)
        if "Rows" in ds and "ImagePositionPatient" in ds and "PixelData" in ds:
            return ds
    except Exception:  # noqa: BLE001 - forced parsing of junk can fail in any way
        pass
    return None


def _floats(ds: pydicom.Dataset, keyword: str, n: int) -> np.ndarray | None:
    value = ds.get(keyword)
    if value is None:
        return None
    try:
        arr = np.asarray([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        return None
    return arr if arr.size == n and np.all(np.isfinite(arr)) else None


def _float_or_none(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def _str_or_none(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _parse_da(value: Any) -> _dt.date | None:
    """Parse a DICOM DA value (``YYYYMMDD``; ``YYYY.MM.DD`` of ACR-NEMA too)."""
    text = str(value).strip().replace(".", "").replace("-", "")
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return _dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def _acquisition_date(ds: pydicom.Dataset) -> tuple[_dt.date | None, list[str]]:
    """AcquisitionDate, else SeriesDate, else StudyDate; notes for bad values.

    An unparsable (non-empty) date is noted and the next attribute is tried;
    the acquisition, series and study of one CT are the same day in practice.
    """
    notes = []
    for keyword in ("AcquisitionDate", "SeriesDate", "StudyDate"):
        raw = ds.get(keyword)
        if raw is None or str(raw).strip() == "":
            continue
        parsed = _parse_da(raw)
        if parsed is not None:
            return parsed, notes
        notes.append(f"unparsable_date: {keyword} {str(raw)!r} is not YYYYMMDD")
    return None, notes


def _slice_problem(ds: pydicom.Dataset) -> str | None:
    """Why a DICOM dataset cannot be a slice of a CT volume (None if it can)."""
    if "PixelData" not in ds:
        return "no pixel data"
    modality = str(ds.get("Modality", "")).upper()
    if modality != "CT":
        return f"modality {modality or 'missing'}"
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if "LOCALIZER" in image_type:
        return "localizer"
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        return "multi-frame (enhanced) image"
    if _floats(ds, "ImageOrientationPatient", 6) is None:
        return "no ImageOrientationPatient"
    if _floats(ds, "ImagePositionPatient", 3) is None:
        return "no ImagePositionPatient"
    if _floats(ds, "PixelSpacing", 2) is None:
        return "no PixelSpacing"
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        return "colour image"
    return None


def _keep_majority(
    items: list[tuple[Path, pydicom.Dataset]], key, what: str
) -> tuple[list[tuple[Path, pydicom.Dataset]], str | None]:
    """Keep the slices sharing the most common ``key``; describe the rest."""
    counts = Counter(key(ds) for _, ds in items)
    if len(counts) <= 1:
        return items, None
    best = counts.most_common(1)[0][0]
    kept = [(p, ds) for p, ds in items if key(ds) == best]
    return kept, f"{len(items) - len(kept)} slice(s) with a different {what}"


def _iop_key(ds: pydicom.Dataset) -> tuple[float, ...]:
    # 1e-3 absorbs the rounding of direction cosines written by scanners
    return tuple(np.round(_floats(ds, "ImageOrientationPatient", 6), 3).tolist())


def _shape_key(ds: pydicom.Dataset) -> tuple:
    return (
        int(ds.Rows),
        int(ds.Columns),
        tuple(np.round(_floats(ds, "PixelSpacing", 2), 4).tolist()),
    )


def _slice_hu(path: Path, ds: pydicom.Dataset, notes: set[str]) -> np.ndarray:
    """HU of one slice, ``(rows, cols)`` float32, with its own rescale.

    .. math:: \\mathrm{HU} = \\mathrm{RescaleSlope} \\cdot v + \\mathrm{RescaleIntercept}

    Pixel data pydicom cannot decode (e.g. compressed without a plugin) is
    read with SimpleITK/GDCM instead, which applies the same rescale itself.
    """
    rows, cols = int(ds.Rows), int(ds.Columns)
    try:
        stored = np.asarray(ds.pixel_array, dtype=np.float64)
        slope = _float_or_none(ds.get("RescaleSlope"))
        intercept = _float_or_none(ds.get("RescaleIntercept"))
        hu = stored * (1.0 if slope is None else slope) + (0.0 if intercept is None else intercept)
        hu = hu.astype(np.float32)
    except Exception as exc:  # noqa: BLE001 - decoder errors have many types
        try:
            hu = sitk.GetArrayFromImage(sitk.ReadImage(str(path), sitk.sitkFloat32))
        except RuntimeError:
            raise ImageReadError(
                f"cannot decode pixel data of {path} ({_first_line(exc)}); "
                "convert the series to uncompressed DICOM or NIfTI"
            ) from exc
        notes.add("pixel_data_via_simpleitk: pydicom could not decode some slices")
        hu = hu.reshape(-1, hu.shape[-2], hu.shape[-1])[0]
    if hu.shape != (rows, cols):
        raise ImageReadError(
            f"pixel data of {path} has shape {hu.shape}, header says {(rows, cols)}; the file is corrupt"
        )
    return hu


def read_dicom_series(folder: str | os.PathLike) -> Scan:
    """Read a CT DICOM series folder into an LPS float32 HU image.

    Procedure (every step is recorded in ``info.notes`` when it changes
    anything):

    1. **Files.** The folder is searched *recursively* (exports often nest
       series in sub-folders). Every file is read with pydicom; files that
       are not DICOM or are unreadable are skipped with a
       :class:`UserWarning` naming them (also ``skipped_files`` note).
    2. **Series.** Files are grouped by SeriesInstanceUID (by SeriesNumber
       when the UID is missing). A file can be a
       slice only if it is a CT image (Modality ``CT``, pixel data,
       ImageOrientationPatient, ImagePositionPatient, PixelSpacing,
       single-frame) and not a localizer (ImageType contains ``LOCALIZER``).
       Within a series, slices whose orientation or matrix/pixel spacing
       differ from the majority are dropped (scouts stored in the same
       series). The series with most slices is chosen (ties: thinnest
       SliceThickness); the others are logged and noted by slice count only.
    3. **Order.** Slices are sorted by their position along the slice
       normal, never by file name or InstanceNumber:

       .. math::

           \\mathbf{n} = \\mathbf{r} \\times \\mathbf{c}, \\qquad
           s_k = \\mathrm{IPP}_k \\cdot \\mathbf{n}

       with row / column direction cosines :math:`\\mathbf{r}, \\mathbf{c}`
       from ImageOrientationPatient [1]_.
    4. **Duplicates.** Slices at the same position (within
       ``DUPLICATE_POSITION_MM``) with identical pixels are dropped
       (``dropped_duplicate_slices``); with different pixels a
       :class:`GeometryError` is raised (several acquisitions or phases
       mixed in one series).
    5. **Tilt.** If the slice origins do not lie on one line along
       :math:`\\mathbf{n}` (gantry tilt / sheared stack: in-plane offset
       :math:`(\\Delta_i, \\Delta_j) = ((\\mathrm{IPP}_k - \\mathrm{IPP}_0)
       \\cdot \\mathbf{r}, (\\mathrm{IPP}_k - \\mathrm{IPP}_0) \\cdot
       \\mathbf{c})` larger than 10 % of the pixel spacing), every slice is
       shifted in-plane by its own offset with bilinear interpolation (edge
       values replicated), which puts all voxels on the orthogonal grid over
       the first slice (note ``resampled_gantry_tilt``). The native
       geometry then has the non-orthogonal stack axis through the first and
       last slice origins as its third direction.
    6. **Spacing.** With gaps :math:`g_k = s_{k+1} - s_k` and median
       :math:`\\tilde g`, the series is regular when
       :math:`\\max_k |g_k - \\tilde g| \\le 0.01 \\, \\tilde g`; its slice
       spacing is then :math:`(s_{N-1} - s_0)/(N-1)`. Otherwise it is
       resampled by linear interpolation along :math:`\\mathbf{n}` onto a
       regular grid from :math:`s_0` to :math:`s_{N-1}` with
       :math:`M = \\operatorname{round}((s_{N-1}-s_0)/\\tilde g) + 1`
       slices (note ``resampled_uneven_slices``); a gap larger than
       2.5 :math:`\\tilde g` (missing slices) is resampled the same way and
       additionally noted as ``missing_slices`` because the values in the
       gap are interpolated, not measured.
    7. **Values.** Each slice is rescaled with its own RescaleSlope and
       RescaleIntercept [1]_ to HU, stored as float32.
    8. **Geometry.** Origin = ImagePositionPatient of the first sorted
       slice; direction columns :math:`(\\mathbf{r}, \\mathbf{c},
       \\mathbf{n})`; spacing ``(PixelSpacing[1], PixelSpacing[0], gap)``
       (PixelSpacing is row spacing then column spacing). This *native*
       geometry goes into ``info``; the returned image is then re-oriented
       with ``SimpleITK.DICOMOrient(image, "LPS")``.

    Parameters
    ----------
    folder : str or os.PathLike
        Folder holding the series (sub-folders included).

    Returns
    -------
    Scan
        Image (float32 HU, LPS-oriented) and PHI-free :class:`ScanInfo`
        (format ``'dicom'``; acquisition date from AcquisitionDate, else
        SeriesDate, else StudyDate).

    Raises
    ------
    ImageReadError
        If the folder is missing or empty, holds no CT image series, the
        series has a single slice, or pixel data cannot be decoded.
    GeometryError
        On invalid orientation or conflicting duplicate slices.

    References
    ----------
    .. [1] NEMA PS3.3, C.7.6.2 "Image Plane Module" and C.11.1 "Modality LUT
       Module". https://dicom.nema.org/medical/dicom/current/output/html/part03.html

    Examples
    --------
    >>> import tempfile, numpy as np, SimpleITK as sitk
    >>> im = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.float32))
    >>> im.SetSpacing((0.7, 0.7, 2.5))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = write_dicom_series(im, d, {"AcquisitionDate": "20230405"}, shuffle_names=True)
    ...     scan = read_dicom_series(d)
    >>> scan.info.spacing_zyx, scan.info.acquisition_date
    ((2.5, 0.7, 0.7), datetime.date(2023, 4, 5))
    """
    root = Path(folder)
    if not root.exists():
        raise ImageReadError(f"DICOM folder {root} does not exist; expected {_ACCEPTED}")
    if not root.is_dir():
        raise ImageReadError(f"{root} is not a folder; read_dicom_series expects a DICOM series folder")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if not files:
        raise ImageReadError(f"DICOM folder {root} is empty; expected the files of one CT series")

    notes: list[str] = []
    skipped: list[str] = []
    series: dict[str, list[tuple[Path, pydicom.Dataset]]] = {}
    rejected: Counter[str] = Counter()
    for path in files:
        try:
            ds = _read_header(path)
        except OSError as exc:
            skipped.append(f"{_rel(path, root)} (unreadable: {_first_line(exc)})")
            continue
        if ds is None:
            skipped.append(f"{_rel(path, root)} (not DICOM)")
            continue
        problem = _slice_problem(ds)
        if problem is not None:
            rejected[problem] += 1
            continue
        # anonymisers sometimes strip the UID; SeriesNumber still separates series
        key = str(ds.get("SeriesInstanceUID", "") or "") or f"number:{ds.get('SeriesNumber', '')}"
        series.setdefault(key, []).append((path, ds))

    if skipped:
        shown = ", ".join(skipped[:10]) + (f" and {len(skipped) - 10} more" if len(skipped) > 10 else "")
        warnings.warn(f"skipped {len(skipped)} file(s) in {root}: {shown}", stacklevel=2)
        notes.append(f"skipped_files: {'; '.join(skipped)}")
    if rejected:
        detail = ", ".join(f"{n} {why}" for why, n in sorted(rejected.items()))
        logger.info("ignored DICOM files in %s that are not CT slices: %s", root, detail)
        notes.append(f"ignored_slices: {detail}")
    if not series:
        if len(skipped) == len(files):
            raise ImageReadError(
                f"no DICOM files in {root} ({len(files)} file(s), none DICOM); expected {_ACCEPTED}"
            )
        raise ImageReadError(
            f"no CT image series in {root}: DICOM files found but none usable "
            f"({', '.join(f'{n} {why}' for why, n in sorted(rejected.items()))}); "
            "give the folder of an axial CT series"
        )

    candidates = []
    for items in series.values():
        items, why_iop = _keep_majority(items, _iop_key, "orientation")
        items, why_shape = _keep_majority(items, _shape_key, "matrix size or pixel spacing")
        dropped = [w for w in (why_iop, why_shape) if w]
        thickness = _float_or_none(items[0][1].get("SliceThickness"))
        candidates.append((items, dropped, thickness))
    candidates.sort(
        key=lambda c: (-len(c[0]), c[2] if c[2] is not None else np.inf, str(c[0][0][0]))
    )
    items, dropped, _ = candidates[0]
    for why in dropped:
        notes.append(f"ignored_slices: {why} than the rest of the series")
    if len(candidates) > 1:
        others = ", ".join(str(len(c[0])) for c in candidates[1:])
        logger.info(
            "%s holds %d CT series; chose the one with %d slices, ignored others with %s slices",
            root, len(candidates), len(items), others,
        )
        notes.append(
            f"ignored_series: chose the series with {len(items)} slices; "
            f"ignored {len(candidates) - 1} with {others} slices"
        )
    if len(items) < 2:
        raise ImageReadError(
            f"the CT series in {root} has a single slice; a 3-D volume needs at least two"
        )

    # --- orientation -------------------------------------------------------
    iop = _floats(items[0][1], "ImageOrientationPatient", 6)
    row, col = iop[:3], iop[3:]
    if (
        abs(np.linalg.norm(row) - 1) > 1e-3
        or abs(np.linalg.norm(col) - 1) > 1e-3
        or abs(row @ col) > 1e-3
    ):
        raise GeometryError(
            f"ImageOrientationPatient {iop.tolist()} in {root} is not two orthonormal "
            "direction cosines; the series header is invalid"
        )
    # re-orthonormalise: scanners round cosines to a few decimals
    row = row / np.linalg.norm(row)
    col = col - (col @ row) * row
    col = col / np.linalg.norm(col)
    normal = np.cross(row, col)

    positions = np.array([_floats(ds, "ImagePositionPatient", 3) for _, ds in items])
    s = positions @ normal
    instance = np.array([int(_float_or_none(ds.get("InstanceNumber")) or 0) for _, ds in items])
    order = np.lexsort((instance, s))  # InstanceNumber only breaks exact ties
    items = [items[i] for i in order]
    positions, s = positions[order], s[order]

    pix_notes: set[str] = set()
    hu = [_slice_hu(p, ds, pix_notes) for p, ds in items]

    keep = [0]
    n_dup = 0
    for k in range(1, len(items)):
        if s[k] - s[keep[-1]] < DUPLICATE_POSITION_MM:
            if not np.array_equal(hu[k], hu[keep[-1]]):
                raise GeometryError(
                    f"two different slices at the same position {s[k]:.3f} mm in {root} "
                    f"({_rel(items[k][0], root)}, {_rel(items[keep[-1]][0], root)}); the series mixes "
                    "acquisitions or phases -- split it into separate folders"
                )
            n_dup += 1
            continue
        keep.append(k)
    if n_dup:
        notes.append(f"dropped_duplicate_slices: {n_dup} exact duplicate slice(s) removed")
        items = [items[k] for k in keep]
        positions, s = positions[keep], s[keep]
        hu = [hu[k] for k in keep]
    if len(items) < 2:
        raise ImageReadError(
            f"the CT series in {root} has a single distinct slice position; a 3-D volume needs two"
        )

    pixel_spacing = _floats(items[0][1], "PixelSpacing", 2)  # (row spacing, column spacing)
    volume = np.stack(hu)
    del hu
    offsets = positions - positions[0]
    # in-plane offset of each slice origin, mm along the row (i) and column (j) directions
    shift_i, shift_j = offsets @ row, offsets @ col
    max_shift = float(np.max(np.hypot(shift_i, shift_j)))
    tilted = max_shift > TILT_TOLERANCE * float(pixel_spacing.min())
    if tilted:
        # gantry tilt: move every slice in-plane so that its voxels lie on the
        # orthogonal prism over slice 0 (bilinear, edge values replicated)
        for k in range(volume.shape[0]):
            if shift_i[k] or shift_j[k]:
                volume[k] = ndimage.shift(
                    volume[k], (shift_j[k] / pixel_spacing[0], shift_i[k] / pixel_spacing[1]),
                    order=1, mode="nearest",
                )
        msg = (
            f"resampled_gantry_tilt: slice origins shift in-plane by up to {max_shift:.2f} mm "
            f"(tilt {np.degrees(np.arctan2(max_shift, s[-1] - s[0])):.1f} deg); slices "
            "re-sampled onto an orthogonal grid by bilinear interpolation"
        )
        notes.append(msg)
        logger.warning("%s: %s", root, msg)
        stack_axis = offsets[-1] / np.linalg.norm(offsets[-1])
    else:
        stack_axis = normal

    # --- spacing ---------------------------------------------------------------
    gaps = np.diff(s)
    median_gap = float(np.median(gaps))
    span = float(s[-1] - s[0])
    # native slice k lies at t_k along the stack axis (= s_k - s_0 unless tilted)
    t = (s - s[0]) / float(stack_axis @ normal)
    native_offsets = None
    native_gap = float(t[-1]) / (len(s) - 1)
    if np.max(np.abs(gaps - median_gap)) <= UNEVEN_GAP_TOLERANCE * median_gap:
        gap = span / (len(s) - 1)
    else:
        n_new = int(round(span / median_gap)) + 1
        gap = span / (n_new - 1)
        target = s[0] + gap * np.arange(n_new)
        upper = np.clip(np.searchsorted(s, target, side="right"), 1, len(s) - 1)
        w = ((target - s[upper - 1]) / (s[upper] - s[upper - 1]))[:, None, None].astype(np.float32)
        volume = (1 - w) * volume[upper - 1] + w * volume[upper]
        msg = (
            f"resampled_uneven_slices: gaps {gaps.min():.3f}-{gaps.max():.3f} mm (median "
            f"{median_gap:.3f}); {len(s)} slices linearly interpolated onto {n_new} at {gap:.4f} mm"
        )
        notes.append(msg)
        logger.warning("%s: %s", root, msg)
        big = np.flatnonzero(gaps > MISSING_GAP_FACTOR * median_gap)
        if big.size:
            worst = big[np.argmax(gaps[big])]
            msg = (
                f"missing_slices: {big.size} gap(s) over {MISSING_GAP_FACTOR} x the median gap, "
                f"largest {gaps[worst]:.2f} mm between slices {worst} and {worst + 1}; "
                "values there are interpolated"
            )
            notes.append(msg)
            logger.warning("%s: %s", root, msg)
        native_offsets = tuple(float(v) for v in t)
        native_gap = float(np.median(np.diff(t)))
    notes.extend(sorted(pix_notes))

    direction = np.column_stack([row, col, normal])
    image = sitk.GetImageFromArray(volume.astype(np.float32, copy=False))
    image.SetOrigin(tuple(float(v) for v in positions[0]))
    image.SetSpacing((float(pixel_spacing[1]), float(pixel_spacing[0]), float(gap)))
    image.SetDirection(tuple(float(v) for v in direction.ravel()))
    native_direction = np.column_stack([row, col, stack_axis])

    header = items[0][1]
    date, date_notes = _acquisition_date(header)
    notes.extend(date_notes)
    native_size = (int(header.Columns), int(header.Rows), len(s))
    return _make_scan(
        image,
        source=root,
        fmt="dicom",
        acquisition_date=date,
        manufacturer=_str_or_none(header.get("Manufacturer")),
        model=_str_or_none(header.get("ManufacturerModelName")),
        kvp=_float_or_none(header.get("KVP")),
        slice_thickness_mm=_float_or_none(header.get("SliceThickness")),
        native_origin=tuple(float(v) for v in positions[0]),
        native_spacing=(float(pixel_spacing[1]), float(pixel_spacing[0]), float(native_gap)),
        native_direction=tuple(float(v) for v in native_direction.ravel()),
        native_size=native_size,
        notes=notes,
        native_slice_offsets_mm=native_offsets,
    )


def _make_scan(image: sitk.Image, *, source: Path, fmt: str, notes: Sequence[str], **fields) -> Scan:
    """Re-orient to LPS and assemble the :class:`Scan`."""
    try:
        oriented = sitk.DICOMOrient(image, "LPS")
    except RuntimeError as exc:
        raise GeometryError(
            f"cannot re-orient {source} to LPS ({_first_line(exc)}); its direction "
            f"{np.round(image.GetDirection(), 4).tolist()} is not a valid rotation"
        ) from exc
    spacing = oriented.GetSpacing()
    size = oriented.GetSize()
    info = ScanInfo(
        source=str(source),
        format=fmt,
        spacing_zyx=(float(spacing[2]), float(spacing[1]), float(spacing[0])),
        size_zyx=(int(size[2]), int(size[1]), int(size[0])),
        notes=tuple(notes),
        **fields,
    )
    return Scan(image=oriented, info=info)


def read_volume(path: str | os.PathLike) -> Scan:
    """Read a NIfTI / MetaImage / NRRD volume into an LPS float32 HU image.

    The file is read with ``SimpleITK.ReadImage`` (which converts the RAS
    frame of NIfTI to LPS, and applies NIfTI ``scl_slope`` / ``scl_inter``),
    cast to float32 with origin, spacing and direction unchanged, recorded
    as the native geometry, then re-oriented with
    ``SimpleITK.DICOMOrient(image, "LPS")`` (a permutation/flip of the voxel
    grid, no resampling). A 4-D file with a single volume is accepted.

    The file's values are assumed to be HU. If the 1st percentile is above
    -500 HU (a chest CT always holds air at about -1000 HU) the note
    ``values_may_not_be_hu`` is added.

    Parameters
    ----------
    path : str or os.PathLike
        ``.nii``, ``.nii.gz``, ``.mha``, ``.mhd``, ``.nrrd`` or ``.nhdr``.

    Returns
    -------
    Scan
        Image and :class:`ScanInfo` (``acquisition_date``, ``manufacturer``,
        ``model``, ``kvp``, ``slice_thickness_mm`` are ``None``: volume files
        do not carry them).

    Raises
    ------
    ImageReadError
        If the file is missing, has an unsupported suffix, cannot be parsed,
        or is not a scalar 3-D image.

    Examples
    --------
    >>> import tempfile, numpy as np, SimpleITK as sitk
    >>> im = sitk.GetImageFromArray(np.full((2, 3, 4), -1000, np.int16))
    >>> im.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, 1))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     scan = read_volume(write_volume(im, Path(d) / "ct.nrrd"))
    >>> scan.image.GetDirection()[0], scan.info.native_direction[0], scan.info.format
    (1.0, -1.0, 'nrrd')
    """
    path = Path(path)
    suffix = _volume_suffix(path)
    if not path.exists():
        raise ImageReadError(f"image file {path} does not exist; expected {_ACCEPTED}")
    if suffix is None or not path.is_file():
        raise ImageReadError(f"cannot read {path}: unsupported file type; expected {_ACCEPTED}")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ImageReadError(
            f"cannot read {path}: {_first_line(exc)}; the file is damaged or not a {VOLUME_SUFFIXES[suffix]} image"
        ) from exc
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    if image.GetDimension() != 3:
        raise ImageReadError(
            f"{path} is a {image.GetDimension()}-D image of size {image.GetSize()}; expected one 3-D CT volume"
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageReadError(
            f"{path} has {image.GetNumberOfComponentsPerPixel()} components per voxel; expected a scalar HU volume"
        )
    if min(image.GetSize()) < 2:
        raise ImageReadError(f"{path} has size {image.GetSize()}; a 3-D CT volume needs at least 2 voxels per axis")
    try:
        image = sitk.Cast(image, sitk.sitkFloat32)
    except RuntimeError as exc:
        raise ImageReadError(
            f"{path} has pixel type {image.GetPixelIDTypeAsString()}; expected real-valued HU"
        ) from exc
    notes = []
    values = sitk.GetArrayViewFromImage(image)
    p1 = float(np.percentile(values[:: max(1, values.shape[0] // 16)], 1))
    if p1 > -500:
        notes.append(f"values_may_not_be_hu: 1st percentile is {p1:.0f}, no air near -1000 HU")
    return _make_scan(
        image,
        source=path,
        fmt=VOLUME_SUFFIXES[suffix],
        acquisition_date=None,
        manufacturer=None,
        model=None,
        kvp=None,
        slice_thickness_mm=None,
        native_origin=tuple(float(v) for v in image.GetOrigin()),
        native_spacing=tuple(float(v) for v in image.GetSpacing()),
        native_direction=tuple(float(v) for v in image.GetDirection()),
        native_size=tuple(int(v) for v in image.GetSize()),
        notes=notes,
    )


def load_scan(path: str | os.PathLike) -> Scan:
    """Load a CT scan from a DICOM series folder or a volume file.

    A folder is read by :func:`read_dicom_series`; a file ending in
    ``.nii``, ``.nii.gz``, ``.mha``, ``.mhd``, ``.nrrd`` or ``.nhdr`` by
    :func:`read_volume`. The result is always a float32 HU image
    re-oriented to LPS, with the native geometry in ``info``.

    Parameters
    ----------
    path : str or os.PathLike
        Folder or file.

    Returns
    -------
    Scan

    Raises
    ------
    ImageReadError
        If the path is missing, is a single DICOM file (a series is a
        folder), or has an unsupported suffix; and see the readers.
    GeometryError
        See :func:`read_dicom_series`.

    Examples
    --------
    >>> import tempfile, numpy as np, SimpleITK as sitk
    >>> im = sitk.GetImageFromArray(np.full((2, 3, 4), -1000, np.float32))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     scan = load_scan(write_volume(im, Path(d) / "ct.mha"))
    >>> scan.info.size_zyx, scan.info.format
    ((2, 3, 4), 'mha')
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"image path {path} does not exist; expected {_ACCEPTED}")
    if path.is_dir():
        return read_dicom_series(path)
    if _volume_suffix(path) is not None:
        return read_volume(path)
    if path.suffix.lower() in (".dcm", ".dicom", ".ima") or _read_header(path) is not None:
        raise ImageReadError(
            f"{path} is a single DICOM file, not a series; give the folder that holds all its slices"
        )
    raise ImageReadError(f"cannot read {path}: unsupported file type {path.suffix!r}; expected {_ACCEPTED}")
