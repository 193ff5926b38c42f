"""Tests of nodulegrowth.segment on small analytic CT phantoms.

Each phantom is rendered with exact partial-volume occupancy (supersampling of
every voxel, which also averages over the slice thickness), a Gaussian
point-spread function and Gaussian noise. The truth is analytic (ellipsoid
volume, axes). Volume tolerances are derived from the voxel size: a boundary
placed within a quarter voxel (on average over the surface) of the true one
gives a relative volume error of at most :math:`3 \\cdot h/4 / R` for a
sphere of radius :math:`R` with :math:`h` the geometric-mean voxel size.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from nodulegrowth.errors import NoduleGrowthError, SegmentationError
from nodulegrowth.measure import measure_nodule, volume_mm3
from nodulegrowth.segment import (Segmentation, _blurred_ball_level, _blurred_ball_profile, _straight_vessels,
                                  _trim_vessel_stubs, _vessel_excess, _vessel_near, _wall_flank_excess,
                                  joint_nodule_type, segment_nodule)

SPACINGS = [(1.0, 0.7, 0.7), (2.5, 0.8, 0.8), (0.6, 0.5, 0.5)]
LUNG = -850.0
SOLID = 30.0
GGO = -600.0


def render(objects, spacing, size_mm=32.0, *, psf_mm=0.6, noise=15.0, seed=0, offset=(0.0, 0.0, 0.0)):
    """Render ``objects`` (list of (inside(z, y, x) -> bool, HU), painted in order).

    Returns the image (z, y, x) and the voxel index of the physical origin.
    """
    sp = np.asarray(spacing, float)
    n = np.maximum(np.round(size_mm / sp).astype(int), 1)
    axes = [(np.arange(n[i]) - (n[i] - 1) / 2) * sp[i] + offset[i] for i in range(3)]
    sub = (max(3, int(math.ceil(sp[0] / 0.4))), 3, 3)
    acc = np.zeros(n)
    for dz in (np.arange(sub[0]) + 0.5) / sub[0] - 0.5:
        for dy in (np.arange(sub[1]) + 0.5) / sub[1] - 0.5:
            for dx in (np.arange(sub[2]) + 0.5) / sub[2] - 0.5:
                z, y, x = np.meshgrid(axes[0] + dz * sp[0], axes[1] + dy * sp[1], axes[2] + dx * sp[2],
                                      indexing="ij")
                v = np.full(n, LUNG)
                for inside, hu in objects:
                    v = np.where(inside(z, y, x), hu, v)
                acc += v
    img = acc / np.prod(sub)
    img = ndimage.gaussian_filter(img, [psf_mm / sp[0] if sp[0] < 2 * psf_mm else 0.0,
                                        psf_mm / sp[1], psf_mm / sp[2]], mode="nearest")
    img += np.random.default_rng(seed).normal(0.0, noise, img.shape)
    centre = tuple(float(c) for c in (n - 1) / 2 - np.asarray(offset) / sp)
    return img.astype(np.float32), centre


def ball(r, c=(0.0, 0.0, 0.0)):
    return lambda z, y, x: (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= r * r


def ellipsoid(a, b, c):
    return lambda z, y, x: (x / a) ** 2 + (y / b) ** 2 + (z / c) ** 2 <= 1.0


def cylinder(r, point, direction):
    d = np.asarray(direction, float) / np.linalg.norm(direction)

    def inside(z, y, x):
        pz, py, px = z - point[0], y - point[1], x - point[2]
        t = pz * d[0] + py * d[1] + px * d[2]
        return pz * pz + py * py + px * px - t * t <= r * r
    return inside


def rel_tol(spacing, radius):
    h = float(np.prod(spacing)) ** (1 / 3)
    return 3 * 0.25 * h / radius


def assert_juxtapleural_ball(seg, spacing, r):
    """A juxtapleural ball of radius ``r`` (mm): no leak, volume within twice :func:`rel_tol`."""
    assert seg.location == "juxtapleural"
    assert "segmentation_leak" not in seg.flags and "touches_roi_border" not in seg.flags
    v_true = 4 / 3 * math.pi * r ** 3
    assert abs(volume_mm3(seg.mask, spacing) / v_true - 1) < 2 * rel_tol(spacing, r)


# --------------------------------------------------------------------------
# isolated nodules of each type
# --------------------------------------------------------------------------
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("radius", [3.0, 5.0])
def test_solid_sphere_volume_and_type(spacing, radius):
    img, c = render([(ball(radius), SOLID)], spacing, offset=(0.2, -0.1, 0.15), seed=1)
    seg = segment_nodule(img, spacing, c)
    assert isinstance(seg, Segmentation)
    assert seg.nodule_type == "solid"
    assert seg.location == "isolated"
    assert "segmentation_leak" not in seg.flags and "touches_roi_border" not in seg.flags
    v = volume_mm3(seg.mask, spacing)
    v_true = 4 / 3 * math.pi * radius ** 3
    assert abs(v / v_true - 1) < rel_tol(spacing, radius)
    # the boundary threshold lies between the lung and the nodule levels
    assert LUNG < seg.threshold_hu < SOLID


@pytest.mark.parametrize("radius, spacing, flagged", [
    (2.5, (1.0, 0.7, 0.7), False), (2.75, (2.5, 0.7, 0.7), False), (2.5, (5.0, 0.7, 0.7), True),
    (5.5, (5.0, 0.7, 0.7), False), (2.0, (2.5, 0.7, 0.7), True), (2.0, (2.5, 1.0, 1.0), True),
])
def test_a_nodule_under_two_slice_thicknesses_across_is_flagged(radius, spacing, flagged):
    # the flag follows the mask's volume-equivalent diameter against twice the
    # slice thickness (5 and 11 mm balls on 5 mm slices, 4 and 5.5 mm on 2.5 mm)
    img, c = render([(ball(radius), SOLID)], spacing, size_mm=36.0, offset=(0.3, 0.1, -0.2), seed=5)
    seg = segment_nodule(img, spacing, c)
    d_eq = 2 * (3 * volume_mm3(seg.mask, spacing) / (4 * math.pi)) ** (1 / 3)
    assert (d_eq < 2 * spacing[0]) == flagged  # the phantom is on the side of the bound it is meant to be
    assert ("thick_slices_for_size" in seg.flags) == flagged


@pytest.mark.parametrize("spacing", [(1.0, 0.7, 0.7), (2.5, 0.8, 0.8)])
def test_ellipsoid_axes(spacing):
    a, b, cz = 6.0, 4.0, 4.5
    img, c = render([(ellipsoid(a, b, cz), SOLID)], spacing, seed=2)
    seg = segment_nodule(img, spacing, c)
    m = measure_nodule(seg.mask, spacing)
    h = max(spacing[1:])
    assert m.long_axis_mm == pytest.approx(2 * a, abs=h)
    assert m.short_axis_mm == pytest.approx(2 * b, abs=h)
    assert abs(m.volume_mm3 / (4 / 3 * math.pi * a * b * cz) - 1) < rel_tol(spacing, b)


@pytest.mark.parametrize("spacing", [(1.0, 0.7, 0.7), (0.6, 0.5, 0.5)])
def test_ground_glass_sphere(spacing):
    r = 5.0
    img, c = render([(ball(r), GGO)], spacing, seed=3)
    seg = segment_nodule(img, spacing, c)
    assert seg.nodule_type == "ground_glass"
    assert seg.solid_mask is None
    assert LUNG < seg.threshold_hu < GGO
    assert abs(volume_mm3(seg.mask, spacing) / (4 / 3 * math.pi * r ** 3) - 1) < rel_tol(spacing, r)


@pytest.mark.parametrize("seed_on", ["solid", "ground_glass"])
def test_part_solid_nodule(seed_on):
    sp = (1.0, 0.7, 0.7)
    r, rs = 6.0, 3.0
    img, c = render([(ball(r), GGO), (ball(rs, (0.0, 0.0, 1.5)), SOLID)], sp, seed=4)
    seed = c if seed_on == "ground_glass" else (c[0], c[1], c[2] + 1.5 / sp[2])
    if seed_on == "ground_glass":
        seed = (c[0], c[1], c[2] - 4.0 / sp[2])  # inside the ground glass, away from the core
    seg = segment_nodule(img, sp, seed)
    assert seg.nodule_type == "part_solid"
    assert seg.solid_mask is not None
    assert not (seg.solid_mask & ~seg.mask).any()
    v, vs = volume_mm3(seg.mask, sp), volume_mm3(seg.solid_mask, sp)
    assert abs(v / (4 / 3 * math.pi * r ** 3) - 1) < rel_tol(sp, r)
    assert abs(vs / (4 / 3 * math.pi * rs ** 3) - 1) < 2 * rel_tol(sp, rs)
    assert GGO < seg.solid_threshold_hu < SOLID


@pytest.mark.parametrize("spacing, r, r_core", [
    ((1.0, 0.7, 0.7), 4.0, 2.0), ((0.6, 0.5, 0.5), 3.5, 1.75), ((1.25, 0.7, 0.7), 3.5, 1.5),
])
def test_small_part_solid_nodule_with_a_thin_rim(spacing, r, r_core):
    # a rim of 1.5-2 mm has no plateau under the blur: its median read the
    # ground-glass level 100 HU low and the nodule came out +17 to +51 %;
    # a core blurred below halfway to water was not found as a solid part
    img, c = render([(ball(r), GGO), (ball(r_core), SOLID)], spacing, seed=1)
    seg = segment_nodule(img, spacing, c)
    assert seg.nodule_type == "part_solid"
    assert seg.solid_mask is not None and seg.solid_mask[tuple(int(round(v)) for v in c)]
    assert abs(volume_mm3(seg.mask, spacing) / (4 / 3 * math.pi * r ** 3) - 1) < 0.15


@pytest.mark.parametrize("type1, type2, joint", [
    ("solid", "part_solid", "part_solid"), ("part_solid", "ground_glass", "part_solid"),
    ("solid", "ground_glass", None), ("part_solid", "part_solid", None), ("solid", "solid", None),
])
def test_joint_nodule_type(type1, type2, joint):
    assert joint_nodule_type(type1, type2) == joint
    assert joint_nodule_type(type2, type1) == joint


def test_joint_nodule_type_rejects_unknown_types():
    with pytest.raises(SegmentationError, match="'nodule' is unknown"):
        joint_nodule_type("solid", "nodule")


def test_part_solid_core_taken_for_a_solid_nodule_is_measured_whole_when_forced():
    # the pipeline's remedy when the other time point saw the rim: a 7 mm
    # part-solid nodule whose 1.5 mm rim the blur hides on 1 mm slices is
    # typed solid (its core: -62 to -68 %); segmented as part-solid it is
    # measured whole (+14 to +16 %: the thin rim's level still reads low)
    sp, r = (1.0, 0.7, 0.7), 3.5
    img, c = render([(ball(r), GGO), (ball(r / 2), SOLID)], sp, seed=1)
    v_true = 4 / 3 * math.pi * r ** 3
    forced = segment_nodule(img, sp, c, nodule_type=joint_nodule_type("solid", "part_solid"))
    assert forced.nodule_type == "part_solid" and forced.solid_mask is not None
    assert abs(volume_mm3(forced.mask, sp) / v_true - 1) < 0.2


def test_forced_nodule_type():
    sp = (1.0, 0.7, 0.7)
    img, c = render([(ball(4.0), SOLID)], sp, seed=5)
    assert segment_nodule(img, sp, c, nodule_type="solid").nodule_type == "solid"


# --------------------------------------------------------------------------
# attached structures
# --------------------------------------------------------------------------
@pytest.mark.parametrize("spacing, direction", [
    ((1.0, 0.7, 0.7), (1.0, 0.0, 0.3)),   # vessel mostly along z
    ((2.5, 0.8, 0.8), (1.0, 0.0, 0.3)),
    ((1.0, 0.7, 0.7), (0.3, 0.0, 1.0)),   # vessel mostly in-plane (too faint at 2.5 mm slices)
])
def test_juxtavascular_nodule_vessel_removed(spacing, direction):
    r = 5.0
    vessel = cylinder(1.0, (0.0, r + 0.5, 0.0), direction)  # overlaps the nodule by 0.5 mm
    img, c = render([(vessel, 40.0), (ball(r), SOLID)], spacing, seed=6)
    seg = segment_nodule(img, spacing, c)
    assert seg.location == "juxtavascular"
    assert "touches_roi_border" not in seg.flags and "segmentation_leak" not in seg.flags
    v_true = 4 / 3 * math.pi * r ** 3
    # the vessel crosses the whole VOI; keeping it would add > 100 % here
    assert abs(volume_mm3(seg.mask, spacing) / v_true - 1) < 2 * rel_tol(spacing, r)


def segment_nodule_on_vessel(r, rv, nodule_hu, sp=(1.0, 0.7, 0.7)):
    """Ball of radius ``r`` touching (0.3 mm overlap) a solid vessel of radius ``rv``, segmented."""
    vessel = (cylinder(rv, (0.0, 0.0, r + rv - 0.3), (0.3, 1.0, 0.2)), SOLID + 10.0)
    img, c = render([vessel, (ball(r), nodule_hu)], sp, size_mm=36.0, seed=3)
    return segment_nodule(img, sp, c), sp


@pytest.mark.parametrize("r, rv", [(2.2, 1.2), (2.5, 1.2), (2.5, 1.5), (3.0, 1.5)])
def test_small_nodule_on_a_vessel_as_thick_as_the_opening_is_flagged(r, rv):
    # a 4.4-6 mm solid nodule touching a vessel of 2.4-3 mm: no opening can
    # take the vessel off without eroding the nodule (measured before the
    # flag existed: +45 to +137 % volume, silent). The boundary is a guess:
    # it must be flagged.
    seg, _ = segment_nodule_on_vessel(r, rv, SOLID)
    assert seg.location == "juxtavascular"
    assert "segmentation_leak" in seg.flags


def _solid_ball_on_vessel_error(r, rv, noise_seed):
    vessel = (cylinder(rv, (0.0, 0.0, r + rv - 0.3), (0.3, 1.0, 0.2)), SOLID + 10.0)
    sp = (1.0, 0.7, 0.7)
    img, c = render([vessel, (ball(r), SOLID)], sp, size_mm=36.0, seed=noise_seed)
    seg = segment_nodule(img, sp, c)
    return volume_mm3(seg.mask, sp) / (4 / 3 * math.pi * r ** 3) - 1, seg.flags


@pytest.mark.parametrize("r, rv", [(2.2, 0.8), (2.2, 0.9), (2.35, 0.9), (2.35, 1.0), (2.6, 0.9), (2.6, 1.0)])
@pytest.mark.parametrize("noise_seed", [3, 4])
def test_small_solid_nodule_on_a_vessel_thinner_than_the_opening_is_not_silently_inflated(r, rv, noise_seed):
    # found on the benchmark's --quick grid (a 4.7 mm solid nodule on a
    # 0.9 mm-radius vessel: +60 % at T1, +98 % at T2, no flag). Before the
    # fixes, here: +26 to +71 %, none flagged (10 of the 12 cases failed);
    # the partial-volume step read the tissue level in the vessel's junction
    # (and, for so small a nodule, below its blurred centre) and took the
    # vessel in. After them (level inside the inscribed ball, from a
    # blurred-ball fit; the shaved surface kept in the sum): +2 to +12 %,
    # one case +42 % and flagged.
    # Either a volume within 30 % or the segmentation_leak flag.
    err, flags = _solid_ball_on_vessel_error(r, rv, noise_seed)
    assert abs(err) < 0.3 or "segmentation_leak" in flags, f"{100 * err:+.0f} %, flags {flags}"


@pytest.mark.parametrize("r, rv", [(2.0, 0.9), (2.4, 0.7), (2.4, 1.1)])
@pytest.mark.parametrize("noise_seed", [3, 4])
def test_small_ground_glass_nodule_on_a_vessel_on_coarse_pixels_is_not_silently_inflated(r, rv, noise_seed):
    # on 1.5 mm pixels a 4-5 mm nodule is too small for any opening: only
    # density keeps the vessel out, and its blurred flank reaches the
    # ground-glass level (+75 % unflagged for r 2.4, rv 0.7 before the rule)
    sp = (1.0, 1.5, 1.5)
    objs = [(cylinder(rv, (0.0, r + rv - 0.3, 0.0), (0.3, 0.0, 1.0)), SOLID + 10.0), (ball(r), GGO)]
    img, c = render(objs, sp, size_mm=36.0, seed=noise_seed, offset=(0.2, -0.1, 0.15))
    seg = segment_nodule(img, sp, c)
    err = volume_mm3(seg.mask, sp) / (4 / 3 * math.pi * r ** 3) - 1
    assert abs(err) < 0.25 or "segmentation_leak" in seg.flags


@pytest.mark.parametrize("r, rv", [(2.0, 1.4), (2.2, 1.5), (2.5, 1.5)])
@pytest.mark.parametrize("noise_seed", [3, 4])
def test_small_solid_nodule_on_a_vessel_as_thick_as_it_is_measured_without_the_vessel(r, rv, noise_seed):
    # no ball takes a vessel of 0.6-0.75 times the nodule's radius off
    # without eroding the nodule: the larger retry balls left a core, -20 to
    # -32 % (on the benchmark's scenes the piece of vessel they kept beside
    # it sent the partial-volume step to +100 to +1600 %). The straight
    # vessel fitted beyond the nodule and taken out along its axis: -3 to
    # -13 %; with its blurred flank subtracted as well (step 12): 0 to +5 %.
    # The boundary at the vessel is still a model's: flagged.
    err, flags = _solid_ball_on_vessel_error(r, rv, noise_seed)
    assert abs(err) < 0.15, f"{100 * err:+.0f} %"
    assert "segmentation_leak" in flags


def _mask_grid(n=48, h=0.7):
    z, y, x = (np.indices((n, n, n)) - (n - 1) / 2) * h
    return z, y, x, np.array([h, h, h]), ((n - 1) // 2,) * 3


def test_straight_vessels_takes_a_tube_passing_the_nodule():
    z, y, x, sp, seed = _mask_grid()
    ball = z ** 2 + y ** 2 + x ** 2 <= 2.0 ** 2
    for off in (3.2, 5.5):  # one piece beyond the nodule's reach, or one on each side
        tube = (z - off) ** 2 + (x - 0.3 * y) ** 2 <= 1.4 ** 2
        out = _straight_vessels(ball | tube, seed, 1.9, sp, 0.7)
        # what stays connected to the seed is the nodule, less a thin cap
        lab, _ = ndimage.label((ball | tube) & ~out)
        left = lab == lab[seed]
        assert not (left & tube & ~ball).sum() > 0.02 * ball.sum()
        assert out[ball].mean() < 0.1


@pytest.mark.parametrize("shape", ["ends_in_nodule", "ends_beside_nodule", "through_nodule", "bent_away",
                                   "two_not_in_line"])
def test_straight_vessels_leaves_what_is_not_a_straight_tube_passing_by(shape):
    # a vessel that ends in the nodule or runs through it must not be drawn
    # on through the nodule; a bent vessel's chord or the line through two
    # branches would cut into it. Only a tube running past is taken.
    z, y, x, sp, seed = _mask_grid()
    ball = z ** 2 + y ** 2 + x ** 2 <= 2.0 ** 2
    if shape == "ends_in_nodule":
        other = (z ** 2 + x ** 2 <= 1.4 ** 2) & (y >= 0)
    elif shape == "ends_beside_nodule":
        other = ((z - 3.2) ** 2 + x ** 2 <= 1.4 ** 2) & (y >= 0)
    elif shape == "through_nodule":
        other = (z - 0.8) ** 2 + x ** 2 <= 1.2 ** 2
    elif shape == "bent_away":  # an arc of radius 12 mm touching the nodule, bending away from it
        other = (np.hypot(z - 15.0, y) - 12.0) ** 2 + x ** 2 <= 1.4 ** 2
    else:  # two branches leaving the nodule's side at an angle
        other = ((z - 3.2) ** 2 + (x - y) ** 2 / 2 <= 1.4 ** 2) & (y > 0) \
            | ((z - 3.2) ** 2 + (x + y) ** 2 / 2 <= 1.4 ** 2) & (y < 0)
    assert not _straight_vessels(ball | other, seed, 1.9, sp, 0.7).any()


@pytest.mark.parametrize("kind, r, rv, tol", [("solid", 3.0, 1.1, 0.01), ("ground_glass", 3.0, 1.1, 0.03),
                                            ("ground_glass", 4.0, 1.2, 0.03)])
def test_nodule_beside_a_vessel_is_measured_with_the_vessels_flank_subtracted(kind, r, rv, tol):
    # the partial-volume step splits the space round the contact by
    # distance: part of the vessel's blurred flank is counted, and the
    # nodule's own flank on that side is lost with the vessel. Mean error
    # over three noise draws and two sizes (x1, x1.15) before the vessel's
    # excess was subtracted: solid 3 mm -1.5 %, ground glass 3 / 4 mm -5.2 /
    # -7.3 %; after: -0.1, -2.1, -0.6 %.
    sp = (1.0, 0.7, 0.7)
    errs = []
    for noise_seed in (1, 2, 3):
        for scale in (1.0, 1.15):
            R = r * scale
            vessel = (cylinder(rv, (0.0, 0.0, R + rv - 0.3), (0.3, 1.0, 0.2)), SOLID + 10.0)
            img, c = render([vessel, (ball(R), SOLID if kind == "solid" else GGO)], sp, size_mm=36.0,
                            seed=noise_seed + int(10 * scale))
            seg = segment_nodule(img, sp, c)
            assert seg.location == "juxtavascular" and seg.nodule_type == kind
            errs.append(volume_mm3(seg.mask, sp) / (4 / 3 * math.pi * R ** 3) - 1)
    assert abs(np.mean(errs)) < tol, f"mean {100 * np.mean(errs):+.1f} %, each {np.round(100 * np.array(errs), 1)}"


def test_vessel_excess_is_the_vessels_own_image():
    # a vessel alone, with a nodule's mask imagined beside it: the excess
    # read away from the "nodule" and laid along the vessel leaves the
    # lung level behind, right where the nodule would be too
    sp = np.array([1.0, 0.7, 0.7])
    r, rv = 2.5, 1.1
    vessel = cylinder(rv, (0.0, 0.0, r + rv - 0.3), (0.3, 1.0, 0.2))
    img, c = render([(vessel, SOLID + 10.0)], sp, size_mm=36.0, seed=5)
    seed = tuple(int(round(v)) for v in c)
    z, y, x = (np.indices(img.shape) - np.asarray(c)[:, None, None, None]) * sp[:, None, None, None]
    mask = z ** 2 + y ** 2 + x ** 2 <= r * r
    # a thin oblique vessel's blurred peak is about -130 HU here: a quarter of its contrast
    dense = ndimage.gaussian_filter(img, 0.5) >= LUNG + 0.25 * (SOLID + 10.0 - LUNG)
    excess = _vessel_excess(img, sp, mask, dense & ~mask, seed, r, LUNG, 0.7)
    assert excess is not None
    near = ndimage.binary_dilation(mask, iterations=4) & (excess > 0)  # the vessel beside the mask
    left = img[near] - excess[near] - LUNG
    # 15 HU noise; the vessel's contrast is 890 HU
    assert abs(float(np.median(left))) < 10.0 and float(np.percentile(np.abs(left), 95)) < 100.0


@pytest.mark.parametrize("grow_mm, kept", [(0.7, True), (3.0, False)])
def test_vessel_subtraction_is_refused_when_the_nodule_grows_beyond_its_own_flank(monkeypatch, grow_mm, kept):
    # with the vessel's excess subtracted the nodule gets back its own flank
    # on the vessel's side, within about a millimetre; a second mask reaching
    # further has taken in the vessel's residue (4-6 mm ground glass on 1 mm
    # pixels: +30 to +88 % unflagged) and the first segmentation is kept
    import nodulegrowth.segment as seg_mod

    sp = np.array([0.7, 0.7, 0.7])
    z, y, x = (np.indices((40, 40, 40)) - 19.5) * 0.7
    first = z ** 2 + y ** 2 + x ** 2 <= 2.5 ** 2
    second = first | ((z ** 2 + x ** 2 <= 1.5 ** 2) & (y > 0) & (y <= 2.5 + grow_mm))  # a finger along y
    monkeypatch.setattr(seg_mod, "_vessel_excess", lambda *a, **k: np.zeros(first.shape))
    monkeypatch.setattr(seg_mod, "_segment", lambda *a, **k: Segmentation(
        mask=second, nodule_type="solid", location="isolated", solid_mask=None, threshold_hu=-400.0, flags=(),
        seed_zyx=(20, 20, 20), parenchyma_hu=-850.0, core_hu=0.0, solid_threshold_hu=math.nan))
    out = seg_mod._without_vessels(np.zeros(first.shape), sp, (20, 20, 20), None, None, first, first.copy(),
                                   -850.0, 2.5, 0.7, False, refine_seed=True, in_structure=False)
    assert (out is not None) == kept
    if kept:
        assert out.location == "juxtavascular"


def _oblique_ellipsoid_on_thick_vessel(noise_seed):
    """A 5.7 mm solid ellipsoid touching a 1.18 mm-radius vessel (geometry of a
    case drawn from the benchmark's scene generator), 1 mm slices."""
    semi = np.array([2.8595, 3.3081, 2.5071])
    rot = np.array([[-0.4901, 0.4327, -0.7567], [0.8105, -0.0935, -0.5783], [-0.3209, -0.8967, -0.3049]])
    quad = rot @ np.diag(1.0 / semi ** 2) @ rot.T  # x^T A x <= 1, xyz

    def nodule(z, y, x):
        p = np.stack([x, y, z], -1)
        return np.einsum("...i,ij,...j->...", p, quad, p) <= 1.0

    side = np.array([0.5008, -0.23, 0.8344]) * 3.787  # xyz, the vessel overlaps by 0.3 mm
    vessel = cylinder(1.1847, (side[2], side[1], side[0]), (0.278, -0.609, -0.7429))
    sp = (1.0, 0.7, 0.7)
    img, c = render([(vessel, SOLID + 10.0), (nodule, SOLID)], sp, size_mm=36.0, seed=noise_seed,
                    psf_mm=0.67, noise=25.0, offset=(0.06, 0.17, -0.25))
    long_true = 2.0 / math.sqrt(np.linalg.eigvalsh(quad[:2, :2]).min())
    return img, c, sp, 4 / 3 * math.pi * float(np.prod(semi)), long_true


@pytest.mark.parametrize("noise_seed", range(6))
@pytest.mark.parametrize("click_mm", [(0.0, -1.0, -0.5), (0.0, -0.5, -1.0)])
def test_partial_volume_regrowth_reopens_with_the_ball_the_separation_needed(noise_seed, click_mm):
    # a click 1 mm off centre moves the seed towards the (denser) vessel, the
    # inscribed radius at the seed is small and the first opening ball does
    # not cut the vessel: a larger retry ball does. The partial-volume
    # regrowth re-opened with the first ball and took the vessel back in:
    # +43 to +64 % volume, long axis +2.1 mm, unflagged (4 of these 12 cases
    # at 43b6fcf; found at +61 %, +7 mm on the benchmark's generator).
    img, c, sp, v_true, long_true = _oblique_ellipsoid_on_thick_vessel(noise_seed)
    click = tuple(ci + d / s for ci, d, s in zip(c, click_mm, sp))
    seg = segment_nodule(img, sp, click)
    m = measure_nodule(seg.mask, sp)
    err = m.volume_mm3 / v_true - 1
    ok = abs(err) < 0.3 and abs(m.long_axis_mm - long_true) < 1.5
    assert ok or "segmentation_leak" in seg.flags, \
        f"{100 * err:+.0f} %, long axis {m.long_axis_mm:.2f} mm (true {long_true:.2f}), flags {seg.flags}"


def test_small_ground_glass_nodule_on_a_faint_vessel_is_not_silently_inflated():
    # a 0.7 mm-radius solid vessel blurred to about -560 HU next to a -600 HU
    # nodule is ground glass to the region growing, and at that threshold
    # thicker than the opening ball: +74 %, unflagged (a known silent leak,
    # xfail, until the vessel's blurred excess was subtracted: +3 %)
    seg, sp = segment_nodule_on_vessel(2.35, 0.7, GGO)
    err = volume_mm3(seg.mask, sp) / (4 / 3 * math.pi * 2.35 ** 3) - 1
    assert abs(err) < 0.3 or "segmentation_leak" in seg.flags, f"{100 * err:+.0f} %, flags {seg.flags}"


@pytest.mark.parametrize("spacing", [(1.25, 0.7, 0.7), (1.0, 0.7, 0.7)])
@pytest.mark.parametrize("direction", [(0.8, 0.3, 0.0), (0.6, 0.3, 0.0)])
@pytest.mark.parametrize("click_y", [-1.5, 1.5])
def test_vessel_stub_beside_an_elongated_ground_glass_nodule_is_trimmed(spacing, direction, click_y):
    # a click 1.5 mm off the centre of a flat (11 x 7.6 x 10 mm) ground-glass
    # nodule is 2.3 mm from its surface: the separating ball (0.45 of that)
    # is thinner than a faint 0.65 mm-radius vessel running along its side
    # at the ground-glass threshold, and a stub of it stayed (+5 to +8 %
    # volume, 8 of 8 before; a 10 mm one on the benchmark's default grid:
    # +18 %, mean diameter +2.4 mm)
    a, b, c = 5.5, 3.8, 5.0
    rv = 0.65
    vessel = cylinder(rv, (0.0, 0.0, a + rv - 0.3), direction)
    img, ctr = render([(vessel, SOLID - 20.0), (ellipsoid(a, b, c), -650.0)], spacing, size_mm=36.0, seed=2)
    click = (ctr[0], ctr[1] + click_y / spacing[1], ctr[2])
    seg = segment_nodule(img, spacing, click)
    assert seg.nodule_type == "ground_glass"
    assert seg.location == "juxtavascular"
    err = volume_mm3(seg.mask, spacing) / (4 / 3 * math.pi * a * b * c) - 1
    assert abs(err) < 0.04, f"{100 * err:+.1f} %"
    # nothing of the mask lies beyond the nodule's side by more than 1.5 mm
    zz, yy, xx = np.nonzero(seg.mask)
    x_mm = (xx - ctr[2]) * spacing[2]
    assert x_mm.max() < a + 1.5


@pytest.mark.parametrize("r", [3.0, 4.0])
@pytest.mark.parametrize("rv", [0.9, 1.2, 1.5])
def test_ground_glass_nodule_on_a_thin_solid_vessel(r, rv):
    # a thin vessel is blurred below the solid level and breaks up there; the
    # pieces near the nodule used to be grown into it (+76 to +104 % for
    # r = 3, rv = 0.9). Denser than the nodule's own core, they are vessel.
    seg, sp = segment_nodule_on_vessel(r, rv, GGO)
    assert seg.nodule_type == "ground_glass"
    assert seg.location == "juxtavascular"
    v_true = 4 / 3 * math.pi * r ** 3
    assert abs(volume_mm3(seg.mask, sp) / v_true - 1) < 2 * rel_tol(sp, r)


@pytest.mark.parametrize("kind", [SOLID, GGO])
def test_partial_volume_level_of_a_large_nodule_is_read_from_its_plateau(kind):
    # the tissue level read from a few dozen voxels around the centre of a
    # 16 mm ball varied with the noise (30 HU SD): ground glass -6.2 to
    # +0.4 % over these six draws, solid -2.5 to -0.6 %. The plateau
    # beyond the blur holds thousands of voxels.
    r, sp = 8.0, (1.0, 0.7, 0.7)
    errs = []
    for noise_seed in range(6):
        img, c = render([(ball(r), kind)], sp, size_mm=40.0, noise=30.0, seed=noise_seed)
        seg = segment_nodule(img, sp, c)
        errs.append(volume_mm3(seg.mask, sp) / (4 / 3 * math.pi * r ** 3) - 1)
    errs = np.array(errs)
    assert np.abs(errs).max() < 0.025, np.round(100 * errs, 1)
    assert np.ptp(errs) < 0.015, np.round(100 * errs, 1)


@pytest.mark.parametrize("kind", [SOLID, GGO])
@pytest.mark.parametrize("noise_seed", [0, 1, 2])
def test_small_nodule_is_not_inflated_by_the_partial_volume_step(kind, noise_seed):
    # a 4.4 mm nodule has no interior plateau: blur lowers even its deepest
    # voxels, and a tissue level taken as the median of the deepest 1 mm
    # made every partial-volume fraction too large (+21 to +44 % measured).
    # A band of half the depth (0.5-1 mm) gives +9 to +15 % on average here
    # (rendering noise 15-25 HU); 25 % is the regression bound, not a claim
    # of accuracy.
    sp = (1.0, 0.7, 0.7)
    r = 2.2
    img, c = render([(ball(r), kind)], sp, size_mm=30.0, seed=noise_seed,
                    offset=(0.1 * noise_seed, 0.2 * noise_seed, -0.15 * noise_seed), noise=15 + 5 * noise_seed)
    seg = segment_nodule(img, sp, c)
    v_true = 4 / 3 * math.pi * r ** 3
    assert abs(volume_mm3(seg.mask, sp) / v_true - 1) < 0.25


@pytest.mark.parametrize("r", [2.0, 2.2, 2.5])
def test_small_solid_nodule_volume_is_not_biased_by_its_blurred_centre(r):
    # blur lowers the centre of a 4-5 mm solid nodule below its tissue level;
    # read there, the level made every partial-volume fraction too large
    # (noise-free here: +12 to +46 % at 1b1d5dd, +10 % at 4.4 mm once the
    # partial-volume sum kept the shaved surface, -1 to +1 % with the
    # blurred-ball fit). Noise-free, so the bound is about the method.
    sp = (1.0, 0.7, 0.7)
    img, c = render([(ball(r), SOLID)], sp, size_mm=30.0, seed=0, noise=0.0)
    seg = segment_nodule(img, sp, c)
    assert abs(volume_mm3(seg.mask, sp) / (4 / 3 * math.pi * r ** 3) - 1) < 0.05


def _segment_draws(objects, sp, *, n_seeds, size_mm, noise, psf_mm, **kw):
    """Segmentations of ``objects`` centred at the origin over ``n_seeds`` noise draws and grid offsets."""
    segs = []
    for noise_seed in range(n_seeds):
        off = tuple(np.random.default_rng(noise_seed).uniform(-0.5, 0.5, 3) * np.asarray(sp))
        img, c = render(objects, sp, size_mm=size_mm, seed=noise_seed, noise=noise, offset=off, psf_mm=psf_mm)
        segs.append(segment_nodule(img, sp, c, **kw))
    return segs


def _ball_volume_errors(kind, sp, r, *, n_seeds, size_mm, noise, psf_mm):
    """Relative volume errors of a ball of radius ``r`` (mm) over ``n_seeds`` noise draws and grid offsets."""
    segs = _segment_draws([(ball(r), kind)], sp, n_seeds=n_seeds, size_mm=size_mm, noise=noise, psf_mm=psf_mm)
    return np.array([volume_mm3(seg.mask, sp) / (4 / 3 * math.pi * r ** 3) - 1 for seg in segs])


@pytest.mark.parametrize("kind, tol", [(SOLID, 0.01), (GGO, 0.02)])
@pytest.mark.parametrize("sp", [(1.0, 0.7, 0.7), (1.25, 0.6, 0.6), (0.8, 0.8, 0.8)])
@pytest.mark.parametrize("r", [3.5, 5.0])
def test_partial_volume_sum_holds_the_blurred_edge(kind, tol, sp, r):
    # The partial-volume sum ran over the mask grown by 1.5 mm in-plane and
    # one slice: the tail of the blurred edge beyond it was lost and the
    # lung level read in a ring over that tail, 0.5 % of the contrast high.
    # 7-10 mm balls: solid -4.5 to -1.8 %, ground glass -4.5 to -1.4 %
    # (mean of three noise draws) at b329f2c. Summed to the blur's reach
    # (2.5 mm): solid -0.5 to +0.5 %, ground glass -1.4 to +0.9 %.
    errs = _ball_volume_errors(kind, sp, r, n_seeds=3, size_mm=36.0, noise=20.0, psf_mm=0.65)
    assert abs(np.mean(errs)) < tol, np.round(100 * errs, 2)


@pytest.mark.parametrize("kind", [SOLID, GGO])
@pytest.mark.parametrize("sp", [(1.0, 0.7, 0.7), (1.25, 0.6, 0.6), (0.8, 0.8, 0.8)])
@pytest.mark.parametrize("r", [2.2, 2.6])
def test_small_nodule_level_is_fitted_whatever_its_density(kind, sp, r):
    # Blur lowers the centre of a 4-5 mm nodule below its tissue level. A
    # solid one's level came from a blurred-ball fit, a ground-glass one's
    # from its deepest voxels: ground glass -6 to +13 % (mean of four noise
    # draws; five of these six cases over 4 %) at b329f2c, and solid ones
    # on 0.8 mm voxels -8 to -6 % (the sum missed the edge's tail). Fitted
    # for both, summed to the blur's reach: -2.1 to +2.4 %.
    errs = _ball_volume_errors(kind, sp, r, n_seeds=4, size_mm=30.0, noise=15.0, psf_mm=0.6)
    assert abs(np.mean(errs)) < 0.04, np.round(100 * errs, 1)


THIN_SPACINGS = [(1.0, 0.7, 0.7), (1.25, 0.6, 0.6), (0.8, 0.8, 0.8)]


@pytest.mark.parametrize("sp", THIN_SPACINGS)
@pytest.mark.parametrize("r, r_core", [(2.5, 1.2), (2.8, 1.3)])
def test_small_part_solid_nodule_taken_for_solid_is_flagged(sp, r, r_core):
    # A ground-glass ball of 5-5.6 mm round a solid core of 2.4-2.6 mm: the
    # blur leaves no rim to see, and the nodule was typed solid and measured
    # as its core (-25 to -40 %), unflagged. Its blurred-ball fit asks for
    # more than twice the contrast its centre shows, or for a level below
    # soft tissue: of these 24 draws 21 are flagged, 2 typed part-solid and
    # 1 missed (1.25 mm slices, -28 %). Typing and measuring
    # such a nodule is not solved (docs/VALIDATION.md); the flag sends it to
    # a reader.
    segs = _segment_draws([(ball(r), GGO), (ball(r_core), SOLID)], sp, n_seeds=4, size_mm=28.0, noise=20.0,
                          psf_mm=0.65)
    seen = [s.nodule_type == "part_solid" or "tissue_level_uncertain" in s.flags for s in segs]
    assert sum(seen) >= 3, [(s.nodule_type, s.flags) for s in segs]


@pytest.mark.parametrize("sp", THIN_SPACINGS)
@pytest.mark.parametrize("kind", [SOLID, GGO])
@pytest.mark.parametrize("r", [2.3, 3.0])
def test_uniform_small_nodule_is_not_flagged_tissue_level_uncertain(sp, kind, r):
    segs = _segment_draws([(ball(r), kind)], sp, n_seeds=2, size_mm=28.0, noise=20.0, psf_mm=0.65)
    assert not any("tissue_level_uncertain" in s.flags for s in segs), [s.flags for s in segs]


@pytest.mark.parametrize("sp", THIN_SPACINGS)
def test_nodule_under_3_mm_is_flagged_tissue_level_uncertain(sp):
    # a 2.6 mm solid ball under a 0.65 mm PSF: its centre keeps under half
    # the contrast the fit needs; the level is then read at the deepest
    # voxels and the volume comes out more than twice the truth
    segs = _segment_draws([(ball(1.3), SOLID)], sp, n_seeds=2, size_mm=28.0, noise=20.0, psf_mm=0.65)
    assert all("tissue_level_uncertain" in s.flags for s in segs), [s.flags for s in segs]


def test_tissue_level_uncertain_is_not_raised_when_the_type_is_given():
    # the caller chose the type (as the pipeline does when it segments a
    # time point again as part-solid): the flag would only repeat it
    segs = _segment_draws([(ball(2.8), GGO), (ball(1.3), SOLID)], (1.0, 0.7, 0.7), n_seeds=2, size_mm=28.0,
                          noise=20.0, psf_mm=0.65, nodule_type="solid")
    assert not any("tissue_level_uncertain" in s.flags for s in segs), [s.flags for s in segs]


@pytest.mark.parametrize("r", [1.6, 2.0, 2.5])
def test_noise_free_ball_threshold_takes_tied_voxels_to_the_nearest_count(r):
    # In a noise-free, centred ball voxels come in groups of equal value,
    # all in or all out at any threshold; the partial-volume threshold took
    # the group that held its n-th voxel whole, however far past n (ground
    # glass: +48 / +35 / +12 % here at b329f2c; the level fit brings the
    # second to +11 %). Now the group is taken only when that lands nearer n.
    sp = (1.0, 0.7, 0.7)
    img, c = render([(ball(r), GGO)], sp, size_mm=30.0, seed=0, noise=0.0)
    seg = segment_nodule(img, sp, c)
    err = volume_mm3(seg.mask, sp) / (4 / 3 * math.pi * r ** 3) - 1
    assert abs(err) < 0.05, f"{100 * err:+.1f} %"


def test_vessel_near_ignores_noise_specks_and_the_wall():
    sp = np.array([1.0, 0.7, 0.7])
    shape = (30, 40, 40)
    z, y, x = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, sp)], indexing="ij")
    mask = (z - 15) ** 2 + (y - 14) ** 2 + (x - 14) ** 2 <= 9.0
    wall = x >= 20.0
    speck = np.zeros(shape, bool)
    speck[15, int(round(18.5 / 0.7)), int(round(14.0 / 0.7))] = True  # one voxel, 1.2 mm off the mask
    assert not mask[speck].any()
    flank = (x >= 19.0) & (x < 20.0) & (np.abs(z - 15) < 4)  # the wall's flank, joined to it
    vessel = ((y - 14) ** 2 + (x - 18.5) ** 2 <= 0.8) & ~wall  # along z, 0.6 mm off the mask
    assert not _vessel_near(mask, speck | flank, wall, sp)
    assert _vessel_near(mask, vessel | speck, wall, sp)
    assert not _vessel_near(mask, np.zeros(shape, bool), wall, sp)


