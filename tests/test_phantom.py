"""Tests of the synthetic chest-CT phantom (nodulegrowth.phantom) and the shipped samples.

Truth is checked against independent computations: analytic formulas for
ellipsoids vs the numerical integrators, a supersampled occupancy rendering
vs the truth volumes, the closed-form inverse map vs the numerically solved
forward map, and HU values of the rendered images vs the tissue HU.
"""
from __future__ import annotations

import hashlib
import importlib.util
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy.spatial.distance import pdist
from scipy.spatial.transform import Rotation
from skimage.measure import marching_cubes, mesh_surface_area

from nodulegrowth import phantom as ph
from nodulegrowth.errors import NoduleGrowthError
from nodulegrowth.phantom import NoduleSpec, PhantomSpecError, make_pair

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "data_samples"

# a coarse scan keeps the tests fast; the anatomy is the same full chest
TINY = {"size_xy": 80, "spacing_xy": 4.2, "n_slices": 60, "slice_spacing": 4.0, "slice_thickness": 4.0}

MIXED = [
    NoduleSpec(kind="solid", shape="sphere", location="isolated", diameter_mm=12.0, volume_ratio=1.5),
    NoduleSpec(kind="part_solid", shape="lobulated", location="juxtavascular", diameter_mm=10.0,
               volume_ratio=2.0),
    NoduleSpec(kind="ground_glass", shape="ellipsoid", location="juxtapleural", diameter_mm=14.0,
               volume_ratio=0.7),
]


@pytest.fixture(scope="module")
def small_pair():
    """Small-preset pair with three large unclipped nodules (fast analytic truth)."""
    return make_pair(7, nodules=[
        NoduleSpec(kind="solid", shape="sphere", location="isolated", diameter_mm=14.0, volume_ratio=1.8,
                   side="right"),
        NoduleSpec(kind="ground_glass", shape="ellipsoid", location="isolated", diameter_mm=16.0,
                   volume_ratio=1.0, side="left"),
        NoduleSpec(kind="part_solid", shape="sphere", location="juxtavascular", diameter_mm=18.0,
                   volume_ratio=0.7, core_fraction=0.5),
    ])


@pytest.fixture(scope="module")
def mixed_pair():
    """Tiny-scan pair with every shape and location (numerical truth)."""
    return make_pair(11, t1_scan=TINY, t2_scan=TINY, nodules=MIXED)


def _value_at(img: sitk.Image, xyz) -> float:
    ijk = img.TransformPhysicalPointToIndex(tuple(float(v) for v in xyz))
    return float(sitk.GetArrayViewFromImage(img)[ijk[2], ijk[1], ijk[0]])


# ---------------------------------------------------------------------------
# determinism
# ---------------------------------------------------------------------------


def test_same_seed_gives_identical_pair_and_other_seed_differs():
    coarse = {"size_xy": 48, "spacing_xy": 7.0, "n_slices": 40, "slice_spacing": 6.0, "slice_thickness": 6.0}
    kw = dict(t1_scan=coarse, t2_scan=coarse, nodules=[NoduleSpec(shape="sphere", diameter_mm=10.0)])
    a, b, c = make_pair(3, **kw), make_pair(3, **kw), make_pair(4, **kw)
    for x, y in ((a.t1, b.t1), (a.t2, b.t2)):
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(x), sitk.GetArrayViewFromImage(y))
        assert x.GetOrigin() == y.GetOrigin() and x.GetSpacing() == y.GetSpacing()
    pd.testing.assert_frame_equal(a.truth, b.truth)
    assert a.t1_tags == b.t1_tags and a.t2_tags == b.t2_tags
    assert not np.array_equal(sitk.GetArrayViewFromImage(a.t1), sitk.GetArrayViewFromImage(c.t1))
    assert not a.truth[["t1_x", "t1_y", "t1_z"]].equals(c.truth[["t1_x", "t1_y", "t1_z"]])


# ---------------------------------------------------------------------------
# images: geometry, HU of tissues and nodules
# ---------------------------------------------------------------------------


