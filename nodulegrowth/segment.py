"""Seed-point segmentation of a lung nodule in a CT volume of interest.

The nodule is the connected region around the seed that is denser than the
surrounding lung. Every threshold is derived from the image itself:

1. **Parenchyma level** :math:`P` and noise :math:`\\sigma`: mode of the
   histogram of the lung voxels of the VOI (the ``lung_mask`` when given, else
   the voxels below the Otsu threshold of the VOI) and the MAD of the voxels
   below the mode (dense tissue does not contaminate that side).
2. **Seed refinement**: if the clicked voxel is not denser than halfway
   between :math:`P` and the local maximum within 2 mm, the seed moves to that
   maximum (the click was beside a small nodule). If nothing can be grown
   from there, or the nodule grown from there does not contain the click
   while the click itself lies in a structure, or (slices up to twice the
   pixel size) it is flagged as a leak while the nodule grown from the
   click is not and does not hold the refined seed, the segmentation is
   made again from the click (beside the
   chest wall or a vessel, the densest voxel near a faint nodule is the wall
   or the vessel). If that fails too and the click lies in a pocket enclosed
   by denser tissue within 12 mm (the cavity of a cavitated nodule), the
   nodule is grown from the nearest voxel of that wall and must contain the
   click.
3. **Core level** :math:`C`: 95th percentile of the lightly smoothed image in
   a 1.5 mm ball around the seed. Below 5 noise SD of that smoothed image
   above :math:`P` (for the click itself and the other alternatives of step
   2, also below 3 SD of the raw noise) there is "no structure denser than
   the lung" and the seed is refused.
4. **Threshold** at the midpoint :math:`t = (P + C) / 2`, so the boundary lies
   at the 50 % partial-volume level of the edge, and region growing from the
   seed (6-connectivity).
5. **Chest wall**: voxels outside the lung. The lung is the ``lung_mask``
   united with the morphological closing of the below-threshold (air-like)
   region around the nodule (pockets enclosed by the grown region, such as a
   bubble-like lucency, are not air) by a ball somewhat larger than the
   nodule (the classic rolling-ball correction, which puts a juxtapleural
   nodule inside the lung but leaves the flat chest wall outside). The
   inscribed radius is measured with those pockets filled too.
6. **Vessels**: at a ground-glass threshold, structures denser than solid
   tissue or clearly denser than the nodule's core (by max(5 noise SD, 25 % of
   its contrast)) that reach beyond twice the nodule's largest inscribed radius (+2 mm) from the seed are
   vessels and are excluded first (the chest wall and its blurred flank do
   not count as such a structure; when the seed's own voxels join such a
   structure at that level, as a faint nodule's denser half blurred into
   the flank of a vessel it touches, the lowest of five levels up to the
   solid level at which they part is used, on slices up to twice the pixel
   size); then a morphological opening with a ball
   of 0.45 times the nodule's inscribed radius (the distance from the seed to
   the nearest background voxel), applied with the region's enclosed
   lucencies filled, removes attached structures thinner than that. When
   the result still looks like a leak, a straight vessel that runs past the
   nodule is fitted beyond it and taken out along its axis (slices up to
   twice the pixel size; :func:`_straight_vessels`: a vessel about as thick
   as the nodule, which no ball takes off without eroding the nodule);
   failing that, the opening is repeated with a larger ball. It is also
   repeated (slices up to twice the pixel size) when what it cut off is, where
   it meets the mask, at least as thick as the ball: such a vessel was cut
   where the noise thinned it, and its stub stayed on. The leak tests allow
   for the grid: the inscribed radius
   is known only to half a voxel, and an opening test whose erosion depth is
   below one voxel is not made (at ~3 mm voxels it would erode any small
   nodule to a point and read that as a leak).
7. **Outer layer** (slices up to 2.5 mm, solid core): a rim denser than the boundary
   threshold lies inside the mask, and one at the threshold is split by the
   noise; neither is seen outside the mask. On the nodule grown at 35 % of
   the contrast, the depth profile (median HU by 3-D depth in bins of
   max(0.5 mm, one in-plane voxel)) is examined below the boundary bin: a
   run of bins spanning max(1 mm, 2 bins) that stays below 80 % of the
   profile's top and within 15 % of the contrast of itself is a layer of
   tissue of its own (a blurred uniform edge crosses that band in about
   0.6 mm). A layer at or above the threshold :math:`t`, or above halfway
   from :math:`P` to water (where step 7b takes no rim), is the nodule's
   outer tissue: the nodule is regrown at the midpoint between the
   parenchyma and that layer's level, and step 7b is skipped
   (:func:`_outer_plateau_level`); a layer below both is left to step 7b,
   which reads a blurred rim's level better.
7b. **Ground-glass halo**: when the core is solid, the in-plane ring 1-2.5 mm
   outside the solid region is examined; if its upper quartile is clearly above
   the parenchyma (a ground-glass rim) and the edge is not the symmetric edge
   of a blurred step (the equivalent radius must move outwards from the 50 %
   to the 15 % level at least 1.3 times as far as inwards from 50 % to 85 %;
   on fine grids a rim above a quarter of the contrast needs no such test),
   the whole nodule is regrown at the midpoint between the parenchyma and
   that rim level (part-solid nodule). The rim level is then re-read on the
   regrown nodule: the median of the rim away from core and lung, or, for a
   rim under 1.5 mm half-thick (no plateau under the blur), the median of
   its medial layer (the voxels farthest from both core and lung).
8. **Type**: ``solid`` when the outer level is denser than halfway from
   :math:`P` to water (0 HU, the definition of the HU scale) and no layer or
   rim less dense than three quarters of the way to water was found round a
   denser core in step 7 or 7b (ground-glass attenuation reaches -300 HU
   and above; soft tissue round a calcification stays solid); otherwise
   ``part_solid`` when the interior holds a solid component (voxels above the
   midpoint between the ground-glass and solid levels, opened to drop vessels,
   at least a 1 mm ball), else ``ground_glass``. A nodule regrown around a
   solid core in step 7b is ``part_solid`` even when blur keeps that core
   below halfway to water; its solid part is then the core segmented at
   :math:`(P + C)/2`.
9. **Partial-volume consistent boundary**: blur moves the 50 % iso-surface
   of a convex object inwards (by about :math:`\\sigma_{PSF}^2 / R` for a
   sphere), so a midpoint threshold under-segments small nodules, while the
   integral of the image is preserved by blur. The final threshold is the one
   whose mask volume equals the partial-volume volume
   :math:`\\sum_i (I_i - P_{loc}) / (G_{in} - P_{loc})` over the mask and a
   shell that holds its blurred edge (2.5 mm in-plane and the slices within
   2.5 mm; 1.5 mm and one slice where a vessel is within 2.5 mm; other
   structures excluded), clamped to the central half of the contrast.
   :math:`G_{in}` is the outer level of a nodule regrown in
   step 7 or 7b (its denser voxels then count once); otherwise the median
   of the nodule's plateau beyond
   the blur (voxels deeper than max(2.5 mm, slice thickness)) or, in a
   smaller nodule, of its deepest voxels; for a solid or ground-glass
   nodule under about 6 mm (ground glass only with no vessel within 2.5 mm)
   it comes from a blurred-ball fit of its radial profile, as blur
   lowers its centre (a fit above the allowance for the scanner's blur is
   held at that allowance, and at most at what the deepest voxels imply under
   a CT blur of sigma 1.1 mm). The mask is regrown at that threshold without
   the structures that were not part of the region at :math:`t` and
   re-opened, with the ball the separation at :math:`t` needed, to keep
   vessel stubs out. For a solid nodule (slices up to twice the pixel size)
   the voxels nearer to a structure that touches it and continues away (a
   vessel, not the chest wall) than to the mask are that structure's: they
   are left out of the sum and of the regrown mask. A caller may give
   :math:`G_{in}` instead (``tissue_hu``: the same nodule's level at the
   other time point, :func:`nodulegrowth.cohort.share_tissue_level`);
   ``Segmentation.tissue_hu`` and ``tissue_level_source`` record the level
   used and where it was read.
10. **Vessel stubs** (slices up to twice the in-plane size): a piece of the
    mask that the leak test's ball (0.7 times the mask's largest inscribed
    radius) cannot reach, that protrudes at least max(1.5 mm, 2.25 voxels)
    beyond that ball's opening, touches a dense structure that goes on
    outside the mask, and reaches above the nodule's tissue level (+3 noise
    SD: a vessel is denser than ground glass) is a vessel stub that the
    opening of step 6 left (its ball is small when the seed sits off-centre
    in an elongated nodule) and is removed (:func:`_trim_vessel_stubs`). A
    solid nodule's vessel is no denser than the nodule, so nothing tells its
    stub from a lobe: there only the leak flags speak.
11. **The chest wall's flank** (ground-glass nodules on the wall, without a
    lung mask, equivalent radius at least the slice thickness and two
    pixels): at a ground-glass threshold the wall's blurred flank
    reaches about a millimetre into the lung and is taken for wall, with
    the nodule's side within it. CT blur is linear: the wall's share of the
    image, read from the wall away from the nodule as a function of the
    distance to its 50 % surface (a quadric fitted to that surface around
    the nodule), is subtracted and the nodule segmented again as an
    isolated one (:func:`_without_wall_flank`). With a lung mask, whose
    edge is the wall's surface, the flank inside the mask is counted as
    nodule instead, and this step is not taken.
12. **A vessel's flank** (solid and ground-glass nodules found juxtavascular,
    slices up to twice the pixel size): the partial-volume step splits the
    space round a vessel's contact by distance, which counts part of the
    vessel's blurred flank as nodule and loses the nodule's flank on that
    side, unequally at T1 and T2. The straight vessels among the attached
    structures (:func:`_tube_axes`) have their blurred excess, read from
    the vessel away from the nodule as a function of the distance to its
    axis, subtracted, and the nodule is segmented again as an isolated one
    (:func:`_without_vessels`); it stays ``juxtavascular`` and keeps a
    ``segmentation_leak`` flag of the first pass. The first segmentation is
    kept when the second reaches well beyond it (more than a tenth of its
    volume farther than max(1 mm, one pixel)): the vessel's residue.

QC flags (for the contract's ``qc_flags``): ``touches_pleura`` (the mask
touches the chest wall), ``touches_roi_border``, ``segmentation_leak`` (the mask
is much larger or longer than the nodule's inscribed sphere predicts, or
touches the VOI border, or its axial cross-section is more than 3:1
elongated -- a region grown along a vessel that the opening could not cut,
typically at voxels of about 3 mm -- or an attached structure that the
opening had to cut, or for a solid nodule any attached structure, is at
least 0.45 times as thick as the nodule, so that no opening separates it
reliably, or the nodule is found beside a structure while too small on
its pixel grid for any opening), ``seed_outside_nodule`` (the given seed
voxel is not in the final mask), ``low_contrast_nodule`` (contrast below 5 noise SD),
``tissue_level_uncertain`` (a nodule typed here whose blurred-ball fit, step
9, contradicts a uniform nodule of the mask's size: it needs at least twice
the contrast the deepest voxels show -- a nodule under about 3 mm, whose
volume may then read two to four times the truth, or a solid core in a
ground-glass halo thinner than the blur -- or, typed solid, its fitted level
is below three quarters of the way from the lung to water: a part-solid
nodule of a few millimetres measured as its core), ``thick_slices_for_size``
(the mask's volume-equivalent diameter is less than two slice thicknesses:
its volume and diameters rest on the partial volume of a few thick slices,
which the leak tests do not see through; on the benchmark's 2.5 and 5 mm
slices the scans so flagged measured a median |volume error| of 20 %, the
others 1 %; thin sections are the recommended remedy [3]_).

References
----------
.. [1] Kostis WJ, Reeves AP, Yankelevitz DF, Henschke CI. Three-dimensional
   segmentation and growth-rate estimation of small pulmonary nodules in
   helical CT images. IEEE Trans Med Imaging 2003;22:1259-1274 (threshold at
   the partial-volume midpoint, morphological opening to detach vessels,
   rolling-ball pleural separation).
.. [2] Kuhnigk JM, Dicken V, Bornemann L, et al. Morphological segmentation
   and partial volume analysis for volumetry of solid pulmonary lesions in
   thoracic CT scans. IEEE Trans Med Imaging 2006;25:417-434.
.. [3] Bankier AA, MacMahon H, Goo JM, et al. Recommendations for measuring
   pulmonary nodules at CT: a statement from the Fleischner Society.
   Radiology 2017;285:584-600 (measurements on thin sections).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

from . import _morph
from .errors import SegmentationError

__all__ = ["Segmentation", "segment_nodule", "joint_nodule_type", "voi_half_size_mm", "NODULE_TYPES", "LOCATIONS"]

NODULE_TYPES = ("solid", "part_solid", "ground_glass")
LOCATIONS = ("isolated", "juxtavascular", "juxtapleural")

_CONN6 = ndimage.generate_binary_structure(3, 1)
# A blurred step edge has a point-symmetric edge-spread function, so the
# equivalent radius moves as far outwards from the 50 % to the 15 % level as
# inwards from 50 % to 85 % (ratio 1 for any PSF width); a ground-glass rim
# adds its thickness to the outer side. 1.3 leaves room for curvature and
# grid quantization (0.95-1.2 measured on blurred solid spheres, PSF sigma
# 0.6-2 mm, 0.7-3.3 mm voxels).
_RIM_ASYMMETRY = 1.3
# The tail of a blurred solid edge 1 mm outside its 50 % boundary is
# Phi(-1 mm / sigma) of the contrast: 0.21 for a total in-plane sigma of
# 1.25 mm (a soft kernel's PSF of 1.2 mm plus the 0.5-voxel smoothing). A
# rim level (upper quartile of the ring 1-2.5 mm out) above 0.25 of the
# contrast is ground glass whatever the edge asymmetry, which cannot see a
# rim whose level is near the 50 % threshold: the project phantom's 7.4 mm
# part-solid nodule on the chest wall (rim at 31 % and 42 % of the
# contrast, asymmetry 1.1) was typed solid, -67 / -79 % volume. Blurred
# solid nodules on the benchmark grid reach 0.12 (1-1.25 mm slices) and
# 0.18 (2.5-5 mm). Only on fine, near-isotropic grids (in-plane <= 1 mm,
# slices <= twice that), where that derivation holds: a voxel of 3 mm blurs
# the edge by itself, and a thick slice averages sections of different
# sizes (the sample cohort's lobulated solid nodule, 3.3 mm voxels, has a
# ring at 25 % of the contrast).
_CLEAR_RIM = 0.25
# Below this half-thickness (mm) a ground-glass rim has no plateau under a
# typical CT blur (PSF sigma 0.5-0.8 mm plus the 0.5-voxel smoothing: about
# 2 sigma), so its level is read on its medial layer instead of its median.
_THIN_RIM_MM = 1.5
# opening ball radius as a fraction of the nodule's inscribed radius (step 6):
# a sphere survives it whole, vessels thinner than the ball come off
_OPENING_FACTOR = 0.45
# larger balls (times the inscribed radius) tried in turn when the mask
# opened by the first one still looks like a leak
_RETRY_FACTORS = (0.7, 0.9)
# how far (mm) beyond the nodule's reach a straight vessel is fitted
# (_straight_vessels): long enough for a direction and a radius, short
# enough that a vessel bent on a radius of 15 mm stays within a voxel of
# its chord
_TUBE_WINDOW_MM = 8.0
# below this largest inscribed radius (mm) a solid nodule has no interior
# plateau under the blur, and its tissue level is fitted (_blurred_ball_level)
_BALL_FIT_DEPTH_MM = 3.0
# the widest blur (Gaussian sigma, mm) read as CT blur when a blurred-ball
# fit's level is bounded: a soft reconstruction kernel (about 0.8 mm) with
# the segmentation's own half-voxel smoothing
_MAX_BLUR_SIGMA_MM = 1.1
# voxels deeper than this (mm) in a nodule lie beyond the blur: about three
# SDs of the widest in-plane blur of a thin-slice reconstruction (PSF SD up
# to about 0.8 mm) with the light smoothing (0.5 voxel) on top. Along z the
# slice thickness is the blur, hence max(this, slice thickness)
_PLATEAU_DEPTH_MM = 2.5
# a structure beside a nodule smaller than this (mm^3) is noise, not a
# vessel (a vessel of 1 mm diameter over 6 mm holds about 5 mm^3)
_MIN_VESSEL_MM3 = 5.0
# a nodule narrower than this many slice thicknesses (volume-equivalent
# diameter) is flagged thick_slices_for_size; see _segment
_MIN_SLICES_ACROSS = 2.0
# an opening ball smaller than this many pixels (radius) is no ball on the
# grid: no opening is made, and a structure beside such a nodule is kept out
# by density alone (flagged segmentation_leak, see _segment)
_MIN_OPENING_PIXELS = 0.75


@dataclass(frozen=True)
class Segmentation:
    """Result of :func:`segment_nodule`.

    Attributes
    ----------
    mask : numpy.ndarray of bool, shape (z, y, x)
        The whole nodule (solid and ground-glass parts), same shape as the VOI.
    nodule_type : str
        ``solid``, ``part_solid`` or ``ground_glass``.
    location : str
        ``isolated``, ``juxtavascular`` or ``juxtapleural``.
    solid_mask : numpy.ndarray of bool or None
        Solid component of a part-solid nodule, else None.
    threshold_hu : float
        HU threshold of the whole-nodule boundary.
    flags : tuple of str
        QC flags, see the module notes.
    seed_zyx : tuple of 3 int
        The (refined) seed voxel used for region growing.
    parenchyma_hu, core_hu : float
        Estimated lung parenchyma and nodule core levels (HU).
    solid_threshold_hu : float
        Threshold of the solid component (NaN unless part-solid).
    tissue_hu : float
        The nodule's outer tissue level :math:`G_{in}` (HU) that the
        partial-volume step divided by (step 9): read on the nodule, or the
        ``tissue_hu`` given to :func:`segment_nodule`; NaN when that step
        did not run.
    tissue_level_source : str
        Where ``tissue_hu`` was read: ``"plateau"`` (the interior beyond
        the blur of a larger nodule), ``"fit"`` (the blurred-ball fit of a
        small one), ``"deepest"`` (its deepest voxels), ``"deepest_narrow"``
        (the same, the sum kept narrow beside a vessel: the level, lowered by
        blur, offsets the edge's tail the sum misses), ``"rim"`` (the
        ground-glass rim of a part-solid nodule), ``"given"``; empty when the
        step did not run.
    """

    mask: np.ndarray = field(repr=False)
    nodule_type: str
    location: str
    solid_mask: np.ndarray | None = field(repr=False)
    threshold_hu: float
    flags: tuple = ()
    seed_zyx: tuple = ()
    parenchyma_hu: float = math.nan
    core_hu: float = math.nan
    solid_threshold_hu: float = math.nan
    tissue_hu: float = math.nan
    tissue_level_source: str = ""


# --------------------------------------------------------------------------
# helpers (pure)
# --------------------------------------------------------------------------
def _check_inputs(volume_hu, spacing_zyx, seed_zyx, lung_mask, nodule_type):
    vol = np.asarray(volume_hu)
    if vol.ndim != 3 or min(vol.shape) < 1:
        raise SegmentationError(f"volume_hu has shape {vol.shape}; pass a 3-D HU array (z, y, x)")
    if not np.issubdtype(vol.dtype, np.number):
        raise SegmentationError(f"volume_hu has dtype {vol.dtype}; pass HU values as numbers")
    vol = vol.astype(np.float32, copy=False)
    if not np.all(np.isfinite(vol)):
        raise SegmentationError("volume_hu contains NaN or inf; fill missing voxels (e.g. with -1000 HU) first")
    try:
        sp = np.asarray(spacing_zyx, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise SegmentationError(f"spacing_zyx={spacing_zyx!r} is not numeric; pass (z, y, x) in mm") from None
    if sp.size != 3 or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise SegmentationError(
            f"spacing_zyx={tuple(np.atleast_1d(sp).tolist())} is invalid; pass three positive voxel sizes (z, y, x) in mm"
        )
    try:
        s = np.asarray(seed_zyx, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise SegmentationError(f"seed_zyx={seed_zyx!r} is not numeric; pass a voxel index (z, y, x)") from None
    if s.size != 3 or not np.all(np.isfinite(s)):
        raise SegmentationError(f"seed_zyx={seed_zyx!r} must be three finite numbers (z, y, x)")
    si = np.round(s).astype(int)
    if np.any(si < 0) or np.any(si >= np.array(vol.shape)):
        raise SegmentationError(
            f"seed_zyx={tuple(s.tolist())} lies outside the VOI of shape {vol.shape}; "
            "check the point and the crop"
        )
    lm = None
    if lung_mask is not None:
        lm = np.asarray(lung_mask)
        if lm.shape != vol.shape:
            raise SegmentationError(
                f"lung_mask has shape {lm.shape} but volume_hu has {vol.shape}; resample it onto the VOI"
            )
        lm = lm != 0
    if nodule_type is not None and nodule_type not in NODULE_TYPES:
        raise SegmentationError(f"nodule_type={nodule_type!r} is unknown; use one of {', '.join(NODULE_TYPES)} or None")
    return vol, sp, tuple(int(v) for v in si), lm


def _near_isotropic(sp) -> bool:
    """Slices up to twice the in-plane voxel size (spacing ``sp`` (z, y, x), mm).

    There 3-D balls of a few voxels are resolved along z, and a slice does
    not average sections of very different sizes: the vessel and leak steps
    that use such balls run only there.
    """
    return float(sp[0]) <= 2.0 * float(min(sp[1], sp[2]))


def _equivalent_radius(mask: np.ndarray, sp) -> float:
    r"""Radius (mm) of the ball of the mask's volume: :math:`(3 n v / 4\pi)^{1/3}`, ``v`` the voxel volume."""
    return (3.0 * float(mask.sum()) * float(np.prod(sp)) / (4.0 * math.pi)) ** (1.0 / 3.0)