@pytest.mark.parametrize("sp, tol", [((1.25, 1.0, 1.0), 0.10), ((1.0, 1.5, 1.5), 0.20)])
@pytest.mark.parametrize("noise_seed", range(4))
def test_small_solid_nodule_on_coarse_pixels_is_not_over_segmented(noise_seed, sp, tol):
    # on 1 mm pixels the deepest voxels of a 4 mm solid nodule read 25-41 %
    # of the contrast below its tissue level (more on 1.5 mm: they lie up to
    # a voxel from the centre, and the smoothing is half a voxel); the
    # blurred-ball fit finds the level, but a fixed plausibility ceiling (30 %
    # of the contrast above the deepest voxels) rejected it and the
    # partial-volume step over-segmented: +42 to +49 % here on 1 mm pixels,
    # +75 to +88 % on 1.5 mm, at e44cc70. The ceiling now allows for the
    # grid's share of the lowering: -3 to +4 % and +1 to +14 %. On 1.5 mm
    # pixels the ball is under three voxels across, hence the wider bound.
    r = 2.0
    off = tuple(np.random.default_rng(noise_seed).uniform(-0.5, 0.5, 3) * np.asarray(sp))
    img, c = render([(ball(r), SOLID)], sp, size_mm=30.0, seed=noise_seed, noise=20.0, offset=off)
    seg = segment_nodule(img, sp, c)
    assert abs(volume_mm3(seg.mask, sp) / (4 / 3 * math.pi * r ** 3) - 1) < tol


