"""Registration of a follow-up CT (T2, moving) onto a baseline CT (T1, fixed).

Staged so that a full-size pair registers in seconds on a laptop CPU:

1. **global** (:func:`register_pair`): both images block-averaged to about
   :data:`GLOBAL_SPACING_MM` mm, the moving image pre-translated by the
   difference of the lung masks' centres of mass, then elastix rigid ->
   affine -> coarse B-spline with sampling restricted to the dilated T1 lung
   mask (parameter maps ``params/global_*.txt``);
2. **local** (:meth:`Registration.refine`): an affine registration at full
   resolution on a VOI of :data:`LOCAL_HALF_SIZE_MM` mm around one nodule,
   initialised by the global transform (``params/local_affine.txt``).

elastix's transform maps *fixed* points to *moving* points [1]_, so a T1
nodule centre is carried into T2 by evaluating the transform at that point;
no image is resampled to map a point.

All points are LPS world coordinates ``(x, y, z)`` in mm.

References
----------
.. [1] S. Klein, M. Staring, K. Murphy, M. A. Viergever, J. P. W. Pluim,
   "elastix: a toolbox for intensity-based medical image registration",
   IEEE Trans. Med. Imaging 29(1):196-205, 2010.
.. [2] K. Murphy et al., "Evaluation of registration methods on thoracic CT:
   the EMPIRE10 challenge", IEEE Trans. Med. Imaging 30(11):1901-1920, 2011.
.. [3] R. Castillo et al., "A framework for evaluation of deformable image
   registration spatial accuracy using large landmark point sets" (DIR-Lab),
   Phys. Med. Biol. 54(7):1849-1870, 2009.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import RegistrationError

__all__ = [
    "GLOBAL_SPACING_MM",
    "LOCAL_HALF_SIZE_MM",
    "LOW_OVERLAP_DICE",
    "LocalRefinement",
    "Registration",
    "load_parameter_map",
    "register_pair",
    "sitk_to_itk",
]

#: Spacing (mm) of the grid the global stage runs on (block averaging by the
#: nearest integer factor). Lung motion between visits is smooth on a scale
#: of centimetres and the global stage only has to bring each nodule within
#: the capture range of the local stage and of the re-identification.
GLOBAL_SPACING_MM = 4.0

#: Half-size (mm) of the cubic VOI of the local refinement: large enough to
#: hold several vessels and the pleura around a 30 mm nodule.
LOCAL_HALF_SIZE_MM = 25.0

#: Dice of the T1 lung mask and the warped T2 lung mask below which the
#: registration is flagged ``registration_low_overlap``. Successful lung
#: registrations reach Dice > 0.95 [2]_; 0.85 leaves room for the coarse grid.
LOW_OVERLAP_DICE = 0.85

#: Margin (mm) by which the lung mask is dilated to build the sampling mask:
#: the lung boundary (pleura, diaphragm) carries most of the alignment signal.
_MASK_MARGIN_MM = 8.0

#: Margin (mm) around the lungs' bounding box kept for the global stage; it
#: covers the repositioning left after the centre-of-mass pre-alignment.
_CROP_MARGIN_MM = 30.0

#: Parameter-map files of the stages, in ``nodulegrowth/params``.
GLOBAL_STAGES = ("global_rigid.txt", "global_affine.txt", "global_bspline.txt")
LOCAL_STAGE = "local_affine.txt"


def _itk():
    # itk's lazy loading costs seconds; only pay for it when registering
    import itk

    return itk


def load_parameter_map(name: str) -> "object":
    """Load one elastix parameter map shipped in ``nodulegrowth/params``.

    Parameters
    ----------
    name : str
        File name, e.g. ``"global_rigid.txt"``.

    Returns
    -------
    itk.ParameterObject
        A parameter object holding that one map.

    Raises
    ------
    RegistrationError
        If the file does not exist in the package.

    Examples
    --------
    >>> po = load_parameter_map("global_rigid.txt")      # doctest: +SKIP
    >>> po.GetParameter(0, "Transform")                  # doctest: +SKIP
    ('EulerTransform',)
    """
    itk = _itk()
    path = resources.files("nodulegrowth") / "params" / name
    if not path.is_file():
        raise RegistrationError(
            f"parameter map {name!r} not found in nodulegrowth/params; reinstall the package"
        )
    po = itk.ParameterObject.New()
    po.AddParameterFile(str(path))
    return po


def sitk_to_itk(image: sitk.Image, pixel=np.float32):
    """Convert a SimpleITK image to an itk image with identical geometry.

    The voxel array is copied and origin, spacing and direction are set
    explicitly, so the world position of every voxel is unchanged:

    .. math::

        \\mathbf{x} = \\mathbf{o} + D\\,\\mathrm{diag}(\\mathbf{s})\\,(i, j, k)^T

    Parameters
    ----------
    image : SimpleITK.Image
        3-D image.
    pixel : numpy dtype
        Pixel type of the itk image (``float32`` for CT, ``uint8`` for masks).

    Returns
    -------
    itk.Image

    Examples
    --------
    >>> img = sitk.Image(4, 5, 6, sitk.sitkFloat32); img.SetOrigin((1., 2., 3.))
    >>> tuple(sitk_to_itk(img).GetOrigin())               # doctest: +SKIP
    (1.0, 2.0, 3.0)
    """
    itk = _itk()
    arr = np.ascontiguousarray(sitk.GetArrayViewFromImage(image), dtype=pixel)
    out = itk.image_from_array(arr)
    out.SetOrigin([float(v) for v in image.GetOrigin()])
    out.SetSpacing([float(v) for v in image.GetSpacing()])
    out.SetDirection(itk.matrix_from_array(np.array(image.GetDirection(), float).reshape(3, 3)))
    return out


def _shrink(image: sitk.Image, target_mm: float) -> sitk.Image:
    factors = [max(1, int(round(target_mm / s))) for s in image.GetSpacing()]
    img = sitk.Cast(image, sitk.sitkFloat32)
    return sitk.BinShrink(img, factors) if any(f > 1 for f in factors) else img


def _shrink_mask(mask: sitk.Image, reference: sitk.Image) -> sitk.Image:
    m = sitk.Cast(mask, sitk.sitkFloat32)
    m = sitk.Resample(m, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.Cast(m > 0.5, sitk.sitkUInt8)


def _crop_to_mask(image: sitk.Image, mask: sitk.Image, margin_mm: float) -> sitk.Image:
    """Crop ``image`` to the bounding box of ``mask`` (any grid) plus a margin.

    The registration only samples in the lung; the body outside it would
    only cost time in the image pyramids and in the warps of the QC.
    """
    arr = sitk.GetArrayViewFromImage(mask)
    nz = [np.flatnonzero(arr.any(axis=ax)) for ax in ((1, 2), (0, 2), (0, 1))]
    if any(v.size == 0 for v in nz):
        raise RegistrationError("lung mask is empty; cannot crop the registration to the lungs")
    lo_kji = [v.min() for v in nz]
    hi_kji = [v.max() for v in nz]
    corners = [mask.TransformIndexToPhysicalPoint([int(c[2]), int(c[1]), int(c[0])])
               for c in (lo_kji, hi_kji)]
    idx = np.array([image.TransformPhysicalPointToContinuousIndex(c) for c in corners])
    margin = margin_mm / np.array(image.GetSpacing())
    lo = np.maximum(np.floor(idx.min(0) - margin), 0).astype(int)
    hi = np.minimum(np.ceil(idx.max(0) + margin) + 1, image.GetSize()).astype(int)
    return sitk.RegionOfInterest(image, [int(v) for v in hi - lo], [int(v) for v in lo])


def _center_of_mass(mask: sitk.Image) -> np.ndarray:
    arr = sitk.GetArrayViewFromImage(mask)
    idx = np.argwhere(arr > 0)
    if idx.size == 0:
        raise RegistrationError("lung mask is empty; cannot initialise the registration (check lung_mask)")
    kji = idx.mean(axis=0)
    return np.array(mask.TransformContinuousIndexToPhysicalPoint([float(v) for v in kji[::-1]]))


def _shift_origin(image: sitk.Image, shift_xyz) -> sitk.Image:
    out = sitk.Image(image)
    out.SetOrigin(tuple(np.asarray(image.GetOrigin()) - np.asarray(shift_xyz)))
    return out


def _dilate(mask: sitk.Image, margin_mm: float) -> sitk.Image:
    radius = [max(1, int(round(margin_mm / s))) for s in mask.GetSpacing()]
    return sitk.BinaryDilate(mask, radius, sitk.sitkBall)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient :math:`2|A\\cap B| / (|A| + |B|)` of two boolean arrays."""
    s = a.sum() + b.sum()
    return float(2.0 * np.logical_and(a, b).sum() / s) if s else 0.0


