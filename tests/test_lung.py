"""Tests of nodulegrowth.lung on analytic chest phantoms.

The local phantom is deliberately simple and independent of
``nodulegrowth.phantom``: an elliptic body, two ellipsoid lungs of known
volume, a trachea tube entering from the top slice, vessels (bright rods)
inside the lungs and a juxtapleural nodule sitting on the pleura.
"""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from nodulegrowth.errors import LungMaskError
from nodulegrowth.lung import body_mask, lung_mask, lung_masks, lung_threshold_hu


def chest(spacing_zyx=(2.5, 1.5, 1.5), shape=(64, 160, 192), lung_hu=-850.0, noise=20.0, seed=0,
          lung_offset=0.21):
    """Analytic chest; returns (image, truth dict of boolean arrays / points)."""
    rng = np.random.default_rng(seed)
    sz, sy, sx = spacing_zyx
    nz, ny, nx = shape
    Z, Y, X = np.meshgrid(np.arange(nz) * sz, np.arange(ny) * sy, np.arange(nx) * sx, indexing="ij")
    cz, cy, cx = (nz - 1) * sz / 2, (ny - 1) * sy / 2, (nx - 1) * sx / 2
    ax, ay = 0.45 * nx * sx, 0.38 * ny * sy
    arr = np.full(shape, -1000.0, np.float32)
    body = ((X - cx) / ax) ** 2 + ((Y - cy) / ay) ** 2 < 1
    arr[body] = 40.0
    lungs = np.zeros(shape, bool)
    la, lb, lc = 0.16 * nx * sx, 0.26 * ny * sy, 0.42 * nz * sz
    centres = []
    for side in (-1, 1):
        lx = cx + side * lung_offset * nx * sx
        centres.append(lx)
        lungs |= ((X - lx) / la) ** 2 + ((Y - cy) / lb) ** 2 + ((Z - cz) / lc) ** 2 < 1
    arr[lungs] = lung_hu
    # vessels: bright rods along y inside the right lung
    vessel = ((X - centres[0]) ** 2 + (Z - cz) ** 2 < 2.0 ** 2) & lungs
    arr[vessel] = 40.0
    # trachea: air tube from the top slice down to the lung's mid height
    trachea = ((X - cx) ** 2 + (Y - cy) ** 2 < 8.0 ** 2) & (Z > cz + 0.1 * nz * sz) & body
    arr[trachea] = -1000.0
    # juxtapleural nodule: radius 6 mm, centred 4 mm inside the lateral
    # pleura of the left lung (x = lx + la), so it bulges into the chest wall
    # and leaves a bay in the dark lung region
    nod_c = np.array([centres[1] + la - 4.0, cy, cz - 10.0])  # x, y, z in mm
    nodule = (X - nod_c[0]) ** 2 + (Y - nod_c[1]) ** 2 + (Z - nod_c[2]) ** 2 < 6.0 ** 2
    arr[nodule] = 40.0
    arr += rng.normal(0.0, noise, shape).astype(np.float32)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((sx, sy, sz))
    img.SetOrigin((-cx, -cy, -cz))
    lung_volume_ml = 2 * (4.0 / 3.0) * np.pi * la * lb * lc / 1000.0
    # the vessel's ends lie on the pleura, where the mask boundary is only
    # good to a voxel; the check is on the vessel inside the lung
    from scipy import ndimage as ndi

    inner = ndi.binary_erosion(lungs, iterations=2)
    return img, dict(lungs=lungs, vessel=vessel & inner, trachea=trachea, nodule=nodule & inner,
                     body=body, lung_volume_ml=lung_volume_ml)


@pytest.mark.parametrize("lung_hu", [-920.0, -850.0, -700.0])
@pytest.mark.parametrize("spacing", [(2.5, 1.5, 1.5), (2.0, 0.8, 0.8)])
def test_lung_mask_volume_inspiration_levels(lung_hu, spacing):
    shape = (64, 160, 192) if spacing[1] > 1 else (80, 300, 360)
    img, truth = chest(spacing, shape, lung_hu=lung_hu)
    m = sitk.GetArrayFromImage(lung_mask(img)).astype(bool)
    assert m.dtype == bool and m.shape == truth["lungs"].shape
    vox_ml = np.prod(spacing) / 1000.0
    vol = m.sum() * vox_ml
    # the mask may add a little at the pleural bays; it must hold the lungs
    # within 3 % of their analytic volume
    assert vol == pytest.approx(truth["lung_volume_ml"], rel=0.03)
    dice = 2 * (m & truth["lungs"]).sum() / (m.sum() + truth["lungs"].sum())
    assert dice > 0.97


def test_lung_mask_geometry_and_dtype():
    img, _ = chest()
    img.SetOrigin((-120.5, 33.0, 7.25))
    m = lung_mask(img)
    assert m.GetPixelID() == sitk.sitkUInt8
    assert m.GetSize() == img.GetSize()
    assert m.GetOrigin() == img.GetOrigin()
    assert m.GetSpacing() == img.GetSpacing()
    assert m.GetDirection() == img.GetDirection()
    assert set(np.unique(sitk.GetArrayViewFromImage(m))) <= {0, 1}