@pytest.mark.parametrize("r", [1.8, 1.9, 2.0])
@pytest.mark.parametrize("noise_seed", range(6))
def test_small_solid_nodule_blurred_beyond_the_fit_allowance_is_not_inflated(r, noise_seed):
    # a 3.6-4 mm solid nodule under a 0.7 mm PSF on 1 mm pixels and 1.25 mm
    # slices: its centre reads about half of its contrast. The blurred-ball
    # fit finds the level but lies above the fit's allowance; refused, the
    # partial-volume step read the level at the deepest voxels and inflated
    # the volume: +49 to +94 % in 14 of these 18 cases at 7c9b249 (unflagged;
    # found as a +81 % T2 of a shrinking nodule drawn from the benchmark's
    # scene generator). Now the allowance's level: -4 to +18 %. The bound is
    # about half of rel_tol at these sizes.
    sp = (1.25, 1.0, 1.0)
    off = tuple(np.random.default_rng(noise_seed).uniform(-0.5, 0.5, 3) * np.asarray(sp))
    img, c = render([(ball(r), SOLID)], sp, size_mm=30.0, seed=noise_seed, noise=20.0, offset=off, psf_mm=0.7)
    seg = segment_nodule(img, sp, c)
    err = volume_mm3(seg.mask, sp) / (4 / 3 * math.pi * r ** 3) - 1
    assert abs(err) < 0.25, f"{100 * err:+.0f} %"


