"""Size measurements of a segmented lung nodule: axes, 3-D diameter, volume.

Every function here is pure (no I/O) and works on a boolean mask ``(z, y, x)``
together with its voxel ``spacing_zyx`` in millimetres. Physical points are
returned in the LPS ``(x, y, z)`` frame in millimetres (the ITK/DICOM frame).

Boundary convention
-------------------
A voxelised object occupies its voxels *as boxes*: a disc of radius ``R``
sampled on a grid of pitch ``h`` covers about ``2R / h`` voxels along a
diameter, so a diameter measured between the *centres* of the two extreme
voxels is one voxel too short. All lengths here are measured on an
iso-contour of the (smoothed) mask, which runs along the voxel faces between
inside and outside voxels; along the grid axes this is the voxel-boundary
extent and it is unbiased (on average over sub-voxel positions) for a
voxelised disc. The 3-D
diameter uses the iso-surface at 0.5 of the mask smoothed by 0.7 voxel
(``marching_cubes``). The axial axes use the iso-lines
(``find_contours``) of the mask smoothed in 3-D by a Gaussian of 1 mm across
slices and 0.6 mm (at least 0.7 voxel) in-plane, each slice at the level
whose contour encloses that slice's voxel area: smoothing across
neighbouring slices averages out boundary voxels flipped by image noise,
which the longest chord would otherwise pick (the mean diameter of a noisy
segmentation comes out a few tenths of a millimetre too large and varies as
much between two scans), and the area-preserving level undoes the shrinkage
smoothing causes on curved contours. It also rounds off sharp corners and
tips a millimetre or so across (a spicule seen on a single thin slice is
partly smoothed away).
When the HU image and the segmentation threshold are given, the contours are
instead those of the CT image itself, smoothed by the same Gaussian, at the
one level whose iso-surface encloses the mask's volume (structures the
segmentation cut off, a vessel or the chest wall, are first set to the
parenchyma's level, and the mask's brightest tenth clipped). The mask fixes
the size, the grey values the shape: a thresholded mask's boundary voxels
flip with the image noise, and that was much of the scatter of the mean
diameter between two scans (scenes drawn from the benchmark's generator, SD
of the mean-diameter change on the mask contour / on this one: isolated
solid 0.10 / 0.04 mm, isolated ground glass 0.14 / 0.09, isolated
part-solid 0.14 / 0.11, juxtapleural solid 0.13 / 0.09, juxtavascular solid
0.18 / 0.16, juxtavascular ground glass 0.17 / 0.13, juxtapleural ground
glass 0.11 / 0.11; docs/VALIDATION.md). Its mean error on those scans is
-0.11 to +0.02 mm (the mask contour's 0.00 to +0.13), and -0.24 mm on an
8 x 6.4 x 7.2 mm ellipsoid under 1.25 mm slices (tests/test_measure.py):
with one level for the whole nodule, smoothing across slices rounds it
along z and its widest section shrinks. ``contour="hu_threshold"`` keeps
the unsmoothed iso-line at the threshold (sub-voxel on a noiseless image;
noisier than the mask's on a noisy one).
On the image's contour the two axes are then scaled from the slice to the
largest section between the slices (the vertex of a parabola through the
contour areas of that slice and its two neighbours, :func:`axial_axes`):
the slices fall anywhere within half a slice of the nodule's widest
section, and the slice's section is smaller by up to a few per cent of the
diameter for small nodules, by a different amount at T1 and T2. On the
benchmark's thin slices this cut the per-scan mean-diameter error from
-0.10 to -0.08 mm on average (docs/VALIDATION.md, "The largest section
between the slices").

References
----------
.. [1] American College of Radiology. Lung-RADS v2022 (Lung CT Screening
   Reporting & Data System), 2022.
.. [2] Bankier AA, MacMahon H, Goo JM, et al. Recommendations for measuring
   pulmonary nodules at CT: a statement from the Fleischner Society.
   Radiology 2017;285:584-600.
.. [3] MacMahon H, Naidich DP, Goo JM, et al. Guidelines for management of
   incidental pulmonary nodules detected on CT images: from the Fleischner
   Society 2017. Radiology 2017;284:228-243.
.. [4] Horeweg N, van Rosmalen J, Heuvelmans MA, et al. Lung cancer
   probability in patients with CT-detected pulmonary nodules: a prespecified
   analysis of data from the NELSON trial. Lancet Oncol 2014;15:1332-1341.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from skimage import measure as skmeasure

from .errors import MeasurementError

__all__ = [
    "AxialAxes",
    "NoduleMeasurement",
    "axial_axes",
    "round_diameter_mm",
    "mean_diameter_mm",
    "max_3d_diameter",
    "volume_mm3",
    "partial_volume_mm3",
    "centroid_world",
    "measure_nodule",
    "measurement_table",
]


# --------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------
def _check_spacing(spacing_zyx) -> np.ndarray:
    try:
        sp = np.asarray(spacing_zyx, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise MeasurementError(
            f"spacing_zyx={spacing_zyx!r} is not numeric; pass three voxel sizes (z, y, x) in mm"
        ) from None
    if sp.size != 3 or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise MeasurementError(
            f"spacing_zyx={tuple(np.atleast_1d(sp).tolist())} is invalid; "
            "pass three finite positive voxel sizes (z, y, x) in mm"
        )
    return sp


def _check_mask(mask, name: str = "mask", allow_empty: bool = False) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 3:
        raise MeasurementError(
            f"{name} has shape {m.shape}; pass a 3-D boolean array (z, y, x)"
        )
    if m.dtype != bool:
        if not (np.issubdtype(m.dtype, np.integer) or np.issubdtype(m.dtype, np.floating)):
            raise MeasurementError(f"{name} has dtype {m.dtype}; pass a boolean (z, y, x) mask")
        m = m != 0
    if not allow_empty and not m.any():
        raise MeasurementError(
            f"{name} is empty (0 voxels of {m.size}); the segmentation found no nodule -- "
            "check the seed point or flag the nodule as not found"
        )
    return m


#: Contours :func:`axial_axes` can measure on (see there).
CONTOURS = ("mask", "hu", "hu_threshold")

# Which of several about equally long chords is the long axis (:func:`axial_axes`).
# The strict rule "long axis = the longest chord" is unstable whenever chords in
# different directions are about as long: a circle cut by the chest wall has a whole
# fan of diameters of exactly the same length, whose perpendiculars differ by
# millimetres (a project phantom's juxtapleural sphere: long chords of 14.16 and
# 14.21 mm, perpendiculars of 13.9 and 11.9 mm, chosen at random between two scans).
# On a voxel grid a chord's length depends on its direction and on the object's
# sub-voxel position by up to about half a pixel (a noiseless 14 mm sphere on a
# 0.7 mm grid: 14.33 mm along the grid axes, 14.0 along the diagonals), so chords
# within half a pixel of the longest cannot be told apart.
LONG_AXIS_TIE_PIXELS = 0.5

# Widths of the Gaussian applied to a binary mask before its contours are taken.
# The raw 0.5 contour of a voxelised disc is a staircase whose corners stick out,
# and the boundary of a segmentation of a noisy image has single voxels flipped
# at random: the longest chord over all directions and slices is an extreme-value
# statistic that picks such a corner or bump (biased upwards, and noisy: two scans
# of the same nodule differ by more than their volumes do). Smoothing in 3-D
# averages each slice's contour with its neighbours' (1 mm: about one slice on
# thin-slice CT, almost nothing on 5 mm slices) and over a voxel or so in-plane
# (0.6 mm, at least 0.7 voxel, which rounds the staircase off). Smoothing
# shrinks a curved contour (by about sigma^2 / (2 R) in 2-D); the level of each
# slice is therefore the one whose contour encloses the slice's voxel area,
# which removes that shrinkage on average and keeps each slice's area (no
# volume moves between slices). It still rounds sharp corners and tips: a
# 6 x 2 mm ellipse's long axis comes out about 0.9 mm short on 0.7 mm voxels
# (0.6 mm with the former 0.5 line of a 0.7-voxel in-plane smoothing). Widths
# compared on benchmark masks (tests/test_measure.py has the voxel-flip test):
# 0.8 mm in-plane rounded more (that ellipse -1.2 mm, juxtapleural masks cut
# flat along the wall -0.05 mm more) for no better change between two scans;
# only 0.7 voxel in-plane (0.49 mm on 0.7 mm voxels) failed the voxel-flip test
# (mean diameter +0.33 mm on a 20 x 16 x 14 mm ellipsoid).
_SMOOTH_SIGMA_Z_MM = 1.0
_SMOOTH_SIGMA_XY_MM = 0.6
_SMOOTH_SIGMA_VOX = 0.7
# Bisection steps for the area-preserving level (the level is found to
# 2^-14 of the field's range; the area is then exact to far below a pixel).
_LEVEL_STEPS = 14
# The HU contour (:func:`_hu_slice_contours`): the parenchyma level is the
# median of the voxels below the threshold within this many voxels of the mask;
# the one level is found to 2^-20 of the range between it and the field's peak.
_HU_NEAR_VOXELS = 3
_HU_LEVEL_STEPS = 20
# ... and the mask's voxels are clipped at this percentile of their HU
# (docs/VALIDATION.md, "Axes on the image's contour": ground glass on the wall)
_HU_CLIP_PERCENTILE = 90.0


def _smoothed(m: np.ndarray) -> np.ndarray:
    """Binary mask -> occupancy smoothed by 0.7 voxel (staircase corners rounded
    off); falls back to the raw mask for structures too thin to keep a 0.5 level."""
    f = ndimage.gaussian_filter(m.astype(float), _SMOOTH_SIGMA_VOX, mode="constant")
    if f.max() <= 0.5:
        return m.astype(float)
    return f


def _contour_sigma(sp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The contours' Gaussian (voxels, z y x) for spacing ``sp`` and the pad
    (voxels per side) that keeps its 3-SD reach inside the field."""
    sig = np.array([_SMOOTH_SIGMA_Z_MM / sp[0],
                    max(_SMOOTH_SIGMA_VOX, _SMOOTH_SIGMA_XY_MM / sp[1]),
                    max(_SMOOTH_SIGMA_VOX, _SMOOTH_SIGMA_XY_MM / sp[2])])
    return sig, np.ceil(3.0 * sig).astype(int) + 1