def test_small_preset_geometry_and_types(small_pair):
    p = small_pair
    assert p.t1.GetSize() == (160, 160, 100) and p.t2.GetSize() == (160, 160, 104)
    assert p.t1.GetPixelID() == sitk.sitkFloat32 and p.t2.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(p.t1.GetSpacing(), (2.25, 2.25, 2.5))
    np.testing.assert_allclose(p.t1.GetDirection(), np.eye(3).ravel())
    assert list(p.truth.columns) == ph.TRUTH_COLUMNS
    assert p.t1_tags["PatientID"] == p.t2_tags["PatientID"] == p.patient_id
    assert p.t1_tags["PatientName"] == p.t2_tags["PatientName"]
    assert p.t2_tags["AcquisitionDate"] == p.t2_date.strftime("%Y%m%d")
    assert (p.t2_date - p.t1_date).days == p.interval_days == int(p.truth.interval_days.iloc[0])


def test_tissue_hu(small_pair):
    """Lung parenchyma ~ -850 HU and air outside the body ~ -1000 HU."""
    p = small_pair
    anat = p._anatomy
    arr = sitk.GetArrayViewFromImage(p.t1)
    k, j, i = np.meshgrid(np.arange(0, arr.shape[0], 3), np.arange(0, 160, 3), np.arange(0, 160, 3),
                          indexing="ij")
    idx = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1)
    xyz = np.array([p.t1.TransformIndexToPhysicalPoint([int(v) for v in r]) for r in idx])
    rel = xyz - anat.center
    deep_lung = anat.lung_sd(rel[:, 0], rel[:, 1], rel[:, 2]) < -10.0
    outside = (anat.body_sd(rel[:, 0], rel[:, 1], rel[:, 2]) > 10.0) & (
        (idx[:, 0] - 79.5) ** 2 + (idx[:, 1] - 79.5) ** 2 < 75 ** 2)
    lung_vals = arr[idx[deep_lung, 2], idx[deep_lung, 1], idx[deep_lung, 0]]
    air_vals = arr[idx[outside, 2], idx[outside, 1], idx[outside, 0]]
    assert deep_lung.sum() > 1000 and outside.sum() > 200
    assert -880.0 < np.median(lung_vals) < -820.0
    assert abs(np.median(air_vals) - (-1000.0)) < 5.0
    assert abs(np.std(air_vals) - 12.0) < 3.0  # the T1 noise level


def test_nodule_centre_voxel_has_nodule_hu(small_pair):
    p = small_pair
    for nod, (_, row) in zip(p._nodules, p.truth.iterrows()):
        hu = nod.core_hu if nod.kind == "part_solid" else nod.hu
        for img, t, sd in ((p.t1, "t1", 12.0), (p.t2, "t2", 14.0)):
            v = _value_at(img, (row[f"{t}_x"], row[f"{t}_y"], row[f"{t}_z"]))
            assert abs(v - hu) < 5 * sd, (row.nodule_id, t, v, hu)


@pytest.mark.parametrize("shape", ["sphere", "ellipsoid", "lobulated"])
def test_central_lucency_is_air_and_leaves_the_truth_unchanged(shape):
    specs = [NoduleSpec(kind="solid", shape=shape, location="isolated", diameter_mm=20.0, volume_ratio=1.5,
                        side="right", lucency_fraction=f) for f in (0.0, 0.5)]
    plain, cavitated = (make_pair(5, nodules=[spec]) for spec in specs)
    # the lucency is part of the nodule: same truth (volume, diameters, centres)
    pd.testing.assert_frame_equal(plain.truth, cavitated.truth)
    row = cavitated.truth.iloc[0]
    nod = cavitated._nodules[0]
    for img_p, img_c, t in ((plain.t1, cavitated.t1, "t1"), (plain.t2, cavitated.t2, "t2")):
        c = (row[f"{t}_x"], row[f"{t}_y"], row[f"{t}_z"])
        assert abs(_value_at(img_p, c) - nod.hu) < 60.0
        # a 2.25 x 2.25 x 2.5 mm voxel at the centre of a lucency >= 4 mm across
        assert _value_at(img_c, c) < -600.0
    # the images differ only in the lucency and its blurred edge (PSF and
    # slice profile: within two slice thicknesses)
    r = nod.lucency_radius
    assert 0.0 < r <= 0.5 * nod.r_bound + 1e-9  # finite: the ellipsoid once gave inf
    a = sitk.GetArrayFromImage(plain.t1).astype(float)
    b = sitk.GetArrayFromImage(cavitated.t1).astype(float)
    far = np.abs(a - b) > 1e-3
    idx = np.argwhere(far)[:, ::-1].astype(float)  # (x, y, z) index order
    pts = np.array([plain.t1.TransformContinuousIndexToPhysicalPoint(tuple(v)) for v in idx])
    d = np.linalg.norm(pts - np.array([row["t1_x"], row["t1_y"], row["t1_z"]]), axis=1)
    assert far.any() and d.max() < r + 2 * 2.5