@pytest.mark.parametrize("radius, sigma", [(1.9, 0.9), (2.2, 1.0), (2.2, 1.2)])
def test_blurred_ball_fit_above_its_allowance_is_held_between_the_deepest_voxels_and_the_truth(radius, sigma):
    # a noise-free blurred ball whose centre keeps less of its contrast than
    # the fit's allowance (30 % for the scanner's blur) accepts: the fit's
    # level is above the allowance. It was refused, and the deepest voxels,
    # read as the level, made every partial-volume fraction too large. Now
    # the allowance's level, and at most what the deepest voxels imply under
    # CT blur (sigma <= 1.1 mm; the 1.2 mm case is a wider edge than that):
    # above the deepest voxels, not above the truth.
    sp = np.array([1.25, 1.0, 1.0])
    n = 25
    idx = np.indices((n, n, n)).astype(float)
    r = np.sqrt((((idx - (n - 1) / 2) * sp[:, None, None, None]) ** 2).sum(axis=0))
    p_loc, level = -850.0, 30.0
    sm = p_loc + (level - p_loc) * _blurred_ball_profile(r, radius, sigma)
    mask = sm >= p_loc + 0.5 * (sm.max() - p_loc)
    region = ndimage.binary_dilation(mask, iterations=3)
    deepest = np.argwhere(mask & (sm >= np.sort(sm[mask])[-7]))
    g_band = float(np.median(sm[tuple(deepest.T)]))
    fitted = _blurred_ball_level(sm, region, mask, p_loc, g_band, sp, deepest=deepest, smooth_mm=0.5)
    assert fitted is not None and g_band < fitted <= level + 1.0, (fitted, g_band)