@pytest.mark.parametrize("spacing", [(2.5, 1.5, 1.5), (1.25, 1.2, 1.2)])
def test_trachea_excluded_vessels_and_juxtapleural_nodule_included(spacing):
    shape = (64, 160, 192) if spacing[0] > 2 else (128, 200, 240)
    img, truth = chest(spacing, shape)
    m = sitk.GetArrayFromImage(lung_mask(img)).astype(bool)
    assert not (m & truth["trachea"]).any()
    # vessels inside the lung are lung
    assert (m & truth["vessel"]).sum() >= 0.98 * truth["vessel"].sum()
    # the part of the juxtapleural nodule inside the lung is not cut out
    assert (m & truth["nodule"]).sum() >= 0.95 * truth["nodule"].sum()


def test_both_lungs_kept():
    img, truth = chest()
    m = sitk.GetArrayFromImage(lung_mask(img)).astype(bool)
    from scipy import ndimage as ndi

    _, n = ndi.label(m)
    assert n == 2


def test_threshold_follows_lung_density():
    t_insp = lung_threshold_hu(chest(lung_hu=-900.0)[0])
    t_exp = lung_threshold_hu(chest(lung_hu=-650.0)[0])
    assert -900 < t_insp < 40 and -650 < t_exp < 40
    assert t_exp > t_insp


def test_body_mask():
    img, truth = chest()
    b = sitk.GetArrayFromImage(body_mask(img)).astype(bool)
    dice = 2 * (b & truth["body"]).sum() / (b.sum() + truth["body"].sum())
    assert dice > 0.99


def test_no_lung_raises():
    arr = np.full((30, 64, 64), -1000.0, np.float32)
    arr[:, 8:56, 8:56] = 40.0  # a body without any lung (e.g. an abdomen)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.5, 1.5, 2.5))
    with pytest.raises(LungMaskError, match="chest CT"):
        lung_mask(img)


def test_small_air_pocket_is_not_a_lung():
    arr = np.full((30, 64, 64), -1000.0, np.float32)
    arr[:, 8:56, 8:56] = 40.0
    arr[10:20, 20:30, 20:30] = -900.0  # 10 x 10 x 10 voxels = 56 mL
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.5, 1.5, 2.5))
    with pytest.raises(LungMaskError, match="mL"):
        lung_mask(img)


@pytest.mark.parametrize("bad", [sitk.Image(10, 10, sitk.sitkFloat32), sitk.Image(2, 40, 40, sitk.sitkFloat32)])
def test_bad_image_raises(bad):
    with pytest.raises(LungMaskError, match="dimensions|too small"):
        lung_mask(bad)


def test_lungs_joined_by_a_bridge_are_split_and_mediastinum_not_filled():
    from scipy import ndimage as ndi

    # lungs 14 mm apart: a closing of the two lungs as one component would
    # fill the mediastinum between them
    img, truth = chest(lung_offset=0.185)
    arr = sitk.GetArrayFromImage(img)
    nz, ny, nx = arr.shape
    # a 3-slice dark bridge across the mediastinum (like main bronchi left
    # in the mask, or an anterior junction), well below the trachea
    bridge = np.zeros(arr.shape, bool)
    bridge[nz // 2 - 6: nz // 2 - 3, ny // 2 - 3: ny // 2 + 3, nx // 4: 3 * nx // 4] = True
    arr[bridge & truth["body"]] = -850.0
    joined = sitk.GetImageFromArray(arr)
    joined.CopyInformation(img)
    m = sitk.GetArrayFromImage(lung_mask(joined)).astype(bool)
    # the mediastinum between the lungs (body, not lung, not bridge) stays out
    mediastinum = truth["body"] & ~truth["lungs"] & ~bridge
    mediastinum[:, :, : nx // 2 - 4] = False
    mediastinum[:, :, nx // 2 + 4:] = False
    mediastinum &= ndi.binary_dilation(truth["lungs"], iterations=12)
    assert (m & mediastinum).sum() < 0.01 * mediastinum.sum()


@pytest.mark.parametrize("max_workers", [1, 2])
def test_lung_masks_of_a_pair_equal_one_by_one_and_in_order(max_workers):
    img1, _ = chest(lung_hu=-850.0, seed=1)
    img2, _ = chest(lung_hu=-780.0, seed=2)
    ms = lung_masks([img1, img2], max_workers=max_workers)
    for m, img in zip(ms, (img1, img2)):
        # copies: a view of the temporary lung_mask(img) would outlive its image
        np.testing.assert_array_equal(sitk.GetArrayFromImage(m), sitk.GetArrayFromImage(lung_mask(img)))


def test_lung_masks_raise_for_the_bad_image():
    arr = np.full((30, 64, 64), -1000.0, np.float32)
    arr[:, 8:56, 8:56] = 40.0
    no_lung = sitk.GetImageFromArray(arr)
    no_lung.SetSpacing((1.5, 1.5, 2.5))
    with pytest.raises(LungMaskError, match="chest CT"):
        lung_masks([chest()[0], no_lung])