def _wall_side(wall: np.ndarray, sp, inplane: float) -> np.ndarray:
    """The chest wall with its blurred flank: voxels within max(1.5 mm, 2 voxels) of ``wall``."""
    return wall | (_distance_to(wall, sp) <= max(1.5, 2.0 * inplane))  # the distance is inf when no wall


def _ball_offsets(radius_mm: float, sp: np.ndarray) -> np.ndarray:
    """Integer offsets (n, 3) of an ellipsoidal ball of ``radius_mm`` on the grid."""
    r = np.maximum(np.floor(radius_mm / sp).astype(int), 0)
    g = np.mgrid[-r[0]:r[0] + 1, -r[1]:r[1] + 1, -r[2]:r[2] + 1].reshape(3, -1).T
    d = np.sqrt((((g * sp) ** 2).sum(1)))
    return g[d <= radius_mm + 1e-9]


def _values_in_ball(img: np.ndarray, center, radius_mm: float, sp: np.ndarray):
    off = _ball_offsets(radius_mm, sp) + np.asarray(center)
    ok = np.all((off >= 0) & (off < np.array(img.shape)), axis=1)
    off = off[ok]
    return off, img[off[:, 0], off[:, 1], off[:, 2]]


def _distance_to(mask: np.ndarray, sp) -> np.ndarray:
    """Distance (mm) from every voxel to the nearest voxel of ``mask``."""
    return _morph.distance_to(mask, sp)


def _opening(mask: np.ndarray, r_mm: float, sp) -> np.ndarray:
    """Morphological opening by a ball of radius ``r_mm`` (mm)."""
    return _morph.ball_opening(mask, r_mm, sp)


def _closing(mask: np.ndarray, r_mm: float, sp) -> np.ndarray:
    """Morphological closing by a ball of radius ``r_mm`` (mm).

    The mask is first extended beyond the VOI by replicating its border (the
    chest wall and the lung continue outside the crop); without it, a ball
    larger than the wall's thickness inside the VOI would close over the wall.
    """
    return _morph.ball_closing(mask, r_mm, sp, pad_edge=True)


def _inscribed_radius(mask: np.ndarray, sp) -> float:
    """Largest inscribed radius (mm) of ``mask`` (its largest distance to the background)."""
    return float(_morph.edt(np.pad(mask, 1), sp).max())


def _reference_opening(mask: np.ndarray, r_ref: float, sp, inplane: float) -> np.ndarray | None:
    """``mask`` opened by a ball of 0.7 ``r_ref`` (mm), the leak test's ball, or None.

    A convex nodule loses only its sharpest tips to that ball; what else it
    removes is attached. None when the grid does not resolve the erosion
    depth 0.3 ``r_ref`` (under one in-plane voxel ``inplane``, mm): a nodule
    a few coarse voxels across is eroded to a point by any ball bigger than
    a voxel and would always look leaky.
    """
    if 0.3 * r_ref < inplane:
        return None
    return _opening(mask, 0.7 * r_ref, sp)


def _component_at(mask: np.ndarray, seed, conn=_CONN6) -> np.ndarray:
    if not mask[seed]:
        return np.zeros_like(mask)
    lab, _ = ndimage.label(mask, structure=conn)
    return lab == lab[seed]


def _component_nearest(mask: np.ndarray, seed, sp) -> np.ndarray:
    """Component containing ``seed``, else the one nearest to it."""
    if mask[seed]:
        return _component_at(mask, seed)
    if not mask.any():
        return mask
    lab, _ = ndimage.label(mask, structure=_CONN6)
    d, idx = ndimage.distance_transform_edt(~mask, sampling=sp, return_indices=True)
    near = tuple(int(i[seed]) for i in idx)
    return lab == lab[near]


def _lung_stats(img: np.ndarray, lung: np.ndarray | None):
    """Parenchyma level and noise SD (HU) from the lung voxels of the VOI."""
    if lung is not None and lung.sum() >= 500:
        vals = img[lung]
        # the lung mask contains nodules and vessels; they are a minority, and the
        # Otsu split of the lung voxels keeps the median on the parenchyma peak
        if vals.size > 50 and np.ptp(vals) > 0:
            t = threshold_otsu(vals)
            low = vals[vals < t]
            if low.size >= 0.3 * vals.size:
                vals = low
    else:
        if np.ptp(img) == 0:
            raise SegmentationError("the VOI is uniform; it holds no nodule -- check the seed and the crop")
        t = threshold_otsu(img)
        vals = img[img < t]
    if vals.size < 50:
        raise SegmentationError(
            f"only {vals.size} lung voxels in the VOI; the seed does not seem to be in the lung -- check its coordinates"
        )
    # The parenchyma level is the mode of the lung class: when the VOI holds
    # little dense tissue, Otsu splits the lung's own noise distribution, and a
    # median of the lower class would be biased low. The noise SD comes from
    # the side below the mode, which dense tissue does not contaminate.
    lo, hi = np.percentile(vals, [0.5, 99.5])
    nb = int(np.clip((hi - lo) / 4.0, 16, 512))
    hist, edges = np.histogram(vals, bins=nb, range=(lo, hi))
    hist = ndimage.gaussian_filter1d(hist.astype(float), 1.5)
    i = int(np.argmax(hist))
    p = float(0.5 * (edges[i] + edges[i + 1]))
    below = vals[vals <= p]
    sigma = 1.4826 * float(np.median(p - below)) if below.size > 10 else 1.4826 * float(np.median(np.abs(vals - p)))
    return p, max(sigma, 1.0)


#: Largest VOI half-size (mm) the pipeline segments in: a 80 mm cube holds a
#: 30 mm nodule with its surroundings.
MAX_VOI_HALF_SIZE_MM = 40.0


def joint_nodule_type(type1: str, type2: str) -> str | None:
    """The type to segment both time points with when their typings disagree.

    A ground-glass rim seen around a solid core at one time point makes the
    nodule part-solid; at the other time point the rim may be too thin for the
    blur to show it, and the core alone passes for a solid nodule (-55 % volume
    on 6 mm part-solid phantoms in ``benchmarks/measurement.py``). Segmenting
    that time point as part-solid measures the same object at both. For a
    ground-glass nodule that developed a solid component, segmenting the
    ground-glass time point as part-solid changes nothing but the label (no
    core, so no rim step; flag ``no_solid_component_found``). A solid / ground-glass
    disagreement has no such rule and is only reported.

    Parameters
    ----------
    type1, type2 : str
        The nodule types found at T1 and T2 (:data:`NODULE_TYPES`).

    Returns
    -------
    str or None
        ``"part_solid"`` when exactly one of them is part-solid, else None.

    Raises
    ------
    SegmentationError
        A type not in :data:`NODULE_TYPES`.

    Examples
    --------
    >>> joint_nodule_type("solid", "part_solid"), joint_nodule_type("solid", "ground_glass")
    ('part_solid', None)
    """
    for t in (type1, type2):
        if t not in NODULE_TYPES:
            raise SegmentationError(f"nodule type {t!r} is unknown; use one of {', '.join(NODULE_TYPES)}")
    if type1 != type2 and "part_solid" in (type1, type2):
        return "part_solid"
    return None


def voi_half_size_mm(expected_diameter_mm: float | None = None, inplane_voxel_mm: float = 0.0) -> float:
    r"""Half-size (mm) of the cubic VOI in which to segment a nodule of a known size.

    .. math:: h = \min\big(\max(1.5\,d + 8,\ 20,\ 12\,h_{xy}),\ 40\big)

    with :math:`h_{xy}` the in-plane voxel size (mm; the parenchyma statistics
    and the rolling ball need some 12 voxels of context on each side, which
    at 3 mm voxels is the largest VOI) and
    :math:`d` the expected diameter (mm), e.g. the T1 measurement when the
    nodule is segmented at T2: the cube of side :math:`2h = 3d + 16` mm holds
    the nodule even if its diameter grew by half and the seed sits off its
    centre, with the margin of lung that the parenchyma estimate needs (the
    accuracy benchmark uses cubes of about :math:`2d + 12` mm). Without a
    size the largest VOI (40 mm) is used. Callers retry with the largest VOI
    when the mask touches the border (``touches_roi_border``). A smaller VOI
    is what makes the segmentation fast: its cost grows with the VOI's voxel
    count.

    Examples
    --------
    >>> voi_half_size_mm(8.0), voi_half_size_mm(30.0), voi_half_size_mm(None)
    (20.0, 40.0, 40.0)
    >>> voi_half_size_mm(8.0, inplane_voxel_mm=0.7), round(voi_half_size_mm(8.0, inplane_voxel_mm=3.3), 1)
    (20.0, 39.6)
    """
    if expected_diameter_mm is None or not math.isfinite(float(expected_diameter_mm)) \
            or expected_diameter_mm <= 0:
        return MAX_VOI_HALF_SIZE_MM
    h = max(1.5 * float(expected_diameter_mm) + 8.0, 20.0, 12.0 * float(inplane_voxel_mm))
    return float(min(h, MAX_VOI_HALF_SIZE_MM))


