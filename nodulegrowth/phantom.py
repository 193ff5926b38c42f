"""Synthetic paired chest-CT phantoms with analytically known nodule truth.

The whole project measures itself against this module, so the phantom is

* **realistic enough**: a full chest in Hounsfield units (air, skin,
  subcutaneous fat, muscle, ribs, sternum, vertebrae, mediastinum, heart,
  aorta, trachea and main bronchi, two lungs with a gravity gradient and
  texture, a random branching pulmonary vessel tree, liver and stomach below
  the diaphragm), blurred by an in-plane Gaussian point-spread function,
  averaged over the slice thickness (box profile along z) and corrupted by
  slightly correlated Gaussian noise;
* **deterministic**: everything derives from ``numpy.random.default_rng``
  seeded by ``seed`` (independent child streams for anatomy, nodules,
  repositioning, acquisition and tags, so overriding one part does not
  change the others);
* **honest**: the truth (centres, volumes, diameters) is computed from the
  continuous shapes -- analytically for spheres and ellipsoids, by
  converged numerical integration of the implicit function otherwise --
  never from the rendered voxels.

Frames
------
The anatomy lives in a *body frame* (LPS, mm). The T1 world frame **is** the
body frame. The T2 world frame is related to it by a smooth breathing
deformation followed by a rigid repositioning (see :class:`PairGeometry`):

.. math::

    \\mathbf{w}_2 = F(\\mathbf{b}) = R\\,(B(\\mathbf{b}) - \\mathbf{c}) + \\mathbf{c} + \\mathbf{t}

where :math:`B` is the breathing map, :math:`R, \\mathbf{t}` the rigid
rotation and translation and :math:`\\mathbf{c}` the body centre. The inverse
:math:`F^{-1}` is closed-form (the breathing map is *defined* through its
inverse), the forward map is solved numerically for nodule centres.

Nodules are not deformed by breathing (tissue is incompressible): at T2 a
nodule is the T1 shape rotated by :math:`R`, scaled isotropically by
:math:`r^{1/3}` (:math:`r` = volume ratio T2/T1) and centred at
:math:`F(\\mathbf{c}_1)`.

Public API
----------
:func:`make_pair`, :func:`write_pair`, :func:`write_cohort`,
:func:`manifest_rows` and the dataclasses :class:`ScanSpec`,
:class:`NoduleSpec`, :class:`PairSpec`, :class:`PhantomPair`,
:class:`PairGeometry`.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import logging
import math
import os
import shutil
import time as _time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy.spatial import ConvexHull
from scipy.spatial.transform import Rotation

from .errors import GeometryError, PhantomSpecError

logger = logging.getLogger(__name__)

__all__ = [
    "PhantomSpecError",
    "ScanSpec",
    "NoduleSpec",
    "PairSpec",
    "PairGeometry",
    "PhantomPair",
    "PRESETS",
    "make_pair",
    "write_pair",
    "write_cohort",
    "manifest_rows",
    "TRUTH_COLUMNS",
    "MANIFEST_COLUMNS",
]


KINDS = ("solid", "ground_glass", "part_solid")
SHAPES = ("sphere", "ellipsoid", "lobulated")
LOCATIONS = ("isolated", "juxtavascular", "juxtapleural")

TRUTH_COLUMNS = [
    "patient_id", "nodule_id", "kind", "shape", "location",
    "t1_x", "t1_y", "t1_z", "t2_x", "t2_y", "t2_z",
    "t1_volume_mm3", "t2_volume_mm3",
    "t1_long_axis_mm", "t1_short_axis_mm", "t1_mean_diameter_mm", "t1_max_3d_diameter_mm",
    "t2_long_axis_mm", "t2_short_axis_mm", "t2_mean_diameter_mm", "t2_max_3d_diameter_mm",
    "t1_solid_volume_mm3", "t2_solid_volume_mm3",
    "interval_days", "volume_ratio", "t1_date", "t2_date",
    "volume_rel_precision", "diameter_precision_mm",
]

MANIFEST_COLUMNS = [
    "patient_id", "nodule_id", "t1_image", "t2_image", "t1_date", "t2_date",
    "t1_x", "t1_y", "t1_z", "t1_i", "t1_j", "t1_k", "t2_x", "t2_y", "t2_z",
    "t1_diameter_mm", "t2_diameter_mm", "diagnosis",
]

# HU of the tissues (typical values, e.g. Lev & Gonzalez, "CT Angiography",
# and standard CT tables); lung parenchyma ~ -850 at full inspiration.
HU_AIR = -1000.0
HU_FAT = -100.0
HU_SKIN = 30.0
HU_MUSCLE = 45.0
HU_BLOOD = 40.0
HU_MEDIASTINAL_FAT = -90.0
HU_LIVER = 55.0
HU_LUNG = -855.0
HU_CORTICAL = 850.0
HU_CANCELLOUS = 230.0
HU_DISC = 90.0
HU_CSF = 20.0
HU_PAD = -1024.0  # value outside the circular reconstruction field of view
#: HU of a nodule's central lucency (air in a cavity or bubble-like lucency)
LUCENCY_HU = HU_AIR


# ---------------------------------------------------------------------------
# specifications
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ScanSpec:
    """Acquisition geometry and physics of one phantom scan.

    Attributes
    ----------
    size_xy : int
        Number of rows = columns of the axial slices.
    spacing_xy : float
        In-plane pixel spacing in mm.
    n_slices : int
        Number of axial slices.
    slice_spacing : float
        Distance in mm between slice centres along z.
    slice_thickness : float
        Reconstructed slice thickness in mm: the full width of the box
        profile over which each slice averages the object along z.
    noise_sd : float
        Standard deviation of the added noise in HU.
    psf_fwhm_mm : float or None
        Full width at half maximum of the in-plane Gaussian point-spread
        function in mm; ``None`` uses ``max(0.9, spacing_xy)``.
    correlated_noise : bool
        If True the noise is smoothed in-plane by a binomial [1, 2, 1] / 4
        kernel per axis (correlation length ~0.7 pixel, like the fine grain
        of CT noise), else white.
    z_coverage_center : float
        Centre of the scanned z range relative to the carina level, in mm
        (body frame), before repositioning.
    center_offset_xy : tuple of 2 float
        Offset in mm of the field-of-view centre from the body centre (x, y).
    direction : tuple of 9 float or None
        Row-major direction cosine matrix (ITK order); ``None`` = identity.
    fov_circle : bool
        If True, voxels outside the inscribed circle of the axial field of
        view are set to -1024 HU like the padding of real scanners.
    kvp, kernel, manufacturer, model : str or float
        Acquisition tags reported in the DICOM tags.

    Examples
    --------
    >>> ScanSpec(size_xy=512, spacing_xy=0.7, slice_thickness=1.0).psf_fwhm
    0.9
    """

    size_xy: int = 160
    spacing_xy: float = 2.25
    n_slices: int = 100
    slice_spacing: float = 2.5
    slice_thickness: float = 2.5
    noise_sd: float = 12.0
    psf_fwhm_mm: float | None = None
    correlated_noise: bool = True
    z_coverage_center: float = -35.0
    center_offset_xy: tuple[float, float] = (0.0, 0.0)
    direction: tuple[float, ...] | None = None
    fov_circle: bool = True
    kvp: float = 120.0
    kernel: str = "B40f"
    manufacturer: str = "SIEMENS"
    model: str = "SOMATOM Definition AS"

    def validate(self, name: str = "scan") -> None:
        """Raise :class:`PhantomSpecError` if a field is out of range."""
        if int(self.size_xy) < 16 or int(self.n_slices) < 4:
            raise PhantomSpecError(
                f"{name}: size_xy={self.size_xy}, n_slices={self.n_slices} too small; use >= 16 and >= 4"
            )
        for key in ("spacing_xy", "slice_spacing", "slice_thickness"):
            v = float(getattr(self, key))
            if not (0.1 <= v <= 10.0):
                raise PhantomSpecError(f"{name}: {key}={v} mm outside [0.1, 10]; give a CT-like spacing")
        if float(self.noise_sd) < 0:
            raise PhantomSpecError(f"{name}: noise_sd={self.noise_sd} < 0; use a non-negative HU value")
        if self.direction is not None:
            d = np.asarray(self.direction, float).reshape(3, 3) if len(self.direction) == 9 else None
            if d is None or not np.allclose(d.T @ d, np.eye(3), atol=1e-6):
                raise PhantomSpecError(f"{name}: direction={self.direction} is not an orthonormal 3x3 matrix")

    @property
    def direction_matrix(self) -> np.ndarray:
        """3x3 direction matrix (columns = world directions of i, j, k)."""
        if self.direction is None:
            return np.eye(3)
        return np.asarray(self.direction, float).reshape(3, 3)

    @property
    def psf_fwhm(self) -> float:
        """Effective in-plane PSF FWHM in mm."""
        return float(self.psf_fwhm_mm) if self.psf_fwhm_mm is not None else max(0.9, float(self.spacing_xy))


@dataclass(frozen=True)
class NoduleSpec:
    """What nodule to draw; ``None`` fields are drawn at random from the seed.

    Attributes
    ----------
    kind : {'solid', 'ground_glass', 'part_solid'} or None
    shape : {'sphere', 'ellipsoid', 'lobulated'} or None
        ``ellipsoid`` = rotated ellipsoid with random orientation and axis
        ratios; ``lobulated`` = union of a central sphere and 3-5
        overlapping lobes (spheres).
    location : {'isolated', 'juxtavascular', 'juxtapleural'} or None
    diameter_mm : float or None
        T1 size as the volume-equivalent sphere diameter
        :math:`d = (6V/\\pi)^{1/3}` of the unclipped shape, 4-30 mm.
    volume_ratio : float or None
        :math:`V_2 / V_1` of the shape (1 = stable, > 1 growth, < 1
        shrinkage); the shape is scaled isotropically by its cube root.
    side : {'left', 'right'} or None
        Lung (patient's left = +x in LPS).
    core_fraction : float or None
        Part-solid only: linear size of the solid core relative to the whole
        nodule, in (0, 1).
    hu : float or None
        HU of the (solid or ground-glass) nodule tissue.
    core_hu : float or None
        HU of the solid core of a part-solid nodule.
    lucency_fraction : float
        Radius of a central air-filled lucency (a bubble-like lucency or a
        cavity, :data:`LUCENCY_HU`) relative to the shape's inscribed radius
        at its centre (the sphere's radius, the ellipsoid's smallest
        semi-axis, a lobulated shape's central lobe radius), in [0, 0.7];
        0 (the default, never drawn at random)
        means none. The lucency is part of the nodule, as in Lung-RADS and
        Fleischner measurements: the truth (volume, diameters) is that of the
        whole shape; it scales with the nodule.

    Examples
    --------
    >>> NoduleSpec(kind="part_solid", diameter_mm=12.0, volume_ratio=1.5).validate()
    >>> NoduleSpec(diameter_mm=50.0).validate()
    Traceback (most recent call last):
    ...
    nodulegrowth.errors.PhantomSpecError: nodule: diameter_mm=50.0 outside [4, 30] mm
    """

    kind: str | None = None
    shape: str | None = None
    location: str | None = None
    diameter_mm: float | None = None
    volume_ratio: float | None = None
    side: str | None = None
    core_fraction: float | None = None
    hu: float | None = None
    core_hu: float | None = None
    lucency_fraction: float = 0.0

    def validate(self, name: str = "nodule") -> None:
        """Raise :class:`PhantomSpecError` if a given field is invalid."""
        for key, allowed in (("kind", KINDS), ("shape", SHAPES), ("location", LOCATIONS),
                             ("side", ("left", "right"))):
            v = getattr(self, key)
            if v is not None and v not in allowed:
                raise PhantomSpecError(f"{name}: {key}={v!r} unknown; use one of {allowed}")
        if self.diameter_mm is not None and not (4.0 <= float(self.diameter_mm) <= 30.0):
            raise PhantomSpecError(f"{name}: diameter_mm={self.diameter_mm} outside [4, 30] mm")
        if self.volume_ratio is not None and not (0.05 <= float(self.volume_ratio) <= 20.0):
            raise PhantomSpecError(
                f"{name}: volume_ratio={self.volume_ratio} outside [0.05, 20]; 1.0 means stable"
            )
        if self.core_fraction is not None and not (0.1 <= float(self.core_fraction) <= 0.9):
            raise PhantomSpecError(f"{name}: core_fraction={self.core_fraction} outside [0.1, 0.9]")
        if not (0.0 <= float(self.lucency_fraction) <= 0.7):
            raise PhantomSpecError(
                f"{name}: lucency_fraction={self.lucency_fraction} outside [0, 0.7]; 0 means no lucency"
            )


@dataclass(frozen=True)
class PairSpec:
    """Everything that defines a phantom pair; ``None`` = random from the seed.

    Attributes
    ----------
    t1_scan, t2_scan : ScanSpec
        Acquisition of each time point.
    nodules : tuple of NoduleSpec or None
        Nodules to draw; ``None`` draws ``n_nodules`` random ones.
    n_nodules : int or None
        Number of random nodules (1-3 when ``None``).
    translation_mm : tuple of 3 float or None
        Rigid translation (x, y, z) of T2 in mm, each in [-20, 20].
    rotation_deg : tuple of 3 float or None
        Rigid rotation angles about x, y, z (extrinsic, degrees), each in
        [-5, 5], about the body centre.
    breathing_cc, breathing_ap : float or None
        Relative craniocaudal (|.| <= 0.08) and anteroposterior
        (|.| <= 0.04) stretch of the chest at T2 (positive = deeper breath).
    interval_days : int or None
        Days between T1 and T2.
    t1_date : datetime.date or None
        Date of T1.
    patient_id : str or None
        Pseudonymous patient identifier (default derived from the seed).
    """

    t1_scan: ScanSpec = field(default_factory=ScanSpec)
    t2_scan: ScanSpec = field(default_factory=ScanSpec)
    nodules: tuple[NoduleSpec, ...] | None = None
    n_nodules: int | None = None
    translation_mm: tuple[float, float, float] | None = None
    rotation_deg: tuple[float, float, float] | None = None
    breathing_cc: float | None = None
    breathing_ap: float | None = None
    interval_days: int | None = None
    t1_date: _dt.date | None = None
    patient_id: str | None = None


PRESETS: dict[str, dict[str, ScanSpec]] = {
    # coarse full-chest phantom for tests and the shipped samples
    "small": {
        "t1": ScanSpec(size_xy=160, spacing_xy=2.25, n_slices=100, slice_spacing=2.5,
                       slice_thickness=2.5, noise_sd=12.0),
        "t2": ScanSpec(size_xy=160, spacing_xy=2.3, n_slices=104, slice_spacing=2.5,
                       slice_thickness=2.5, noise_sd=14.0, kernel="B45f",
                       z_coverage_center=-33.0),
    },
    # clinical thin-slice chest CT: 512 x 512 at 0.7 mm, 250 slices of 1 mm
    "full": {
        "t1": ScanSpec(size_xy=512, spacing_xy=0.7, n_slices=250, slice_spacing=1.0,
                       slice_thickness=1.0, noise_sd=18.0, psf_fwhm_mm=0.9),
        "t2": ScanSpec(size_xy=512, spacing_xy=0.72, n_slices=260, slice_spacing=1.0,
                       slice_thickness=1.25, noise_sd=22.0, psf_fwhm_mm=1.0, kernel="B45f",
                       z_coverage_center=-32.0),
    },
}


# ---------------------------------------------------------------------------
# small numeric helpers
# ---------------------------------------------------------------------------


def _occ(sd: np.ndarray, h: float) -> np.ndarray:
    """Anti-aliased occupancy of ``sd < 0`` (linear ramp one voxel wide).

    A ramp of width :math:`h` in the signed distance approximates the area
    fraction of a voxel of size :math:`h` cut by a locally flat surface:
    :math:`o = \\mathrm{clip}(1/2 - s/h, 0, 1)`.
    """
    return np.clip(0.5 - sd / h, 0.0, 1.0).astype(np.float32, copy=False)


def _blend(v: np.ndarray, hu: float | np.ndarray, occ: np.ndarray) -> None:
    """In place: tissue ``hu`` replaces ``v`` by the occupancy fraction."""
    v *= 1.0 - occ
    v += occ * hu


def _ellipse_sd(x, y, a, b):
    """First-order signed distance (mm) to the ellipse (x/a)^2 + (y/b)^2 = 1.

    :math:`s \\approx (\\rho - 1)/|\\nabla \\rho|` with
    :math:`\\rho = \\sqrt{x^2/a^2 + y^2/b^2}`; exact on the curve, adequate
    for a one-voxel anti-aliasing ramp.
    """
    qx = x / a
    qy = y / b
    rho = np.sqrt(qx * qx + qy * qy)
    grad = np.sqrt((qx / a) ** 2 + (qy / b) ** 2) / np.maximum(rho, 1e-6)
    return (rho - 1.0) / np.maximum(grad, 1e-6)


def _ellipsoid_sd(x, y, z, a, b, c):
    """First-order signed distance (mm) to an axis-aligned ellipsoid."""
    qx, qy, qz = x / a, y / b, z / c
    rho = np.sqrt(qx * qx + qy * qy + qz * qz)
    grad = np.sqrt((qx / a) ** 2 + (qy / b) ** 2 + (qz / c) ** 2) / np.maximum(rho, 1e-6)
    return (rho - 1.0) / np.maximum(grad, 1e-6)


def _segment_distance(px, py, pz, p0, p1):
    """Distance (mm) from points to the segment p0-p1 and the position t in [0, 1]."""
    d = p1 - p0
    dd = float(d @ d)
    t = ((px - p0[0]) * d[0] + (py - p0[1]) * d[1] + (pz - p0[2]) * d[2]) / max(dd, 1e-12)
    t = np.clip(t, 0.0, 1.0)
    ex = px - (p0[0] + t * d[0])
    ey = py - (p0[1] + t * d[1])
    ez = pz - (p0[2] + t * d[2])
    return np.sqrt(ex * ex + ey * ey + ez * ez), t


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


# ---------------------------------------------------------------------------
# anatomy
# ---------------------------------------------------------------------------


@dataclass
class _Vessel:
    p0: np.ndarray  # body-frame LPS mm
    p1: np.ndarray
    r: float        # radius in mm
    generation: int


class _Anatomy:
    """Seeded analytic chest in the body frame (coordinates relative to ``center``).

    All shape functions take broadcastable arrays ``X, Y, Z`` of *relative*
    coordinates (mm, LPS, origin at the body centre on the carina level) and
    return approximate signed distances in mm (negative inside).
    """

    def __init__(self, rng: np.random.Generator, center: np.ndarray):
        u = rng.uniform
        self.center = np.asarray(center, float)
        self.ax = 150.0 * u(0.95, 1.04)
        self.ay = 112.0 * u(0.95, 1.04)
        self.fat = u(8.0, 16.0)
        self.muscle = u(8.0, 12.0)
        self.skin = 2.0
        self.cax = self.ax - self.skin - self.fat - self.muscle - 12.0
        self.cay = self.ay - self.skin - self.fat - self.muscle - 14.0
        self.cyc = -4.0
        self.z_apex = u(70.0, 85.0)
        self.dome_r = -u(85.0, 100.0)   # right hemidiaphragm is higher (liver)
        self.dome_l = self.dome_r - u(8.0, 18.0)
        self.recess = 55.0
        self.spine_y = self.cyc + self.cay - 8.0
        self.rib_period = u(24.0, 28.0)
        self.rib_top = self.z_apex + u(0.0, 10.0)
        self.rib_drop = u(35.0, 50.0)
        self.vert_period = u(25.0, 29.0)
        self.vert_phase = u(0.0, 1.0)
        # python floats keep float32 arrays float32 (NumPy 2 promotion rules)
        self.heart_c = (u(10.0, 20.0), self.cyc - 20.0, self.dome_r + u(5.0, 15.0))
        self.heart_r = (u(55.0, 65.0), u(45.0, 52.0), u(45.0, 52.0))
        self.trachea_y = self.cyc + 22.0
        self.carina_z = -10.0
        self.hilum = {
            "right": np.array([-u(45.0, 52.0), self.cyc + 24.0, self.carina_z - u(20.0, 30.0)]),
            "left": np.array([u(45.0, 52.0), self.cyc + 24.0, self.carina_z - u(30.0, 40.0)]),
        }
        self.gravity_hu = u(25.0, 45.0)
        self.texture_hu = u(10.0, 18.0)
        self.vessels: list[_Vessel] = []
        self._grow_vessels(rng)

    # -- regions -------------------------------------------------------------
    def body_scale(self, Z):
        """Body cross-section shrinks slightly towards the neck."""
        return 1.0 - 0.10 * _smoothstep((Z - 40.0) / 90.0)

    def body_sd(self, X, Y, Z):
        s = self.body_scale(Z)
        return _ellipse_sd(X, Y, self.ax * s, self.ay * s)

    def cavity_sd(self, X, Y, Z):
        """Thoracic cavity (inside the ribs), unbounded along z."""
        s = self.body_scale(Z)
        return _ellipse_sd(X, Y - self.cyc, self.cax * s, self.cay * s)

    def mediastinum_sd(self, X, Y, Z):
        """Union of heart, superior, posterior and anterior mediastinum."""
        hc, hr = self.heart_c, self.heart_r
        heart = _ellipsoid_sd(X - hc[0], Y - hc[1], Z - hc[2], hr[0], hr[1], hr[2])
        w_sup = 24.0 + 10.0 * _smoothstep((-Z - 20.0) / 40.0)
        sup = _ellipse_sd(X, Y - (self.cyc + 5.0), w_sup, 52.0)
        sup = np.maximum(sup, (self.heart_c[2] - 10.0) - Z)
        post = _ellipse_sd(X, Y - (self.spine_y - 6.0), 30.0, 24.0)
        ant = _ellipse_sd(X, Y - (self.cyc - self.cay + 15.0), 12.0, 30.0)
        return np.minimum(np.minimum(heart, sup), np.minimum(post, ant))

    def diaphragm_sd(self, X, Y, Z):
        """Signed distance (along z) to the domed diaphragm; negative above it."""
        wl = _smoothstep((X + 20.0) / 40.0)  # 0 on the right, 1 on the left
        dome = self.dome_r * (1.0 - wl) + self.dome_l * wl
        xc = np.where(X < 0, X + 60.0, X - 60.0)
        zd = dome - self.recess * np.clip((xc / 85.0) ** 2 + ((Y - self.cyc) / 75.0) ** 2, 0.0, 1.6)
        return zd - Z

    def apex_sd(self, X, Y, Z):
        """Lung apices: domes above ``z_apex - 45`` mm, one per lung."""
        z0 = self.z_apex - 45.0
        xc = np.abs(X) - 62.0
        dz = np.maximum(Z - z0, 0.0)
        return _ellipsoid_sd(xc, Y - self.cyc - 5.0, dz, 75.0, 70.0, 45.0) * (Z > z0) - 1e3 * (Z <= z0)

    def lung_sd(self, X, Y, Z):
        """Both lungs: cavity minus mediastinum, above the diaphragm, below the apex."""
        return np.maximum(
            np.maximum(self.cavity_sd(X, Y, Z), -self.mediastinum_sd(X, Y, Z)),
            np.maximum(self.diaphragm_sd(X, Y, Z), self.apex_sd(X, Y, Z)),
        )

    def lung_sd_points(self, pts_body: np.ndarray) -> np.ndarray:
        """Lung signed distance at body-frame world points (N, 3) (x, y, z)."""
        rel = np.atleast_2d(pts_body) - self.center
        return self.lung_sd(rel[:, 0], rel[:, 1], rel[:, 2])

    def cavity_sd_points(self, pts_body: np.ndarray) -> np.ndarray:
        rel = np.atleast_2d(pts_body) - self.center
        return self.cavity_sd(rel[:, 0], rel[:, 1], rel[:, 2])

    # -- vessel tree -----------------------------------------------------------
    def _grow_vessels(self, rng: np.random.Generator) -> None:
        """Random but deterministic bifurcating pulmonary vessel trees.

        Radii shrink by ~0.74 per generation (Murray's law for a symmetric
        bifurcation gives :math:`2^{-1/3} \\approx 0.79`; Murray, PNAS 1926)
        from ~5 mm at the hila to ~1 mm, lengths by ~0.8.
        """
        roots = {
            "right": [(-0.3, 0.05, 1.0), (-0.9, 0.1, 0.6), (-1.0, -0.5, -0.2), (-0.5, -0.8, -0.5),
                      (-0.4, 0.3, -1.0), (-0.8, 0.6, -0.6)],
            "left": [(0.3, 0.05, 1.0), (0.9, 0.1, 0.6), (1.0, -0.4, -0.1), (0.5, -0.7, -0.6),
                     (0.4, 0.3, -1.0), (0.8, 0.6, -0.6)],
        }
        for side, dirs in roots.items():
            h = self.hilum[side]
            for d in dirs:
                d = np.asarray(d, float) + rng.normal(0, 0.1, 3)
                self._branch(rng, h, d / np.linalg.norm(d), r=rng.uniform(4.2, 5.2),
                             length=rng.uniform(24.0, 32.0), gen=0, hilum=h)

    def _inside_lung(self, pts: np.ndarray, margin: float) -> bool:
        return bool(np.all(self.lung_sd(pts[:, 0], pts[:, 1], pts[:, 2]) < -margin))

    def _branch(self, rng, p0, d, r, length, gen, hilum) -> None:
        # shorten the branch until it stays inside the lung (roots start at
        # the hilum, i.e. on the mediastinal border, so skip their first part)
        t0 = 0.35 if gen == 0 else 0.0
        for attempt in range(4):
            p1 = p0 + d * length * (0.75 ** attempt)
            pts = p0 + np.linspace(t0, 1.0, 6)[:, None] * (p1 - p0)
            if self._inside_lung(pts, margin=0.5 * r + 0.5):
                break
        else:
            return
        self.vessels.append(_Vessel(p0.copy(), p1.copy(), float(r), gen))
        r_child = r * rng.uniform(0.76, 0.86)
        if r_child < 0.85 or gen >= 10:
            return
        # two children in a random plane containing d, diverging from it
        e = rng.normal(size=3)
        e -= (e @ d) * d
        e /= np.linalg.norm(e)
        out = p1 - hilum
        out /= max(np.linalg.norm(out), 1e-6)
        for sign, ang in ((1.0, rng.uniform(20, 40)), (-1.0, rng.uniform(25, 45))):
            a = math.radians(ang)
            dc = math.cos(a) * d + sign * math.sin(a) * e + 0.25 * out
            dc /= np.linalg.norm(dc)
            self._branch(rng, p1, dc, r_child, length * rng.uniform(0.72, 0.86), gen + 1, hilum)

    # -- rendering -------------------------------------------------------------
    def render_slab(self, x: np.ndarray, y: np.ndarray, z: np.ndarray, h: float,
                    texture: np.ndarray) -> np.ndarray:
        """HU of the anatomy without vessels on an axis-aligned grid.

        Structures are drawn back to front (air, skin, fat, muscle, ribs,
        cavity contents, lungs, mediastinal organs, spine, airways), each
        blended by its anti-aliased occupancy; localized structures are
        evaluated only in their bounding boxes, the ribs and lungs only where
        they can be, which keeps the full preset fast.

        Parameters
        ----------
        x, y, z : ndarray, shape (nx,), (ny,), (nz,)
            Body-frame world coordinates (mm) of the grid lines.
        h : float
            Voxel size (mm) for the anti-aliasing ramp.
        texture : ndarray, shape (nz, ny, nx)
            Zero-mean unit-variance smooth random field for lung texture.

        Returns
        -------
        ndarray, float32, shape (nz, ny, nx)
        """
        xr = (x - self.center[0]).astype(np.float32)
        yr = (y - self.center[1]).astype(np.float32)
        zr = (z - self.center[2]).astype(np.float32)
        shape = (zr.size, yr.size, xr.size)
        v = np.full(shape, HU_AIR, np.float32)

        def box(xlo, xhi, ylo, yhi, zlo=-1e9, zhi=1e9):
            """Slices of the slab inside a relative bounding box and its coordinates."""
            i0, i1 = np.searchsorted(xr, [xlo - 2 * h, xhi + 2 * h])
            j0, j1 = np.searchsorted(yr, [ylo - 2 * h, yhi + 2 * h])
            k0, k1 = np.searchsorted(zr, [zlo - 2 * h, zhi + 2 * h])
            if i1 <= i0 or j1 <= j0 or k1 <= k0:
                return None
            sl = (slice(k0, k1), slice(j0, j1), slice(i0, i1))
            return sl, xr[None, None, i0:i1], yr[None, j0:j1, None], zr[k0:k1, None, None]

        s_body = self.body_scale(zr)[:, None, None]
        b = box(-self.ax, self.ax, -self.ay, self.ay)
        if b is None:
            return v
        sl, X, Y, Z = b
        vb = v[sl]
        body = _ellipse_sd(X, Y, self.ax * s_body, self.ay * s_body)
        _blend(vb, HU_SKIN, _occ(body, h))
        _blend(vb, HU_FAT, _occ(body + self.skin, h))
        _blend(vb, HU_MUSCLE, _occ(body + self.skin + self.fat, h))
        del body
        # ----- ribs, only in the band just outside the cavity
        cav = _ellipse_sd(X, Y - self.cyc, self.cax * s_body, self.cay * s_body)
        band = np.nonzero((cav > -1.0) & (cav < 12.0))
        if band[0].size:
            Xb = np.broadcast_to(X, cav.shape)[band]
            Yb = np.broadcast_to(Y, cav.shape)[band]
            Zb = np.broadcast_to(Z, cav.shape)[band]
            sb = np.broadcast_to(s_body, cav.shape)[band]
            cb = cav[band]
            phi = np.arctan2(np.abs(Xb / (self.cax * sb)), (Yb - self.cyc) / (self.cay * sb))
            zc0 = self.rib_top - self.rib_drop * (1.0 - np.cos(phi)) / 2.0
            uu = (zc0 - Zb) / self.rib_period
            k = np.rint(uu)
            dz = (uu - k) * self.rib_period
            valid = (k >= 0) & (k <= 11) & (phi > 0.25) & (phi < 2.55)
            valid &= (zc0 - k * self.rib_period) > (min(self.dome_l, self.dome_r) - self.recess - 10.0)
            q = np.sqrt(((cb - 5.5) / 3.5) ** 2 + (dz / 5.5) ** 2)
            vals = vb[band]
            _blend(vals, HU_CORTICAL, _occ((q - 1.0) * 3.5, h) * valid)
            _blend(vals, HU_CANCELLOUS, _occ((q - 0.6) * 3.5, h) * valid)
            vb[band] = vals
        # ----- sternum
        ys = self.cyc - self.cay - 9.0
        bs = box(-16, 16, ys - 20, ys + 8, -130, 55)
        if bs is not None:
            sl2, X2, Y2, Z2 = bs
            ys2 = self.cyc - self.cay * self.body_scale(Z2) - 9.0
            st = np.maximum(_ellipse_sd(X2, Y2 - ys2, 14.0, 6.0), np.maximum(Z2 - 55.0, -130.0 - Z2))
            _blend(v[sl2], HU_CORTICAL, _occ(st, h))
            _blend(v[sl2], HU_CANCELLOUS, _occ(st + 1.8, h))
        # ----- cavity contents and lungs, only inside the cavity
        inside = np.nonzero(cav < h)
        if inside[0].size:
            Xc = np.broadcast_to(X, cav.shape)[inside]
            Yc = np.broadcast_to(Y, cav.shape)[inside]
            Zc = np.broadcast_to(Z, cav.shape)[inside]
            cc = cav[inside]
            vals = vb[inside]
            dia = self.diaphragm_sd(Xc, Yc, Zc)
            fill = np.where(dia < 0, np.float32(HU_MEDIASTINAL_FAT), np.float32(HU_LIVER))
            _blend(vals, fill, _occ(cc, h))
            # the mediastinum lies within |x - 10| < 90 mm and the apex domes
            # above z_apex - 45: evaluate them only there
            lung = np.maximum(cc, dia)
            sel = np.nonzero(np.abs(Xc - 10.0) < 90.0)
            lung[sel] = np.maximum(lung[sel], -self.mediastinum_sd(Xc[sel], Yc[sel], Zc[sel]))
            sel = np.nonzero(Zc > self.z_apex - 45.0)
            lung[sel] = np.maximum(lung[sel], self.apex_sd(Xc[sel], Yc[sel], Zc[sel]))
            tex = texture[sl][inside]
            lung_hu = (HU_LUNG + self.gravity_hu * (Yc - self.cyc) / self.cay + self.texture_hu * tex)
            _blend(vals, lung_hu.astype(np.float32), _occ(lung, h))
            vb[inside] = vals
            del Xc, Yc, Zc, cc, vals, dia, fill, lung, tex, lung_hu
        del cav, inside
        # ----- stomach gas bubble under the left dome
        zg = self.dome_l - 25.0
        bg = box(25, 85, self.cyc - 45, self.cyc + 5, zg - 16, zg + 16)
        if bg is not None:
            sl2, X2, Y2, Z2 = bg
            gas = _ellipsoid_sd(X2 - 55.0, Y2 - self.cyc + 20.0, Z2 - zg, 20.0, 16.0, 10.0)
            _blend(v[sl2], HU_AIR, _occ(np.maximum(gas, -self.diaphragm_sd(X2, Y2, Z2) - 6.0), h))
        # ----- heart, great vessels, oesophagus
        hc, hr = self.heart_c, tuple(r - 4.0 for r in self.heart_r)
        bh = box(hc[0] - hr[0], hc[0] + hr[0], hc[1] - hr[1], hc[1] + hr[1], hc[2] - hr[2], hc[2] + hr[2])
        if bh is not None:
            sl2, X2, Y2, Z2 = bh
            _blend(v[sl2], HU_BLOOD, _occ(_ellipsoid_sd(X2 - hc[0], Y2 - hc[1], Z2 - hc[2], *hr), h))
        zh = hc[2] + hr[2] - 8.0
        for (cx, cy, r, zlo, zhi) in (
            (22.0, self.spine_y - 18.0, 12.0, -1e3, 1e3),            # descending aorta
            (8.0, self.cyc - 12.0, 15.0, zh, self.carina_z + 25.0),  # ascending aorta
            (-20.0, self.cyc - 6.0, 10.0, zh, 1e3),                  # superior vena cava
            (0.0, self.spine_y - 25.0, 7.0, -1e3, 1e3),              # oesophagus
        ):
            bv = box(cx - r, cx + r, cy - r, cy + r, zlo, zhi)
            if bv is None:
                continue
            sl2, X2, Y2, Z2 = bv
            cyl = np.maximum(np.sqrt((X2 - cx) ** 2 + (Y2 - cy) ** 2) - r, np.maximum(zlo - Z2, Z2 - zhi))
            _blend(v[sl2], HU_BLOOD, _occ(cyl, h))
        # ----- spine: vertebral bodies with discs, canal, arch, spinous process
        sy = self.spine_y
        bsp = box(-16, 16, sy - 16, sy + 45)
        if bsp is not None:
            sl2, X2, Y2, Z2 = bsp
            vs = v[sl2]
            vbody = np.sqrt(X2 ** 2 + (Y2 - sy) ** 2)
            ph = ((Z2 / self.vert_period + self.vert_phase) % 1.0) * self.vert_period
            disc = (ph < 5.0).astype(np.float32)
            _blend(vs, HU_CORTICAL * (1 - disc) + HU_DISC * disc, _occ(vbody - 15.0, h))
            _blend(vs, HU_CANCELLOUS, _occ(vbody - 13.5, h) * (1 - disc))
            yc = sy + 23.0
            canal = np.sqrt(X2 ** 2 + (Y2 - yc) ** 2)
            _blend(vs, 600.0, _occ(np.maximum(canal - 10.5, yc - 4.0 - Y2), h))
            _blend(vs, 600.0, _occ(_ellipse_sd(X2, Y2 - (yc + 13.0), 4.0, 7.0), h))
            _blend(vs, HU_CSF, _occ(canal - 6.0, h))
        # ----- trachea and main bronchi (air with a soft-tissue wall)
        ty = self.trachea_y
        bt = box(-11, 11, ty - 11, ty + 11, self.carina_z - 11, 1e9)
        if bt is not None:
            sl2, X2, Y2, Z2 = bt
            tr = np.maximum(np.sqrt(X2 ** 2 + (Y2 - ty) ** 2), self.carina_z - Z2)
            _blend(v[sl2], HU_MUSCLE, _occ(tr - 10.0, h))
            _blend(v[sl2], HU_AIR, _occ(tr - 8.0, h))
        car = np.array([0.0, ty, self.carina_z])
        for side in ("right", "left"):
            hl = self.hilum[side]
            lo, hi = np.minimum(car, hl) - 8.0, np.maximum(car, hl) + 8.0
            bb = box(lo[0], hi[0], lo[1], hi[1], lo[2], hi[2])
            if bb is None:
                continue
            sl2, X2, Y2, Z2 = bb
            d, _ = _segment_distance(X2, Y2, Z2, car, hl)
            _blend(v[sl2], HU_MUSCLE, _occ(d - 7.0, h))
            _blend(v[sl2], HU_AIR, _occ(d - 5.0, h))
        return v

    def render_vessels(self, arr: np.ndarray, origin: np.ndarray, spacing: np.ndarray) -> None:
        """Draw the vessel tree into an axis-aligned body-frame array (in place).

        Each vessel is a capsule of constant radius; it is drawn only in its
        bounding box so the cost is proportional to the vessel volume.
        ``origin`` and ``spacing`` are (x, y, z) in mm; ``arr`` is (z, y, x).
        """
        h = float(min(spacing[0], spacing[1]))
        shape_xyz = np.array(arr.shape[::-1])
        for ves in self.vessels:
            p0 = ves.p0 + self.center
            p1 = ves.p1 + self.center
            lo = np.minimum(p0, p1) - ves.r - 2 * h
            hi = np.maximum(p0, p1) + ves.r + 2 * h
            ilo = np.clip(np.floor((lo - origin) / spacing).astype(int), 0, shape_xyz)
            ihi = np.clip(np.ceil((hi - origin) / spacing).astype(int) + 1, 0, shape_xyz)
            if np.any(ihi <= ilo):
                continue
            xs = (origin[0] + spacing[0] * np.arange(ilo[0], ihi[0]))[None, None, :]
            ys = (origin[1] + spacing[1] * np.arange(ilo[1], ihi[1]))[None, :, None]
            zs = (origin[2] + spacing[2] * np.arange(ilo[2], ihi[2]))[:, None, None]
            d, _ = _segment_distance(xs, ys, zs, p0, p1)
            occ = _occ(d - ves.r, h)
            sub = arr[ilo[2]:ihi[2], ilo[1]:ihi[1], ilo[0]:ihi[0]]
            _blend(sub, HU_BLOOD, occ)


# ---------------------------------------------------------------------------
# T1 -> T2 geometry
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PairGeometry:
    """Map between the body frame (= T1 world) and the T2 world frame.

    The breathing map is defined through its inverse :math:`G = B^{-1}`,
    acting on T2 points with the rigid motion removed,
    :math:`\\mathbf{u} = R^T(\\mathbf{w} - \\mathbf{c} - \\mathbf{t}) + \\mathbf{c}`:

    .. math::

        G_x(\\mathbf{u}) = u_x, \\quad
        G_y(\\mathbf{u}) = y_f + \\frac{u_y - y_f}{1 + a\\,m(u_x)}, \\quad
        G_z(\\mathbf{u}) = z_f + \\frac{u_z - z_f}{1 + c\\,m(u_x)}, \\quad
        m(x) = 1 - 0.3\\,e^{-x^2 / (2 \\cdot 60^2)}

    (:math:`c` = ``breathing_cc``, :math:`a` = ``breathing_ap``; :math:`z_f`
    the lung-apex level and :math:`y_f` the spine, which do not move;
    :math:`m` lets the lateral chest move more than the mediastinum). So at T2
    the chest is stretched by about :math:`1 + c` craniocaudally and
    :math:`1 + a` anteroposteriorly.

    Attributes
    ----------
    center : ndarray (3,)
        Body centre :math:`\\mathbf{c}` (LPS mm), the rotation centre.
    rotation : ndarray (3, 3)
        Rigid rotation :math:`R` (body -> T2 world).
    translation : ndarray (3,)
        Rigid translation :math:`\\mathbf{t}` in mm.
    breathing_cc, breathing_ap : float
        Relative stretches :math:`c` and :math:`a`.
    z_fixed, y_fixed : float
        World z of the apex level and world y of the spine (body frame, mm).

    Examples
    --------
    >>> g = PairGeometry(np.zeros(3), np.eye(3), np.array([5.0, 0.0, 0.0]), 0.05, 0.0, 0.0, 0.0)
    >>> w = g.forward([[0.0, 0.0, -100.0]])
    >>> np.round(w, 3).tolist()
    [[5.0, 0.0, -103.5]]
    >>> np.round(g.inverse(w), 6).tolist()
    [[0.0, 0.0, -100.0]]
    """

    center: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray
    breathing_cc: float
    breathing_ap: float
    z_fixed: float
    y_fixed: float

    def _modulation(self, ux):
        return 1.0 - 0.3 * np.exp(-((ux - self.center[0]) ** 2) / (2 * 60.0 ** 2))

    def _g(self, u: np.ndarray) -> np.ndarray:
        m = self._modulation(u[..., 0])
        b = np.array(u, dtype=float, copy=True)
        b[..., 1] = self.y_fixed + (u[..., 1] - self.y_fixed) / (1.0 + self.breathing_ap * m)
        b[..., 2] = self.z_fixed + (u[..., 2] - self.z_fixed) / (1.0 + self.breathing_cc * m)
        return b

    def inverse(self, w_xyz) -> np.ndarray:
        """T2 world points (..., 3) -> body-frame (= T1 world) points (..., 3), closed form."""
        w = np.asarray(w_xyz, float)
        u = (w - self.center - self.translation) @ self.rotation + self.center
        return self._g(u)

    def forward(self, b_xyz, *, tol: float = 1e-6) -> np.ndarray:
        """Body-frame points (N, 3) -> T2 world points, solved numerically.

        Newton-like fixed point on :math:`G(\\mathbf{u}) = \\mathbf{b}` (the
        Jacobian of :math:`G` is close to diag(1, 1/(1+a m), 1/(1+c m))); the
        round trip :math:`|F^{-1}(F(\\mathbf{b})) - \\mathbf{b}|` is checked to
        be below 0.01 mm.

        Raises
        ------
        GeometryError
            If the iteration does not converge.
        """
        b = np.atleast_2d(np.asarray(b_xyz, float))
        u = b.copy()
        for _ in range(200):
            r = self._g(u) - b
            m = self._modulation(u[:, 0])
            u[:, 1] -= r[:, 1] * (1.0 + self.breathing_ap * m)
            u[:, 2] -= r[:, 2] * (1.0 + self.breathing_cc * m)
            if np.max(np.abs(r)) < tol:
                break
        w = (u - self.center) @ self.rotation.T + self.center + self.translation
        resid = np.linalg.norm(self.inverse(w) - b, axis=1)
        if np.any(resid > 0.01):
            raise GeometryError(
                f"forward map did not converge (residual {resid.max():.3g} mm); reduce breathing_cc/breathing_ap"
            )
        return w


# ---------------------------------------------------------------------------
# nodules
# ---------------------------------------------------------------------------


@dataclass
class _Nodule:
    nodule_id: int
    kind: str
    shape: str
    location: str
    side: str
    diameter_mm: float
    volume_ratio: float
    core_fraction: float
    hu: float
    core_hu: float
    rot_local: np.ndarray           # local -> body frame rotation
    params: dict                     # shape parameters at T1 size (mm)
    center1: np.ndarray = None       # shape centre, T1 world (= body) mm
    center2: np.ndarray = None       # shape centre, T2 world mm
    clip: bool = False
    lucency: float = 0.0             # central lucency radius / inscribed radius at the centre

    @property
    def scale2(self) -> float:
        return float(self.volume_ratio) ** (1.0 / 3.0)

    @property
    def r_bound(self) -> float:
        """Radius (mm, T1 size) of a sphere about the centre containing the shape."""
        p = self.params
        if self.shape == "sphere":
            return p["R"]
        if self.shape == "ellipsoid":
            return float(np.max(p["abc"]))
        return float(np.max(np.linalg.norm(p["centers"], axis=1) + p["radii"]))

    def phi_local(self, q: np.ndarray) -> np.ndarray:
        """Implicit function (approx. signed distance, mm) in the local frame, T1 size."""
        p = self.params
        if self.shape == "sphere":
            return np.sqrt(q[..., 0] ** 2 + q[..., 1] ** 2 + q[..., 2] ** 2) - p["R"]
        if self.shape == "ellipsoid":
            a, b, c = p["abc"]
            return _ellipsoid_sd(q[..., 0], q[..., 1], q[..., 2], a, b, c)
        out = None
        for c, r in zip(p["centers"], p["radii"]):
            e = q - c
            d = np.sqrt(e[..., 0] ** 2 + e[..., 1] ** 2 + e[..., 2] ** 2) - r
            out = d if out is None else np.minimum(out, d)
        return out

    def frame(self, time: int, geometry: PairGeometry) -> tuple[np.ndarray, np.ndarray, float]:
        """Centre (world mm), rotation (local -> world) and linear scale at ``time``."""
        if time == 1:
            return self.center1, self.rot_local, 1.0
        return self.center2, geometry.rotation @ self.rot_local, self.scale2

    @property
    def lucency_radius(self) -> float:
        """Radius (mm, T1 size) of the central lucency (0 when none)."""
        p = self.params
        if self.shape == "sphere":
            r_in = p["R"]
        elif self.shape == "ellipsoid":
            r_in = float(np.min(p["abc"]))
        else:  # the central sphere of the union (centred at the origin)
            r_in = float(p["radii"][0])
        return self.lucency * float(r_in)

    def phi(self, pts: np.ndarray, time: int, geometry: PairGeometry, anatomy: _Anatomy,
            core: bool = False, lucency: bool = False) -> np.ndarray:
        """Implicit function of the nodule (or its solid core, or its lucency) at world points (..., 3)."""
        c, rot, s = self.frame(time, geometry)
        if lucency:
            q = pts - c
            return np.sqrt((q * q).sum(axis=-1)) - s * self.lucency_radius
        if core:
            s = s * self.core_fraction
        q = (pts - c) @ rot / s
        val = s * self.phi_local(q)
        if self.clip:
            body = pts if time == 1 else geometry.inverse(pts)
            val = np.maximum(val, anatomy.cavity_sd_points(body.reshape(-1, 3)).reshape(val.shape))
        return val

    def extent_along(self, direction: np.ndarray) -> float:
        """Distance (mm, T1 size) from the centre to the surface along a body-frame direction."""
        dl = self.rot_local.T @ (direction / np.linalg.norm(direction))
        lo, hi = 0.0, 2.0 * self.r_bound
        for _ in range(50):
            mid = 0.5 * (lo + hi)
            if self.phi_local(dl[None, :] * mid)[0] < 0:
                lo = mid
            else:
                hi = mid
        return lo


def _random_nodule(spec: NoduleSpec, nid: int, rng: np.random.Generator) -> _Nodule:
    """Resolve the random fields of a :class:`NoduleSpec` into a local shape."""
    kind = spec.kind or str(rng.choice(KINDS, p=[0.6, 0.2, 0.2]))
    shape = spec.shape or str(rng.choice(SHAPES, p=[0.3, 0.4, 0.3]))
    location = spec.location or str(rng.choice(LOCATIONS, p=[0.5, 0.25, 0.25]))
    side = spec.side or str(rng.choice(["left", "right"]))
    d = float(spec.diameter_mm) if spec.diameter_mm is not None else float(rng.uniform(6.0, 20.0))
    ratio = float(spec.volume_ratio) if spec.volume_ratio is not None else float(
        rng.choice([1.0, rng.uniform(1.3, 2.5), rng.uniform(0.5, 0.8)], p=[0.35, 0.45, 0.2]))
    core = float(spec.core_fraction) if spec.core_fraction is not None else float(rng.uniform(0.4, 0.65))
    if kind == "solid":
        hu = spec.hu if spec.hu is not None else rng.uniform(15.0, 55.0)
    else:
        hu = spec.hu if spec.hu is not None else rng.uniform(-650.0, -460.0)
    core_hu = spec.core_hu if spec.core_hu is not None else rng.uniform(10.0, 50.0)
    rot = Rotation.random(random_state=rng).as_matrix()
    R = d / 2.0
    if shape == "sphere":
        params = {"R": R}
    elif shape == "ellipsoid":
        rb = rng.uniform(0.72, 0.95)
        rc = rng.uniform(0.55, rb)
        a = R / (rb * rc) ** (1.0 / 3.0)  # a*b*c = R^3 keeps the equivalent diameter
        params = {"abc": np.array([a, a * rb, a * rc])}
    else:
        n_lobes = int(rng.integers(3, 6))
        dirs = rng.normal(size=(n_lobes, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        centers = np.vstack([np.zeros(3), dirs * rng.uniform(0.45, 0.7, (n_lobes, 1))])
        radii = np.concatenate([[1.0], rng.uniform(0.45, 0.65, n_lobes)])
        # scale the unit union so that its volume equals that of the d-sphere
        tmp = _Nodule(nid, kind, shape, location, side, d, ratio, core, hu, core_hu, np.eye(3),
                      {"centers": centers, "radii": radii})
        v_unit, _, _ = _integrate(lambda p: tmp.phi_local(p), np.zeros(3), tmp.r_bound)
        f = (math.pi * d ** 3 / 6.0 / v_unit) ** (1.0 / 3.0)
        params = {"centers": centers * f, "radii": radii * f}
    return _Nodule(nid, kind, shape, location, side, d, ratio, core, float(hu), float(core_hu),
                   rot, params, lucency=float(spec.lucency_fraction))


# ---------------------------------------------------------------------------
# truth from the continuous shapes
# ---------------------------------------------------------------------------


def _integrate(phi: Callable[[np.ndarray], np.ndarray], center: np.ndarray, r_bound: float,
               *, rel_tol: float = 2e-3, return_grid: bool = False):
    """Volume and centroid of ``{p : phi(p) < 0}`` inside a cube, converged.

    Lines parallel to z on an :math:`n \\times n` midpoint grid in (x, y); along
    each line the implicit function is sampled at :math:`n+1` nodes and
    linearly interpolated, so the inside length of every cell is exact to
    second order:

    .. math::

        V \\approx h_x h_y \\sum_{x,y} \\sum_k \\ell_k, \\qquad
        \\ell_k = h_z \\cdot \\begin{cases} 1 & \\phi_k, \\phi_{k+1} < 0 \\\\
        \\phi_k / (\\phi_k - \\phi_{k+1}) & \\phi_k < 0 \\le \\phi_{k+1} \\\\
        \\phi_{k+1} / (\\phi_{k+1} - \\phi_k) & \\phi_{k+1} < 0 \\le \\phi_k \\\\
        0 & \\text{otherwise} \\end{cases}

    Evaluated at :math:`n = 64, 96, 144, 216, 324` until two successive volumes
    agree within ``rel_tol``.

    Returns
    -------
    volume : float
        mm^3.
    centroid : ndarray (3,)
        (x, y, z) mm.
    rel_precision : float
        :math:`|V_n - V_{n'}| / V_n` of the last two resolutions.
    """
    prev = None
    for n in (64, 96, 144, 216, 324):
        h = 2.0 * r_bound / n
        xs = center[0] - r_bound + h * (np.arange(n) + 0.5)
        ys = center[1] - r_bound + h * (np.arange(n) + 0.5)
        zs = center[2] - r_bound + h * np.arange(n + 1)
        vol = 0.0
        mx = my = mz = 0.0
        chunk = max(1, 4_000_000 // (n * (n + 1)))
        for i0 in range(0, n, chunk):
            X, Y, Z = np.meshgrid(xs[i0:i0 + chunk], ys, zs, indexing="ij")
            f = phi(np.stack([X, Y, Z], axis=-1))
            a, b = f[..., :-1], f[..., 1:]
            with np.errstate(divide="ignore", invalid="ignore"):
                t = np.where(a != b, a / (a - b), 0.5)
            ina, inb = a < 0, b < 0
            length = np.where(ina & inb, 1.0, np.where(ina, t, np.where(inb, 1.0 - t, 0.0)))
            mid = np.where(ina & inb, 0.5, np.where(ina, t / 2, np.where(inb, (1.0 + t) / 2, 0.0)))
            w = length * h * h * h
            vol += w.sum()
            mx += (w * X[..., :-1]).sum()
            my += (w * Y[..., :-1]).sum()
            mz += (w * (Z[..., :-1] + mid * h)).sum()
        if vol <= 0:
            raise PhantomSpecError("nodule shape has zero volume; check the specification")
        cen = np.array([mx, my, mz]) / vol
        if prev is not None:
            prec = abs(vol - prev) / vol
            if prec < rel_tol:
                return vol, cen, prec
        prev = vol
    return vol, cen, prec


def _diameter(points: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Largest distance between two points of a 2-D or 3-D point set, and its end points.

    :math:`D = \\max_{p, q} |p - q|` over the convex-hull vertices (the
    farthest pair is always a pair of hull vertices). In 2-D as the largest
    projected extent :math:`\\max_{\\hat u}(\\max_p \\hat u\\cdot p - \\min_p \\hat u\\cdot p)`
    over 361 directions refined twice (final step 0.0003 deg); in 3-D exactly over all pairs
    up to 800 vertices, else by ascent to a double normal from the best of
    1000 projection directions.
    """
    pts = np.asarray(points, float)
    dim = pts.shape[1]
    if len(pts) > dim + 1:
        try:
            pts = pts[ConvexHull(pts).vertices]
        except Exception:  # degenerate (flat) point set: keep all points
            pass
    n = len(pts)
    if dim == 2:
        # largest projected extent over directions, refined twice; at the
        # optimum the extreme points are the farthest pair
        a0, step = 0.0, math.pi / 360
        ang = np.linspace(0.0, math.pi, 361)
        for _ in range(3):
            U = np.column_stack([np.cos(ang), np.sin(ang)])
            proj = pts @ U.T
            ext = proj.max(axis=0) - proj.min(axis=0)
            a0 = float(ang[int(np.argmax(ext))])
            ang = a0 + np.linspace(-2 * step, 2 * step, 101)
            step /= 25.0
        u = np.array([math.cos(a0), math.sin(a0)])
        pr = pts @ u
        i, j = int(np.argmin(pr)), int(np.argmax(pr))
        return float(np.linalg.norm(pts[j] - pts[i])), pts[i], pts[j]
    if n <= 800:
        d2 = ((pts[:, None, :] - pts[None, :, :]) ** 2).sum(axis=-1)
        i, j = divmod(int(np.argmax(d2)), n)
        return math.sqrt(float(d2[i, j])), pts[i], pts[j]
    # many hull vertices (smooth 3-D surfaces): start from the extremes of the
    # 8 best of 1000 projection directions and climb to a double normal
    # (alternately the farthest point from the other end); the farthest pair
    # is a double normal, and for the near-convex nodule shapes the best
    # projected directions lie in its basin.
    U = _sphere_points(1000) if dim == 3 else np.column_stack(
        [np.cos(np.linspace(0, math.pi, 1000)), np.sin(np.linspace(0, math.pi, 1000))])
    proj = pts @ U.T
    ext = proj.max(axis=0) - proj.min(axis=0)
    best, bi, bj = -1.0, 0, 0
    for k in np.argsort(ext)[-8:]:
        i, j = int(np.argmin(proj[:, k])), int(np.argmax(proj[:, k]))
        for _ in range(50):
            j2 = int(np.argmax(((pts - pts[i]) ** 2).sum(axis=1)))
            i2 = int(np.argmax(((pts - pts[j2]) ** 2).sum(axis=1)))
            if (i2, j2) == (i, j):
                break
            i, j = i2, j2
        d = float(((pts[i] - pts[j]) ** 2).sum())
        if d > best:
            best, bi, bj = d, i, j
    return math.sqrt(best), pts[bi], pts[bj]


def _plane_contour(phi2d: np.ndarray, h: float, x0: float, y0: float) -> np.ndarray | None:
    """Points ``(x, y)`` mm of the zero contour of a 2-D implicit image (None if empty)."""
    from skimage.measure import find_contours

    if not (phi2d < 0).any():
        return None
    pts = [c for c in find_contours(phi2d, 0.0)]
    if not pts:
        return None
    p = np.vstack(pts)
    return np.column_stack([x0 + h * p[:, 1], y0 + h * p[:, 0]])


def _near_tied_chords(xy: np.ndarray, min_length: float, bin_deg: float = 2.0):
    """Chords between hull points of a contour at least ``min_length`` mm long, the longest
    one per ``bin_deg`` degrees of direction: list of (length, (a, b))."""
    pts = np.asarray(xy, float)
    try:
        pts = pts[ConvexHull(pts).vertices]
    except Exception:  # degenerate contour: keep all points
        pass
    diff = pts[:, None, :] - pts[None, :, :]
    d = np.sqrt((diff ** 2).sum(-1))
    i, j = np.nonzero(np.triu(d >= min_length, 1))
    best: dict[int, tuple[float, int, int]] = {}
    for a, b in zip(i, j):
        key = int((math.degrees(math.atan2(diff[a, b, 1], diff[a, b, 0])) % 180.0) // bin_deg)
        if key not in best or d[a, b] > best[key][0]:
            best[key] = (float(d[a, b]), a, b)
    return [(L, (pts[a], pts[b])) for L, a, b in best.values()]


def _contour_width_across(xy: np.ndarray, a: np.ndarray, b: np.ndarray, h: float) -> float:
    """Approximate longest chord of a dense contour perpendicular to ``b - a`` (mm):
    the widest extent along the perpendicular among strips ``h`` wide along ``b - a``."""
    u = (b - a) / np.linalg.norm(b - a)
    v = np.array([-u[1], u[0]])
    pu, pv = xy @ u, xy @ v
    k = np.floor((pu - pu.min()) / h).astype(int)
    hi = np.full(k.max() + 1, -np.inf)
    lo = np.full(k.max() + 1, np.inf)
    np.maximum.at(hi, k, pv)
    np.minimum.at(lo, k, pv)
    ok = np.isfinite(hi)
    return float((hi[ok] - lo[ok]).max())


def _axial_axes_numeric(phi: Callable, center: np.ndarray, r_bound: float):
    """Long, short axis (mm) and the precision estimate, on axial planes of an implicit shape.

    Long axis: :math:`L = \\max_z \\max_{p,q \\in \\partial S_z} |p - q|` over
    axial sections :math:`S_z`; short axis: the longest chord extent
    perpendicular to the long axis in the same plane,
    :math:`S = \\max_s (t_{max}(s) - t_{min}(s))` along lines
    :math:`p = p_0 + s\\,\\hat u + t\\,\\hat v`. A coarse pass (25 planes,
    65^2 samples) locates the best plane, a fine pass (9 planes within
    one coarse step, 161^2 samples) refines it; the change between passes is
    returned as the precision. Contours are the zero level of the linearly
    interpolated implicit function (second-order accurate).

    Ties, as :func:`nodulegrowth.measure.axial_axes` defines them: chords
    within the numerical precision (0.2 % of L) of the longest are equally
    long, and of those the one with the largest :math:`L + S` is the long axis
    when it beats the strictly longest by more than the precision of S (0.4 %
    of L). Exact ties occur for shapes cut by the chest wall: a sphere cut by
    a plane has a fan of equal diameters whose perpendiculars cross the cut
    or not.
    """
    def scan(zs, n):
        h = 2.0 * r_bound / (n - 1)
        g = center[0] - r_bound + h * np.arange(n)
        gy = center[1] - r_bound + h * np.arange(n)
        X, Y = np.meshgrid(g, gy, indexing="xy")
        planes = []
        for z in zs:
            pts = np.stack([X, Y, np.full_like(X, z)], axis=-1)
            xy = _plane_contour(phi(pts), h, g[0], gy[0])
            if xy is not None:
                L, a, b = _diameter(xy)
                planes.append((L, (a, b), z, xy))
        return planes, h

    def short_across(ends, z):
        u = (ends[1] - ends[0]) / np.linalg.norm(ends[1] - ends[0])
        v = np.array([-u[1], u[0]])
        n = 321
        h = 2.0 * r_bound / (n - 1)
        s = -r_bound + h * np.arange(n)
        S, T = np.meshgrid(s, s, indexing="ij")  # rows: s along u, columns: t along v
        cxy = 0.5 * (ends[0] + ends[1])
        px = cxy[0] + S * u[0] + T * v[0]
        py = cxy[1] + S * u[1] + T * v[1]
        f = phi(np.stack([px, py, np.full_like(px, z)], axis=-1))
        short = 0.0
        for row in f:
            idx = np.nonzero(row < 0)[0]
            if idx.size == 0:
                continue
            a, b = idx[0], idx[-1]
            # sub-sample crossing positions by linear interpolation of phi
            ta = s[a] - (h * row[a] / (row[a] - row[a - 1]) if a > 0 else 0.0)
            tb = s[b] + (h * row[b] / (row[b] - row[b + 1]) if b < n - 1 else 0.0)
            short = max(short, tb - ta)
        return short

    dz = 2.0 * r_bound / 24
    coarse, _ = scan(center[2] + np.linspace(-r_bound, r_bound, 25), 65)
    if not coarse:
        raise PhantomSpecError("nodule has no axial section; check the specification")
    L0, _, z0, _ = max(coarse, key=lambda t: t[0])
    fine, hf = scan(np.linspace(z0 - dz, z0 + dz, 9), 161)
    L1, ends, z1, _ = max(fine, key=lambda t: t[0])
    best = None
    for Lp, _, zp, xy in fine:
        if Lp < L1 * (1 - 2e-3):
            continue
        for Lc, ab in _near_tied_chords(xy, L1 * (1 - 2e-3)):
            width = _contour_width_across(xy, ab[0], ab[1], hf)
            if best is None or Lc + width > best[0]:
                best = (Lc + width, Lc, ab, zp)
    short = short_across(ends, z1)
    strict_sum = L1 + short
    if best is not None and best[0] - strict_sum > 4e-3 * L1:
        s_b = short_across(best[2], best[3])
        if best[1] + s_b - strict_sum > 4e-3 * L1:
            L1, short = best[1], s_b
    return L1, short, abs(L1 - L0)


def _max3d_numeric(phi: Callable, center: np.ndarray, r_bound: float) -> tuple[float, float]:
    """Largest distance between two surface points (marching cubes, two grids)."""
    from skimage.measure import marching_cubes

    out = []
    for n in (41, 61):
        h = 2.0 * r_bound / (n - 1)
        g = -r_bound + h * np.arange(n)
        X, Y, Z = np.meshgrid(center[0] + g, center[1] + g, center[2] + g, indexing="ij")
        f = phi(np.stack([X, Y, Z], axis=-1))
        verts, *_ = marching_cubes(f, 0.0, spacing=(h, h, h))
        out.append(_diameter(verts)[0])
    return out[1], abs(out[1] - out[0])


def _truth_at(nod: _Nodule, time: int, geometry: PairGeometry, anatomy: _Anatomy,
              local: dict | None = None) -> dict:
    """Truth of one nodule at one time point, from its continuous shape.

    ``local`` (a dict, filled at T1 and reused at T2) caches the
    similarity-invariant truth of unclipped numerical shapes.
    """
    c, rot, s = nod.frame(time, geometry)
    out: dict[str, float] = {}
    analytic = not nod.clip and nod.shape in ("sphere", "ellipsoid")
    if analytic:
        semi = (np.full(3, nod.params["R"]) if nod.shape == "sphere" else np.asarray(nod.params["abc"])) * s
        vol = 4.0 / 3.0 * math.pi * float(np.prod(semi))
        # central axial section of x^T A x <= 1 is the largest; its semi-axes
        # are 1/sqrt(eig(A_xy))
        A = rot @ np.diag(1.0 / semi ** 2) @ rot.T
        ev = np.linalg.eigvalsh(A[:2, :2])
        out.update(volume=vol, centroid=np.asarray(c, float), long=2.0 / math.sqrt(ev[0]),
                   short=2.0 / math.sqrt(ev[1]), max3d=2.0 * float(semi.max()), vprec=0.0, dprec=0.0)
        out["solid"] = vol * nod.core_fraction ** 3 if nod.kind == "part_solid" else float("nan")
        return out

    def f(p):
        return nod.phi(p, time, geometry, anatomy)

    rb = nod.r_bound * s * 1.02
    if not nod.clip and time == 2 and local is not None:
        # an unclipped shape at T2 is similar to T1 (rotation R, scale s):
        # V2 = s^3 V1, centroid offset rotated and scaled, D2 = s D1
        vol, vprec = local["volume"] * s ** 3, local["vprec"]
        cen = c + s * (rot @ local["offset"])
        m3, mprec = local["max3d"] * s, local["mprec"] * s
    else:
        vol, cen, vprec = _integrate(f, c, rb)
        m3, mprec = _max3d_numeric(f, c, rb)
        if local is not None:
            local.update(volume=vol / s ** 3, vprec=vprec, offset=rot.T @ (cen - c) / s,
                         max3d=m3 / s, mprec=mprec / s)
    long_, short, lprec = _axial_axes_numeric(f, c, rb)
    out.update(volume=vol, centroid=cen, long=long_, short=short, max3d=m3, vprec=vprec,
               dprec=max(lprec, mprec))
    if nod.kind == "part_solid" and not nod.clip:
        # the core is the shape scaled by k about its centre: V_core = k^3 V
        out["solid"] = vol * nod.core_fraction ** 3
    elif nod.kind == "part_solid":
        out["solid"] = _integrate(lambda p: nod.phi(p, time, geometry, anatomy, core=True), c,
                                  rb * nod.core_fraction)[0]
    else:
        out["solid"] = float("nan")
    return out


# ---------------------------------------------------------------------------
# placement of nodules in the body frame
# ---------------------------------------------------------------------------


def _vessel_clearance(anat: _Anatomy, p_rel: np.ndarray) -> float:
    """Smallest distance (mm) from a relative point to any vessel surface (vectorised)."""
    if not anat.vessels:
        return float("inf")
    if getattr(anat, "_vessel_arrays", None) is None:
        anat._vessel_arrays = (np.array([v.p0 for v in anat.vessels]), np.array([v.p1 for v in anat.vessels]),
                               np.array([v.r for v in anat.vessels]))
    p0, p1, r = anat._vessel_arrays
    d = p1 - p0
    t = np.clip(np.einsum("ij,ij->i", np.asarray(p_rel) - p0, d) / np.einsum("ij,ij->i", d, d), 0.0, 1.0)
    dist = np.linalg.norm(np.asarray(p_rel) - (p0 + t[:, None] * d), axis=1) - r
    return float(dist.min())


def _sphere_points(n: int = 60) -> np.ndarray:
    """Quasi-uniform unit vectors (Fibonacci sphere)."""
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    th = math.pi * (1 + 5 ** 0.5) * i
    return np.column_stack([np.cos(th) * np.sin(phi), np.sin(th) * np.sin(phi), np.cos(phi)])


def _place(nod: _Nodule, anat: _Anatomy, rng: np.random.Generator, placed: list[_Nodule]) -> None:
    """Choose the T1 centre (body frame) of a nodule according to its location.

    * ``isolated``: inside the lung, at least 1.5 mm from every vessel at the
      larger time point (else the clearest spot found, if it touches none);
    * ``juxtavascular``: abutting a vessel of radius 1-3.5 mm (0.5 mm overlap
      at the smaller of the two time points, so it touches at both);
    * ``juxtapleural``: centre at 0.75 of its extent (smaller time point) from
      the costal pleura, the part beyond the pleura is clipped away.
    """
    smax = max(1.0, nod.scale2)
    smin = min(1.0, nod.scale2)
    rb = nod.r_bound * smax
    sx = 1.0 if nod.side == "left" else -1.0
    ring = _sphere_points(40)
    others = [(o.center1 - anat.center, o.r_bound * max(1.0, o.scale2)) for o in placed]

    def far_from_others(p):
        return all(np.linalg.norm(p - c) > rb + r + 4.0 for c, r in others)

    def lung_ok(p, margin):
        pts = p + ring * (rb + margin)
        return bool(np.all(anat.lung_sd(pts[:, 0], pts[:, 1], pts[:, 2]) < 0)) and \
            float(anat.lung_sd(p[0], p[1], p[2])) < -(rb + margin)

    zlo = max(anat.dome_r, anat.dome_l) - 10.0
    zhi = anat.z_apex - 25.0
    best, best_score = None, -np.inf
    for _ in range(600):
        if nod.location == "juxtavascular":
            cands = [v for v in anat.vessels if 1.0 <= v.r <= 3.5 and v.generation >= 1
                     and (v.p1[0] * sx) > 0]
            if not cands:
                break
            v = cands[int(rng.integers(len(cands)))]
            t = rng.uniform(0.25, 0.75)
            axis = v.p1 - v.p0
            axis /= np.linalg.norm(axis)
            e = rng.normal(size=3)
            e -= (e @ axis) * axis
            e /= np.linalg.norm(e)
            dist = v.r + nod.extent_along(-e) * smin - 0.5
            p = v.p0 + t * (v.p1 - v.p0) + e * dist
            if lung_ok(p, 2.0) and far_from_others(p):
                nod.center1 = p + anat.center
                return
        elif nod.location == "juxtapleural":
            z = rng.uniform(zlo + 15.0, zhi - 10.0)
            # lateral, posterior or anterior wall of the chosen lung
            theta = rng.uniform(-0.45 * math.pi, 0.6 * math.pi)  # 0 = lateral, + posterior
            s = float(anat.body_scale(z))
            wx = sx * anat.cax * s * math.cos(theta)
            wy = anat.cyc + anat.cay * s * math.sin(theta)
            n_in = -np.array([wx / (anat.cax * s) ** 2, (wy - anat.cyc) / (anat.cay * s) ** 2, 0.0])
            n_in /= np.linalg.norm(n_in)
            d = 0.75 * nod.extent_along(-n_in) * smin
            p = np.array([wx, wy, z]) + n_in * d
            pts = p + ring * rb
            other = np.maximum(np.maximum(-anat.mediastinum_sd(pts[:, 0], pts[:, 1], pts[:, 2]),
                                          anat.diaphragm_sd(pts[:, 0], pts[:, 1], pts[:, 2])),
                               anat.apex_sd(pts[:, 0], pts[:, 1], pts[:, 2]))
            if np.all(other < -3.0) and far_from_others(p) and \
                    float(anat.lung_sd(p[0], p[1], p[2])) < 0:
                nod.center1 = p + anat.center
                nod.clip = True
                return
        else:
            p = np.array([sx * rng.uniform(30.0, anat.cax - 10.0),
                          anat.cyc + rng.uniform(-anat.cay + 10.0, anat.cay - 10.0),
                          rng.uniform(zlo, zhi)])
            if not (lung_ok(p, 3.0) and far_from_others(p)):
                continue
            clear = _vessel_clearance(anat, p) - rb
            if clear > 1.5:
                nod.center1 = p + anat.center
                return
            if clear > best_score:
                best, best_score = p, clear
    if best is not None and nod.location == "isolated" and best_score > 0.0:
        # no spot with 1.5 mm clearance: take the clearest one, still not touching
        nod.center1 = best + anat.center
        return
    raise PhantomSpecError(
        f"could not place a {nod.diameter_mm:.1f} mm {nod.location} nodule in the {nod.side} lung; "
        "use a smaller diameter or another location"
    )


# ---------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Grid:
    """Voxel grid: origin (x, y, z) mm, spacing (x, y, z) mm, size (nx, ny, nz), direction 3x3."""

    origin: np.ndarray
    spacing: np.ndarray
    size: tuple[int, int, int]
    direction: np.ndarray

    def reference(self) -> sitk.Image:
        img = sitk.Image(*[int(s) for s in self.size], sitk.sitkUInt8)
        self.apply(img)
        return img

    def apply(self, img: sitk.Image) -> sitk.Image:
        img.SetOrigin(tuple(float(v) for v in self.origin))
        img.SetSpacing(tuple(float(v) for v in self.spacing))
        img.SetDirection(tuple(float(v) for v in self.direction.ravel()))
        return img

    def world(self, ijk: np.ndarray) -> np.ndarray:
        return self.origin + (np.asarray(ijk, float) * self.spacing) @ self.direction.T

    def index(self, xyz: np.ndarray) -> np.ndarray:
        return ((np.asarray(xyz, float) - self.origin) @ self.direction) / self.spacing


def _draw_nodule(arr: np.ndarray, grid: _Grid, nod: _Nodule, time: int, geometry: PairGeometry,
                 anat: _Anatomy, sub: int = 3) -> None:
    """Blend a nodule (and its solid core) into ``arr`` (z, y, x) by supersampled occupancy.

    The occupancy of a voxel is the mean over :math:`sub^3` sub-voxel points of
    a one-sub-voxel linear ramp of the implicit function, i.e. the
    partial-volume fraction; the nodule tissue replaces what was there:
    :math:`v \\leftarrow (1 - o) v + o\\,\\mathrm{HU}`.
    """
    occ = _occupancy(grid, nod, time, geometry, anat, sub=sub, core=False)
    if occ is None:
        return
    (sl, o) = occ
    _blend(arr[sl], nod.hu, o)
    if nod.kind == "part_solid":
        occ = _occupancy(grid, nod, time, geometry, anat, sub=sub, core=True)
        if occ is not None:
            _blend(arr[occ[0]], nod.core_hu, occ[1])
    if nod.lucency > 0:
        occ = _occupancy(grid, nod, time, geometry, anat, sub=sub, lucency=True)
        if occ is not None:
            _blend(arr[occ[0]], LUCENCY_HU, occ[1])


def _occupancy(grid: _Grid, nod: _Nodule, time: int, geometry: PairGeometry, anat: _Anatomy,
               sub: int = 3, core: bool = False, lucency: bool = False):
    """Partial-volume occupancy of the nodule (its core, its lucency) in its bounding box of ``grid``."""
    c, _, s = nod.frame(time, geometry)
    extent = nod.lucency_radius if lucency else nod.r_bound * (nod.core_fraction if core else 1.0)
    r = extent * s + 2.0 * float(grid.spacing.max())
    corners = np.array([[dx, dy, dz] for dx in (-r, r) for dy in (-r, r) for dz in (-r, r)]) + c
    idx = grid.index(corners)
    size = np.array(grid.size)
    lo = np.clip(np.floor(idx.min(axis=0)).astype(int), 0, size)
    hi = np.clip(np.ceil(idx.max(axis=0)).astype(int) + 1, 0, size)
    if np.any(hi <= lo):
        return None
    ii = np.arange(lo[0], hi[0])
    jj = np.arange(lo[1], hi[1])
    kk = np.arange(lo[2], hi[2])
    K, J, I = np.meshgrid(kk, jj, ii, indexing="ij")
    base = np.stack([I, J, K], axis=-1).astype(float)
    h = float(grid.spacing.min()) / sub
    occ = np.zeros(K.shape, np.float64)
    offs = (np.arange(sub) + 0.5) / sub - 0.5
    for ox in offs:
        for oy in offs:
            for oz in offs:
                pts = grid.world(base + np.array([ox, oy, oz]))
                f = nod.phi(pts, time, geometry, anat, core=core, lucency=lucency)
                occ += np.clip(0.5 - f / h, 0.0, 1.0)
    occ /= sub ** 3
    sl = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
    return sl, occ.astype(np.float32)


def _render_grid(scan: ScanSpec, origin_out: np.ndarray) -> tuple[_Grid, _Grid, int]:
    """Output grid of a scan and its render grid (finer along z for the slice profile).

    The render grid has the in-plane grid of the output and z-step
    :math:`d = t / n` with :math:`n = \\max(1, \\lceil t / 1.25 \\rceil)`, starting
    :math:`t/2 - d/2` below the first slice, so that the mean of :math:`n`
    consecutive samples is the box average over the slice thickness :math:`t`
    (midpoint rule; within each sample, nodules are supersampled over the
    sample's extent and anatomy edges are anti-aliased, which completes the
    box integral).
    """
    D = scan.direction_matrix
    out = _Grid(np.asarray(origin_out, float),
                np.array([scan.spacing_xy, scan.spacing_xy, scan.slice_spacing], float),
                (int(scan.size_xy), int(scan.size_xy), int(scan.n_slices)), D)
    t = float(scan.slice_thickness)
    n_sub = max(1, int(math.ceil(t / 1.25 - 1e-9)))
    d = t / n_sub
    extent = (scan.n_slices - 1) * scan.slice_spacing + t
    nz = int(math.ceil(extent / d - 1e-6)) + 1
    r_origin = out.origin - D[:, 2] * (t / 2.0 - d / 2.0)
    render = _Grid(r_origin, np.array([scan.spacing_xy, scan.spacing_xy, d]), (out.size[0], out.size[1], nz), D)
    return out, render, n_sub


def _acquire(render_arr: np.ndarray, render: _Grid, out: _Grid, n_sub: int, scan: ScanSpec,
             rng: np.random.Generator) -> sitk.Image:
    """Simulate the acquisition: in-plane PSF, slice-thickness box, correlated noise.

    .. math::

        I(x, y, z_k) = \\frac{1}{t}\\int_{z_k - t/2}^{z_k + t/2}
        (G_{\\sigma} * \\mu)(x, y, z)\\,dz + \\varepsilon, \\qquad
        \\sigma = \\mathrm{FWHM} / (2\\sqrt{2\\ln 2})

    (midpoint rule with ``n_sub`` samples per slice; :math:`\\varepsilon`
    Gaussian noise of standard deviation ``noise_sd``, white or smoothed
    in-plane by a binomial kernel),
    then rounding to integer HU and clipping to [-1024, 3071] as a scanner
    stores it.
    """
    from scipy.ndimage import gaussian_filter1d

    sigma = scan.psf_fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    a = render_arr
    for axis, sp in ((2, render.spacing[0]), (1, render.spacing[1])):
        gaussian_filter1d(a, sigma / float(sp), axis=axis, output=a, mode="nearest", truncate=4.0)
    nz = out.size[2]
    step = scan.slice_spacing / float(render.spacing[2])
    if n_sub == 1 and abs(step - round(step)) < 1e-9:
        # slices coincide with render samples: the box is the sample itself
        res = np.array(a[: (nz - 1) * int(round(step)) + 1: int(round(step))], dtype=np.float32)
    else:
        res = np.empty((nz, out.size[1], out.size[0]), np.float32)
        for k in range(nz):
            j = k * step
            j0 = int(math.floor(j + 1e-9))
            f = j - j0
            box0 = a[j0:j0 + n_sub].mean(axis=0)
            if f > 1e-6:
                box1 = a[j0 + 1:j0 + 1 + n_sub].mean(axis=0)
                box0 = (1 - f) * box0 + f * box1
            res[k] = box0
    del a, render_arr
    if scan.noise_sd > 0:
        noise = rng.standard_normal(res.shape, dtype=np.float32)
        if scan.correlated_noise:
            # binomial kernel [1, 2, 1] along x and y (sigma ~ 0.71 px): an
            # unnormalised kernel with sum of squared weights 6 per axis
            # multiplies the standard deviation by sqrt(6) per axis, i.e. 6
            for ax in (1, 2):
                c = noise.copy()
                c *= 2.0
                lo = [slice(None)] * 3
                hi = [slice(None)] * 3
                lo[ax], hi[ax] = slice(0, -1), slice(1, None)
                c[tuple(hi)] += noise[tuple(lo)]
                c[tuple(lo)] += noise[tuple(hi)]
                noise = c
            noise *= np.float32(1.0 / 6.0)
        res += np.float32(scan.noise_sd) * noise
        del noise
    if scan.fov_circle:
        n = out.size[0]
        c = (n - 1) / 2.0
        yy, xx = np.ogrid[:n, :n]
        outside = (xx - c) ** 2 + (yy - c) ** 2 > (n / 2.0) ** 2
        res[:, outside] = HU_PAD
    np.rint(res, out=res)
    np.clip(res, -1024.0, 3071.0, out=res)
    return out.apply(sitk.GetImageFromArray(res))


def _fov_origin(scan: ScanSpec, center_xyz: np.ndarray) -> np.ndarray:
    """Origin of a scan grid whose centre is at ``center_xyz`` (world mm)."""
    D = scan.direction_matrix
    half = np.array([(scan.size_xy - 1) * scan.spacing_xy, (scan.size_xy - 1) * scan.spacing_xy,
                     (scan.n_slices - 1) * scan.slice_spacing]) / 2.0
    return np.asarray(center_xyz, float) - D @ half


def _grid_bbox(grid: _Grid) -> tuple[np.ndarray, np.ndarray]:
    n = np.array(grid.size) - 1
    corners = np.array([[a, b, c] for a in (0, n[0]) for b in (0, n[1]) for c in (0, n[2])])
    w = grid.world(corners)
    return w.min(axis=0), w.max(axis=0)


def _render_base(anat: _Anatomy, render1: _Grid, rng: np.random.Generator,
                 margin_z: float = 50.0) -> tuple[np.ndarray, _Grid]:
    """Anatomy (with vessels, without nodules) on an axis-aligned body-frame grid.

    The grid has the spacing of the T1 render grid and contains it as a
    sub-grid when T1 is axis-aligned; it extends ``margin_z`` mm beyond T1
    along z and covers the whole body in-plane, so T2 can be sampled from it
    after repositioning.
    """
    sp = render1.spacing.copy()
    lo, hi = _grid_bbox(render1)
    body_lo = anat.center[:2] - np.array([anat.ax, anat.ay]) - 10.0
    body_hi = anat.center[:2] + np.array([anat.ax, anat.ay]) + 10.0
    need_lo = np.array([min(lo[0], body_lo[0]), min(lo[1], body_lo[1]), lo[2] - margin_z])
    need_hi = np.array([max(hi[0], body_hi[0]), max(hi[1], body_hi[1]), hi[2] + margin_z])
    o1 = render1.origin if np.allclose(render1.direction, np.eye(3)) else lo
    m_lo = np.ceil((o1 - need_lo) / sp - 1e-9).astype(int)
    origin = o1 - m_lo * sp
    size = np.ceil((need_hi - origin) / sp - 1e-9).astype(int) + 1
    grid = _Grid(origin, sp, tuple(int(s) for s in size), np.eye(3))
    x = origin[0] + sp[0] * np.arange(size[0])
    y = origin[1] + sp[1] * np.arange(size[1])
    z = origin[2] + sp[2] * np.arange(size[2])
    # smooth zero-mean unit-variance texture on a 6 mm grid, interpolated
    from scipy.ndimage import gaussian_filter

    tsp = 6.0
    tsize = np.ceil((size - 1) * sp / tsp).astype(int) + 2
    tex = gaussian_filter(rng.standard_normal(tsize[::-1]), 1.0)
    tex = (tex - tex.mean()) / tex.std()
    tex_img = sitk.GetImageFromArray(tex.astype(np.float32))
    tex_img.SetOrigin(tuple(float(v) for v in origin - tsp / 2))
    tex_img.SetSpacing((tsp, tsp, tsp))
    arr = np.empty((size[2], size[1], size[0]), np.float32)
    # anti-aliasing ramp: geometric mean of in-plane and z voxel size
    h = float(math.sqrt(min(sp[0], sp[1]) * sp[2]))
    slab = max(1, int(4_000_000 // (size[0] * size[1])))
    # the texture varies on a 6 mm scale: interpolate it on a grid about 2 mm
    # in-plane and repeat each value f x f times (steps < 3 HU, under the noise)
    f = max(1, int(round(2.0 / min(sp[0], sp[1]))))
    ncx, ncy = -(-int(size[0]) // f), -(-int(size[1]) // f)
    for k0 in range(0, size[2], slab):
        k1 = min(size[2], k0 + slab)
        ref = sitk.Image(ncx, ncy, int(k1 - k0), sitk.sitkFloat32)
        ref.SetOrigin((float(origin[0] + (f - 1) * sp[0] / 2), float(origin[1] + (f - 1) * sp[1] / 2), float(z[k0])))
        ref.SetSpacing((float(sp[0] * f), float(sp[1] * f), float(sp[2])))
        t = sitk.GetArrayFromImage(sitk.Resample(tex_img, ref, sitk.Transform(), sitk.sitkLinear, 0.0))
        if f > 1:
            t = np.repeat(np.repeat(t, f, axis=1), f, axis=2)[:, : size[1], : size[0]]
        arr[k0:k1] = anat.render_slab(x, y, z[k0:k1], h, t)
    anat.render_vessels(arr, origin, sp)
    return arr, grid


def _breathe(base: np.ndarray, grid: _Grid, geometry: PairGeometry, chunk: int = 64) -> np.ndarray:
    """Apply the breathing map to the base anatomy: :math:`V(\\mathbf{u}) = \\mathrm{base}(G(\\mathbf{u}))`.

    :math:`G` keeps x and scales y and z about fixed levels by factors that
    depend on x only, so every sagittal plane (fixed x) is an axis-aligned
    2-D scaling: bilinear interpolation along z then y, vectorised over
    chunks of x columns. ``base`` and the result share the axis-aligned
    body-frame ``grid``; samples beyond the grid repeat its edge (the grid
    has 50 mm margins along z).
    """
    nz, ny, nx = base.shape
    o, sp = grid.origin, grid.spacing
    x = o[0] + sp[0] * np.arange(nx)
    y = o[1] + sp[1] * np.arange(ny)
    z = o[2] + sp[2] * np.arange(nz)
    m = geometry._modulation(x)
    out = np.empty_like(base)
    for i0 in range(0, nx, chunk):
        i1 = min(nx, i0 + chunk)
        mm = m[i0:i1][None, :]
        fy = ((geometry.y_fixed + (y[:, None] - geometry.y_fixed) / (1.0 + geometry.breathing_ap * mm)) - o[1]) / sp[1]
        fz = ((geometry.z_fixed + (z[:, None] - geometry.z_fixed) / (1.0 + geometry.breathing_cc * mm)) - o[2]) / sp[2]
        fy = np.clip(fy, 0.0, ny - 1.0)
        fz = np.clip(fz, 0.0, nz - 1.0)
        jy = np.minimum(fy.astype(int), ny - 2)
        kz = np.minimum(fz.astype(int), nz - 2)
        wy = (fy - jy).astype(np.float32)[None, :, :]
        wz = (fz - kz).astype(np.float32)[:, None, :]
        b = base[:, :, i0:i1]
        t = (np.take_along_axis(b, kz[:, None, :], axis=0) * (1 - wz)
             + np.take_along_axis(b, kz[:, None, :] + 1, axis=0) * wz)
        out[:, :, i0:i1] = (np.take_along_axis(t, jy[None, :, :], axis=1) * (1 - wy)
                            + np.take_along_axis(t, jy[None, :, :] + 1, axis=1) * wy)
    return out


def _warp_to_t2(base: np.ndarray, bgrid: _Grid, render2: _Grid, geometry: PairGeometry) -> np.ndarray:
    """Sample the body-frame anatomy on the T2 render grid through :math:`F^{-1}`.

    :math:`F^{-1}(\\mathbf{w}) = G(R^T(\\mathbf{w} - \\mathbf{c} - \\mathbf{t}) + \\mathbf{c})`
    is applied in two exact steps: the breathing :math:`G` on the body grid
    (:func:`_breathe`), then the rigid part by SimpleITK's multi-threaded
    linear resampling with an affine transform.
    """
    v = bgrid.apply(sitk.GetImageFromArray(_breathe(base, bgrid, geometry)))
    tx = sitk.AffineTransform(3)
    # sitk: T(w) = A (w - C) + C + T0; with A = R^T, C = c + t, T0 = -t this is
    # R^T (w - c - t) + c
    tx.SetMatrix(tuple(float(a) for a in geometry.rotation.T.ravel()))
    tx.SetCenter(tuple(float(a) for a in geometry.center + geometry.translation))
    tx.SetTranslation(tuple(float(-a) for a in geometry.translation))
    out = sitk.Resample(v, render2.reference(), tx, sitk.sitkLinear, HU_AIR, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


# ---------------------------------------------------------------------------
# synthetic DICOM tags (PHI is fake, drawn from the seed)
# ---------------------------------------------------------------------------

_FIRST = ["Anna", "Bernd", "Clara", "David", "Elif", "Farid", "Greta", "Hugo", "Ines", "Jonas",
          "Karin", "Lars", "Maria", "Nils", "Olga", "Paul", "Rosa", "Stefan", "Tamara", "Uwe"]
_LAST = ["Adler", "Berger", "Castro", "Dumont", "Eriksen", "Fischer", "Garcia", "Horvat",
         "Ivanova", "Jansen", "Keller", "Lindqvist", "Moreau", "Novak", "Ortega", "Peters"]
_INSTITUTIONS = ["St. Elsewhere General Hospital", "Phantom University Medical Center",
                 "Synthetic Lung Clinic", "Riverside Imaging Institute"]


def _make_tags(rng: np.random.Generator, patient_id: str, t1_date: _dt.date, t2_date: _dt.date,
               scans: tuple[ScanSpec, ScanSpec]) -> tuple[dict, dict]:
    sex = str(rng.choice(["F", "M"]))
    name = f"{_LAST[int(rng.integers(len(_LAST)))]}^{_FIRST[int(rng.integers(len(_FIRST)))]}"
    birth = t1_date - _dt.timedelta(days=int(rng.integers(50 * 365, 80 * 365)))
    tags = []
    for i, (date, scan) in enumerate(zip((t1_date, t2_date), scans)):
        age = (date - birth).days // 365
        tags.append({
            "PatientName": name,
            "PatientID": patient_id,
            "PatientBirthDate": birth.strftime("%Y%m%d"),
            "PatientSex": sex,
            "PatientAge": f"{age:03d}Y",
            "InstitutionName": _INSTITUTIONS[int(rng.integers(len(_INSTITUTIONS)))],
            "ReferringPhysicianName": f"{_LAST[int(rng.integers(len(_LAST)))]}^{_FIRST[int(rng.integers(len(_FIRST)))]}^^Dr.",
            "AccessionNumber": f"A{int(rng.integers(10**7, 10**8))}",
            "StudyID": str(int(rng.integers(1000, 9999))),
            "StudyDate": date.strftime("%Y%m%d"),
            "SeriesDate": date.strftime("%Y%m%d"),
            "AcquisitionDate": date.strftime("%Y%m%d"),
            "StudyTime": f"{int(rng.integers(7, 18)):02d}{int(rng.integers(0, 60)):02d}00",
            "Manufacturer": scan.manufacturer,
            "ManufacturerModelName": scan.model,
            "KVP": float(scan.kvp),
            "SliceThickness": float(scan.slice_thickness),
            "ConvolutionKernel": scan.kernel,
            "StudyDescription": "CT CHEST WITHOUT CONTRAST" if i == 0 else "CT CHEST FOLLOW-UP NODULE",
            "SeriesDescription": f"Thorax {scan.slice_thickness:g} mm {scan.kernel}",
            "BodyPartExamined": "CHEST",
            "XRayTubeCurrent": int(rng.integers(40, 220)),
            "ReconstructionDiameter": float(scan.size_xy * scan.spacing_xy),
        })
    return tags[0], tags[1]


# ---------------------------------------------------------------------------
# the pair
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PhantomPair:
    """A synthetic T1/T2 chest-CT pair with its truth.

    Attributes
    ----------
    t1, t2 : SimpleITK.Image
        3-D ``sitkFloat32`` HU images (integer-valued, as stored by scanners),
        LPS; T1 world = body frame.
    truth : pandas.DataFrame
        One row per nodule, columns :data:`TRUTH_COLUMNS` (see
        :func:`make_pair`).
    t1_tags, t2_tags : dict
        DICOM attributes by keyword with synthetic PHI (same patient).
    t1_date, t2_date : datetime.date
    patient_id : str
    spec : PairSpec
        The resolved specification (random fields filled in).
    geometry : PairGeometry
        The body (T1) <-> T2 world maps.
    seed : int
    """

    t1: sitk.Image
    t2: sitk.Image
    truth: pd.DataFrame
    t1_tags: dict
    t2_tags: dict
    t1_date: _dt.date
    t2_date: _dt.date
    patient_id: str
    spec: PairSpec
    geometry: PairGeometry
    seed: int
    _nodules: tuple = ()
    _anatomy: Any = None

    @property
    def interval_days(self) -> int:
        """T2 date minus T1 date in days."""
        return (self.t2_date - self.t1_date).days

    def nodule_occupancy(self, nodule_id: int, time: int, reference: sitk.Image | None = None,
                         *, supersample: int = 3, core: bool = False) -> sitk.Image:
        """Partial-volume occupancy (0..1) of one true nodule on an image grid.

        Rendered from the continuous shape (supersampled), *without* PSF or
        slice-thickness blur: a ground-truth mask for segmentation studies
        (threshold at 0.5 for a binary mask).

        Parameters
        ----------
        nodule_id : int
            ``truth.nodule_id`` of the nodule.
        time : {1, 2}
        reference : SimpleITK.Image, optional
            Grid to render on (default: ``t1`` or ``t2``).
        supersample : int
            Sub-samples per voxel and axis.
        core : bool
            Occupancy of the solid core of a part-solid nodule instead.

        Returns
        -------
        SimpleITK.Image
            ``sitkFloat32`` occupancy on the reference grid.

        Raises
        ------
        PhantomSpecError
            Unknown ``nodule_id`` or ``time``.

        Examples
        --------
        >>> pair = make_pair(2, nodules=[NoduleSpec(shape="sphere", location="isolated",
        ...                  diameter_mm=12.0, volume_ratio=1.0)])
        >>> occ = pair.nodule_occupancy(1, 1)
        >>> v = float(sitk.GetArrayViewFromImage(occ).sum()) * np.prod(occ.GetSpacing())
        >>> bool(abs(v / pair.truth.t1_volume_mm3.iloc[0] - 1) < 0.01)
        True
        """
        if time not in (1, 2):
            raise PhantomSpecError(f"time={time!r} invalid; use 1 (T1) or 2 (T2)")
        nods = [n for n in self._nodules if n.nodule_id == int(nodule_id)]
        if not nods:
            raise PhantomSpecError(f"nodule_id={nodule_id!r} not in this pair; see pair.truth.nodule_id")
        ref = reference if reference is not None else (self.t1 if time == 1 else self.t2)
        grid = _Grid(np.array(ref.GetOrigin()), np.array(ref.GetSpacing()), ref.GetSize(),
                     np.array(ref.GetDirection()).reshape(3, 3))
        arr = np.zeros(ref.GetSize()[::-1], np.float32)
        occ = _occupancy(grid, nods[0], time, self.geometry, self._anatomy, sub=supersample, core=core)
        if occ is not None:
            arr[occ[0]] = occ[1]
        return grid.apply(sitk.GetImageFromArray(arr))


def _resolve_scan(base: ScanSpec, value: Any, name: str) -> ScanSpec:
    if value is None:
        return base
    if isinstance(value, ScanSpec):
        return value
    if isinstance(value, Mapping):
        try:
            return dataclasses.replace(base, **dict(value))
        except TypeError as exc:
            raise PhantomSpecError(f"{name}: {exc}; use ScanSpec field names") from exc
    raise PhantomSpecError(f"{name}={value!r} invalid; give a ScanSpec or a dict of ScanSpec fields")


def _check_range(name: str, values, bound: float) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(values, float))
    if not np.all(np.isfinite(arr)) or np.any(np.abs(arr) > bound + 1e-12):
        raise PhantomSpecError(f"{name}={tuple(arr.tolist())} outside [-{bound}, {bound}]")
    return arr


def make_pair(seed: int, preset: str = "small", **overrides: Any) -> PhantomPair:
    """Make a deterministic synthetic T1/T2 chest-CT pair with known nodule truth.

    Parameters
    ----------
    seed : int
        Seed of ``numpy.random.default_rng``-style generators (one independent
        child stream each for anatomy, nodules, repositioning, the two
        acquisitions and the tags). Same seed and arguments -> identical
        images and truth.
    preset : {'small', 'full'}
        ``small``: 160 x 160 x 100 at 2.25 x 2.25 x 2.5 mm (T2 slightly
        different; measured 4.7 s of CPU time); ``full``: 512 x 512 x 250 at
        0.7 x 0.7 x 1 mm (T2 0.72 mm pixels, 260 slices of 1.25 mm every
        1 mm; measured 23 s of CPU time, 36 s wall on 2 shared cores,
        1.4 GiB peak memory).
    **overrides
        Fields of :class:`PairSpec`: ``nodules`` (sequence of
        :class:`NoduleSpec`), ``n_nodules``, ``translation_mm``,
        ``rotation_deg``, ``breathing_cc``, ``breathing_ap``,
        ``interval_days``, ``t1_date``, ``patient_id``, and ``t1_scan`` /
        ``t2_scan`` (a :class:`ScanSpec`, or a dict of fields replacing the
        preset's, e.g. ``t2_scan={"noise_sd": 30}``).

    Returns
    -------
    PhantomPair
        ``truth`` columns: ``patient_id, nodule_id, kind, shape, location``;
        ``t1_x, t1_y, t1_z, t2_x, t2_y, t2_z`` (centroid of the continuous
        shape, world LPS mm of each scan); ``t{1,2}_volume_mm3``;
        ``t{1,2}_long_axis_mm`` (longest axial in-plane diameter over all
        axial planes), ``t{1,2}_short_axis_mm`` (longest extent perpendicular
        to it in the same plane), ``t{1,2}_mean_diameter_mm`` = (long +
        short) / 2 (Lung-RADS v2022, ACR), ``t{1,2}_max_3d_diameter_mm``;
        ``t{1,2}_solid_volume_mm3`` (part-solid, else NaN);
        ``interval_days``, ``volume_ratio`` (:math:`V_2/V_1` of the truth),
        ``t1_date``, ``t2_date``; ``volume_rel_precision`` and
        ``diameter_precision_mm`` (0 for analytic truth, else the change
        between the last two numerical refinements).

        For a sphere of radius :math:`r`, :math:`V = \\tfrac{4}{3}\\pi r^3`;
        an ellipsoid with semi-axes :math:`a, b, c`, :math:`V =
        \\tfrac{4}{3}\\pi abc`, and its axial diameters are
        :math:`2/\\sqrt{\\lambda_{min,max}(A_{xy})}` with
        :math:`A = R\\,\\mathrm{diag}(a^{-2}, b^{-2}, c^{-2})R^T`.
        Lobulated and pleura-clipped shapes are integrated numerically
        (:func:`_integrate`, converged to 0.2 % relative).

    Raises
    ------
    PhantomSpecError
        Unknown preset or override, or a value out of range.

    Examples
    --------
    >>> pair = make_pair(0, nodules=[NoduleSpec(kind="solid", shape="sphere",
    ...                  location="isolated", diameter_mm=10.0, volume_ratio=2.0)])
    >>> pair.t1.GetSize()
    (160, 160, 100)
    >>> row = pair.truth.iloc[0]
    >>> float(round(row.t1_volume_mm3, 1)), float(round(row.volume_ratio, 3))
    (523.6, 2.0)
    """
    if preset not in PRESETS:
        raise PhantomSpecError(f"preset={preset!r} unknown; use one of {sorted(PRESETS)}")
    known = {f.name for f in dataclasses.fields(PairSpec)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise PhantomSpecError(f"unknown override(s) {bad}; use PairSpec fields {sorted(known)}")
    try:
        seed = int(seed)
    except (TypeError, ValueError) as exc:
        raise PhantomSpecError(f"seed={seed!r} is not an integer") from exc
    if seed < 0:
        raise PhantomSpecError(f"seed={seed} is negative; use a non-negative integer")
    t1_scan = _resolve_scan(PRESETS[preset]["t1"], overrides.pop("t1_scan", None), "t1_scan")
    t2_scan = _resolve_scan(PRESETS[preset]["t2"], overrides.pop("t2_scan", None), "t2_scan")
    t1_scan.validate("t1_scan")
    t2_scan.validate("t2_scan")
    streams = np.random.SeedSequence(seed).spawn(7)
    r_anat, r_nod, r_pair, r_acq1, r_acq2, r_tags, r_tex = (np.random.default_rng(s) for s in streams)

    # -- pair-level random choices (overridable) --------------------------------
    center = np.array([r_pair.uniform(-4, 4), r_pair.uniform(-4, 4), r_pair.uniform(-200.0, -120.0)])
    tr = overrides.get("translation_mm")
    tr = r_pair.uniform(-10, 10, 3) if tr is None else _check_range("translation_mm", tr, 20.0)
    rot = overrides.get("rotation_deg")
    rot = r_pair.uniform(-3, 3, 3) if rot is None else _check_range("rotation_deg", rot, 5.0)
    cc = overrides.get("breathing_cc")
    cc = float(r_pair.uniform(-0.05, 0.05)) if cc is None else float(_check_range("breathing_cc", cc, 0.08)[0])
    ap = overrides.get("breathing_ap")
    ap = float(r_pair.uniform(-0.025, 0.025)) if ap is None else float(_check_range("breathing_ap", ap, 0.04)[0])
    if tr.shape != (3,) or rot.shape != (3,):
        raise PhantomSpecError("translation_mm and rotation_deg need 3 values (x, y, z)")
    interval = overrides.get("interval_days")
    interval = int(r_pair.choice([90, 180, 365, 730]) + r_pair.integers(-14, 15)) if interval is None else int(interval)
    if interval < 1:
        raise PhantomSpecError(f"interval_days={interval} < 1; T2 must be after T1")
    t1_date = overrides.get("t1_date")
    t1_date = _dt.date(2016, 1, 4) + _dt.timedelta(days=int(r_pair.integers(0, 2500))) if t1_date is None else t1_date
    if not isinstance(t1_date, _dt.date):
        raise PhantomSpecError(f"t1_date={t1_date!r} is not a datetime.date")
    t2_date = t1_date + _dt.timedelta(days=interval)
    patient_id = overrides.get("patient_id") or f"PH{seed:05d}"

    anat = _Anatomy(r_anat, center)
    geometry = PairGeometry(
        center=center, rotation=Rotation.from_euler("xyz", rot, degrees=True).as_matrix(),
        translation=np.asarray(tr, float), breathing_cc=cc, breathing_ap=ap,
        z_fixed=center[2] + anat.z_apex, y_fixed=center[1] + anat.spine_y)

    # -- nodules ---------------------------------------------------------------
    specs = overrides.get("nodules")
    if specs is None:
        n = overrides.get("n_nodules")
        n = int(r_nod.integers(1, 4)) if n is None else int(n)
        if not 0 <= n <= 8:
            raise PhantomSpecError(f"n_nodules={n} outside [0, 8]")
        specs = [NoduleSpec()] * n
    specs = list(specs)
    nodules: list[_Nodule] = []
    for i, spec in enumerate(specs):
        if not isinstance(spec, NoduleSpec):
            raise PhantomSpecError(f"nodules[{i}]={spec!r} is not a NoduleSpec")
        spec.validate(f"nodules[{i}]")
        rng_i = np.random.default_rng([seed, 1000 + i])
        nod = _random_nodule(spec, i + 1, rng_i)
        _place(nod, anat, rng_i, nodules)
        nod.center2 = geometry.forward(nod.center1[None, :])[0]
        nodules.append(nod)

    resolved = PairSpec(t1_scan=t1_scan, t2_scan=t2_scan, nodules=tuple(specs), n_nodules=len(specs),
                        translation_mm=tuple(float(v) for v in tr), rotation_deg=tuple(float(v) for v in rot),
                        breathing_cc=cc, breathing_ap=ap, interval_days=interval, t1_date=t1_date,
                        patient_id=patient_id)

    # -- images ------------------------------------------------------------------
    fov1 = center + np.array([*t1_scan.center_offset_xy, t1_scan.z_coverage_center])
    out1, render1, nsub1 = _render_grid(t1_scan, _fov_origin(t1_scan, fov1))
    fov2 = center + np.asarray(tr) + np.array([*t2_scan.center_offset_xy, t2_scan.z_coverage_center])
    out2, render2, nsub2 = _render_grid(t2_scan, _fov_origin(t2_scan, fov2))

    tic = _time.perf_counter()
    base, bgrid = _render_base(anat, render1, r_tex)
    logger.debug("base anatomy %s rendered in %.1f s", base.shape, _time.perf_counter() - tic)
    tic = _time.perf_counter()
    arr2 = _warp_to_t2(base, bgrid, render2, geometry)
    logger.debug("T2 warp in %.1f s", _time.perf_counter() - tic)
    if np.allclose(render1.direction, np.eye(3)):
        k = np.rint(bgrid.index(render1.origin)).astype(int)
        arr1 = base[k[2]:k[2] + render1.size[2], k[1]:k[1] + render1.size[1], k[0]:k[0] + render1.size[0]].copy()
    else:
        arr1 = sitk.GetArrayFromImage(sitk.Resample(bgrid.apply(sitk.GetImageFromArray(base)), render1.reference(),
                                                    sitk.Transform(), sitk.sitkLinear, HU_AIR, sitk.sitkFloat32))
    del base
    tic = _time.perf_counter()
    for nod in nodules:
        _draw_nodule(arr1, render1, nod, 1, geometry, anat)
        _draw_nodule(arr2, render2, nod, 2, geometry, anat)
    t1 = _acquire(arr1, render1, out1, nsub1, t1_scan, r_acq1)
    del arr1
    t2 = _acquire(arr2, render2, out2, nsub2, t2_scan, r_acq2)
    logger.debug("nodules drawn, acquisition simulated in %.1f s", _time.perf_counter() - tic)
    tic = _time.perf_counter()
    del arr2

    # -- truth -------------------------------------------------------------------
    rows = []
    for nod in nodules:
        cache: dict = {}
        a = _truth_at(nod, 1, geometry, anat, cache)
        b = _truth_at(nod, 2, geometry, anat, cache)
        rows.append({
            "patient_id": patient_id, "nodule_id": nod.nodule_id, "kind": nod.kind, "shape": nod.shape,
            "location": nod.location,
            "t1_x": a["centroid"][0], "t1_y": a["centroid"][1], "t1_z": a["centroid"][2],
            "t2_x": b["centroid"][0], "t2_y": b["centroid"][1], "t2_z": b["centroid"][2],
            "t1_volume_mm3": a["volume"], "t2_volume_mm3": b["volume"],
            "t1_long_axis_mm": a["long"], "t1_short_axis_mm": a["short"],
            "t1_mean_diameter_mm": (a["long"] + a["short"]) / 2.0, "t1_max_3d_diameter_mm": a["max3d"],
            "t2_long_axis_mm": b["long"], "t2_short_axis_mm": b["short"],
            "t2_mean_diameter_mm": (b["long"] + b["short"]) / 2.0, "t2_max_3d_diameter_mm": b["max3d"],
            "t1_solid_volume_mm3": a["solid"], "t2_solid_volume_mm3": b["solid"],
            "interval_days": interval, "volume_ratio": b["volume"] / a["volume"],
            "t1_date": t1_date.isoformat(), "t2_date": t2_date.isoformat(),
            "volume_rel_precision": max(a["vprec"], b["vprec"]),
            "diameter_precision_mm": max(a["dprec"], b["dprec"]),
        })
    truth = pd.DataFrame(rows, columns=TRUTH_COLUMNS)
    logger.debug("truth computed in %.1f s", _time.perf_counter() - tic)
    t1_tags, t2_tags = _make_tags(r_tags, patient_id, t1_date, t2_date, (t1_scan, t2_scan))
    return PhantomPair(t1=t1, t2=t2, truth=truth, t1_tags=t1_tags, t2_tags=t2_tags, t1_date=t1_date,
                       t2_date=t2_date, patient_id=patient_id, spec=resolved, geometry=geometry, seed=seed,
                       _nodules=tuple(nodules), _anatomy=anat)


# ---------------------------------------------------------------------------
# writing pairs and cohorts
# ---------------------------------------------------------------------------

_SUFFIX = {"nifti": ".nii.gz", "mha": ".mha", "nrrd": ".nrrd"}


def _ball_offset(rng: np.random.Generator, radius: float) -> np.ndarray:
    """Uniform random point in a ball of ``radius`` mm (a reader's click error)."""
    d = rng.normal(size=3)
    d /= np.linalg.norm(d)
    return d * radius * rng.uniform() ** (1.0 / 3.0)


def manifest_rows(pair: PhantomPair, t1_image: str, t2_image: str, *, dates: bool = True,
                  index_nodules: Iterable[int] = (), click_error_mm: float = 1.5,
                  diameter_sd_mm: float = 1.0, grow_threshold: float = 1.25) -> list[dict]:
    """Simulated radiologist manifest rows (docs/CONTRACT.md) for one pair.

    Parameters
    ----------
    pair : PhantomPair
    t1_image, t2_image : str
        Image paths as they should appear in the manifest (relative to it).
    dates : bool
        Give ``t1_date``/``t2_date``; leave them empty for DICOM so that the
        pipeline reads AcquisitionDate from the headers.
    index_nodules : iterable of int
        Nodule ids whose T1 point is given as a voxel index ``t1_i, t1_j,
        t1_k`` (0-based ITK index of the stored T1 file) instead of world mm.
    click_error_mm : float
        Radius of the uniform ball of the simulated click error at T1 and T2.
    diameter_sd_mm : float
        Standard deviation of the reader's diameter error (Gaussian).
    grow_threshold : float
        ``diagnosis`` is ``malignant`` when the true volume ratio exceeds it,
        else ``benign``.

    Returns
    -------
    list of dict
        One row per nodule with the keys :data:`MANIFEST_COLUMNS`. Seeded from
        ``pair.seed``, so repeated calls give the same rows.

    Examples
    --------
    >>> pair = make_pair(1, nodules=[NoduleSpec(diameter_mm=8.0, location="isolated")])
    >>> rows = manifest_rows(pair, "p/T1.nii.gz", "p/T2.nii.gz")
    >>> rows[0]["t1_image"], rows[0]["diagnosis"] in ("malignant", "benign")
    ('p/T1.nii.gz', True)
    """
    rng = np.random.default_rng([pair.seed, 7777])
    index_nodules = {int(i) for i in index_nodules}
    rows = []
    for _, t in pair.truth.iterrows():
        p1 = np.array([t.t1_x, t.t1_y, t.t1_z]) + _ball_offset(rng, click_error_mm)
        p2 = np.array([t.t2_x, t.t2_y, t.t2_z]) + _ball_offset(rng, click_error_mm)
        d1 = max(1.0, t.t1_mean_diameter_mm + rng.normal(0.0, diameter_sd_mm))
        d2 = max(1.0, t.t2_mean_diameter_mm + rng.normal(0.0, diameter_sd_mm))
        row = {c: "" for c in MANIFEST_COLUMNS}
        row.update(patient_id=pair.patient_id, nodule_id=int(t.nodule_id), t1_image=t1_image,
                   t2_image=t2_image, t2_x=f"{p2[0]:.2f}", t2_y=f"{p2[1]:.2f}", t2_z=f"{p2[2]:.2f}",
                   t1_diameter_mm=f"{d1:.1f}", t2_diameter_mm=f"{d2:.1f}",
                   diagnosis="malignant" if t.volume_ratio > grow_threshold else "benign")
        if dates:
            row.update(t1_date=pair.t1_date.isoformat(), t2_date=pair.t2_date.isoformat())
        if int(t.nodule_id) in index_nodules:
            ijk = pair.t1.TransformPhysicalPointToIndex(tuple(float(v) for v in p1))
            row.update(t1_i=str(ijk[0]), t1_j=str(ijk[1]), t1_k=str(ijk[2]))
        else:
            row.update(t1_x=f"{p1[0]:.2f}", t1_y=f"{p1[1]:.2f}", t1_z=f"{p1[2]:.2f}")
        rows.append(row)
    return rows


def write_pair(pair: PhantomPair, out_dir: str | os.PathLike, fmt: str = "nifti", *,
               index_nodules: Iterable[int] = (), shuffle_dicom_names: bool = True,
               write_manifest: bool = True) -> list[dict]:
    """Write the two images of a pair (and a manifest and truth for it alone).

    Images go to ``out_dir/<patient_id>/T1<suffix>`` and ``T2<suffix>``
    (volume formats as int16 HU, via :func:`nodulegrowth.io.write_volume`; the
    gzip header time stamp of ``.nii.gz`` is zeroed) or to the DICOM
    series folders ``out_dir/<patient_id>/T1/`` and ``T2/`` (via
    :func:`nodulegrowth.io.write_dicom_series` with the pair's tags and UIDs
    derived from the seed, so the output is reproducible bit for bit).

    Parameters
    ----------
    pair : PhantomPair
    out_dir : str or os.PathLike
    fmt : {'nifti', 'mha', 'nrrd', 'dicom'}
    index_nodules : iterable of int
        Nodule ids whose T1 point the manifest gives as a voxel index.
    shuffle_dicom_names : bool
        Give DICOM files random (seeded) names, as messy exports do.
    write_manifest : bool
        Also write ``manifest.csv`` and ``truth.csv`` for this pair alone.

    Returns
    -------
    list of dict
        The manifest rows (paths relative to ``out_dir``).

    Raises
    ------
    PhantomSpecError
        If ``fmt`` is unknown.

    Examples
    --------
    >>> import tempfile
    >>> pair = make_pair(1, nodules=[NoduleSpec(diameter_mm=8.0)])
    >>> with tempfile.TemporaryDirectory() as d:
    ...     rows = write_pair(pair, d, "mha")
    ...     sorted(p.name for p in Path(d).rglob("*.*"))
    ['T1.mha', 'T2.mha', 'manifest.csv', 'truth.csv']
    """
    from . import io as ngio

    out_dir = Path(out_dir)
    folder = out_dir / pair.patient_id
    if fmt == "dicom":
        rng = np.random.default_rng([pair.seed, 4242])
        for name, img, tags, series in (("T1", pair.t1, pair.t1_tags, 1), ("T2", pair.t2, pair.t2_tags, 2)):
            target = folder / name
            if target.exists():
                shutil.rmtree(target)
            ngio.write_dicom_series(img, target, tags, series_number=series,
                                    shuffle_names=shuffle_dicom_names, rng=rng)
        rel1, rel2 = f"{pair.patient_id}/T1", f"{pair.patient_id}/T2"
    elif fmt in _SUFFIX:
        rel1 = f"{pair.patient_id}/T1{_SUFFIX[fmt]}"
        rel2 = f"{pair.patient_id}/T2{_SUFFIX[fmt]}"
        # integer HU stored as int16, like scanner exports (lossless: the
        # phantom's values are already rounded and clipped to [-1024, 3071])
        ngio.write_volume(sitk.Cast(pair.t1, sitk.sitkInt16), out_dir / rel1)
        ngio.write_volume(sitk.Cast(pair.t2, sitk.sitkInt16), out_dir / rel2)
        _strip_gzip_mtime(out_dir / rel1)
        _strip_gzip_mtime(out_dir / rel2)
    else:
        raise PhantomSpecError(f"fmt={fmt!r} unknown; use one of {sorted(_SUFFIX) + ['dicom']}")
    rows = manifest_rows(pair, rel1, rel2, dates=(fmt != "dicom"), index_nodules=index_nodules)
    if write_manifest:
        _write_csv(out_dir / "manifest.csv", rows, MANIFEST_COLUMNS)
        _write_truth(out_dir / "truth.csv", [pair.truth])
    return rows


def _strip_gzip_mtime(path: Path) -> None:
    """Zero the gzip header's MTIME field (bytes 4-7) so output is reproducible."""
    if not str(path).endswith(".gz"):
        return
    with open(path, "r+b") as fh:
        head = fh.read(10)
        if head[:2] == b"\x1f\x8b" and head[4:8] != b"\0\0\0\0":
            fh.seek(4)
            fh.write(b"\0\0\0\0")


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in columns})


def _write_truth(path: Path, truths: list[pd.DataFrame]) -> None:
    df = pd.concat(truths, ignore_index=True) if truths else pd.DataFrame(columns=TRUTH_COLUMNS)
    df.to_csv(path, index=False, float_format="%.4f", lineterminator="\n")


def write_cohort(out_dir: str | os.PathLike,
                 pairs_with_formats: Sequence[tuple[PhantomPair, str] | tuple[PhantomPair, str, Iterable[int]]],
                 ) -> tuple[Path, Path]:
    """Write several pairs, one ``manifest.csv`` and one ``truth.csv``.

    Parameters
    ----------
    out_dir : str or os.PathLike
        Cohort folder; images go to ``out_dir/<patient_id>/``.
    pairs_with_formats : sequence of (PhantomPair, fmt) or (PhantomPair, fmt, index_nodules)
        ``fmt`` as in :func:`write_pair`; ``index_nodules`` are the nodule
        ids whose T1 point is given as a voxel index.

    Returns
    -------
    (pathlib.Path, pathlib.Path)
        The manifest and truth paths.

    Raises
    ------
    PhantomSpecError
        Two pairs with the same patient id, or a bad format.

    Examples
    --------
    >>> import tempfile
    >>> a = make_pair(1, nodules=[NoduleSpec(diameter_mm=8.0)])
    >>> with tempfile.TemporaryDirectory() as d:
    ...     m, t = write_cohort(d, [(a, "nifti", [1])])
    ...     pd.read_csv(m).t1_i.notna().tolist()
    [True]
    """
    out_dir = Path(out_dir)
    seen: set[str] = set()
    rows: list[dict] = []
    truths = []
    for item in pairs_with_formats:
        pair, fmt = item[0], item[1]
        idx = item[2] if len(item) > 2 else ()
        if pair.patient_id in seen:
            raise PhantomSpecError(f"patient_id {pair.patient_id!r} twice; give each pair its own patient_id")
        seen.add(pair.patient_id)
        rows += write_pair(pair, out_dir, fmt, index_nodules=idx, write_manifest=False)
        truths.append(pair.truth)
    _write_csv(out_dir / "manifest.csv", rows, MANIFEST_COLUMNS)
    _write_truth(out_dir / "truth.csv", truths)
    return out_dir / "manifest.csv", out_dir / "truth.csv"