@dataclass(frozen=True)
class LocalRefinement:
    """Result of a local (per-nodule) refinement of the registration.

    Attributes
    ----------
    point_xyz : ndarray, shape (3,)
        Refined T2 world point, LPS mm.
    global_xyz : ndarray, shape (3,)
        T2 world point given by the global transform alone, LPS mm.
    residual_mm : float
        :math:`\\lVert \\mathbf{p}_{local} - \\mathbf{p}_{global} \\rVert_2`,
        the correction the local stage made (mm).
    metric : float or None
        Normalised cross-correlation of the T1 VOI and the registered T2 VOI
        (1 is perfect); None when the local stage did not run.
    flags : tuple of str
        ``local_registration_failed`` when the VOI registration did not run
        (the global point is then returned).
    """

    point_xyz: np.ndarray
    global_xyz: np.ndarray
    residual_mm: float
    metric: float | None
    flags: tuple = ()


@dataclass
class Registration:
    """A T1 (fixed) -> T2 (moving) registration.

    The mapping of a fixed world point :math:`\\mathbf{p}` is

    .. math::

        \\phi(\\mathbf{p}) = T_{elx}(\\mathbf{p}) + \\mathbf{d}

    where :math:`T_{elx}` is elastix's rigid∘affine∘B-spline transform and
    :math:`\\mathbf{d}` the centre-of-mass pre-translation of the moving image.

    Attributes
    ----------
    transform : itk.Transform
        elastix's combined transform (fixed world -> pre-shifted moving world).
    shift_xyz : ndarray, shape (3,)
        Pre-translation :math:`\\mathbf{d}` (mm, LPS).
    qc : dict
        ``lung_dice`` (Dice of the T1 lung mask and the warped T2 lung mask on
        a grid twice as coarse as the global one), ``lung_dice_before`` (same
        with the centre-of-mass shift only), ``lung_ncc`` (normalised
        cross-correlation of T1 and warped T2 inside the T1 lung mask, on the
        same grid), ``grid_spacing_mm`` (x, y, z spacing of the global grid),
        ``initial_shift_mm`` (:math:`\\mathbf{d}`), ``seconds`` (wall time of
        :func:`register_pair`) and ``seconds_elastix`` (of elastix alone).
    flags : tuple of str
        ``registration_low_overlap`` when ``lung_dice`` < :data:`LOW_OVERLAP_DICE`.
    parameter_object : itk.ParameterObject
        The transform parameter maps found by elastix.
    number_of_threads : int or None
        Thread cap used, reused by :meth:`refine`.
    workdir : pathlib.Path or None
        Where the parameter maps and transforms were written, if anywhere.
    """

    transform: object
    shift_xyz: np.ndarray
    qc: dict = field(default_factory=dict)
    flags: tuple = ()
    parameter_object: object = None
    number_of_threads: int | None = None
    workdir: Path | None = None

    def map_points(self, points_xyz) -> np.ndarray:
        """Map T1 world points to T2 world points with the global transform.

        Parameters
        ----------
        points_xyz : array_like, shape (N, 3) or (3,)
            Fixed (T1) points, LPS mm.

        Returns
        -------
        ndarray, shape (N, 3) (or (3,) for a single point)
            Moving (T2) points, LPS mm.

        Raises
        ------
        RegistrationError
            If ``points_xyz`` is not (N, 3) finite numbers.

        Examples
        --------
        >>> reg.map_points([[10.0, -20.0, 30.0]])          # doctest: +SKIP
        array([[ 12.1, -19.7,  28.4]])
        """
        pts = np.asarray(points_xyz, dtype=float)
        single = pts.ndim == 1
        pts = np.atleast_2d(pts)
        if pts.shape[1] != 3 or not np.all(np.isfinite(pts)):
            raise RegistrationError(
                f"points must be an (N, 3) array of finite LPS mm, got shape {pts.shape}; "
                "pass x, y, z per row"
            )
        out = np.array([self.transform.TransformPoint([float(v) for v in p]) for p in pts])
        out = out + self.shift_xyz
        return out[0] if single else out

    def refine(self, point_xyz, fixed: sitk.Image, moving: sitk.Image, *,
               half_size_mm: float = LOCAL_HALF_SIZE_MM) -> LocalRefinement:
        """Refine the mapping of one T1 point by a local affine registration.

        A cubic VOI of half-size ``half_size_mm`` around :math:`\\mathbf{p}`
        is cut from T1; the T2 VOI is cut around
        :math:`\\mathbf{q} = \\phi(\\mathbf{p})` (with a margin) and shifted by
        :math:`\\mathbf{q} - \\mathbf{p}` so it starts aligned; an elastix
        affine transform :math:`R` centred at :math:`\\mathbf{p}` is then
        optimised at full resolution, and

        .. math::

            \\phi_{loc}(\\mathbf{p}) = R(\\mathbf{p}) + (\\mathbf{q} - \\mathbf{p})

        Parameters
        ----------
        point_xyz : array_like, shape (3,)
            T1 point (LPS mm), e.g. a nodule centroid.
        fixed, moving : SimpleITK.Image
            Full-resolution T1 and T2 images (HU).
        half_size_mm : float
            Half-size of the T1 VOI (mm).

        Returns
        -------
        LocalRefinement

        Raises
        ------
        RegistrationError
            If ``point_xyz`` is not 3 finite numbers or ``half_size_mm`` <= 0.

        Examples
        --------
        >>> ref = reg.refine((10.0, -20.0, 30.0), t1, t2)    # doctest: +SKIP
        >>> ref.residual_mm < 5                              # doctest: +SKIP
        True
        """
        p = np.asarray(point_xyz, dtype=float).reshape(-1)
        if p.shape != (3,) or not np.all(np.isfinite(p)):
            raise RegistrationError(f"point_xyz must be 3 finite LPS mm values, got {point_xyz!r}")
        if not half_size_mm > 0:
            raise RegistrationError(f"half_size_mm must be > 0, got {half_size_mm!r}")
        q = self.map_points(p)
        d = q - p
        f_voi = _crop(fixed, p, half_size_mm)
        m_voi = _crop(moving, q, half_size_mm + 10.0)
        if f_voi is None or m_voi is None or min(f_voi.GetSize()) < 8 or min(m_voi.GetSize()) < 8:
            return LocalRefinement(q, q, 0.0, None, ("local_registration_failed",))
        m_voi = _shift_origin(m_voi, d)
        itk = _itk()
        po = load_parameter_map(LOCAL_STAGE)
        po.SetParameter(0, "CenterOfRotationPoint", [f"{v:.6f}" for v in p])
        if self.number_of_threads:
            po.SetParameter(0, "MaximumNumberOfThreads", str(int(self.number_of_threads)))
        try:
            method = _run_elastix(itk, f_voi, m_voi, po, None, self.number_of_threads, None)
        except RegistrationError:
            return LocalRefinement(q, q, 0.0, None, ("local_registration_failed",))
        tr = method.GetCombinationTransform()
        r = np.array(tr.TransformPoint([float(v) for v in p]))
        out = r + d
        warped = _warp(itk, method.GetTransformParameterObject(), m_voi, 1, -1024.0)
        ncc = _ncc(sitk.GetArrayViewFromImage(f_voi), warped)
        return LocalRefinement(out, q, float(np.linalg.norm(out - q)), ncc, ())