@pytest.mark.parametrize("spacing_xy,size_xy,thickness,spacing_z", [
    (4.2, 80, 4.0, 4.0), (3.0, 112, 3.0, 2.0), (5.0, 72, 2.0, 5.0)])
def test_geometry_overrides_and_nodule_contrast(spacing_xy, size_xy, thickness, spacing_z):
    scan = {"size_xy": size_xy, "spacing_xy": spacing_xy, "n_slices": int(240 / spacing_z),
            "slice_spacing": spacing_z, "slice_thickness": thickness}
    p = make_pair(21, t1_scan=scan, t2_scan=dict(scan, noise_sd=0.0),
                  nodules=[NoduleSpec(kind="solid", shape="sphere", location="isolated", diameter_mm=20.0,
                                      volume_ratio=1.0, hu=40.0)])
    assert p.t2.GetSize() == (size_xy, size_xy, int(240 / spacing_z))
    np.testing.assert_allclose(p.t1.GetSpacing(), (spacing_xy, spacing_xy, spacing_z))
    r = p.truth.iloc[0]
    # noise-free T2: the centre of a 20 mm sphere is fully occupied after PSF and slice box
    assert abs(_value_at(p.t2, (r.t2_x, r.t2_y, r.t2_z)) - 40.0) < 3.0


def test_non_identity_direction_is_honoured():
    """A T2 scan stored with a rotated direction still shows the nodule at its true centre."""
    flip = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, -1.0)
    p = make_pair(8, t1_scan=TINY, t2_scan=dict(TINY, direction=flip, noise_sd=0.0),
                  nodules=[NoduleSpec(kind="solid", shape="sphere", location="isolated", diameter_mm=20.0,
                                      volume_ratio=1.0, hu=40.0)])
    np.testing.assert_allclose(p.t2.GetDirection(), flip)
    r = p.truth.iloc[0]
    assert abs(_value_at(p.t2, (r.t2_x, r.t2_y, r.t2_z)) - 40.0) < 3.0
    assert abs(_value_at(p.t1, (r.t1_x, r.t1_y, r.t1_z)) - 40.0) < 5 * 12.0


# ---------------------------------------------------------------------------
# truth consistency
# ---------------------------------------------------------------------------


def test_t2_centre_maps_back_to_t1_centre(small_pair):
    p = small_pair
    t1 = p.truth[["t1_x", "t1_y", "t1_z"]].to_numpy()
    t2 = p.truth[["t2_x", "t2_y", "t2_z"]].to_numpy()
    np.testing.assert_allclose(p.geometry.inverse(t2), t1, atol=0.01)
    # the repositioning is not trivial
    assert np.min(np.linalg.norm(t2 - t1, axis=1)) > 1.0