# --------------------------------------------------------------------------
# the segmentation
# --------------------------------------------------------------------------
def segment_nodule(volume_hu, spacing_zyx, seed_zyx, *, lung_mask=None, nodule_type=None,
                   tissue_hu: float | None = None) -> Segmentation:
    r"""Segment the nodule at a seed point in a CT volume of interest.

    The whole-nodule boundary is the iso-surface at the midpoint between the
    parenchyma level :math:`P` and the nodule's outer tissue level :math:`G`
    (its core :math:`C` for solid and ground-glass nodules, the ground-glass
    rim for part-solid ones), i.e. the 50 % partial-volume level:

    .. math:: t = \frac{P + G}{2}, \qquad
              \mathrm{mask} = \mathrm{CC}_{\mathrm{seed}}\big(\{ I_\sigma \ge t \}
              \setminus \mathrm{wall}\big) \circ B_{r_o}

    with :math:`I_\sigma` the image smoothed by a Gaussian of 0.5 voxel, CC the
    6-connected component of the seed, wall the tissue outside the (closed)
    lung and :math:`\circ B_{r_o}` the opening by a ball of radius
    :math:`r_o = 0.45\,r_{in}` (:math:`r_{in}` the inscribed radius at the
    seed). The threshold is finally moved so that the mask volume equals the
    partial-volume volume (step 9 of the module notes), which removes the
    blur-induced under-segmentation of small nodules; ``threshold_hu`` is that
    final value. See the module notes for every step and the references [1]_, [2]_.

    Parameters
    ----------
    volume_hu : array_like of float, shape (z, y, x)
        The VOI in HU (the pipeline passes a cube of about 80 mm).
    spacing_zyx : sequence of 3 float
        Voxel size (z, y, x) in mm; designed for 0.5-1.5 mm in-plane and
        0.6-5 mm slices.
    seed_zyx : sequence of 3 float
        Seed point as a (fractional) voxel index ``(z, y, x)`` into the VOI.
    lung_mask : array_like of bool, shape (z, y, x), optional
        Lung mask of the VOI (juxtapleural nodules inside); improves the
        parenchyma estimate and the chest-wall separation. Pass it for a
        nodule near the chest wall: without it, the wall is found by a
        rolling-ball closing of the air around the nodule, which misses part
        of a large faint nodule on the wall (project phantom, a 10.8 mm
        ground-glass nodule on the wall: -60 % volume without, -1.5 % with
        the mask of :func:`nodulegrowth.lung.lung_mask`), and the side of a
        ground-glass nodule against the wall; the latter is regained for
        nodules of 5 mm and more by subtracting the wall's blurred flank
        (step 11), but less well than with the mask (project phantom, 24
        scans of ground-glass nodules of 7-22 mm on the wall: median error
        -13.9 % without the mask before step 11, -5.3 % with it, -1.2 %
        with the mask).
    nodule_type : {"solid", "part_solid", "ground_glass"}, optional
        Force the nodule type instead of detecting it.
    tissue_hu : float, optional
        Force the outer tissue level :math:`G_{in}` (HU) of the
        partial-volume step (step 9) instead of reading it on the nodule:
        the level read on the same nodule at the other time point, so that
        both are measured at one level
        (:func:`nodulegrowth.cohort.share_tissue_level`). It must lie above
        the parenchyma around the nodule, or the step is skipped.

    Returns
    -------
    Segmentation

    Raises
    ------
    SegmentationError
        Bad arguments, a seed outside the VOI, no lung around the seed, or no
        structure denser than the parenchyma at the seed.

    Examples
    --------
    A 6 mm solid sphere (0 HU) in lung (-850 HU) on a 0.7 mm grid:

    >>> import numpy as np
    >>> z, y, x = (np.mgrid[:40, :40, :40] - 20.0) * 0.7
    >>> vol = np.where(x**2 + y**2 + z**2 <= 9.0, 0.0, -850.0)
    >>> seg = segment_nodule(vol, (0.7, 0.7, 0.7), (20, 20, 20))
    >>> seg.nodule_type, seg.location, seg.flags
    ('solid', 'isolated', ())
    >>> bool(abs(seg.mask.sum() * 0.7**3 / (4 / 3 * np.pi * 27) - 1) < 0.1)
    True
    """
    vol, sp, seed0, lung = _check_inputs(volume_hu, spacing_zyx, seed_zyx, lung_mask, nodule_type)
    if tissue_hu is not None:
        try:
            tissue_hu = float(tissue_hu)
        except (TypeError, ValueError):
            raise SegmentationError(f"tissue_hu={tissue_hu!r} is not a number; pass a level in HU or None") from None
        if not -1000.0 < tissue_hu < 3000.0:
            raise SegmentationError(f"tissue_hu={tissue_hu} HU is not a tissue level; pass one between -1000 and "
                                    "3000 HU (Segmentation.tissue_hu of the other time point) or None")
    try:
        seg = _segment(vol, sp, seed0, lung, nodule_type, refine_seed=True, level=tissue_hu)
    except SegmentationError as first:
        # The densest voxel near a faint nodule on the chest wall can be in
        # the wall, which the region growing leaves out: nothing is grown
        # from it. Grow from the click (independent benchmark sample: 2 of
        # 96 ground-glass nodules on the wall, 1.25 mm slices, failed so).
        try:
            return _segment(vol, sp, seed0, lung, nodule_type, refine_seed=False, in_structure=True, level=tissue_hu)
        except SegmentationError:
            pass
        # The centre of a cavitated nodule lies in its cavity, farther than
        # the 2 mm of the seed refinement from the wall around it
        try:
            around = _seed_around_lucency(vol, sp, seed0, lung)
        except SegmentationError:
            around = None
        if around is not None:
            try:
                seg = _segment(vol, sp, around, lung, nodule_type, refine_seed=False, in_structure=True,
                               level=tissue_hu)
            except SegmentationError:
                raise first from None
            if seg.mask[seed0]:
                return seg
        raise first from None
    outside = "seed_outside_nodule" in seg.flags
    # (a leak only where the leak tests hold, slices up to twice the pixel
    # size: on 2.5-5 mm slices a click's segmentation without the flag is no
    # evidence of a sound one; without that limit here and in the vessel
    # level of grow(), two 4-8 mm nodules on the default grid's 5 mm slices
    # went from flagged leaks to +59 and +94 % without a flag)
    leaked = "segmentation_leak" in seg.flags and _near_isotropic(sp)
    if (outside or leaked) and seg.seed_zyx != seed0:
        # The refined seed is the densest voxel near the click. Beside the
        # chest wall or a vessel that can be the wall or the vessel rather than
        # a faint nodule; when the click itself lies in a structure, that
        # structure is the nodule the reader marked. So too when what grew
        # from the refined seed leaks and the click's own structure, sound,
        # does not hold that seed: a faint ground-glass nodule touching a
        # vessel, whose refined seed lay in the vessel (benchmark default
        # grid, a 4.4 mm nodule: the vessel, +321 %, flagged; from the click
        # -7 %). A click beside a small nodule grows that same nodule, seed
        # and all, and leaves the refined segmentation in place.
        try:
            at_click = _segment(vol, sp, seed0, lung, nodule_type, refine_seed=False, in_structure=True,
                                level=tissue_hu)
        except SegmentationError:
            at_click = None
        if at_click is not None and at_click.mask[seed0] and "segmentation_leak" not in at_click.flags \
                and (outside or not at_click.mask[seg.seed_zyx]):
            seg = at_click
    return seg