def _write_parameter_map(pmap, path: Path) -> None:
    """Write one elastix parameter map in elastix's text format."""
    lines = []
    for key in sorted(pmap.keys()):
        vals = []
        for v in pmap[key]:
            try:
                float(v)
                vals.append(v)
            except ValueError:
                vals.append(f'"{v}"')
        lines.append(f"({key} {' '.join(vals)})")
    Path(path).write_text("\n".join(lines) + "\n")


def _crop(image: sitk.Image, center_xyz, half_mm: float) -> sitk.Image | None:
    """:func:`nodulegrowth.io.crop`, or ``None`` when the point is outside or the crop is degenerate."""
    from .errors import GeometryError
    from .io import crop

    try:
        roi = crop(image, center_xyz, half_mm)
    except GeometryError:
        return None
    return roi if min(roi.GetSize()) >= 2 else None


def _run_elastix(itk, fixed, moving, params, fixed_mask, threads, workdir):
    fixed_i = sitk_to_itk(fixed)
    moving_i = sitk_to_itk(moving)
    method = itk.ElastixRegistrationMethod.New(fixed_i, moving_i)
    method.SetParameterObject(params)
    if fixed_mask is not None:
        method.SetFixedMask(sitk_to_itk(fixed_mask, np.uint8))
    if threads:
        method.SetNumberOfThreads(int(threads))
    method.SetLogToConsole(False)
    if workdir is not None:
        method.SetOutputDirectory(str(workdir))
        method.SetLogToFile(True)
    try:
        method.Update()
    except RuntimeError as exc:
        msg = str(exc).strip().splitlines()
        detail = next((ln for ln in msg if "rror" in ln), msg[-1] if msg else "unknown error")
        raise RegistrationError(
            f"elastix failed: {detail.strip()[:200]}; check that both images are chest CTs "
            "of the same patient and that the lung masks are not empty"
        ) from None
    return method