def test_t2_anatomy_is_t1_anatomy_through_the_truth_map():
    """T2 equals T1 sampled at F^-1(w) (noise-free): the rendered warp and the truth map agree.

    Residual differences come only from resampling the partial-volume edges on
    the 4 mm grid twice; an identity map (ignoring the repositioning) is far off.
    """
    from scipy.ndimage import map_coordinates

    scan = dict(TINY, noise_sd=0.0)
    p = make_pair(5, t1_scan=scan, t2_scan=scan, nodules=[], breathing_cc=0.08, breathing_ap=0.04,
                  rotation_deg=(4.0, -3.0, 5.0), translation_mm=(15.0, -12.0, 10.0))
    n = p.t2.GetSize()
    ijk = np.stack(np.meshgrid(*[np.arange(k) for k in n], indexing="ij"), -1).reshape(-1, 3)
    w = np.array(p.t2.GetOrigin()) + ijk * np.array(p.t2.GetSpacing())
    a1 = sitk.GetArrayFromImage(p.t1)
    a2 = sitk.GetArrayFromImage(p.t2)

    def sample_t1(points):
        c = (points - np.array(p.t1.GetOrigin())) / np.array(p.t1.GetSpacing())
        v = map_coordinates(a1, [c[:, 2], c[:, 1], c[:, 0]], order=1, cval=-1024.0)
        return np.transpose(v.reshape(n), (2, 1, 0))

    def ncc(x, y):
        x, y = x - x.mean(), y - y.mean()
        return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))

    warped, ident = sample_t1(p.geometry.inverse(w)), sample_t1(w)
    m = (warped > -1024) & (a2 > -1024) & (ident > -1024)
    assert ncc(warped[m], a2[m]) > 0.95
    assert ncc(ident[m], a2[m]) < 0.8


@pytest.mark.parametrize("cc,ap,rot", [(0.08, 0.04, (5, -5, 5)), (-0.08, -0.04, (-5, 2, 0)), (0.0, 0.0, (0, 0, 0))])
def test_forward_inverse_round_trip(cc, ap, rot):
    g = ph.PairGeometry(center=np.array([1.0, -2.0, -150.0]),
                        rotation=Rotation.from_euler("xyz", rot, degrees=True).as_matrix(),
                        translation=np.array([20.0, -20.0, 15.0]), breathing_cc=cc, breathing_ap=ap,
                        z_fixed=-70.0, y_fixed=60.0)
    b = np.random.default_rng(0).uniform([-150, -110, -300], [150, 110, -50], (200, 3))
    np.testing.assert_allclose(g.inverse(g.forward(b)), b, atol=1e-4)


def test_volume_ratio_and_diameters_of_unclipped_shapes(small_pair):
    t = small_pair.truth
    np.testing.assert_allclose(t.volume_ratio, [1.8, 1.0, 0.7], rtol=1e-9)
    np.testing.assert_allclose(t.t1_volume_mm3, [math.pi * d ** 3 / 6 for d in (14.0, 16.0, 18.0)], rtol=1e-9)
    np.testing.assert_allclose(t.t1_mean_diameter_mm, (t.t1_long_axis_mm + t.t1_short_axis_mm) / 2)
    assert (t.t1_long_axis_mm >= t.t1_short_axis_mm).all()
    assert (t.t1_max_3d_diameter_mm >= t.t1_long_axis_mm - 1e-9).all()
    np.testing.assert_allclose(t.t1_solid_volume_mm3.iloc[2], t.t1_volume_mm3.iloc[2] * 0.125)
    assert t.t1_solid_volume_mm3.iloc[:2].isna().all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_numerical_truth_matches_analytic_ellipsoid(seed):
    """The numerical integrators reproduce the closed-form ellipsoid truth."""
    rng = np.random.default_rng(seed)
    nod = ph._random_nodule(NoduleSpec(shape="ellipsoid", diameter_mm=float(rng.uniform(5, 25)),
                                       volume_ratio=1.0, kind="solid"), 1, rng)
    nod.center1 = rng.uniform(-50, 50, 3)
    geo = ph.PairGeometry(np.zeros(3), np.eye(3), np.zeros(3), 0.0, 0.0, 0.0, 0.0)
    exact = ph._truth_at(nod, 1, geo, None)

    def f(p):
        return nod.phi(p, 1, geo, None)

    rb = nod.r_bound * 1.02
    vol, cen, vprec = ph._integrate(f, nod.center1, rb)
    long_, short, lprec = ph._axial_axes_numeric(f, nod.center1, rb)
    m3, mprec = ph._max3d_numeric(f, nod.center1, rb)
    d = nod.diameter_mm
    assert abs(vol / exact["volume"] - 1) < 2e-3 and vprec < 2e-3
    np.testing.assert_allclose(cen, nod.center1, atol=1e-3 * d)
    assert abs(long_ - exact["long"]) < 2e-3 * d
    assert abs(short - exact["short"]) < 4e-3 * d
    assert abs(m3 - exact["max3d"]) < 4e-3 * d