def _bisect_level(area_at, lo: float, hi: float, target: float, steps: int) -> float:
    """The level in [lo, hi] at which ``area_at(level)``, decreasing in the
    level, crosses ``target`` (bisection, ``steps`` halvings)."""
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        if area_at(mid) > target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _smoothed_field(m: np.ndarray, sp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """3-D smoothed occupancy of a binary mask, padded so that nothing is cut off.

    Returns the field and the pad (voxels per axis) added on each side.
    """
    sig, pad = _contour_sigma(sp)
    f = np.pad(m.astype(float), [(int(q), int(q)) for q in pad])
    return ndimage.gaussian_filter(f, sig, mode="constant", truncate=3.0), pad


def _enclosed_area(contours: list[np.ndarray]) -> float:
    """Area (pixels) enclosed by closed ``find_contours`` polygons; holes count
    negative because skimage orients inner and outer contours oppositely."""
    a = 0.0
    for c in contours:
        y, x = c[:, 0], c[:, 1]
        a += 0.5 * float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
    return abs(a)


def _area_preserving_contours(f2: np.ndarray, target_px: float) -> list[np.ndarray]:
    """Iso-contours (pixel units) of ``f2`` at the level that encloses ``target_px`` pixels."""
    hi = float(f2.max())
    if hi <= 0.0:
        return []
    level = _bisect_level(lambda v: _enclosed_area(skmeasure.find_contours(f2, v)), 0.0, hi, target_px,
                          _LEVEL_STEPS)
    return [c for c in skmeasure.find_contours(f2, level) if len(c) >= 2]


# --------------------------------------------------------------------------
# 2-D helpers
# --------------------------------------------------------------------------
def _slice_contours(mask2d: np.ndarray, field2d: np.ndarray, level: float,
                    spacing_yx: np.ndarray) -> list[np.ndarray]:
    """Closed iso-contours of one axial slice on the HU image, in mm ``(y, x)`` (array frame)."""
    # The HU field is restricted to the mask dilated by one voxel, so that the
    # contour is sub-voxel at the nodule edge but never runs along a vessel or
    # the chest wall that the segmentation excluded.
    region = ndimage.binary_dilation(mask2d, structure=np.ones((3, 3), bool))
    low = level - 1000.0
    f = np.where(region, field2d, low)
    # Inside voxels below the threshold (filled holes) count as inside.
    f = np.where(mask2d, np.maximum(f, level + 1e-3), f)
    # A voxel next to the mask but above the threshold belongs to what the
    # segmentation cut off (chest wall, vessel): the contour crossed it and
    # ran a voxel into the wall (a juxtapleural disc on 1 mm pixels: long and
    # short axis +1.2 to +1.6 mm). It is mirrored about the level against its
    # densest mask neighbour, which puts the edge halfway, where the mask's is.
    cut = region & ~mask2d & (f >= level)
    if cut.any():
        inside = ndimage.grey_dilation(np.where(mask2d, f, -np.inf), footprint=np.ones((3, 3), bool))
        f = np.where(cut, 2.0 * level - inside, f)
    f = np.pad(f, 1, constant_values=low)
    cs = skmeasure.find_contours(f, level)
    return [(c - 1.0) * spacing_yx for c in cs if len(c) >= 2]


def _mask_slice_contours(m: np.ndarray, sp: np.ndarray):
    """Per axial slice ``k`` holding mask voxels: its contours in mm ``(y, x)``
    (array frame, from the centre of voxel ``[k, 0, 0]``), from the smoothed
    field at the slice's area-preserving level (module notes)."""
    f, pad = _smoothed_field(m, sp)
    for k in np.flatnonzero(m.any(axis=(1, 2))):
        cs = _area_preserving_contours(f[k + pad[0]], float(m[k].sum()))
        if not cs:  # pragma: no cover - a non-empty slice keeps a positive field
            raw = np.pad(m[k].astype(float), [(int(pad[1]), int(pad[1])), (int(pad[2]), int(pad[2]))])
            cs = [c for c in skmeasure.find_contours(raw, 0.5) if len(c) >= 2]
        yield int(k), [(c - pad[1:]) * sp[1:] for c in cs]


def _hu_slice_contours(m: np.ndarray, sp: np.ndarray, hu: np.ndarray, threshold: float):
    """Per axial slice ``k`` holding mask voxels: the contours in mm ``(y, x)``
    (array frame, from the centre of voxel ``[k, 0, 0]``) of the smoothed CT
    image at the one level whose iso-surface encloses the mask's volume
    (:func:`axial_axes`, ``contour="hu"``); None when the mask has no
    parenchyma around it to set that level against."""
    sig, pad = _contour_sigma(sp)
    box = ndimage.find_objects(m.astype(np.uint8))[0]
    start = np.array([b.start for b in box])
    stop = np.array([b.stop for b in box])
    lo_idx = np.maximum(start - pad, 0)
    hi_idx = np.minimum(stop + pad, m.shape)
    crop = tuple(slice(int(a), int(b)) for a, b in zip(lo_idx, hi_idx))
    mc, hc = m[crop], np.asarray(hu, dtype=float)[crop]
    near = ndimage.binary_dilation(mc, iterations=_HU_NEAR_VOXELS)  # face-connected steps
    shell = near & ~ndimage.binary_dilation(mc) & (hc < threshold)
    if int(shell.sum()) < 8:
        return None
    p_level = float(np.median(hc[shell]))
    # what the segmentation left out above the threshold (a vessel, the chest
    # wall) and everything beyond a few voxels reads as parenchyma, and the
    # mask's brightest tenth (a wall's or vessel's blurred flank the mask took
    # in) is clipped, so that smoothing carries neither past the mask's edge
    top = float(np.percentile(hc[mc], _HU_CLIP_PERCENTILE))
    f = np.where(mc, np.minimum(hc, top), np.where(near & (hc < threshold), hc, p_level))
    # a mask near the array's edge: the missing margin is parenchyma too
    extra = [(int(e0), int(e1)) for e0, e1 in zip(np.maximum(pad - (start - lo_idx), 0),
                                                  np.maximum(pad - (hi_idx - stop), 0))]
    f = np.pad(f, extra, constant_values=p_level)
    mp = np.pad(mc, extra)
    f = ndimage.gaussian_filter(f, sig, mode="nearest", truncate=3.0)
    f = np.where(ndimage.binary_dilation(mp, iterations=2), f, p_level)
    ks = np.flatnonzero(mp.any(axis=(1, 2)))
    target = float(mp.sum())
    lo, hi = p_level, float(f[ks].max())
    if not hi > lo:
        return None
    level = _bisect_level(lambda v: sum(_enclosed_area(skmeasure.find_contours(f[k], v)) for k in ks),
                          lo, hi, target, _HU_LEVEL_STEPS)
    origin = lo_idx - np.array([e[0] for e in extra])  # index in ``m`` of the field's voxel 0
    out = []
    for k in ks:
        cs = [c for c in skmeasure.find_contours(f[k], level) if len(c) >= 2]
        if cs:
            out.append((int(k + origin[0]), [(c + origin[1:]) * sp[1:] for c in cs]))
    return out or None


def _hull_points(points: np.ndarray) -> np.ndarray:
    """The distinct ``points`` (N, 2 or 3) on their convex hull (all of them if degenerate),
    at most 4000 (a subsample beyond that, to bound the pairwise matrices)."""
    pts = np.unique(points, axis=0)
    if len(pts) > pts.shape[1] + 1:
        try:
            pts = pts[ConvexHull(pts).vertices]
        except (QhullError, ValueError):
            pass  # collinear / coplanar: fall back to all points
    if len(pts) > 4000:
        pts = pts[np.linspace(0, len(pts) - 1, 4000).astype(int)]
    return pts


def _near_longest_chords(hull: np.ndarray, min_length: float, bin_deg: float = 2.0):
    """Chords between 2-D ``hull`` points at least ``min_length`` mm long, the longest one
    per direction bin of ``bin_deg`` degrees: a list of (length, (2, 2) endpoints)."""
    if len(hull) == 1:
        return [(0.0, np.vstack([hull[0], hull[0]]))]
    diff = hull[:, None, :] - hull[None, :, :]
    d = np.sqrt((diff ** 2).sum(-1))
    a, b = np.nonzero(np.triu(d >= min_length, 1))
    if a.size == 0:  # only when min_length exceeds this slice's longest chord
        a, b = np.unravel_index(np.argmax(d), d.shape)
        a, b = np.atleast_1d(a), np.atleast_1d(b)
    ang = np.degrees(np.arctan2(diff[a, b, 0], diff[a, b, 1])) % 180.0
    bins = np.floor(ang / bin_deg).astype(int)
    order = np.lexsort((-d[a, b], bins))
    first = np.r_[True, bins[order][1:] != bins[order][:-1]]
    return [(float(d[a[i], b[i]]), np.vstack([hull[a[i]], hull[b[i]]])) for i in order[first]]


def _max_chord(points: np.ndarray) -> tuple[float, np.ndarray]:
    """Largest distance between two of ``points`` (N, 2 or 3); returns (d, (2, D) endpoints)."""
    return _farthest_pair(_hull_points(points))


def _farthest_pair(pts: np.ndarray) -> tuple[float, np.ndarray]:
    """Largest distance between two of ``pts`` (already reduced to their hull) and the pair."""
    if len(pts) == 1:
        return 0.0, np.vstack([pts[0], pts[0]])
    d2 = ((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1)
    a, b = np.unravel_index(np.argmax(d2), d2.shape)
    return float(math.sqrt(d2[a, b])), np.vstack([pts[a], pts[b]])


def _perpendicular_chord(contours: list[np.ndarray], p0: np.ndarray, p1: np.ndarray
                         ) -> tuple[float, np.ndarray]:
    """Longest chord of the contour polygons exactly perpendicular to ``p1 - p0``.

    The polygons are rotated so that the long axis lies along ``u``; every line
    ``u = c`` cuts the polygon edges at points whose ``v`` coordinates are linear
    in ``c`` between consecutive vertex abscissae, so ``max v - min v`` is convex
    there and its maximum is reached at a vertex abscissa: evaluating all vertex
    abscissae gives the exact maximum (no angular tolerance needed).
    """
    axis = p1 - p0
    n = np.linalg.norm(axis)
    if n == 0:
        return 0.0, np.vstack([p0, p0])
    e_u = axis / n
    e_v = np.array([-e_u[1], e_u[0]])
    best, best_pts = 0.0, np.vstack([p0, p0])
    edges_a, edges_b = [], []
    for c in contours:
        edges_a.append(c[:-1])
        edges_b.append(c[1:])
    a = np.concatenate(edges_a)
    b = np.concatenate(edges_b)
    ua, ub = a @ e_u, b @ e_u
    va, vb = a @ e_v, b @ e_v
    cs = np.unique(np.concatenate([ua, ub]))
    # process abscissae in blocks to bound memory (edges x abscissae)
    for start in range(0, len(cs), 256):
        cc = cs[start:start + 256][:, None]
        lo = np.minimum(ua, ub)[None, :]
        hi = np.maximum(ua, ub)[None, :]
        hit = (cc >= lo) & (cc <= hi)
        du = (ub - ua)[None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(np.abs(du) > 1e-12, (cc - ua[None, :]) / du, 0.0)
        v = va[None, :] + t * (vb - va)[None, :]
        vmax = np.where(hit, v, -np.inf).max(1)
        vmin = np.where(hit, v, np.inf).min(1)
        # a vertical edge (du == 0) contributes both its end points
        vert = hit & (np.abs(du) <= 1e-12)
        if vert.any():
            vmax = np.maximum(vmax, np.where(vert, np.maximum(va, vb)[None, :], -np.inf).max(1))
            vmin = np.minimum(vmin, np.where(vert, np.minimum(va, vb)[None, :], np.inf).min(1))
        width = vmax - vmin
        i = int(np.argmax(width))
        if np.isfinite(width[i]) and width[i] > best:
            best = float(width[i])
            c0 = float(cc[i, 0])
            best_pts = np.vstack([c0 * e_u + vmin[i] * e_v, c0 * e_u + vmax[i] * e_v])
    return best, best_pts


# --------------------------------------------------------------------------
# public measurements
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class AxialAxes:
    r"""Lung-RADS long and short axes of a nodule.

    Attributes
    ----------
    long_mm : float
        Longest in-plane diameter (mm) on the axial slice where it is longest
        (near-equal chords: see :func:`axial_axes`).
    short_mm : float
        Longest diameter perpendicular to the long axis on the same slice (mm).
    slice_index : int
        Index ``k`` (array axis 0) of that axial slice.
    long_endpoints, short_endpoints : numpy.ndarray, shape (2, 2)
        End points of the two chords as ``(y, x)`` positions in mm from the
        centre of voxel ``[k, 0, 0]`` (array frame, not LPS).
    section_scale : float
        Factor :math:`\sqrt{A^*/A_k}` (>= 1) by which the chords of slice
        ``k`` were scaled to the largest section between the slices
        (``between_slices`` of :func:`axial_axes`); 1.0 when they were not.
    """

    long_mm: float
    short_mm: float
    slice_index: int
    long_endpoints: np.ndarray = field(repr=False)
    short_endpoints: np.ndarray = field(repr=False)
    section_scale: float = 1.0

    @property
    def mean_mm(self) -> float:
        """Unrounded mean diameter ``(long + short) / 2`` in mm."""
        return mean_diameter_mm(self.long_mm, self.short_mm)


def axial_axes(mask, spacing_zyx, *, hu=None, threshold_hu: float | None = None,
               tie_mm: float | None = None, contour: str | None = None,
               between_slices: bool | None = None) -> AxialAxes:
    r"""Long and short axis of a nodule on its axial slice of maximal extent.

    The long axis is the longest in-plane chord of the nodule contour over all
    axial slices; the short axis is the longest chord exactly perpendicular to
    it on the same slice (Lung-RADS v2022 [1]_, Fleischner measurement
    statement [2]_):

    .. math::

        L = \max_k \max_{p, q \in C_k} \lVert p - q \rVert, \qquad
        S = \max_{p, q \in C_{k^*},\ (p - q) \perp (p_L - q_L)} \lVert p - q \rVert

    where :math:`C_k` is the closed contour of slice :math:`k` in millimetres
    and :math:`k^*` the slice of the long axis (near-ties: below). The contour of slice :math:`k`
    is the iso-line of the mask smoothed in 3-D (Gaussian :math:`G_\sigma` of
    1 mm along z and 0.6 mm, at least 0.7 voxel, in-plane) at the level
    :math:`\lambda_k` whose contour encloses the slice's voxel area,

    .. math::

        \operatorname{area}\{\, (y, x) : (G_\sigma * M)(z_k, y, x) \ge \lambda_k \,\}
        = N_k \, s_y s_x,

    with :math:`N_k` the mask voxels of slice :math:`k` (``contour="mask"``,
    see the module notes). With ``hu`` and ``threshold_hu`` (``contour="hu"``,
    the default then) it is the iso-line of the image smoothed by the same
    Gaussian at the one level :math:`\lambda` whose contours over the mask's
    slices enclose the mask's volume,

    .. math::

        \tilde I = G_\sigma * I', \qquad
        \sum_k \operatorname{area}\{\, (y, x) : \tilde I(z_k, y, x) \ge \lambda \,\}
        = \sum_k N_k \, s_y s_x,

    where :math:`I'` is the image with the voxels outside the mask that are
    above the threshold (what the segmentation cut off) or more than three
    voxels from it set to the parenchyma level :math:`P` (median of the
    voxels below the threshold within three voxels of the mask), and the
    mask's voxels clipped at the 90th percentile of their HU (a blurred flank
    of the chest wall that the mask took in must not be smoothed past its
    edge). When there is no such parenchyma (fewer than 8 voxels), the
    mask's contour is used.
    ``contour="hu_threshold"``: the iso-line of ``hu`` at ``threshold_hu``
    within one voxel of the mask (where a voxel next to the mask is above the
    threshold, a structure the segmentation cut off, the line runs halfway
    between it and the mask, as the mask's own edge does).
    The long chord runs between convex-hull vertices (exact for a polygon). The
    perpendicular chord is computed exactly (zero angular tolerance) by
    intersecting the contour polygon with all lines perpendicular to the long
    axis through a contour vertex; if a slice holds several disjoint pieces the
    chord spans all of them.

    Near-ties: chords at most :math:`\delta` (``tie_mm``, by default half the
    in-plane pixel) shorter than the longest one, on any slice and in any
    direction, count as equally long. Of those, the one whose sum with its
    perpendicular is largest replaces the strictly longest chord when that
    sum is larger by more than :math:`\delta`:

    .. math::

        (p^*, q^*) = \operatorname*{arg\,max}_{\lVert p - q \rVert \ge L_{max} - \delta}
        \bigl(\lVert p - q \rVert + S(p, q)\bigr), \qquad
        \text{taken if } \lVert p^* - q^* \rVert + S(p^*, q^*) > L_{max} + S_{max} + \delta

    where :math:`S_{max}` is the perpendicular of the longest chord (ties
    between slices go to the larger slice area). Lung-RADS does not say which
    of several equally long diameters to take. On a voxel grid a chord's length
    depends on its direction and on where the nodule sits within the voxels by
    up to about half a pixel, so the strict rule picks among near-equal chords
    by chance. For an ellipse this barely matters (its major axis also has the
    largest sum, and the margin keeps noise-made gains out); but a circle cut by
    the chest wall, whose longest chords are a fan of equal diameters, would
    get its short axis either across the cut or not, millimetres apart, from
    one scan to the next. The reported long axis may then be up to
    :math:`\delta` shorter than the longest chord. Candidates are taken per 2
    degrees of direction; ``tie_mm=0`` gives the strict rule.

    Between slices (``between_slices``, by default on the image's contour
    only): the image's slices fall anywhere within half a slice of the
    nodule's largest axial section, and a section :math:`\Delta z` off the
    centre of an ellipsoid of semi-axis :math:`c` along z is smaller by
    about :math:`\bar d\,\Delta z^2 / 2c^2` (up to 0.16 mm for a 5 mm ball
    under 1.25 mm slices, and different at T1 and T2). The areas
    :math:`A_{k-1}, A_k, A_{k+1}` enclosed by the contours of the long
    axis's slice and its two neighbours are fitted with a parabola in z;
    when it opens downwards and its vertex lies within half a slice of
    :math:`k`, both chords are scaled to the vertex's area:

    .. math::

        \kappa = A_{k-1} - 2 A_k + A_{k+1} < 0, \qquad
        t^* = \frac{A_{k-1} - A_{k+1}}{2 \kappa}, \ |t^*| \le \tfrac12,
        \qquad A^* = A_k - \frac{(A_{k-1} - A_{k+1})^2}{8 \kappa},

        L \leftarrow L \sqrt{A^* / A_k}, \qquad S \leftarrow S \sqrt{A^* / A_k}.

    This is exact for an ellipsoid (its axial sections are similar ellipses
    whose area is quadratic in z) and, near the largest section, a
    second-order estimate for any smooth shape; the correction is at most
    a factor :math:`\sqrt{9/8}` (a vertex half a slice off) and vanishes
    when the slice falls on the largest section. It estimates the largest
    section's axes rather than those of the slice a reader would measure
    on. On the mask's contour each slice's area is its voxel count, too noisy
    a reading of the peak (docs/VALIDATION.md, "Where the slice falls"),
    hence off by default there.

    Parameters
    ----------
    mask : array_like of bool, shape (z, y, x)
        Nodule segmentation.
    spacing_zyx : sequence of 3 float
        Voxel size (z, y, x) in mm; only the in-plane (y, x) part is used.
    hu : array_like of float, shape (z, y, x), optional
        The CT image in HU, for a sub-voxel contour.
    threshold_hu : float, optional
        The segmentation threshold (HU); required with ``hu``.
    tie_mm : float, optional
        Chords within this length (mm) of the longest count as equally long;
        by default half the smaller in-plane voxel size; 0 for the strict rule.
    contour : {'mask', 'hu', 'hu_threshold'}, optional
        What the slices' contours are drawn on (above); by default ``'hu'``
        when ``hu`` is given, else ``'mask'``.
    between_slices : bool, optional
        Scale the chords to the largest section between the slices (above);
        by default True for ``contour='hu'`` (but not for its fallback to the
        mask's contour) and False otherwise.

    Returns
    -------
    AxialAxes
        ``long_mm``, ``short_mm`` (mm), ``slice_index``, chord end points
        and ``section_scale``.

    Raises
    ------
    MeasurementError
        Empty mask, bad spacing, ``hu`` of another shape, a negative or
        non-finite ``tie_mm``, an unknown ``contour`` or an image contour
        without ``hu``.

    Examples
    --------
    A disc of radius 5 mm on a 0.5 mm grid, one slice thick:

    >>> import numpy as np
    >>> yy, xx = np.mgrid[-12:12, -12:12] + 0.5
    >>> disc = ((yy * 0.5) ** 2 + (xx * 0.5) ** 2 <= 25.0)[None]
    >>> ax = axial_axes(disc, (1.0, 0.5, 0.5))
    >>> bool(abs(ax.long_mm - 10.0) < 0.5), bool(abs(ax.short_mm - 10.0) < 0.5)
    (True, True)

    A blurred ball of radius 5 mm in lung (-850 HU), segmented at the
    midpoint and measured on the image's contour:

    >>> from scipy import ndimage
    >>> z, y, x = np.mgrid[-8:8, -16:16, -16:16] * np.array([1.0, 0.5, 0.5])[:, None, None, None]
    >>> hu = ndimage.gaussian_filter(np.where(x**2 + y**2 + z**2 <= 25.0, 0.0, -850.0), (0, 1.2, 1.2))
    >>> ax = axial_axes(hu >= -425, (1.0, 0.5, 0.5), hu=hu, threshold_hu=-425.0)
    >>> bool(abs(ax.mean_mm - 10.0) < 0.25)
    True
    """
    m = _check_mask(mask)
    sp = _check_spacing(spacing_zyx)
    field3 = None
    if hu is not None:
        field3 = np.asarray(hu, dtype=float)
        if field3.shape != m.shape:
            raise MeasurementError(
                f"hu has shape {field3.shape} but mask has {m.shape}; pass the image the mask was made on"
            )
        if threshold_hu is None or not np.isfinite(threshold_hu):
            raise MeasurementError(
                f"threshold_hu={threshold_hu!r} must be a finite HU value when hu is given"
            )
    if contour is None:
        contour = "mask" if field3 is None else "hu"
    if contour not in CONTOURS:
        raise MeasurementError(f"contour={contour!r} is not one of {CONTOURS}")
    if contour != "mask" and field3 is None:
        raise MeasurementError(f"contour={contour!r} needs the image: pass hu and threshold_hu")
    if between_slices is not None and not isinstance(between_slices, (bool, np.bool_)):
        raise MeasurementError(f"between_slices={between_slices!r} must be True, False or None (the default)")
    slices = None
    if contour == "hu":
        slices = _hu_slice_contours(m, sp, field3, threshold_hu)
    elif contour == "hu_threshold":
        slices = ((int(k), _slice_contours(m[k], field3[k], threshold_hu, sp[1:]))
                  for k in np.flatnonzero(m.any(axis=(1, 2))))
    if between_slices is None:
        # on the image's contour only: the mask's (and its fallback, when no
        # parenchyma surrounds the mask) has voxel counts for areas
        between_slices = contour == "hu" and slices is not None
    if slices is None:
        slices = _mask_slice_contours(m, sp)
    if tie_mm is None:
        tie = LONG_AXIS_TIE_PIXELS * float(sp[1:].min())
    else:
        try:
            tie = float(tie_mm)
        except (TypeError, ValueError):
            tie = float("nan")
        if not np.isfinite(tie) or tie < 0:
            raise MeasurementError(
                f"tie_mm={tie_mm!r} must be a finite length >= 0 mm, or None for half the in-plane pixel"
            )
    per_slice = []
    for k, cs in slices:
        if cs:
            hull = _hull_points(np.concatenate(cs))
            per_slice.append((int(k), cs, hull, _farthest_pair(hull)[0]))
    if not per_slice:  # pragma: no cover - a non-empty mask always has a contour
        raise MeasurementError("no contour found in a non-empty mask; this is a bug, please report it")
    longest = max(d for *_, d in per_slice)
    strict = best = None
    for k, cs, hull, d in per_slice:
        if d < longest - tie:
            continue
        area = float(m[k].sum())
        for length, ends in _near_longest_chords(hull, longest - tie):
            s, sends = _perpendicular_chord(cs, ends[0], ends[1])
            cand = (k, length, ends, s, sends)
            if strict is None or (round(length, 9), area) > strict[0]:
                strict = ((round(length, 9), area), cand)
            if best is None or (round(length + s, 9), area) > best[0]:
                best = ((round(length + s, 9), area), cand)
    k, d, ends, s, sends = strict[1]
    # a gain below the tie tolerance is what the grid and noise give any chord
    # near the longest (selecting on it biases noisy ellipses upwards)
    if best[0][0] - (d + s) > tie:
        k, d, ends, s, sends = best[1]
    scale = 1.0
    if between_slices:
        scale = _section_scale({kk: _enclosed_area(cs) for kk, cs, _, _ in per_slice if abs(kk - k) <= 1}, k)
        if scale != 1.0:
            ends, sends = _scaled_chord(ends, scale), _scaled_chord(sends, scale)
    return AxialAxes(float(d * scale), float(s * scale), k, ends, sends, float(scale))


def _section_scale(areas: Mapping[int, float], k: int) -> float:
    """``sqrt(A* / A_k)``: the linear scale from slice ``k``'s section to the vertex of the
    parabola through the contour areas (any unit) of slices ``k - 1, k, k + 1``; 1.0 when a
    neighbour has no contour, the parabola does not open downwards or its vertex lies more
    than half a slice from ``k`` (:func:`axial_axes`, between slices)."""
    a0, a1, a2 = areas.get(k - 1, 0.0), areas.get(k, 0.0), areas.get(k + 1, 0.0)
    kappa = a0 - 2.0 * a1 + a2
    if min(a0, a1, a2) <= 0.0 or not kappa < 0.0:
        return 1.0
    if abs(a0 - a2) > abs(kappa):  # |t*| = |a0 - a2| / (2 |kappa|) > 1/2
        return 1.0
    return math.sqrt((a1 - (a0 - a2) ** 2 / (8.0 * kappa)) / a1)


def _scaled_chord(ends: np.ndarray, scale: float) -> np.ndarray:
    """Chord end points (2, 2) scaled by ``scale`` about their midpoint."""
    ends = np.asarray(ends, dtype=float)
    mid = ends.mean(axis=0)
    return mid + scale * (ends - mid)


def mean_diameter_mm(long_mm: float, short_mm: float) -> float:
    r"""Mean diameter of a nodule, unrounded.

    .. math:: \bar d = (L + S) / 2

    Lung-RADS v2022 [1]_ and the Fleischner Society [2]_ size nodules by the
    mean of the long and short axes measured on the same axial slice.

    Parameters
    ----------
    long_mm, short_mm : float
        Long and short axis (mm).

    Returns
    -------
    float
        Mean diameter (mm).

    Examples
    --------
    >>> mean_diameter_mm(7.0, 5.0)
    6.0
    """
    return (float(long_mm) + float(short_mm)) / 2.0


def round_diameter_mm(d_mm: float, decimals: int = 0) -> float:
    r"""Round a diameter half away from zero, as radiologists report it.

    .. math:: \operatorname{round}(d) = \operatorname{sign}(d)\,
              \lfloor |d| \cdot 10^n + 1/2 \rfloor / 10^n

    The Fleischner Society [2]_ rounds the mean diameter to the nearest
    millimetre (``decimals=0``) before applying size categories; Lung-RADS
    v2022 [1]_ records the mean diameter to one decimal place (``decimals=1``).
    Python's built-in :func:`round` rounds halves to even (6.5 -> 6), which is
    not what the guidelines mean, hence this helper. Keep the unrounded value
    for growth computations.

    Parameters
    ----------
    d_mm : float
        Diameter (mm).
    decimals : int, default 0
        Number of decimals.

    Returns
    -------
    float
        Rounded diameter (mm); NaN stays NaN.

    Examples
    --------
    >>> round_diameter_mm(6.5), round_diameter_mm(6.45, 1)
    (7.0, 6.5)
    """
    d = float(d_mm)
    if not np.isfinite(d):
        return d
    scale = 10.0 ** int(decimals)
    # the small epsilon absorbs binary representation error (6.45 -> 64.4999...)
    return math.copysign(math.floor(abs(d) * scale + 0.5 + 1e-9) / scale, d)


def max_3d_diameter(mask, spacing_zyx) -> float:
    r"""Largest distance between two surface points of the nodule in 3-D (mm).

    .. math:: D_{3D} = \max_{p, q \in \partial V} \lVert p - q \rVert

    The surface :math:`\partial V` is the marching-cubes iso-surface at 0.5 of
    the mask smoothed by a Gaussian of 0.7 voxel (voxel faces with the
    staircase corners rounded off, see the module notes) in mm; the maximum is
    taken over the vertices of its convex hull, where it is always attained.
    With thick slices the stack of voxel slabs still has corners at its ends,
    so the estimate is biased upwards by a fraction of the slice thickness.

    Parameters
    ----------
    mask : array_like of bool, shape (z, y, x)
        Nodule segmentation.
    spacing_zyx : sequence of 3 float
        Voxel size (z, y, x) in mm.

    Returns
    -------
    float
        Maximal 3-D diameter (mm).

    Raises
    ------
    MeasurementError
        Empty mask or bad spacing.

    Examples
    --------
    A 3 x 1 x 1 voxel bar with 1 mm voxels spans 3 mm along z (and
    :math:`\sqrt{3^2 + 1 + 1}` mm corner to corner on the voxel boxes, but
    the 0.5 iso-surface cuts the corners):

    >>> import numpy as np
    >>> bar = np.zeros((5, 3, 3), bool); bar[1:4, 1, 1] = True
    >>> round(max_3d_diameter(bar, (1, 1, 1)), 3)
    3.0
    """
    m = _check_mask(mask)
    sp = _check_spacing(spacing_zyx)
    # crop to the bounding box to keep marching cubes cheap
    sl = ndimage.find_objects(m.astype(np.uint8))[0]
    sub = _smoothed(np.pad(m[sl], 2)).astype(np.float32)
    verts, _, _, _ = skmeasure.marching_cubes(sub, 0.5, spacing=tuple(sp))
    d, _ = _max_chord(verts)
    return d


def volume_mm3(mask, spacing_zyx) -> float:
    r"""Segmented volume: voxel count times voxel volume (mm³).

    .. math:: V = N_{\mathrm{vox}} \, s_z s_y s_x

    This is the volume used by NELSON-style volumetry [4]_.

    Parameters
    ----------
    mask : array_like of bool, shape (z, y, x)
        Nodule segmentation.
    spacing_zyx : sequence of 3 float
        Voxel size (z, y, x) in mm.

    Returns
    -------
    float
        Volume (mm³).

    Raises
    ------
    MeasurementError
        Empty mask or bad spacing.

    Examples
    --------
    >>> import numpy as np
    >>> volume_mm3(np.ones((2, 3, 4), bool), (2.0, 0.5, 0.5))
    12.0
    """
    m = _check_mask(mask)
    sp = _check_spacing(spacing_zyx)
    return float(m.sum()) * float(np.prod(sp))


def partial_volume_mm3(hu, mask_region, spacing_zyx, inside_hu: float, outside_hu: float,
                       *, core=None) -> float:
    r"""Partial-volume corrected volume from the HU image (mm³).

    Each voxel of the region counts by the fraction of it the nodule occupies,
    read linearly from its HU between the parenchyma and nodule levels:

    .. math::

        V_{PV} = s_z s_y s_x \Big( N_{\mathrm{core}} + \sum_{v \in R \setminus \mathrm{core}}
        \operatorname{clip}\Big(\frac{I_v - I_{\mathrm{out}}}{I_{\mathrm{in}} - I_{\mathrm{out}}}, 0, 1\Big) \Big)

    The region :math:`R` should be the mask dilated by a shell of one or two
    voxels (so that blurred edge voxels are included), and should exclude
    other dense structures (vessels, chest wall), whose voxels would otherwise
    count as nodule. Voxels of ``core`` (e.g. the eroded mask) count as fully
    occupied: clipping noisy interior voxels at 1 would otherwise bias the sum
    downwards. The linear mixing model assumes two tissues only, so the estimate
    is meaningful for solid or pure ground-glass nodules.

    Parameters
    ----------
    hu : array_like of float, shape (z, y, x)
        CT image (HU).
    mask_region : array_like of bool, shape (z, y, x)
        Region over which occupancy is summed.
    spacing_zyx : sequence of 3 float
        Voxel size (z, y, x) in mm.
    inside_hu, outside_hu : float
        HU of the nodule tissue and of the surrounding parenchyma.
    core : array_like of bool, shape (z, y, x), optional
        Voxels counted as fully inside (must lie within ``mask_region``).

    Returns
    -------
    float
        Partial-volume corrected volume (mm³).

    Raises
    ------
    MeasurementError
        Empty region, bad spacing, shape mismatch, or ``inside_hu`` not above
        ``outside_hu``.

    Examples
    --------
    Two voxels of 1 mm³, one full (0 HU) and one half-filled (-425 HU) in
    parenchyma of -850 HU:

    >>> import numpy as np
    >>> hu = np.array([[[0.0, -425.0]]]); region = np.ones((1, 1, 2), bool)
    >>> partial_volume_mm3(hu, region, (1, 1, 1), 0.0, -850.0)
    1.5
    """
    r = _check_mask(mask_region, "mask_region")
    sp = _check_spacing(spacing_zyx)
    img = np.asarray(hu, dtype=float)
    if img.shape != r.shape:
        raise MeasurementError(f"hu has shape {img.shape} but mask_region has {r.shape}; pass matching arrays")
    if not (np.isfinite(inside_hu) and np.isfinite(outside_hu)) or inside_hu <= outside_hu:
        raise MeasurementError(
            f"inside_hu={inside_hu} must be finite and above outside_hu={outside_hu}; "
            "estimate them from the nodule core and the surrounding lung"
        )
    c = np.zeros_like(r) if core is None else (_check_mask(core, "core", allow_empty=True) & r)
    frac = np.clip((img[r & ~c] - outside_hu) / (inside_hu - outside_hu), 0.0, 1.0)
    return (float(c.sum()) + float(frac.sum())) * float(np.prod(sp))


def _direction_matrix(direction) -> np.ndarray:
    if direction is None:
        return np.eye(3)
    d = np.asarray(direction, dtype=float)
    if d.size != 9 or not np.all(np.isfinite(d)):
        raise MeasurementError(
            f"direction={direction!r} is not a 3x3 matrix; pass image.GetDirection() (9 numbers, row-major)"
        )
    return d.reshape(3, 3)


def _index_zyx_to_world(idx_zyx, spacing_zyx, origin_xyz, direction) -> np.ndarray:
    sp = _check_spacing(spacing_zyx)
    o = np.asarray(origin_xyz, dtype=float).reshape(-1)
    if o.size != 3 or not np.all(np.isfinite(o)):
        raise MeasurementError(f"origin_xyz={origin_xyz!r} must be three finite numbers (x, y, z) in mm")
    d = _direction_matrix(direction)
    ijk = np.asarray(idx_zyx, dtype=float)[::-1]
    return o + d @ (sp[::-1] * ijk)


def centroid_world(mask, spacing_zyx, origin_xyz=(0.0, 0.0, 0.0), direction=None) -> tuple:
    r"""Centroid of the mask as a physical LPS point ``(x, y, z)`` in mm.

    .. math::

        \mathbf{c} = \mathbf{o} + D \operatorname{diag}(s_x, s_y, s_z)\,
        \frac{1}{N} \sum_{v} (i_v, j_v, k_v)^\top

    with the ITK convention that the numpy index ``[k, j, i]`` is the ITK
    index ``(i, j, k)``, origin :math:`\mathbf{o}` and direction :math:`D`.

    Parameters
    ----------
    mask : array_like of bool, shape (z, y, x)
        Nodule segmentation.
    spacing_zyx : sequence of 3 float
        Voxel size (z, y, x) in mm.
    origin_xyz : sequence of 3 float, default (0, 0, 0)
        Physical position (LPS mm) of voxel ``[0, 0, 0]`` (``image.GetOrigin()``).
    direction : sequence of 9 float or (3, 3) array, optional
        ITK direction cosines (``image.GetDirection()``), row-major; identity
        when omitted.

    Returns
    -------
    tuple of 3 float
        Centroid ``(x, y, z)`` in LPS mm.

    Raises
    ------
    MeasurementError
        Empty mask, bad spacing, origin or direction.

    Examples
    --------
    >>> import numpy as np
    >>> m = np.zeros((3, 3, 3), bool); m[2, 1, 0] = True
    >>> centroid_world(m, (2.0, 1.0, 0.5), origin_xyz=(10.0, 0.0, 0.0))
    (10.0, 1.0, 4.0)
    """
    m = _check_mask(mask)
    c_zyx = np.array(ndimage.center_of_mass(m))
    return tuple(float(v) for v in _index_zyx_to_world(c_zyx, spacing_zyx, origin_xyz, direction))


# --------------------------------------------------------------------------
# the full measurement
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class NoduleMeasurement:
    """All size measurements of one nodule at one time point.

    Attributes
    ----------
    long_axis_mm, short_axis_mm, mean_diameter_mm : float
        Lung-RADS axial axes and their unrounded mean (mm), see :func:`axial_axes`.
    max_3d_diameter_mm : float
        Largest 3-D surface-to-surface distance (mm), see :func:`max_3d_diameter`.
    volume_mm3 : float
        Voxel-count volume (mm³), see :func:`volume_mm3`.
    volume_pv_mm3 : float
        Partial-volume corrected volume (mm³), NaN when no HU image was given.
    center_xyz : tuple of 3 float
        Centroid, LPS mm.
    center_zyx : tuple of 3 float
        Centroid as a (fractional) numpy voxel index ``(z, y, x)``.
    axial_slice : int
        Index ``k`` of the slice of the long axis.
    solid_long_axis_mm, solid_mean_diameter_mm, solid_volume_mm3 : float
        Same measurements of the solid component of a part-solid nodule; NaN
        when there is none.
    voxel_size_mm : float
        Geometric-mean voxel size :math:`(s_z s_y s_x)^{1/3}` (mm) of the scan
        measured, used by the measurement-uncertainty model of
        :mod:`nodulegrowth.growth`.
    """

    long_axis_mm: float
    short_axis_mm: float
    mean_diameter_mm: float
    max_3d_diameter_mm: float
    volume_mm3: float
    volume_pv_mm3: float
    center_xyz: tuple
    center_zyx: tuple
    axial_slice: int
    solid_long_axis_mm: float = math.nan
    solid_mean_diameter_mm: float = math.nan
    solid_volume_mm3: float = math.nan
    voxel_size_mm: float = math.nan

    def as_dict(self, prefix: str = "") -> dict:
        """Flat dictionary with the contract's column names.

        Parameters
        ----------
        prefix : str, default ""
            Prepended to every key, e.g. ``"t1_"`` gives ``t1_long_axis_mm``,
            ``t1_center_x`` ... as in ``measurements.csv``.

        Returns
        -------
        dict
            Contract columns (``long_axis_mm, short_axis_mm, mean_diameter_mm,
            max_3d_diameter_mm, volume_mm3, center_x, center_y, center_z``)
            followed by extras (``volume_pv_mm3, axial_slice, center_k,
            center_j, center_i``, the ``solid_*`` values and ``voxel_size_mm``).

        Examples
        --------
        >>> m = NoduleMeasurement(6, 4, 5, 6.5, 60, float("nan"), (1, 2, 3), (0, 0, 0), 0)
        >>> list(m.as_dict("t1_"))[:3]
        ['t1_long_axis_mm', 't1_short_axis_mm', 't1_mean_diameter_mm']
        """
        p = prefix
        return {
            f"{p}long_axis_mm": self.long_axis_mm,
            f"{p}short_axis_mm": self.short_axis_mm,
            f"{p}mean_diameter_mm": self.mean_diameter_mm,
            f"{p}max_3d_diameter_mm": self.max_3d_diameter_mm,
            f"{p}volume_mm3": self.volume_mm3,
            f"{p}center_x": self.center_xyz[0],
            f"{p}center_y": self.center_xyz[1],
            f"{p}center_z": self.center_xyz[2],
            f"{p}volume_pv_mm3": self.volume_pv_mm3,
            f"{p}axial_slice": self.axial_slice,
            f"{p}center_k": self.center_zyx[0],
            f"{p}center_j": self.center_zyx[1],
            f"{p}center_i": self.center_zyx[2],
            f"{p}solid_long_axis_mm": self.solid_long_axis_mm,
            f"{p}solid_mean_diameter_mm": self.solid_mean_diameter_mm,
            f"{p}solid_volume_mm3": self.solid_volume_mm3,
            f"{p}voxel_size_mm": self.voxel_size_mm,
        }


def _pv_volume(hu: np.ndarray, m: np.ndarray, sp: np.ndarray) -> float:
    """Partial-volume volume with nodule/parenchyma levels estimated from the image."""
    st = ndimage.generate_binary_structure(3, 1)
    core = ndimage.binary_erosion(m, st)
    # a one-voxel shell captures the blurred edge; excluding voxels of the next
    # shell that are denser than the nodule edge keeps attached vessels out
    ring1 = ndimage.binary_dilation(m, st) & ~m
    ring2 = ndimage.binary_dilation(m, st, iterations=3) & ~ndimage.binary_dilation(m, st, iterations=2)
    inner = hu[core] if core.sum() >= 8 else hu[m]
    inside = float(np.median(inner))
    outside = float(np.median(hu[ring2])) if ring2.any() else float(np.median(hu[ring1]))
    if not inside > outside:
        return math.nan
    return partial_volume_mm3(hu, m | ring1, sp, inside, outside, core=core)


def measure_nodule(mask, spacing_zyx, *, origin_xyz=(0.0, 0.0, 0.0), direction=None,
                   hu=None, solid_mask=None, threshold_hu: float | None = None) -> NoduleMeasurement:
    r"""Measure one segmented nodule: axes, 3-D diameter, volumes, centroid.

    Combines :func:`axial_axes` (Lung-RADS v2022 [1]_, Fleischner [2]_),
    :func:`max_3d_diameter`, :func:`volume_mm3` (NELSON volumetry [4]_),
    :func:`partial_volume_mm3` and :func:`centroid_world`:

    .. math::

        \bar d = (L + S)/2, \qquad V = N_{\mathrm{vox}} s_z s_y s_x

    The partial-volume volume uses the median HU of the eroded mask as the
    nodule level and the median HU of a shell two to three voxels outside the
    mask as the parenchyma level.

    Parameters
    ----------
    mask : array_like of bool, shape (z, y, x)
        Nodule segmentation.
    spacing_zyx : sequence of 3 float
        Voxel size (z, y, x) in mm.
    origin_xyz : sequence of 3 float, default (0, 0, 0)
        LPS position (mm) of voxel ``[0, 0, 0]``.
    direction : 9 floats or (3, 3) array, optional
        ITK direction cosines; identity when omitted.
    hu : array_like of float, shape (z, y, x), optional
        CT image (HU); enables ``volume_pv_mm3`` (NaN otherwise).
    solid_mask : array_like of bool, shape (z, y, x), optional
        Solid component of a part-solid nodule; the ``solid_*`` fields are NaN
        when it is None or empty.
    threshold_hu : float, optional
        Segmentation threshold; with ``hu`` the axes are measured on the
        smoothed image's contour that encloses the mask's volume instead of
        the smoothed mask's (``contour="hu"`` of :func:`axial_axes`), and
        scaled to the largest section between the slices. The pipeline
        passes it.

    Returns
    -------
    NoduleMeasurement

    Raises
    ------
    MeasurementError
        Empty mask, bad spacing, shapes that do not match.

    Examples
    --------
    A voxelised sphere of radius 4 mm on a 0.5 mm grid:

    >>> import numpy as np
    >>> z, y, x = (np.mgrid[-10:10, -10:10, -10:10] + 0.5) * 0.5
    >>> ball = x**2 + y**2 + z**2 <= 16.0
    >>> m = measure_nodule(ball, (0.5, 0.5, 0.5))
    >>> bool(abs(m.volume_mm3 - 4 / 3 * np.pi * 64) < 10), bool(abs(m.mean_diameter_mm - 8) < 0.5)
    (True, True)
    """
    m = _check_mask(mask)
    sp = _check_spacing(spacing_zyx)
    img = None
    if hu is not None:
        img = np.asarray(hu, dtype=float)
        if img.shape != m.shape:
            raise MeasurementError(f"hu has shape {img.shape} but mask has {m.shape}; pass matching arrays")
    use_hu_contour = img is not None and threshold_hu is not None
    ax = axial_axes(m, sp, hu=img if use_hu_contour else None,
                    threshold_hu=threshold_hu if use_hu_contour else None)
    c_zyx = tuple(float(v) for v in ndimage.center_of_mass(m))
    c_xyz = tuple(float(v) for v in _index_zyx_to_world(c_zyx, sp, origin_xyz, direction))
    vpv = _pv_volume(img, m, sp) if img is not None else math.nan
    s_long = s_mean = s_vol = math.nan
    if solid_mask is not None:
        sm = _check_mask(solid_mask, "solid_mask", allow_empty=True)
        if sm.shape != m.shape:
            raise MeasurementError(f"solid_mask has shape {sm.shape} but mask has {m.shape}; pass matching arrays")
        if sm.any():
            sax = axial_axes(sm, sp)
            s_long, s_mean, s_vol = sax.long_mm, sax.mean_mm, volume_mm3(sm, sp)
    return NoduleMeasurement(
        long_axis_mm=ax.long_mm,
        short_axis_mm=ax.short_mm,
        mean_diameter_mm=ax.mean_mm,
        max_3d_diameter_mm=max_3d_diameter(m, sp),
        volume_mm3=volume_mm3(m, sp),
        volume_pv_mm3=vpv,
        center_xyz=c_xyz,
        center_zyx=c_zyx,
        axial_slice=ax.slice_index,
        solid_long_axis_mm=s_long,
        solid_mean_diameter_mm=s_mean,
        solid_volume_mm3=s_vol,
        voxel_size_mm=float(np.prod(sp)) ** (1.0 / 3.0),
    )


def measurement_table(masks, spacing_zyx, *, hu=None, origin_xyz=(0.0, 0.0, 0.0),
                      direction=None) -> pd.DataFrame:
    """Measure several nodules into a tidy table, one row per nodule.

    Like :func:`skimage.measure.regionprops_table`, but with the clinical
    measurements of :func:`measure_nodule` as columns.

    Parameters
    ----------
    masks : integer label array (z, y, x), or sequence / mapping of bool masks (z, y, x)
        A label image (0 = background, each positive label one nodule), a list
        of boolean masks (labels 1, 2, ...) or a ``{label: mask}`` mapping.
    spacing_zyx : sequence of 3 float
        Voxel size (z, y, x) in mm.
    hu : array_like of float, shape (z, y, x), optional
        CT image (HU) for the partial-volume volume.
    origin_xyz, direction
        Image geometry, as in :func:`centroid_world`.

    Returns
    -------
    pandas.DataFrame
        Column ``label`` then the keys of :meth:`NoduleMeasurement.as_dict`
        (no prefix). An empty input gives an empty table with these columns.

    Raises
    ------
    MeasurementError
        An empty mask in a list/mapping, bad spacing or shapes.

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.zeros((4, 8, 8), np.int32); lab[1:3, 1:3, 1:3] = 1; lab[1:3, 5:8, 5:8] = 2
    >>> measurement_table(lab, (1, 1, 1))[["label", "volume_mm3"]].values.tolist()
    [[1.0, 8.0], [2.0, 18.0]]
    """
    _check_spacing(spacing_zyx)
    items: list[tuple[object, np.ndarray]]
    if isinstance(masks, Mapping):
        items = [(k, np.asarray(v)) for k, v in masks.items()]
    elif isinstance(masks, np.ndarray) and masks.ndim == 3 and np.issubdtype(masks.dtype, np.integer):
        items = [(int(lab), masks == lab) for lab in np.unique(masks) if lab > 0]
    elif isinstance(masks, np.ndarray) and masks.ndim == 3:
        items = [(1, masks)]
    elif isinstance(masks, (Sequence, Iterable)):
        items = [(i + 1, np.asarray(v)) for i, v in enumerate(masks)]
    else:
        raise MeasurementError(
            f"masks of type {type(masks).__name__} not understood; pass a label array or a list of bool masks"
        )
    cols = ["label"] + list(NoduleMeasurement(*([math.nan] * 6), (0, 0, 0), (0, 0, 0), 0).as_dict())
    rows = []
    for lab, mk in items:
        meas = measure_nodule(mk, spacing_zyx, origin_xyz=origin_xyz, direction=direction, hu=hu)
        rows.append({"label": lab, **meas.as_dict()})
    return pd.DataFrame(rows, columns=cols)