def register_pair(fixed: sitk.Image, moving: sitk.Image, *, fixed_mask: sitk.Image | None = None,
                  moving_mask: sitk.Image | None = None, workdir: str | os.PathLike | None = None,
                  number_of_threads: int | None = None,
                  stages: tuple = GLOBAL_STAGES) -> Registration:
    """Register T2 (moving) onto T1 (fixed): the global stage.

    Steps (see the module docstring): block averaging to
    :data:`GLOBAL_SPACING_MM`, pre-translation by the lung centres of mass

    .. math::

        \\mathbf{d} = \\bar{\\mathbf{x}}_{T2\\,lung} - \\bar{\\mathbf{x}}_{T1\\,lung}

    then elastix rigid -> affine -> B-spline with normalised correlation
    sampled in the T1 lung mask dilated by 8 mm. The quality check is the
    Dice of the T1 lung mask with the T2 lung mask warped into T1
    (on the global grid),

    .. math::

        \\mathrm{Dice} = \\frac{2 |M_1 \\cap (M_2 \\circ \\phi)|}{|M_1| + |M_2 \\circ \\phi|}

    Parameters
    ----------
    fixed, moving : SimpleITK.Image
        T1 and T2 CT volumes in HU (any 3-D geometry).
    fixed_mask, moving_mask : SimpleITK.Image, optional
        ``uint8`` lung masks with the geometry of their image; computed with
        :func:`nodulegrowth.lung.lung_mask` when not given.
    workdir : path, optional
        When given, the parameter maps used, elastix's log and the resulting
        transform parameter files are written there.
    number_of_threads : int, optional
        Cap on elastix's threads (default: all cores).
    stages : tuple of str, default :data:`GLOBAL_STAGES`
        Parameter-map files (in ``nodulegrowth/params``) of the global stage,
        applied in order; e.g. drop ``global_bspline.txt`` for a purely
        affine global stage.

    Returns
    -------
    Registration

    Raises
    ------
    RegistrationError
        If an image is not 3-D, a mask is empty or elastix fails.
    LungMaskError
        If a mask has to be computed and no lung is found.

    Examples
    --------
    >>> from nodulegrowth.phantom import make_pair          # doctest: +SKIP
    >>> pair = make_pair(0, preset="small")                  # doctest: +SKIP
    >>> reg = register_pair(pair.t1, pair.t2)                # doctest: +SKIP
    >>> reg.qc["lung_dice"] > 0.9                            # doctest: +SKIP
    True
    """
    t0 = time.perf_counter()
    for name, img in (("fixed", fixed), ("moving", moving)):
        if not isinstance(img, sitk.Image) or img.GetDimension() != 3:
            raise RegistrationError(f"{name} image must be a 3-D SimpleITK.Image; got {type(img).__name__}")
    if fixed_mask is None or moving_mask is None:
        from .lung import lung_mask

        fixed_mask = lung_mask(fixed) if fixed_mask is None else fixed_mask
        moving_mask = lung_mask(moving) if moving_mask is None else moving_mask
    f_lo = _crop_to_mask(_shrink(fixed, GLOBAL_SPACING_MM), fixed_mask, _CROP_MARGIN_MM)
    m_lo = _crop_to_mask(_shrink(moving, GLOBAL_SPACING_MM), moving_mask, _CROP_MARGIN_MM)
    fm_lo = _shrink_mask(fixed_mask, f_lo)
    mm_lo = _shrink_mask(moving_mask, m_lo)
    if not sitk.GetArrayViewFromImage(fm_lo).any() or not sitk.GetArrayViewFromImage(mm_lo).any():
        raise RegistrationError("a lung mask is empty on the registration grid; check lung_mask on both scans")
    d = _center_of_mass(moving_mask) - _center_of_mass(fixed_mask)
    m_lo = _shift_origin(m_lo, d)
    mm_lo = _shift_origin(mm_lo, d)

    itk = _itk()
    params = itk.ParameterObject.New()
    if not stages:
        raise RegistrationError("stages is empty; pass at least one parameter-map file name")
    for stage in stages:
        params.AddParameterMap(load_parameter_map(stage).GetParameterMap(0))
    if number_of_threads:
        for i in range(params.GetNumberOfParameterMaps()):
            params.SetParameter(i, "MaximumNumberOfThreads", str(int(number_of_threads)))
    wd = None
    if workdir is not None:
        wd = Path(workdir)
        wd.mkdir(parents=True, exist_ok=True)
        for i, stage in enumerate(stages):
            _write_parameter_map(params.GetParameterMap(i), wd / f"used_{stage}")
    t_elx = time.perf_counter()
    method = _run_elastix(itk, f_lo, m_lo, params, _dilate(fm_lo, _MASK_MARGIN_MM), number_of_threads, wd)
    t_elx = time.perf_counter() - t_elx
    result_params = method.GetTransformParameterObject()
    transform = method.GetCombinationTransform()
    if wd is not None:
        for i in range(result_params.GetNumberOfParameterMaps()):
            _write_parameter_map(result_params.GetParameterMap(i), wd / f"TransformParameters.{i}.txt")

    # QC on a grid twice as coarse as the registration's: the Dice and NCC
    # of whole lungs barely change, and warping is then 8x cheaper
    qc_grid = sitk.BinShrink(f_lo, [2, 2, 2])
    # GetArrayFromImage (a copy), not a view: a view does not keep its image
    # alive, and these images are temporaries freed as soon as the call returns
    fa = sitk.GetArrayFromImage(_shrink_mask(fm_lo, qc_grid)) > 0
    dice_before = _dice(fa, sitk.GetArrayFromImage(
        sitk.Resample(mm_lo, qc_grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0)) > 0)
    dice = _dice(fa, _warp(itk, result_params, mm_lo, 0, 0.0, qc_grid) > 0.5)
    # NCC of the images inside the T1 lung mask (the metric elastix optimised)
    ncc = _ncc(sitk.GetArrayViewFromImage(qc_grid)[fa], _warp(itk, result_params, m_lo, 1, -1024.0, qc_grid)[fa])
    qc = {
        "lung_dice": dice,
        "lung_dice_before": dice_before,
        "lung_ncc": ncc,
        "grid_spacing_mm": tuple(float(s) for s in f_lo.GetSpacing()),
        "initial_shift_mm": tuple(float(v) for v in d),
        "seconds": time.perf_counter() - t0,
        "seconds_elastix": t_elx,
    }
    flags = ("registration_low_overlap",) if dice < LOW_OVERLAP_DICE else ()
    return Registration(transform, d, qc, flags, result_params, number_of_threads, wd)