@pytest.mark.parametrize("r, rv", [(2.6, 1.0), (2.9, 1.2), (3.2, 1.2)])
@pytest.mark.parametrize("click_mm", [(0.0, -1.0, -0.5), (0.0, 0.7, 0.7)])
@pytest.mark.parametrize("noise_seed", range(4))
def test_small_solid_nodule_beside_a_vessel_as_thick_as_the_first_ball(r, rv, click_mm, noise_seed):
    # a vessel about as thick as the first opening ball is cut only where
    # the noise thins it, and the stub left on the mask (and the vessel's
    # blurred flank, as dense as the nodule's) counted as nodule: at 7c9b249
    # +37 to +51 % for the 5.8 mm nodule (flagged), +5 to +12 % for the
    # 6.4 mm one, and one +40 % unflagged for the 5.2 mm one (15 of these
    # 24 cases over 10 %). Now a cut vessel as thick as the ball asks for
    # the next ball, the space nearer to the vessel than to the nodule is
    # the vessel's in the partial-volume step, and a blurred-ball fit that
    # the vessel's flank widened is bounded (the +40 % case): -5 to +8 %.
    # The flag may stay (the vessel is about 0.4 times the nodule's
    # radius); the volume must be right all the same.
    sp = (1.0, 0.7, 0.7)
    vessel = (cylinder(rv, (0.0, 0.0, r + rv - 0.3), (0.3, 1.0, 0.2)), SOLID + 10.0)
    img, c = render([vessel, (ball(r), SOLID)], sp, size_mm=36.0, seed=noise_seed, noise=20.0, psf_mm=0.65)
    seg = segment_nodule(img, sp, tuple(ci + d / q for ci, d, q in zip(c, click_mm, sp)))
    err = volume_mm3(seg.mask, sp) / (4 / 3 * math.pi * r ** 3) - 1
    assert seg.location == "juxtavascular"
    assert abs(err) < 0.10, f"{100 * err:+.0f} %, flags {seg.flags}"


@pytest.mark.parametrize("r, r_core", [(2.6, 1.0), (2.8, 1.1), (3.0, 1.2)])
@pytest.mark.parametrize("noise_seed", range(4))
def test_small_part_solid_nodule_on_coarse_pixels_is_not_measured_as_its_core(noise_seed, r, r_core):
    # on 1.5 mm pixels a 5-6 mm part-solid nodule is mostly typed solid (its
    # rim is not resolved); the blurred-ball fit then reads its core as a
    # small dense ball and its level runs to the fit's bound. With the grid's
    # allowance alone such a fit passed and the nodule was measured as its
    # core (-48 to -62 % in 7 of these 12); a level at its bound is refused,
    # which leaves -26 to +7 %. Whatever the type, not the core alone.
    sp = (1.0, 1.5, 1.5)
    off = tuple(np.random.default_rng(noise_seed).uniform(-0.5, 0.5, 3) * np.asarray(sp))
    img, c = render([(ball(r), GGO), (ball(r_core), SOLID)], sp, size_mm=30.0, seed=noise_seed, noise=15.0,
                    offset=off)
    seg = segment_nodule(img, sp, c)
    assert volume_mm3(seg.mask, sp) / (4 / 3 * math.pi * r ** 3) - 1 > -0.35


@pytest.mark.parametrize("r", [2.2, 2.6, 3.0])
@pytest.mark.parametrize("kind", [SOLID, GGO])
def test_partial_volume_sum_keeps_the_surface_the_opening_shaved(r, kind):
    # the opening shaves a few surface voxels off a small nodule; the
    # partial-volume sum used to treat them as "another structure" and leave
    # them and their blurred edge out, which a blur-lowered tissue level then
    # over-compensated: +27 % for the 4.4 mm ball here (noise-free), +3..+7 %
    # at 6 mm. Noise-free, so the bound is about the method, not the noise.
    sp = (1.0, 0.7, 0.7)
    img, c = render([(ball(r), kind)], sp, size_mm=36.0, seed=3, noise=0.0)
    seg = segment_nodule(img, sp, c)
    assert abs(volume_mm3(seg.mask, sp) / (4 / 3 * math.pi * r ** 3) - 1) < 0.12


@pytest.mark.parametrize("spacing", [(1.0, 0.7, 0.7), (2.5, 0.8, 0.8)])
@pytest.mark.parametrize("with_lung_mask", [False, True])
def test_juxtapleural_nodule_separated_from_wall(spacing, with_lung_mask):
    r = 5.0
    wall_x = r  # the nodule touches a chest wall filling x >= r
    wall = (lambda z, y, x: x >= wall_x, 40.0)
    img, c = render([wall, (ball(r), SOLID)], spacing, seed=7)
    lung = None
    if with_lung_mask:
        n = img.shape
        x = (np.arange(n[2]) - (n[2] - 1) / 2) * spacing[2]
        lung = np.broadcast_to(x < wall_x, n)
    seg = segment_nodule(img, spacing, c, lung_mask=lung)
    assert "touches_pleura" in seg.flags
    assert_juxtapleural_ball(seg, spacing, r)


def _oblique_wall(offset_mm, angle=0.5):
    """A chest wall (40 HU) filling the half-space beyond ``offset_mm`` along an in-plane oblique normal."""
    n = (math.cos(angle), math.sin(angle))
    return (lambda z, y, x: x * n[0] + y * n[1] >= offset_mm), n


@pytest.mark.parametrize("spacing", [(1.0, 0.7, 0.7), (1.25, 0.7, 0.7), (0.6, 0.5, 0.5)])
@pytest.mark.parametrize("r", [2.25, 2.5, 3.0, 4.0, 5.0])
def test_ground_glass_nodule_on_the_chest_wall_is_measured_to_the_wall(spacing, r):
    # Without a lung mask the chest wall is found by closing the air round
    # the nodule; at a ground-glass threshold (about 15 % of the wall's
    # contrast) the wall's blurred flank reaches about 1 mm into the lung
    # and was taken for wall, and the nodule's side within it with it (-4
    # to -11 %). With the wall's flank subtracted: -4.4 to -0.8 %. The
    # 4.5-5 mm ones (-13 to -4 %) were left out of that step while their
    # tissue level read low; with the level fitted and the partial-volume
    # sum holding the blurred edge: -3.2 to +0.1 %, the others -2.5 to +0.3 %.
    inside, _ = _oblique_wall(r)
    img, c = render([(inside, 40.0), (ball(r), GGO)], spacing, size_mm=36.0, seed=1)
    seg = segment_nodule(img, spacing, c)
    assert (seg.location, seg.nodule_type) == ("juxtapleural", "ground_glass")
    assert "touches_pleura" in seg.flags and "segmentation_leak" not in seg.flags
    err = volume_mm3(seg.mask, spacing) / (4 / 3 * math.pi * r ** 3) - 1
    assert abs(err) < 0.05, f"{100 * err:+.1f} %"


@pytest.mark.parametrize("spacing", [(1.0, 0.7, 0.7), (2.5, 0.8, 0.8)])
@pytest.mark.parametrize("psf_mm", [0.5, 0.9])
def test_wall_flank_excess_leaves_the_lung_level_beside_the_wall(spacing, psf_mm):
    # the wall's blurred flank, read from the wall away from the "nodule"
    # (here a 3 mm-radius mask 8 mm off), is subtracted to within a few HU
    # of the lung level from 1 mm inside the wall to 4 mm out, within 15 mm
    # of the nodule; unsubtracted it stands hundreds of HU above the lung
    # within a millimetre of the surface
    inside, n = _oblique_wall(2.0)
    img, _ = render([(inside, 40.0)], spacing, size_mm=36.0, psf_mm=psf_mm, seed=2)
    sh = img.shape
    z, y, x = np.meshgrid(*[(np.arange(sh[i]) - (sh[i] - 1) / 2) * spacing[i] for i in range(3)], indexing="ij")
    d = x * n[0] + y * n[1] - 2.0  # signed distance to the wall's surface (mm), positive inside the wall
    wall = d >= -0.5  # the segmentation's wall region reaches a little into the flank
    mask = (x + 6.0) ** 2 + y ** 2 + z ** 2 <= 9.0
    sm = ndimage.gaussian_filter(img.astype(float), [0.5 if spacing[0] <= 1.5 else 0.0, 0.5, 0.5], mode="nearest")
    excess = _wall_flank_excess(img.astype(float), sm, spacing, wall, mask, LUNG)
    assert excess is not None
    r2 = (x + 6.0) ** 2 + y ** 2 + z ** 2
    band = (d > -4.0) & (d < 1.0) & (r2 > 49.0) & (r2 < 15.0 ** 2)
    raw = np.median(np.abs(img[band & (d > -1.0)] - LUNG))
    corrected = img - excess
    assert raw > 200.0
    for lo in np.arange(-4.0, 1.0, 0.5):
        sel = band & (d >= lo) & (d < lo + 0.5)
        assert abs(float(np.median(corrected[sel])) - LUNG) < 8.0, (lo, float(np.median(corrected[sel])))


