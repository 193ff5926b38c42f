"""Tests of nodulegrowth.measure on voxelised analytic shapes.

Tolerances are derived from the voxel size: a voxelised shape contains the
true shape eroded by half a voxel diagonal and is contained in it dilated by
half a voxel diagonal, and a boundary estimated on the 0.5 iso-contour is
within half a voxel of the true boundary on each side of a diameter.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from nodulegrowth.errors import MeasurementError, NoduleGrowthError
from nodulegrowth.measure import (
    AxialAxes,
    NoduleMeasurement,
    axial_axes,
    centroid_world,
    max_3d_diameter,
    mean_diameter_mm,
    measure_nodule,
    measurement_table,
    partial_volume_mm3,
    round_diameter_mm,
    volume_mm3,
)

SPACINGS = [(1.0, 0.7, 0.7), (2.5, 0.8, 0.8), (0.6, 0.5, 0.5)]


def grid(spacing, half_mm, offset=(0.0, 0.0, 0.0)):
    """Voxel-centre coordinates (z, y, x) in mm of a cube of half-size ``half_mm``."""
    axes = []
    for s, o in zip(spacing, offset):
        n = int(math.ceil(half_mm / s)) + 2
        axes.append(np.arange(-n, n + 1) * s - o)
    return np.meshgrid(*axes, indexing="ij")


def ellipsoid_mask(spacing, a, b, c, offset=(0.0, 0.0, 0.0), rot=None, half_mm=None):
    """Voxelised ellipsoid with semi-axes a (x), b (y), c (z) mm, centred near 0."""
    z, y, x = grid(spacing, half_mm or max(a, b, c) + 2 * max(spacing), offset)
    p = np.stack([x, y, z], -1)
    if rot is not None:
        p = p @ rot
    return (p[..., 0] / a) ** 2 + (p[..., 1] / b) ** 2 + (p[..., 2] / c) ** 2 <= 1.0


def rot_z(deg):
    t = math.radians(deg)
    return np.array([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1]])


def rot_y(deg):
    t = math.radians(deg)
    return np.array([[math.cos(t), 0, math.sin(t)], [0, 1, 0], [-math.sin(t), 0, math.cos(t)]])


# --------------------------------------------------------------------------
# volume
# --------------------------------------------------------------------------
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("radius", [3.0, 5.0, 10.0])
def test_volume_of_voxelised_sphere_within_half_diagonal_bounds(spacing, radius):
    m = ellipsoid_mask(spacing, radius, radius, radius, offset=(0.13, 0.21, 0.07))
    v = volume_mm3(m, spacing)
    d = 0.5 * math.sqrt(sum(s * s for s in spacing))
    assert 4 / 3 * math.pi * max(radius - d, 0) ** 3 <= v <= 4 / 3 * math.pi * (radius + d) ** 3


@pytest.mark.parametrize("spacing", SPACINGS)
def test_volume_unbiased_over_subvoxel_positions(spacing):
    # the voxel-count volume is unbiased over uniform sub-voxel offsets; the mean
    # of 16 offsets of a 6 mm sphere must be within 3 % (the per-offset spread
    # is below 10 % even for 2.5 mm slices)
    rng = np.random.default_rng(0)
    r = 3.0
    vs = [volume_mm3(ellipsoid_mask(spacing, r, r, r, offset=rng.uniform(0, 1, 3) * spacing), spacing)
          for _ in range(16)]
    assert abs(np.mean(vs) / (4 / 3 * math.pi * r ** 3) - 1) < 0.03


def test_volume_counts_voxels():
    m = np.zeros((3, 4, 5), bool)
    m[1, 1:3, 1:4] = True
    assert volume_mm3(m, (2.0, 0.5, 0.25)) == pytest.approx(6 * 0.25)


# --------------------------------------------------------------------------
# axial axes
# --------------------------------------------------------------------------
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("angle", [0.0, 30.0, 45.0, 110.0])
def test_axial_axes_of_ellipse_cylinder(spacing, angle):
    a, b = 6.0, 3.5
    # an elliptic cylinder: every slice holds the same ellipse, so slice choice is moot
    z, y, x = grid(spacing, a + 2)
    p = np.stack([x, y], -1) @ rot_z(angle)[:2, :2]
    m = ((p[..., 0] / a) ** 2 + (p[..., 1] / b) ** 2 <= 1) & (np.abs(z) <= 2.0)
    ax = axial_axes(m, spacing)
    h = max(spacing[1:])
    assert isinstance(ax, AxialAxes)
    assert ax.long_mm == pytest.approx(2 * a, abs=h)
    assert ax.short_mm == pytest.approx(2 * b, abs=h)
    assert ax.mean_mm == pytest.approx(a + b, abs=h)
    # the short chord is exactly perpendicular to the long one
    lv = ax.long_endpoints[1] - ax.long_endpoints[0]
    sv = ax.short_endpoints[1] - ax.short_endpoints[0]
    assert abs(np.dot(lv, sv)) / (np.linalg.norm(lv) * np.linalg.norm(sv)) < 1e-6
    # the long axis is along the ellipse's major axis: a central chord at angle
    # delta from it is shorter by about 2a (a^2 - b^2) delta^2 / (2 b^2), so a
    # chord within h of the maximum lies within delta_max of the major axis
    delta_max = math.degrees(math.sqrt(h * b * b / (a * (a * a - b * b))))
    ang = math.degrees(math.atan2(lv[0], lv[1])) % 180.0
    assert min(abs(ang - angle % 180), 180 - abs(ang - angle % 180)) < delta_max


@pytest.mark.parametrize("spacing", SPACINGS)
def test_axial_axes_pick_the_widest_slice_of_a_sphere(spacing):
    r = 5.0
    m = ellipsoid_mask(spacing, r, r, r, offset=(0.0, 0.1, 0.3))
    ax = axial_axes(m, spacing)
    zc = np.flatnonzero(m.any(axis=(1, 2)))
    # the slice where the section is widest is the one nearest the centre
    areas = m.sum(axis=(1, 2))
    assert areas[ax.slice_index] == areas.max()
    assert ax.slice_index in zc
    h = max(spacing[1:])
    assert ax.long_mm == pytest.approx(2 * r, abs=h)
    assert ax.short_mm == pytest.approx(2 * r, abs=h)


@pytest.mark.parametrize("spacing", [(1.0, 0.7, 0.7), (1.25, 0.6, 0.6), (1.0, 0.5, 0.5)])
@pytest.mark.parametrize("radius, cut", [(7.0, 0.75), (5.0, 0.8), (7.0, 0.85)])
def test_axial_axes_of_a_sphere_cut_by_the_chest_wall(spacing, radius, cut):
    # A sphere cut by a plane at distance c > R cos 45 deg from its centre keeps
    # a fan of equal diameters (2R) on its central slice, and the two at 45 deg
    # to the cut are both whole, so Lung-RADS long = short = 2R. The strict
    # rule (the longest chord, i.e. tie_mm=0) picks one of the fan by the voxel
    # grid and often one parallel to the cut, whose perpendicular is R + c:
    # mean diameter 0.04-0.42 mm short on average, SD 0.12-0.31 mm over these
    # 16 positions and directions (all 9 cases fail); with the near-tie rule
    # |bias| <= 0.07 mm, SD <= 0.10 mm. Bounds: a fifth (bias) and a quarter
    # (spread) of the 0.5 mm diameter target.
    rng = np.random.default_rng(5)
    errs = []
    for _ in range(16):
        off = rng.uniform(-0.5, 0.5, 3) * np.asarray(spacing)
        th = rng.uniform(0, 2 * math.pi)
        m = ellipsoid_mask(spacing, radius, radius, radius, offset=off)
        z, y, x = grid(spacing, radius + 2 * max(spacing), off)
        m &= (x * math.cos(th) + y * math.sin(th)) < cut * radius
        errs.append(axial_axes(m, spacing).mean_mm - 2 * radius)
    assert abs(np.mean(errs)) < 0.1
    assert np.std(errs) < 0.125


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("abc", [(6.0, 4.5, 3.0), (4.0, 3.0, 4.0)])
def test_axial_axes_keep_the_longest_chord_of_an_ellipse(spacing, abc):
    # The near-tie rule must leave clear ellipses alone: their major axis also
    # gives the largest long + short sum, so the result is the strict one.
    rng = np.random.default_rng(2)
    for _ in range(4):
        m = ellipsoid_mask(spacing, *abc, offset=rng.uniform(-0.5, 0.5, 3) * np.asarray(spacing),
                           rot=rot_z(rng.uniform(0, 180)))
        ax, strict = axial_axes(m, spacing), axial_axes(m, spacing, tie_mm=0.0)
        assert (ax.long_mm, ax.short_mm, ax.slice_index) == (strict.long_mm, strict.short_mm,
                                                             strict.slice_index)


@pytest.mark.parametrize("tie", [-0.1, float("nan"), "wide"])
def test_axial_axes_bad_tie_raises(tie):
    with pytest.raises(MeasurementError, match="tie_mm"):
        axial_axes(np.ones((2, 3, 3), bool), (1, 1, 1), tie_mm=tie)


def test_axial_axes_unbiased_on_average_for_discs():
    # the contour estimator is unbiased for a voxelised disc: averaged over
    # sub-voxel positions, the mean diameter error is well below half a voxel
    rng = np.random.default_rng(1)
    sp = (1.0, 0.7, 0.7)
    errs = []
    for _ in range(20):
        off = rng.uniform(0, 1, 3) * sp
        m = ellipsoid_mask(sp, 4.0, 4.0, 1.0, offset=(0.0, off[1], off[2]))
        m &= np.abs(grid(sp, 6.0, (0.0, off[1], off[2]))[0]) < 0.5
        errs.append(axial_axes(m, sp).mean_mm - 8.0)
    assert abs(np.mean(errs)) < 0.25 * 0.7


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("abc", [(5.0, 3.5, 4.0), (2.5, 2.0, 2.2)])
def test_axial_axes_contours_keep_each_slice_area(spacing, abc):
    # the smoothed contour of every slice is taken at the level that encloses the
    # slice's voxel area (module notes): smoothing must not shrink the section
    from nodulegrowth.measure import _enclosed_area, _mask_slice_contours

    m = ellipsoid_mask(spacing, *abc, offset=(0.1, 0.23, 0.31), rot=rot_z(35.0))
    seen = 0
    for k, cs in _mask_slice_contours(m, np.asarray(spacing, float)):
        px = [c / np.asarray(spacing[1:]) for c in cs]
        assert _enclosed_area(px) == pytest.approx(m[k].sum(), rel=2e-3, abs=0.05)
        seen += 1
    assert seen == int(m.any(axis=(1, 2)).sum())


@pytest.mark.parametrize("spacing", [(1.0, 0.7, 0.7), (1.25, 0.6, 0.6), (0.6, 0.6, 0.6)])
@pytest.mark.parametrize("abc", [(5.0, 3.5, 4.0), (10.0, 8.0, 7.0)])
def test_axial_axes_robust_to_a_noisy_boundary(spacing, abc):
    # A segmentation of a noisy scan has single boundary voxels flipped at
    # random. The longest chord over directions and slices picks such bumps: on
    # the 0.5 contour of a 0.7-voxel in-plane smoothing (the method before
    # fd3586c) the mean diameter of these ellipsoids with a quarter of the
    # boundary flipped was 0.31-0.60 mm too large on average (SD 0.16-0.29 mm
    # over these 20 draws; all 6 cases fail); smoothing across
    # slices with area-preserving levels must keep the bias and the spread
    # below half the 0.5 mm diameter target.
    from scipy import ndimage

    a, b, c = abc
    rng = np.random.default_rng(3)
    errs = []
    for _ in range(20):
        m = ellipsoid_mask(spacing, a, b, c, offset=rng.uniform(-0.5, 0.5, 3) * spacing,
                           rot=rot_z(rng.uniform(0, 180)))
        edge = m & ~ndimage.binary_erosion(m)
        out = ndimage.binary_dilation(m) & ~m
        m[edge & (rng.random(m.shape) < 0.25)] = False
        m[out & (rng.random(m.shape) < 0.25)] = True
        errs.append(axial_axes(m, spacing).mean_mm - (a + b))
    assert abs(np.mean(errs)) < 0.25
    assert np.std(errs) < 0.25


def test_axial_axes_subvoxel_on_hu_threshold_contour():
    # a partial-volume rendered disc: the HU iso-line at the midpoint is sub-voxel
    sp = (1.0, 1.0, 1.0)
    r = 4.3
    sub = 8
    yy, xx = (np.mgrid[0:sub * 14, 0:sub * 14] + 0.5) / sub - 7.0
    occ = ((yy ** 2 + xx ** 2) <= r * r).reshape(14, sub, 14, sub).mean(axis=(1, 3))
    hu = (-850 + 850 * occ)[None]
    mask = hu >= -425
    ax_hu = axial_axes(mask, sp, hu=hu, threshold_hu=-425.0, contour="hu_threshold")
    assert ax_hu.long_mm == pytest.approx(2 * r, abs=0.3)
    assert ax_hu.short_mm == pytest.approx(2 * r, abs=0.3)


@pytest.mark.parametrize("r, wall_x", [(4.3, 3.8), (5.1, 4.4), (3.6, 3.0)])
def test_axial_axes_hu_contour_stops_at_the_chest_wall(r, wall_x):
    # a partial-volume disc cut by a chest wall (x >= wall_x) that the mask
    # leaves out: the HU iso-line used to cross the wall voxels next to the
    # mask and read both axes +1.2 to +1.6 mm long. The long axis is a
    # diameter clear of the wall; the short one may run across the cut,
    # which is known to the voxel (the mask is cut between voxel centres), as
    # it is for the mask's own contour: half a voxel and the sub-voxel error.
    sp = (1.0, 1.0, 1.0)
    sub, n = 8, 16
    yy, xx = (np.mgrid[0:sub * n, 0:sub * n] + 0.5) / sub - n / 2
    disc = ((yy ** 2 + xx ** 2) <= r * r) & (xx < wall_x)
    occ_disc = disc.reshape(n, sub, n, sub).mean(axis=(1, 3))
    occ_wall = (xx >= wall_x).reshape(n, sub, n, sub).mean(axis=(1, 3))
    hu = (-850 + 850 * occ_disc + 890 * occ_wall)[None]
    x_centre = np.arange(n) + 0.5 - n / 2
    mask = (hu >= -425) & (x_centre[None, None, :] < wall_x)
    ax = axial_axes(mask, sp, hu=hu, threshold_hu=-425.0, contour="hu_threshold")
    assert ax.long_mm == pytest.approx(2 * r, abs=0.35)
    assert ax.short_mm == pytest.approx(axial_axes(mask, sp).short_mm, abs=0.65)


def rendered_ellipsoid(spacing, abc, rng, *, contrast=250.0, noise=25.0, lung=-850.0, rot=None,
                       vessel_r=0.0, psf_mm=0.6, offset=None):
    """A partial-volume CT of an ellipsoid (semi-axes a (x), b (y), c (z) mm) in lung, optionally
    with a vessel of radius ``vessel_r`` along z touching its +x side (as dense as the nodule plus
    100 HU), blurred in-plane by ``psf_mm`` and with white noise; returns (hu, threshold, mask) with
    the mask the nodule's voxels above the midpoint, the vessel's cut off. ``offset`` (z, y, x mm)
    shifts the fine grid (:func:`grid`); random within half a voxel by default."""
    from scipy import ndimage

    a, b, c = abc
    sub = 4
    fine = tuple(s / sub for s in spacing)
    half = max(abc) + 3.0
    off = rng.uniform(-0.5, 0.5, 3) * np.asarray(spacing) if offset is None else np.asarray(offset, float)
    z, y, x = grid(fine, half, offset=off)
    p = np.stack([x, y, z], -1)
    if rot is not None:
        p = p @ rot
    inside = (p[..., 0] / a) ** 2 + (p[..., 1] / b) ** 2 + (p[..., 2] / c) ** 2 <= 1.0
    vessel = (x - a - vessel_r + 0.2) ** 2 + y ** 2 <= vessel_r ** 2 if vessel_r else np.zeros_like(inside)
    img = np.where(vessel, lung + contrast + 100.0, np.where(inside, lung + contrast, lung))
    n = [s // sub * sub for s in img.shape]
    img = img[:n[0], :n[1], :n[2]].reshape(n[0] // sub, sub, n[1] // sub, sub, n[2] // sub, sub).mean(axis=(1, 3, 5))
    ves = vessel[:n[0], :n[1], :n[2]].reshape(img.shape[0], sub, img.shape[1], sub, img.shape[2], sub).mean(axis=(1, 3, 5))
    img = ndimage.gaussian_filter(img, (0.0, psf_mm / spacing[1], psf_mm / spacing[2]))
    img = img + rng.normal(0.0, noise, img.shape)
    t = lung + contrast / 2
    m = (img >= t) & (ves < 0.05)
    lab, _ = ndimage.label(m)
    centre = tuple(s // 2 for s in m.shape)
    m = lab == lab[centre]
    return img, t, m


@pytest.mark.parametrize("spacing", [(1.0, 0.7, 0.7), (1.25, 0.6, 0.6), (0.6, 0.5, 0.5)])
@pytest.mark.parametrize("abc", [(4.0, 3.2, 3.6), (7.0, 5.5, 6.0)])
def test_axial_axes_hu_contour_steadier_than_the_mask_contour(spacing, abc):
    # Ground-glass contrast (250 HU) under 25 HU of noise: the thresholded mask's
    # boundary voxels flip with the noise and its slices' areas with them; the
    # smoothed image's contour at the one level enclosing the mask's volume
    # averages the grey values instead. On scenes drawn from the benchmark's
    # generator the mean-diameter change between two scans had an SD of
    # 0.10-0.18 mm on the mask contour and 0.04-0.16 on this one (ground glass
    # on the chest wall 0.11 on both). Here: the spread of the
    # mean diameter over 12 noise draws must shrink by a quarter at least
    # (the unsmoothed iso-line at the threshold does not in any of the six
    # cases), with the bias within half the 0.5 mm target (measured -0.11 to
    # -0.24 mm: smoothing across slices rounds the ellipsoid along z).
    rng = np.random.default_rng(11)
    a, b, c = abc
    on_mask, on_hu = [], []
    for _ in range(12):
        hu, t, m = rendered_ellipsoid(spacing, abc, rng, rot=rot_z(rng.uniform(0, 180)))
        on_mask.append(axial_axes(m, spacing).mean_mm - (a + b))
        on_hu.append(axial_axes(m, spacing, hu=hu, threshold_hu=t).mean_mm - (a + b))
    assert np.std(on_hu) < 0.75 * np.std(on_mask)
    assert abs(np.mean(on_hu)) < 0.25


def _slice_offset_grid(spacing, abc, frac):
    """Fine-grid offset (mm, z) for :func:`rendered_ellipsoid` that puts the ellipsoid's centre
    ``frac`` of a slice from the nearest slice centre (the block means of its 4 fine points)."""
    sub, s = 4, spacing[0]
    n = int(math.ceil((max(abc) + 3.0) / (s / sub))) + 2  # as grid() for that half-size
    o = ((-n + 1.5) * s / sub + frac * s) % s
    return o - s if o > s / 2 else o


@pytest.mark.parametrize("spacing", [(1.25, 0.7, 0.7), (1.0, 0.5, 0.5)])
@pytest.mark.parametrize("abc", [(2.5, 2.5, 2.5), (3.0, 2.4, 2.7), (5.0, 4.0, 4.5)])
def test_axial_axes_between_slices_follow_the_largest_section(spacing, abc):
    # A noiseless rendered ellipsoid whose centre falls 0 to 1/2 slice from the
    # nearest slice: on the slice the mean diameter shrinks with the offset
    # (a section dz off the centre is smaller by about d dz^2 / 2c^2: 0.16 mm
    # for a 5 mm ball under 1.25 mm slices; measured 0.04-0.25 mm here);
    # scaled to the parabola's vertex, half of that at most is left (measured
    # 0.01-0.10 mm). Exactly on a slice the three areas are symmetric and
    # nothing is scaled.
    rng = np.random.default_rng(3)
    a, b, c = abc
    on, between = {}, {}
    for frac in (0.0, 0.25, 0.5):
        off = (_slice_offset_grid(spacing, abc, frac), 0.0, 0.0)
        hu, t, m = rendered_ellipsoid(spacing, abc, rng, noise=0.0, offset=off)
        on[frac] = axial_axes(m, spacing, hu=hu, threshold_hu=t, between_slices=False)
        between[frac] = axial_axes(m, spacing, hu=hu, threshold_hu=t)
        assert on[frac].section_scale == 1.0
    assert between[0.0].section_scale == pytest.approx(1.0, abs=1e-9)
    assert between[0.5].section_scale > 1.0
    shrink_on = on[0.5].mean_mm - on[0.0].mean_mm
    shrink_between = between[0.5].mean_mm - between[0.0].mean_mm
    assert shrink_on < -0.03
    assert abs(shrink_between) < 0.5 * abs(shrink_on)
    for ax in between.values():
        # the chords' end points are scaled with their lengths
        assert np.linalg.norm(np.subtract(*ax.long_endpoints)) == pytest.approx(ax.long_mm)
        assert np.linalg.norm(np.subtract(*ax.short_endpoints)) == pytest.approx(ax.short_mm)


@pytest.mark.parametrize("dz", [0.0, 0.2, 0.45, -0.5])
def test_section_scale_exact_for_an_ellipsoid(dz):
    # an ellipsoid's axial sections are similar ellipses of area pi a b (1 - z^2 / c^2):
    # three slices (pitch h) whose middle one lies dz slices from the centre give
    # the scale back to the central section exactly
    from nodulegrowth.measure import _section_scale
    a, b, c, h = 3.0, 2.0, 2.5, 1.25
    areas = {k: math.pi * a * b * (1 - ((k - 5 + dz) * h / c) ** 2) for k in (4, 5, 6)}
    assert _section_scale(areas, 5) == pytest.approx(1 / math.sqrt(1 - (dz * h / c) ** 2), rel=1e-12)


def test_section_scale_left_at_one_where_no_vertex_is_near():
    from nodulegrowth.measure import _section_scale
    assert _section_scale({4: 10.0, 5: 12.0}, 5) == 1.0  # no neighbour above
    assert _section_scale({4: 10.0, 5: 8.0, 6: 10.0}, 5) == 1.0  # opens upwards
    assert _section_scale({4: 4.0, 5: 10.0, 6: 12.0}, 5) == 1.0  # vertex 0.75 slice off
    assert _section_scale({4: 6.0, 5: 10.0, 6: 10.0}, 5) > 1.0  # vertex 0.5 slice off


def test_axial_axes_between_slices_checked():
    m = np.zeros((3, 5, 5), bool)
    m[1, 1:4, 1:4] = True
    with pytest.raises(MeasurementError, match="between_slices='yes' must be True, False or None"):
        axial_axes(m, (1, 1, 1), between_slices="yes")


@pytest.mark.parametrize("vessel_r", [0.8, 1.5])
def test_axial_axes_hu_contour_leaves_out_what_the_mask_left_out(vessel_r):
    # a vessel touching the nodule, cut off by the segmentation: smoothing the
    # image must not carry it into the nodule's contour (the long axis would
    # run into the vessel, up to 2 mm too long)
    rng = np.random.default_rng(5)
    sp = (1.0, 0.7, 0.7)
    abc = (4.0, 4.0, 4.0)
    for _ in range(3):
        hu, t, m = rendered_ellipsoid(sp, abc, rng, contrast=850.0, noise=10.0, vessel_r=vessel_r)
        ax = axial_axes(m, sp, hu=hu, threshold_hu=t)
        assert ax.long_mm == pytest.approx(8.0, abs=0.4)
        assert ax.mean_mm == pytest.approx(axial_axes(m, sp).mean_mm, abs=0.3)


@pytest.mark.parametrize("spacing", [(1.0, 0.7, 0.7), (1.25, 0.6, 0.6)])
def test_axial_axes_hu_contour_not_pulled_by_a_bright_flank_in_the_mask(spacing):
    # a ground-glass nodule on the chest wall takes a little of the wall's
    # blurred flank into its mask; smoothed, that brightness pushed the
    # contour past the mask's edge and turned the long axis (drawn scenes:
    # short axis +0.6 to +0.8 mm). Here a 10 mm ground-glass ball's last
    # voxel columns on one side read 500 HU brighter: the long axis moved by
    # +0.53 mm on average before the mask's voxels were clipped at their 90th
    # percentile, +0.17 to +0.22 mm since.
    rng = np.random.default_rng(4)
    moved = []
    for _ in range(8):
        hu, t, m = rendered_ellipsoid(spacing, (5.0, 5.0, 5.0), rng, noise=15.0)
        xs = np.flatnonzero(m.any(axis=(0, 1)))
        flank = m & (np.arange(m.shape[2]) >= xs.max() - 1)[None, None, :]
        with_flank = axial_axes(m, spacing, hu=np.where(flank, hu + 500.0, hu), threshold_hu=t)
        moved.append(with_flank.long_mm - axial_axes(m, spacing, hu=hu, threshold_hu=t).long_mm)
    assert np.mean(moved) < 0.3


def test_axial_axes_hu_contour_without_parenchyma_falls_back_to_the_mask():
    # nothing below the threshold around the mask: no level to set the contour
    # against, the mask's own contour is measured
    sp = (1.0, 0.7, 0.7)
    m = np.ones((4, 9, 9), bool)
    hu = np.zeros(m.shape)
    a = axial_axes(m, sp, hu=hu, threshold_hu=-425.0)
    b = axial_axes(m, sp)
    assert (a.long_mm, a.short_mm) == (b.long_mm, b.short_mm)
    # nor is that fallback scaled between the slices (voxel counts for areas)
    m = ellipsoid_mask(sp, 3.0, 2.5, 2.8, offset=(0.3, 0.0, 0.0))
    a = axial_axes(m, sp, hu=np.zeros(m.shape), threshold_hu=-425.0)
    b = axial_axes(m, sp)
    assert (a.long_mm, a.short_mm, a.section_scale) == (b.long_mm, b.short_mm, 1.0)
    assert axial_axes(m, sp, between_slices=True).section_scale > 1.0


def test_axial_axes_contour_choice_checked():
    m = np.zeros((3, 5, 5), bool)
    m[1, 1:4, 1:4] = True
    with pytest.raises(MeasurementError, match="contour='edge' is not one of"):
        axial_axes(m, (1, 1, 1), contour="edge")
    with pytest.raises(MeasurementError, match="needs the image"):
        axial_axes(m, (1, 1, 1), contour="hu")


def test_mean_and_rounding():
    assert mean_diameter_mm(7.0, 4.0) == 5.5
    assert round_diameter_mm(5.5) == 6.0
    assert round_diameter_mm(6.5) == 7.0  # not banker's rounding
    assert round_diameter_mm(6.44) == 6.0
    assert round_diameter_mm(6.45, 1) == 6.5
    assert math.isnan(round_diameter_mm(float("nan")))


# --------------------------------------------------------------------------
# 3-D diameter
# --------------------------------------------------------------------------
@pytest.mark.parametrize("spacing", [(1.0, 0.7, 0.7), (0.6, 0.5, 0.5)])
@pytest.mark.parametrize("tilt", [0.0, 35.0, 90.0])
def test_max_3d_diameter_of_tilted_ellipsoid(spacing, tilt):
    a = 7.0
    m = ellipsoid_mask(spacing, a, 3.0, 3.0, rot=rot_y(tilt))
    d = max_3d_diameter(m, spacing)
    # within one voxel diagonal of the true major axis
    assert d == pytest.approx(2 * a, abs=math.sqrt(sum(s * s for s in spacing)))


def test_max_3d_diameter_thick_slices_bounded():
    sp = (2.5, 0.8, 0.8)
    r = 6.0
    m = ellipsoid_mask(sp, r, r, r, offset=(0.4, 0.1, 0.2))
    d = max_3d_diameter(m, sp)
    # the slab stack's corners may add up to a slice thickness, never more
    assert 2 * r - 0.8 <= d <= 2 * r + sp[0]


# --------------------------------------------------------------------------
# partial volume
# --------------------------------------------------------------------------
def test_partial_volume_recovers_volume_of_blurred_sphere():
    from scipy import ndimage

    sp = (1.0, 1.0, 1.0)
    r = 3.2
    sub = 4
    n = 16
    z, y, x = (np.mgrid[0:n * sub, 0:n * sub, 0:n * sub] + 0.5) / sub - n / 2
    occ = ((x ** 2 + y ** 2 + z ** 2) <= r * r).reshape(n, sub, n, sub, n, sub).mean(axis=(1, 3, 5))
    hu = ndimage.gaussian_filter(-850 + 850 * occ, 0.7)
    region = ndimage.binary_dilation(hu > -800, iterations=2)
    v_true = 4 / 3 * math.pi * r ** 3
    v_pv = partial_volume_mm3(hu, region, sp, 0.0, -850.0)
    v_thr = volume_mm3(hu >= -425, sp)
    assert abs(v_pv / v_true - 1) < 0.03
    # thresholding a blurred small sphere at 50 % under-segments; PV does not
    assert abs(v_pv - v_true) < abs(v_thr - v_true)
    core = ndimage.binary_erosion(hu >= -425, iterations=1)
    assert abs(partial_volume_mm3(hu, region, sp, 0.0, -850.0, core=core) / v_true - 1) < 0.05


# --------------------------------------------------------------------------
# centroid and geometry
# --------------------------------------------------------------------------
@pytest.mark.parametrize("direction", [
    (1, 0, 0, 0, 1, 0, 0, 0, 1),
    (-1, 0, 0, 0, -1, 0, 0, 0, 1),
    (0, 0, 1, 1, 0, 0, 0, 1, 0),
])
def test_centroid_world_matches_simpleitk(direction):
    sitk = pytest.importorskip("SimpleITK")
    m = np.zeros((6, 7, 8), bool)
    m[2:5, 1:3, 4:8] = True
    spacing_zyx = (2.0, 0.7, 0.5)
    origin = (-10.0, 20.0, 5.5)
    img = sitk.GetImageFromArray(m.astype(np.uint8))
    img.SetSpacing(spacing_zyx[::-1])
    img.SetOrigin(origin)
    img.SetDirection(direction)
    kji = np.argwhere(m).mean(0)
    expected = img.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in kji[::-1]))
    got = centroid_world(m, spacing_zyx, origin, direction)
    assert got == pytest.approx(expected, abs=1e-9)
    got2 = centroid_world(m, spacing_zyx, origin, np.asarray(direction, float).reshape(3, 3))
    assert got2 == pytest.approx(expected, abs=1e-9)


# --------------------------------------------------------------------------
# measure_nodule, table
# --------------------------------------------------------------------------
@pytest.mark.parametrize("spacing", SPACINGS)
def test_measure_nodule_sphere(spacing):
    r = 4.0
    m = ellipsoid_mask(spacing, r, r, r)
    meas = measure_nodule(m, spacing)
    h = max(spacing[1:])
    assert isinstance(meas, NoduleMeasurement)
    assert meas.mean_diameter_mm == pytest.approx(2 * r, abs=h)
    assert meas.volume_mm3 == volume_mm3(m, spacing)
    assert math.isnan(meas.volume_pv_mm3)
    assert math.isnan(meas.solid_volume_mm3) and math.isnan(meas.solid_long_axis_mm)
    c = np.array(m.shape) // 2  # the sphere is centred on the middle voxel
    assert meas.center_zyx == pytest.approx(tuple(c), abs=1e-9)
    assert meas.center_xyz == pytest.approx(tuple((c * spacing)[::-1]), abs=1e-9)


def test_measure_nodule_with_solid_part_and_hu():
    sp = (1.0, 0.7, 0.7)
    whole = ellipsoid_mask(sp, 6.0, 6.0, 6.0, half_mm=9.0)
    solid = ellipsoid_mask(sp, 3.0, 3.0, 3.0, half_mm=9.0)
    hu = np.where(solid, 30.0, np.where(whole, -600.0, -850.0))
    meas = measure_nodule(whole, sp, hu=hu, solid_mask=solid)
    assert meas.solid_volume_mm3 == volume_mm3(solid, sp)
    assert meas.solid_mean_diameter_mm == pytest.approx(6.0, abs=0.7)
    assert np.isfinite(meas.volume_pv_mm3)
    d = meas.as_dict("t1_")
    for key in ["t1_long_axis_mm", "t1_short_axis_mm", "t1_mean_diameter_mm", "t1_max_3d_diameter_mm",
                "t1_volume_mm3", "t1_center_x", "t1_center_y", "t1_center_z"]:
        assert key in d
    assert d["t1_volume_mm3"] == meas.volume_mm3
    assert d["t1_solid_volume_mm3"] == meas.solid_volume_mm3


def test_measure_nodule_hu_contour_option():
    sp = (1.0, 0.7, 0.7)
    m = ellipsoid_mask(sp, 5.0, 5.0, 5.0)
    hu = np.where(m, 0.0, -850.0)
    a = measure_nodule(m, sp, hu=hu, threshold_hu=-425.0)
    b = measure_nodule(m, sp)
    assert a.long_axis_mm == pytest.approx(b.long_axis_mm, abs=0.7)


def test_measurement_table_label_image_and_list():
    lab = np.zeros((6, 12, 12), np.int32)
    lab[1:4, 1:4, 1:4] = 1
    lab[1:5, 6:11, 6:11] = 2
    sp = (1.0, 0.5, 0.5)
    t = measurement_table(lab, sp)
    assert isinstance(t, pd.DataFrame)
    assert t["label"].tolist() == [1, 2]
    assert t["volume_mm3"].tolist() == pytest.approx([27 * 0.25, 100 * 0.25])
    t2 = measurement_table([lab == 1, lab == 2], sp)
    assert t2["volume_mm3"].tolist() == t["volume_mm3"].tolist()
    t3 = measurement_table({"a": lab == 2}, sp)
    assert t3["label"].tolist() == ["a"]
    assert measurement_table(np.zeros((3, 3, 3), np.int32), sp).empty


# --------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [volume_mm3, max_3d_diameter, axial_axes, measure_nodule, centroid_world])
def test_empty_mask_raises(fn):
    with pytest.raises(MeasurementError, match="empty"):
        fn(np.zeros((3, 3, 3), bool), (1.0, 1.0, 1.0))


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (1.0, -1.0, 1.0), (0.0, 1.0, 1.0), (float("nan"), 1, 1), "abc"])
def test_bad_spacing_raises(spacing):
    with pytest.raises(MeasurementError, match="spacing_zyx"):
        volume_mm3(np.ones((2, 2, 2), bool), spacing)


def test_other_errors_are_specific():
    m = np.ones((2, 2, 2), bool)
    with pytest.raises(MeasurementError, match="3-D"):
        volume_mm3(np.ones((2, 2), bool), (1, 1, 1))
    with pytest.raises(MeasurementError, match="hu has shape"):
        measure_nodule(m, (1, 1, 1), hu=np.zeros((3, 3, 3)))
    with pytest.raises(MeasurementError, match="threshold_hu"):
        axial_axes(m, (1, 1, 1), hu=np.zeros((2, 2, 2)))
    with pytest.raises(MeasurementError, match="inside_hu"):
        partial_volume_mm3(np.zeros((2, 2, 2)), m, (1, 1, 1), -850.0, 0.0)
    with pytest.raises(MeasurementError, match="direction"):
        centroid_world(m, (1, 1, 1), (0, 0, 0), direction=(1, 0, 0))
    with pytest.raises(MeasurementError, match="origin_xyz"):
        centroid_world(m, (1, 1, 1), (0, 0))
    with pytest.raises(NoduleGrowthError):
        measurement_table([np.zeros((2, 2, 2), bool)], (1, 1, 1))