@pytest.mark.parametrize("cut, angle", [(0.6, 0.3), (0.75, 1.1), (0.9, 2.0)])
def test_numerical_axes_of_a_sphere_cut_by_a_plane(cut, angle):
    """Near-ties as measure.axial_axes defines them. A sphere cut by a plane at
    distance c = cut * R keeps a fan of equal diameters 2R on its central
    section. For c > R cos 45 deg two perpendicular ones are whole: long =
    short = 2R. For a deeper cut the largest long + short is at the edge of
    the fan: long = 2R and a short axis longer than R + c (the perpendicular
    of the diameter parallel to the cut, which the strict rule may pick)."""
    R = 7.0
    n = np.array([math.cos(angle), math.sin(angle), 0.0])

    def f(p):
        return np.maximum(np.linalg.norm(p, axis=-1) - R, p @ n - cut * R)

    long_, short, _ = ph._axial_axes_numeric(f, np.zeros(3), 1.02 * R)
    assert long_ == pytest.approx(2 * R, abs=4e-3 * 2 * R)
    if cut > math.cos(math.pi / 4):
        assert short == pytest.approx(2 * R, abs=4e-3 * 2 * R)
    else:
        assert R + cut * R + 1.0 < short < 2 * R


def test_diameter_of_point_cloud_matches_brute_force():
    rng = np.random.default_rng(5)
    for n in (50, 3000):  # exact branch and double-normal ascent branch
        pts = rng.normal(size=(n, 3)) * [9.0, 5.0, 3.0]
        pts = pts / np.linalg.norm(pts / [9.0, 5.0, 3.0], axis=1, keepdims=True)  # on an ellipsoid
        d, a, b = ph._diameter(pts)
        assert d == pytest.approx(pdist(pts).max(), rel=1e-9)
        assert np.linalg.norm(a - b) == pytest.approx(d)
    pts2 = rng.normal(size=(500, 2)) * [4.0, 1.0]
    assert ph._diameter(pts2)[0] == pytest.approx(pdist(pts2).max(), rel=1e-6)


@pytest.mark.parametrize("time", [1, 2])
@pytest.mark.parametrize("nid", [1, 2, 3])
def test_truth_volume_matches_supersampled_rendering(mixed_pair, nid, time):
    """Occupancy summed on a 0.5 mm grid agrees with the truth volume.

    Tolerance: each of the 3x3x3 sub-samples of a voxel contributes a linear
    ramp of the implicit function one sub-sample (h/3) wide; its error is at
    most half a sub-sample volume and only sub-samples within h/3 of the
    surface are affected, so :math:`|V_{vox} - V| \\le A\\,h/3` (A = surface
    area, measured by marching cubes). Errors of a closed smooth surface
    largely cancel, so we also require the error to shrink when h halves.
    """
    p = mixed_pair
    r = p.truth.loc[p.truth.nodule_id == nid].iloc[0]
    c = np.array([r[f"t{time}_x"], r[f"t{time}_y"], r[f"t{time}_z"]])
    errs = []
    for h in (1.0, 0.5):
        half = r[f"t{time}_max_3d_diameter_mm"] + 2.0
        n = int(math.ceil(2 * half / h))
        ref = sitk.Image(n, n, n, sitk.sitkUInt8)
        ref.SetSpacing((h, h, h))
        ref.SetOrigin(tuple(c - half))
        occ = sitk.GetArrayFromImage(p.nodule_occupancy(nid, time, ref))
        assert occ[0].max() == 0 and occ[-1].max() == 0  # the box contains the nodule
        verts, faces, *_ = marching_cubes(occ, 0.5, spacing=(h, h, h))
        area = mesh_surface_area(verts, faces)
        err = abs(occ.sum() * h ** 3 - r[f"t{time}_volume_mm3"])
        assert err <= area * h / 3
        errs.append(err)
    assert errs[1] <= errs[0] + 1e-6 * r[f"t{time}_volume_mm3"] or errs[1] < 1e-3 * r[f"t{time}_volume_mm3"]