@pytest.mark.parametrize("spacing", [(1.0, 0.7, 0.7), (0.6, 0.5, 0.5)])
@pytest.mark.parametrize("kind", [SOLID, GGO])
@pytest.mark.parametrize("bubble_mm", [1.0, 1.5])
def test_juxtapleural_nodule_with_a_lucency_beside_the_seed(spacing, kind, bubble_mm):
    # A bubble-like lucency (or, at a threshold close to a faint nodule's
    # level, a noise pocket) next to the seed is the nearest voxel below the
    # threshold. Taken for the lung around the nodule, it made the "lung"
    # that pocket and everything else chest wall: the nodule grew into the
    # wall (a 22 mm part-solid and a 14 mm ground-glass nodule on the wall
    # in an independent benchmark sample: -86 % and +1850 %; here all four
    # 1.5 mm cases failed so). The opening then cut the thin shell between
    # the lucency and the lung unless the lucency was filled first (-10 to
    # -16 % for 1.5 mm).
    r = 6.0
    wall = (lambda z, y, x: x >= r, 40.0)
    bubble = (ball(bubble_mm, (0.0, 0.0, -(bubble_mm + 0.6))), LUNG)
    img, c = render([wall, (ball(r), kind), bubble], spacing, size_mm=36.0, seed=5)
    seg = segment_nodule(img, spacing, c)
    # the lucency is inside the nodule: the mask's holes are filled
    assert_juxtapleural_ball(seg, spacing, r)


@pytest.mark.parametrize("spacing", [(1.0, 0.7, 0.7), (2.5, 0.8, 0.8)])
@pytest.mark.parametrize("kind", [SOLID, GGO])
@pytest.mark.parametrize("r, r_cavity", [(4.0, 1.5), (6.0, 1.0), (6.0, 1.5)])
@pytest.mark.parametrize("on_wall", [False, True])
def test_nodule_with_a_central_lucency_is_not_inflated(spacing, kind, r, r_cavity, on_wall):
    # the radiologist's centre lies in the lucency (cavity, bubble); the
    # nodule's volume includes it (the mask is filled). Its air, deepest in
    # the filled mask, was read as the tissue level of the partial-volume
    # step: +11 to +57 % on 1 mm slices, +14 to +19 % on 2.5 mm, unflagged
    objects = [(lambda z, y, x: x >= r, 40.0)] if on_wall else []
    objects += [(ball(r), kind), (ball(r_cavity), LUNG)]
    img, c = render(objects, spacing, size_mm=36.0, seed=5)
    seg = segment_nodule(img, spacing, c)
    assert seg.location == ("juxtapleural" if on_wall else "isolated")
    assert "segmentation_leak" not in seg.flags
    v_true = 4 / 3 * math.pi * r ** 3
    assert abs(volume_mm3(seg.mask, spacing) / v_true - 1) < rel_tol(spacing, r)


@pytest.mark.parametrize("spacing", [(1.0, 0.7, 0.7), (2.5, 0.8, 0.8)])
@pytest.mark.parametrize("kind", [SOLID, GGO])
@pytest.mark.parametrize("on_wall", [False, True])
def test_cavitated_nodule_clicked_in_its_cavity(spacing, kind, on_wall):
    # the reader's centre is in an air cavity 3 mm across its radius, beyond
    # the 2 mm of the seed refinement: "no structure denser than the lung"
    # before; the wall enclosing the click is found and grown from
    r = 7.0
    objects = [(lambda z, y, x: x >= r, 40.0)] if on_wall else []
    objects += [(ball(r), kind), (ball(3.0), -1000.0)]
    img, c = render(objects, spacing, size_mm=36.0, seed=5)
    seg = segment_nodule(img, spacing, c)
    assert seg.nodule_type == ("solid" if kind == SOLID else "ground_glass")
    assert seg.mask[tuple(int(round(v)) for v in c)]
    v_true = 4 / 3 * math.pi * r ** 3
    assert abs(volume_mm3(seg.mask, spacing) / v_true - 1) < rel_tol(spacing, r)


@pytest.mark.parametrize("r", [6.0, 10.0])
@pytest.mark.parametrize("noise_seed", range(3))
def test_faint_ground_glass_nodule_in_strong_noise_is_segmented(r, noise_seed):
    # 160 HU of contrast under noise SD 60 HU: the seed test compared the
    # core with three SDs of the raw noise (180 HU) and called a 12 mm nodule
    # "no structure denser than the lung" (1 of these 6; on the benchmark
    # with noise 30-60 HU a 27 mm one). The core is read on the smoothed
    # image, so its noise is what the test must use; a click in the open
    # lung of the same scan still fails.
    sp = (1.25, 0.7, 0.7)
    img, c = render([(ball(r), -690.0)], sp, size_mm=2 * r + 16, seed=noise_seed, noise=60.0)
    seg = segment_nodule(img, sp, c)
    assert seg.nodule_type == "ground_glass"
    assert abs(volume_mm3(seg.mask, sp) / (4 / 3 * math.pi * r ** 3) - 1) < 0.2
    with pytest.raises(SegmentationError, match="no structure denser than the lung"):
        segment_nodule(img, sp, (c[0], c[1], c[2] + (r + 6) / sp[2]))


def test_click_in_the_open_lung_still_fails():
    # the cavity search must not pull a click in the lung onto a nearby nodule
    sp = (1.0, 0.7, 0.7)
    img, c = render([(ball(4.0), SOLID)], sp, size_mm=36.0, seed=5)
    with pytest.raises(SegmentationError, match="no structure denser than the lung"):
        segment_nodule(img, sp, (c[0], c[1], c[2] + 8.0 / sp[2]))


@pytest.mark.parametrize("spacing", [(1.0, 0.7, 0.7), (2.5, 0.8, 0.8)])
@pytest.mark.parametrize("wall_mm", [12.0, 18.0])
def test_juxtapleural_nodule_behind_a_thin_chest_wall(spacing, wall_mm):
    # lung | chest wall (muscle) | air outside the body. A rolling ball wider
    # than the wall, rolled over all the air in the VOI, bridges the wall and
    # lets the nodule grow into it (seen on a full-size phantom: 51 mL for a
    # 1.3 mL nodule). Only the lung around the nodule may be closed.
    r = 6.0
    wall = (lambda z, y, x: (x >= r) & (x < r + wall_mm), 40.0)
    outside = (lambda z, y, x: x >= r + wall_mm, -1000.0)
    img, c = render([wall, outside, (ball(r), SOLID)], spacing, size_mm=56.0, seed=9, offset=(0.0, 0.0, 8.0))
    seg = segment_nodule(img, spacing, c)
    assert_juxtapleural_ball(seg, spacing, r)


@pytest.mark.parametrize("spacing", [(1.0, 0.7, 0.7), (0.6, 0.5, 0.5)])
@pytest.mark.parametrize("toward_wall_mm", [0.0, 1.0])
def test_small_ground_glass_nodule_on_the_chest_wall_is_not_swapped_for_the_wall(spacing, toward_wall_mm):
    # The densest voxel within 2 mm of a click in a 5 mm ground-glass nodule
    # that touches the chest wall is in the wall: growing from it segmented
    # the wall (x250 the volume, seen in benchmarks/measurement.py); from the
    # click, the 95th percentile of the 1.5 mm ball still took in the wall's
    # blurred edge and typed the nodule solid (-43 %).
    r = 2.5
    wall = (lambda z, y, x: x >= r, 40.0)
    img, c = render([wall, (ball(r), GGO)], spacing, seed=12)
    click = (c[0], c[1], c[2] + toward_wall_mm / spacing[2])
    seg = segment_nodule(img, spacing, click)
    assert seg.nodule_type == "ground_glass"
    assert seg.location == "juxtapleural"
    assert seg.mask[tuple(int(round(v)) for v in click)]
    v_true = 4 / 3 * math.pi * r ** 3
    assert abs(volume_mm3(seg.mask, spacing) / v_true - 1) < 0.3


@pytest.mark.parametrize("r", [4.0, 5.4])
@pytest.mark.parametrize("noise", [20.0, 30.0])
@pytest.mark.parametrize("level", [-630.0, GGO])
def test_ground_glass_nodule_sunk_into_the_chest_wall_keeps_its_wall_side(r, noise, level):
    # a faint nodule sunk 1 mm into the chest wall: its voxels next to the
    # wall's blurred flank (inside the lung mask) joined the flank above the
    # "denser than the core" level and were cut off with it as a far-reaching
    # structure: -13 to -70 % at 43b6fcf (seen at -30 % on the project's own
    # phantom); -0 to +10 % once the flank counts as wall for that test.
    sp = (1.0, 0.7, 0.7)
    wall_x = r - 1.0
    img, c = render([(ball(r), level), (lambda z, y, x: x >= wall_x, 40.0)], sp, size_mm=40.0, noise=noise)
    n = img.shape
    x = (np.arange(n[2]) - (n[2] - 1) / 2) * sp[2]
    seg = segment_nodule(img, sp, c, lung_mask=np.broadcast_to(x < wall_x, n))
    assert seg.location == "juxtapleural"
    v_true = 4 / 3 * math.pi * r ** 3 - math.pi * (3 * r - 1.0) / 3  # minus the 1 mm cap in the wall
    assert abs(volume_mm3(seg.mask, sp) / v_true - 1) < 0.12