def _segment(vol, sp, seed0, lung, nodule_type, *, refine_seed: bool, in_structure: bool = False,
             wall_subtracted: bool = False, level: float | None = None,
             vessel_subtracted: bool = False) -> Segmentation:
    """The body of :func:`segment_nodule` on checked inputs; ``refine_seed``
    allows the move to the densest voxel within 2 mm (step 1); ``in_structure``
    (the alternatives to the refined seed) requires the seed's core to stand
    3 SDs of the raw noise above the lung as well: a click 1 mm outside a
    solid nodule reads its blurred edge, which is not a structure of its own;
    ``level`` is the forced tissue level of step 9 (``tissue_hu``);
    ``wall_subtracted`` / ``vessel_subtracted`` mark the second pass on an
    image with the wall's / vessels' flank subtracted (steps 11 and 12 are
    not taken again)."""
    flags: list[str] = []
    inplane = float(min(sp[1], sp[2]))
    # the leak retest, the clear-rim rule and the vessel steps hold only there
    near_isotropic = _near_isotropic(sp)
    # light smoothing suppresses noise for region growing without moving a
    # convex boundary; no smoothing across thick slices
    sig = [0.5 if sp[0] <= 1.5 else 0.0, 0.5, 0.5]
    sm = ndimage.gaussian_filter(vol, sig, mode="nearest")

    P, sigma = _lung_stats(vol, lung)
    # noise of the smoothed image, for contrast tests
    sigma_s = sigma / math.sqrt(max(1.0, (1 + 2 * sig[0]) * (1 + 2 * sig[1]) * (1 + 2 * sig[2])))

    # --- seed refinement --------------------------------------------------
    off, vals = _values_in_ball(sm, seed0, max(2.0, 1.5 * inplane), sp)
    local_max = float(vals.max())
    seed = seed0
    if refine_seed and sm[seed0] < P + 0.5 * (local_max - P):
        seed = tuple(int(v) for v in off[int(np.argmax(vals))])
    _, core_vals = _values_in_ball(sm, seed, max(1.5, inplane), sp)
    # without refinement the click sits in a faint nodule beside something
    # denser (wall, vessel) that reaches into the ball: its median, not its
    # upper tail, is the nodule's
    C = float(np.percentile(core_vals, 95 if refine_seed else 50))
    # C is read on the smoothed image, so its noise is sigma_s; three SDs of
    # the raw noise on the refined seed too turned away faint nodules in
    # noisy scans (a 27 mm ground-glass nodule with 166 HU of contrast under
    # noise SD 60 HU)
    if C - P < (max(3.0 * sigma, 5.0 * sigma_s) if in_structure else 5.0 * sigma_s):
        raise SegmentationError(
            f"no structure denser than the lung at seed {tuple(seed0)} (core {C:.0f} HU vs lung {P:.0f} HU); "
            "check the seed point"
        )
    if C - P < 5.0 * sigma:
        flags.append("low_contrast_nodule")
    water = 0.0  # the HU scale defines water as 0 HU; solid tissue is near it
    solid_level = P + 0.5 * (water - P)

    # --- region growing with wall and vessel separation --------------------
    def grow(t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        dense = sm >= t
        if not dense[seed]:
            return np.zeros_like(dense), dense, np.zeros_like(dense), 0.0
        comp0 = _component_at(dense, seed)
        # pockets below the threshold enclosed by the region (noise in a
        # faint nodule at a threshold close to its level) are not lung: as
        # the "nearest background" they made the inscribed radius small and
        # the "air around the nodule" a pocket of a few voxels, so that
        # everything else, the lung included, was taken for chest wall (a
        # 22 mm part-solid nodule on the wall, 1 mm slices, independent
        # benchmark sample: its ground-glass regrowth failed, -86 % volume)
        solid0 = ndimage.binary_fill_holes(comp0)
        d_box = _morph.edt(_pad_box(solid0, seed, sp), sp)
        r_in = max(float(d_box[_box_center(solid0, seed, sp)]), inplane)
        # chest wall: outside the lung (mask and/or the closed air-like region)
        # only the air around the nodule (its lung) is closed: air outside the
        # body or in the other lung would let the ball bridge a chest wall
        # thinner than its diameter and put the wall "inside the lung"
        air = _air_around(~dense & ~solid0, seed, r_in + max(2.0, 2.0 * inplane), sp)
        lung_closed = _closing(air, 2.5 * r_in + 3.0, sp)
        inside = lung_closed if lung is None else (lung_closed | lung)
        wall = ~inside
        cand = dense & ~wall
        if t < solid_level:
            # the nodule's largest inscribed ball (the seed may be off-centre)
            r_nod = max(r_in, float(d_box.max()))
            # vessels are denser than ground glass; a thin one is blurred below
            # the solid level and breaks up there, so the pieces near the
            # nodule would not reach far. Structures clearly denser than this
            # nodule's own core count as well.
            vessel_level = min(solid_level, C + max(5.0 * sigma_s, 0.25 * (C - P)))
            if t >= vessel_level:  # the seed's own region is that dense: not ground glass
                vessel_level = solid_level
            # the chest wall is not a vessel (and is excluded anyway): a solid
            # core next to it must not reach "far" through it. Nor its blurred
            # flank, which lies inside the lung mask: at a level just above a
            # faint nodule's own density, the noisy nodule joins the flank
            # and is cut away with it (a 10.8 mm ground-glass nodule on the
            # chest wall, project phantom: -30 % volume, -60 % without a lung
            # mask; -1 % with the flank left out).
            wall_side = _wall_side(wall, sp, inplane)
            sm_lung = np.where(wall_side, -np.inf, sm)
            far = _far_reaching_solid(sm_lung, vessel_level, seed, sp, 2.0 * r_nod + 2.0,
                                      dilate=vessel_level >= solid_level)
            if far[seed] and vessel_level < solid_level and near_isotropic:
                # the seed's own blob joins a far-reaching structure at that
                # level: a faint nodule touching a vessel, its denser part
                # blurred into the vessel's flank; the fallback below would
                # then exclude no vessel at all. The lowest of five levels up
                # to the solid level at which the two part is used instead.
                # Only where the leak tests hold (slices up to twice the pixel
                # size), see segment_nodule
                for lv in np.linspace(vessel_level, solid_level, 6)[1:]:
                    far = _far_reaching_solid(sm_lung, float(lv), seed, sp, 2.0 * r_nod + 2.0,
                                              dilate=lv >= solid_level)
                    if not far[seed]:
                        break
            cand &= ~far
            if not cand[seed]:
                cand = dense & ~wall
        comp = _component_at(cand, seed)
        if not comp.any():  # seed sits in what looks like wall: keep the raw component
            comp = comp0
        return comp, dense, wall, r_in

    def separate(comp: np.ndarray, r_in: float, factor: float) -> np.ndarray:
        r_o = factor * r_in
        if r_o < _MIN_OPENING_PIXELS * inplane:
            return comp
        # a lucency inside the nodule (bubble, air bronchogram, cavity) is
        # part of it: filled first, the thin shell around it is not opened away
        opened = _opening(ndimage.binary_fill_holes(comp), r_o, sp)
        if not opened.any():
            return comp
        return _component_nearest(opened, seed, sp)

    def looks_leaky(m: np.ndarray) -> bool:
        v = m.sum() * float(np.prod(sp))
        r_v = (3.0 * v / (4.0 * math.pi)) ** (1.0 / 3.0)
        sl = ndimage.find_objects(m.astype(np.uint8))[0]
        ext = max((s.stop - s.start) * d for s, d in zip(sl, sp))
        # reference: the largest inscribed ball of the mask (the nodule's, not a
        # vessel's). Not the seed's distance to the background of the grown
        # region, which the vessels beside a nodule enlarge: a lobulated
        # part-solid nodule between two vessels (project phantom, seed 13)
        # then looked leaky against it, and the larger balls of the retries
        # cut its lobes off (-45 %, now -28 %)
        sub = np.pad(m[sl], 1)
        r_ref = _inscribed_radius(sub, sp)
        # an ellipsoid of aspect 2.5 has r_v / r_in = 2.5^(1/3) = 1.36 and extent
        # 5 r_in; a vessel or wall carried along exceeds one of them. A false
        # alarm only costs a look; a silent leak costs a wrong volume.
        # the distance map only takes grid values (h, sqrt(2) h, 2 h, ...): a
        # blob of a few 3 mm voxels without an interior voxel has r_ref = h
        # whatever its true inscribed radius (up to 1.5 h). Judge the volume
        # against the largest radius the grid allows, so that quantization
        # alone is not taken for a leak (and then "repaired" by an opening
        # that halves the nodule).
        r_hi = r_ref + 0.5 * inplane
        if r_v > 1.8 * r_hi or ext > 5.0 * r_ref + 2.0 * float(sp[0]):
            return True
        # a vessel about as thick as a small nodule survives the opening; it
        # shows as a large part of the mask outside the opening by a ball of
        # 0.7 r_ref (a convex nodule loses only its sharpest tips to it)
        opened = _reference_opening(sub, r_ref, sp, inplane)
        if opened is None:
            return False
        return bool(opened.any()) and (sub & ~opened).sum() > 0.3 * sub.sum()

    def segment_at(t: float):
        comp, dense, wall, r_in = grow(t)
        if not comp.any():
            return comp, comp, dense, wall, r_in, False, _OPENING_FACTOR
        m = separate(comp, r_in, _OPENING_FACTOR)
        leak = looks_leaky(m)
        used = _OPENING_FACTOR
        # A vessel about as thick as the nodule survives any ball that
        # leaves the nodule whole, and a larger ball erodes the nodule to a
        # core and keeps a piece of the vessel beside it, which the
        # partial-volume step then reads as the nodule's level and edge
        # (benchmark scenes, 4-6 mm solid nodules beside 1-1.5 mm-radius
        # vessels, 1-1.25 mm slices, 80 scans: 14 over +50 %, up to +1600 %,
        # all flagged). A straight vessel that passes the nodule is found
        # beyond it and taken out along its axis (_straight_vessels) before
        # any larger ball is tried: the same 80 scans, none over +25 %
        # (median |error| 7 -> 3 %). Only where balls are resolved along z,
        # like the other vessel steps.
        sep = comp  # the region the openings work on
        if leak and near_isotropic:
            tubes = _straight_vessels(comp, seed, r_in, sp, inplane)
            if tubes.any():
                rest = _component_at(comp & ~tubes, seed)
                m2 = separate(rest, r_in, _OPENING_FACTOR) if rest.any() else rest
                if m2.any() and m2[seed] and not looks_leaky(m2):
                    m, leak, sep = m2, False, rest
        for factor in _RETRY_FACTORS:
            if not leak:
                break
            m2 = separate(comp, r_in, factor)
            if m2.any() and m2[seed]:
                m, used = m2, factor
                leak = looks_leaky(m)
        # A vessel about as thick as the ball is cut only where the noise
        # thins it, a few millimetres out: the stub left on the mask is too
        # small for the leak test, yet it is taken for nodule (and its blur
        # for partial volume) all the way to the cut. What the opening cut
        # off is measured where it meets the mask; at least as thick as the
        # ball, the next larger ball is tried, kept when the seed stays in
        # and the mask does not look leaky (4-8 mm solid nodules beside
        # 0.6-1.5 mm-radius vessels, 1 mm slices: a 5.8 mm nodule +40 %
        # unflagged; +6 % with this and the vessel split of the partial-
        # volume step). Only where balls are resolved along z.
        if near_isotropic and not leak and (sep & ~m).any():
            for factor in _RETRY_FACTORS:
                if factor <= used:
                    continue
                d_m = _distance_to(m, sp)
                r_v = _attached_radius(_attached_structures(sep & ~m, d_m, inplane), d_m, sp)
                if r_v < used * r_in:
                    break
                m2 = separate(sep, r_in, factor)
                if not (m2.any() and m2[seed]) or looks_leaky(m2):
                    break
                m, used = m2, factor
        m = ndimage.binary_fill_holes(m)
        return m, comp, dense, wall, r_in, leak, used

    t = P + 0.5 * (C - P)
    mask, comp, dense, wall, r_in, leak, factor = segment_at(t)
    if not mask.any():
        raise SegmentationError(f"region growing from seed {tuple(seed0)} found nothing at {t:.0f} HU; check the seed")

    ntype = nodule_type
    solid_mask = None
    t_solid = math.nan
    G = C
    core = None  # the solid core, when a ground-glass rim was found around it
    # --- an outer tissue layer (step 7) --------------------------------------
    # A rim denser than the boundary threshold (P + C) / 2 is inside the mask
    # and not seen by the ring outside it: the boundary sat on the rim's
    # inner flank, and the partial-volume step, reading the tissue level at
    # the core, moved it further in (15 mm nodule, -350 HU rim: -39 % at
    # c659a8e). A rim at the threshold itself is split by the noise and opened
    # away, and one just below it is left out of the ring that _rim_level
    # reads, as "dense" (24 mm, -400 HU rim: -87 %). Hence the depth profile
    # of the nodule grown at 35 % of the contrast, which holds any rim denser
    # than the halo test's clear level (step 7b).
    # Like the halo test, only round a solid core: a ground-glass core has
    # no denser centre to look past (and the extra region growing is
    # saved: 459 -> 433 ms per thin-slice scan, against 318 ms without step 7)
    if C >= solid_level and nodule_type in (None, "part_solid", "solid"):
        m_low = segment_at(P + 0.35 * (C - P))[0]
        plateau_level = _outer_plateau_level(sm, m_low if m_low.any() else mask, sp, P, inplane)
        # a layer below the threshold and below halfway to water lies outside
        # the mask: the halo test (step 7b) measures it there, and better
        # (the profile's run takes in some of the core's blurred flank: 8-50
        # HU high on five 9-18 mm part-solid benchmark nodules with -520 to
        # -590 HU rims, volume -4 to -15 % where the halo test had -2 to
        # +1 %). The halo test takes no rim denser than halfway to water:
        # such a layer is measured here, below the threshold or not (a 28 mm
        # nodule, -421 HU rim, threshold -387 HU: -82 % without)
        if plateau_level is not None and plateau_level >= min(t, solid_level):
            t_all = P + 0.5 * (plateau_level - P)
            m_all, comp_all, dense_all, wall_all, r_all, leak_all, f_all = segment_at(t_all)
            if m_all.any() and m_all.sum() >= mask.sum() and not (leak_all and not leak):
                G = plateau_level
                core = m_all & (sm >= 0.5 * (plateau_level + C))
                mask, comp, dense, wall, r_in, leak, t, factor = (m_all, comp_all, dense_all, wall_all, r_all,
                                                                  leak_all, t_all, f_all)
    # --- ground-glass rim around a solid core ------------------------------
    # (core is set here only by step 7, which then stands in for this one)
    if core is None and C >= solid_level and nodule_type in (None, "part_solid"):
        rim_level = _rim_level(sm, mask, dense, wall, sp, inplane)
        d_mask = _distance_to(mask, sp)
        # a rim must stand clearly above both the noise and the blur tail of a
        # solid edge (below 10 % of the contrast at 1 mm for a PSF sigma <= 0.8 mm)
        rim_needed = P + max(4.0 * sigma_s, 0.15 * (C - P))
        fine_grid = near_isotropic and inplane <= 1.0
        # ... and, since the blur tail grows with the PSF, the edge must not
        # be a symmetric (blurred step) edge: see _edge_asymmetry. A rim
        # above _CLEAR_RIM of the contrast is no blur tail whatever that test
        # says (it cannot tell a rim near the 50 % level from the edge)
        clear_rim = fine_grid and rim_level is not None and rim_level >= P + _CLEAR_RIM * (C - P)
        rim_seen = rim_level is not None and rim_level >= rim_needed \
            and (clear_rim
                 or _edge_asymmetry(sm, wall, mask, P, C, sp, inplane=inplane, d_mask=d_mask,
                                    others=_attached_structures(dense & ~mask & ~wall, d_mask, inplane,
                                                                min_reach_mm=1.5 * inplane))
                 >= _RIM_ASYMMETRY)
        if rim_level is not None and (rim_seen or nodule_type == "part_solid") \
                and rim_level < solid_level and rim_level > P + 3.0 * sigma_s:
            G = rim_level
            t_all = P + 0.5 * (G - P)
            m_all, comp_all, dense_all, wall_all, r_all, leak_all, f_all = segment_at(t_all)
            # refine the ground-glass level on the regrown nodule, away from the core;
            # half-thickness of the rim: distance to the core and to the lung
            half = np.where(m_all & ~mask, np.minimum(d_mask, _morph.edt(m_all, sp)), 0.0)
            refined = None
            if 0.0 < half.max() < _THIN_RIM_MM:
                # a rim thinner than the blur has no plateau: its median is
                # pulled towards the lung, which lowers the threshold and
                # over-segments (median |error| 15 %, bias +8 %, on twelve 6-10 mm
                # part-solid phantoms);
                # its medial layer, farthest from core and lung, is the least
                # blurred part of it
                refined = float(np.median(sm[half >= 0.8 * half.max()]))
            else:
                gg = m_all & ~ndimage.binary_dilation(mask, _CONN6, iterations=2)
                gg &= ndimage.binary_erosion(m_all, _CONN6)
                if gg.sum() >= 10:
                    refined = float(np.median(sm[gg]))
            if refined is not None:
                G = refined
                t_all = P + 0.5 * (G - P)
                m_all, comp_all, dense_all, wall_all, r_all, leak_all, f_all = segment_at(t_all)
            if m_all.any() and m_all.sum() > mask.sum():
                core = mask & m_all
                mask, comp, dense, wall, r_in, leak, t, factor = (m_all, comp_all, dense_all, wall_all, r_all,
                                                                  leak_all, t_all, f_all)
    # --- nodule type --------------------------------------------------------
    # an outer layer (rim) round a denser core is ground glass up to three
    # quarters of the way from the lung to water (about -210 HU; ground-glass
    # attenuation reaches -300 HU and above), even when denser than halfway
    # (a -420 or -350 HU rim round a solid core: part-solid); soft tissue
    # round a calcified core is not, and leaves the nodule solid
    if G >= solid_level and not (core is not None and G < P + 0.75 * (water - P)):
        if ntype is None:
            ntype = "solid"
    else:
        sm_mask, t_s = _solid_component(sm, mask, G, sp, inplane)
        if sm_mask is None and core is not None and core.any():
            # a solid core (C above the solid level) with a ground-glass rim
            # around it is part-solid by definition. The core of a small
            # nodule is blurred below halfway from the rim level to water, the
            # test of _solid_component: keep the core segmented at (P + C) / 2.
            sm_mask, t_s = core, P + 0.5 * (C - P)
        if ntype is None:
            ntype = "part_solid" if sm_mask is not None else "ground_glass"
        if ntype == "part_solid" and sm_mask is not None:
            solid_mask, t_solid = sm_mask, t_s
    if ntype == "part_solid" and solid_mask is None:
        flags.append("no_solid_component_found")

    # --- partial-volume consistent boundary ---------------------------------
    # Blur moves the 50 % iso-surface of a convex object inwards (by about
    # sigma^2 / R for a sphere), so a midpoint threshold under-segments small
    # nodules. The integral of the blurred image is preserved by the blur,
    # however: the partial-volume volume is unbiased. The final threshold is
    # the one whose mask has that volume, clamped to the central half of the
    # edge contrast.
    # The blurred flank of a vessel beside a solid nodule is as dense as the
    # nodule's own and lies within the partial-volume region; at the lower
    # threshold the vessel widens and the regrown mask takes it in (benchmark
    # default grid, a 5.8 mm nodule on a 1.2 mm-radius vessel: +14 %,
    # unflagged; +3 % with the split). The space is split between the two by
    # distance: what lies nearer to a structure that continues away from the
    # mask than to the mask is the vessel's, and is left out of the sum and
    # of the regrown mask. Only for a solid nodule: a vessel beside ground
    # glass is denser than it, wider at its threshold than it is, and the
    # split then cut into the nodule (4-10 mm ground glass, benchmark default
    # grid: -9 to -38 % on eight scans). Only where balls are resolved along
    # z, like the other vessel steps. The chest wall's blurred flank inside
    # the lung is no vessel: what touches it is left alone (solid nodules on
    # the wall, independent phantoms: -0.6 to -3.5 % volume when split off).
    vessel_zone = None
    if ntype == "solid" and near_isotropic:
        d_m = _distance_to(mask, sp)
        others = dense & ~mask & ~wall
        if wall.any() and others.any():
            lab, _ = ndimage.label(others, structure=_CONN6)
            on_wall = np.unique(lab[others & _wall_side(wall, sp, inplane)])
            others &= ~np.isin(lab, on_wall[on_wall > 0])
        attached = _attached_structures(others, d_m, inplane)
        if attached.any():
            vessel_zone = (_distance_to(attached, sp) < d_m) & ~mask
    # a nodule regrown round a denser core (step 7 or 7b) has two tissues
    # whatever its type: its core must not count more than once
    fit_notes: dict = {}  # what the blurred-ball fit says of the nodule (flag below)
    t_pv = _pv_threshold(sm, mask, dense, wall, G, sp, inplane, two_tissue=ntype == "part_solid" or core is not None,
                         comp=comp, fit_ball=ntype in ("solid", "ground_glass"), fit_beside_vessels=ntype == "solid",
                         threshold=t, exclude=vessel_zone, notes=fit_notes, level=level)
    if t_pv is not None and abs(t_pv - t) > 1e-6:
        # structures that were not part of the grown region at t (vessels
        # cut off as far-reaching solid, neighbours) stay out: at the lower
        # threshold their blurred flanks would join the nodule again
        blocked = dense & ~comp & ~mask
        allowed = _near(mask, sp, inplane) if vessel_zone is None else _near(mask, sp, inplane) & ~vessel_zone
        comp_pv = _component_at((sm >= t_pv) & ~wall & ~blocked & allowed, seed)
        if comp_pv.any():
            filled = ndimage.binary_fill_holes(comp_pv)
            # a lower threshold thickens the vessel stubs again: re-open with the
            # ball the separation at t needed, reconstructing one voxel so the
            # opening shaves no surface. When the separation at t needed a
            # larger ball than the first (a vessel about as thick as that
            # ball), the lower threshold thickens that vessel and the regrown
            # mask may need a larger ball still: it must pass the leak test
            # the mask at t passed, or the mask at t is kept (4-6 mm
            # juxtavascular solid nodule, 1 mm slices, re-opened with the
            # first ball: +61 % volume, +7 mm long axis, unflagged). Only on
            # near-isotropic voxels (slices up to twice the in-plane size):
            # on 2.5-5 mm slices the leak test, whose balls are not resolved
            # along z, is no evidence of a vessel; there it calls sound
            # regrown masks leaky and the larger balls erode them (quick
            # benchmark grid: -30 to -55 % volume, 4 nodules), so the first
            # ball is used as before.
            first = factor if near_isotropic else _OPENING_FACTOR
            retest = near_isotropic and factor > _OPENING_FACTOR
            # what the grown region held beyond a voxel of the mask at t (the
            # far parts of vessels the opening cut) stays out at any ball
            cut_off = comp & ~mask & ~ndimage.binary_dilation(mask, _CONN6)
            balls = (first,) + (tuple(f for f in _RETRY_FACTORS if f > first) if retest else ())
            for f_o in balls:
                grown = filled.copy()
                r_o = f_o * r_in
                if r_o >= _MIN_OPENING_PIXELS * inplane:
                    opened = _opening(grown, r_o, sp)
                    if opened.any():
                        grown &= ndimage.binary_dilation(opened, _CONN6)
                grown = _component_nearest(grown & ~cut_off, seed, sp)
                if not retest:
                    kept = grown.any()
                else:
                    # a larger ball that erased the nodule leaves its vessel:
                    # the seed must stay in
                    kept = bool(grown[seed]) and (leak or not looks_leaky(grown))
                if kept:
                    mask, t = grown, float(t_pv)
                    if solid_mask is not None:
                        solid_mask = solid_mask & mask
                    break

    # --- vessel stubs ---------------------------------------------------------
    # only where 3-D balls are resolved along z (the leak test's condition);
    # a faint vessel beside a flat ground-glass nodule clicked off-centre kept
    # a stub (benchmark default grid, a 10 mm nodule on 1.25 mm slices: +18 %
    # volume, mean diameter +2.4 mm; +1 % after)
    if near_isotropic:
        mask = _trim_vessel_stubs(mask, (sm >= t) & ~mask & ~wall, sm, G + 3.0 * sigma_s, seed, sp, inplane)
        if solid_mask is not None:
            solid_mask = solid_mask & mask

    # --- location and flags -------------------------------------------------
    near = ndimage.binary_dilation(mask, ndimage.generate_binary_structure(3, 3))
    location = "isolated"
    if (near & wall & dense).any():
        location = "juxtapleural"
        flags.append("touches_pleura")
    else:
        # juxtavascular: a dense non-wall structure attached to the nodule (cut
        # off by the opening) or passing within about a voxel of its surface
        # (blur and thick slices may hide a narrow contact)
        d_mask = _distance_to(mask, sp)
        attached = _attached_structures((sm >= t) & ~mask & ~wall, d_mask, inplane)
        if attached.any():
            location = "juxtavascular"
            # only what the opening had to cut (it grew with the nodule); a
            # vessel kept out by its density is separated whatever its thickness
            cut = attached & comp
            if cut.any() and _thick_attachment(mask, cut, d_mask, sp):
                leak = True
            elif ntype == "solid" and _thick_attachment(mask, attached, d_mask, sp):
                # a solid nodule's vessel is as dense as the nodule: nothing
                # but the opening keeps it out, and below the threshold of
                # the region growing a thin one is not in the grown region
                # (so not "cut") yet is taken in by the partial-volume step
                # (test phantom, a 4.7 mm nodule on a 0.9-1.0 mm-radius
                # vessel: +30 to +42 % and unflagged without this test before
                # the blurred-ball fit; with it one such case is still +42 %,
                # flagged by this test)
                leak = True
            elif factor * r_in < _MIN_OPENING_PIXELS * inplane:
                # the nodule is too small on this grid for any opening (its
                # ball under _MIN_OPENING_PIXELS, see separate): nothing but
                # density kept the structure out, and on coarse pixels its blurred
                # flank reaches the nodule's level. Benchmark, 1-1.25 mm
                # slices: on 1.5 mm pixels 14 scans more flagged, 5 of them
                # among the 11 over +50 % that carried no flag (ground-glass
                # and part-solid nodules of 4-6 mm), 6 within 25 %; on 1 mm
                # pixels 6 (4 of them +24 to +43 %); on 0.7 mm pixels 4 of
                # the 1440 scans of four samples
                leak = True
    border = np.zeros_like(mask)
    border[[0, -1], :, :] = True
    border[:, [0, -1], :] = True
    border[:, :, [0, -1]] = True
    if (mask & border).any():
        flags.append("touches_roi_border")
        leak = True
    if not leak and _elongated_like_vessel(mask, sp, vol, t, inplane):
        leak = True
    if leak:
        flags.append("segmentation_leak")
    # A nodule less than two slice thicknesses across stands on one to three
    # slices, each averaging nodule and lung along z: its volume and
    # diameters rest on that partial volume (and on slices over twice the
    # pixel size the leak tests, their balls unresolved along z, are off).
    # On the benchmark's 2.5 and 5 mm slices (three samples, 854 scans)
    # such scans measured a median |volume error| of 20.5 % (p90 74 %, 42 %
    # of them beyond 25 %; 225 scans), the others 1.0 % (p90 18.5 %); 34 of
    # the 48 scans over +50 % without a leak flag were among them. The
    # Fleischner Society asks for thin sections to measure nodules
    # (reference [3] of the module notes).
    if 2.0 * _equivalent_radius(mask, sp) < _MIN_SLICES_ACROSS * float(sp[0]):
        flags.append("thick_slices_for_size")
    # The blurred-ball fit of a small nodule contradicts a uniform nodule of
    # the mask's size: the level its partial-volume sum divides by is
    # uncertain. Flagged in scenes drawn from the benchmark's generator
    # (0.7 mm pixels, 0.8-1.25 mm slices; docs/VALIDATION.md, "Small
    # nodules whose tissue level is uncertain"): part-solid nodules of 4-6.5
    # mm typed solid 39 of 43 scans (measured as their core, mostly -30 to
    # -60 %), typed ground glass 7 of 10, typed part-solid 0 of 19; solid
    # nodules of 4-6.5 mm 4 of 72, all four juxtavascular with a vessel's
    # flank in the profile (+16 to +915 %); ground glass of 4-6.5 mm 0 of
    # 72; isolated solid nodules of 2.5-3 mm 20 of 30 (+115 to +295 %; the
    # other ten +7 to +34 %), of 3-4 mm 0 of 30; isolated ground glass of
    # 2.5-4 mm 7 of 60 (+30 to +123 %). A ground-glass level is below soft
    # tissue by definition, hence that test for solid ones only; and only
    # for a nodule typed here, not one whose type the caller gave
    if nodule_type is None and (fit_notes.get("at_bound")
                                or (ntype == "solid" and fit_notes.get("below_soft_tissue"))):
        flags.append("tissue_level_uncertain")
    if not mask[seed0]:
        flags.append("seed_outside_nodule")
    # a faint nodule on the chest wall found without a lung mask: see
    # _without_wall_flank. With a lung mask the wall's flank inside the mask
    # is counted as nodule, which is about right for a nodule on a broad
    # base (the project phantom's, pleura-clipped: median -1 %, and -4 %
    # with the flank subtracted, which loses the voxel layer on the base)
    # and too much for one touching the wall at a point (test balls: +2 to
    # +16 %); left as it is.
    # Only a nodule of an equivalent radius of at least the slice
    # thickness and two pixels. It was also held to the plateau depth (2.5
    # mm) while a smaller one's partial-volume level read low and its
    # volume high, which the part lost at the wall had offset (4-5 mm on
    # 0.7 mm pixels: median error -2 -> +11 %; 4-6 mm on 1.5 mm pixels: -3
    # -> +28 % on one); that level is fitted now (step 9), and test balls
    # of 4.5-5 mm on the wall read -13..-4 % -> -3..0 % with this step.
    # Not for part-solid nodules: their thin rims read lower still
    # without the wall (48 scans of 5-12 mm on the wall: median |error|
    # 3.6 -> 7.0 %)
    # A vessel beside a solid or ground-glass nodule: see _without_vessels.
    # Not for part-solid nodules, whose rim level and solid component were
    # read with the vessel's flank excluded as "other structure" (drawn
    # scenes, 6-12 mm part-solid beside vessels: median |error| 3 -> 5 %
    # with it)
    if location == "juxtavascular" and near_isotropic and ntype in ("solid", "ground_glass") \
            and not (vessel_subtracted or wall_subtracted):
        d_mask = _distance_to(mask, sp)
        attached = _attached_structures((sm >= t) & ~mask & ~wall, d_mask, inplane)
        again = _without_vessels(vol, sp, seed0, nodule_type, lung, mask, attached, P, r_in, inplane, leak,
                                 refine_seed=refine_seed, in_structure=in_structure, level=level)
        if again is not None:
            return again
    if location == "juxtapleural" and ntype == "ground_glass" and lung is None and not wall_subtracted \
            and _equivalent_radius(mask, sp) >= max(float(sp[0]), 2.0 * inplane):
        again = _without_wall_flank(vol, sm, sp, seed0, ntype, mask, wall, P, leak,
                                    refine_seed=refine_seed, in_structure=in_structure,
                                    low_contrast="low_contrast_nodule" in flags, level=level)
        if again is not None:
            return again
    return Segmentation(
        mask=mask,
        nodule_type=ntype,
        location=location,
        solid_mask=solid_mask,
        threshold_hu=float(t),
        flags=tuple(dict.fromkeys(flags)),
        seed_zyx=tuple(int(v) for v in seed),
        parenchyma_hu=float(P),
        core_hu=float(C),
        solid_threshold_hu=float(t_solid),
        tissue_hu=float(fit_notes.get("level", math.nan)),
        tissue_level_source=str(fit_notes.get("level_source", "")),
    )


def _binned_median(x: np.ndarray, values: np.ndarray, edges: np.ndarray, min_count: int) -> np.ndarray:
    """Median of ``values`` in each bin ``[edges[i], edges[i + 1])`` of ``x``; NaN where fewer than ``min_count``.

    The excess profiles of the chest wall (by signed distance to its surface)
    and of a vessel (by distance to its axis) are read this way.
    """
    k = np.digitize(x, edges) - 1
    prof = np.full(edges.size - 1, np.nan)
    for i in range(edges.size - 1):
        v = values[k == i]
        if v.size >= min_count:
            prof[i] = float(np.median(v))
    return prof


def _wall_flank_excess(vol, sm, sp, wall, mask, P):
    r"""The chest wall's share of the image near a nodule (HU above the lung), or None.

    CT blur is linear, so the image near the wall is the lung level plus the
    blurred excess of the wall plus that of the nodule. The wall's excess is
    read from the wall itself, away from the nodule. With :math:`W` the
    median of the wall deeper than 3 mm, the wall's 50 % iso-surface
    :math:`I_\sigma = (P + W) / 2` (marching cubes within a voxel of
    ``wall``) is
    fitted, within :math:`R = r_{eq} + 15` mm of the nodule's centre
    (:math:`r_{eq}` the equivalent radius of ``mask``) but more than 3 mm
    from ``mask`` (where the nodule's own excess bulges it), by a quadric
    over its plane of best fit; :math:`d` is the signed distance (mm,
    positive on the lung side) to that surface, sub-voxel (the flank falls
    by several hundred HU per millimetre). The excess profile,

    .. math:: e(d) = \max\big(0,\ \operatorname{median}\{I_j : d_j \in [d, d + 0.1\ \mathrm{mm})\} - P\big),

    is read from -3 to +4 mm over the voxels within :math:`R` and more than
    4 mm from ``mask`` (bins of fewer than 20 voxels skipped), made
    non-increasing outwards, :math:`W - P` deeper inside and 0 farther out;
    beyond :math:`R` the excess is 0 (the image is left as it is).

    Parameters
    ----------
    vol, sm : numpy.ndarray of float, shape (z, y, x)
        The image and its lightly smoothed copy (HU).
    sp : sequence of 3 float
        Voxel size (z, y, x) in mm.
    wall : numpy.ndarray of bool, shape (z, y, x)
        The chest wall as the segmentation found it (outside the lung).
    mask : numpy.ndarray of bool, shape (z, y, x)
        The nodule as first segmented.
    P : float
        Lung level (HU).

    Returns
    -------
    numpy.ndarray of float or None
        The excess (HU, shape of ``vol``); None when the wall is too small
        to read it (fewer than 50 voxels deeper than 3 mm, fewer than 50
        surface vertices for the fit, no bins from 1 mm inside to 2 mm
        outside) or not smooth near the nodule (fit RMS over 1 mm).
    """
    from skimage import measure as skmeasure

    spv = np.asarray(sp, float)
    deep = wall & (_morph.edt(wall, spv) > 3.0)
    if deep.sum() < 50 or not mask.any():
        return None
    W = float(np.median(vol[deep]))
    if not W > P:
        return None
    level = P + 0.5 * (W - P)
    inside = wall & (sm >= level)
    if not inside.any() or inside.all():
        return None
    try:
        verts, _, _, _ = skmeasure.marching_cubes(sm, level, spacing=tuple(spv),
                                                  mask=ndimage.binary_dilation(wall, _CONN6))
    except (ValueError, RuntimeError):
        return None
    d_mask = _distance_to(mask, spv)
    centre = np.asarray(ndimage.center_of_mass(mask)) * spv
    reach = _equivalent_radius(mask, spv) + 15.0
    vi = np.clip(np.round(verts / spv).astype(int), 0, np.array(sm.shape) - 1)
    keep = (d_mask[tuple(vi.T)] > 3.0) & (np.sqrt(((verts - centre) ** 2).sum(axis=1)) <= reach)
    pts = verts[keep]
    if len(pts) < 50:
        return None
    p0 = pts.mean(axis=0)
    _, _, vt = np.linalg.svd(pts - p0, full_matrices=False)
    e1, e2, nrm = vt[0], vt[1], vt[2]

    def local(x):
        q = x - p0
        u, w = q @ e1, q @ e2
        return np.stack([np.ones_like(u), u, w, u * u, u * w, w * w], axis=1), q @ nrm

    A, h = local(pts)
    coef, *_ = np.linalg.lstsq(A, h, rcond=None)
    if float(np.sqrt(np.mean((A @ coef - h) ** 2))) > 1.0:
        return None
    # the voxels within 5 mm of the surface (and within reach of the
    # nodule) get their distance from the fitted surface
    band = np.where(inside, _morph.edt(inside, spv), _distance_to(inside, spv)) <= 5.0
    idx = np.argwhere(band)
    pos = idx * spv
    near = np.sqrt(((pos - centre) ** 2).sum(axis=1)) <= reach
    idx, pos = idx[near], pos[near]
    A, h = local(pos)
    d = h - A @ coef
    in_wall = inside[tuple(idx.T)]
    # the lung side is positive: the wall's voxels lie mostly on the other
    if np.median(d[in_wall]) > 0:
        d = -d
    edges = np.arange(-3.0, 4.0 + 1e-9, 0.1)
    sel = (d_mask[tuple(idx.T)] > 4.0) & (d >= edges[0]) & (d < edges[-1])
    prof = _binned_median(d[sel], vol[tuple(idx[sel].T)], edges, min_count=20)
    ok = np.isfinite(prof)
    centres = 0.5 * (edges[:-1] + edges[1:])
    if not (ok.any() and centres[ok].min() < -1.0 and centres[ok].max() > 2.0):
        return None
    ex = np.minimum.accumulate(np.clip(prof[ok] - P, 0.0, None))
    ex[-1] = 0.0
    zz, yy, xx = np.ogrid[:sm.shape[0], :sm.shape[1], :sm.shape[2]]
    within = (zz * spv[0] - centre[0]) ** 2 + (yy * spv[1] - centre[1]) ** 2 + (xx * spv[2] - centre[2]) ** 2 \
        <= reach ** 2
    out = np.where(inside & within, W - P, 0.0)
    out[tuple(idx.T)] = np.interp(d, centres[ok], ex, left=W - P, right=0.0)
    return out


def _without_wall_flank(vol, sm, sp, seed, ntype, mask, wall, P, leak, *, refine_seed, in_structure,
                        low_contrast=False, level=None):
    """The segmentation of a faint nodule on the chest wall with the wall's blurred flank subtracted, or None.

    Without a lung mask the wall is the tissue outside the closed air round
    the nodule. At a ground-glass threshold (about 15 % of the wall's
    contrast) the wall's blurred flank reaches about a millimetre into the
    lung and is taken for wall: the nodule's part within it was left out
    (6-10 mm ground-glass nodules tangent to the wall, benchmark generator:
    every voxel within 1 mm of the wall missed, -7 % volume; the project
    phantom's pleura-clipped ones -14 %). With the wall's
    excess (:func:`_wall_flank_excess`) subtracted the wall is gone and the
    nodule is segmented as an isolated one, with its type. The result is
    kept when what it adds lies where the flank was (the excess above 2 %
    of the wall's contrast, or within a voxel of the first mask) and it is
    not flagged a leak when the first was not.
    """
    spv = np.asarray(sp, float)
    excess = _wall_flank_excess(vol, sm, spv, wall, mask, P)
    if excess is None:
        return None
    corrected = vol - excess
    try:
        # the wall, now at the lung's level, is no longer found as wall
        seg = _segment(corrected, spv, seed, None, ntype, refine_seed=refine_seed, in_structure=in_structure,
                       wall_subtracted=True, level=level)
    except SegmentationError:
        return None
    flank = excess > 0.02 * float(excess.max())
    added = seg.mask & ~ndimage.binary_dilation(mask, _CONN6) & ~flank
    if added.sum() > 0.05 * mask.sum() or ("segmentation_leak" in seg.flags and not leak):
        return None
    # the contrast is the first pass's (read against the lung itself)
    flags = tuple(dict.fromkeys(("touches_pleura",) + tuple(f for f in seg.flags if f != "low_contrast_nodule")
                                + (("low_contrast_nodule",) if low_contrast else ())))
    return replace(seg, location="juxtapleural", flags=flags)


def _vessel_excess(vol, sp, mask, structures, seed, r_in, P, inplane):
    r"""The blurred excess (HU above the lung) of straight vessels beside a nodule, or None.

    CT blur is linear: near a vessel the image is the lung level plus the
    vessel's blurred excess plus the nodule's. The vessels are the straight
    tubes (:func:`_tube_axes`) of the ``structures`` attached to ``mask``
    that run past the nodule. Each one's excess is read from the vessel
    itself, away from the nodule, as a function of the distance
    :math:`\rho` (mm) to its axis,

    .. math:: e(\rho) = \max\big(0,\ \operatorname{median}\{I_j : \rho_j \in [\rho, \rho + 0.2\ \mathrm{mm})\} - P\big),

    over the voxels more than 3 mm from ``mask`` along the stretch of axis
    the tube's voxels span (bins of fewer than 8 voxels skipped), made
    non-increasing outwards and 0 from :math:`r_t + 4` mm; it is laid along
    that whole stretch, across the nodule too, where two vessels' excesses
    meet the larger is taken.

    Parameters
    ----------
    vol : numpy.ndarray of float, shape (z, y, x)
        The image (HU).
    sp : sequence of 3 float
        Voxel size (z, y, x) in mm.
    mask, structures : numpy.ndarray of bool, shape (z, y, x)
        The nodule as first segmented, and the dense structures attached to it.
    seed : tuple of int
        The seed voxel (z, y, x).
    r_in, P, inplane : float
        The seed's distance to the background (mm), the lung level (HU) and
        the in-plane voxel size (mm).

    Returns
    -------
    numpy.ndarray of float or None
        The excess (HU, shape of ``vol``); None without a straight vessel
        or when a vessel's profile cannot be read from its axis to 2 mm
        beyond its radius.
    """
    spv = np.asarray(sp, float)
    tubes = _tube_axes(structures | mask, seed, r_in, spv, inplane)
    if not tubes:
        return None
    d_mask = _distance_to(mask, spv).ravel()
    idx = np.indices(vol.shape).reshape(3, -1).T
    pos = idx * spv
    flat_vol = np.asarray(vol, float).ravel()
    excess = np.zeros(flat_vol.shape, float)
    for mu, u, r_t, s0, s1 in tubes:
        s_all, rho = _axis_coords(pos, mu, u)
        reach = r_t + 4.0
        along = (s_all >= s0) & (s_all <= s1) & (rho <= reach)
        away = along & (d_mask > 3.0)
        edges = np.arange(0.0, reach + 1e-9, 0.2)
        prof = _binned_median(rho[away], flat_vol[away], edges, min_count=8)
        ok = np.isfinite(prof)
        centres = 0.5 * (edges[:-1] + edges[1:])
        if not (ok.any() and centres[ok].min() < 0.5 * r_t and centres[ok].max() > r_t + 2.0):
            return None
        ex = np.minimum.accumulate(np.clip(prof[ok] - P, 0.0, None))
        ex[-1] = 0.0
        ii = np.flatnonzero(along)
        excess[ii] = np.maximum(excess[ii], np.interp(rho[ii], centres[ok], ex, left=ex[0], right=0.0))
    return excess.reshape(vol.shape)


def _without_vessels(vol, sp, seed, nodule_type, lung, mask, attached, P, r_in, inplane, leak, *,
                     refine_seed, in_structure, level=None):
    """The segmentation of a nodule beside straight vessels with their blurred excess subtracted, or None.

    A vessel beside a nodule adds its blurred flank to the image around
    the contact, where the partial-volume step (step 9) splits the space by
    distance and so counts part of that flank as nodule, and takes away
    with the vessel the nodule's own flank on that side; the two do not
    cancel, and they differ between T1 and T2 (drawn benchmark scenes, 4-6
    mm solid nodules beside 1-1.5 mm-radius vessels: volume ratio error
    p90 10 %). The vessels' excess (:func:`_vessel_excess`) is subtracted
    and the nodule segmented again as an isolated one; the result keeps the
    location ``juxtavascular`` and the first pass's ``segmentation_leak``
    (the vessel was taken out by a model, the first boundary was a guess).
    None when no vessel is straight enough to be modelled, the second
    segmentation fails, is a leak where the first was not, or has more than
    a tenth of the first mask's volume farther than max(1 mm, one pixel)
    from it (the vessel's residue, where its excess was read short).
    """
    if not attached.any():
        return None
    excess = _vessel_excess(vol, sp, mask, attached, seed, r_in, P, inplane)
    if excess is None:
        return None
    try:
        seg = _segment(vol - excess, np.asarray(sp, float), seed, lung, nodule_type, refine_seed=refine_seed,
                       in_structure=in_structure, level=level, vessel_subtracted=True)
    except SegmentationError:
        return None
    if "segmentation_leak" in seg.flags and not leak:
        return None
    # what the subtraction gives back is the nodule's own flank on the
    # vessel's side, within about a millimetre of the first boundary; more
    # beyond it is the vessel's residue taken in where its excess was read
    # short (4-6 mm ground glass on 1 mm pixels, drawn scenes: scans over
    # +25 % 11 -> 13 without this test, 5 with it; 0.7 mm pixels 3 -> 5 -> 2)
    beyond = seg.mask & (_distance_to(mask, np.asarray(sp, float)) > max(1.0, inplane))
    if beyond.sum() > 0.1 * mask.sum():
        return None
    flags = tuple(dict.fromkeys(seg.flags + (("segmentation_leak",) if leak else ())))
    return replace(seg, location="juxtavascular", flags=flags)


def _seed_around_lucency(vol: np.ndarray, sp: np.ndarray, seed0, lung, max_radius_mm: float = 12.0):
    """A seed in the wall of a lucency (cavity) enclosing ``seed0``, or None.

    At a few levels between the parenchyma :math:`P` and the densest voxel
    :math:`M` within ``max_radius_mm`` of the click (:math:`P + f (M - P)`,
    :math:`f` = 0.5, 0.3, 0.15), the below-level region around the click is
    examined: when it is a closed pocket (its hole-filled dense surroundings
    cover it, and it stays within ``max_radius_mm`` of the click), the
    nearest voxel at that level is returned (voxel index ``(z, y, x)``).
    A click in the open lung is enclosed at no level and gives None.
    """
    sm = ndimage.gaussian_filter(vol, [0.5 if sp[0] <= 1.5 else 0.0, 0.5, 0.5], mode="nearest")
    P, _ = _lung_stats(vol, lung)
    _, vals = _values_in_ball(sm, seed0, max_radius_mm, sp)
    m = float(vals.max())
    if m <= P:
        return None
    half = np.ceil(max_radius_mm / np.asarray(sp)).astype(int) + 1
    box = tuple(slice(max(0, c - h), min(n, c + h + 1)) for c, h, n in zip(seed0, half, sm.shape))
    sub = sm[box]
    c = tuple(int(v) - b.start for v, b in zip(seed0, box))
    for f in (0.5, 0.3, 0.15):
        dense = sub >= P + f * (m - P)
        if dense[c]:
            return None  # the click is in a structure: the usual paths apply
        pocket = _component_at(~dense, c)
        if not (ndimage.binary_fill_holes(dense) & pocket).any():
            continue  # open to the lung (or to the box border) at this level
        d, idx = ndimage.distance_transform_edt(~dense, sampling=sp, return_indices=True)
        if d[c] > max_radius_mm:
            return None
        return tuple(int(idx[a][c]) + box[a].start for a in range(3))
    return None


def _air_around(air: np.ndarray, seed, radius_mm: float, sp) -> np.ndarray:
    """Connected components of ``air`` with a voxel within ``radius_mm`` of the seed.

    The nearest non-dense voxel is :math:`r_{in}` from the seed, so a radius a
    little larger than :math:`r_{in}` reaches the lung around the nodule but
    not air behind the chest wall. Falls back to all of ``air`` when no
    component is that close (the seed is then not in a nodule in the lung,
    and the caller's other checks report it).
    """
    off, _ = _values_in_ball(air, seed, radius_mm, sp)
    near = np.zeros_like(air)
    near[off[:, 0], off[:, 1], off[:, 2]] = True
    near &= air
    if not near.any():
        return air
    lab, _ = ndimage.label(air, structure=_CONN6)
    keep = np.unique(lab[near])
    return np.isin(lab, keep[keep > 0])


def _pad_box(comp: np.ndarray, seed, sp) -> np.ndarray:
    """Sub-box of ``comp`` around the seed (bounded), padded with background."""
    sl = _box(comp, seed, sp)
    return np.pad(comp[sl], 1)


def _box(comp, seed, sp):
    # the inscribed radius only needs the neighbourhood of the seed; 25 mm is
    # larger than any nodule of interest and keeps the transform cheap
    half = np.ceil(25.0 / np.asarray(sp)).astype(int)
    return tuple(slice(max(0, s - h), min(n, s + h + 1)) for s, h, n in zip(seed, half, comp.shape))


def _box_center(comp, seed, sp):
    sl = _box(comp, seed, sp)
    return tuple(s - b.start + 1 for s, b in zip(seed, sl))


def _rim_level(sm, mask, dense, wall, sp, inplane):
    """Upper-quartile HU of the in-plane ring 1-2.5 mm outside ``mask`` (None if too few voxels).

    Distances are measured in-plane only (the z spacing is inflated) so that
    the partial-volume caps of thick slices above and below the nodule do not
    enter the ring; dense structures (vessels) and the wall are left out with
    a margin of max(1.5 mm, 1.5 voxels) for their blurred edges. The
    upper quartile rather than the median detects a ground-glass rim that
    covers only part of the ring (an eccentric solid core, a thin rim).
    """
    sp_inplane = np.array([1e4, sp[1], sp[2]])
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    sub = (slice(zs[0], zs[-1] + 1),)
    d = _distance_to(mask[sub], sp_inplane)
    d1 = max(1.0, inplane)
    ring = (d > d1) & (d <= d1 + 1.5)
    # stay clear of the blurred edges of the wall and of vessels as well
    others = (wall[sub] | dense[sub]) & ~mask[sub]
    ring &= _distance_to(others, sp_inplane) > max(1.5, 1.5 * inplane)
    if ring.sum() < 20:
        return None
    return float(np.percentile(sm[sub][ring], 75))


def _outer_plateau_level(sm, mask, sp, P, inplane):
    r"""Level of an outer tissue layer of the mask (HU), or None.

    A layer is tissue denser than the lung but clearly less dense than the
    nodule's centre: a ground-glass rim that lies inside the mask.
    The depth profile :math:`v_k` is the median of the smoothed image over
    the mask's voxels whose depth :math:`d` (mm, 3-D distance to the
    background) falls in bin :math:`k = \lfloor d / w \rfloor`,
    :math:`w = \max(0.5\ \mathrm{mm}, h_{xy})`, bins of at least 10 voxels.
    With :math:`c = \max_k v_k - P`, a layer is the outermost run of bins
    :math:`i..j`, from bin 1 inwards (bin 0 is the edge, blurred with the
    lung), spanning :math:`(j - i + 1)\,w \ge \max(1\ \mathrm{mm}, 2w)`,
    with

    .. math:: v_k < P + 0.8\,c, \qquad \max_{i..j} v - \min_{i..j} v \le 0.15\,c .

    A blurred uniform edge crosses from 50 % to 80 % of its contrast within
    :math:`0.84\,\sigma` (about 0.6 mm under a CT blur of 0.7 mm), too
    short a run. The level is the median of the run's voxels.

    Parameters
    ----------
    sm : numpy.ndarray of float, shape (z, y, x)
        Smoothed image (HU).
    mask : numpy.ndarray of bool, shape (z, y, x)
        The nodule grown at a low threshold (so that a rim is inside it).
    sp : sequence of 3 float
        Voxel size (z, y, x) in mm.
    P : float
        Parenchyma level (HU).
    inplane : float
        In-plane voxel size :math:`h_{xy}` (mm).

    Returns
    -------
    float or None
        The layer's level (HU); None without a layer, with fewer than 50
        voxels or 4 bins, or on slices over 2.5 mm: a nodule of a few
        slices has no interior along z, and its averaged caps make a step
        of their own (a 6 mm ground-glass ball on 5 mm slices showed a
        "layer").
    """
    if float(sp[0]) > 2.5:
        return None
    d = _morph.edt(mask, sp)[mask]
    if d.size < 50:
        return None
    vals = sm[mask]
    bw = max(0.5, float(inplane))
    k = np.floor(d / bw).astype(int)
    nb = int(k.max()) + 1
    med = np.full(nb, np.nan)
    for i in range(nb):
        sel = k == i
        if sel.sum() >= 10:
            med[i] = float(np.median(vals[sel]))
    ok = np.isfinite(med)
    if ok.sum() < 4:
        return None
    top = float(np.nanmax(med))
    contrast = top - P
    if contrast <= 0:
        return None
    upper = P + 0.8 * contrast
    need = max(1.0, 2 * bw)
    best = None
    i = 1  # bin 0 holds the boundary voxels, blurred with the lung
    while i < nb:
        if not (ok[i] and med[i] < upper):
            i += 1
            continue
        j = i
        while j + 1 < nb and ok[j + 1] and med[j + 1] < upper \
                and max(med[i:j + 2]) - min(med[i:j + 2]) <= 0.15 * contrast:
            j += 1
        if (j - i + 1) * bw >= need:
            run = (k >= i) & (k <= j)
            best = float(np.median(vals[run]))
            break
        i += 1
    return best


def _solid_component(sm, mask, G, sp, inplane):
    """Solid component inside a ground-glass nodule, or (None, nan)."""
    interior = ndimage.binary_erosion(mask, _CONN6) if mask.sum() > 27 else mask
    vals = sm[interior]
    if vals.size < 8:
        return None, math.nan
    S = float(np.percentile(vals, 99))
    half_to_water = G + 0.5 * (0.0 - G)
    if S < half_to_water:  # nothing inside reaches solid density
        return None, math.nan
    t_s = 0.5 * (G + S)
    solid = (sm >= t_s) & mask
    # vessels crossing a ground-glass nodule are thin: open them away
    r_o = max(1.0, inplane)
    opened = _opening(solid, r_o, sp)
    if not opened.any():
        return None, math.nan
    lab, n = ndimage.label(opened, structure=_CONN6)
    sizes = ndimage.sum_labels(np.ones_like(lab), lab, np.arange(1, n + 1)) * float(np.prod(sp))
    min_vol = 4.0 / 3.0 * math.pi * 1.0 ** 3
    keep = np.arange(1, n + 1)[sizes >= min_vol]
    if keep.size == 0:
        return None, math.nan
    return np.isin(lab, keep), float(t_s)


def _near(mask, sp, inplane):
    """Mask grown by one slice in z and max(1.5 mm, 2 voxels) in-plane."""
    zdil = ndimage.binary_dilation(mask, np.ones((3, 1, 1), bool))
    margin = max(1.5, 2.0 * inplane)
    sp_inplane = np.array([1e4, sp[1], sp[2]])
    return _distance_to(zdil, sp_inplane) <= margin


def _blur_reach(mask, sp, inplane, neighbours):
    """Voxels within the blur's reach of ``mask`` and beyond it from ``neighbours``.

    The blurred edge of a nodule reaches :data:`_PLATEAU_DEPTH_MM` beyond its
    50 % boundary in-plane (at least two pixels) and along z (the nearest
    slices, at least one); only where no other structure (``neighbours``,
    bool, same shape) lies within that distance, whose own blurred flank
    would be counted as the nodule's.
    """
    sp = np.asarray(sp, float)
    n_z = max(1, int(math.ceil(_PLATEAU_DEPTH_MM / sp[0] - 0.5)))
    zdil = ndimage.binary_dilation(mask, np.ones((2 * n_z + 1, 1, 1), bool))
    reach = _distance_to(zdil, np.array([1e4, sp[1], sp[2]])) <= max(_PLATEAU_DEPTH_MM, 2.0 * inplane)
    if neighbours.any():
        reach &= _distance_to(neighbours, sp) > _PLATEAU_DEPTH_MM
    return reach


def _vessel_near(mask, structures, wall, sp) -> bool:
    """Whether a structure other than the chest wall lies within :data:`_PLATEAU_DEPTH_MM` of ``mask``.

    ``structures`` (bool, same shape) are the candidates; those connected to
    the ``wall`` (its flank above a threshold) are the wall's, and those
    under :data:`_MIN_VESSEL_MM3` are noise (at a quarter of a ground-glass
    contrast, 6 SDs of the smoothed noise at 30 HU, specks of a few voxels).
    """
    if not structures.any():
        return False
    lab, n = ndimage.label(structures, structure=_CONN6)
    sizes = np.bincount(lab.ravel(), minlength=n + 1) * float(np.prod(sp))
    drop = np.flatnonzero(sizes < _MIN_VESSEL_MM3)
    if wall.any():
        drop = np.union1d(drop, lab[ndimage.binary_dilation(wall, _CONN6) & structures])
    free = structures & ~np.isin(lab, drop)
    return bool(free.any()) and float(_distance_to(mask, sp)[free].min()) <= _PLATEAU_DEPTH_MM


def _lung_ring_and_faint(sm, region, mask, others, dense, g_in, sp):
    """(region without faint structures, lung level P_loc, those structures) for :func:`_pv_threshold`.

    :math:`P_{loc}` is the median of the smoothed image in an in-plane ring
    within 2 mm outside ``region``, away from ``others`` and ``dense``
    (fewer than 20 voxels: (None, nan, None)). Faint structures (a thin vessel blurred
    below the threshold that defines "dense") would add their partial
    volume to the sum: what stands above a quarter of the contrast
    :math:`g_{in} - P_{loc}` outside the mask's first voxel layer and
    continues beyond the region is not the nodule's edge and leaves it.
    """
    d_out = _distance_to(region, np.array([1e4, sp[1], sp[2]]))
    ring = (d_out > 0) & (d_out <= 2.0) & ~others & ~dense
    if ring.sum() < 20:
        return None, math.nan, None
    p_loc = float(np.median(sm[ring]))
    faint = (sm >= p_loc + 0.25 * (g_in - p_loc)) & ~ndimage.binary_dilation(mask, _CONN6)
    found = np.zeros_like(mask)
    if faint.any():
        lab, _ = ndimage.label(faint, structure=_CONN6)
        ids = np.unique(lab[faint & ~region])
        ids = ids[ids > 0]
        if ids.size:
            found = np.isin(lab, ids)
            region = region & ~found
    return region, p_loc, found


def _pv_threshold(sm, mask, dense, wall, G, sp, inplane, *, two_tissue: bool, comp: np.ndarray,
                  fit_ball: bool = False, fit_beside_vessels: bool = True, threshold: float | None = None,
                  exclude: np.ndarray | None = None, notes: dict | None = None, level: float | None = None):
    r"""Threshold whose mask volume equals the partial-volume volume, or None.

    .. math::

        V_{PV} = v \sum_{i \in R} f_i, \qquad
        f_i = \frac{I_{\sigma,i} - P_{loc}}{G_{in} - P_{loc}}

    over the region :math:`R` (the mask grown to the blur's reach,
    :func:`_blur_reach`, or, when a vessel, dense or faint, lies within
    :data:`_PLATEAU_DEPTH_MM` of the mask, by one slice and max(1.5 mm, 2
    voxels) in-plane; minus other dense structures and the chest
    wall; the voxels of the grown region ``comp`` within one voxel of the
    mask, which the opening shaved off, are the nodule's and stay in; the
    voxels of ``exclude``, a neighbour's share of the space, are left out). The
    smoothed image :math:`I_\sigma` is used because Gaussian smoothing
    preserves the integral while reducing noise; :math:`f_i` is
    clipped at 1.2 (a vessel or calcification inside the mask is one voxel of
    nodule, not several; noise still averages out below that), and at 1 for a
    part-solid nodule (``two_tissue``), whose solid voxels would otherwise
    count more than once. Faint structures above a quarter of the contrast
    that continue beyond :math:`R` (a thin vessel blurred below the "dense"
    threshold) are left out of :math:`R`.
    :math:`G_{in}` is the median of the mask's deepest voxels, within
    :math:`w = \mathrm{clip}(D_{max}/2, 0.5, 1)` mm of its largest inscribed
    distance :math:`D_{max}` (at least 7 voxels; a small nodule has no
    interior plateau, and a 1 mm band would reach down its blurred edge) and
    inside its largest inscribed ball (not in the junction with a vessel stub)
    and, when ``threshold`` (HU, the mask's) is given and they read darker
    than the layer around them (a lucency), in the tissue above halfway from
    the threshold to ``G``; without a lucency, the median of all voxels
    deeper than max(2.5 mm, slice thickness) when they are more (the
    plateau of a larger nodule, beyond the blur: far less noisy)
    (``G`` for a part-solid nodule; with ``fit_ball`` and a largest
    inscribed radius under 3 mm, the level of a blurred-ball fit of its
    radial profile when plausible, :func:`_blurred_ball_level`, made on the
    narrower region and its ring whatever :math:`R` is; beside a vessel only
    with ``fit_beside_vessels``), and :math:`P_{loc}` the median of an
    in-plane ring within 2 mm outside :math:`R`
    (:func:`_lung_ring_and_faint`). The threshold is the
    :math:`V_{PV}/v`-th largest value of :math:`I_\sigma` in :math:`R`
    (voxels of equal value all in or all out, whichever count is nearer
    :math:`V_{PV}/v`), clamped to the central half of the edge contrast.
    ``level`` (HU), when given, is :math:`G_{in}`: nothing is read or fitted
    (the same nodule's level at the other time point, see
    :func:`segment_nodule`). ``notes`` is passed on to the blurred-ball fit
    when one is made, and receives ``notes["level"]``, the :math:`G_{in}`
    used, and ``notes["level_source"]``, where it was read (see
    :class:`Segmentation`, ``tissue_level_source``).
    """
    if mask.sum() < 4:
        return None
    region = _near(mask, sp, inplane)
    # the opening shaved the grown region's outermost voxels off the mask;
    # they (and their blurred edge) are the nodule's, not another structure's,
    # and leaving them out lost up to 15 % of a small nodule's partial volume
    # (3 mm-radius ball). What the region growing took in farther out (vessel
    # pieces cut by the opening) stays out, as in the regrowth below.
    near_mask = ndimage.binary_dilation(mask, _CONN6)
    other_dense = dense & ~mask & ~(comp & near_mask)
    others = ndimage.binary_dilation(other_dense | wall, _CONN6)
    region = (region & ~others) | mask
    if exclude is not None:
        region &= ~exclude | mask
    if level is not None:
        g_in, source = float(level), "given"
    elif two_tissue:
        g_in, source = float(G), "rim"
    else:
        # the deepest voxels (within 1 mm of the largest inscribed distance):
        # for a small nodule blur lowers everything but its very centre, so a
        # median over a larger interior would underestimate the tissue level
        d_in = _morph.edt(mask, sp)
        depth = d_in[mask]
        w = min(max(0.5 * float(depth.max()), 0.5), 1.0)
        band = depth >= min(depth.max() - w, np.sort(depth)[-min(7, depth.size)])
        # ... inside the largest inscribed ball: a vessel stub that survived
        # the opening widens the mask where it joins, and the deep voxels
        # there are darker (a blurred vessel) than the nodule's centre (test
        # phantom, a 4.7 mm solid nodule on a 0.9 mm-radius vessel: -165 HU
        # against -79 HU without the vessel, volume +55 %; -74 HU and +31 %
        # within the ball, measured before the blurred-ball fit below)
        idx = np.argwhere(mask)
        dist2 = (((idx - idx[int(np.argmax(depth))]) * np.asarray(sp, float)) ** 2).sum(axis=1)
        inside = band & (dist2 <= float(depth.max()) ** 2)
        if inside.sum() >= min(7, depth.size):
            band = inside
        # ... and in the tissue: a lucency inside the nodule (cavity, bubble;
        # filled in the mask, or blurred above the threshold when small) is
        # deep but not tissue, and its air read as the tissue level inflated
        # the partial-volume sum (a 12 mm solid nodule with a 2-3 mm
        # lucency at its centre: +22 to +41 %, unflagged). A blurred nodule
        # is densest at its centre; one whose deepest voxels read darker
        # than the layer around them (by a tenth of the contrast, several
        # noise SDs of the medians) holds a lucency, and the deepest voxels
        # above halfway from the threshold to the tissue level are used
        # instead. Not on any dark voxel among them: noise and blur make
        # some in a faint or small nodule, and the tissue's deepest voxels,
        # selected above a level, then read the level high (quick
        # benchmark grid, ground glass: -5 to -8 % volume on several nodules).
        lucent = False
        if threshold is not None:
            layer = (depth >= depth.max() - 2.0 * w) & ~band
            lucent = layer.sum() >= 7 and \
                np.median(sm[mask][band]) < np.median(sm[mask][layer]) - 0.2 * (G - threshold)
            tissue = mask & (sm >= 0.5 * (threshold + G)) if lucent else None
            if tissue is not None and tissue.sum() >= 7:
                d_t = _morph.edt(tissue, sp)[mask]
                w_t = min(max(0.5 * float(d_t.max()), 0.5), 1.0)
                band_t = d_t >= min(d_t.max() - w_t, np.sort(d_t)[-7])
                if np.median(sm[mask][band_t]) > np.median(sm[mask][band]):
                    band = band_t
        # ... but a larger nodule has a plateau beyond the blur, and a few
        # dozen voxels of it read the level with the noise (a 20 mm
        # ground-glass nodule on the chest wall: 7 HU, 4 % of its contrast,
        # low at T1 and right at T2, so +1.6 / -3.1 % volume and a mean-
        # diameter change off by -0.54 mm; test phantom, 16 mm ground-glass
        # ball, noise SD 30 HU: -6.2 to +0.4 % over six noise draws). All of
        # the plateau is used when it is larger; not with a lucency, whose
        # air the plateau would hold
        plateau = depth >= max(_PLATEAU_DEPTH_MM, float(sp[0]))
        source = "deepest"
        if not lucent and plateau.sum() > band.sum():
            band, source = plateau, "plateau"
        g_in = float(np.median(sm[mask][band]))
    narrow = region
    region, p_loc, faint = _lung_ring_and_faint(sm, region, mask, others, dense, g_in, sp)
    if region is None or not g_in > p_loc:
        return None
    # The sum should hold the whole blurred edge: beyond the region, the
    # edge's tail lost 2-4 % of a 5-12 mm nodule's volume (benchmark scenes,
    # isolated; it read the lung level high by 0.5 % of the contrast as
    # well). It is widened to the blur's reach (_blur_reach) only where no
    # vessel is near, dense or faint: beside one the region already holds
    # some of the vessel's flank, which the fitted level of a small solid
    # nodule offsets (a wider region, drawn benchmark scenes, solid nodules
    # beside a vessel, median of 7 scans each: 4.5-6 / 6-8 mm +3.9 / -2.4 %
    # -> +13.5 / +5.8 %). The blurred-ball fit below keeps the
    # region and lung level it was made with, its plausibility bounds were
    # set on them (see the function): a 3.6 mm ball under a 0.9 mm blur
    # needs twice the contrast its centre shows, at the fit's bound, and a
    # lung level read 2 HU nearer the truth sent such fits past it (+84 to
    # +100 %)
    fit_region, p_fit = region, p_loc
    widened = False
    if not _vessel_near(mask, (dense & ~near_mask) | faint, wall, sp):
        wide = ((narrow | _blur_reach(mask, sp, inplane, wall)) & ~others) | mask
        if exclude is not None:
            wide &= ~exclude | mask
        wide, p_wide, faint_wide = _lung_ring_and_faint(sm, wide, mask, others, dense, g_in, sp)
        if wide is not None and g_in > p_wide and not _vessel_near(mask, faint_wide, wall, sp):
            region, p_loc, widened = wide, p_wide, True
    if level is None and fit_ball and (widened or fit_beside_vessels) and not two_tissue \
            and float(depth.max()) < _BALL_FIT_DEPTH_MM:
        # a small nodule's centre is blurred below its tissue level (4-6 mm
        # solid nodules, benchmark quick grid: volume +16 % -> +2 %; ground
        # glass, drawn benchmark scenes, isolated, 2.5-4.5 mm: +22 % -> +3 %
        # with the wider sum). That
        # the fit read a ground-glass level high (4-6 mm: -1 % -> -7 %)
        # was the narrow region's fault: its sum missed the blurred edge's
        # tail, which a low level had offset. Hence not for ground glass
        # beside a vessel, where the region stays narrow and loses the
        # nodule's side in the vessel's flank besides (drawn scenes, 4.5-8
        # mm, 26 scans: median -4.3 % -> -9.1 % with the fit)
        fitted = _blurred_ball_level(sm, fit_region, mask, p_fit, g_in, sp,
                                     deepest=idx[band], smooth_mm=0.5 * inplane, notes=notes)
        if fitted is not None:
            g_in, source = fitted, "fit"
    if source == "deepest" and not widened:
        source = "deepest_narrow"
    if notes is not None:
        notes["level"], notes["level_source"] = g_in, source
    frac = (sm[region] - p_loc) / (g_in - p_loc)
    # a voxel denser than the nodule's tissue by more than the noise (a
    # vessel or calcification inside the mask, the solid core of a
    # part-solid nodule) is still one voxel of nodule, not several; 1.2 is
    # several noise SDs of the smoothed image above 1 for any contrast the
    # segmentation accepts, so noise still averages out
    frac = np.minimum(frac, 1.0 if two_tissue else 1.2)
    n = int(round(float(frac.sum())))
    vals = np.sort(sm[region])[::-1]
    if n < 1 or n > vals.size:
        return None
    t_pv = float(vals[n - 1])
    # voxels of equal value (a noise-free, symmetric image) all pass a
    # threshold or none does: take the tie group in only when that lands
    # nearer n than leaving it out
    above = int(np.count_nonzero(vals > t_pv))
    if 0 < above and int(np.count_nonzero(vals >= t_pv)) - n > n - above:
        t_pv = float(vals[above - 1])
    lo, hi = p_loc + 0.25 * (g_in - p_loc), p_loc + 0.75 * (g_in - p_loc)
    return float(min(max(t_pv, lo), hi))


def _blurred_ball_profile(r, radius, sigma):
    r"""Profile of a uniform ball blurred by an isotropic Gaussian, 0 outside to 1 inside.

    .. math::

        F(r) = \tfrac12\big[\mathrm{erf}(a) + \mathrm{erf}(b)\big]
               - \frac{\sigma}{r\sqrt{2\pi}}\big(e^{-a^2} - e^{-b^2}\big),
        \qquad a = \frac{R - r}{\sqrt2\,\sigma},\ b = \frac{R + r}{\sqrt2\,\sigma}

    with :math:`r` the distance from the centre (mm), :math:`R` the radius
    and :math:`\sigma` the Gaussian's SD (mm).
    """
    from scipy import special

    r = np.maximum(r, 1e-3)
    a = (radius - r) / (math.sqrt(2.0) * sigma)
    b = (radius + r) / (math.sqrt(2.0) * sigma)
    return 0.5 * (special.erf(a) + special.erf(b)) \
        - sigma / (r * math.sqrt(2.0 * math.pi)) * (np.exp(-a * a) - np.exp(-b * b))


def _blurred_ball_level(sm, region, mask, p_loc, g_band, sp, deepest=None, smooth_mm: float = 0.0,
                        notes: dict | None = None):
    r"""Tissue level (HU) of a small nodule from a blurred-ball fit of its radial profile, or None.

    Blur lowers the centre of a nodule a few millimetres across below its
    tissue level (to 95 % of the contrast for a 4.4 mm ball under a 0.78 mm
    Gaussian), so the median of its deepest voxels reads the level low and
    every partial-volume fraction high. The smoothed image in ``region``
    within 2.5 mm of the equivalent sphere is fitted with
    :math:`P + (S - P) F(r; R, \sigma)` (:func:`_blurred_ball_profile`,
    :math:`P` = ``p_loc`` fixed, :math:`r` from the contrast-weighted
    centre). The fit is used only when it is plausible: :math:`S` not below
    the deepest-voxel level ``g_band`` (blur only lowers) nor above what the
    scanner's blur and the grid can explain,

    .. math::

        S - P \le \frac{1.3\,(g_{band} - P)}{k}, \qquad
        k = \operatorname{median}_{i \in D} F(r_i; R_{eq}, \sigma_g)

    (30 % of the contrast for the scanner's blur, as at 0.7 mm pixels; the
    factor :math:`k \le 1` is the share of the contrast the image's own
    smoothing, :math:`\sigma_g` = ``smooth_mm``, leaves at the deepest voxels
    :math:`D` = ``deepest`` (voxel indices), at their distances
    :math:`r_i` from the centre, for a ball of the mask's equivalent radius
    :math:`R_{eq}`; ``deepest=None`` gives :math:`k = 1`) and not at the
    fit's bound for it (:math:`S - P \le 2\,(g_{band} - P)`),
    :math:`\sigma` in 0.2-2 mm and :math:`R` within a factor 1.5 of
    :math:`R_{eq}`. A fit that passes all but the allowance gives the
    allowance's level, at most the level the deepest voxels imply for a
    ball of the fitted radius under a blur of :math:`\min(\sigma, 1.1)`
    mm; on slices up to twice the pixel size (None on thicker ones).

    ``notes`` (a dict), when given, receives what a converged fit says of
    the nodule (slices up to 1.5 mm), whether or not its level is used:
    ``"at_bound"``, the fit asks for at least twice the contrast the
    deepest voxels show (no uniform nodule of the mask's size is blurred
    that much: a nodule under about 3 mm, or a small dense core in a halo),
    and ``"below_soft_tissue"``, the fitted level lies below three quarters
    of the way from ``p_loc`` to water (0 HU), ground-glass attenuation.
    """
    from scipy import optimize

    spv = np.asarray(sp, float)
    r_eq = _equivalent_radius(mask, spv)
    weight = np.where(mask, np.clip(sm - p_loc, 0.0, None), 0.0)
    if weight.sum() <= 0:
        return None
    centre = np.asarray(ndimage.center_of_mass(weight))
    idx = np.argwhere(region)
    r = np.sqrt((((idx - centre) * spv) ** 2).sum(axis=1))
    near = r <= r_eq + 2.5
    r, v = r[near], sm[region][near]
    if r.size < 30:
        return None

    def resid(p):
        return p_loc + (p[0] - p_loc) * _blurred_ball_profile(r, p[1], p[2]) - v

    contrast = g_band - p_loc
    try:
        fit = optimize.least_squares(resid, [g_band, r_eq, 0.8],
                                     bounds=([p_loc + 1e-3, 0.3 * r_eq, 0.1], [g_band + contrast, 3.0 * r_eq, 3.0]))
    except (ValueError, np.linalg.LinAlgError):
        return None
    level, radius, sigma = (float(x) for x in fit.x)
    bound = g_band + 0.99 * contrast  # the fit's upper bound, twice the deepest voxels' contrast
    # the radial fit models an isotropic blur: a slice up to 1.5 mm, a box of
    # SD up to 0.43 mm along z, adds less than a CT's in-plane PSF (5 mm
    # slices: solid 5-7 mm benchmark nodules were flagged)
    if notes is not None and fit.success and float(spv[0]) <= 1.5:
        notes["at_bound"] = level >= bound
        notes["below_soft_tissue"] = level < p_loc + 0.75 * (0.0 - p_loc)
    # On coarse pixels the deepest voxels of a 4-5 mm nodule lie up to a
    # voxel from its centre, and the image's smoothing (half a voxel) blurs
    # more: they read 17-41 % of the contrast below the level on 1 mm pixels
    # and 31-37 % on 1.5 mm (benchmark scenes), and a fixed 30 % ceiling
    # rejected right fits (+25 to +100 % volume). The grid's share of that
    # is known and allowed for; the scanner's share keeps the fixed
    # allowance (set where the PSF sigma is 0.5-0.7 mm; an independent
    # phantom with 0.86 mm asked 42 % on 1 mm pixels and was refused by a
    # hair). That allowance is also what turns away most part-solid nodules
    # typed as solid (their fits read the core as a small dense ball, 0.7 to
    # over 2 times the contrast above the deepest voxels); on 0.7-1 mm
    # pixels the grid's allowance now lets a few through, which are then
    # measured as their core (docs/VALIDATION.md, "Other pixel sizes")
    has_deepest = deepest is not None and len(deepest) > 0
    r_d = np.sqrt((((np.asarray(deepest) - centre) * spv) ** 2).sum(axis=1)) if has_deepest else np.zeros(1)
    keep = float(np.median(_blurred_ball_profile(r_d, r_eq, smooth_mm))) if has_deepest and smooth_mm > 0 else 1.0
    # ... and a level held at its bound (twice the deepest voxels' contrast)
    # is no estimate: the fits of part-solid nodules typed as solid end
    # there on 1.5 mm pixels, where the grid's allowance would pass them
    ceiling = p_loc + 1.3 * contrast / max(keep, 0.5)
    if not (fit.success and g_band <= level <= bound and 0.2 <= sigma <= 2.0
            and r_eq / 1.5 <= radius <= 1.5 * r_eq):
        return None
    if level > ceiling:
        # A sound fit above the allowance says the nodule is blurred more
        # than the allowance explains; the deepest voxels, the alternative,
        # read the level with no blur at all, and so inflate every
        # partial-volume fraction (an isolated solid nodule shrunk to 3.6 mm
        # at T2, 1 mm pixels, 1.25 mm slices: fit 8 HU, ceiling -17 HU,
        # deepest voxels -395 HU: +81 % volume, unflagged; +1 % at the
        # ceiling). The level is then held at the ceiling, the nearest the
        # allowance accepts, and at most at what the deepest voxels imply
        # for a ball of the fitted radius under the widest blur CT has (a
        # soft kernel's sigma of about 0.8 mm with the segmentation's own
        # half-voxel smoothing): a wider fitted edge is something beside the
        # ball, a vessel's flank (a 7.4 mm juxtavascular nodule: fit sigma
        # 1.39 mm, 302 HU against 31 HU at its deepest voxels; -18 % at the
        # ceiling, +1 % now). Part-solid nodules typed as solid, whose fits
        # read the core, are measured smaller for it (4-6 mm, benchmark
        # default grid: -15 to -60 % -> -28 to -73 %); they are the known
        # weak point either way. A fit held at its bound is still no
        # estimate (see above). Not on slices over twice the pixel size,
        # where a nodule of a few millimetres lies on two or three slices and
        # the fit is less sure (2.5 mm slices: a 4.4 mm nodule +7 -> -18 %).
        if not _near_isotropic(spv):
            return None
        k_ct = float(np.median(_blurred_ball_profile(r_d, radius, min(sigma, _MAX_BLUR_SIGMA_MM))))
        implied = p_loc + contrast / max(k_ct, 1e-3)
        return float(max(g_band, min(ceiling, implied)))
    return level


def _axis_coords(pts: np.ndarray, p: np.ndarray, u: np.ndarray):
    """Position along a line and distance to it (mm) of points ``pts`` (n, 3; mm): ``(s, rho)``.

    The line passes through ``p`` with unit direction ``u`` (mm, ``(z, y, x)``).
    """
    s = (pts - p) @ u
    return s, np.linalg.norm(pts - p - np.outer(s, u), axis=1)


def _tube_axes(comp: np.ndarray, seed, r_in: float, sp, inplane: float) -> list:
    r"""Straight tubes in ``comp`` that run past the nodule at ``seed``: list of ``(p, u, r_t, s_0, s_1)``.

    ``p`` is a point of the axis and ``u`` its unit direction (mm, ``(z, y,
    x)`` from the array's origin), ``r_t`` the radius (mm) and ``[s_0,
    s_1]`` the stretch of the axis (mm from ``p`` along ``u``) its supporting
    voxels span. See :func:`_straight_vessels` for how they are found.
    """
    idx = np.argwhere(comp)
    sp = np.asarray(sp, float)
    pts = idx * sp
    c = np.asarray(seed, float) * sp
    dist = np.linalg.norm(pts - c, axis=1)
    r_far = 2.0 * r_in + 2.0
    far = np.zeros(comp.shape, bool)
    far[tuple(idx[(dist > r_far) & (dist <= r_far + _TUBE_WINDOW_MM)].T)] = True
    lab, n = ndimage.label(far, structure=np.ones((3, 3, 3), bool))
    at = lab[tuple(idx.T)]
    pieces = [q for q in (pts[at == k] for k in range(1, n + 1)) if len(q) >= 8]
    vox = float(np.prod(sp))
    tubes, taken = [], set()
    # pairs first: a vessel passing close by leaves a piece on each side, and
    # each piece alone is one-sided
    cands = [(i, j) for i in range(len(pieces)) for j in range(i + 1, len(pieces))] + \
            [(i,) for i in range(len(pieces))]
    for cand in cands:
        if taken & set(cand):
            continue
        q = np.concatenate([pieces[i] for i in cand])
        mu = q.mean(axis=0)
        u = np.linalg.svd(q - mu, full_matrices=False)[2][0]
        s_q, rho = _axis_coords(q, mu, u)
        length = sum(float(np.ptp((pieces[i] - mu) @ u)) + inplane for i in cand)
        r_t = math.sqrt(len(q) * vox / length / math.pi)
        s_c = float((c - mu) @ u)
        d_line = float(np.linalg.norm(c - mu - s_c * u))
        if np.quantile(rho, 0.95) > r_t + inplane or not (s_q.min() < s_c - r_t and s_q.max() > s_c + r_t) \
                or d_line - r_t < 0.5 * r_in:
            continue
        tubes.append((mu, u, r_t, float(s_q.min()), float(s_q.max())))
        taken |= set(cand)
    return tubes


def _straight_vessels(comp: np.ndarray, seed, r_in: float, sp, inplane: float) -> np.ndarray:
    r"""Voxels of the grown region ``comp`` in straight vessels that pass the nodule (bool, same shape).

    Beyond :math:`r_f = 2 r_{in} + 2` mm from the ``seed`` (the reach of the
    far-reaching test, step 6) and within :data:`_TUBE_WINDOW_MM` more, the
    grown region holds only what is attached to the nodule. Its pieces there
    (26-connected, at least 8 voxels), alone or two together (a vessel
    passing within :math:`r_f` of the seed leaves one piece on each side),
    are fitted with a straight tube: the axis is their principal axis
    through their centroid, the radius that of a cylinder of their volume
    over the length they cover,

    .. math:: r_t = \sqrt{\frac{V}{\pi \sum_k (L_k + h)}}

    with :math:`L_k` the extent of piece :math:`k` along the axis and
    :math:`h` the in-plane voxel size (mm). A tube is taken when

    * 95 % of its voxels lie within :math:`r_t + h` of the axis (straight;
      a blob, a bend or two pieces that are not in line fail),
    * it has voxels on both sides of the axis point nearest the seed,
      farther than :math:`r_t` from it (it passes the nodule; a vessel that
      ends in the nodule is not drawn on through it),
    * its axis passes at least :math:`r_t + r_{in} / 2` from the seed (beside
      the nodule, not through it).

    What is returned is every voxel of ``comp`` within :math:`r_t + h / 2` of
    a taken axis, between its outermost supporting voxels: the vessel where
    it runs past the nodule too, and the thin cap of the nodule it overlaps.
    ``r_in`` (mm) is the seed's distance to the background, ``sp`` the
    spacing ``(z, y, x)`` in mm.

    Examples
    --------
    >>> import numpy as np
    >>> sp = np.array([0.7, 0.7, 0.7])
    >>> z, y, x = np.indices((40, 40, 40)) * 0.7 - 13.65
    >>> ball = z ** 2 + y ** 2 + x ** 2 <= 2.0 ** 2
    >>> tube = (z - 3.0) ** 2 + x ** 2 <= 1.4 ** 2   # along y, touching the ball
    >>> out = _straight_vessels(ball | tube, (19, 19, 19), 1.9, sp, 0.7)
    >>> bool(out[tube & ~ball].mean() > 0.95), bool(out[ball].mean() < 0.1)
    (True, True)
    """
    idx = np.argwhere(comp)
    pts = idx * np.asarray(sp, float)
    out = np.zeros(comp.shape, bool)
    for mu, u, r_t, s0, s1 in _tube_axes(comp, seed, r_in, sp, inplane):
        s_all, rho_all = _axis_coords(pts, mu, u)
        sel = (rho_all <= r_t + 0.5 * inplane) & (s_all >= s0) & (s_all <= s1)
        out[tuple(idx[sel].T)] = True
    return out


def _far_reaching_solid(sm, solid_level, seed, sp, reach_mm, *, dilate=True):
    """Structures above ``solid_level`` reaching farther than ``reach_mm`` from the seed.

    At a ground-glass threshold, vessels (far denser than ground glass) would
    carry the region along them; a solid core of a part-solid nodule stays
    within the nodule. They are returned dilated by one voxel: with
    ``dilate`` (a level at solid density, high on the vessel's edge) by a
    26-connected step, to take their partial-volume rim as well; without it
    (a level just above the nodule's own density, where that rim is already
    inside and a wider dilation would cut into the nodule where the vessel
    touches it) by a 6-connected one.
    """
    solid = sm >= solid_level
    if not solid.any():
        return solid
    lab, n = ndimage.label(solid, structure=_CONN6)
    idx = np.indices(sm.shape, dtype=np.float32)
    dist2 = sum(((idx[a] - seed[a]) * float(sp[a])) ** 2 for a in range(3))
    far = np.asarray(ndimage.maximum(dist2, lab, np.arange(1, n + 1))) > reach_mm ** 2
    out = np.isin(lab, np.arange(1, n + 1)[far])
    return ndimage.binary_dilation(out, ndimage.generate_binary_structure(3, 3) if dilate else _CONN6)


def _attached_structures(others: np.ndarray, d_mask: np.ndarray, inplane: float, *,
                         min_reach_mm: float | None = None) -> np.ndarray:
    """Components of ``others`` that touch the mask and reach well away from it.

    Touching: a voxel within max(1 mm, 1.5 voxels) of the mask (blur and thick
    slices may hide a narrow contact). Reaching: a voxel at least
    max(1.5 mm, 2 voxels) from it (or ``min_reach_mm``) -- the opening also
    shaves single voxels off the nodule's surface, and noise makes specks;
    neither is a vessel. ``d_mask`` is the distance (mm) to the mask.
    """
    close = others & (d_mask <= max(1.0, 1.5 * inplane))
    if not close.any():
        return np.zeros_like(others)
    lab, _ = ndimage.label(others, structure=_CONN6)
    touching = np.unique(lab[close])
    touching = touching[touching > 0]
    reach = np.atleast_1d(ndimage.maximum(d_mask, lab, touching))
    if min_reach_mm is None:
        min_reach_mm = max(1.5, 2.0 * inplane)
    return np.isin(lab, touching[reach >= min_reach_mm])


def _attached_radius(attached: np.ndarray, d_mask: np.ndarray, sp) -> float:
    """Largest inscribed radius (mm) of ``attached`` within 3 mm of the mask, or 0.

    The thickness of a vessel where it meets the nodule, not of a larger
    trunk further away; ``d_mask`` is the distance (mm) to the mask.
    """
    near = attached & (d_mask <= 3.0)
    if not near.any():
        return 0.0
    return float(_morph.edt(np.pad(attached, 1), sp)[1:-1, 1:-1, 1:-1][near].max())


def _thick_attachment(mask, attached, d_mask, sp, ratio=_OPENING_FACTOR) -> bool:
    r"""True when an attached structure is too thick to be cut off by the opening.

    .. math:: r_v \ge 0.45\, r_n

    with :math:`r_v` the largest inscribed radius of the attached structures
    within 3 mm of the mask (the vessel where it meets the nodule, not a
    larger trunk further away) and :math:`r_n` the mask's largest inscribed
    radius. The opening by :math:`0.45\, r_{in}` (step 6) detaches only
    structures thinner than its ball [1]_; a vessel as thick as that may stay
    attached, or the larger balls of the retries may have eroded the nodule,
    so the boundary there is a guess and is flagged.
    """
    r_v = _attached_radius(attached, d_mask, sp)
    if r_v <= 0.0:
        return False
    return r_v >= ratio * _inscribed_radius(mask, sp)


def _elongated_like_vessel(mask, sp, hu, t, inplane, max_ratio=0.3):
    r"""True when the mask's axial cross-section is strongly elongated (vessel sign).

    .. math:: S / L < 0.3, \qquad L > 3\,h_{xy}

    with :math:`L, S` the axial long and short axes, as reported by
    :func:`nodulegrowth.measure.axial_axes` (sub-voxel contour at the
    threshold), of the mask with the voxels in-plane next to it above the
    threshold, and :math:`h_{xy}` the in-plane voxel size. Nodules are rarely
    more than 3:1 in-plane; a region grown along a tubular structure is. At
    coarse voxels (about 3 mm) the opening cannot cut a vessel of the size of
    a voxel, so this flags what it leaves behind (a false alarm only costs a
    look, a silent leak a wrong volume).
    """
    from .errors import MeasurementError
    from .measure import axial_axes  # local import keeps segment importable on its own

    # axial_axes' HU contour stops where the mask was cut off from a denser
    # neighbour; here what goes on beyond the cut is the evidence (a vessel
    # line one voxel longer than the mask keeps of it), so the mask is
    # extended in-plane by the voxels next to it above the threshold
    ext = mask | (ndimage.binary_dilation(mask, structure=np.ones((1, 3, 3), bool)) & (np.asarray(hu) >= t))
    try:
        ax = axial_axes(ext, sp, hu=hu, threshold_hu=t, contour="hu_threshold")
    except MeasurementError:  # e.g. an empty mask: nothing to flag, and a QC flag must not cost the segmentation
        return False
    return bool(ax.long_mm > 3.0 * inplane and ax.short_mm < max_ratio * ax.long_mm)


def _edge_asymmetry(sm, wall, mask, P, C, sp, *, others=None, inplane=None, d_mask=None):
    r"""Outer-to-inner spread of the nodule edge, from its volume-threshold curve.

    .. math::

        A = \frac{r(0.15) - r(0.5)}{r(0.5) - r(0.85)}, \qquad
        r(f) = \Big(\frac{3 V(P + f\,(C - P))}{4 \pi}\Big)^{1/3}

    with :math:`V(t)` the volume of the connected region :math:`I_\sigma \ge t`
    (chest wall excluded, within 12 mm of ``mask``) at the densest voxel of
    ``mask``. A blurred solid edge gives :math:`A \approx 1` whatever the blur
    (the edge-spread function is point-symmetric about its 50 % level); a
    ground-glass rim of thickness :math:`w` adds about :math:`w` to the
    numerator only. Returns 0 when the curve is degenerate.

    ``others`` (dense structures outside the nodule: vessels cut off by the
    opening) are left out of all three regions with a margin of
    max(1.5 mm, 1.5 voxels) for their blur: at the 15 % level a vessel's
    blurred flank would otherwise join the nodule's and pass for a rim.
    ``d_mask``, the distance (mm) to ``mask`` when the caller has it, saves
    computing it again.
    """
    seed = np.unravel_index(int(np.argmax(np.where(mask, sm, -np.inf))), sm.shape)
    h = inplane if inplane is not None else float(min(sp[1:]))
    near = (_distance_to(mask, sp) if d_mask is None else d_mask) <= 12.0
    if others is not None and others.any():
        near &= ~(_distance_to(others, sp) <= max(1.5, 1.5 * h)) | mask
    r = {}
    r_open = max(1.5, 1.5 * h)
    for f in (0.15, 0.5, 0.85):
        comp = _component_at((sm >= P + f * (C - P)) & ~wall & near, seed)
        if f < 0.5 and r_open >= sp[0]:
            # a thin vessel blurred below the solid level shows at the 15 %
            # level as a tube joined to the nodule; a ground-glass rim is a
            # shell around the core, which an opening by a small ball keeps.
            # Not on slices thicker than the ball: the opening would then be
            # per slice and take off the nodule's top and bottom slices.
            opened = _opening(comp, r_open, sp)
            if opened[seed]:
                comp = _component_at(opened, seed)
        r[f] = _equivalent_radius(comp, sp)
    inner = r[0.5] - r[0.85]
    if inner <= 0:
        return 0.0 if r[0.15] <= r[0.5] else math.inf
    return (r[0.15] - r[0.5]) / inner


def _trim_vessel_stubs(mask: np.ndarray, others: np.ndarray, sm: np.ndarray, dense_level: float, seed, sp,
                       inplane: float) -> np.ndarray:
    r"""The mask without vessel stubs that the separating opening left on it.

    The opening of step 6 uses a ball of :math:`0.45\, r_{in}`, with
    :math:`r_{in}` the seed's distance to the background: small when the
    seed sits off-centre in an elongated nodule, so that a vessel about as
    thick as that ball stays attached for a few millimetres where it runs
    along the nodule. A piece of the mask is such a stub when

    * a ball of radius :math:`0.7\, r_{ref}` (:math:`r_{ref}` the mask's
      largest inscribed radius, as in the leak test) cannot reach it: the
      mask opened by that ball, grown by one voxel, leaves it out;
    * it protrudes at least :math:`\max(1.5\ \text{mm}, 2.25\ h)` from that
      opened mask (:math:`h` the in-plane voxel size): the opening also
      shaves thin layers off the nodule's own surface where it is curved
      more tightly than the ball, and those stay;
    * it touches (within two voxels) a dense structure of ``others``
      that continues away from the mask (:func:`_attached_structures`): a
      lobe or tip of the nodule ends in the lung, a vessel goes on;
    * its densest voxel reaches ``dense_level`` (the nodule's tissue level
      plus 3 noise SD of the smoothed image): a vessel is denser than
      ground glass. A solid nodule's stub, as dense as the nodule, is
      therefore never trimmed; the leak flags speak for it. Without this
      test one solid nodule of the default benchmark grid changes (6.5 mm,
      on a 1.2 mm-radius vessel): the piece cut is the vessel's (28 of the
      30 mask voxels outside the true nodule), long axis +0.91 -> -0.30 mm,
      but the volume goes from -9 to -18 % because the nodule is
      under-segmented elsewhere at that scan (its partial-volume threshold
      36 HU above the midpoint of the phantom's lung and nodule levels) and
      the stub had made up for it; a solid stub cannot be told from a lobe
      by density either. A part-solid nodule's solid core is denser than
      its ground glass too: an eccentric core bulging out of the nodule
      beside a vessel would be cut (not seen on the benchmark's or the
      project's phantoms).

    Such pieces are removed, unless that would remove 40 % of the mask or
    more (then the mask is returned unchanged: a guess that large is not
    made silently; the leak test judges that mask). Only meaningful on
    near-isotropic voxels, where the balls are resolved along z.

    Parameters
    ----------
    mask : ndarray of bool, shape (z, y, x)
        The nodule mask.
    others : ndarray of bool, shape (z, y, x)
        Dense voxels that are neither the mask nor the chest wall.
    sm : ndarray of float, shape (z, y, x)
        The smoothed image (HU).
    dense_level : float
        HU a piece must reach to count as a vessel (see above).
    seed : tuple of int
        Seed index (z, y, x); the component nearest to it is kept.
    sp : ndarray, shape (3,)
        Spacing (z, y, x) in mm.
    inplane : float
        In-plane voxel size (mm).

    Returns
    -------
    ndarray of bool, shape (z, y, x)
        The trimmed mask (the input itself when nothing is trimmed).
    """
    if not mask.any():
        return mask
    sl = ndimage.find_objects(mask.astype(np.uint8))[0]
    pad = tuple(slice(max(0, s.start - 3), min(n, s.stop + 3)) for s, n in zip(sl, mask.shape))
    m = mask[pad]
    opened = _reference_opening(m, _inscribed_radius(m, sp), sp, inplane)
    if opened is None or not opened.any():
        return mask
    core = m & ndimage.binary_dilation(opened, _CONN6)
    removed = m & ~core
    if not removed.any():
        return mask
    attached = _attached_structures(others, _distance_to(mask, sp), inplane)[pad]
    if not attached.any():
        return mask
    lab, _ = ndimage.label(removed, structure=_CONN6)
    touch = ndimage.binary_dilation(attached, ndimage.generate_binary_structure(3, 3), iterations=2)
    ids = np.unique(lab[touch & removed])
    ids = ids[ids > 0]
    if ids.size:
        reach = np.atleast_1d(ndimage.maximum(_distance_to(core, sp), lab, ids))
        peak = np.atleast_1d(ndimage.maximum(sm[pad], lab, ids))
        ids = ids[(reach >= max(1.5, 2.25 * inplane)) & (peak >= dense_level)]
    if ids.size == 0:
        return mask
    out = mask.copy()
    sub = out[pad]
    sub[np.isin(lab, ids)] = False
    out[pad] = sub
    out = _component_nearest(out, seed, sp)
    if out.sum() <= 0.6 * mask.sum():
        return mask
    return out