def test_locations_touch_what_they_should(mixed_pair):
    p = mixed_pair
    anat = p._anatomy
    dirs = ph._sphere_points(100)
    for nod in p._nodules:
        s = min(1.0, nod.scale2)
        surf = np.array([nod.center1 - anat.center + u * nod.extent_along(u) * s for u in dirs])
        if nod.location == "juxtavascular":
            # part of the nodule surface (smaller time point) lies inside a vessel
            inside = [np.min(ph._segment_distance(surf[:, 0], surf[:, 1], surf[:, 2], v.p0, v.p1)[0] - v.r)
                      for v in anat.vessels]
            assert min(inside) < 0
        elif nod.location == "juxtapleural":
            assert nod.clip
            assert np.max(anat.cavity_sd(surf[:, 0], surf[:, 1], surf[:, 2])) > 0  # reaches the pleura
            r = p.truth.loc[p.truth.nodule_id == nod.nodule_id].iloc[0]
            assert r.t1_volume_mm3 < math.pi * nod.diameter_mm ** 3 / 6 * 0.999  # clipped
        else:
            assert ph._vessel_clearance(anat, nod.center1 - anat.center) > nod.r_bound


# ---------------------------------------------------------------------------
# argument errors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,match", [
    ({"preset": "huge"}, "preset='huge' unknown"),
    ({"colour": "red"}, "unknown override"),
    ({"translation_mm": (25.0, 0.0, 0.0)}, "translation_mm=.*outside"),
    ({"rotation_deg": (0.0, 9.0, 0.0)}, "rotation_deg=.*outside"),
    ({"breathing_cc": 0.2}, "breathing_cc=.*outside"),
    ({"nodules": [NoduleSpec(diameter_mm=40.0)]}, "diameter_mm=40.0 outside"),
    ({"nodules": [NoduleSpec(kind="calcified")]}, "kind='calcified' unknown"),
    ({"nodules": [NoduleSpec(volume_ratio=0.0)]}, "volume_ratio=0.0 outside"),
    ({"nodules": [NoduleSpec(lucency_fraction=0.8)]}, "lucency_fraction=0.8 outside"),
    ({"t2_scan": {"spacing_xy": 0.0}}, "spacing_xy=0.0 mm outside"),
    ({"t2_scan": {"pixel": 3}}, "t2_scan: .*pixel"),
    ({"interval_days": 0}, "interval_days=0"),
])
def test_bad_arguments_raise(kwargs, match):
    kwargs = dict(kwargs)
    preset = kwargs.pop("preset", "small")
    with pytest.raises(PhantomSpecError, match=match):
        make_pair(1, preset, **kwargs)
    assert issubclass(PhantomSpecError, NoduleGrowthError)


def test_occupancy_bad_arguments(mixed_pair):
    with pytest.raises(PhantomSpecError, match="nodule_id=9"):
        mixed_pair.nodule_occupancy(9, 1)
    with pytest.raises(PhantomSpecError, match="time=3"):
        mixed_pair.nodule_occupancy(1, 3)


# ---------------------------------------------------------------------------
# writing and the shipped sample cohort
# ---------------------------------------------------------------------------

CONTRACT_REQUIRED = {"patient_id", "t1_image", "t2_image"}
CONTRACT_ALL = set(ph.MANIFEST_COLUMNS)


