"""Tests of nodulegrowth.io on tiny synthetic volumes with known geometry.

Truth is analytic: integer HU volumes survive the DICOM int16 encoding
exactly, and every world point is computed from the geometry the volume was
written with (or, for NIfTI, from a hand-built RAS header) -- never from the
reader under test.
"""
from __future__ import annotations

import datetime as dt
import shutil
import struct
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import ExplicitVRLittleEndian

from nodulegrowth.errors import GeometryError, ImageReadError, NoduleGrowthError
from nodulegrowth.io import (
    ImageWriteError,
    Scan,
    ScanInfo,
    crop,
    index_to_world,
    load_scan,
    native_index_to_world,
    read_dicom_series,
    read_volume,
    world_to_index,
    write_dicom_series,
    write_volume,
)

# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def _rotation(ax_deg: float, az_deg: float) -> np.ndarray:
    ax, az = np.deg2rad(ax_deg), np.deg2rad(az_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ rx


DIRECTIONS = {
    "identity": np.eye(3),
    "flip_xy": np.diag([-1.0, -1.0, 1.0]),
    "left_handed_z": np.diag([1.0, 1.0, -1.0]),
    "coronal": np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]]),
    "sagittal": np.array([[0, 0, -1.0], [1.0, 0, 0], [0, -1.0, 0]]),
    "oblique": _rotation(10.0, 25.0),
}


