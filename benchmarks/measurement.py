#!/usr/bin/env python
"""Accuracy and repeatability of nodule segmentation, measurement and growth.

Run by hand::

    python benchmarks/measurement.py                 # default grid, prints tables
    python benchmarks/measurement.py --quick         # a few cases per cell
    python benchmarks/measurement.py --jobs 2        # the same rows, segmented in two processes
    python benchmarks/measurement.py --write-model   # also refit nodulegrowth/params/uncertainty_model.csv

Phantoms are rendered analytically here (no dependence on our own phantom
generator's constants): ellipsoidal nodules with random orientation, random
tissue levels (lung -880..-800 HU, solid 0..60 HU, ground glass -700..-520 HU;
``--gg-hu``, e.g. -450 -300 for rims denser than halfway to water),
random noise (SD 10..30 HU; ``--noise``), exact partial-volume occupancy by
supersampling each voxel (which also integrates the slice thickness: the
slice sensitivity profile is a box of one slice spacing), a Gaussian in-plane
point-spread function (sigma 0.5..0.7 mm; ``--psf``), 0.7 mm pixels
(``--inplane``) and sub-voxel random positions. Attached structures: a
vessel (cylinder, radius 0.6..1.5 mm, random direction) touching the nodule,
or a chest wall (half-space, random in-plane normal) tangent to it.

Truth is analytic: volume :math:`4/3 \\pi a b c`; the Lung-RADS axes are those
of the central axial cross-section of the ellipsoid (the ellipse of the 2x2
block :math:`B` of its quadric, semi-axes :math:`1/\\sqrt{\\lambda(B)}`); the
max 3-D diameter is :math:`2 \\max(a, b, c)`.

Each pair is segmented as the pipeline does it: both scans on their own, then,
when one is part-solid and the other not, the other again as part-solid
(``nodulegrowth.cohort.harmonise_types``; column ``type_from_both``), then
the smaller one again at the larger one's tissue level
(``nodulegrowth.cohort.share_tissue_level``; column ``level_changed`` when
the levels differ too much for that). The
pipeline also passes a lung mask; here that is ``--lung-masks`` (the VOI but
a juxtapleural scene's chest wall), off by default: the segmentation then
finds the chest wall itself, which changes juxtapleural nodules only.

Tables: by nodule type x size band x slice thickness, the median and 90th
percentile of the absolute volume error (%), the mean absolute error of the
long axis and mean diameter (mm), the growth-category agreement of each
criterion with the truth (pairs T1/T2 with a random volume ratio; the three
categories of the contract's ``growth`` column), the detection of growth alone
(``grew`` against the rest, the question the criteria ask: sensitivity and
precision, ``_growth_detection``), leak flags
on attached nodules, where the ``tissue_level_uncertain`` flag falls, and the
agreement the change errors of the cleanly segmented pairs alone would allow
(``_noise_floor``); and repeatability (same nodule, new noise, position and
rotation about z; the repeats typed jointly as the pipeline types T1 and T2,
and drawn from a random stream of their own): coefficient of variation of the
volume and mean diameter.
An uncertainty model :math:`\\mathrm{CV} = k\\,(h/D)^p` (h the geometric-mean
voxel size, D the nodule diameter) is fitted per nodule type to the
repeatability data and, with ``--write-model``, written to
``nodulegrowth/params/uncertainty_model.csv``.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nodulegrowth import growth as G  # noqa: E402
from nodulegrowth.errors import NoduleGrowthError  # noqa: E402
from nodulegrowth.measure import measure_nodule  # noqa: E402
from nodulegrowth.cohort import harmonise_types, share_tissue_level  # noqa: E402
from nodulegrowth.segment import segment_nodule  # noqa: E402

TYPES = ("solid", "part_solid", "ground_glass")
LOCATIONS = ("isolated", "juxtavascular", "juxtapleural")
SIZE_BANDS = ((4.0, 6.0), (6.0, 10.0), (10.0, 20.0), (20.0, 30.0))
THICKNESSES = (1.0, 1.25, 2.5, 5.0)
#: scan conditions: in-plane pixel (mm), noise SD range (HU), PSF sigma range
#: (mm); the defaults are those every figure in docs/VALIDATION.md was
#: measured with unless it names others (``--inplane``, ``--noise``, ``--psf``)
INPLANE = 0.7
NOISE_HU = (10.0, 30.0)
PSF_MM = (0.5, 0.7)
#: ground-glass level range (HU) of ground-glass nodules and part-solid rims
GG_HU = (-700.0, -520.0)
#: segment with the scene's lung mask, as the pipeline does (``--lung-masks``);
#: off by default, as every figure in docs/VALIDATION.md unless it says so
LUNG_MASKS = False


# --------------------------------------------------------------------------
# analytic scene
# --------------------------------------------------------------------------
def random_rotation(rng):
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    a, b, c, d = q
    return np.array([
        [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
        [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
        [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d],
    ])


class Ellipsoid:
    """Ellipsoid with semi-axes (a, b, c) mm, rotation R (body -> world, xyz), centre (x, y, z)."""

    def __init__(self, axes, rot, centre=(0.0, 0.0, 0.0)):
        self.axes = np.asarray(axes, float)
        self.rot = np.asarray(rot, float)
        self.centre = np.asarray(centre, float)
        # quadric p^T A p <= 1 in world xyz
        self.A = self.rot @ np.diag(1.0 / self.axes ** 2) @ self.rot.T

    def inside(self, z, y, x):
        p = np.stack([x - self.centre[0], y - self.centre[1], z - self.centre[2]], -1)
        return np.einsum("...i,ij,...j->...", p, self.A, p) <= 1.0

    def scaled(self, s):
        return Ellipsoid(self.axes * s, self.rot, self.centre)

    def volume(self):
        return 4.0 / 3.0 * math.pi * float(np.prod(self.axes))

    def axial_axes(self):
        lam = np.linalg.eigvalsh(self.A[:2, :2])
        long, short = 2.0 / math.sqrt(lam.min()), 2.0 / math.sqrt(lam.max())
        return long, short

    def support(self, n):
        """Extent (mm) of the ellipsoid from its centre along unit vector n (xyz)."""
        return float(math.sqrt(n @ np.linalg.inv(self.A) @ n))


def make_scene(rng, kind, location, diameter, scale=1.0):
    """Objects (inside, HU) painted in order, the nodule ellipsoid(s) and levels."""
    lung = rng.uniform(-880, -800)
    solid_hu = rng.uniform(0, 60)
    gg_hu = rng.uniform(*GG_HU)
    elong = rng.uniform(1.0, 1.5, 3)
    axes = 0.5 * diameter * elong / float(np.prod(elong)) ** (1 / 3)
    rot = random_rotation(rng)
    outer = Ellipsoid(axes, rot)
    levels = dict(lung=lung, solid=solid_hu, gg=gg_hu)
    return dict(outer=outer, kind=kind, location=location, levels=levels,
                core_frac=rng.uniform(0.4, 0.6), core_shift=rng.uniform(-0.15, 0.15, 3),
                vessel=(rng.uniform(0.6, 1.5), _unit(rng.normal(size=3)), _unit(rng.normal(size=3))),
                wall_normal=_unit(np.r_[rng.normal(size=2), 0.0]))


def _unit(v):
    return np.asarray(v, float) / np.linalg.norm(v)


def scene_objects(scene, scale=1.0):
    """Render list for the nodule scaled by ``scale`` (growth is isotropic scaling)."""
    o = scene["outer"].scaled(scale)
    lv = scene["levels"]
    objs = []
    if scene["location"] == "juxtavascular":
        rv, direction, side = scene["vessel"]
        side = _unit(side - (side @ direction) * direction)  # perpendicular to the vessel
        dist = o.support(side) + rv - 0.3  # overlaps the nodule by 0.3 mm
        p = o.centre + side * dist
        objs.append((_cylinder(rv, p, direction), lv["solid"] + 10.0))
    if scene["location"] == "juxtapleural":
        n = scene["wall_normal"]
        off = o.support(n)  # tangent to the nodule
        objs.append((lambda z, y, x, n=n, off=off: x * n[0] + y * n[1] + z * n[2] >= off, lv["solid"] + 10.0))
    if scene["kind"] == "solid":
        objs.append((o.inside, lv["solid"]))
    else:
        objs.append((o.inside, lv["gg"]))
        if scene["kind"] == "part_solid":
            core = Ellipsoid(o.axes * scene["core_frac"], o.rot, o.centre + scene["core_shift"] * o.axes)
            objs.append((core.inside, lv["solid"]))
    return objs, o


def _cylinder(r, p, d):
    def inside(z, y, x):
        q = np.stack([x - p[0], y - p[1], z - p[2]], -1)
        t = q @ d
        return (q * q).sum(-1) - t * t <= r * r
    return inside


def _paint(objs, lung_hu, z, y, x):
    """HU and object id at points (later objects paint over earlier ones)."""
    v = np.full(z.shape, lung_hu, float)
    ids = np.zeros(z.shape, np.int16)
    for i, (inside, hu) in enumerate(objs, start=1):
        m = inside(z, y, x)
        v = np.where(m, hu, v)
        ids = np.where(m, i, ids)
    return v, ids


def render(objs, lung_hu, spacing, size_mm, rng, *, psf_mm, noise):
    """Supersampled PV rendering + in-plane Gaussian PSF + noise; returns (img, centre index).

    Voxels whose 26 neighbours all hold the same object at their centres are
    uniform; only the others (the boundary band) are supersampled.
    """
    sp = np.asarray(spacing, float)
    n = np.maximum(np.round(size_mm / sp).astype(int), 8)
    offset = rng.uniform(-0.5, 0.5, 3) * sp
    axes = [(np.arange(n[i]) - (n[i] - 1) / 2) * sp[i] + offset[i] for i in range(3)]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    img, ids = _paint(objs, lung_hu, z, y, x)
    band = ndimage.maximum_filter(ids, 3) != ndimage.minimum_filter(ids, 3)
    # thin objects can slip between centres along z with thick slices
    band = ndimage.binary_dilation(band, np.ones((3, 1, 1), bool))
    bz, by, bx = z[band], y[band], x[band]
    sub = (max(3, int(math.ceil(sp[0] / 0.35))), 4, 4)
    acc = np.zeros(bz.shape)
    for dz in (np.arange(sub[0]) + 0.5) / sub[0] - 0.5:
        for dy in (np.arange(sub[1]) + 0.5) / sub[1] - 0.5:
            for dx in (np.arange(sub[2]) + 0.5) / sub[2] - 0.5:
                acc += _paint(objs, lung_hu, bz + dz * sp[0], by + dy * sp[1], bx + dx * sp[2])[0]
    img[band] = acc / np.prod(sub)
    img = ndimage.gaussian_filter(img, [psf_mm / sp[0] if sp[0] < 2 * psf_mm else 0.0,
                                        psf_mm / sp[1], psf_mm / sp[2]], mode="nearest")
    img += rng.normal(0.0, noise, img.shape)
    centre = (n - 1) / 2 - offset / sp
    return img.astype(np.float32), tuple(float(c) for c in centre)


def scan(scene, scale, thickness, rng):
    objs, o = scene_objects(scene, scale)
    size = max(36.0, 4.0 * float(o.axes.max()) + 12.0)
    spacing = (thickness, INPLANE, INPLANE)
    img, c = render(objs, scene["levels"]["lung"], spacing, size, rng,
                    psf_mm=rng.uniform(*PSF_MM), noise=rng.uniform(*NOISE_HU))
    # the radiologist's click: within 1 mm of the centre
    click = np.asarray(c) + rng.uniform(-1, 1, 3) / np.asarray(spacing) * np.array([0.0, 1.0, 1.0])
    lung = scene_lung_mask(scene, objs, img.shape, spacing, c) if LUNG_MASKS else None
    return img, spacing, tuple(click), o, lung


def scene_lung_mask(scene, objs, shape, spacing, centre):
    """The scene's lung at the voxel centres (bool, shape (z, y, x)): all of the
    VOI but the chest wall of a juxtapleural scene, whose edge is the wall's
    surface, as a lung segmentation gives it. Draws no random numbers."""
    if scene["location"] != "juxtapleural":
        return np.ones(shape, bool)
    sp = np.asarray(spacing, float)
    n = np.asarray(shape)
    offset = ((n - 1) / 2 - np.asarray(centre)) * sp
    axes = [(np.arange(n[i]) - (n[i] - 1) / 2) * sp[i] + offset[i] for i in range(3)]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    return ~objs[0][0](z, y, x)  # the wall is the first object of a juxtapleural scene


def measure_scan(img, spacing, click, nodule_type=None, lung_mask=None, tissue_hu=None):
    seg = segment_nodule(img, spacing, click, lung_mask=lung_mask, nodule_type=nodule_type, tissue_hu=tissue_hu)
    m = measure_nodule(seg.mask, spacing, hu=img, solid_mask=seg.solid_mask, threshold_hu=seg.threshold_hu)
    return seg, m


# --------------------------------------------------------------------------
# experiments
# --------------------------------------------------------------------------
def _measure_pair(row: dict, scans) -> dict:
    """``row`` completed for one T1/T2 pair of rendered ``scans`` (see :func:`scan`): both segmented
    and measured as the pipeline does it, errors against the analytic truth, growth agreement;
    ``failed`` holds the error of a pair that could not be measured."""
    row = dict(row)
    kind, loc, interval = row["kind"], row["location"], row["interval"]
    try:
        res, truth, redo = [], [], {}
        for when, (img, sp, click, o, lung) in zip(("T1", "T2"), scans):
            res.append((*measure_scan(img, sp, click, lung_mask=lung), None))
            truth.append((o, *o.axial_axes()))
            redo[when] = (lambda t, level=None, a=(img, sp, click), lung=lung:
                          (*measure_scan(*a, nodule_type=t, lung_mask=lung, tissue_hu=level), None))
        # one type and one tissue level for both time points, as the pipeline does
        r1, r2, more = harmonise_types(res[0], res[1], redo)
        row["type_from_both"] = bool(more)
        r1, r2, more = share_tissue_level(r1, r2, redo)
        row["level_changed"] = "tissue_level_changed" in more
        (s1, m1, _), (s2, m2, _) = r1, r2
        (o1, l1, sh1), (o2, l2, sh2) = truth
        v1, v2 = o1.volume(), o2.volume()
        row.update(
            vol_err_pct=100 * (m1.volume_mm3 / v1 - 1),
            vol_pv_err_pct=100 * (m1.volume_pv_mm3 / v1 - 1),
            long_err=m1.long_axis_mm - l1,
            mean_err=m1.mean_diameter_mm - (l1 + sh1) / 2,
            max3d_err=m1.max_3d_diameter_mm - 2 * o1.axes.max(),
            type_ok=s1.nodule_type == kind,
            loc_ok=s1.location == loc,
            leak_flag="segmentation_leak" in s1.flags,
            level_flag="tissue_level_uncertain" in s1.flags,
            size_flag="thick_slices_for_size" in s1.flags,
            vol_err2_pct=100 * (m2.volume_mm3 / v2 - 1),
            mean_err2=m2.mean_diameter_mm - (l2 + sh2) / 2,
            type_ok2=s2.nodule_type == kind,
            leak_flag2="segmentation_leak" in s2.flags,
            level_flag2="tissue_level_uncertain" in s2.flags,
            size_flag2="thick_slices_for_size" in s2.flags,
            # errors of the change itself: what the growth rules read
            mean_change_err=(m2.mean_diameter_mm - m1.mean_diameter_mm)
            - ((l2 + sh2) / 2 - (l1 + sh1) / 2),
            vol_ratio_err_pct=100 * ((m2.volume_mm3 / m1.volume_mm3) / (v2 / v1) - 1),
        )
        row.update(true_mean1=(l1 + sh1) / 2, true_mean2=(l2 + sh2) / 2, true_vol1=v1, true_vol2=v2)
        row.update(_agreement(((l1 + sh1) / 2, (l2 + sh2) / 2, v1, v2), (m1, m2), interval))
        row["failed"] = ""
    except NoduleGrowthError as e:
        row["failed"] = str(e)
    return row


def accuracy(n_per_cell, rng, types, bands, thicknesses, locations, jobs: int = 1):
    """One row per T1/T2 pair of every (type, size band, thickness, location) cell.

    The pairs are drawn and rendered in this process, in order, from ``rng``; with ``jobs`` > 1
    they are segmented in that many worker processes. The rows are the same either way.
    """
    def pairs():
        for kind in types:
            for lo, hi in bands:
                for thk in thicknesses:
                    for loc in locations:
                        for _ in range(n_per_cell):
                            d = rng.uniform(lo, hi)
                            scene = make_scene(rng, kind, loc, d)
                            ratio = float(np.exp(rng.uniform(np.log(0.6), np.log(2.2))))
                            interval = float(rng.integers(60, 400))
                            row = dict(kind=kind, band=f"{lo:g}-{hi:g}", thickness=thk, location=loc,
                                       diameter=d, ratio=ratio, interval=interval)
                            # both scans are rendered before anything is segmented, so that
                            # the random stream (and every later case) does not depend on
                            # whether a segmentation fails: an A/B run compares the same cases
                            yield row, [scan(scene, scale, thk, rng) for scale in (1.0, ratio ** (1 / 3))]

    if jobs <= 1:
        return pd.DataFrame([_measure_pair(row, scans) for row, scans in pairs()])
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    rows, pending = [], deque()
    with ProcessPoolExecutor(jobs) as ex:
        for row, scans in pairs():
            pending.append(ex.submit(_measure_pair, row, scans))
            # a few pairs in flight: rendering keeps ahead of the workers, memory stays bounded
            if len(pending) >= 2 * jobs:
                rows.append(pending.popleft().result())
        rows.extend(f.result() for f in pending)
    return pd.DataFrame(rows)


def _silent(d: pd.DataFrame) -> int:
    """Scans over-segmented by more than 50 % without a ``segmentation_leak`` flag
    (T1 and, when the run recorded them, T2 scans)."""
    # .eq(True): failed rows leave NaN, and ~ on such an object column is
    # bitwise (~True == -2, truthy) rather than logical
    n = int(((d["vol_err_pct"] > 50) & ~d["leak_flag"].eq(True)).sum())
    if "leak_flag2" in d:
        n += int(((d["vol_err2_pct"] > 50) & ~d["leak_flag2"].eq(True)).sum())
    return n


def _at_t1_or_t2(d: pd.DataFrame, col: str) -> pd.Series:
    """Whether boolean column ``col`` (T1) or ``col + "2"`` (T2, when the run recorded it) is True."""
    out = d[col].eq(True)
    return out | d[col + "2"].eq(True) if col + "2" in d else out


def _noise_floor(thin: pd.DataFrame) -> dict:
    """Growth agreement (%) per criterion if every pair were measured with the change errors of a
    cleanly segmented pair of its type and size band (typed right at T1 and T2, no flag).

    For each pair, every clean pair ``j`` of the same type and size band (itself left out) lends
    its errors of the change: the mean-diameter change error is added to the true T2 mean
    diameter and the volume-ratio error applied to the true T2 volume; the agreement is the
    mean over ``j`` and pairs. What the measurement's noise alone costs near the criteria's
    thresholds, to set beside the agreement measured (gross errors: wrong type, leaks).
    """
    flagged = _at_t1_or_t2(thin, "leak_flag")
    if "level_flag" in thin:
        flagged |= _at_t1_or_t2(thin, "level_flag")
    clean = thin[thin["type_ok"].eq(True) & thin["type_ok2"].eq(True) & ~flagged]
    hits = {k: [] for k in G.CRITERIA}
    for i, r in thin.iterrows():
        pool = clean[(clean["kind"] == r["kind"]) & (clean["band"] == r["band"]) & (clean.index != i)]
        if pool.empty:
            continue
        truth = _categories(r["true_mean1"], r["true_mean2"], r["true_vol1"], r["true_vol2"], r["interval"])
        agree = {k: 0 for k in G.CRITERIA}
        for e_d, e_v in zip(pool["mean_change_err"], pool["vol_ratio_err_pct"]):
            meas = _categories(r["true_mean1"], r["true_mean2"] + e_d, r["true_vol1"],
                               r["true_vol2"] * (1 + e_v / 100), r["interval"])
            for k in G.CRITERIA:
                agree[k] += meas[k] == truth[k]
        for k in G.CRITERIA:
            hits[k].append(agree[k] / len(pool))
    return {k: 100 * float(np.mean(v)) if v else float("nan") for k, v in hits.items()}


def _growth_detection(d: pd.DataFrame) -> dict:
    """Detection of growth per criterion: ``grew`` against ``stable`` or ``shrank``.

    The growth rules (:mod:`nodulegrowth.growth`) name growth only; the contract's ``growth``
    column adds ``shrank`` by their mirror image, and the agreement of the summary scores all
    three. Here each pair's measured category is rebuilt from its rows (measured mean diameter
    ``true_mean + mean_err``, volume ``true_vol * (1 + vol_err_pct / 100)``, T1 and T2) and only
    the question the criteria ask is scored. Returns ``{criterion: (sensitivity %, precision %,
    agreement %, true grew, measured grew)}``; the sensitivity is NaN when no pair grew, the
    precision when none was read as grown.
    """
    out = {}
    d1, d2 = d["true_mean1"] + d["mean_err"], d["true_mean2"] + d["mean_err2"]
    v1, v2 = d["true_vol1"] * (1 + d["vol_err_pct"] / 100), d["true_vol2"] * (1 + d["vol_err2_pct"] / 100)
    truth = [_categories(*a) for a in zip(d["true_mean1"], d["true_mean2"], d["true_vol1"], d["true_vol2"],
                                          d["interval"])]
    meas = [_categories(*a) for a in zip(d1, d2, v1, v2, d["interval"])]
    for k in G.CRITERIA:
        t = np.array([c[k] == "grew" for c in truth])
        m = np.array([c[k] == "grew" for c in meas])
        tp = int((t & m).sum())
        out[k] = (100 * tp / t.sum() if t.any() else math.nan, 100 * tp / m.sum() if m.any() else math.nan,
                  100 * float((t == m).mean()), int(t.sum()), int(m.sum()))
    return out


def _size_flag_summary(ok: pd.DataFrame) -> str:
    """Where ``thick_slices_for_size`` falls on the 2.5-5 mm scans (T1 and T2): how many carry it,
    the median |volume error| with and without it, and how many of the scans over-segmented by
    more than 50 % without a leak flag it names."""
    thick = ok[ok["thickness"] > 1.25]
    err = np.r_[thick["vol_err_pct"], thick["vol_err2_pct"]]
    flag = np.r_[_scan_flag(thick, "size_flag"), _scan_flag(thick, "size_flag2")]
    leak = np.r_[thick["leak_flag"].eq(True), thick["leak_flag2"].eq(True)]
    silent = (err > 50) & ~leak

    def med(sel):
        return f"{np.median(np.abs(err[sel])):.1f} %" if sel.any() else "-"
    return (f"thick_slices_for_size, 2.5-5 mm scans: {int(flag.sum())} of {len(err)} (median |volume error| "
            f"{med(flag)}; without the flag {med(~flag)}); over +50 % without a leak flag {int(silent.sum())}, "
            f"{int((silent & flag).sum())} of them with this flag")


def _scan_flag(d: pd.DataFrame, col: str) -> np.ndarray:
    """Boolean column ``col`` (False where a run before it lacks the column)."""
    return d[col].eq(True).to_numpy() if col in d else np.zeros(len(d), bool)


def _level_flag_summary(thin: pd.DataFrame) -> str:
    """Where the ``tissue_level_uncertain`` flag falls on the thin-slice scans (T1 and T2): on those
    typed wrong, on those typed right, and how many scans measured more than 25 % off carry no flag."""
    err = np.r_[thin["vol_err_pct"], thin["vol_err2_pct"]]
    flag = np.r_[thin["level_flag"].eq(True), thin["level_flag2"].eq(True)]
    leak = np.r_[thin["leak_flag"].eq(True), thin["leak_flag2"].eq(True)]
    right = np.r_[thin["type_ok"].eq(True), thin["type_ok2"].eq(True)]
    kind = np.r_[thin["kind"], thin["kind"]]
    wrong = [f"{k} {int((flag & ~right & (kind == k)).sum())}/{int((~right & (kind == k)).sum())}"
             for k in TYPES if (~right & (kind == k)).any()]
    off = np.abs(err) > 25
    return (f"tissue_level_uncertain, thin scans: typed wrong {int((flag & ~right).sum())} of {int((~right).sum())} "
            f"flagged ({', '.join(wrong) or '-'}); typed right {int((flag & right).sum())} of {int(right.sum())} "
            f"flagged ({int((flag & right & off).sum())} of them > 25 % off); > 25 % off with neither this nor a "
            f"leak flag: {int((off & ~flag & ~leak).sum())}")


def _agreement(true_d1_d2_v1_v2, measured, interval) -> dict:
    """``agree_<criterion>``: the category from the measurements (m1, m2) equals the true one."""
    truth = _categories(*true_d1_d2_v1_v2, interval)
    m1, m2 = measured
    meas = _categories(m1.mean_diameter_mm, m2.mean_diameter_mm, m1.volume_mm3, m2.volume_mm3, interval)
    return {f"agree_{k}": truth[k] == meas[k] for k in truth}


def _categories(d1, d2, v1, v2, interval):
    return {name: (rule(d1, d2, interval) if kindr == "diameter" else rule(v1, v2, interval))
            for name, (kindr, rule) in G.CRITERIA.items()}


def repeatability(n_nodules, n_repeats, rng, types, bands, thicknesses):
    rows = []
    for kind in types:
        for lo, hi in bands:
            for thk in thicknesses:
                for j in range(n_nodules):
                    d = rng.uniform(lo, hi)
                    scene = make_scene(rng, kind, "isolated", d)
                    results = []
                    for _ in range(n_repeats):
                        # rotation about z changes nothing in the truth but the sampling
                        t = rng.uniform(0, 2 * math.pi)
                        rz = np.array([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1]])
                        sc = dict(scene, outer=Ellipsoid(scene["outer"].axes, rz @ scene["outer"].rot))
                        img, sp, click, o, lung = scan(sc, 1.0, thk, rng)
                        try:
                            results.append(((img, sp, click, lung), *measure_scan(img, sp, click, lung_mask=lung)))
                        except NoduleGrowthError:
                            pass
                    results = _one_type(results)
                    vols = [m.volume_mm3 for _, _, m in results]
                    means = [m.mean_diameter_mm for _, _, m in results]
                    if len(vols) >= 3:
                        h = (thk * INPLANE * INPLANE) ** (1 / 3)
                        rows.append(dict(kind=kind, band=f"{lo:g}-{hi:g}", thickness=thk, diameter=d,
                                         h_over_d=h / d, n=len(vols),
                                         cv_volume=float(np.std(vols, ddof=1) / np.mean(vols)),
                                         cv_mean_diameter=float(np.std(means, ddof=1) / np.mean(means)),
                                         sd_mean_diameter_mm=float(np.std(means, ddof=1))))
    return pd.DataFrame(rows)


def _one_type(results):
    """Repeats of one nodule typed as the pipeline types two scans of it.

    Any two repeats are a T1/T2 pair to the pipeline, which segments both with
    one type when one of them is part-solid (``harmonise_types``, which also
    keeps a repeat as it was when the forced type leaks): each repeat is paired
    with a part-solid one. Without this a part-solid nodule whose rim only some
    repeats show varies between its core and its whole (CV 30-65 % on 6-10 mm
    part-solid nodules), which is not the variation of a measured change.
    """
    ref = next(((seg, m, None) for _, seg, m in results if seg.nodule_type == "part_solid"), None)
    if ref is None:
        return results
    out = []
    for args, seg, m in results:
        redo = {"T2": lambda t, a=args: (*measure_scan(*a[:3], nodule_type=t, lung_mask=a[3]), None)}
        try:
            _, (seg, m, _), _ = harmonise_types(ref, (seg, m, None), redo)
        except NoduleGrowthError:
            pass  # the forced segmentation failed: the repeat stays as it was
        out.append((args, seg, m))
    return out


def fit_model(rep: pd.DataFrame) -> pd.DataFrame:
    """Fit log CV = log k + p log(h/D) per nodule type and quantity (least squares)."""
    out = []
    for kind, g in rep.groupby("kind"):
        for q in ("cv_volume", "cv_mean_diameter"):
            y = np.log(np.clip(g[q].to_numpy(), 1e-4, None))
            x = np.log(g["h_over_d"].to_numpy())
            A = np.c_[np.ones_like(x), x]
            coef, *_ = np.linalg.lstsq(A, y, rcond=None)
            resid = y - A @ coef
            out.append(dict(nodule_type=kind, quantity=q.replace("cv_", ""), model="cv = k * (h / d) ** p",
                            k=float(np.exp(coef[0])), p=float(coef[1]),
                            log_residual_sd=float(np.std(resid, ddof=2)) if len(y) > 2 else float("nan"),
                            n_nodules=int(len(g)), h_definition="(sz*sy*sx)**(1/3) mm",
                            d_definition="volume-equivalent diameter mm (applied to the mean diameter)"))
    return pd.DataFrame(out)


def summarise(acc: pd.DataFrame) -> pd.DataFrame:
    ok = acc[acc["failed"] == ""]
    grp = ok.groupby(["kind", "band", "thickness"], sort=False)
    s = pd.DataFrame({
        "n": grp.size(),
        "vol_med_abs_%": grp["vol_err_pct"].apply(lambda v: np.median(np.abs(v))),
        "vol_p90_abs_%": grp["vol_err_pct"].apply(lambda v: np.percentile(np.abs(v), 90)),
        "vol_bias_%": grp["vol_err_pct"].median(),
        "pv_med_abs_%": grp["vol_pv_err_pct"].apply(lambda v: np.nanmedian(np.abs(v))),
        "long_mae": grp["long_err"].apply(lambda v: np.mean(np.abs(v))),
        "mean_mae": grp["mean_err"].apply(lambda v: np.mean(np.abs(v))),
        "3d_mae": grp["max3d_err"].apply(lambda v: np.mean(np.abs(v))),
        "type_ok_%": 100 * grp["type_ok"].mean(),
        **{f"agree_{k}_%": 100 * grp[f"agree_{k}"].mean() for k in G.CRITERIA},
    })
    fails = acc.groupby(["kind", "band", "thickness"], sort=False)["failed"].apply(lambda f: (f != "").sum())
    s["failed"] = fails
    return s.round(2)


def phantom_check(seeds, preset, nodules=None):
    """Segment and measure every nodule of ``nodulegrowth.phantom.make_pair`` pairs.

    An independent check on the project's phantom generator (its truth is
    computed by that module): the VOI is cropped around the true centre at T1
    and T2, as the pipeline does around the propagated point, segmented with
    the lung mask of the whole scan and given one type for both time points
    (``harmonise_types``) and one tissue level (``share_tissue_level``), as
    the pipeline does.
    """
    import SimpleITK as sitk

    from nodulegrowth import io, lung, phantom

    rows = []
    for seed in seeds:
        extra = {} if nodules is None else {"nodules": nodules}
        pair = phantom.make_pair(int(seed), preset=preset, **extra)
        masks = {"t1": lung.lung_mask(pair.t1), "t2": lung.lung_mask(pair.t2)}
        for _, r in pair.truth.iterrows():
            row = dict(seed=seed, kind=r["kind"], shape=r["shape"], location=r["location"])
            ms = []
            try:
                res, redo = [], {}
                for tp, img in (("t1", pair.t1), ("t2", pair.t2)):
                    c = (r[f"{tp}_x"], r[f"{tp}_y"], r[f"{tp}_z"])
                    voi = io.crop(img, c, 40.0)
                    hu = sitk.GetArrayFromImage(voi)
                    sp = tuple(voi.GetSpacing()[::-1])
                    seed_zyx = tuple(float(v) for v in np.asarray(io.world_to_index(voi, c))[::-1])
                    lung_voi = sitk.GetArrayFromImage(
                        sitk.Resample(masks[tp], voi, sitk.Transform(), sitk.sitkNearestNeighbor, 0)).astype(bool)

                    def seg_measure(t=None, level=None, hu=hu, sp=sp, seed_zyx=seed_zyx, lung_voi=lung_voi, voi=voi):
                        seg = segment_nodule(hu, sp, seed_zyx, lung_mask=lung_voi, nodule_type=t, tissue_hu=level)
                        m = measure_nodule(seg.mask, sp, origin_xyz=voi.GetOrigin(), direction=voi.GetDirection(),
                                           hu=hu, solid_mask=seg.solid_mask, threshold_hu=seg.threshold_hu)
                        return seg, m, None
                    res.append(seg_measure())
                    redo[tp.upper()] = seg_measure
                # one type and one tissue level for both time points, as the pipeline does
                r1, r2, more = harmonise_types(res[0], res[1], redo)
                row["type_from_both"] = bool(more)
                r1, r2, more = share_tissue_level(r1, r2, redo)
                row["level_changed"] = "tissue_level_changed" in more
                for tp, (seg, m, _) in (("t1", r1), ("t2", r2)):
                    c = (r[f"{tp}_x"], r[f"{tp}_y"], r[f"{tp}_z"])
                    ms.append(m)
                    row.update({f"{tp}_vol_err_pct": 100 * (m.volume_mm3 / r[f"{tp}_volume_mm3"] - 1),
                                f"{tp}_long_err": m.long_axis_mm - r[f"{tp}_long_axis_mm"],
                                f"{tp}_mean_err": m.mean_diameter_mm - r[f"{tp}_mean_diameter_mm"],
                                f"{tp}_type": seg.nodule_type, f"{tp}_flags": ";".join(seg.flags),
                                f"{tp}_center_err": float(np.linalg.norm(np.subtract(m.center_xyz, c)))})
                row.update(_agreement((r["t1_mean_diameter_mm"], r["t2_mean_diameter_mm"], r["t1_volume_mm3"],
                                       r["t2_volume_mm3"]), ms, r["interval_days"]))
                row["failed"] = ""
            except NoduleGrowthError as e:
                row["failed"] = str(e)
            rows.append(row)
    return pd.DataFrame(rows)


def main(argv=None):
    global INPLANE, NOISE_HU, PSF_MM, GG_HU, LUNG_MASKS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=4, help="nodule pairs per (type, size, thickness, location) cell")
    ap.add_argument("--rep-nodules", type=int, default=4, help="nodules per repeatability cell")
    ap.add_argument("--rep-repeats", type=int, default=5, help="scans per nodule for repeatability")
    ap.add_argument("--quick", action="store_true", help="1 pair per cell, fewer repeats")
    ap.add_argument("--seed", type=int, default=20261125)
    ap.add_argument("--jobs", type=int, default=1, help="worker processes segmenting the accuracy pairs "
                    "(the pairs and their figures do not change with it)")
    ap.add_argument("--types", nargs="*", default=list(TYPES))
    ap.add_argument("--thickness", nargs="*", type=float, default=list(THICKNESSES))
    ap.add_argument("--inplane", type=float, default=INPLANE, help="in-plane pixel size (mm)")
    ap.add_argument("--noise", nargs=2, type=float, default=list(NOISE_HU), metavar=("LO", "HI"),
                    help="image noise SD range (HU)")
    ap.add_argument("--psf", nargs=2, type=float, default=list(PSF_MM), metavar=("LO", "HI"),
                    help="in-plane PSF sigma range (mm)")
    ap.add_argument("--gg-hu", nargs=2, type=float, default=list(GG_HU), metavar=("LO", "HI"),
                    help="ground-glass level range (HU); denser than about -450 HU is a rim above "
                         "halfway from the lung to water")
    ap.add_argument("--lung-masks", action="store_true",
                    help="segment with the scene's lung mask (the VOI but a juxtapleural scene's chest wall), "
                         "as the pipeline does; default without, as the figures of docs/VALIDATION.md")
    ap.add_argument("--csv", type=Path, help="write the raw per-case results here (prefix)")
    ap.add_argument("--write-model", action="store_true",
                    help="write the fitted model to nodulegrowth/params/uncertainty_model.csv")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--skip-repeatability", action="store_true")
    ap.add_argument("--from-csv", type=Path, help="re-print the accuracy tables of an earlier run's "
                    "<prefix>_accuracy.csv instead of running it")
    ap.add_argument("--phantom-seeds", nargs="*", type=int, default=[],
                    help="also check on nodulegrowth.phantom.make_pair(seed) pairs (slow for 'full')")
    ap.add_argument("--phantom-preset", default="full", choices=["small", "full"])
    ap.add_argument("--phantom-hard", action="store_true",
                    help="phantom pairs with a part-solid, a juxtapleural and a juxtavascular nodule")
    args = ap.parse_args(argv)
    if not (0.2 <= args.inplane <= 2.0) or not (0 <= args.noise[0] <= args.noise[1]) \
            or not (0 < args.psf[0] <= args.psf[1]):
        sys.exit(f"--inplane {args.inplane} / --noise {args.noise} / --psf {args.psf}: need 0.2 <= inplane <= 2 mm, "
                 "0 <= LO <= HI for the noise and 0 < LO <= HI for the PSF")
    if args.jobs < 1:
        sys.exit(f"--jobs {args.jobs}: need at least 1 worker process")
    if not (-1000.0 < args.gg_hu[0] <= args.gg_hu[1] < 0.0):
        sys.exit(f"--gg-hu {args.gg_hu}: need -1000 < LO <= HI < 0 HU")
    INPLANE, NOISE_HU, PSF_MM, GG_HU = args.inplane, tuple(args.noise), tuple(args.psf), tuple(args.gg_hu)
    LUNG_MASKS = bool(args.lung_masks)
    if args.quick:
        args.n, args.rep_nodules, args.rep_repeats = 1, 1, 4
    rng = np.random.default_rng(args.seed)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 40)
    pd.set_option("display.max_rows", 500)
    t0 = time.time()
    if args.from_csv:
        if not Path(args.from_csv).is_file():
            sys.exit(f"--from-csv {args.from_csv}: no such file; pass the *_accuracy.csv an earlier run wrote")
        acc = pd.read_csv(args.from_csv, keep_default_na=False, na_values=[""])
        acc["failed"] = acc["failed"].fillna("")
        for c in ("type_ok", "loc_ok", "leak_flag", "type_ok2", "leak_flag2", "level_flag", "level_flag2",
                  "size_flag", "size_flag2") \
                + tuple(f"agree_{k}" for k in G.CRITERIA):
            if c in acc:  # runs before the T2 columns lack some
                acc[c] = acc[c].astype(str) == "True"
        args.skip_repeatability = True
    elif not args.skip_accuracy:
        acc = accuracy(args.n, rng, args.types, SIZE_BANDS, args.thickness, LOCATIONS, jobs=args.jobs)
        if args.csv:
            acc.to_csv(f"{args.csv}_accuracy.csv", index=False)
    if args.from_csv or not args.skip_accuracy:
        print("\n== Accuracy by type x size band (mm) x slice thickness (mm); errors vs analytic truth ==")
        print(summarise(acc).to_string())
        ok = acc[acc["failed"] == ""]
        print("\n== By location ==")
        g = ok.groupby("location")
        print(pd.DataFrame({
            "n": g.size(), "vol_med_abs_%": g["vol_err_pct"].apply(lambda v: np.median(np.abs(v))),
            "mean_mae": g["mean_err"].apply(lambda v: np.mean(np.abs(v))),
            "loc_ok_%": 100 * g["loc_ok"].mean(), "leak_flag_%": 100 * g["leak_flag"].mean(),
            # a leak is over-segmentation; under-segmentation (a part-solid
            # nodule taken for its core) is counted apart
            "silent_over+50%_thin": g.apply(lambda d: _silent(d[d["thickness"] <= 1.25]), include_groups=False),
            "silent_over+50%_thick": g.apply(lambda d: _silent(d[d["thickness"] > 1.25]), include_groups=False),
            "under-50%": g.apply(lambda d: int((d["vol_err_pct"] < -50).sum()
                                               + ((d["vol_err2_pct"] < -50).sum() if "leak_flag2" in d else 0)),
                                 include_groups=False),
        }).round(2).to_string())
        thin = ok[ok["thickness"] <= 1.25]
        print("\n== Targets (slices <= 1.25 mm) ==")
        for kind in args.types:
            sel = thin[thin["kind"] == kind]
            big = sel[sel["diameter"] >= 6]
            if len(sel):
                # what a reader gets after reviewing the cases flagged as leaks
                unf = sel[~sel["leak_flag"].eq(True)]
                print(f"{kind:13s} vol median abs err (>= 6 mm): {np.median(np.abs(big['vol_err_pct'])):.2f} %  "
                      f"long MAE {np.mean(np.abs(sel['long_err'])):.2f} mm  "
                      f"mean-diam MAE {np.mean(np.abs(sel['mean_err'])):.2f} mm  (n={len(sel)}; without the "
                      f"flagged leaks: {np.mean(np.abs(unf['long_err'])):.2f} / {np.mean(np.abs(unf['mean_err'])):.2f}"
                      f" mm, n={len(unf)})")
        big_thin = thin[thin["diameter"] >= 6]
        if "mean_change_err" in thin:
            for label, sel in (("all sizes", thin), (">= 6 mm", big_thin)):
                print(f"change error, thin, {label:9s}: mean diameter MAE {np.mean(np.abs(sel['mean_change_err'])):.2f} mm"
                      f" (p90 {np.percentile(np.abs(sel['mean_change_err']), 90):.2f}), volume ratio median abs "
                      f"{np.median(np.abs(sel['vol_ratio_err_pct'])):.2f} % (p90 "
                      f"{np.percentile(np.abs(sel['vol_ratio_err_pct']), 90):.1f}), typed right at T1 and T2 "
                      f"{100 * (sel['type_ok'] & sel['type_ok2']).mean():.1f} %")
        # the pairs a reader would not send back for review: neither scan flagged
        # as a leak (reported beside, not instead of, the agreement over all pairs)
        unflagged = thin[~_at_t1_or_t2(thin, "leak_flag")]
        for k in G.CRITERIA:
            print(f"growth agreement {k:15s}: thin {100 * thin[f'agree_{k}'].mean():.1f} %  "
                  f"(thin, >= 6 mm: {100 * big_thin[f'agree_{k}'].mean():.1f} %; thin, no leak flag at T1 "
                  f"or T2: {100 * unflagged[f'agree_{k}'].mean():.1f} % of {len(unflagged)})  "
                  f"all {100 * ok[f'agree_{k}'].mean():.1f} %")
        if "true_mean1" in ok and "mean_err2" in ok:
            # the seed's partner detected growth with 92.0 % sensitivity, 88.4 % precision (issue 4)
            print("growth detected ('grew' against the rest): sensitivity / precision / right %, (grew / read so)")
            for label, sel in (("thin", thin), *((f"{t:g} mm", ok[ok["thickness"] == t])
                                                 for t in sorted(ok["thickness"].unique()) if t > 1.25)):
                print(f"  {label:7s} " + "   ".join(
                    f"{k} {s:.1f} / {p:.1f} / {a:.1f} ({nt} / {nm})"
                    for k, (s, p, a, nt, nm) in _growth_detection(sel).items()))
        if "level_flag" in thin:
            print(_level_flag_summary(thin))
        if "true_mean1" in thin:
            floor = _noise_floor(thin)
            print("growth agreement the noise of clean pairs allows (thin; each pair re-measured with the change "
                  "errors of the clean pairs of its type and size band): "
                  + ", ".join(f"{k} {v:.1f} %" for k, v in floor.items()))
        if (ok["thickness"] > 1.25).any() and "vol_err2_pct" in ok:
            print(_size_flag_summary(ok))
        print(f"failed cases: {(acc['failed'] != '').sum()} of {len(acc)}")
        for f in acc.loc[acc["failed"] != "", "failed"].head(5):
            print("  ", f)
    if not args.skip_repeatability:
        # a stream of its own: the repeatability sample (and the fitted model)
        # must not change when the accuracy cases draw differently
        rep = repeatability(args.rep_nodules, args.rep_repeats, np.random.default_rng([args.seed, 1]),
                            args.types, SIZE_BANDS, args.thickness)
        if args.csv:
            rep.to_csv(f"{args.csv}_repeatability.csv", index=False)
        print("\n== Repeatability: CV (%) of volume and mean diameter over repeated scans ==")
        g = rep.groupby(["kind", "band", "thickness"], sort=False)
        print((100 * g[["cv_volume", "cv_mean_diameter"]].mean()).round(2).to_string())
        model = fit_model(rep)
        print("\n== Uncertainty model (fitted) ==")
        print(model.to_string(index=False))
        if args.write_model:
            path = ROOT / "nodulegrowth" / "params" / "uncertainty_model.csv"
            model.to_csv(path, index=False, float_format="%.6g")
            print(f"written {path}")
    if args.phantom_seeds:
        nodules = None
        if args.phantom_hard:
            from nodulegrowth.phantom import NoduleSpec
            nodules = (NoduleSpec(kind="part_solid"), NoduleSpec(location="juxtapleural"),
                       NoduleSpec(kind="solid", location="juxtavascular"))
        ph = phantom_check(args.phantom_seeds, args.phantom_preset, nodules)
        if args.csv:
            ph.to_csv(f"{args.csv}_phantom.csv", index=False)
        print(f"\n== nodulegrowth.phantom ({args.phantom_preset}) pairs: per nodule ==")
        print(ph.round(2).to_string(index=False))
        ok = ph[ph["failed"] == ""]
        if len(ok):
            errs = np.abs(np.r_[ok["t1_vol_err_pct"], ok["t2_vol_err_pct"]])
            merr = np.abs(np.r_[ok["t1_mean_err"], ok["t2_mean_err"]])
            print(f"volume median abs err {np.median(errs):.2f} % (p90 {np.percentile(errs, 90):.2f} %), "
                  f"mean-diameter MAE {np.mean(merr):.2f} mm, "
                  + ", ".join(f"{k} agreement {100 * ok[f'agree_{k}'].mean():.0f} %" for k in G.CRITERIA)
                  + f", failed {len(ph) - len(ok)} of {len(ph)}")
    print(f"\nelapsed {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