def _warp(itk, result_params, moving: sitk.Image, order: int, default: float,
          grid: sitk.Image | None = None) -> np.ndarray:
    """Moving image pulled onto a fixed grid by transformix.

    ``grid`` (default: the fixed grid of ``result_params``) sets the output
    geometry. Only low-resolution images and small VOIs are warped this way,
    for the quality figures; points are never mapped by resampling.
    """
    po = itk.ParameterObject.New()
    for i in range(result_params.GetNumberOfParameterMaps()):
        pm = result_params.GetParameterMap(i)
        pm["FinalBSplineInterpolationOrder"] = [str(order)]
        pm["DefaultPixelValue"] = [repr(float(default))]
        pm["ResultImagePixelType"] = ["float"]
        if grid is not None:
            pm["Size"] = [str(v) for v in grid.GetSize()]
            pm["Spacing"] = [repr(float(v)) for v in grid.GetSpacing()]
            pm["Origin"] = [repr(float(v)) for v in grid.GetOrigin()]
            pm["Direction"] = [repr(float(v)) for v in grid.GetDirection()]
            pm["Index"] = ["0", "0", "0"]
        po.AddParameterMap(pm)
    warped = itk.transformix_filter(sitk_to_itk(moving), po)
    return itk.array_from_image(warped)


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised cross-correlation :math:`\\sum (a-\\bar a)(b-\\bar b) / (n\\,\\sigma_a \\sigma_b)`."""
    a = np.asarray(a, float).ravel()
    b = np.asarray(b, float).ravel()
    if a.size < 2:
        return float("nan")
    a = a - a.mean()
    b = b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")