@pytest.mark.parametrize("rim_hu", [-420.0, -460.0])
@pytest.mark.parametrize("on_wall", [False, True])
@pytest.mark.parametrize("noise_seed", [0, 1])
def test_part_solid_nodule_with_a_dense_ground_glass_rim_is_not_typed_solid(rim_hu, on_wall, noise_seed):
    # a ground-glass rim near half the contrast sits at the solid threshold:
    # the edge-asymmetry test cannot see it, and the nodule was typed solid
    # and measured as its core (-51 to -66 % here at 6933ce8; the project
    # phantom's 7.4 mm part-solid nodule on the chest wall, -67 / -79 %). A
    # rim level above a quarter of the contrast is no blur tail. The volume
    # bound is about the typing (the regrown rim is over-segmented by +8 to
    # +33 % here), not a claim of accuracy.
    sp = (1.0, 0.7, 0.7)
    r, r_core = 4.2, 1.9
    objs = [(ball(r), rim_hu), (ball(r_core), SOLID)]
    lung, v_true = None, 4 / 3 * math.pi * r ** 3
    img, c = render(objs + ([(lambda z, y, x: x >= r - 0.5, 40.0)] if on_wall else []), sp, size_mm=36.0,
                    seed=noise_seed, noise=20.0)
    if on_wall:
        n = img.shape
        x = (np.arange(n[2]) - (n[2] - 1) / 2) * sp[2]
        lung = np.broadcast_to(x < r - 0.5, n)
        v_true -= math.pi * 0.25 * (3 * r - 0.5) / 3  # the 0.5 mm cap in the wall
    seg = segment_nodule(img, sp, c, lung_mask=lung)
    assert seg.nodule_type == "part_solid"
    assert abs(volume_mm3(seg.mask, sp) / v_true - 1) < 0.35


@pytest.mark.parametrize("rim_hu, core_hu", [(-400.0, SOLID), (-350.0, SOLID), (-300.0, SOLID), (-415.0, 80.0)])
@pytest.mark.parametrize("r", [6.0, 9.0])
@pytest.mark.parametrize("sp", [(1.0, 0.7, 0.7), (2.5, 0.7, 0.7)])
def test_nodule_with_a_rim_denser_than_halfway_to_water_is_measured_whole(rim_hu, core_hu, r, sp):
    # a rim denser than halfway to water sits at or above the boundary
    # threshold (P + C) / 2: split by the noise and opened away, or inside the
    # mask with the boundary on its inner flank, and the partial-volume step
    # read the core's level and moved the boundary further in. Or, round a
    # denser core, it lies below that threshold but above halfway to water,
    # where the halo test takes no rim. At c659a8e 14 of these 16 cases were
    # 12 to 82 % off in volume
    img, c = render([(ball(r), rim_hu), (ball(0.5 * r), core_hu)], sp, size_mm=2.6 * r + 12.0, noise=20.0)
    seg = segment_nodule(img, sp, c)
    assert "segmentation_leak" not in seg.flags
    assert abs(volume_mm3(seg.mask, sp) / (4 / 3 * math.pi * r ** 3) - 1) < 0.10
    # ground-glass attenuation round a solid core
    assert seg.nodule_type == "part_solid"


@pytest.mark.parametrize("sp", [(1.0, 0.7, 0.7), (2.5, 0.7, 0.7)])
def test_solid_nodule_with_a_calcified_centre_stays_solid_and_whole(sp):
    # the tissue round a calcification is an outer layer less dense than the
    # centre, but it is soft tissue, not ground glass
    r = 6.0
    img, c = render([(ball(r), SOLID), (ball(2.5), 600.0)], sp, size_mm=2.6 * r + 12.0, noise=20.0)
    seg = segment_nodule(img, sp, c)
    assert seg.nodule_type == "solid"
    assert abs(volume_mm3(seg.mask, sp) / (4 / 3 * math.pi * r ** 3) - 1) < 0.10


@pytest.mark.parametrize("kind", [SOLID, GGO])
@pytest.mark.parametrize("r", [3.0, 6.0, 9.0])
@pytest.mark.parametrize("sp", [(1.0, 0.7, 0.7), (2.5, 0.7, 0.7), (5.0, 0.7, 0.7)])
def test_uniform_nodule_has_no_outer_layer(kind, r, sp):
    # the other side of the layer test: a blurred uniform ball's depth
    # profile rises from its edge to its level with no plateau below it, on
    # thick slices too (where the caps are averaged with the lung)
    from nodulegrowth.segment import _outer_plateau_level

    img, c = render([(ball(r), kind)], sp, size_mm=2.6 * r + 12.0, noise=20.0)
    sm = ndimage.gaussian_filter(img, [0.5 if sp[0] <= 1.5 else 0.0, 0.5, 0.5])
    for frac in (0.35, 0.5):
        mask = ndimage.binary_fill_holes(sm >= LUNG + frac * (kind - LUNG))
        lab, _ = ndimage.label(mask)
        mask = lab == lab[tuple(int(round(v)) for v in c)]
        assert _outer_plateau_level(sm, mask, sp, LUNG, sp[1]) is None