def test_write_cohort_manifest(tmp_path, mixed_pair):
    m, t = ph.write_cohort(tmp_path, [(mixed_pair, "mha", [2])])
    df = pd.read_csv(m, dtype=str, keep_default_na=False)
    assert CONTRACT_REQUIRED <= set(df.columns) <= CONTRACT_ALL
    assert len(df) == 3 and (tmp_path / df.t1_image.iloc[0]).is_file()
    row = df.loc[df.nodule_id == "2"].iloc[0]
    assert row.t1_x == "" and row.t1_i != ""
    # the voxel index points into the nodule of the stored file
    img = sitk.ReadImage(str(tmp_path / row.t1_image))
    truth = pd.read_csv(t)
    tr = truth.loc[truth.nodule_id == 2].iloc[0]
    xyz = img.TransformIndexToPhysicalPoint((int(row.t1_i), int(row.t1_j), int(row.t1_k)))
    assert np.linalg.norm(np.subtract(xyz, (tr.t1_x, tr.t1_y, tr.t1_z))) < 1.5 + 0.5 * np.linalg.norm(
        img.GetSpacing())
    for c in ("t1_x", "t1_y", "t1_z"):
        r1 = df.loc[df.nodule_id == "1"].iloc[0]
        assert abs(float(r1[c]) - truth.loc[truth.nodule_id == 1, c].iloc[0]) <= 1.5 + 1e-6
    with pytest.raises(PhantomSpecError, match="fmt='png' unknown"):
        ph.write_pair(mixed_pair, tmp_path / "x", "png")


def test_shipped_manifest_follows_contract():
    df = pd.read_csv(SAMPLES / "manifest.csv", dtype=str, keep_default_na=False)
    assert CONTRACT_REQUIRED <= set(df.columns) <= CONTRACT_ALL
    assert df.patient_id.nunique() >= 2 and 3 <= len(df) <= 5
    for _, r in df.iterrows():
        assert (SAMPLES / r.t1_image).exists() and (SAMPLES / r.t2_image).exists()
        has_world = all(r[c] != "" for c in ("t1_x", "t1_y", "t1_z"))
        has_index = all(r[c] != "" for c in ("t1_i", "t1_j", "t1_k"))
        assert has_world != has_index
        is_dicom = (SAMPLES / r.t1_image).is_dir()
        assert (r.t1_date == "") == is_dicom and (r.t2_date == "") == is_dicom
    assert (df.t1_i != "").any()
    assert any((SAMPLES / p).is_dir() for p in df.t1_image)
    assert any(p.endswith(".nii.gz") for p in df.t1_image)
    truth = pd.read_csv(SAMPLES / "truth.csv")
    assert set(truth.kind) == set(ph.KINDS) and set(truth.location) == set(ph.LOCATIONS)
    assert (truth.volume_ratio > 1.2).any() and (truth.volume_ratio < 0.8).any() and \
        (truth.volume_ratio.round(6) == 1.0).any()
    size = sum(f.stat().st_size for f in SAMPLES.rglob("*") if f.is_file())
    assert size < 8 * 2 ** 20


def _digests(folder: Path) -> dict[str, str]:
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*")) if f.is_file() and f.name != "README.md"}


@pytest.fixture(scope="module")
def coarse_pair():
    coarse = {"size_xy": 48, "spacing_xy": 7.0, "n_slices": 40, "slice_spacing": 6.0, "slice_thickness": 6.0}
    return make_pair(9, t1_scan=coarse, t2_scan=coarse, nodules=[NoduleSpec(shape="sphere", diameter_mm=10.0)])


@pytest.mark.parametrize("fmt", ["dicom", "nifti"])
def test_writing_is_bit_for_bit_reproducible(tmp_path, fmt, coarse_pair):
    """Seeded UIDs, shuffled names and zeroed gzip times: two writes give identical files."""
    ph.write_cohort(tmp_path / "a", [(coarse_pair, fmt)])
    ph.write_cohort(tmp_path / "b", [(coarse_pair, fmt)])
    da, db = _digests(tmp_path / "a"), _digests(tmp_path / "b")
    assert da == db and len(da) == (2 * 40 + 2 if fmt == "dicom" else 4)


@pytest.mark.slow
def test_sample_cohort_regenerates_bit_for_bit(tmp_path):
    spec = importlib.util.spec_from_file_location("make_sample_data", ROOT / "pipelines" / "make_sample_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.build(tmp_path)
    assert _digests(tmp_path) == _digests(SAMPLES)
