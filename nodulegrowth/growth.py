"""Nodule growth between two time points: VDT, changes and growth categories.

Three published growth criteria are implemented as named, documented rules,
each returning ``"grew"``, ``"stable"`` or ``"shrank"``:

``lung_rads_2022``
    Lung-RADS v2022 [1]_: growth is an increase in mean diameter of more than
    1.5 mm. The guideline states it for an interval of up to 12 months; for
    longer intervals the same threshold is applied to the total change, which
    is how Lung-RADS v2022 treats a *slowly growing* solid nodule (growth over
    several screening rounds counts). Results over intervals above 365 days
    carry the flag ``interval_exceeds_12_months``.
``fleischner_2017``
    Fleischner Society 2017 [2]_, with the measurement statement of Bankier et
    al. [3]_: a change in size is considered real when it is at least 2 mm;
    we apply the threshold to the unrounded mean diameter (the size measure
    the Fleischner categories use). The statement's wording "in any
    dimension" would also admit a change of the long axis alone; we do not
    use it, because single-axis changes are less reproducible.
``nelson``
    NELSON volumetry (Horeweg et al. [4]_; BTS guideline, Callister et al.
    [5]_): growth is a volume increase of at least 25 %; a grown nodule is
    then categorised by its volume doubling time (VDT): < 400 days fast
    (NELSON positive / BTS: consider biopsy or resection), 400-600 days
    intermediate, > 600 days slow. Here ``grew`` means volume change >= 25 %
    and 0 < VDT < 400 days; a >= 25 % increase with VDT >= 400 days is
    ``stable`` (slow growth, surveillance), its VDT category is reported in
    ``nelson_vdt_category``.

Shrinkage uses the mirror image of each growth rule: a mean-diameter decrease
of more than 1.5 mm (Lung-RADS) or of at least 2 mm (Fleischner); for NELSON a
volume *ratio* of at most 1/1.25 (the log-symmetric mirror of +25 %, i.e. a
decrease of at least 20 %), regardless of VDT.

A nodule that vanished at T2 (volume 0) has an undefined VDT (NaN, written as
an empty cell) and is ``shrank`` under every criterion.

References
----------
.. [1] American College of Radiology. Lung-RADS v2022. 2022.
.. [2] MacMahon H, Naidich DP, Goo JM, et al. Guidelines for management of
   incidental pulmonary nodules detected on CT images: from the Fleischner
   Society 2017. Radiology 2017;284:228-243.
.. [3] Bankier AA, MacMahon H, Goo JM, et al. Recommendations for measuring
   pulmonary nodules at CT: a statement from the Fleischner Society.
   Radiology 2017;285:584-600.
.. [4] Horeweg N, van Rosmalen J, Heuvelmans MA, et al. Lung cancer
   probability in patients with CT-detected pulmonary nodules: a prespecified
   analysis of data from the NELSON trial. Lancet Oncol 2014;15:1332-1341.
.. [5] Callister MEJ, Baldwin DR, Akram AR, et al. British Thoracic Society
   guidelines for the investigation and management of pulmonary nodules.
   Thorax 2015;70 Suppl 2:ii1-ii54.
.. [6] Schwartz M. A biomathematical approach to clinical tumor growth.
   Cancer 1961;14:1272-1294.
.. [7] Ko JP, Rusinek H, Jacobs EL, et al. Small pulmonary nodules: volume
   measurement at chest CT -- phantom study. Radiology 2003;228:864-870.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

from .errors import MeasurementError

__all__ = [
    "CRITERIA",
    "DEFAULT_CRITERION",
    "GrowthResult",
    "assess_growth",
    "diameter_change_mm",
    "fleischner_2017",
    "lung_rads_2022",
    "nelson",
    "nelson_vdt_category",
    "load_uncertainty_model",
    "volume_cv",
    "volume_change_pct",
    "volume_doubling_time",
]

#: Criterion behind the contract's ``growth`` column unless told otherwise.
DEFAULT_CRITERION = "lung_rads_2022"

LUNG_RADS_THRESHOLD_MM = 1.5
"""Lung-RADS v2022: growth is a mean-diameter increase of *more than* 1.5 mm."""
LUNG_RADS_INTERVAL_DAYS = 365.0
"""Lung-RADS v2022 states the growth threshold for an interval of 12 months."""
FLEISCHNER_THRESHOLD_MM = 2.0
"""Fleischner 2017 / Bankier 2017: a size change of at least 2 mm is real."""
NELSON_VOLUME_CHANGE_PCT = 25.0
"""NELSON / BTS: growth is a volume increase of at least 25 %."""
NELSON_VDT_FAST_DAYS = 400.0
"""NELSON / BTS: VDT below 400 days is fast growth (positive screen)."""
NELSON_VDT_SLOW_DAYS = 600.0
"""NELSON / BTS: VDT above 600 days is slow growth."""


def _finite(name: str, v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise MeasurementError(f"{name}={v!r} is not a number; pass a finite float") from None
    if not math.isfinite(f):
        raise MeasurementError(f"{name}={v!r} is not finite; check the measurement that produced it")
    return f


def _check_interval(interval_days) -> float:
    t = _finite("interval_days", interval_days)
    if t <= 0:
        raise MeasurementError(
            f"interval_days={t} must be positive; check the scan dates (T2 must be after T1)"
        )
    return t


def _check_volumes(v1, v2) -> tuple[float, float]:
    a = _finite("v1", v1)
    b = _finite("v2", v2)
    if a <= 0:
        raise MeasurementError(f"v1={a} mm3 must be positive; the T1 nodule has no volume -- check its segmentation")
    if b < 0:
        raise MeasurementError(f"v2={b} mm3 is negative; volumes are >= 0 (0 = vanished nodule)")
    return a, b


def volume_doubling_time(v1, v2, interval_days) -> float:
    r"""Volume doubling time in days (Schwartz 1961 [6]_; Ko et al. [7]_).

    .. math:: \mathrm{VDT} = \frac{\Delta t \, \ln 2}{\ln(V_2 / V_1)}

    assuming exponential growth between the two scans.

    Parameters
    ----------
    v1, v2 : float
        Nodule volume at T1 and T2 (mm³, or any common unit).
    interval_days : float
        Time from T1 to T2 (days, > 0).

    Returns
    -------
    float
        VDT in days; negative for a shrinking nodule (the volume halving
        time, negated); NaN when ``v2 == v1`` (no change: infinite VDT, an
        empty cell in ``measurements.csv``) and when ``v2 == 0`` (the nodule
        vanished; the caller flags it).

    Raises
    ------
    MeasurementError
        ``v1 <= 0``, ``v2 < 0``, a non-finite value, or ``interval_days <= 0``.

    Examples
    --------
    A nodule that doubles in 100 days:

    >>> volume_doubling_time(100.0, 200.0, 100)
    100.0
    >>> volume_doubling_time(200.0, 100.0, 100)
    -100.0
    """
    a, b = _check_volumes(v1, v2)
    t = _check_interval(interval_days)
    if b == a or b == 0.0:
        return math.nan
    return t * math.log(2.0) / math.log(b / a)


def volume_change_pct(v1, v2) -> float:
    r"""Relative volume change in percent.

    .. math:: \Delta V\% = 100 \, \frac{V_2 - V_1}{V_1}

    Parameters
    ----------
    v1, v2 : float
        Volumes at T1 and T2 (mm³).

    Returns
    -------
    float
        Percentage change (-100 for a vanished nodule).

    Raises
    ------
    MeasurementError
        ``v1 <= 0``, ``v2 < 0`` or a non-finite value.

    Examples
    --------
    >>> volume_change_pct(100.0, 125.0)
    25.0
    """
    a, b = _check_volumes(v1, v2)
    return 100.0 * (b - a) / a


def diameter_change_mm(d1, d2) -> float:
    r"""Change of (mean) diameter in mm.

    .. math:: \Delta d = \bar d_2 - \bar d_1

    Parameters
    ----------
    d1, d2 : float
        Diameters at T1 and T2 (mm, >= 0).

    Returns
    -------
    float
        Change in mm (positive = growth).

    Raises
    ------
    MeasurementError
        Negative or non-finite diameter.

    Examples
    --------
    >>> diameter_change_mm(6.0, 7.75)
    1.75
    """
    a = _finite("d1", d1)
    b = _finite("d2", d2)
    if a < 0 or b < 0:
        raise MeasurementError(f"diameters d1={a}, d2={b} must be >= 0 mm; check the measurements")
    return b - a


def lung_rads_2022(d1_mm, d2_mm, interval_days=None) -> str:
    r"""Growth category by Lung-RADS v2022 [1]_ (mean diameter).

    .. math::

        \text{grew} \iff \Delta \bar d > 1.5\ \text{mm}, \qquad
        \text{shrank} \iff \Delta \bar d < -1.5\ \text{mm}

    The 1.5 mm threshold is stated for growth within 12 months; longer
    intervals are not scaled (see the module notes: slow growth over several
    rounds still counts).

    Parameters
    ----------
    d1_mm, d2_mm : float
        Unrounded mean diameters at T1 and T2 (mm).
    interval_days : float, optional
        Checked to be positive when given; not used in the rule.

    Returns
    -------
    str
        ``"grew"``, ``"stable"`` or ``"shrank"``.

    Examples
    --------
    >>> lung_rads_2022(6.0, 7.6), lung_rads_2022(6.0, 7.5), lung_rads_2022(6.0, 4.4)
    ('grew', 'stable', 'shrank')
    """
    if interval_days is not None:
        _check_interval(interval_days)
    dd = diameter_change_mm(d1_mm, d2_mm)
    if dd > LUNG_RADS_THRESHOLD_MM:
        return "grew"
    if dd < -LUNG_RADS_THRESHOLD_MM:
        return "shrank"
    return "stable"


def fleischner_2017(d1_mm, d2_mm, interval_days=None) -> str:
    r"""Growth category by the Fleischner Society 2017 [2]_, [3]_ (mean diameter).

    .. math::

        \text{grew} \iff \Delta \bar d \ge 2\ \text{mm}, \qquad
        \text{shrank} \iff \Delta \bar d \le -2\ \text{mm}

    Parameters
    ----------
    d1_mm, d2_mm : float
        Unrounded mean diameters at T1 and T2 (mm).
    interval_days : float, optional
        Checked to be positive when given; not used in the rule.

    Returns
    -------
    str
        ``"grew"``, ``"stable"`` or ``"shrank"``.

    Examples
    --------
    >>> fleischner_2017(6.0, 8.0), fleischner_2017(6.0, 7.9)
    ('grew', 'stable')
    """
    if interval_days is not None:
        _check_interval(interval_days)
    dd = diameter_change_mm(d1_mm, d2_mm)
    # a tiny tolerance so that 6.0 -> 8.0 computed in floating point counts as 2 mm
    if dd >= FLEISCHNER_THRESHOLD_MM - 1e-9:
        return "grew"
    if dd <= -FLEISCHNER_THRESHOLD_MM + 1e-9:
        return "shrank"
    return "stable"


def nelson_vdt_category(vdt_days) -> str:
    """NELSON / BTS VDT category [4]_, [5]_ of a growing nodule.

    Parameters
    ----------
    vdt_days : float
        Volume doubling time (days).

    Returns
    -------
    str
        ``"fast"`` (0 < VDT < 400 d), ``"intermediate"`` (400-600 d),
        ``"slow"`` (> 600 d), or ``""`` when the VDT is not positive or NaN
        (no growth).

    Examples
    --------
    >>> nelson_vdt_category(300), nelson_vdt_category(500), nelson_vdt_category(900)
    ('fast', 'intermediate', 'slow')
    """
    v = float(vdt_days)
    if not math.isfinite(v) or v <= 0:
        return ""
    if v < NELSON_VDT_FAST_DAYS:
        return "fast"
    if v <= NELSON_VDT_SLOW_DAYS:
        return "intermediate"
    return "slow"


def nelson(v1_mm3, v2_mm3, interval_days) -> str:
    r"""Growth category by NELSON volumetry [4]_ / BTS 2015 [5]_.

    .. math::

        \text{grew} \iff \Delta V\% \ge 25 \ \wedge\ 0 < \mathrm{VDT} < 400\ \text{d},
        \qquad \text{shrank} \iff V_2 / V_1 \le 1 / 1.25

    Parameters
    ----------
    v1_mm3, v2_mm3 : float
        Volumes at T1 and T2 (mm³).
    interval_days : float
        Interval (days, > 0).

    Returns
    -------
    str
        ``"grew"``, ``"stable"`` or ``"shrank"``.

    Examples
    --------
    Doubling in 200 days grows; +30 % in two years is slow (stable):

    >>> nelson(100.0, 200.0, 200), nelson(100.0, 130.0, 730), nelson(100.0, 70.0, 365)
    ('grew', 'stable', 'shrank')
    """
    a, b = _check_volumes(v1_mm3, v2_mm3)
    t = _check_interval(interval_days)
    if b <= a / (1.0 + NELSON_VOLUME_CHANGE_PCT / 100.0):
        return "shrank"
    pct = volume_change_pct(a, b)
    vdt = volume_doubling_time(a, b, t)
    if pct >= NELSON_VOLUME_CHANGE_PCT - 1e-9 and 0 < vdt < NELSON_VDT_FAST_DAYS:
        return "grew"
    return "stable"


#: The named criteria, ``name -> (kind, rule)``; kind says whether the rule
#: reads mean diameters (``"diameter"``) or volumes (``"volume"``).
CRITERIA: dict[str, tuple[str, Callable[..., str]]] = {
    "lung_rads_2022": ("diameter", lung_rads_2022),
    "fleischner_2017": ("diameter", fleischner_2017),
    "nelson": ("volume", nelson),
}


_MODEL_PATH = Path(__file__).resolve().parent / "params" / "uncertainty_model.csv"


@lru_cache(maxsize=4)
def load_uncertainty_model(path: str | None = None):
    r"""Read the measurement-uncertainty model fitted by ``benchmarks/measurement.py``.

    Parameters
    ----------
    path : str, optional
        CSV file; default ``nodulegrowth/params/uncertainty_model.csv``.

    Returns
    -------
    pandas.DataFrame or None
        Columns ``nodule_type, quantity, k, p`` (model
        :math:`\mathrm{CV} = k\,(h/D)^p`); None when the file is absent
        (e.g. not installed), in which case no intervals are computed.

    Examples
    --------
    >>> m = load_uncertainty_model()
    >>> m is None or {"nodule_type", "quantity", "k", "p"} <= set(m.columns)
    True
    """
    import pandas as pd

    f = Path(path) if path else _MODEL_PATH
    if not f.is_file():
        return None
    return pd.read_csv(f)


def volume_cv(diameter_mm, voxel_size_mm, nodule_type: str | None = None, model=None) -> float:
    r"""Predicted coefficient of variation of a repeated volume measurement.

    .. math:: \mathrm{CV}_V = k \left(\frac{h}{D}\right)^p

    with :math:`h` the geometric-mean voxel size and :math:`D` the mean
    diameter; :math:`k, p` were fitted per nodule type to repeated scans of
    phantoms (``benchmarks/measurement.py``). Without a type, the largest
    prediction over the types is returned (conservative).

    Parameters
    ----------
    diameter_mm : float
        Mean diameter (mm, > 0).
    voxel_size_mm : float
        :math:`(s_z s_y s_x)^{1/3}` (mm, > 0).
    nodule_type : str, optional
        ``solid``, ``part_solid`` or ``ground_glass``.
    model : pandas.DataFrame, optional
        Default :func:`load_uncertainty_model`.

    Returns
    -------
    float
        CV (fraction); NaN when no model is available or an input is not
        positive and finite.

    Examples
    --------
    >>> import pandas as pd
    >>> mdl = pd.DataFrame({"nodule_type": ["solid"], "quantity": ["volume"], "k": [0.5], "p": [1.0]})
    >>> volume_cv(10.0, 1.0, "solid", model=mdl)
    0.05
    """
    mdl = load_uncertainty_model() if model is None else model
    try:
        d, h = float(diameter_mm), float(voxel_size_mm)
    except (TypeError, ValueError):
        return math.nan
    if mdl is None or not (math.isfinite(d) and math.isfinite(h)) or d <= 0 or h <= 0:
        return math.nan
    rows = mdl[mdl["quantity"] == "volume"]
    if nodule_type is not None and (rows["nodule_type"] == nodule_type).any():
        rows = rows[rows["nodule_type"] == nodule_type]
    if rows.empty:
        return math.nan
    return float(max(r.k * (h / d) ** r.p for r in rows.itertuples()))


def _uncertainty(m1, m2, t, nodule_type, model):
    """95 % intervals of the volume change and VDT, and whether the change is real."""
    cv1 = volume_cv(getattr(m1, "mean_diameter_mm", math.nan), getattr(m1, "voxel_size_mm", math.nan),
                    nodule_type, model)
    cv2 = volume_cv(getattr(m2, "mean_diameter_mm", math.nan), getattr(m2, "voxel_size_mm", math.nan),
                    nodule_type, model)
    v1, v2 = float(m1.volume_mm3), float(m2.volume_mm3)
    if not (math.isfinite(cv1) and math.isfinite(cv2)) or v2 <= 0:
        return (math.nan, math.nan), (math.nan, math.nan), None
    # CV ~ SD of log volume for small CVs; independent errors at T1 and T2
    s = math.sqrt(cv1 ** 2 + cv2 ** 2)
    lr = math.log(v2 / v1)
    lo, hi = lr - 1.96 * s, lr + 1.96 * s
    pct = (100.0 * (math.exp(lo) - 1.0), 100.0 * (math.exp(hi) - 1.0))
    exceeds = lo > 0 or hi < 0
    if exceeds:
        a, b = t * math.log(2.0) / hi, t * math.log(2.0) / lo
        vdt = (min(a, b), max(a, b))
    else:
        vdt = (math.nan, math.nan)
    return pct, vdt, exceeds


@dataclass(frozen=True)
class GrowthResult:
    """Growth of one nodule between T1 and T2.

    Attributes
    ----------
    interval_days : float
        T2 date minus T1 date (days).
    diameter_change_mm : float
        Mean-diameter change (mm).
    volume_change_pct : float
        Volume change (%).
    vdt_days : float
        Volume doubling time (days); NaN when the volume did not change or the
        nodule vanished.
    growth : str
        ``grew|stable|shrank`` by ``criterion``.
    criterion : str
        Name of the criterion behind ``growth``.
    by_criterion : dict
        ``{criterion name: grew|stable|shrank}`` for every criterion.
    nelson_vdt_category : str
        ``fast|intermediate|slow`` for a growing nodule, else ``""``.
    flags : tuple of str
        QC flags, e.g. ``interval_exceeds_12_months``, ``nodule_vanished``,
        ``change_within_measurement_error``.
    volume_change_pct_ci95 : tuple of 2 float
        95 % interval of the volume change (%) from the measurement-uncertainty
        model (NaN when no model or no voxel size is available).
    vdt_days_ci95 : tuple of 2 float
        95 % interval of the VDT (days); NaN bounds when the volume-ratio
        interval contains 1 (the VDT is then unbounded).
    change_exceeds_measurement_error : bool or None
        True when the 95 % interval of the volume ratio excludes 1; None
        without a model.
    """

    interval_days: float
    diameter_change_mm: float
    volume_change_pct: float
    vdt_days: float
    growth: str
    criterion: str
    by_criterion: dict = field(default_factory=dict)
    nelson_vdt_category: str = ""
    flags: tuple = ()
    volume_change_pct_ci95: tuple = (math.nan, math.nan)
    vdt_days_ci95: tuple = (math.nan, math.nan)
    change_exceeds_measurement_error: bool | None = None

    def as_dict(self) -> dict:
        """Flat dictionary with the contract's column names plus extras.

        Returns
        -------
        dict
            ``interval_days, diameter_change_mm, volume_change_pct, vdt_days,
            growth`` (contract), ``growth_criterion``, ``growth_<name>`` for
            every criterion, ``nelson_vdt_category`` and the uncertainty
            columns ``volume_change_pct_lo95/_hi95``, ``vdt_days_lo95/_hi95``,
            ``change_exceeds_measurement_error``.

        Examples
        --------
        >>> r = GrowthResult(90.0, 2.0, 40.0, 180.0, "grew", "lung_rads_2022",
        ...                  {"lung_rads_2022": "grew"})
        >>> r.as_dict()["growth_lung_rads_2022"]
        'grew'
        """
        d = {
            "interval_days": self.interval_days,
            "diameter_change_mm": self.diameter_change_mm,
            "volume_change_pct": self.volume_change_pct,
            "vdt_days": self.vdt_days,
            "growth": self.growth,
            "growth_criterion": self.criterion,
        }
        for name in CRITERIA:
            d[f"growth_{name}"] = self.by_criterion.get(name, "")
        d["nelson_vdt_category"] = self.nelson_vdt_category
        d["volume_change_pct_lo95"], d["volume_change_pct_hi95"] = self.volume_change_pct_ci95
        d["vdt_days_lo95"], d["vdt_days_hi95"] = self.vdt_days_ci95
        d["change_exceeds_measurement_error"] = self.change_exceeds_measurement_error
        return d


def assess_growth(m1, m2, interval_days, *, criterion: str = DEFAULT_CRITERION,
                  nodule_type: str | None = None, uncertainty_model=None) -> GrowthResult:
    r"""Assess the growth of a nodule between two measurements.

    .. math::

        \Delta \bar d = \bar d_2 - \bar d_1, \quad
        \Delta V\% = 100 \frac{V_2 - V_1}{V_1}, \quad
        \mathrm{VDT} = \frac{\Delta t \ln 2}{\ln (V_2 / V_1)}

    and every criterion of :data:`CRITERIA` (see the module notes for the
    rules and their references).

    When the measurements carry ``voxel_size_mm`` and the uncertainty model
    (:func:`load_uncertainty_model`) is available, the 95 % interval of the
    volume ratio is

    .. math:: \frac{V_2}{V_1} \exp\big(\pm 1.96 \sqrt{\mathrm{CV}_1^2 + \mathrm{CV}_2^2}\big)

    (CV from :func:`volume_cv`, treated as the SD of :math:`\ln V`), from which
    the intervals of the volume change and VDT follow;
    ``change_exceeds_measurement_error`` says whether it excludes 1, otherwise
    the flag ``change_within_measurement_error`` is set.

    Parameters
    ----------
    m1, m2 : NoduleMeasurement
        Measurements at T1 and T2 (any object with ``mean_diameter_mm`` in mm
        and ``volume_mm3`` in mm³ works). A vanished nodule at T2 may be given
        as a measurement with zero volume and diameter.
    interval_days : float
        Time from T1 to T2 (days, > 0).
    criterion : str, default "lung_rads_2022"
        Criterion behind ``growth``: one of ``lung_rads_2022``,
        ``fleischner_2017``, ``nelson``.
    nodule_type : str, optional
        Selects the uncertainty model's row; the most conservative when None.
    uncertainty_model : pandas.DataFrame, optional
        Overrides the packaged model.

    Returns
    -------
    GrowthResult

    Raises
    ------
    MeasurementError
        Unknown criterion, non-positive interval, non-positive T1 volume or
        non-finite measurements.

    Examples
    --------
    >>> from types import SimpleNamespace as M
    >>> r = assess_growth(M(mean_diameter_mm=6.0, volume_mm3=113.1),
    ...                   M(mean_diameter_mm=8.0, volume_mm3=268.1), 180)
    >>> r.growth, r.by_criterion["nelson"], round(r.vdt_days)
    ('grew', 'grew', 145)
    """
    if criterion not in CRITERIA:
        raise MeasurementError(
            f"criterion={criterion!r} is unknown; use one of {', '.join(CRITERIA)}"
        )
    t = _check_interval(interval_days)
    d1, d2 = m1.mean_diameter_mm, m2.mean_diameter_mm
    v1, v2 = m1.volume_mm3, m2.volume_mm3
    vdt = volume_doubling_time(v1, v2, t)
    by = {}
    for name, (kind, rule) in CRITERIA.items():
        by[name] = rule(d1, d2, t) if kind == "diameter" else rule(v1, v2, t)
    flags = []
    if t > LUNG_RADS_INTERVAL_DAYS:
        flags.append("interval_exceeds_12_months")
    if float(v2) == 0.0:
        flags.append("nodule_vanished")
        by = {k: "shrank" for k in by}
    pct_ci, vdt_ci, exceeds = _uncertainty(m1, m2, t, nodule_type, uncertainty_model)
    if exceeds is False:
        flags.append("change_within_measurement_error")
    return GrowthResult(
        interval_days=t,
        diameter_change_mm=diameter_change_mm(d1, d2),
        volume_change_pct=volume_change_pct(v1, v2),
        vdt_days=vdt,
        growth=by[criterion],
        criterion=criterion,
        by_criterion=by,
        nelson_vdt_category=nelson_vdt_category(vdt) if float(v2) > float(v1) else "",
        flags=tuple(flags),
        volume_change_pct_ci95=pct_ci,
        vdt_days_ci95=vdt_ci,
        change_exceeds_measurement_error=exceeds,
    )
