"""Carry a T1 nodule into T2: point propagation and re-identification.

:func:`propagate_point` maps the T1 nodule centre into T2 with the global
registration, refined by a local affine registration around the nodule
(:meth:`nodulegrowth.register.Registration.refine`). The mapped point is where
the *tissue* of T1 went; a nodule that grew, shrank or sits where breathing
deformed the lung need not be centred there. :func:`reidentify` therefore
looks for the T2 nodule itself around the mapped point: candidate blobs from
a threshold derived from the local HU distribution, split from vessels and
pleura by a morphological opening sized to the T1 nodule, scored by distance,
size and density agreement with the T1 nodule. A nodule that is not found is
a result (``found=False`` with a flag), not an error.

All points are LPS world coordinates ``(x, y, z)`` in mm; arrays are
``(z, y, x)`` with ``spacing_zyx`` in mm.

References
----------
.. [1] D. P. Naidich et al., "Recommendations for the management of subsolid
   pulmonary nodules detected at CT: a statement from the Fleischner
   Society", Radiology 266(1):304-317, 2013 (solid / part-solid / ground-glass
   density classes used for the threshold).
.. [2] W. J. Kostis, A. P. Reeves, D. F. Yankelevitz, C. I. Henschke,
   "Three-dimensional segmentation and growth-rate estimation of small
   pulmonary nodules in helical CT images", IEEE Trans. Med. Imaging
   22(10):1259-1274, 2003 (opening to detach vessels; pleural separation).
.. [3] H. MacMahon et al., "Guidelines for management of incidental pulmonary
   nodules detected on CT images: from the Fleischner Society 2017",
   Radiology 284(1):228-243, 2017 (growth of a nodule between visits).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from . import _morph
from .errors import GeometryError

__all__ = [
    "LARGE_RESIDUAL_MM",
    "PropagatedPoint",
    "Candidate",
    "Reidentification",
    "propagate_point",
    "propagate_mask",
    "reidentify",
]

#: Local correction (mm) of the global mapping above which a point is flagged
#: ``large_local_residual``: the global stage is expected within ~2-3 mm
#: (DIR-Lab TRE of coarse lung registration), more means local motion the
#: coarse grid missed, or a local stage that locked onto the wrong structure.
LARGE_RESIDUAL_MM = 5.0

#: Standard deviation (mm) of the distance term of the candidate score: the
#: registration's expected error at the nodule after local refinement.
_SIGMA_DIST_MM = 4.0

#: Standard deviation of :math:`\\ln(V_2/V_1)` in the size term: a factor
#: of 3 in volume (a doubling time of about the interval) is one sigma.
_SIGMA_LOGVOL = math.log(3.0)

#: Standard deviation (HU) of the density term.
_SIGMA_HU = 150.0

#: Thresholds as fractions of the local parenchyma -> soft-tissue contrast:
#: 0.5 is the 50 % partial-volume level of a solid nodule; 0.15 and 0.3 are
#: the 50 % levels of ground-glass opacities of 30 % and 60 % contrast
#: (about -600 and -350 HU in a -850 HU lung).
_CONTRAST_FRACTIONS = (0.15, 0.3, 0.5)

#: Opening radii as fractions of the T1 equivalent radius (clipped to
#: 1-5 mm): 0.4 keeps small lobulations, 0.8 detaches vessels almost as
#: thick as the nodule.
_OPENING_FRACTIONS = (0.4, 0.6, 0.8)

#: A second candidate scoring at least this fraction of the best makes the
#: match ambiguous.
_AMBIGUITY_RATIO = 0.5

#: Minimum score of a credible candidate (product of the three terms, each
#: in (0, 1]); 0.01 is e.g. 3 sigma in distance alone.
_MIN_SCORE = 0.01


@dataclass(frozen=True)
class PropagatedPoint:
    """A T1 point carried into T2.

    Attributes
    ----------
    point_xyz : ndarray, shape (3,)
        T2 world point, LPS mm (refined when refinement ran).
    global_xyz : ndarray, shape (3,)
        T2 world point from the global transform alone, LPS mm.
    residual_mm : float
        Local correction :math:`\\lVert p_{local} - p_{global} \\rVert` (mm);
        0 without refinement.
    local_ncc : float or None
        Normalised cross-correlation of the T1 VOI and the refined T2 VOI
        (1 = identical); None without refinement.
    flags : tuple of str
        ``large_local_residual`` (residual > :data:`LARGE_RESIDUAL_MM`),
        ``local_registration_failed``, ``registration_low_overlap`` (copied
        from the registration).
    """

    point_xyz: np.ndarray
    global_xyz: np.ndarray
    residual_mm: float = 0.0
    local_ncc: float | None = None
    flags: tuple = ()


@dataclass(frozen=True)
class Candidate:
    """One candidate blob in T2.

    Attributes
    ----------
    center_xyz : ndarray, shape (3,)
        Centroid, LPS mm.
    seed_xyz : ndarray, shape (3,)
        Deepest interior point (maximum of the distance to the boundary), LPS mm.
    volume_mm3 : float
        Voxel-count volume of the blob.
    mean_hu : float
        Mean HU inside the blob.
    distance_mm : float
        Distance of the centroid to the propagated point.
    score : float
        Product of the distance, size and density terms, in (0, 1].
    threshold_hu : float
        HU threshold the blob was formed at.
    """

    center_xyz: np.ndarray
    seed_xyz: np.ndarray
    volume_mm3: float
    mean_hu: float
    distance_mm: float
    score: float
    threshold_hu: float = float("nan")


@dataclass(frozen=True)
class Reidentification:
    """Result of the search for the T2 nodule.

    Attributes
    ----------
    found : bool
        A credible candidate was found.
    seed_xyz : ndarray (3,) or None
        A point inside the T2 nodule (LPS mm) for the segmentation step.
    center_xyz : ndarray (3,) or None
        The T2 nodule's centre (LPS mm): centroid of its segmentation when
        :mod:`nodulegrowth.segment` is available and did not flag a leak,
        else of the candidate blob.
    score : float
        Score of the chosen candidate (0 when not found).
    candidates : tuple of Candidate
        All candidates, best first.
    flags : tuple of str
        ``reidentification_failed`` (no credible candidate),
        ``reidentification_ambiguous`` (a second candidate scores close to
        the best), ``reidentification_far`` (chosen centre farther than
        :data:`LARGE_RESIDUAL_MM` from the propagated point).
    threshold_hu : float
        Threshold used to form the candidates.
    """

    found: bool
    seed_xyz: np.ndarray | None
    center_xyz: np.ndarray | None
    score: float
    candidates: tuple = ()
    flags: tuple = ()
    threshold_hu: float = float("nan")


def _as_point(p, name: str) -> np.ndarray:
    try:
        arr = np.asarray(p, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise GeometryError(f"{name} must be 3 finite LPS mm values (x, y, z), got {p!r}") from None
    if arr.shape != (3,) or not np.all(np.isfinite(arr)):
        raise GeometryError(f"{name} must be 3 finite LPS mm values (x, y, z), got {p!r}")
    return arr


def propagate_point(registration, fixed: sitk.Image, moving: sitk.Image, point_xyz, *,
                    refine: bool = True) -> PropagatedPoint:
    """Map a T1 point into T2: global transform, then local refinement.

    .. math::

        \\mathbf{q} = \\phi_{loc}(\\mathbf{p}) \\text{ if refine else }
        \\phi(\\mathbf{p}), \\qquad
        r = \\lVert \\phi_{loc}(\\mathbf{p}) - \\phi(\\mathbf{p}) \\rVert_2

    (see :class:`nodulegrowth.register.Registration`).

    Parameters
    ----------
    registration : nodulegrowth.register.Registration
        T1 -> T2 registration.
    fixed, moving : SimpleITK.Image
        Full-resolution T1 and T2 (HU); used by the local refinement only.
    point_xyz : array_like, shape (3,)
        T1 point, LPS mm (e.g. the centroid of the T1 segmentation).
    refine : bool, default True
        Run the local affine refinement on a VOI around the point.

    Returns
    -------
    PropagatedPoint

    Raises
    ------
    GeometryError
        If ``point_xyz`` is not three finite numbers or lies outside T1.

    Examples
    --------
    >>> pp = propagate_point(reg, t1, t2, (10.0, -20.0, 30.0))   # doctest: +SKIP
    >>> pp.point_xyz.shape                                         # doctest: +SKIP
    (3,)
    """
    p = _as_point(point_xyz, "point_xyz")
    idx = np.array(fixed.TransformPhysicalPointToContinuousIndex([float(v) for v in p]))
    if np.any(idx < -0.5) or np.any(idx > np.array(fixed.GetSize()) - 0.5):
        raise GeometryError(
            f"T1 point {tuple(np.round(p, 1))} lies outside the T1 image; check the manifest's "
            "coordinates (LPS mm) or use t1_i/t1_j/t1_k"
        )
    flags = list(getattr(registration, "flags", ()))
    g = np.asarray(registration.map_points(p), float)
    if not refine:
        return PropagatedPoint(g, g, 0.0, None, tuple(flags))
    ref = registration.refine(p, fixed, moving)
    flags += list(ref.flags)
    if ref.residual_mm > LARGE_RESIDUAL_MM:
        flags.append("large_local_residual")
    return PropagatedPoint(np.asarray(ref.point_xyz, float), g, float(ref.residual_mm),
                           ref.metric, tuple(dict.fromkeys(flags)))


def propagate_mask(registration, mask_t2: sitk.Image, reference_t1: sitk.Image) -> sitk.Image:
    """Pull a T2 mask into T1 space with the global transform (nearest neighbour).

    For every T1 voxel centre :math:`\\mathbf{x}`,
    :math:`M_1(\\mathbf{x}) = M_2(\\phi(\\mathbf{x}))`, computed by transformix on
    the mask only (the CT images are never resampled).

    Parameters
    ----------
    registration : nodulegrowth.register.Registration
    mask_t2 : SimpleITK.Image
        0/1 mask on the T2 grid.
    reference_t1 : SimpleITK.Image
        Image whose grid (size, origin, spacing, direction) the result takes.

    Returns
    -------
    SimpleITK.Image
        ``uint8`` 0/1 mask on the T1 grid.

    Examples
    --------
    >>> m1 = propagate_mask(reg, lung_mask(t2), t1)              # doctest: +SKIP
    """
    from .register import _itk, _warp

    shifted = sitk.Image(mask_t2)
    shifted.SetOrigin(tuple(np.asarray(mask_t2.GetOrigin()) - registration.shift_xyz))
    warped = _warp(_itk(), registration.parameter_object, shifted, 0, 0.0, reference_t1)
    out = sitk.GetImageFromArray((warped > 0.5).astype(np.uint8))
    out.CopyInformation(reference_t1)
    return out


# ---------------------------------------------------------------------------
# re-identification
# ---------------------------------------------------------------------------
def _crop_array(image: sitk.Image, center_xyz: np.ndarray, half_mm: float):
    """:func:`nodulegrowth.io.crop` and the crop's index offset in ``image`` (i, j, k);
    ``(None, None)`` when the point is outside or the crop is under 3 voxels thick."""
    from .io import crop

    try:
        roi = crop(image, center_xyz, half_mm)
    except GeometryError:
        return None, None
    if min(roi.GetSize()) < 3:
        return None, None
    lo = np.array(image.TransformPhysicalPointToIndex(roi.GetOrigin()), dtype=int)
    return roi, lo


def _local_lung(dark: np.ndarray, spacing: np.ndarray, radius_mm: float) -> np.ndarray:
    """Lung region of a VOI: the dark region closed by a ball (rolling ball).

    Fills vessels and nodules inside the lung and bridges the bay a
    juxtapleural nodule makes in the pleural surface, so the nodule can be
    cut from the chest wall at the repaired pleura.
    """
    closed = _morph.ball_closing(dark, radius_mm, spacing, pad_edge=True) | dark
    return ndi.binary_fill_holes(closed)


def _segment_center(moving, seed_xyz, lung_mask, expected_diameter_mm):
    """Centroid (LPS mm) of segment.segment_nodule's mask at a seed, or None.

    The segmentation gets its own VOI around the seed, sized as the
    pipeline's T2 segmentation sizes it (:func:`segment.voi_half_size_mm`, the
    largest VOI if the mask reaches the border), so the centre found here is
    the one the pipeline will measure.
    """
    try:
        from .segment import MAX_VOI_HALF_SIZE_MM, segment_nodule, voi_half_size_mm
    except ImportError:
        return None
    half = voi_half_size_mm(expected_diameter_mm, inplane_voxel_mm=min(moving.GetSpacing()[:2]))
    for half_mm in dict.fromkeys((half, MAX_VOI_HALF_SIZE_MM)):
        roi, lo = _crop_array(moving, seed_xyz, half_mm)
        if roi is None:
            return None
        vol = sitk.GetArrayFromImage(roi).astype(np.float32)
        sp = np.array(roi.GetSpacing()[::-1], float)
        lung = None
        if lung_mask is not None:
            lung = sitk.GetArrayFromImage(sitk.RegionOfInterest(lung_mask, roi.GetSize(), [int(v) for v in lo])) > 0
        seed_zyx = np.array(roi.TransformPhysicalPointToContinuousIndex([float(v) for v in seed_xyz]))[::-1]
        try:
            seg = segment_nodule(vol, tuple(sp), tuple(float(v) for v in seed_zyx), lung_mask=lung)
        except Exception:  # noqa: BLE001 - a failed segmentation falls back to the blob
            return None
        if "touches_roi_border" not in seg.flags:
            break
    m = np.asarray(seg.mask, bool)
    if not m.any() or not m[tuple(np.clip(np.round(seed_zyx).astype(int), 0, np.array(m.shape) - 1))]:
        return None
    if "segmentation_leak" in seg.flags:
        # the centroid of a mask that ran into a vessel or the wall is not the
        # nodule's; the candidate's own centre is the better estimate
        return None
    c = np.argwhere(m).mean(axis=0)[::-1]
    return np.array(roi.TransformContinuousIndexToPhysicalPoint([float(v) for v in c]))


def reidentify(moving: sitk.Image, propagated_xyz, *, reference=None,
               reference_volume_mm3: float | None = None, reference_hu: float | None = None,
               lung_mask: sitk.Image | None = None, search_radius_mm: float = 10.0,
               use_segmentation: bool = True) -> Reidentification:
    """Find the T2 nodule near the propagated point.

    1. VOI of half-size ``search_radius_mm + 2 r_1 + 5`` mm around the
       propagated point :math:`\\mathbf{q}`, with
       :math:`r_1 = (3 V_1 / 4\\pi)^{1/3}` the T1 equivalent radius (5 mm
       when :math:`V_1` is unknown);
    2. thresholds :math:`t_f = \\tilde h_{lung} + f(\\tilde h_{tissue} - \\tilde h_{lung})`,
       :math:`f \\in \\{0.15, 0.3, 0.5\\}` (the 50 % partial-volume levels of
       ground-glass, denser ground-glass and solid nodules [1]_), with
       :math:`\\tilde h_{lung}` and :math:`\\tilde h_{tissue}` the medians of
       the VOI voxels below and above its Otsu threshold; plus, when the T1
       density :math:`h_1` is given, :math:`(\\tilde h_{lung} + h_1)/2`.
       Levels within 3 noise SDs (MAD) of the parenchyma are dropped;
    3. at each level, voxels above it inside the lung (the given lung mask,
       else the VOI's dark region closed by a rolling ball) are opened by
       balls of radius :math:`\\rho = \\mathrm{clip}(f\\,r_1, 1, 5)` mm,
       :math:`f \\in \\{0.4, 0.6, 0.8\\}`, to detach vessels [2]_;
    4. in each connected blob reaching within ``search_radius_mm`` of
       :math:`\\mathbf{q}` the seed is the voxel maximising
       :math:`D(\\mathbf{x}) - 0.25\\,\\lVert \\mathbf{x} - \\mathbf{q} \\rVert`
       (:math:`D` the distance to the blob's boundary: the thickest point,
       preferring the part near :math:`\\mathbf{q}`), and the candidate is the
       part of the blob within :math:`1.5 \\max(r_1, D_{seed})` of the seed
       (the whole blob for an isolated nodule, the nodule without the far
       part of an attached vessel otherwise). With :math:`d_c` the distance
       of its centroid to :math:`\\mathbf{q}`, :math:`V_c` its volume and
       :math:`\\bar h_c` its mean HU, it scores

    .. math::

        s_c = \\exp\\!\\left(-\\frac{d_c^2}{2\\sigma_d^2}\\right)
              \\exp\\!\\left(-\\frac{\\ln^2(V_c/V_1)}{2\\sigma_V^2}\\right)
              \\exp\\!\\left(-\\frac{(\\bar h_c - h_1)^2}{2\\sigma_h^2}\\right)

       with :math:`\\sigma_d` = 4 mm, :math:`\\sigma_V = \\ln 3` (a doubling
       time of about the interval [3]_), :math:`\\sigma_h` = 150 HU (a term is
       1 when its reference is unknown). The same blob found at several
       levels or radii counts once (candidates closer than
       :math:`\\max(r_1/2, 2)` mm to a better one are dropped);
    5. the best candidate with :math:`s \\ge 0.01` is the T2 nodule; its
       centre is the centroid of its segmentation
       (:func:`nodulegrowth.segment.segment_nodule` in a VOI sized by
       :func:`nodulegrowth.segment.voi_half_size_mm` from the T1 size, when
       available and ``use_segmentation``, unless it flags
       ``segmentation_leak``), else of the candidate. A second
       candidate with at least half the best score makes it ambiguous.

    Parameters
    ----------
    moving : SimpleITK.Image
        T2 CT (HU).
    propagated_xyz : array_like, shape (3,)
        Propagated T1 centre in T2, LPS mm.
    reference : NoduleMeasurement, optional
        T1 measurement; its ``volume_mm3`` is used when
        ``reference_volume_mm3`` is not given.
    reference_volume_mm3 : float, optional
        T1 nodule volume (mm^3).
    reference_hu : float, optional
        T1 nodule mean density (HU); needed to find ground-glass nodules.
    lung_mask : SimpleITK.Image, optional
        T2 lung mask (``uint8``, T2 geometry).
    search_radius_mm : float, default 10
        Candidates farther than this from the propagated point are ignored.
    use_segmentation : bool, default True
        Use :mod:`nodulegrowth.segment` for the centre when it is installed.

    Returns
    -------
    Reidentification
        ``found=False`` with ``reidentification_failed`` when there is no
        credible candidate (e.g. a resolved nodule).

    Raises
    ------
    GeometryError
        If the propagated point is not three finite numbers or lies outside T2,
        or ``search_radius_mm`` is not positive.

    Examples
    --------
    >>> import numpy as np, SimpleITK as sitk
    >>> a = np.full((40, 40, 40), -850, np.float32)
    >>> z, y, x = np.indices(a.shape)
    >>> a[(z - 20) ** 2 + (y - 22) ** 2 + (x - 18) ** 2 <= 25] = 30   # r = 5 mm
    >>> img = sitk.GetImageFromArray(a)
    >>> r = reidentify(img, (20.0, 20.0, 20.0), reference_volume_mm3=520,
    ...                reference_hu=30, use_segmentation=False)
    >>> r.found, [round(float(v), 1) for v in r.center_xyz]
    (True, [18.0, 22.0, 20.0])
    """
    q = _as_point(propagated_xyz, "propagated_xyz")
    if not search_radius_mm > 0:
        raise GeometryError(f"search_radius_mm must be > 0, got {search_radius_mm!r}")
    if reference_volume_mm3 is None and reference is not None:
        reference_volume_mm3 = getattr(reference, "volume_mm3", None)
    v1 = float(reference_volume_mm3) if reference_volume_mm3 and reference_volume_mm3 > 0 else None
    r1 = (3.0 * v1 / (4.0 * math.pi)) ** (1.0 / 3.0) if v1 else 5.0
    half = search_radius_mm + 2.0 * r1 + 5.0
    roi, lo = _crop_array(moving, q, half)
    if roi is None:
        raise GeometryError(
            f"propagated point {tuple(np.round(q, 1))} lies outside the T2 image; "
            "the registration probably failed (check registration qc)"
        )
    vol = sitk.GetArrayFromImage(roi).astype(np.float32)
    spacing = np.array(roi.GetSpacing()[::-1], float)

    # local densities: the lung parenchyma is the dark class of the VOI
    clipped = np.clip(vol, -1024.0, 200.0)
    otsu = float(threshold_otsu(clipped)) if clipped.min() < clipped.max() else float(clipped.min())
    dark_vals = clipped[clipped < otsu]
    h_lung = float(np.median(dark_vals)) if dark_vals.size else -850.0
    bright = clipped[clipped >= otsu]
    h_tissue = float(np.clip(np.median(bright), -100.0, 100.0)) if bright.size else 40.0
    # robust noise of the parenchyma (MAD): a threshold closer than 3 sigma
    # to the parenchyma would make candidates out of noise (beyond 3 sigma,
    # the 0.1 % of noise voxels above it are removed by the opening)
    sd = 1.4826 * float(np.median(np.abs(dark_vals - h_lung))) if dark_vals.size else 20.0
    # the nodule's density is not known in general (the pipeline passes a
    # T1 measurement of size only): solid, part-solid and ground-glass
    # nodules are caught at their 50 % partial-volume level by thresholds at
    # several fractions of the parenchyma -> soft-tissue contrast [1]_, plus
    # the half-way level to the T1 density when it is given
    levels = [h_lung + f * (h_tissue - h_lung) for f in _CONTRAST_FRACTIONS]
    if reference_hu is not None and np.isfinite(reference_hu) and reference_hu > h_lung + 6 * sd:
        levels.append(0.5 * (h_lung + min(float(reference_hu), h_tissue)))
    levels = sorted(t for t in levels if t > h_lung + 3.0 * sd) or [otsu]

    if lung_mask is not None:
        lm = sitk.GetArrayFromImage(sitk.RegionOfInterest(
            lung_mask, roi.GetSize(), [int(v) for v in lo])) > 0
    else:
        lm = _local_lung(vol <= otsu, spacing, max(1.5 * r1, 6.0))

    origin_idx = lo.astype(float)

    def to_world(zyx):
        ijk = origin_idx + np.asarray(zyx, float)[::-1]
        return np.array(moving.TransformContinuousIndexToPhysicalPoint([float(v) for v in ijk]))

    # several opening radii: a vessel thicker than the smallest one stays
    # attached to the nodule (and drags the blob's centroid away); a larger
    # ball detaches it while the nodule, thicker still, survives
    rhos = sorted({round(float(np.clip(f * r1, 1.0, 5.0)), 2) for f in _OPENING_FRACTIONS})
    q_idx = np.array(roi.TransformPhysicalPointToContinuousIndex([float(v) for v in q]))[::-1]
    raw = []
    for thr in levels:
        fg = (vol > thr) & lm
        d_fg = _morph.edt(fg, spacing)  # shared by the openings of this level
        for rho in rhos:
            opened = _morph.ball_opening(fg, rho, spacing, edt_mm=d_fg)
            lab, n = ndi.label(opened)
            if not n:
                continue
            dt = _morph.edt(opened, spacing)
            for i, sl in enumerate(ndi.find_objects(lab), start=1):
                if sl is None:
                    continue
                comp = lab[sl] == i
                off = np.array([x.start for x in sl])
                idx = np.argwhere(comp)
                pts = (idx + off - q_idx) * spacing
                d_q = np.sqrt((pts ** 2).sum(axis=1))
                if d_q.min() > search_radius_mm:
                    continue
                # seed: the thickest point of the blob, discounted by its
                # distance to q, so a nodule near q wins over a thicker vessel
                # or wall further away in the same blob
                d_in = dt[sl][comp]
                k = int(np.argmax(d_in - 0.25 * d_q))
                seed_zyx = idx[k] + off
                # the candidate is the part of the blob around the seed: the whole
                # blob for an isolated nodule, the nodule without the far part of
                # an attached vessel otherwise
                reach = 1.5 * max(r1, float(d_in[k]))
                near = np.sqrt((((idx - idx[k]) * spacing) ** 2).sum(axis=1)) <= reach
                c_zyx = idx[near].mean(axis=0) + off
                c = to_world(c_zyx)
                dist = float(np.linalg.norm(c - q))
                vol_mm3 = float(near.sum() * np.prod(spacing))
                mean_hu = float(vol[sl][comp][near].mean())
                sc = math.exp(-dist ** 2 / (2 * _SIGMA_DIST_MM ** 2))
                if v1:
                    sc *= math.exp(-math.log(vol_mm3 / v1) ** 2 / (2 * _SIGMA_LOGVOL ** 2))
                if reference_hu is not None and np.isfinite(reference_hu):
                    sc *= math.exp(-(mean_hu - float(reference_hu)) ** 2 / (2 * _SIGMA_HU ** 2))
                raw.append((sc, Candidate(c, to_world(seed_zyx), vol_mm3, mean_hu, dist, sc, thr), seed_zyx))
    # the same blob found at several radii counts once (its best score):
    # candidates whose seeds lie within the better one are duplicates
    raw.sort(key=lambda t: -t[0])
    cands = []
    for t in raw:
        if all(np.linalg.norm(t[1].center_xyz - u[1].center_xyz) > max(0.5 * r1, 2.0) for u in cands):
            cands.append(t)
    allc = tuple(t[1] for t in cands)
    if not cands or cands[0][0] < _MIN_SCORE:
        return Reidentification(False, None, None, float(cands[0][0]) if cands else 0.0, allc,
                                ("reidentification_failed",), float(levels[-1]))
    best_s, best, seed_zyx = cands[0]
    flags = []
    if len(cands) > 1 and cands[1][0] >= _AMBIGUITY_RATIO * best_s:
        flags.append("reidentification_ambiguous")
    center = best.center_xyz
    if use_segmentation:
        seg_c = _segment_center(moving, best.seed_xyz, lung_mask, 2.0 * r1 if v1 else None)
        if seg_c is not None:
            center = seg_c
    if np.linalg.norm(center - q) > LARGE_RESIDUAL_MM:
        flags.append("reidentification_far")
    return Reidentification(True, best.seed_xyz, center, float(best_s), allc, tuple(flags),
                            best.threshold_hu)