def make_image(
    shape_zyx=(16, 20, 24),
    spacing_xyz=(0.7, 0.8, 2.5),
    origin=(-12.5, 30.25, -301.0),
    direction=np.eye(3),
    seed=0,
    dtype=np.float32,
) -> sitk.Image:
    """Random integer-HU volume (exactly representable in DICOM int16)."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(-1024, 2000, size=shape_zyx).astype(dtype)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(tuple(float(s) for s in spacing_xyz))
    img.SetOrigin(tuple(float(o) for o in origin))
    img.SetDirection(tuple(float(v) for v in np.asarray(direction).ravel()))
    return img


def all_world_points(img: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """World point of every voxel (N, 3) and its value (N,), by plain algebra."""
    size = img.GetSize()
    k, j, i = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    ijk = np.column_stack([i.ravel(), j.ravel(), k.ravel()]).astype(float)
    d = np.asarray(img.GetDirection()).reshape(3, 3)
    pts = np.asarray(img.GetOrigin()) + (ijk * np.asarray(img.GetSpacing())) @ d.T
    return pts, sitk.GetArrayFromImage(img).ravel()


def assert_same_world_content(original: sitk.Image, loaded: sitk.Image, tol_index=1e-4):
    """Every voxel of ``original`` lands on a voxel centre of ``loaded`` with the same HU."""
    pts, values = all_world_points(original)
    idx = world_to_index(loaded, pts)
    rounded = np.rint(idx).astype(int)
    np.testing.assert_allclose(idx, rounded, atol=tol_index)
    size = np.asarray(loaded.GetSize())
    assert np.all(rounded >= 0) and np.all(rounded < size)
    arr = sitk.GetArrayFromImage(loaded)
    np.testing.assert_array_equal(arr[rounded[:, 2], rounded[:, 1], rounded[:, 0]], values)


def set_ipp(path: Path, position) -> None:
    ds = pydicom.dcmread(path)
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    ds.save_as(path)


# --------------------------------------------------------------------------
# DICOM write / read round trip
# --------------------------------------------------------------------------


@pytest.mark.parametrize("spacing", [(0.7, 0.7, 2.5), (1.0, 0.5, 1.25), (0.62, 0.9, 3.0)])
@pytest.mark.parametrize("shape", [(16, 20, 24), (3, 7, 5)])
def test_dicom_roundtrip_exact_geometry_and_hu(tmp_path, spacing, shape):
    img = make_image(shape, spacing)
    files = write_dicom_series(img, tmp_path / "s", {"Manufacturer": "ACME", "KVP": 120})
    assert len(files) == shape[0]
    scan = load_scan(tmp_path / "s")
    out = scan.image
    assert out.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(out.GetOrigin(), img.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(out.GetSpacing(), img.GetSpacing(), rtol=1e-12)
    np.testing.assert_allclose(out.GetDirection(), np.eye(3).ravel(), atol=1e-12)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(img))
    info = scan.info
    assert info.format == "dicom"
    assert info.spacing_zyx == pytest.approx(spacing[::-1])
    assert info.size_zyx == shape
    assert info.native_size == shape[::-1]
    assert info.manufacturer == "ACME" and info.kvp == 120.0
    assert info.slice_thickness_mm == pytest.approx(spacing[2])
    assert info.notes == ()


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_dicom_roundtrip_any_direction(tmp_path, name):
    img = make_image((6, 9, 11), (0.8, 0.6, 2.0), direction=DIRECTIONS[name], seed=3)
    write_dicom_series(img, tmp_path)
    scan = read_dicom_series(tmp_path)
    assert_same_world_content(img, scan.image)
    # the native grid covers exactly the written voxel centres, one to one
    size = scan.info.native_size
    k, j, i = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    native_ijk = np.column_stack([i.ravel(), j.ravel(), k.ravel()])
    native_pts = native_index_to_world(scan.info, native_ijk)
    idx_in_original = world_to_index(img, native_pts)
    np.testing.assert_allclose(idx_in_original, np.rint(idx_in_original), atol=1e-4)
    flat = np.ravel_multi_index(np.rint(idx_in_original).astype(int).T[::-1], img.GetSize()[::-1])
    assert np.unique(flat).size == flat.size == np.prod(img.GetSize())
    # native k counts slices along n = row x col (right-handed native frame)
    d = np.asarray(scan.info.native_direction).reshape(3, 3)
    np.testing.assert_allclose(d[:, 2], np.cross(d[:, 0], d[:, 1]), atol=1e-9)


@pytest.mark.parametrize("name", ["identity", "oblique", "coronal"])
def test_dicom_reader_agrees_with_gdcm(tmp_path, name):
    # an independent reader (GDCM via SimpleITK) on the same files must agree
    img = make_image((7, 8, 9), (0.75, 0.6, 1.5), direction=DIRECTIONS[name], seed=21)
    write_dicom_series(img, tmp_path, shuffle_names=True, rng=5)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path)))
    gdcm = sitk.DICOMOrient(reader.Execute(), "LPS")
    ours = read_dicom_series(tmp_path).image
    np.testing.assert_allclose(ours.GetOrigin(), gdcm.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(ours.GetSpacing(), gdcm.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(ours.GetDirection(), gdcm.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(gdcm))


def test_dicom_native_index_counts_slices_along_normal(tmp_path):
    # left-handed stack: slice k of the written image lies *below* slice k-1
    img = make_image((5, 4, 3), (1.0, 1.0, 2.0), origin=(0, 0, 100.0), direction=np.diag([1.0, 1, -1]))
    write_dicom_series(img, tmp_path, shuffle_names=True, rng=1)
    info = read_dicom_series(tmp_path).info
    # native k counts along n = row x col = +z, so k=0 is the lowest slice (z = 92)
    np.testing.assert_allclose(native_index_to_world(info, (0, 0, 0)), (0, 0, 92.0), atol=1e-9)
    np.testing.assert_allclose(native_index_to_world(info, (2, 3, 4)), (2, 3, 100.0), atol=1e-9)


def test_written_files_are_valid_ct_dicom(tmp_path):
    img = make_image((3, 4, 5))
    tags = {
        "PatientName": "Doe^Jane", "PatientID": "P-001", "PatientBirthDate": dt.date(1950, 2, 3),
        "StudyDate": dt.date(2024, 1, 31), "InstitutionName": "General Hospital",
        "AccessionNumber": "ACC123", "SliceThickness": 3.0,
    }
    files = write_dicom_series(img, tmp_path, tags, series_number=7, instance_start=11)
    ds = pydicom.dcmread(files[2])  # no force: preamble and file meta must be valid
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.Modality == "CT" and list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert ds.InstanceNumber == 13 and ds.SeriesNumber == 7
    assert ds.PatientBirthDate == "19500203" and ds.StudyDate == "20240131"
    assert float(ds.RescaleSlope) == 1 and float(ds.RescaleIntercept) == -1024
    assert float(ds.SliceThickness) == 3.0
    stored = ds.pixel_array
    np.testing.assert_array_equal(stored - 1024, sitk.GetArrayFromImage(img)[2])
    # and no PHI reaches ScanInfo
    info_text = repr(read_dicom_series(tmp_path).info)
    for phi in ("Doe", "P-001", "1950", "General Hospital", "ACC123", ds.StudyInstanceUID, ds.SeriesInstanceUID):
        assert phi not in info_text


def test_writer_is_reproducible_with_rng(tmp_path):
    img = make_image((3, 4, 5))
    a = write_dicom_series(img, tmp_path / "a", shuffle_names=True, rng=42)
    b = write_dicom_series(img, tmp_path / "b", shuffle_names=True, rng=42)
    assert [p.name for p in a] == [p.name for p in b]
    assert all(not p.name.endswith(".dcm") for p in a)
    assert pydicom.dcmread(a[0]).SOPInstanceUID == pydicom.dcmread(b[0]).SOPInstanceUID


def test_writer_rejects_bad_input(tmp_path):
    img = make_image((3, 4, 5))
    with pytest.raises(ImageWriteError, match="ImagePositionPatient"):
        write_dicom_series(img, tmp_path, {"ImagePositionPatient": [0, 0, 0]})
    with pytest.raises(ImageWriteError, match="'PatientNmae' is not a DICOM keyword"):
        write_dicom_series(img, tmp_path, {"PatientNmae": "x"})
    with pytest.raises(ImageWriteError, match="3-D"):
        write_dicom_series(sitk.Image(4, 4, sitk.sitkFloat32), tmp_path)
    nan = sitk.GetImageFromArray(np.full((2, 3, 3), np.nan, np.float32))
    with pytest.raises(ImageWriteError, match="NaN"):
        write_dicom_series(nan, tmp_path)
    assert issubclass(ImageWriteError, NoduleGrowthError)


def test_writer_clips_out_of_range_hu_with_warning(tmp_path):
    img = sitk.GetImageFromArray(np.array([[[-40000.0, 0.0]], [[50000.0, 5.0]]], np.float32))
    with pytest.warns(UserWarning, match="clipped"):
        write_dicom_series(img, tmp_path)
    arr = sitk.GetArrayFromImage(load_scan(tmp_path).image)
    assert arr.min() == -32768 - 1024 and arr.max() == 32767 - 1024


# --------------------------------------------------------------------------
# messy folders
# --------------------------------------------------------------------------


def test_shuffled_names_stray_files_and_subfolders(tmp_path):
    img = make_image((8, 6, 7), (0.7, 0.7, 1.5), seed=5)
    write_dicom_series(img, tmp_path / "export" / "series1", shuffle_names=True, rng=3)
    (tmp_path / "README.txt").write_text("exported by PACS\n")
    (tmp_path / "DICOMDIR").write_bytes(b"\x00\x01junk" * 50)
    with pytest.warns(UserWarning, match="README.txt") as record:
        scan = load_scan(tmp_path)
    assert any("DICOMDIR" in str(w.message) for w in record)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(scan.image), sitk.GetArrayFromImage(img))
    skipped = [n for n in scan.info.notes if n.startswith("skipped_files")]
    assert len(skipped) == 1 and "README.txt" in skipped[0] and "DICOMDIR" in skipped[0]


def test_files_without_preamble_are_read(tmp_path):
    # old exports omit the 128-byte preamble and "DICM" prefix
    img = make_image((4, 5, 6), seed=14)
    for f in write_dicom_series(img, tmp_path):
        f.write_bytes(f.read_bytes()[132:])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing may be skipped
        scan = read_dicom_series(tmp_path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(scan.image), sitk.GetArrayFromImage(img))


def test_order_ignores_instance_number_and_file_names(tmp_path):
    img = make_image((6, 5, 4), seed=2)
    files = write_dicom_series(img, tmp_path)
    # scramble InstanceNumber and file names so that neither matches the geometry
    for f, inst in zip(files, [4, 1, 6, 2, 5, 3]):
        ds = pydicom.dcmread(f)
        ds.InstanceNumber = inst
        ds.save_as(f)
    for f in files:
        f.rename(f.with_name(f"z{(7 * int(pydicom.dcmread(f).InstanceNumber)) % 10}_{f.name}"))
    scan = read_dicom_series(tmp_path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(scan.image), sitk.GetArrayFromImage(img))


def test_two_series_most_slices_wins(tmp_path):
    big = make_image((10, 6, 7), (0.7, 0.7, 1.0), seed=1)
    small = make_image((6, 6, 7), (0.7, 0.7, 2.0), seed=2)
    write_dicom_series(big, tmp_path, series_number=2)
    write_dicom_series(small, tmp_path, series_number=3)
    scan = read_dicom_series(tmp_path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(scan.image), sitk.GetArrayFromImage(big))
    note = [n for n in scan.info.notes if n.startswith("ignored_series")]
    assert note and "10 slices" in note[0] and "6 slices" in note[0]


def test_series_without_uid_are_separated_by_series_number(tmp_path):
    big = make_image((7, 5, 6), (0.7, 0.7, 1.0), seed=16)
    small = make_image((4, 5, 6), (0.7, 0.7, 2.0), seed=17)
    files = write_dicom_series(big, tmp_path, series_number=2) + write_dicom_series(small, tmp_path, series_number=3)
    for f in files:
        ds = pydicom.dcmread(f)
        del ds.SeriesInstanceUID
        ds.save_as(f)
    scan = read_dicom_series(tmp_path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(scan.image), sitk.GetArrayFromImage(big))


def test_localizer_and_other_orientation_in_same_series_are_ignored(tmp_path):
    img = make_image((5, 6, 7), seed=4)
    files = write_dicom_series(img, tmp_path)
    uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    scout = make_image((1, 6, 7), seed=9)
    write_dicom_series(
        scout, tmp_path, {"SeriesInstanceUID": uid, "ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]},
        series_number=9,
    )
    # a stray slice with sagittal orientation, not labelled as localizer
    sag = make_image((1, 6, 7), direction=DIRECTIONS["sagittal"], seed=8)
    write_dicom_series(sag, tmp_path, {"SeriesInstanceUID": uid}, series_number=8)
    scan = read_dicom_series(tmp_path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(scan.image), sitk.GetArrayFromImage(img))
    notes = " ".join(scan.info.notes)
    assert "1 localizer" in notes and "different orientation" in notes


def test_exact_duplicate_slice_dropped_conflicting_duplicate_raises(tmp_path):
    img = make_image((5, 4, 4), seed=6)
    files = write_dicom_series(img, tmp_path)
    shutil.copy(files[2], tmp_path / "copy_of_slice2.dcm")
    scan = read_dicom_series(tmp_path)
    assert scan.image.GetSize()[2] == 5
    assert any(n.startswith("dropped_duplicate_slices") for n in scan.info.notes)
    # a different image at the same position is not silently dropped
    ds = pydicom.dcmread(files[2])
    ds.PixelData = (ds.pixel_array + 1).astype("<i2").tobytes()
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "copy_of_slice2.dcm")
    with pytest.raises(GeometryError, match="same position"):
        read_dicom_series(tmp_path)


# --------------------------------------------------------------------------
# uneven spacing, missing slices, tilt
# --------------------------------------------------------------------------


@pytest.mark.parametrize("gap", [1.0, 2.5])
def test_one_missing_slice_is_interpolated(tmp_path, gap):
    img = make_image((9, 5, 6), (0.7, 0.7, gap), seed=7)
    files = write_dicom_series(img, tmp_path)
    files[4].unlink()
    scan = read_dicom_series(tmp_path)
    arr = sitk.GetArrayFromImage(scan.image)
    truth = sitk.GetArrayFromImage(img)
    assert arr.shape == truth.shape
    assert scan.image.GetSpacing()[2] == pytest.approx(gap)
    keep = [0, 1, 2, 3, 5, 6, 7, 8]
    np.testing.assert_allclose(arr[keep], truth[keep], atol=1e-3)
    # linear interpolation along the normal, halfway between slices 3 and 5
    np.testing.assert_allclose(arr[4], (truth[3] + truth[5]) / 2, atol=1e-3)
    codes = [n.split(":")[0] for n in scan.info.notes]
    assert "resampled_uneven_slices" in codes and "missing_slices" not in codes
    # native k counts the 8 stored slices: k=4 is the slice originally at index 5
    info = scan.info
    assert info.native_size[2] == 8
    expected = np.asarray(img.GetOrigin()) + np.array([1 * 0.7, 2 * 0.7, 5 * gap])
    np.testing.assert_allclose(native_index_to_world(info, (1, 2, 4)), expected, atol=1e-6)
    np.testing.assert_allclose(native_index_to_world(info, (0, 0, 3.5))[2], img.GetOrigin()[2] + 4 * gap, atol=1e-6)


def test_large_gap_is_resampled_and_flagged(tmp_path):
    img = make_image((12, 4, 5), (0.7, 0.7, 1.25), seed=8)
    files = write_dicom_series(img, tmp_path)
    for f in files[4:7]:
        f.unlink()
    scan = read_dicom_series(tmp_path)
    assert scan.image.GetSize()[2] == 12
    missing = [n for n in scan.info.notes if n.startswith("missing_slices")]
    assert missing and "5.00 mm" in missing[0]


def test_small_jitter_below_one_percent_is_not_resampled(tmp_path):
    img = make_image((6, 4, 5), (0.7, 0.7, 2.0), seed=9)
    files = write_dicom_series(img, tmp_path)
    origin = np.asarray(img.GetOrigin())
    set_ipp(files[3], origin + (0, 0, 3 * 2.0 + 0.01))  # 0.5 % of the gap
    scan = read_dicom_series(tmp_path)
    assert not any(n.startswith("resampled") for n in scan.info.notes)
    assert scan.image.GetSize()[2] == 6
    assert scan.image.GetSpacing()[2] == pytest.approx(2.0)


def test_uneven_spacing_above_one_percent_is_resampled(tmp_path):
    img = make_image((6, 4, 5), (0.7, 0.7, 2.0), seed=10)
    files = write_dicom_series(img, tmp_path)
    origin = np.asarray(img.GetOrigin())
    set_ipp(files[3], origin + (0, 0, 3 * 2.0 + 0.5))  # slice 3 moved up by 25 % of the gap
    scan = read_dicom_series(tmp_path)
    assert any(n.startswith("resampled_uneven_slices") for n in scan.info.notes)
    arr = sitk.GetArrayFromImage(scan.image)
    truth = sitk.GetArrayFromImage(img).astype(float)
    assert arr.shape[0] == 6
    # grid point z=6 lies between stored slices at z=4 (slice 2) and z=6.5 (slice 3): w = 0.8
    np.testing.assert_allclose(arr[3], 0.2 * truth[2] + 0.8 * truth[3], atol=1e-3)
    np.testing.assert_allclose(arr[[0, 1, 2, 5]], truth[[0, 1, 2, 5]], atol=1e-3)


@pytest.mark.parametrize("shear_mm", [0.5, -0.3])  # keeps the sampled field integer
@pytest.mark.parametrize("gap", [2.0, 1.0])
def test_gantry_tilt_is_resampled_onto_orthogonal_grid(tmp_path, shear_mm, gap):
    # slice k is acquired with its origin shifted by k * shear_mm along y (tilted gantry);
    # its pixels sample the linear field f = 3x + 10y + z exactly
    n_k, n_j, n_i = 6, 12, 5
    origin = np.array([-2.0, 4.0, 50.0])

    def field(p):
        return 3 * p[..., 0] + 10 * p[..., 1] + p[..., 2]

    arr = np.zeros((n_k, n_j, n_i), np.float32)
    jj, ii = np.meshgrid(np.arange(n_j), np.arange(n_i), indexing="ij")
    for k in range(n_k):
        pts = origin + np.stack([ii, jj + shear_mm * k, np.full_like(ii, gap * k)], axis=-1).astype(float)
        arr[k] = field(pts)
    img = sitk.GetImageFromArray(arr)
    img.SetOrigin(tuple(origin))
    files = write_dicom_series(img, tmp_path, {"SliceThickness": gap})
    for k, f in enumerate(files):
        set_ipp(f, origin + (0, shear_mm * k, gap * k))
    scan = read_dicom_series(tmp_path)
    assert any(n.startswith("resampled_gantry_tilt") for n in scan.info.notes)
    out = scan.image
    np.testing.assert_allclose(out.GetSpacing(), (1.0, 1.0, gap), atol=1e-9)
    np.testing.assert_allclose(out.GetDirection(), np.eye(3).ravel(), atol=1e-12)
    np.testing.assert_allclose(out.GetOrigin(), origin, atol=1e-6)
    got = sitk.GetArrayFromImage(out)
    kk, jj3, ii3 = np.meshgrid(np.arange(n_k), np.arange(n_j), np.arange(n_i), indexing="ij")
    world = origin + np.stack([ii3, jj3, gap * kk], axis=-1).astype(float)
    # inside the field of view of every slice (outside, edge values are replicated)
    inside = (jj3 - shear_mm * kk >= 0) & (jj3 - shear_mm * kk <= n_j - 1)
    np.testing.assert_allclose(got[inside], field(world)[inside], atol=1e-3)
    # native index (i, j, k) of the sheared stack is the acquired pixel position
    np.testing.assert_allclose(
        native_index_to_world(scan.info, (3, 7, 4)), origin + (3, 7 + shear_mm * 4, gap * 4), atol=1e-6
    )


# --------------------------------------------------------------------------
# per-slice rescale and dates
# --------------------------------------------------------------------------


def test_per_slice_rescale_slope_intercept(tmp_path):
    rng = np.random.default_rng(12)
    hu = (2 * rng.integers(-500, 1000, size=(4, 5, 6))).astype(np.float32)  # even HU
    img = sitk.GetImageFromArray(hu)
    files = write_dicom_series(img, tmp_path)
    for k, (slope, intercept) in enumerate([(1.0, -1024.0), (2.0, -2048.0), (0.5, -1000.0), (1.0, 0.0)]):
        ds = pydicom.dcmread(files[k])
        stored = (hu[k].astype(float) - intercept) / slope
        assert np.all(stored == np.rint(stored))
        ds.PixelData = stored.astype("<i2").tobytes()
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
        ds.save_as(files[k])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(load_scan(tmp_path).image), hu)


def test_undecodable_pixel_data_falls_back_to_gdcm(tmp_path, monkeypatch):
    hu = (2 * np.random.default_rng(15).integers(-500, 1000, size=(3, 4, 5))).astype(np.float32)
    files = write_dicom_series(sitk.GetImageFromArray(hu), tmp_path)
    ds = pydicom.dcmread(files[1])  # one slice with its own rescale
    ds.PixelData = ((hu[1].astype(float) + 2048) / 2).astype("<i2").tobytes()
    ds.RescaleSlope, ds.RescaleIntercept = "2", "-2048"
    ds.save_as(files[1])

    def no_decoder(self):
        raise NotImplementedError("no pixel data handler for this transfer syntax")

    monkeypatch.setattr(pydicom.Dataset, "pixel_array", property(no_decoder))
    scan = read_dicom_series(tmp_path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(scan.image), hu)
    assert any(n.startswith("pixel_data_via_simpleitk") for n in scan.info.notes)

    def gdcm_fails(*args, **kwargs):
        raise RuntimeError("GDCM cannot decode")

    monkeypatch.setattr(sitk, "ReadImage", gdcm_fails)
    with pytest.raises(ImageReadError, match=r"cannot decode pixel data of .*no pixel data handler"):
        read_dicom_series(tmp_path)


@pytest.mark.parametrize(
    "tags, expected, note",
    [
        ({"AcquisitionDate": "20230105", "SeriesDate": "20230106", "StudyDate": "20230107"}, dt.date(2023, 1, 5), None),
        ({"SeriesDate": "20230106", "StudyDate": "20230107"}, dt.date(2023, 1, 6), None),
        ({"StudyDate": dt.date(2023, 1, 7)}, dt.date(2023, 1, 7), None),
        ({}, None, None),
        ({"AcquisitionDate": "2023XX05", "StudyDate": "20230107"}, dt.date(2023, 1, 7), "AcquisitionDate"),
        ({"StudyDate": "20231340"}, None, "StudyDate"),
    ],
)
@pytest.mark.filterwarnings("ignore:Invalid value for VR DA")
def test_acquisition_date_fallback(tmp_path, tags, expected, note):
    write_dicom_series(make_image((2, 3, 4)), tmp_path, tags)
    info = read_dicom_series(tmp_path).info
    assert info.acquisition_date == expected
    date_notes = [n for n in info.notes if n.startswith("unparsable_date")]
    if note is None:
        assert date_notes == []
    else:
        assert len(date_notes) == 1 and note in date_notes[0]


# --------------------------------------------------------------------------
# volume files
# --------------------------------------------------------------------------


def write_nifti_ras(path: Path, data_xyz: np.ndarray, affine_ras: np.ndarray) -> None:
    """Minimal NIfTI-1 writer (sform only, RAS+ frame), independent of ITK."""
    hdr = bytearray(352)
    struct.pack_into("<i", hdr, 0, 348)
    dims = [3, *data_xyz.shape, 1, 1, 1, 1]
    struct.pack_into("<8h", hdr, 40, *dims)
    struct.pack_into("<hh", hdr, 70, 16, 32)  # float32
    spacing = np.linalg.norm(affine_ras[:3, :3], axis=0)
    struct.pack_into("<8f", hdr, 76, 1.0, *spacing, 1, 1, 1, 1)
    struct.pack_into("<f", hdr, 108, 352.0)  # vox_offset
    struct.pack_into("<ff", hdr, 112, 1.0, 0.0)  # scl_slope, scl_inter
    struct.pack_into("<B", hdr, 123, 2)  # xyzt_units: mm
    struct.pack_into("<hh", hdr, 252, 0, 1)  # qform_code 0, sform_code 1 (scanner)
    for r in range(3):
        struct.pack_into("<4f", hdr, 280 + 16 * r, *affine_ras[r])
    hdr[344:348] = b"n+1\x00"
    path.write_bytes(bytes(hdr) + data_xyz.astype("<f4").tobytes(order="F"))


PERMS = {
    "identity": np.eye(3),
    "flip_x": np.diag([-1.0, 1, 1]),
    "flip_yz": np.diag([1.0, -1, -1]),
    "cyclic": np.array([[0, 0, 1.0], [1.0, 0, 0], [0, 1.0, 0]]),
    "swap_xy": np.array([[0, 1.0, 0], [1.0, 0, 0], [0, 0, 1.0]]),
}


@pytest.mark.parametrize("name", sorted(PERMS))
@pytest.mark.parametrize("spacing", [(0.8, 0.6, 2.0), (1.5, 1.5, 1.5)])
def test_hand_made_ras_nifti_gives_lps_world(tmp_path, name, spacing):
    shape_ijk = (7, 6, 5)
    data = np.full(shape_ijk, -1000.0, np.float32)
    ijk = (5, 1, 3)
    data[ijk] = 500.0
    affine = np.eye(4)
    affine[:3, :3] = PERMS[name] * np.asarray(spacing)
    affine[:3, 3] = (-20.0, 35.5, 110.0)
    path = tmp_path / "ct.nii"
    write_nifti_ras(path, data, affine)
    ras = affine @ np.array([*ijk, 1.0])
    lps = np.array([-ras[0], -ras[1], ras[2]])  # RAS -> LPS
    scan = load_scan(path)
    assert scan.info.format == "nifti"
    np.testing.assert_allclose(native_index_to_world(scan.info, ijk), lps, atol=1e-4)
    idx = world_to_index(scan.image, lps)
    np.testing.assert_allclose(idx, np.rint(idx), atol=1e-4)
    i, j, k = np.rint(idx).astype(int)
    arr = sitk.GetArrayFromImage(scan.image)
    assert arr[k, j, i] == 500.0 and (arr == 500.0).sum() == 1
    np.testing.assert_allclose(scan.image.GetDirection(), np.eye(3).ravel(), atol=1e-6)


@pytest.mark.parametrize("name", sorted(PERMS))
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha", ".mhd", ".nrrd"])
def test_volume_roundtrip_flipped_and_permuted(tmp_path, name, suffix):
    img = make_image((5, 6, 7), (0.7, 0.9, 2.5), origin=(10.5, -20.25, 33.0), direction=PERMS[name], seed=13)
    path = write_volume(img, tmp_path / f"ct{suffix}")
    scan = load_scan(path)
    exact = suffix not in (".nii", ".nii.gz")  # NIfTI stores geometry as float32
    tol = 1e-9 if exact else 1e-4
    np.testing.assert_allclose(scan.info.native_origin, img.GetOrigin(), atol=tol)
    np.testing.assert_allclose(scan.info.native_spacing, img.GetSpacing(), atol=tol)
    np.testing.assert_allclose(scan.info.native_direction, img.GetDirection(), atol=1e-6)
    assert scan.info.native_size == img.GetSize()
    assert_same_world_content(img, scan.image, tol_index=1e-4)
    assert scan.info.acquisition_date is None and scan.info.slice_thickness_mm is None
    np.testing.assert_allclose(scan.image.GetDirection(), np.eye(3).ravel(), atol=1e-6)
    # the volume as stored: native_index_to_world agrees with ITK's own mapping
    for ijk in [(0, 0, 0), (6, 5, 4), (3, 2, 1)]:
        np.testing.assert_allclose(
            native_index_to_world(scan.info, ijk), img.TransformIndexToPhysicalPoint(ijk), atol=tol
        )


def test_write_volume_compresses_atomically_and_overwrites(tmp_path):
    img = make_image((4, 5, 6), dtype=np.int16)
    for suffix, marker in [(".mha", b"CompressedData = True"), (".nrrd", b"encoding: gzip")]:
        path = write_volume(img, tmp_path / f"a{suffix}")
        assert marker in path.read_bytes()[:2000]
    gz = write_volume(img, tmp_path / "a.nii.gz")
    assert gz.read_bytes()[:2] == b"\x1f\x8b"
    write_volume(img, tmp_path / "a.mhd")
    assert (tmp_path / "a.raw").exists()
    img2 = make_image((4, 5, 6), seed=99)
    write_volume(img2, tmp_path / "a.mha")
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(read_volume(tmp_path / "a.mha").image), sitk.GetArrayFromImage(img2)
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mha", "a.mhd", "a.nii.gz", "a.nrrd", "a.raw"]


def test_volume_not_in_hu_is_noted(tmp_path):
    img = sitk.GetImageFromArray(np.full((3, 4, 5), 1024, np.uint16))
    scan = read_volume(write_volume(img, tmp_path / "raw.nrrd"))
    assert any(n.startswith("values_may_not_be_hu") for n in scan.info.notes)


# --------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------


def test_error_missing_path(tmp_path):
    with pytest.raises(ImageReadError, match=r"nope\.nii\.gz does not exist.*DICOM series folder"):
        load_scan(tmp_path / "nope.nii.gz")


def test_error_empty_folder(tmp_path):
    with pytest.raises(ImageReadError, match="is empty"):
        load_scan(tmp_path)


def test_error_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "img.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(ImageReadError, match="no DICOM files"), pytest.warns(UserWarning, match="notes.txt"):
        load_scan(tmp_path)


def test_error_dicom_but_no_ct(tmp_path):
    files = write_dicom_series(make_image((3, 4, 4)), tmp_path)
    for f in files:
        ds = pydicom.dcmread(f)
        ds.Modality = "MR"
        ds.save_as(f)
    with pytest.raises(ImageReadError, match="no CT image series.*3 modality MR"):
        load_scan(tmp_path)


def test_error_unknown_suffix(tmp_path):
    p = tmp_path / "scan.png"
    p.write_bytes(b"\x89PNG")
    with pytest.raises(ImageReadError, match=r"unsupported file type '\.png'.*\.nii\.gz"):
        load_scan(p)


def test_error_single_dicom_file(tmp_path):
    files = write_dicom_series(make_image((3, 4, 4)), tmp_path, shuffle_names=True)
    for f in (files[0], files[0].rename(tmp_path / "one.dcm")):
        with pytest.raises(ImageReadError, match="single DICOM file, not a series"):
            load_scan(f if f.exists() else tmp_path / "one.dcm")


def test_error_series_with_one_slice(tmp_path):
    write_dicom_series(make_image((1, 4, 4)), tmp_path)
    with pytest.raises(ImageReadError, match="single slice"):
        load_scan(tmp_path)


def test_error_damaged_volume(tmp_path):
    p = tmp_path / "bad.mha"
    p.write_text("ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_SHORT\nElementDataFile = gone.raw\n")
    with pytest.raises(ImageReadError, match=r"cannot read .*bad\.mha"):
        load_scan(p)
    with pytest.raises(ImageWriteError, match=r"unknown suffix"):
        write_volume(make_image((2, 2, 2)), tmp_path / "x.png")


def test_error_2d_volume(tmp_path):
    p = write_volume(sitk.Image(5, 5, sitk.sitkFloat32), tmp_path / "flat.nrrd")
    with pytest.raises(ImageReadError, match="2-D image"):
        read_volume(p)


# --------------------------------------------------------------------------
# geometry helpers
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_world_index_maps_agree_with_itk(name):
    img = make_image((4, 5, 6), (0.7, 1.1, 2.5), origin=(3.0, -4.0, 50.0), direction=DIRECTIONS[name])
    rng = np.random.default_rng(0)
    ijk = rng.uniform(-1, 6, size=(10, 3))
    xyz = index_to_world(img, ijk)
    itk_xyz = np.array([img.TransformContinuousIndexToPhysicalPoint(tuple(p)) for p in ijk])
    np.testing.assert_allclose(xyz, itk_xyz, atol=1e-9)
    np.testing.assert_allclose(world_to_index(img, xyz), ijk, atol=1e-9)
    assert world_to_index(img, xyz[0]).shape == (3,)
    with pytest.raises(GeometryError, match=r"shape \(2,\)"):
        world_to_index(img, (1.0, 2.0))


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 0.7, 2.5)])
def test_crop_keeps_world_coordinates_and_clips(spacing):
    img = make_image((10, 30, 40), spacing, origin=(-5.0, 2.0, 40.0))
    center_idx = np.array([20, 15, 5])
    center = index_to_world(img, center_idx)
    half = 4.0
    sub = crop(img, center, half)
    # the smallest voxel box whose centres reach +-half around the centre
    n_expected = [2 * int(np.ceil(half / s - 1e-9)) + 1 for s in spacing]
    assert list(sub.GetSize()) == n_expected
    assert_same_world_content(sub, img)
    np.testing.assert_allclose(world_to_index(sub, center), np.array(n_expected) // 2, atol=1e-9)
    # near the border the box is clipped to the image
    corner = crop(img, index_to_world(img, (0, 0, 0)), (3.0, 3.0, 100.0))
    assert corner.GetOrigin() == pytest.approx(img.GetOrigin())
    assert corner.GetSize()[2] == 10
    with pytest.raises(GeometryError, match="outside the image"):
        crop(img, index_to_world(img, (-3, 0, 0)), 5.0)
    with pytest.raises(GeometryError, match="half_size_mm"):
        crop(img, center, -1.0)


def test_scan_dataclasses_are_frozen(tmp_path):
    scan = load_scan(write_volume(make_image((3, 4, 5)), tmp_path / "c.mha"))
    assert isinstance(scan, Scan) and isinstance(scan.info, ScanInfo)
    with pytest.raises(AttributeError):
        scan.info.kvp = 1.0  # type: ignore[misc]