@pytest.mark.slow
def test_lobulated_part_solid_nodule_between_vessels_keeps_its_lobes():
    # project phantom, seed 13: the leak test measured the mask against the
    # seed's distance to the background of the grown region, which the two
    # vessels beside this lobulated part-solid nodule enlarge; the mask looked
    # leaky and the retries' larger balls cut its lobes off (-45 % at
    # 60e910b; -28 % against the mask's own inscribed radius)
    import SimpleITK as sitk

    from nodulegrowth import io, lung, phantom
    from nodulegrowth.phantom import NoduleSpec

    pair = phantom.make_pair(13, preset="full", nodules=(
        NoduleSpec(kind="part_solid"), NoduleSpec(location="juxtapleural"),
        NoduleSpec(kind="solid", location="juxtavascular")))
    r = pair.truth.iloc[0]
    assert (r["kind"], r["shape"], r["location"]) == ("part_solid", "lobulated", "juxtavascular")
    c = (r["t1_x"], r["t1_y"], r["t1_z"])
    voi = io.crop(pair.t1, c, 40.0)
    lung_voi = sitk.Resample(lung.lung_mask(pair.t1), voi, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    sp = tuple(voi.GetSpacing()[::-1])
    seg = segment_nodule(sitk.GetArrayFromImage(voi), sp,
                         tuple(float(v) for v in np.asarray(io.world_to_index(voi, c))[::-1]),
                         lung_mask=sitk.GetArrayFromImage(lung_voi).astype(bool))
    assert seg.nodule_type == "part_solid"
    assert volume_mm3(seg.mask, sp) / r["t1_volume_mm3"] - 1 > -0.35


def test_nothing_grown_from_the_refined_seed_retries_from_the_click(monkeypatch):
    # beside the chest wall the densest voxel near a faint nodule can be in
    # the wall, from which nothing is grown (2 of 96 ground-glass nodules on
    # the wall, 1.25 mm slices, in an independent benchmark sample failed so;
    # grown from the click they were found). The refined-seed path is made to
    # fail here to check that the click is tried before giving up.
    import nodulegrowth.segment as S

    sp = (1.0, 0.7, 0.7)
    img, c = render([(ball(3.0), GGO)], sp, seed=5)
    real = S._segment

    def refined_fails(*args, refine_seed, **kw):
        if refine_seed:
            raise SegmentationError("region growing from seed (0, 0, 0) found nothing at -700 HU; check the seed")
        return real(*args, refine_seed=refine_seed, **kw)

    monkeypatch.setattr(S, "_segment", refined_fails)
    seg = segment_nodule(img, sp, c)
    assert seg.nodule_type == "ground_glass"
    assert abs(volume_mm3(seg.mask, sp) / (4 / 3 * math.pi * 27.0) - 1) < 0.3

    def both_fail(*args, refine_seed, **kw):
        raise SegmentationError(f"first error, refine_seed={refine_seed}")

    monkeypatch.setattr(S, "_segment", both_fail)
    with pytest.raises(SegmentationError, match="refine_seed=True"):
        segment_nodule(img, sp, c)


def test_leak_is_flagged_never_silent():
    # a "nodule" that is really a thick tube through the VOI cannot be separated
    sp = (1.0, 0.7, 0.7)
    tube = cylinder(3.0, (0.0, 0.0, 0.0), (0.0, 0.0, 1.0))
    img, c = render([(tube, SOLID)], sp, seed=8)
    seg = segment_nodule(img, sp, c)
    assert "segmentation_leak" in seg.flags
    assert "touches_roi_border" in seg.flags


# --------------------------------------------------------------------------
# seeds
# --------------------------------------------------------------------------
def test_seed_a_few_voxels_off_is_refined():
    sp = (1.0, 0.7, 0.7)
    r = 3.0
    img, c = render([(ball(r), SOLID)], sp, seed=9)
    ref = segment_nodule(img, sp, c)
    # a click just outside the nodule edge (1 mm beyond the surface)
    off = (c[0], c[1], c[2] + (r + 1.0) / sp[2])
    seg = segment_nodule(img, sp, off)
    assert "seed_outside_nodule" in seg.flags
    assert (seg.mask == ref.mask).mean() > 0.999
    assert seg.mask[tuple(int(round(v)) for v in c)]


# --------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------
def test_errors():
    sp = (1.0, 0.7, 0.7)
    img, c = render([(ball(4.0), SOLID)], sp, seed=10)
    with pytest.raises(SegmentationError, match="outside the VOI"):
        segment_nodule(img, sp, (0, 0, 1000))
    with pytest.raises(SegmentationError, match="spacing_zyx"):
        segment_nodule(img, (1.0, 0.0, 1.0), c)
    with pytest.raises(SegmentationError, match="nodule_type"):
        segment_nodule(img, sp, c, nodule_type="calcified")
    with pytest.raises(SegmentationError, match="lung_mask"):
        segment_nodule(img, sp, c, lung_mask=np.ones((2, 2, 2), bool))
    with pytest.raises(SegmentationError, match="3-D"):
        segment_nodule(img[0], sp, c)
    with pytest.raises(SegmentationError, match="uniform"):
        segment_nodule(np.full((10, 10, 10), -850.0), sp, (5, 5, 5))
    with pytest.raises(SegmentationError, match="NaN"):
        bad = img.copy()
        bad[0, 0, 0] = np.nan
        segment_nodule(bad, sp, c)
    # a seed in plain lung, far from the nodule
    with pytest.raises(NoduleGrowthError, match="no structure denser"):
        segment_nodule(img, sp, (c[0], c[1] + 10 / sp[1], c[2] + 10 / sp[2]))


@pytest.mark.parametrize("spacing", [(1.0, 0.7, 0.7), (1.25, 0.7, 0.7)])
def test_ground_glass_with_vessel_does_not_follow_the_vessel(spacing):
    # a vessel is far denser than ground glass: at the ground-glass threshold
    # the region would run along it through the whole VOI
    r = 4.0
    vessel = cylinder(1.0, (0.0, r + 0.5, 0.0), (1.0, 0.2, 0.3))
    img, c = render([(vessel, 40.0), (ball(r), GGO)], spacing, seed=11)
    seg = segment_nodule(img, spacing, c)
    assert seg.nodule_type == "ground_glass"
    assert seg.location == "juxtavascular"
    assert "touches_roi_border" not in seg.flags
    v_true = 4 / 3 * math.pi * r ** 3
    assert abs(volume_mm3(seg.mask, spacing) / v_true - 1) < 2 * rel_tol(spacing, r)


@pytest.mark.parametrize("gg_hu, r, rv", [(-700.0, 2.2, 1.0), (-730.0, 2.5, 0.7), (-730.0, 2.2, 0.85)])
@pytest.mark.parametrize("noise_seed", [1, 2, 3])
def test_faint_ground_glass_nodule_touching_a_vessel_is_grown_from_the_click(gg_hu, r, rv, noise_seed):
    # The densest voxel within 2 mm of a click 0.8 mm off the centre of a
    # faint 4.4-5 mm ground-glass nodule is in the vessel it touches. Grown
    # from there the region was the vessel, or, with the click's denser half
    # joined to the vessel's flank at the vessel level, the nodule and the
    # vessel (no vessel was then excluded). Before: 8 of these 9 flagged
    # segmentation_leak (+204 to +456 % on the vessel, or -24, -5, -3 %),
    # one +9 % with the click outside it.
    sp = (1.25, 0.7, 0.7)
    vessel = (cylinder(rv, (0.0, 0.0, r + rv - 0.3), (0.3, 1.0, 0.2)), SOLID + 10.0)
    img, c = render([vessel, (ball(r), gg_hu)], sp, size_mm=36.0, seed=noise_seed)
    seg = segment_nodule(img, sp, (c[0], c[1], c[2] + 0.8 / sp[2]))
    err = volume_mm3(seg.mask, sp) / (4 / 3 * math.pi * r ** 3) - 1
    assert seg.nodule_type == "ground_glass" and seg.location == "juxtavascular"
    assert "segmentation_leak" not in seg.flags and abs(err) < 0.2, f"{100 * err:+.1f} %, {seg.flags}"


# --------------------------------------------------------------------------
# coarse voxels (about 3 mm): what the opening cannot cut must be flagged
# --------------------------------------------------------------------------
@pytest.mark.parametrize("noise_seed", [0, 1])
def test_vessel_grazing_a_small_nodule_at_3mm_voxels_is_flagged(noise_seed):
    # Built on the voxel grid: a nodule 2 slices x 3 x 3 voxels (about 10 mm)
    # with a partial-volume shell, and a vessel about one voxel thick running
    # in-plane over its top slice (partial-volume level, as a 2-3 mm vessel is
    # at 3.3 mm voxels). The vessel is as thick as the opening's smallest ball,
    # so region growing keeps a 5-voxel (16.5 mm) line of it: the mask's
    # axial cross-section is then 16.5 x 3.3 mm. Such a leak must not be silent.
    sp = (3.2, 3.3, 3.3)
    v = np.full((25, 25, 25), LUNG)
    v[11:14, 11:14, 11:14] = 0.5 * (LUNG + SOLID)
    v[12:14, 11:14, 11:14] = SOLID
    v[14, 13, 10:15] = LUNG + 0.7 * (SOLID - LUNG)
    v += np.random.default_rng(noise_seed).normal(0.0, 15.0, v.shape)
    seg = segment_nodule(v.astype(np.float32), sp, (12.5, 12, 12))
    kept_vessel = seg.mask[14, 13, 10:15].sum() >= 3
    if kept_vessel:
        assert "segmentation_leak" in seg.flags
    else:  # cut off: then the nodule must be intact
        assert seg.mask[12:14, 11:14, 11:14].all()


@pytest.mark.parametrize("spacing", [(3.2, 3.3, 3.3), (3.0, 3.0, 3.0)])
@pytest.mark.parametrize("vessel_z, direction", [(0.9, (0.0, 0.5, 1.0)), (1.1, (0.3, 0.5, 1.0))])
def test_juxtavascular_nodule_at_3mm_voxels_is_not_eroded(spacing, vessel_z, direction):
    # A 5.5 mm nodule is only about 3 voxels across at 3 mm: the leak tests
    # must not read grid quantization as a leak, or the stronger openings
    # that follow erode the nodule to a few voxels (a silent 50-80 % loss).
    r = 5.5
    vessel = cylinder(1.5, (vessel_z * r, 0.0, 0.0), direction)  # a vessel over the nodule's top
    img, c = render([(vessel, 40.0), (ball(r), SOLID)], spacing, size_mm=64.0, psf_mm=1.0, seed=6)
    seg = segment_nodule(img, spacing, c)
    v_true = 4 / 3 * math.pi * r ** 3
    assert abs(volume_mm3(seg.mask, spacing) / v_true - 1) < rel_tol(spacing, r)


@pytest.mark.parametrize("spacing", [(1.0, 0.7, 0.7), (2.5, 0.8, 0.8)])
@pytest.mark.parametrize("radius", [5.0, 8.0])
def test_blurred_solid_nodule_is_not_part_solid(spacing, radius):
    # a soft kernel (PSF sigma 1.2 mm) spreads the edge of a solid nodule
    # beyond 1 mm: its blur tail must not be read as a ground-glass rim (which
    # would regrow the nodule at a low threshold, 1.6-2x its volume)
    img, c = render([(ball(radius), SOLID)], spacing, size_mm=48.0, psf_mm=1.2,
                    offset=(0.4, -0.3, 0.7), seed=1)
    seg = segment_nodule(img, spacing, c)
    assert seg.nodule_type == "solid"
    v_true = 4 / 3 * math.pi * radius ** 3
    assert abs(volume_mm3(seg.mask, spacing) / v_true - 1) < 2 * rel_tol(spacing, radius)


def _ball_with_stub(stub_hu, *, vessel_goes_on=True, sp=(1.0, 0.7, 0.7)):
    """A 4 mm-radius ball (-600 HU) with a 1.2 mm-radius, 3 mm long stub along x;
    the stub's cylinder continues outside the mask to the edge (``others``)."""
    sp = np.asarray(sp)
    n = np.round(np.array([24.0, 30.0, 36.0]) / sp).astype(int)
    z, y, x = np.meshgrid(*[(np.arange(k) - (k - 1) / 2) * s for k, s in zip(n, sp)], indexing="ij")
    ball_ = z ** 2 + y ** 2 + x ** 2 <= 16.0
    tube = (z ** 2 + y ** 2 <= 1.2 ** 2) & (x > 0)
    stub = tube & (x <= 7.0) & ~ball_
    others = tube & (x > 7.0) if vessel_goes_on else np.zeros_like(tube)
    sm = np.full(n, -850.0)
    sm[ball_] = -600.0
    sm[stub] = stub_hu
    sm[others] = stub_hu
    seed = tuple(int(k) // 2 for k in n)
    return ball_ | stub, ball_, others, sm, seed, sp


@pytest.mark.parametrize("stub_hu, goes_on, trimmed", [
    (-400.0, True, True),    # denser than the nodule, a vessel going on: trimmed
    (-650.0, True, False),   # no denser than the nodule (a solid nodule's vessel, a tip): kept
    (-400.0, False, False),  # ends in the lung: a lobe, kept
])
def test_trim_vessel_stubs(stub_hu, goes_on, trimmed):
    mask, ball_, others, sm, seed, sp = _ball_with_stub(stub_hu, vessel_goes_on=goes_on)
    out = _trim_vessel_stubs(mask, others, sm, -600.0 + 3 * 5.0, seed, sp, 0.7)
    if trimmed:
        # what is left of the stub is its base, within a voxel of the ball
        left = out & ~ball_
        d_ball = ndimage.distance_transform_edt(~ball_, sampling=sp)
        assert left.sum() < 0.3 * (mask & ~ball_).sum()
        assert d_ball[left].max(initial=0.0) <= 1.0
        assert (out & ball_).sum() >= 0.95 * ball_.sum()  # the ball itself stays
    else:
        assert np.array_equal(out, mask)


def test_trim_vessel_stubs_keeps_an_empty_mask_empty():
    mask, _, others, sm, seed, sp = _ball_with_stub(-400.0)
    empty = np.zeros_like(mask)
    assert not _trim_vessel_stubs(empty, others, sm, -585.0, seed, sp, 0.7).any()


def test_a_forced_tissue_level_sizes_the_mask_by_it():
    # the partial-volume step divides the ball's excess attenuation by the
    # tissue level's contrast: 10 % more contrast, 10 % less volume
    sp = (1.0, 0.7, 0.7)
    img, c = render([(ball(5.0), GGO)], sp, size_mm=30.0, seed=3)
    own = segment_nodule(img, sp, c)
    assert abs(own.tissue_hu - GGO) < 15.0
    level = own.parenchyma_hu + 1.1 * (own.tissue_hu - own.parenchyma_hu)
    forced = segment_nodule(img, sp, c, tissue_hu=level)
    assert forced.tissue_hu == pytest.approx(level)
    ratio = volume_mm3(forced.mask, sp) / volume_mm3(own.mask, sp)
    assert ratio == pytest.approx(1 / 1.1, abs=0.02)


@pytest.mark.parametrize("bad, match", [("dense", "not a number"), (float("nan"), "not a tissue level"),
                                        (5000.0, "not a tissue level")])
def test_a_bad_tissue_level_is_refused(bad, match):
    img, c = render([(ball(3.0), SOLID)], (1.0, 0.7, 0.7), size_mm=20.0)
    with pytest.raises(SegmentationError, match=match):
        segment_nodule(img, (1.0, 0.7, 0.7), c, tissue_hu=bad)


def test_one_tissue_level_for_both_time_points_steadies_a_part_solid_volume_ratio():
    # A 6.6 mm part-solid nodule and the same grown by 1.15 (volume x1.52):
    # its ground-glass rim, a millimetre or so thick, reads 8-44 HU lower
    # at T1 than at T2 (blur reaches further into it), so each scan's own
    # level makes the ratio 4-14 % low; at the larger one's level
    # (cohort.share_tissue_level) the error is the integrated attenuation's
    from types import SimpleNamespace

    from nodulegrowth.cohort import harmonise_types, share_tissue_level
    sp = (1.0, 0.7, 0.7)
    own, shared = [], []
    for seed in range(4):
        res, redo, v_true = [], {}, []
        for i, s in enumerate((1.0, 1.15)):
            a, b, cz = 3.6 * s, 3.0 * s, 3.3 * s
            img, c = render([(ellipsoid(a, b, cz), GGO), (ellipsoid(a / 2, b / 2, cz / 2), SOLID)], sp,
                            size_mm=30.0, seed=10 * seed + i, psf_mm=0.65, noise=20.0,
                            offset=(0.1 * seed, -0.07 * seed, 0.05))

            def seg_measure(t=None, level=None, img=img, c=c):
                seg = segment_nodule(img, sp, c, nodule_type=t, tissue_hu=level)
                return seg, SimpleNamespace(volume_mm3=volume_mm3(seg.mask, sp)), None
            res.append(seg_measure())
            redo[f"T{i + 1}"] = seg_measure
            v_true.append(4 / 3 * math.pi * a * b * cz)
        r1, r2, _ = harmonise_types(res[0], res[1], redo)
        assert r1[0].nodule_type == r2[0].nodule_type == "part_solid"
        q1, q2, flags = share_tissue_level(r1, r2, redo)
        assert flags == [] and q1[0].tissue_hu == q2[0].tissue_hu
        true_ratio = v_true[1] / v_true[0]
        own.append(r2[1].volume_mm3 / r1[1].volume_mm3 / true_ratio - 1)
        shared.append(q2[1].volume_mm3 / q1[1].volume_mm3 / true_ratio - 1)
    assert max(abs(e) for e in shared) < 0.05, shared
    assert np.mean(np.abs(shared)) < 0.5 * np.mean(np.abs(own)), (own, shared)
