"""Cohort report: a multi-page PDF, one PNG per figure and a tidy summary CSV.

The report is rendered purely from ``measurements.csv`` (see
``docs/CONTRACT.md`` section 3) plus, for the per-nodule pages, the visual
checks ``nodules/<patient_id>_<nodule_id>.png`` that :func:`render_nodule_check`
wrote while the images were in memory. Nothing else is read, so the report can
be re-rendered at any time from the CSV alone.

Pages, in order (a section without data is *skipped*, and the cohort summary
page lists every skipped section with the reason):

1. ``cohort_summary`` -- patients and nodules by diagnosis; rows processed,
   failed and flagged; interval between scans; scanners, kVp and slice
   thickness at T1 and T2.
2. ``size`` -- mean axial diameter at T1 and T2: overlaid histogram and
   boxplot, mean ± SD stated in the figure.
3. ``size_by_diagnosis`` -- the same per diagnosis (only when there are two
   or more diagnosis groups; at most three a page, ``size_by_diagnosis_<k>``
   when more).
4. ``growth`` -- diameter change, volume change, ``|VDT|`` on a log scale
   (growing and shrinking separated), growth-category counts per criterion and
   diagnosis.
5. ``waterfall`` -- volume change per nodule, sorted, coloured by diagnosis.
6. ``agreement`` -- Bland-Altman plots and correlation against the
   radiologists' diameters at T1, T2 and for the change (only when
   ``t1_diameter_mm`` / ``t2_diameter_mm`` are given).
7. ``propagation`` -- distribution of the propagation error (only when
   ``propagation_error_mm`` is given).
8. ``failures_<n>`` -- one table row per failed or flagged row (a flag that
   asks for a look, see :data:`INFORMATIONAL_FLAGS`), paginated (only when
   there is at least one).
9. ``nodule_<patient>_<nodule>`` -- one page per nodule (every row, failed
   ones included) with its PNG, when present, and its measurements. These
   pages go to the PDF only, unless ``per_nodule_png=True``.

Every page except the per-nodule ones is also written as
``figures/<name>.png``, and every number printed on them is a row of
``cohort_summary.csv`` (:func:`cohort_statistics`).

Colours are fixed for the whole report: T1 is blue and T2 orange
(:data:`TIME_POINT_COLOURS`), every diagnosis keeps one colour
(:func:`diagnosis_colours`) and growth categories use
:data:`CATEGORY_COLOURS`.

References
----------
.. [1] J. M. Bland and D. G. Altman, "Statistical methods for assessing
   agreement between two methods of clinical measurement", *Lancet* 1(8476),
   307-310, 1986.
.. [2] American College of Radiology, *Lung-RADS v2022* (2022).
.. [3] H. MacMahon et al., "Guidelines for management of incidental pulmonary
   nodules detected on CT images: from the Fleischner Society 2017",
   *Radiology* 284(1), 228-243, 2017.
.. [4] D. M. Xu et al., "Nodule management protocol of the NELSON randomised
   lung cancer screening trial", *Lung Cancer* 54(2), 177-184, 2006.
"""
from __future__ import annotations

import math
import os
import re
import tempfile
import textwrap
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .errors import GeometryError, ReportError

__all__ = [
    "ReportError",
    "TIME_POINT_COLOURS",
    "CATEGORY_COLOURS",
    "NOT_GIVEN",
    "INFORMATIONAL_FLAGS",
    "load_measurements",
    "diagnosis_groups",
    "diagnosis_colours",
    "scan_table",
    "cohort_statistics",
    "bland_altman",
    "nodule_png_name",
    "make_report",
    "render_nodule_check",
    "nodule_check_figure",
]


#: One colour per time point, used in every figure (Okabe-Ito blue / orange).
TIME_POINT_COLOURS = {"T1": "#0072B2", "T2": "#E69F00"}
#: One colour per growth category (red / light grey / dark grey: prints well).
CATEGORY_COLOURS = {"grew": "#CB181D", "stable": "#BDBDBD", "shrank": "#4D4D4D"}
#: Label of rows whose diagnosis is empty.
NOT_GIVEN = "not given"
#: QC flags that describe a row rather than doubt it: the nodule touches the
#: pleura (its location), the interval is longer than a criterion's 12 months,
#: the change is within measurement error (also in
#: ``change_exceeds_measurement_error``), the nodule type was taken from both
#: time points. A row is *flagged* (asks for a look) when it carries any other.
INFORMATIONAL_FLAGS = frozenset({"touches_pleura", "interval_exceeds_12_months",
                                 "change_within_measurement_error",
                                 "nodule_type_from_both_time_points"})
_NOT_GIVEN_COLOUR = "#8C8C8C"
# Paul Tol's "muted" scheme minus colours close to T1/T2 or the categories,
# so a diagnosis is never confused with a time point.
_DIAGNOSIS_PALETTE = ("#882255", "#117733", "#332288", "#DDCC77", "#AA4499",
                      "#44AA99", "#999933", "#661100", "#6699CC", "#CC6677")

_CATEGORIES = ("grew", "stable", "shrank")
_CRITERION_COLUMNS = ("growth_lung_rads_2022", "growth_fleischner_2017", "growth_nelson")
_NUMERIC_COLUMNS = (
    "t2_propagated_x", "t2_propagated_y", "t2_propagated_z",
    "t1_center_x", "t1_center_y", "t1_center_z",
    "t2_center_x", "t2_center_y", "t2_center_z", "propagation_error_mm",
    "t1_long_axis_mm", "t2_long_axis_mm", "t1_short_axis_mm", "t2_short_axis_mm",
    "t1_mean_diameter_mm", "t2_mean_diameter_mm",
    "t1_max_3d_diameter_mm", "t2_max_3d_diameter_mm",
    "t1_volume_mm3", "t2_volume_mm3", "interval_days", "diameter_change_mm",
    "volume_change_pct", "vdt_days", "t1_diameter_mm", "t2_diameter_mm",
    "t1_kvp", "t2_kvp", "t1_slice_thickness_mm", "t2_slice_thickness_mm", "runtime_s",
)
_TEXT_COLUMNS = (
    "patient_id", "nodule_id", "diagnosis", "status", "error", "growth", "qc_flags",
    "nodule_type", "location", "growth_criterion", *_CRITERION_COLUMNS,
    "t1_manufacturer", "t1_model", "t2_manufacturer", "t2_model",
)
_AGREEMENT_MEASURES = ("mean_diameter", "long_axis", "max_3d_diameter")

_PAGE_SIZE = (11.69, 8.27)  # A4 landscape, inches
_DPI = 150
_LUNG_WINDOW = (-600.0 - 750.0, -600.0 + 750.0)  # W 1500 / L -600 HU


# --------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------
def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextmanager
def _atomic_path(final: Path):
    """Yield a temporary path next to ``final``; move it there on success.

    The temporary file lives in the same folder so ``os.replace`` is atomic;
    an interrupted run leaves only a hidden ``.tmp`` file, never a truncated
    file under the final name.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates 0600; give the file the permissions a plain open()
        # would have, or nobody else could read the report
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _save_png(fig, path: Path, dpi: int = _DPI) -> None:
    with _atomic_path(path) as tmp:
        # fast zlib level: the default level costs more CPU than it saves bytes
        fig.savefig(tmp, format="png", dpi=dpi, pil_kwargs={"compress_level": 1})


# --------------------------------------------------------------------------
# loading and statistics (pure)
# --------------------------------------------------------------------------
def load_measurements(measurements: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    """Read and normalise a measurements table.

    Parameters
    ----------
    measurements : pandas.DataFrame or path-like
        The table written by the pipeline (``measurements.csv``; columns of
        ``docs/CONTRACT.md`` section 3 plus optional extras) or the path to
        it. Only ``patient_id`` is strictly required; every other known
        column that is absent is added as empty, so a partial table still
        renders.

    Returns
    -------
    pandas.DataFrame
        A copy with numeric columns as ``float64`` (empty -> NaN), text
        columns as ``str`` (empty -> ``""``), ``diagnosis`` empty replaced by
        :data:`NOT_GIVEN` and ``status`` lower-cased (inferred as ``failed``
        where an ``error`` is given when the column is missing).

    Raises
    ------
    ReportError
        The file cannot be read as CSV, or ``patient_id`` is missing.

    Examples
    --------
    >>> df = load_measurements(pd.DataFrame({"patient_id": ["p1"],
    ...                                      "t1_volume_mm3": ["523.6"]}))
    >>> float(df.loc[0, "t1_volume_mm3"]), df.loc[0, "diagnosis"], df.loc[0, "status"]
    (523.6, 'not given', 'ok')
    """
    if isinstance(measurements, pd.DataFrame):
        df = measurements.copy()
        source = "the DataFrame"
    else:
        source = str(measurements)
        try:
            df = pd.read_csv(measurements, dtype=str, keep_default_na=False)
        except FileNotFoundError as exc:
            raise ReportError(f"measurements file {source!r} does not exist; "
                              "give the path of OUTDIR/measurements.csv") from exc
        except (OSError, UnicodeDecodeError, pd.errors.ParserError,
                pd.errors.EmptyDataError) as exc:
            raise ReportError(f"cannot read measurements file {source!r} as CSV "
                              f"({type(exc).__name__}); check it is the pipeline's "
                              "measurements.csv") from exc
    if "patient_id" not in df.columns:
        cols = ", ".join(map(str, df.columns[:8])) + (", ..." if len(df.columns) > 8 else "")
        raise ReportError(f"{source} has no 'patient_id' column (columns: {cols or 'none'}); "
                          "is this the pipeline's measurements.csv?")
    df = df.reset_index(drop=True)
    for col in _NUMERIC_COLUMNS:
        if col in df.columns:
            df[col] = pd.to_numeric(df[col].replace("", np.nan), errors="coerce").astype(float)
        else:
            df[col] = np.nan
    for col in _TEXT_COLUMNS:
        if col in df.columns:
            df[col] = df[col].map(_text)
        else:
            df[col] = ""
    for col in ("patient_id", "nodule_id"):
        # an id column read as numbers (1.0 when some are empty) names files
        # as the manifest did: "1", not "1.0"
        df[col] = df[col].map(lambda x: x[:-2] if re.fullmatch(r"-?\d+\.0", x) else x)
    df["nodule_id"] = df["nodule_id"].where(df["nodule_id"] != "", "1")
    df["diagnosis"] = df["diagnosis"].where(df["diagnosis"] != "", NOT_GIVEN)
    status = df["status"].str.strip().str.lower()
    inferred = np.where(df["error"] != "", "failed", "ok")
    df["status"] = status.where(status != "", pd.Series(inferred, index=df.index))
    return df


def _text(value: Any) -> str:
    """Cell value as stripped text; NaN/None become ``""``."""
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return ""
    text = str(value).strip()
    return "" if text.lower() == "nan" else text


def _flags(value: Any) -> list[str]:
    """``"a; b"`` -> ``["a", "b"]``; empty, None or NaN -> ``[]``."""
    return [f.strip() for f in _text(value).split(";") if f.strip()]


def _review_flags(value: Any) -> list[str]:
    """The flags of ``value`` that ask for a look (not in :data:`INFORMATIONAL_FLAGS`)."""
    return [f for f in _flags(value) if f not in INFORMATIONAL_FLAGS]


def _is_flagged(qc_flags: pd.Series) -> pd.Series:
    return qc_flags.map(lambda v: bool(_review_flags(v)))


def diagnosis_groups(df: pd.DataFrame) -> list[str]:
    """Diagnosis labels of a loaded table, sorted, with :data:`NOT_GIVEN` last.

    Parameters
    ----------
    df : pandas.DataFrame
        A table from :func:`load_measurements` (column ``diagnosis``).

    Returns
    -------
    list of str
        Every label once; this order (and :func:`diagnosis_colours`) is used
        in every figure and in ``cohort_summary.csv``.

    Examples
    --------
    >>> diagnosis_groups(pd.DataFrame({"diagnosis": ["malignant", "not given", "benign"]}))
    ['benign', 'malignant', 'not given']
    """
    labels = sorted(set(df["diagnosis"]) - {NOT_GIVEN})
    if (df["diagnosis"] == NOT_GIVEN).any():
        labels.append(NOT_GIVEN)
    return labels


def diagnosis_colours(groups: Sequence[str]) -> dict[str, str]:
    """Fixed colour of each diagnosis group (cycled beyond ten groups).

    Parameters
    ----------
    groups : sequence of str
        Diagnosis labels as returned by :func:`diagnosis_groups`.

    Returns
    -------
    dict
        Label -> hex colour; :data:`NOT_GIVEN` is always grey.

    Examples
    --------
    >>> diagnosis_colours(["benign", "not given"])
    {'benign': '#882255', 'not given': '#8C8C8C'}
    """
    colours: dict[str, str] = {}
    named = [g for g in groups if g != NOT_GIVEN]
    for i, g in enumerate(named):
        colours[g] = _DIAGNOSIS_PALETTE[i % len(_DIAGNOSIS_PALETTE)]
    if NOT_GIVEN in groups:
        colours[NOT_GIVEN] = _NOT_GIVEN_COLOUR
    return colours


def bland_altman(method: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Bland-Altman agreement of paired measurements [1]_ and Pearson's r.

    Parameters
    ----------
    method, reference : array_like, shape (n,)
        Paired measurements in the same unit (here mm); pairs where either is
        NaN are ignored.

    Returns
    -------
    dict
        ``n``, ``bias``, ``sd_diff``, ``loa_lower``, ``loa_upper`` (same unit
        as the input) and ``pearson_r`` (dimensionless; NaN when fewer than
        three pairs or no variation).

    Notes
    -----
    With :math:`d_i = m_i - r_i` (method minus reference):

    .. math::

        \\bar d = \\frac{1}{n}\\sum_i d_i, \\qquad
        s_d = \\sqrt{\\frac{1}{n-1}\\sum_i (d_i - \\bar d)^2}, \\qquad
        \\mathrm{LoA} = \\bar d \\pm 1.96\\, s_d

    and :math:`r = \\mathrm{cov}(m, r) / (s_m s_r)`.

    Examples
    --------
    >>> s = bland_altman(np.array([10.0, 12.0, 14.0]), np.array([9.0, 11.0, 13.0]))
    >>> s["bias"], s["sd_diff"], round(s["pearson_r"], 6)
    (1.0, 0.0, 1.0)
    """
    m = np.asarray(method, dtype=float)
    r = np.asarray(reference, dtype=float)
    if m.shape != r.shape:
        raise ReportError(f"bland_altman needs paired arrays, got shapes {m.shape} and "
                          f"{r.shape}; pass one value per nodule in each")
    ok = np.isfinite(m) & np.isfinite(r)
    m, r = m[ok], r[ok]
    n = int(m.size)
    out = {"n": float(n), "bias": np.nan, "sd_diff": np.nan, "loa_lower": np.nan,
           "loa_upper": np.nan, "pearson_r": np.nan}
    if n == 0:
        return out
    d = m - r
    out["bias"] = float(d.mean())
    if n >= 2:
        sd = float(d.std(ddof=1))
        out["sd_diff"] = sd
        out["loa_lower"] = out["bias"] - 1.96 * sd
        out["loa_upper"] = out["bias"] + 1.96 * sd
    if n >= 3 and m.std() > 0 and r.std() > 0:
        out["pearson_r"] = float(np.corrcoef(m, r)[0, 1])
    return out


def _describe(values: pd.Series) -> dict[str, float]:
    v = values.to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"n": 0.0}
    return {
        "n": float(v.size), "mean": float(v.mean()),
        "sd": float(v.std(ddof=1)) if v.size > 1 else np.nan,
        "median": float(np.median(v)), "q1": float(np.percentile(v, 25)),
        "q3": float(np.percentile(v, 75)), "min": float(v.min()), "max": float(v.max()),
    }


def _criteria(df: pd.DataFrame) -> list[tuple[str, str]]:
    """(column, display name) of every growth criterion with values."""
    out: list[tuple[str, str]] = []
    named = {c.removeprefix("growth_") for c in _CRITERION_COLUMNS}
    crit = [c for c in df["growth_criterion"].unique() if c]
    main_name = crit[0] if len(crit) == 1 else "growth"
    if (df["growth"] != "").any():
        dup = f"growth_{main_name}" in df.columns and main_name in named and \
            (df[f"growth_{main_name}"] != "").any()
        if not dup:
            out.append(("growth", main_name))
    for col in _CRITERION_COLUMNS:
        if (df[col] != "").any():
            out.append((col, col.removeprefix("growth_")))
    return out


def scan_table(df: pd.DataFrame, time_point: str) -> pd.DataFrame:
    """One row per scan at a time point, with its scanner settings.

    Nodules of one patient share their scans, so rows are de-duplicated on
    ``patient_id``, ``interval_days`` and the scanner columns of the time
    point.

    Parameters
    ----------
    df : pandas.DataFrame
        A table from :func:`load_measurements`.
    time_point : {"T1", "T2"}

    Returns
    -------
    pandas.DataFrame
        Columns ``manufacturer, model, kvp, slice_thickness_mm``.

    Examples
    --------
    >>> df = load_measurements(pd.DataFrame({"patient_id": ["a", "a", "b"],
    ...     "t1_manufacturer": ["GE", "GE", "Siemens"], "t1_kvp": [120, 120, 100]}))
    >>> len(scan_table(df, "T1"))
    2
    """
    p = time_point.lower()
    if p not in ("t1", "t2"):
        raise ReportError(f"time point {time_point!r} unknown; use 'T1' or 'T2'")
    cols = [f"{p}_manufacturer", f"{p}_model", f"{p}_kvp", f"{p}_slice_thickness_mm"]
    scans = df[["patient_id", "interval_days", *cols]].astype(str).drop_duplicates()
    out = df.loc[scans.index, cols].copy()
    out.columns = ["manufacturer", "model", "kvp", "slice_thickness_mm"]
    return out.reset_index(drop=True)


def cohort_statistics(df: pd.DataFrame, *, agreement_measure: str = "mean_diameter"
                      ) -> pd.DataFrame:
    """Every number shown in the report, as a tidy table.

    Parameters
    ----------
    df : pandas.DataFrame
        A table from :func:`load_measurements`.
    agreement_measure : {"mean_diameter", "long_axis", "max_3d_diameter"}
        Pipeline diameter compared with the radiologists' ``t1_diameter_mm``
        / ``t2_diameter_mm``.

    Returns
    -------
    pandas.DataFrame
        Columns ``section, statistic, group, detail, value, unit``; ``group``
        is a diagnosis or ``"all"``; ``detail`` names the column, time point,
        criterion/category or scanner the statistic is about. Sections:

        - ``cohort``: ``rows, patients, nodules, processed, failed, flagged``
          per diagnosis (a row is *processed* when ``status == "ok"``,
          *flagged* when ``qc_flags`` holds a flag that asks for a look, i.e.
          one not in :data:`INFORMATIONAL_FLAGS`).
        - ``interval``: ``n, median, q1, q3, min, max`` (days) over scan
          pairs, i.e. unique ``(patient_id, interval_days)``.
        - ``scanner`` / ``kvp`` / ``slice_thickness``: scan counts per value
          at T1 and T2 (``detail = "T1|<value>"``), over :func:`scan_table`.
        - ``size``: ``n, mean, sd, median, q1, q3, min, max`` of the mean
          diameter (mm, processed rows), ``detail`` the column name.
        - ``growth``: the same for ``diameter_change_mm`` and
          ``volume_change_pct``; ``vdt``: counts of growing (VDT > 0),
          shrinking (VDT < 0) and unchanged (VDT empty or infinite) nodules
          and the median ``|VDT|`` of each.
        - ``growth_category``: ``count`` per ``detail = "<criterion>|<category>"``.
        - ``agreement``: :func:`bland_altman` at ``T1``, ``T2`` and ``change``
          (pipeline minus radiologist).
        - ``propagation``: ``n, mean, sd, median, q1, q3, min, max, p95`` of
          ``propagation_error_mm`` (mm) per diagnosis, over every row with a
          value.
        - ``qc``: ``count`` per flag name, and ``failed``.

    Notes
    -----
    Mean and sample standard deviation over the :math:`n` finite values:

    .. math::

        \\bar x = \\frac{1}{n}\\sum_i x_i, \\qquad
        s = \\sqrt{\\frac{1}{n-1}\\sum_i (x_i - \\bar x)^2}

    quartiles by linear interpolation (``numpy.percentile``).

    Examples
    --------
    >>> df = load_measurements(pd.DataFrame({"patient_id": ["a", "b"],
    ...     "status": ["ok", "ok"], "t1_mean_diameter_mm": [8.0, 10.0]}))
    >>> s = cohort_statistics(df)
    >>> s.query("section == 'size' and statistic == 'mean' and group == 'all'").value.item()
    9.0
    """
    if agreement_measure not in _AGREEMENT_MEASURES:
        raise ReportError(f"agreement_measure {agreement_measure!r} unknown; use one of "
                          f"{', '.join(_AGREEMENT_MEASURES)}")
    rec: list[dict[str, Any]] = []

    def add(section, statistic, group, detail, value, unit=""):
        rec.append({"section": section, "statistic": statistic, "group": group,
                    "detail": detail, "value": float(value), "unit": unit})

    groups = diagnosis_groups(df)
    ok = df[df["status"] == "ok"]
    for g in ["all", *groups]:
        sub = df if g == "all" else df[df["diagnosis"] == g]
        add("cohort", "rows", g, "", len(sub), "rows")
        add("cohort", "patients", g, "", sub["patient_id"].nunique(), "patients")
        add("cohort", "nodules", g, "", len(sub[["patient_id", "nodule_id"]].drop_duplicates()),
            "nodules")
        add("cohort", "processed", g, "", (sub["status"] == "ok").sum(), "rows")
        add("cohort", "failed", g, "", (sub["status"] != "ok").sum(), "rows")
        add("cohort", "flagged", g, "", int(_is_flagged(sub["qc_flags"]).sum()), "rows")

    pairs = df[["patient_id", "interval_days"]].dropna().drop_duplicates()
    for k, v in _describe(pairs["interval_days"]).items():
        if k not in ("mean", "sd"):
            add("interval", k, "all", "interval_days", v, "scan pairs" if k == "n" else "days")

    for tp in ("T1", "T2"):
        scans = scan_table(df, tp)
        scanner = (scans["manufacturer"].replace("", "unknown") + " " +
                   scans["model"]).str.strip()
        for name, n in scanner.value_counts(sort=False).sort_index().items():
            add("scanner", "count", "all", f"{tp}|{name}", n, "scans")
        for section, col, unit in (("kvp", "kvp", "kV"),
                                   ("slice_thickness", "slice_thickness_mm", "mm")):
            vals = scans[col].map(lambda x: "unknown" if not np.isfinite(x) else f"{x:g}")
            for name, n in vals.value_counts().sort_index().items():
                add(section, "count", "all", f"{tp}|{name} {unit}" if name != "unknown"
                    else f"{tp}|unknown", n, "scans")

    for g in ["all", *groups]:
        sub = ok if g == "all" else ok[ok["diagnosis"] == g]
        for col in ("t1_mean_diameter_mm", "t2_mean_diameter_mm"):
            for k, v in _describe(sub[col]).items():
                add("size", k, g, col, v, "nodules" if k == "n" else "mm")
        for col, unit in (("diameter_change_mm", "mm"), ("volume_change_pct", "%")):
            for k, v in _describe(sub[col]).items():
                add("growth", k, g, col, v, "nodules" if k == "n" else unit)
        vdt = sub["vdt_days"].to_numpy(dtype=float)
        have_vol = np.isfinite(sub["t1_volume_mm3"].to_numpy(float)) & \
            np.isfinite(sub["t2_volume_mm3"].to_numpy(float))
        grow = np.isfinite(vdt) & (vdt > 0)
        shrink = np.isfinite(vdt) & (vdt < 0)
        add("vdt", "n_growing", g, "vdt_days", grow.sum(), "nodules")
        add("vdt", "n_shrinking", g, "vdt_days", shrink.sum(), "nodules")
        add("vdt", "n_unchanged", g, "vdt_days", (have_vol & ~grow & ~shrink).sum(), "nodules")
        add("vdt", "median_abs_growing", g, "vdt_days",
            np.median(vdt[grow]) if grow.any() else np.nan, "days")
        add("vdt", "median_abs_shrinking", g, "vdt_days",
            np.median(-vdt[shrink]) if shrink.any() else np.nan, "days")
        for col, name in _criteria(df):
            for cat in _CATEGORIES:
                add("growth_category", "count", g, f"{name}|{cat}", (sub[col] == cat).sum(),
                    "nodules")

    if _has_radiologist(df):
        for tp in ("T1", "T2"):
            p = tp.lower()
            ba = bland_altman(ok[f"{p}_{agreement_measure}_mm"], ok[f"{p}_diameter_mm"])
            for k, v in ba.items():
                add("agreement", k, "all", tp, v,
                    {"n": "nodules", "pearson_r": ""}.get(k, "mm"))
        ba = bland_altman(ok[f"t2_{agreement_measure}_mm"] - ok[f"t1_{agreement_measure}_mm"],
                          ok["t2_diameter_mm"] - ok["t1_diameter_mm"])
        for k, v in ba.items():
            add("agreement", k, "all", "change", v, {"n": "nodules", "pearson_r": ""}.get(k, "mm"))

    if np.isfinite(df["propagation_error_mm"]).any():
        for g in ["all", *groups]:
            sub = df if g == "all" else df[df["diagnosis"] == g]
            d = _describe(sub["propagation_error_mm"])
            v = sub["propagation_error_mm"].dropna().to_numpy(float)
            if v.size:
                d["p95"] = float(np.percentile(v, 95))
            for k, val in d.items():
                add("propagation", k, g, "propagation_error_mm", val,
                    "nodules" if k == "n" else "mm")

    add("qc", "count", "all", "failed", (df["status"] != "ok").sum(), "rows")
    counts: dict[str, int] = {}
    for f in df["qc_flags"]:
        for name in _flags(f):
            counts[name] = counts.get(name, 0) + 1
    for name in sorted(counts):
        add("qc", "count", "all", name, counts[name], "rows")
    return pd.DataFrame.from_records(
        rec, columns=["section", "statistic", "group", "detail", "value", "unit"])


def _has_radiologist(df: pd.DataFrame) -> bool:
    return bool(np.isfinite(df["t1_diameter_mm"]).any() or np.isfinite(df["t2_diameter_mm"]).any())


def _stat(stats: pd.DataFrame, section: str, statistic: str, group: str = "all",
          detail: str = "") -> float:
    sel = stats[(stats.section == section) & (stats.statistic == statistic) &
                (stats.group == group) & (stats.detail == detail)]
    return float(sel.value.iloc[0]) if len(sel) else np.nan


def nodule_png_name(patient_id: Any, nodule_id: Any) -> str:
    """File name of a nodule's visual check, ``<patient_id>_<nodule_id>.png``.

    Characters other than letters, digits, ``-``, ``_`` and ``.`` are replaced
    by ``_`` so that an identifier can never escape the ``nodules`` folder.

    Parameters
    ----------
    patient_id, nodule_id : str or int
        Identifiers as in the manifest / ``measurements.csv``.

    Returns
    -------
    str
        The file name (no folder); used by ``cohort`` to write the image and
        by :func:`make_report` to find it.

    Examples
    --------
    >>> nodule_png_name("P 01/a", 2)
    'P_01_a_2.png'
    """
    def clean(x: Any) -> str:
        return re.sub(r"[^A-Za-z0-9._-]", "_", _text(x)) or "_"
    return f"{clean(patient_id)}_{clean(nodule_id)}.png"


# --------------------------------------------------------------------------
# formatting helpers
# --------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 1, unit: str = "") -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return _text(value) or "–"
    if not np.isfinite(v):
        return "–" if np.isnan(v) else ("∞" if v > 0 else "−∞")
    s = f"{v:,.{digits}f}".replace("-", "−")
    return f"{s} {unit}".strip()


def _mean_sd(stats: pd.DataFrame, group: str, col: str) -> str:
    m, s = _stat(stats, "size", "mean", group, col), _stat(stats, "size", "sd", group, col)
    if not np.isfinite(m):
        return "no data"
    return _pm(m, s, "mm")


def _pm(mean: float, sd: float, unit: str, digits: int = 2) -> str:
    """``"10.73 ± 3.80 mm"``; a lone value has no SD and says so."""
    if not np.isfinite(mean):
        return "no data"
    if not np.isfinite(sd):
        return f"{_fmt(mean, digits)} {unit} (one value, no SD)"
    return f"{_fmt(mean, digits)} ± {_fmt(sd, digits)} {unit}"


def _wrap(text: str, width: int) -> list[str]:
    lines: list[str] = []
    for part in str(text).splitlines() or [""]:
        lines.extend(textwrap.wrap(part, width, break_long_words=True,
                                   break_on_hyphens=False) or [""])
    return lines


def _draw_table(ax, header: Sequence[str], rows: Sequence[Sequence[str]],
                widths: Sequence[float], wrap: Sequence[int], *, top: float = 1.0,
                line_h: float = 0.032, fontsize: float = 8.5) -> float:
    """Draw a wrapped text table in axes fraction coordinates; return the bottom."""
    xs = np.concatenate([[0.0], np.cumsum(widths)[:-1]])
    y = top
    for j, h in enumerate(header):
        ax.text(xs[j] + 0.005, y - 0.5 * line_h, h, fontsize=fontsize, fontweight="bold",
                va="center", ha="left", transform=ax.transAxes, in_layout=False)
    y -= line_h
    ax.plot([0, sum(widths)], [y, y], color="black", lw=0.8, transform=ax.transAxes,
            clip_on=False)
    for i, row in enumerate(rows):
        cells = [_wrap(c, w) for c, w in zip(row, wrap)]
        n = max(len(c) for c in cells)
        if i % 2 == 1:
            ax.add_patch(_rect((0, y - n * line_h), sum(widths), n * line_h, ax))
        for j, c in enumerate(cells):
            for k, line in enumerate(c):
                # in_layout=False: the table is placed in axes fractions, and
                # measuring hundreds of texts makes constrained layout slow
                # clip_on: a line of unusually wide glyphs never runs off the page
                ax.text(xs[j] + 0.005, y - (k + 0.5) * line_h, line, fontsize=fontsize,
                        va="center", ha="left", transform=ax.transAxes, in_layout=False,
                        clip_on=True)
        y -= n * line_h
    ax.plot([0, sum(widths)], [y, y], color="black", lw=0.5, transform=ax.transAxes,
            clip_on=False)
    return y


def _rect(xy, w, h, ax):
    from matplotlib.patches import Rectangle
    return Rectangle(xy, w, h, transform=ax.transAxes, facecolor="#F2F2F2",
                     edgecolor="none", zorder=0)


def _table_lines(rows: Sequence[Sequence[str]], wrap: Sequence[int]) -> list[int]:
    return [max(len(_wrap(c, w)) for c, w in zip(row, wrap)) for row in rows]


def _paginate(lines: Sequence[int], per_page: int) -> list[list[int]]:
    pages: list[list[int]] = [[]]
    used = 0
    for i, n in enumerate(lines):
        if pages[-1] and used + n > per_page:
            pages.append([])
            used = 0
        pages[-1].append(i)
        used += n
    return pages if pages[0] else []


def _new_page(title: str, subtitle: str = ""):
    import matplotlib.pyplot as plt
    fig = plt.figure(figsize=_PAGE_SIZE, layout="constrained")
    fig.suptitle(title, fontsize=15, fontweight="bold", x=0.01, ha="left")
    if subtitle:
        fig.text(0.99, 0.985, subtitle, ha="right", va="top", fontsize=8, color="#555555")
    return fig


def _note(ax, text: str) -> None:
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=10, color="#555555",
            wrap=True, transform=ax.transAxes)


# --------------------------------------------------------------------------
# pages
# --------------------------------------------------------------------------
def _page_summary(df, stats, groups, skipped, title, subtitle):
    fig = _new_page(title, subtitle)
    gs = fig.add_gridspec(2, 2, height_ratios=[1.0, 1.25])
    ax = fig.add_subplot(gs[0, 0])
    ax.set_axis_off()
    ax.set_title("Patients and nodules by diagnosis", loc="left", fontsize=12)
    rows = []
    for g in [*groups, "all"]:
        rows.append([g if g != "all" else "all diagnoses"] + [
            f"{_stat(stats, 'cohort', s, g):.0f}"
            for s in ("patients", "nodules", "processed", "failed", "flagged")])
    shown = rows if len(rows) <= 12 else rows[:11] + [["…"] * 6] + rows[-1:]
    _draw_table(ax, ["diagnosis", "patients", "nodules", "processed", "failed", "flagged"],
                shown, [0.31, 0.13, 0.13, 0.17, 0.12, 0.13], [19, 8, 8, 8, 8, 8],
                line_h=0.085 if len(shown) <= 9 else 0.85 / (len(shown) + 1), fontsize=10.5)

    ax = fig.add_subplot(gs[0, 1])
    ax.set_axis_off()
    ax.set_title("Interval between scans (per scan pair)", loc="left", fontsize=12)
    n = _stat(stats, "interval", "n", "all", "interval_days")
    if np.isfinite(n) and n > 0:
        q = {k: _stat(stats, "interval", k, "all", "interval_days")
             for k in ("median", "q1", "q3", "min", "max")}
        lines = [f"scan pairs with an interval: {n:.0f}",
                 f"median {q['median']:.0f} days (IQR {q['q1']:.0f}–{q['q3']:.0f} days)",
                 f"range {q['min']:.0f}–{q['max']:.0f} days"]
    else:
        lines = ["no interval between scans in the table"]
    rows_failed = int(_stat(stats, "cohort", "failed"))
    lines += ["", f"rows in the table: {_stat(stats, 'cohort', 'rows'):.0f}  "
              f"(processed {_stat(stats, 'cohort', 'processed'):.0f}, failed {rows_failed}, "
              f"flagged {_stat(stats, 'cohort', 'flagged'):.0f})"]
    if skipped:
        lines += ["", "Sections not shown:"]
        for name, why in skipped:
            lines += ["  " + ln for ln in _wrap(f"{name}: {why}", 70)]
    ax.text(0.0, 0.97, "\n".join(lines), va="top", ha="left", fontsize=10.5,
            transform=ax.transAxes, linespacing=1.5)

    ax = fig.add_subplot(gs[1, :])
    ax.set_axis_off()
    ax.set_title("Scanners at T1 and T2 (per scan)", loc="left", fontsize=12)
    rows = []
    for tp in ("T1", "T2"):
        for section, label in (("scanner", "scanner"), ("kvp", "tube voltage"),
                               ("slice_thickness", "slice thickness")):
            sel = stats[(stats.section == section) & stats.detail.str.startswith(tp + "|")]
            items = [f"{d.split('|', 1)[1]} (n={v:.0f})" for d, v in zip(sel.detail, sel.value)]
            rows.append([tp, label, "; ".join(items) or "–"])
    lines_per = _table_lines(rows, [4, 16, 105])
    lh = min(0.085, 0.95 / max(sum(lines_per) + 1, 1))
    _draw_table(ax, ["time", "setting", "scans per value"], rows, [0.06, 0.15, 0.79],
                [4, 16, 105], line_h=lh, fontsize=10 if sum(lines_per) <= 12 else 8.5)
    return fig


def _page_size(stats, ok, groups, colours, sections: Sequence[str]):
    """Histogram + boxplot of mean diameter for each group in ``sections``."""
    fig = _new_page("Nodule size at T1 and T2" if sections == ["all"]
                    else "Nodule size at T1 and T2 by diagnosis")
    gs = fig.add_gridspec(len(sections), 2, width_ratios=[2.2, 1])
    vals = np.concatenate([ok["t1_mean_diameter_mm"].to_numpy(float),
                           ok["t2_mean_diameter_mm"].to_numpy(float)])
    vals = vals[np.isfinite(vals)]
    bins = _bins(vals if vals.size else np.array([0.0, 1.0]), float(vals.min()) if vals.size
                 else 0.0, float(vals.max()) if vals.size else 1.0)
    lo, hi = float(bins[0]), float(bins[-1])
    fs = 10 if len(sections) <= 2 else 9
    for r, g in enumerate(sections):
        sub = ok if g == "all" else ok[ok["diagnosis"] == g]
        ax = fig.add_subplot(gs[r, 0])
        bx = fig.add_subplot(gs[r, 1])
        data = []
        for tp in ("T1", "T2"):
            col = f"{tp.lower()}_mean_diameter_mm"
            v = sub[col].to_numpy(float)
            v = v[np.isfinite(v)]
            data.append(v)
            ax.hist(v, bins=bins, color=TIME_POINT_COLOURS[tp], alpha=0.55,
                    edgecolor=TIME_POINT_COLOURS[tp], linewidth=1.0,
                    label=f"{tp}: {_mean_sd(stats, g, col)} (n={v.size})")
        ax.set_xlabel("mean axial diameter (mm)", fontsize=fs)
        ax.set_ylabel("nodules", fontsize=fs)
        name = "all nodules" if g == "all" else g
        ax.set_title(f"{name}: {_mean_sd(stats, g, 't1_mean_diameter_mm')} at T1, "
                     f"{_mean_sd(stats, g, 't2_mean_diameter_mm')} at T2",
                     fontsize=fs + 1, loc="left")
        if g != "all":
            # the diagnosis colour as a thick left spine: coloured text in
            # light palette colours would not be legible in print
            ax.spines["left"].set_color(colours[g])
            ax.spines["left"].set_linewidth(5)
        ax.legend(fontsize=fs - 1, frameon=False)
        ax.tick_params(labelsize=fs)
        ax.yaxis.get_major_locator().set_params(integer=True)
        nonempty = [(d, tp) for d, tp in zip(data, ("T1", "T2")) if d.size]
        if nonempty:
            b = bx.boxplot([d for d, _ in nonempty], tick_labels=[t for _, t in nonempty],
                           patch_artist=True, widths=0.5, medianprops={"color": "black"})
            for i, (patch, (d, tp)) in enumerate(zip(b["boxes"], nonempty)):
                patch.set_facecolor(TIME_POINT_COLOURS[tp])
                patch.set_alpha(0.7)
                if d.size < 10:
                    # a box of a handful of values hides them: show the values
                    bx.scatter(np.full(d.size, i + 1.0), d, s=14, color="black", zorder=3)
            bx.set_ylabel("mean axial diameter (mm)", fontsize=fs)
            bx.tick_params(labelsize=fs)
            bx.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
        else:
            _note(bx, "no diameters")
    return fig


def _hist_by_group(ax, sub, col, groups, colours, xlabel):
    vals = [sub.loc[sub["diagnosis"] == g, col].to_numpy(float) for g in groups]
    vals = [v[np.isfinite(v)] for v in vals]
    allv = np.concatenate(vals) if vals else np.array([])
    if allv.size == 0:
        _note(ax, f"no {xlabel} values")
        return
    lo, hi, n_out = _robust_range(allv)
    bins = _bins(np.clip(allv, lo, hi), lo, hi)
    keep = [(np.clip(v, lo, hi), g) for v, g in zip(vals, groups) if v.size]
    ax.hist([v for v, _ in keep], bins=bins, stacked=True,
            color=[colours[g] for _, g in keep], label=[f"{g} (n={v.size})" for v, g in keep],
            edgecolor="white", linewidth=0.5)
    ax.axvline(0, color="black", lw=0.8, ls=":")
    ax.set_xlabel(xlabel, fontsize=10)
    ax.set_ylabel("nodules", fontsize=10)
    ax.tick_params(labelsize=9)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8, frameon=False, title_fontsize=8, alignment="left",
              title=f"{n_out} value(s) beyond the axis, counted in the outer bins"
              if n_out else None)


def _bins(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Histogram bin edges over ``[lo, hi]`` (Freedman-Diaconis / Sturges, <= 30 bins).

    With fewer than five values, or values all nearly equal, the automatic
    rules give one bin as wide as the data; then ten bins over the range
    padded by half its width (at least 10 % of the largest magnitude) keep a
    single value a narrow bar in context.
    """
    if v.size < 5 or hi - lo < 1e-9:
        pad = max(0.5 * (hi - lo), 0.1 * max(abs(lo), abs(hi)), 0.5)
        return np.linspace(lo - pad, hi + pad, 11)
    bins = np.histogram_bin_edges(v, bins="auto", range=(lo, hi))
    return bins if len(bins) <= 31 else np.linspace(lo, hi, 31)


def _robust_range(v: np.ndarray) -> tuple[float, float, int]:
    r"""Histogram range and number of values outside it.

    A single extreme value (e.g. a +2400 % volume change) would squash every
    other bar into one bin, so the range is limited to Tukey's far fences
    :math:`[Q_1 - 3\,\mathrm{IQR},\ Q_3 + 3\,\mathrm{IQR}]` (never narrower than
    the data's own range when there are no such outliers).
    """
    lo, hi = float(v.min()), float(v.max())
    if v.size >= 4:
        q1, q3 = np.percentile(v, [25, 75])
        iqr = q3 - q1
        if iqr > 0:
            lo, hi = max(lo, q1 - 3 * iqr), min(hi, q3 + 3 * iqr)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    return lo, hi, int(((v < lo) | (v > hi)).sum())


def _page_growth(df, stats, ok, groups, colours):
    fig = _new_page("Growth between T1 and T2")
    axs = fig.subplots(2, 2)
    ax = axs[0, 0]
    _hist_by_group(ax, ok, "diameter_change_mm", groups, colours,
                   "diameter change, mean diameter T2 − T1 (mm)")
    m = _stat(stats, "growth", "mean", "all", "diameter_change_mm")
    s = _stat(stats, "growth", "sd", "all", "diameter_change_mm")
    ax.set_title(f"Diameter change: {_pm(m, s, 'mm')}", loc="left", fontsize=10)
    ax = axs[0, 1]
    _hist_by_group(ax, ok, "volume_change_pct", groups, colours,
                   "volume change, 100 (V2 − V1) / V1 (%)")
    med = _stat(stats, "growth", "median", "all", "volume_change_pct")
    q1 = _stat(stats, "growth", "q1", "all", "volume_change_pct")
    q3 = _stat(stats, "growth", "q3", "all", "volume_change_pct")
    ax.set_title(f"Volume change: median {_fmt(med)} % (IQR {_fmt(q1)} to {_fmt(q3)} %)",
                 loc="left", fontsize=10)

    ax = axs[1, 0]
    vdt = ok["vdt_days"].to_numpy(float)
    grow = vdt[np.isfinite(vdt) & (vdt > 0)]
    shrink = -vdt[np.isfinite(vdt) & (vdt < 0)]
    n_unch = int(_stat(stats, "vdt", "n_unchanged", "all", "vdt_days"))
    if grow.size or shrink.size:
        both = np.concatenate([grow, shrink])
        lo, hi = np.log10(both.min()), np.log10(both.max())
        if hi - lo < 0.2:
            lo, hi = lo - 0.1, hi + 0.1
        bins = np.logspace(lo, hi, min(25, max(6, both.size // 2)) + 1)
        top = 0
        for v, cat, label in ((grow, "grew", "growing (VDT > 0)"),
                              (shrink, "shrank", "shrinking (|VDT|, VDT < 0)")):
            if v.size:
                counts, _, _ = ax.hist(v, bins=bins, color=CATEGORY_COLOURS[cat], alpha=0.6,
                                       label=f"{label}: n={v.size}, median "
                                       f"{np.median(v):,.0f} d")
                top = max(top, counts.max())
        # headroom: bars stay below 2/3 of the height, the legend and the
        # reference-line labels above them, so nothing overlaps
        ax.set_ylim(0, top * 1.5 + 0.5)
        ax.set_xscale("log")
        from matplotlib.ticker import LogLocator, StrMethodFormatter, NullFormatter
        # label 1-2-5 steps: decades alone are too sparse over a typical VDT range
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        for ref in (400, 600):
            # NELSON VDT bands: < 400 d fast growing, > 600 d indolent [4]_
            ax.axvline(ref, color="black", lw=0.8, ls="--")
            ax.text(ref, 0.69, f"{ref} d ", transform=ax.get_xaxis_transform(),
                    fontsize=8, va="bottom", ha="right", rotation=90)
        ax.set_xlabel("|volume doubling time| (days, log scale)", fontsize=10)
        ax.set_ylabel("nodules", fontsize=10)
        ax.tick_params(labelsize=9)
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=8, frameon=True, framealpha=1.0, edgecolor="white",
                  loc="upper right")
        ax.set_title(f"Volume doubling time ({n_unch} nodules with unchanged volume: no VDT)",
                     loc="left", fontsize=10)
    else:
        _note(ax, f"no finite volume doubling time ({n_unch} nodules with unchanged volume)")

    ax = axs[1, 1]
    crits = _criteria(df)
    if not crits:
        _note(ax, "no growth categories in the table")
    else:
        bar_groups = ["all", *groups] if len(groups) > 1 else ["all"]
        width = 0.8 / len(bar_groups)
        ymax, ticks, labels = 0.0, [], []
        for ci, (_, name) in enumerate(crits):
            for gi, g in enumerate(bar_groups):
                x = ci + (gi - (len(bar_groups) - 1) / 2) * width
                bottom = 0.0
                for cat in _CATEGORIES:
                    n = _stat(stats, "growth_category", "count", g, f"{name}|{cat}")
                    ax.bar(x, n, width * 0.9, bottom=bottom, color=CATEGORY_COLOURS[cat],
                           edgecolor=colours.get(g, "black"), linewidth=2 if g != "all" else 0,
                           label=cat if (ci == 0 and gi == 0) else None)
                    # counts inside the bars only while bars are wide enough to
                    # hold them; every count is in cohort_summary.csv anyway
                    if n > 0 and (len(bar_groups) <= 4 or g == "all"):
                        ax.text(x, bottom + n / 2, f"{n:.0f}", ha="center", va="center",
                                fontsize=7, color="white" if cat != "stable" else "black")
                    bottom += n
                ymax = max(ymax, bottom)
                ticks.append(x)
                labels.append("all" if g == "all" else _short(g, 10))
        for ci, (_, name) in enumerate(crits):
            ax.text(ci, ymax * 1.04, name.replace("_", " "), ha="center", va="bottom",
                    fontsize=9, fontweight="bold")
        ax.set_xticks(ticks, labels, fontsize=7 if len(ticks) <= 9 else 6,
                      rotation=0 if len(ticks) <= 9 else 90)
        ax.set_ylim(0, ymax * 1.3 + 0.5)
        ax.set_ylabel("nodules", fontsize=10)
        ax.set_xlabel("diagnosis within each criterion (bar outline = diagnosis colour)"
                      if len(bar_groups) > 1 else "growth criterion", fontsize=9)
        ax.tick_params(axis="y", labelsize=9)
        ax.legend(fontsize=8, frameon=False, ncols=3, loc="upper right",
                  bbox_to_anchor=(1.0, 1.0))
        ax.set_title("Growth category per criterion", loc="left", fontsize=11)
    return fig


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _page_waterfall(ok, groups, colours):
    fig = _new_page("Volume change per nodule (waterfall)")
    ax = fig.add_subplot()
    sub = ok[np.isfinite(ok["volume_change_pct"])].sort_values(
        "volume_change_pct", ascending=False, kind="stable")
    v = sub["volume_change_pct"].to_numpy(float)
    x = np.arange(v.size)
    ax.bar(x, v, width=0.85, color=[colours[g] for g in sub["diagnosis"]])
    ax.axhline(0, color="black", lw=0.8)
    # NELSON: a volume increase of >= 25 % is growth [4]_
    ax.axhline(25, color="black", lw=0.8, ls="--")
    ax.text(1.0, 25, " +25 %", transform=ax.get_yaxis_transform(), fontsize=8, va="center")
    if v.size and np.nanmax(np.abs(v)) > 400:
        ax.set_yscale("symlog", linthresh=100)
        from matplotlib.ticker import FixedLocator, StrMethodFormatter
        top = np.nanmax(np.abs(v))
        ticks = [-100, -75, -50, -25, 0, 25, 50, 75, 100]
        ticks += [m * 10 ** e for e in range(2, int(np.log10(top)) + 1) for m in (2, 5, 10)
                  if m * 10 ** e <= top * 1.05]
        ax.yaxis.set_major_locator(FixedLocator(sorted(set(ticks))))
        ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
        ax.set_ylabel("volume change (%) — symmetric log scale beyond ±100 %", fontsize=10)
    else:
        ax.set_ylabel("volume change, 100 (V2 − V1) / V1 (%)", fontsize=10)
    if v.size <= 60:
        labels = [f"{p}/{n}" for p, n in zip(sub["patient_id"], sub["nodule_id"])]
        ax.set_xticks(x, labels, rotation=90, fontsize=7 if v.size <= 40 else 5.5)
        ax.set_xlabel("nodule (patient/nodule), sorted by volume change", fontsize=10)
    else:
        ax.set_xticks([])
        ax.set_xlabel(f"{v.size} nodules, sorted by volume change", fontsize=10)
    ax.set_xlim(-0.7, max(v.size, 1) - 0.3)
    from matplotlib.patches import Patch
    handles = [Patch(color=colours[g], label=g) for g in groups if (sub["diagnosis"] == g).any()]
    ax.legend(handles=handles, title="diagnosis", fontsize=8, title_fontsize=8, frameon=False)
    return fig


def _page_agreement(stats, ok, measure):
    fig = _new_page("Agreement with the radiologists' diameters",
                    f"pipeline: {measure.replace('_', ' ')}; difference = pipeline − radiologist")
    axs = fig.subplots(2, 3)
    pairs = {
        "T1": (ok[f"t1_{measure}_mm"].to_numpy(float), ok["t1_diameter_mm"].to_numpy(float)),
        "T2": (ok[f"t2_{measure}_mm"].to_numpy(float), ok["t2_diameter_mm"].to_numpy(float)),
        "change": ((ok[f"t2_{measure}_mm"] - ok[f"t1_{measure}_mm"]).to_numpy(float),
                   (ok["t2_diameter_mm"] - ok["t1_diameter_mm"]).to_numpy(float)),
    }
    for c, (key, (m, r)) in enumerate(pairs.items()):
        colour = TIME_POINT_COLOURS.get(key, "#555555")
        fin = np.isfinite(m) & np.isfinite(r)
        m, r = m[fin], r[fin]
        label = {"T1": "diameter at T1", "T2": "diameter at T2",
                 "change": "diameter change T2 − T1"}[key]
        ba_ax, sc_ax = axs[0, c], axs[1, c]
        if m.size == 0:
            _note(ba_ax, f"no paired {label}")
            _note(sc_ax, f"no paired {label}")
            continue
        bias = _stat(stats, "agreement", "bias", "all", key)
        lo = _stat(stats, "agreement", "loa_lower", "all", key)
        hi = _stat(stats, "agreement", "loa_upper", "all", key)
        rr = _stat(stats, "agreement", "pearson_r", "all", key)
        ba_ax.scatter((m + r) / 2, m - r, s=14, color=colour, edgecolor="black", lw=0.3)
        ba_ax.axhline(bias, color="black", lw=1)
        for y in (lo, hi):
            if np.isfinite(y):
                ba_ax.axhline(y, color="black", lw=0.8, ls="--")
        ba_ax.set_title(f"{label} (n={m.size})\nbias {_fmt(bias, 2)} mm, "
                        f"95 % LoA {_fmt(lo, 2)} to {_fmt(hi, 2)} mm", fontsize=9, loc="left")
        ba_ax.set_xlabel("mean of pipeline and radiologist (mm)", fontsize=9.5)
        ba_ax.set_ylabel("pipeline − radiologist (mm)", fontsize=9.5)
        ba_ax.tick_params(labelsize=9)
        sc_ax.scatter(r, m, s=14, color=colour, edgecolor="black", lw=0.3)
        both = np.concatenate([m, r])
        a, b = float(both.min()), float(both.max())
        pad = 0.05 * (b - a) + 0.1
        sc_ax.plot([a - pad, b + pad], [a - pad, b + pad], color="black", lw=0.8, ls=":",
                   label="identity")
        sc_ax.set_xlim(a - pad, b + pad)
        sc_ax.set_ylim(a - pad, b + pad)
        sc_ax.set_aspect("equal", adjustable="box")
        sc_ax.set_title(f"Pearson r = {_fmt(rr, 3)}", fontsize=9, loc="left")
        sc_ax.set_xlabel("radiologist (mm)", fontsize=9.5)
        sc_ax.set_ylabel("pipeline (mm)", fontsize=9.5)
        sc_ax.tick_params(labelsize=9)
        sc_ax.legend(fontsize=7.5, frameon=False, loc="upper left")
    return fig


def _page_propagation(stats, df, groups, colours):
    fig = _new_page("Propagation error (pipeline T2 centre vs radiologist's T2 centre)")
    ax = fig.add_subplot()
    _hist_by_group(ax, df, "propagation_error_mm", groups, colours, "propagation error (mm)")
    q = {k: _stat(stats, "propagation", k, "all", "propagation_error_mm")
         for k in ("n", "mean", "median", "p95", "max")}
    ax.set_title(f"n = {q['n']:.0f}: mean {_fmt(q['mean'], 2)} mm, median "
                 f"{_fmt(q['median'], 2)} mm, 95th percentile {_fmt(q['p95'], 2)} mm, "
                 f"max {_fmt(q['max'], 2)} mm", loc="left", fontsize=10)
    ax.set_xlim(left=0)
    return fig


_FAIL_WRAP = (14, 6, 14, 7, 95)
_FAIL_WIDTHS = (0.12, 0.06, 0.12, 0.07, 0.63)
_FAIL_LINES = 34
_FAIL_LINES_FIRST = 22  # the first page also holds the chart of reasons
_MAX_REASONS = 12


def _failure_rows(df) -> list[list[str]]:
    rows = []
    for _, r in df[(df["status"] != "ok") | _is_flagged(df["qc_flags"])].iterrows():
        reason = []
        if r["status"] != "ok":
            reason.append(f"error: {r['error'] or 'no reason given'}")
        if _review_flags(r["qc_flags"]):
            # the informational ones are on the nodule's page and in the CSV
            reason.append("flags: " + ", ".join(_review_flags(r["qc_flags"])))
        # one row must fit on a page; longer texts are cut (full in the CSV)
        rows.append([r["patient_id"], r["nodule_id"], r["diagnosis"], r["status"],
                     _clip("; ".join(reason), 1500)])
    return rows


def _pages_failures(stats, df):
    rows = _failure_rows(df)
    pages = _failure_pages_split(df)
    n_fail = int(_stat(stats, "cohort", "failed"))
    n_flag = int(_stat(stats, "cohort", "flagged"))
    figs = []
    for p, idx in enumerate(pages):
        fig = _new_page("Failures and QC flags",
                        f"page {p + 1} of {len(pages)}; {n_fail} failed, "
                        f"{n_flag} flagged rows")
        if p == 0:
            gs = fig.add_gridspec(2, 1, height_ratios=[1, 3])
            bx = fig.add_subplot(gs[0])
            qc = stats[(stats.section == "qc")]
            names, counts = list(qc.detail), list(qc.value)
            if len(names) > _MAX_REASONS:
                # keep the chart legible: "failed" and the most frequent flags
                # (every count is in cohort_summary.csv)
                order = [0] + sorted(range(1, len(names)), key=lambda i: -counts[i])
                keep = order[:_MAX_REASONS - 1]
                rest = order[_MAX_REASONS - 1:]
                names = [names[i] for i in keep] + [f"{len(rest)} other flags (total)"]
                counts = [counts[i] for i in keep] + [sum(counts[i] for i in rest)]
            bx.barh(range(len(names)), counts,
                    color=["#CB181D" if n == "failed" else "#CCCCCC" if n in INFORMATIONAL_FLAGS else "#777777"
                           for n in names])
            # long flag names on two lines: the layout does not always make
            # room for a 30-character label on the left
            bx.set_yticks(range(len(names)), [_two_lines(n) for n in names], fontsize=7.5)
            bx.invert_yaxis()
            bx.set_xlabel("rows", fontsize=9.5)
            bx.set_title("Rows per reason (failed, then each QC flag; light grey: informational, "
                         "not counted as flagged)", loc="left", fontsize=10)
            bx.tick_params(labelsize=7.5)
            bx.xaxis.get_major_locator().set_params(integer=True)
            for i, c in enumerate(counts):
                bx.text(c, i, f" {c:.0f}", va="center", fontsize=7)
            ax = fig.add_subplot(gs[1])
            capacity = _FAIL_LINES_FIRST
        else:
            ax = fig.add_subplot()
            capacity = _FAIL_LINES
        ax.set_axis_off()
        _draw_table(ax, ["patient", "nodule", "diagnosis", "status", "reason"],
                    [rows[i] for i in idx], _FAIL_WIDTHS, _FAIL_WRAP,
                    line_h=1.0 / (capacity + 1.5), fontsize=8)
        figs.append(fig)
    return figs


def _two_lines(name: str, width: int = 22) -> str:
    """A flag name longer than ``width`` broken after the underscore nearest its middle."""
    cuts = [i for i, ch in enumerate(name) if ch == "_"]
    if len(name) <= width or not cuts:
        return name
    i = min(cuts, key=lambda c: abs(c - len(name) / 2))
    return name[:i + 1] + "\n" + name[i + 1:]


def _failure_pages_split(df) -> list[list[int]]:
    rows = _failure_rows(df)
    lines = _table_lines(rows, _FAIL_WRAP)
    # the first page also holds the reason chart, so it takes fewer lines
    first = _paginate(lines, _FAIL_LINES_FIRST)
    if not first:
        return []
    rest = _paginate(lines[len(first[0]):], _FAIL_LINES)
    return [first[0]] + [[i + len(first[0]) for i in pg] for pg in rest]


_NODULE_ROWS = (
    ("long axis", "long_axis_mm", "mm", 1), ("short axis", "short_axis_mm", "mm", 1),
    ("mean diameter", "mean_diameter_mm", "mm", 1),
    ("max 3D diameter", "max_3d_diameter_mm", "mm", 1),
    ("volume", "volume_mm3", "mm³", 0), ("radiologist diameter", "diameter_mm", "mm", 1),
)


def _nodule_table(r: Mapping[str, Any]) -> tuple[list[list[str]], list[list[str]]]:
    both = [[label, _fmt(r.get(f"t1_{c}"), d, u), _fmt(r.get(f"t2_{c}"), d, u)]
            for label, c, u, d in _NODULE_ROWS]
    vdt = r.get("vdt_days")
    single = [
        ["status", _text(r.get("status"))],
        ["diagnosis", _text(r.get("diagnosis"))],
        ["type / location", " / ".join(x for x in (_text(r.get("nodule_type")),
                                                   _text(r.get("location"))) if x) or "–"],
        ["interval", _fmt(r.get("interval_days"), 0, "days")],
        ["diameter change", _fmt(r.get("diameter_change_mm"), 2, "mm")],
        ["volume change", _fmt(r.get("volume_change_pct"), 1, "%")],
        ["VDT", _fmt(vdt, 0, "days") if _text(vdt) else "– (volume unchanged or unknown)"],
        ["growth" + (f" ({r['growth_criterion']})" if _text(r.get("growth_criterion")) else ""),
         _text(r.get("growth")) or "–"],
        ["propagation error", _fmt(r.get("propagation_error_mm"), 2, "mm")],
        ["QC flags", _clip(", ".join(_flags(r.get("qc_flags", ""))), 200) or "none"],
    ]
    for col in _CRITERION_COLUMNS:
        if _text(r.get(col)):
            single.insert(8, [col.replace("_", " "), _text(r[col])])
    if _text(r.get("error")):
        # the page has room for ~12 wrapped lines; the full text is on the
        # failures page and in measurements.csv
        single.append(["error", _clip(_text(r["error"]), 200)])
    return both, single


def _clip(text: str, n: int) -> str:
    """``text`` cut to at most ``n`` characters, saying where the rest is."""
    tail = "… (see measurements.csv)"
    return text if len(text) <= n else text[: n - len(tail)] + tail


def _page_nodule(r, png: Path | None, colours):
    import matplotlib.image as mpimg
    fig = _new_page(f"Nodule {r['patient_id']} / {r['nodule_id']}",
                    f"diagnosis: {r['diagnosis']}; status: {r['status']}")
    gs = fig.add_gridspec(1, 2, width_ratios=[3.1, 1])
    ax = fig.add_subplot(gs[0])
    if png is not None:
        try:
            img = mpimg.imread(png)
        except (OSError, ValueError, SyntaxError):
            img = None
        if img is not None:
            ax.imshow(img, interpolation="antialiased")
            ax.set_axis_off()
        else:
            _note(ax, f"visual check {png.name} cannot be read")
    else:
        _note(ax, "no visual check image for this nodule\n(expected "
              f"{nodule_png_name(r['patient_id'], r['nodule_id'])} in the nodules folder)")
    tx = fig.add_subplot(gs[1])
    tx.set_axis_off()
    both, single = _nodule_table(r)
    y = _draw_table(tx, ["", "T1", "T2"], both, [0.46, 0.27, 0.27], [19, 11, 11],
                    line_h=0.03, fontsize=7.5)
    _draw_table(tx, ["", ""], single, [0.46, 0.54], [19, 21], top=y - 0.03,
                line_h=0.03, fontsize=7.5)
    return fig


# --------------------------------------------------------------------------
# public entry points
# --------------------------------------------------------------------------
def make_report(measurements: pd.DataFrame | str | os.PathLike, out_dir: str | os.PathLike, *,
                nodule_dir: str | os.PathLike | None = None,
                title: str = "nodulegrowth cohort report",
                agreement_measure: str = "mean_diameter",
                per_nodule_png: bool = False) -> Path:
    """Render the cohort report from a measurements table.

    Parameters
    ----------
    measurements : pandas.DataFrame or path-like
        ``measurements.csv`` of the pipeline or its DataFrame (see
        :func:`load_measurements`); one row per manifest row.
    out_dir : path-like
        Output folder (created). Writes ``report.pdf`` (A4 landscape, one
        page per figure, TrueType fonts embedded), ``figures/<name>.png``
        (each cohort-level page at 150 dpi, 1753 x 1240 px) and ``cohort_summary.csv``
        (:func:`cohort_statistics`). Every file is written atomically;
        report PNGs of an earlier run whose section is now skipped are
        removed from ``figures/`` (other files there are left alone).
    nodule_dir : path-like, optional
        Folder of the per-nodule visual checks (default ``out_dir/nodules``);
        ``<patient_id>_<nodule_id>.png`` (or :func:`nodule_png_name`) is put
        on each nodule's page. No other image is read.
    title : str
        Title of the first page.
    agreement_measure : {"mean_diameter", "long_axis", "max_3d_diameter"}
        Pipeline diameter compared with the radiologists' diameters.
    per_nodule_png : bool
        Also write each per-nodule page as ``figures/nodule_<name>.png``
        (off by default: the page shows ``nodules/<name>.png`` and the row of
        ``measurements.csv``, and rendering it twice doubles the run time).

    Returns
    -------
    pathlib.Path
        Path of ``report.pdf``.

    Raises
    ------
    ReportError
        The table cannot be read or lacks ``patient_id``, or
        ``agreement_measure`` is unknown.

    Notes
    -----
    Sections without data are skipped, never drawn empty, and listed on the
    first page with the reason: the by-diagnosis size page (fewer than two
    diagnosis groups), size and growth pages (no processed row), agreement
    (no ``t1_diameter_mm``/``t2_diameter_mm``), propagation (no
    ``propagation_error_mm``) and failures (no failed or flagged row).
    Statistics and their formulas are in :func:`cohort_statistics` and
    :func:`bland_altman`; the VDT and volume-change reference lines follow
    NELSON [4]_.

    Examples
    --------
    >>> import tempfile
    >>> table = pd.DataFrame({"patient_id": ["p1", "p2"], "nodule_id": ["1", "1"],
    ...     "status": ["ok", "failed"], "error": ["", "no lung mask"],
    ...     "t1_mean_diameter_mm": [6.0, None], "t2_mean_diameter_mm": [7.0, None],
    ...     "t1_volume_mm3": [113.1, None], "t2_volume_mm3": [179.6, None],
    ...     "volume_change_pct": [58.8, None], "diameter_change_mm": [1.0, None],
    ...     "vdt_days": [270.0, None], "interval_days": [180, 200], "growth": ["grew", ""]})
    >>> with tempfile.TemporaryDirectory() as d:
    ...     pdf = make_report(table, d)
    ...     sorted(p.name for p in Path(d).iterdir())
    ['cohort_summary.csv', 'figures', 'report.pdf']
    """
    import matplotlib
    from matplotlib.backends.backend_pdf import PdfPages
    import matplotlib.pyplot as plt

    df = load_measurements(measurements)
    stats = cohort_statistics(df, agreement_measure=agreement_measure)
    out = Path(out_dir)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    nodule_dir = Path(nodule_dir) if nodule_dir is not None else out / "nodules"

    groups = diagnosis_groups(df)
    colours = diagnosis_colours(groups)
    ok = df[df["status"] == "ok"]
    has_size = bool(np.isfinite(ok[["t1_mean_diameter_mm", "t2_mean_diameter_mm"]]
                                .to_numpy(float)).any())
    has_growth = bool(np.isfinite(ok[["diameter_change_mm", "volume_change_pct", "vdt_days"]]
                                  .to_numpy(float)).any() or _criteria(df))
    has_waterfall = bool(np.isfinite(ok["volume_change_pct"]).any())
    size_groups = [g for g in groups if np.isfinite(
        ok.loc[ok["diagnosis"] == g, ["t1_mean_diameter_mm", "t2_mean_diameter_mm"]]
        .to_numpy(float)).any()]
    skipped: list[tuple[str, str]] = []
    if not has_size:
        skipped.append(("nodule size", "no processed nodule has a diameter"))
    elif len(size_groups) < 2:
        skipped.append(("size by diagnosis", "fewer than two diagnosis groups"))
    if not has_growth:
        skipped.append(("growth", "no processed nodule has a growth measurement"))
    if not has_waterfall:
        skipped.append(("waterfall", "no processed nodule has a volume change"))
    if not _has_radiologist(df):
        skipped.append(("agreement with radiologists",
                        "no t1_diameter_mm / t2_diameter_mm in the table"))
    if not np.isfinite(df["propagation_error_mm"]).any():
        skipped.append(("propagation error", "no radiologist T2 centre, so no error"))
    if not _failure_rows(df):
        skipped.append(("failures and QC flags", "no failed or flagged row"))

    subtitle = (f"{len(df)} rows; nodulegrowth "
                f"{_version()}")
    with matplotlib.rc_context({"pdf.fonttype": 42, "ps.fonttype": 42,
                                "font.family": "DejaVu Sans", "svg.fonttype": "none"}):
        pages: list[tuple[str, Any]] = []  # (name, factory)
        pages.append(("cohort_summary",
                      lambda: _page_summary(df, stats, groups, skipped, title, subtitle)))
        if has_size:
            pages.append(("size", lambda: _page_size(stats, ok, groups, colours, ["all"])))
            if len(size_groups) >= 2:
                # at most 3 diagnoses a page, spread evenly (4 -> 2 + 2)
                n_pages = math.ceil(len(size_groups) / 3)
                per = math.ceil(len(size_groups) / n_pages)
                for i in range(0, len(size_groups), per):
                    chunk = size_groups[i:i + per]
                    suffix = "" if n_pages == 1 else f"_{i // per + 1}"
                    pages.append((f"size_by_diagnosis{suffix}",
                                  lambda c=chunk: _page_size(stats, ok, groups, colours, c)))
        if has_growth:
            pages.append(("growth", lambda: _page_growth(df, stats, ok, groups, colours)))
        if has_waterfall:
            pages.append(("waterfall", lambda: _page_waterfall(ok, groups, colours)))
        if _has_radiologist(df):
            pages.append(("agreement", lambda: _page_agreement(stats, ok, agreement_measure)))
        if np.isfinite(df["propagation_error_mm"]).any():
            pages.append(("propagation", lambda: _page_propagation(stats, df, groups, colours)))
        pdf_path = out / "report.pdf"
        with _atomic_path(pdf_path) as tmp_pdf:
            # no CreationDate: the same CSV gives the same PDF bytes
            meta = {"Title": title, "Creator": "nodulegrowth", "CreationDate": None}
            with PdfPages(tmp_pdf, metadata=meta) as pdf:
                def emit(name, fig, png=True):
                    try:
                        pdf.savefig(fig)
                        if png:
                            # the PDF pass has fixed the layout; freezing it halves
                            # the PNG time and makes the PNG identical to the page
                            fig.set_layout_engine("none")
                            _save_png(fig, fig_dir / f"{name}.png")
                            written.add(f"{name}.png")
                    finally:
                        plt.close(fig)
                written: set[str] = set()
                for name, factory in pages:
                    emit(name, factory())
                for i, fig in enumerate(_pages_failures(stats, df)):
                    emit(f"failures_{i + 1}", fig)
                used: set[str] = set()
                for _, r in df.iterrows():
                    png = _find_nodule_png(nodule_dir, r["patient_id"], r["nodule_id"])
                    name = "nodule_" + nodule_png_name(r["patient_id"], r["nodule_id"])[:-4]
                    while name in used:
                        name += "_dup"
                    used.add(name)
                    # per-nodule pages go to the PDF only: their image is
                    # already nodules/<name>.png and their numbers are the row
                    emit(name, _page_nodule(r, png, colours), png=per_nodule_png)
        with _atomic_path(out / "cohort_summary.csv") as tmp_csv:
            stats.to_csv(tmp_csv, index=False)
    # figures of an earlier run whose section is now skipped would look current
    for stale in fig_dir.glob("*.png"):
        if _FIGURE_NAME.fullmatch(stale.name) and stale.name not in written:
            stale.unlink()
    return pdf_path


#: Names of the PNGs make_report writes into ``figures/`` (and may remove when stale).
_FIGURE_NAME = re.compile(r"(cohort_summary|size|size_by_diagnosis(_\d+)?|growth|waterfall|"
                          r"agreement|propagation|failures_\d+|nodule_.+)\.png")


def _version() -> str:
    from . import __version__
    return __version__


def _find_nodule_png(folder: Path, patient_id: str, nodule_id: str) -> Path | None:
    for name in (f"{patient_id}_{nodule_id}.png", nodule_png_name(patient_id, nodule_id)):
        p = folder / name
        # the plain name could contain '/', so only accept files inside the folder
        if p.is_file() and p.resolve().parent == folder.resolve():
            return p
    return None


def _view_geometry(image, center_xyz):
    """Array, continuous centre index (i, j, k) and spacing of an image."""
    import SimpleITK as sitk
    arr = sitk.GetArrayViewFromImage(image)
    cidx = np.asarray(image.TransformPhysicalPointToContinuousIndex(
        tuple(float(c) for c in center_xyz)), dtype=float)
    return arr, cidx, np.asarray(image.GetSpacing(), dtype=float)


def render_nodule_check(path: str | os.PathLike, *, t1_image, t1_mask, t2_image, t2_mask,
                        t1_center_xyz, t2_center_xyz, t2_propagated_xyz=None,
                        t2_reference_xyz=None, info: Mapping[str, Any] | None = None,
                        title: str = "") -> Path:
    """Write the visual check of one nodule at T1 and T2 as a PNG.

    Draws axial and coronal slices through the nodule centre at T1 (top row)
    and T2 (bottom row) in a lung window (W 1500 / L −600 HU), the contour of
    the segmentation, markers for the segmented centre (+), the propagated
    point (x) and the radiologist's T2 point (o), and a text block with the
    measurements.

    Parameters
    ----------
    path : path-like
        Output PNG (written atomically at 150 dpi; parents created).
    t1_image, t2_image : SimpleITK.Image or None
        3-D float32 HU crops around the nodule (any spacing; LPS); ``None``
        when there is no crop at that time point (e.g. the nodule was not
        re-identified at T2), drawn as a note.
    t1_mask, t2_mask : SimpleITK.Image or None
        uint8 (0/1) masks with the size of their crop; ``None`` when there is
        no segmentation (e.g. it failed at T2).
    t1_center_xyz, t2_center_xyz : sequence of 3 float or None
        Segmented centres, world LPS ``(x, y, z)`` mm; the slices are drawn
        through them (through the crop centre when ``None``).
    t2_propagated_xyz, t2_reference_xyz : sequence of 3 float, optional
        Registration-propagated T1 centre and radiologist's T2 centre, world
        LPS mm, drawn on the T2 views.
    info : mapping, optional
        Row values (``t1_long_axis_mm``, ``t2_volume_mm3``, ``vdt_days``,
        ``growth``, ``qc_flags`` ...) for the text block.
    title : str
        Figure title (e.g. ``"P001 / 1"``).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    GeometryError
        An image is not 3-D, or a mask's size differs from its image.

    Notes
    -----
    Axes are millimetres along the image axes from the drawn centre: a voxel
    with continuous index :math:`(i, j, k)` is at

    .. math:: (u, v, w) = \\big((i - i_c)\\,s_x,\\ (j - j_c)\\,s_y,\\ (k - k_c)\\,s_z\\big)

    where :math:`(i_c, j_c, k_c)` is the centre's continuous index from
    ``TransformPhysicalPointToContinuousIndex`` and :math:`s` the spacing,
    so anisotropic voxels are drawn to scale (``aspect="equal"`` in mm).
    Axial views show anterior up and the patient's right on the left, coronal
    views superior up (radiological convention). Points further than half a
    voxel from the drawn plane are drawn faded.

    Examples
    --------
    >>> import SimpleITK as sitk, tempfile
    >>> z, y, x = np.mgrid[:9, :21, :21]
    >>> ball = ((x - 10) ** 2 + (y - 10) ** 2 + ((z - 4) * 2.5) ** 2) <= 16
    >>> img = sitk.GetImageFromArray(np.where(ball, 0.0, -850.0).astype(np.float32))
    >>> img.SetSpacing((0.7, 0.7, 2.5))
    >>> msk = sitk.GetImageFromArray(ball.astype(np.uint8)); msk.CopyInformation(img)
    >>> c = img.TransformContinuousIndexToPhysicalPoint((10.0, 10.0, 4.0))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = render_nodule_check(Path(d) / "n.png", t1_image=img, t1_mask=msk,
    ...         t2_image=img, t2_mask=None, t1_center_xyz=c, t2_center_xyz=None)
    ...     p.stat().st_size > 0
    True
    """
    import matplotlib.pyplot as plt

    fig = nodule_check_figure(t1_image=t1_image, t1_mask=t1_mask, t2_image=t2_image,
                              t2_mask=t2_mask, t1_center_xyz=t1_center_xyz,
                              t2_center_xyz=t2_center_xyz, t2_propagated_xyz=t2_propagated_xyz,
                              t2_reference_xyz=t2_reference_xyz, info=info,
                              title=title or Path(path).stem)
    try:
        _save_png(fig, Path(path))
    finally:
        plt.close(fig)
    return Path(path)


def nodule_check_figure(*, t1_image, t1_mask, t2_image, t2_mask, t1_center_xyz, t2_center_xyz,
                        t2_propagated_xyz=None, t2_reference_xyz=None,
                        info: Mapping[str, Any] | None = None, title: str = ""):
    """Build the figure of :func:`render_nodule_check` without writing it.

    Parameters are those of :func:`render_nodule_check`. The axes carry gids
    ``"T1_axial"``, ``"T1_coronal"``, ``"T2_axial"``, ``"T2_coronal"`` and
    the markers the labels ``"centre"``, ``"propagated"``, ``"radiologist"``
    (data coordinates: mm from the drawn centre), so the geometry can be
    checked programmatically.

    Returns
    -------
    matplotlib.figure.Figure
        11 x 7.2 inches; the caller closes it (``matplotlib.pyplot.close``).

    Raises
    ------
    GeometryError
        As :func:`render_nodule_check`.

    Examples
    --------
    >>> import SimpleITK as sitk, matplotlib.pyplot as plt
    >>> img = sitk.Image(15, 15, 5, sitk.sitkFloat32)
    >>> fig = nodule_check_figure(t1_image=img, t1_mask=None, t2_image=img, t2_mask=None,
    ...                           t1_center_xyz=(7, 7, 2), t2_center_xyz=(7, 7, 2))
    >>> sorted(a.get_gid() for a in fig.axes if a.get_gid())
    ['T1_axial', 'T1_coronal', 'T2_axial', 'T2_coronal']
    >>> plt.close(fig)
    """
    import matplotlib
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    rows = (("T1", t1_image, t1_mask, t1_center_xyz, {}),
            ("T2", t2_image, t2_mask, t2_center_xyz,
             {"propagated": t2_propagated_xyz, "radiologist": t2_reference_xyz}))
    for tp, img, msk, _, _ in rows:
        if img is None:
            if msk is not None:
                raise GeometryError(f"{tp} mask given without its image for "
                                    f"{title or 'the nodule'}; pass both or neither")
            continue
        if not hasattr(img, "GetDimension") or img.GetDimension() != 3:
            raise GeometryError(f"{tp} image for {title or 'the nodule'} is not a 3-D "
                                f"SimpleITK image (got {type(img).__name__}); pass the crop "
                                "returned by io.crop")
        if msk is not None and (not hasattr(msk, "GetSize") or msk.GetSize() != img.GetSize()):
            got = msk.GetSize() if hasattr(msk, "GetSize") else type(msk).__name__
            raise GeometryError(f"{tp} mask size {got} differs from its image size "
                                f"{img.GetSize()} for {title or 'the nodule'}; pass the mask "
                                "of this crop")
    markers = {"centre": ("+", "#00FF00", 90), "propagated": ("x", "#FF00FF", 70),
               "radiologist": ("o", "#FFFF00", 70)}
    info = dict(info or {})
    with matplotlib.rc_context({"font.family": "DejaVu Sans"}):
        fig = plt.figure(figsize=(11.0, 7.2), layout="constrained")
        fig.suptitle(title or "nodule check", fontsize=13, fontweight="bold", x=0.01, ha="left")
        gs = fig.add_gridspec(2, 3, width_ratios=[1, 1, 0.9])
        for r, (tp, img, msk, centre, extra) in enumerate(rows):
            if img is None:
                # e.g. the nodule was not re-identified at T2: say so in place
                for c, view in enumerate(("axial", "coronal")):
                    ax = fig.add_subplot(gs[r, c])
                    ax.set_gid(f"{tp}_{view}")
                    _note(ax, f"no {tp} image\n(nodule not found at {tp})")
                    ax.set_title(f"{tp} {view}", fontsize=9.5, loc="left",
                                 color=TIME_POINT_COLOURS[tp], fontweight="bold")
                continue
            size = np.asarray(img.GetSize(), dtype=float)
            if centre is None or not np.all(np.isfinite(np.asarray(centre, float))):
                centre_pt = img.TransformContinuousIndexToPhysicalPoint(
                    tuple(float(s) for s in (size - 1) / 2))
                missing_centre = True
            else:
                centre_pt, missing_centre = centre, False
            arr, cidx, sp = _view_geometry(img, centre_pt)
            marr = None if msk is None else _mask_array(msk)
            nz, ny, nx = arr.shape
            kk = int(np.clip(round(cidx[2]), 0, nz - 1))
            jj = int(np.clip(round(cidx[1]), 0, ny - 1))
            u = (np.arange(nx) - cidx[0]) * sp[0]
            v = (np.arange(ny) - cidx[1]) * sp[1]
            w = (np.arange(nz) - cidx[2]) * sp[2]
            pts = {} if missing_centre else {"centre": centre_pt}
            pts.update({k: p for k, p in extra.items()
                        if p is not None and np.all(np.isfinite(np.asarray(p, float)))})
            for c, view in enumerate(("axial", "coronal")):
                ax = fig.add_subplot(gs[r, c])
                if view == "axial":
                    sl = arr[kk]
                    ext = (u[0] - sp[0] / 2, u[-1] + sp[0] / 2, v[-1] + sp[1] / 2, v[0] - sp[1] / 2)
                    ax.imshow(sl, cmap="gray", vmin=_LUNG_WINDOW[0], vmax=_LUNG_WINDOW[1],
                              extent=ext, origin="upper", interpolation="nearest")
                    if marr is not None and marr[kk].any():
                        _voxel_contour(ax, marr[kk], u, v, sp[0], sp[1],
                                       TIME_POINT_COLOURS[tp])
                    ax.set_xlabel("x (mm from centre; patient's right ← → left)", fontsize=9)
                    ax.set_ylabel("y (mm; anterior ↑)", fontsize=9)
                    off_axis, plane_pos, half = 2, kk, sp[2] / 2
                else:
                    sl = arr[:, jj, :]
                    ext = (u[0] - sp[0] / 2, u[-1] + sp[0] / 2, w[0] - sp[2] / 2, w[-1] + sp[2] / 2)
                    ax.imshow(sl, cmap="gray", vmin=_LUNG_WINDOW[0], vmax=_LUNG_WINDOW[1],
                              extent=ext, origin="lower", interpolation="nearest")
                    if marr is not None and marr[:, jj, :].any():
                        _voxel_contour(ax, marr[:, jj, :], u, w, sp[0], sp[2],
                                       TIME_POINT_COLOURS[tp])
                    ax.set_xlabel("x (mm from centre)", fontsize=9)
                    ax.set_ylabel("z (mm; superior ↑)", fontsize=9)
                    off_axis, plane_pos, half = 1, jj, sp[1] / 2
                for name, p in pts.items():
                    pi = np.asarray(img.TransformPhysicalPointToContinuousIndex(
                        tuple(float(q) for q in p)), dtype=float)
                    mm = (pi - cidx) * sp
                    xy = (mm[0], mm[1]) if view == "axial" else (mm[0], mm[2])
                    dist = abs(pi[off_axis] - plane_pos) * sp[off_axis]
                    m, col, s = markers[name]
                    # a point off the drawn plane is shown faded, so it is not
                    # mistaken for a point on this slice
                    style = ({"facecolors": "none", "edgecolors": col} if m == "o"
                             else {"color": col})
                    ax.scatter(*xy, marker=m, s=s, linewidths=1.6, label=name,
                               alpha=0.45 if dist > half else 1.0, zorder=5, **style)
                ax.set_aspect("equal")
                ax.set_gid(f"{tp}_{view}")
                ax.tick_params(labelsize=8)
                label = f"{tp} {view}"
                if msk is None:
                    label += " (no segmentation)"
                if missing_centre:
                    label += " (no centre: crop middle)"
                ax.set_title(label, fontsize=11, loc="left", color=TIME_POINT_COLOURS[tp],
                             fontweight="bold")
        tx = fig.add_subplot(gs[:, 2])
        tx.set_axis_off()
        tx.text(0, 1, _check_text(info), va="top", ha="left", fontsize=10,
                family="DejaVu Sans Mono", transform=tx.transAxes, linespacing=1.35)
        handles = [Line2D([], [], ls="none", marker=m, color=c, markerfacecolor="none" if m == "o"
                          else c, markersize=8, label=lab)
                   for (m, c, _), lab in zip(markers.values(),
                                             ("segmented centre", "propagated T1 centre",
                                              "radiologist's T2 centre"))]
        handles += [Line2D([], [], color=TIME_POINT_COLOURS[t], label=f"{t} contour")
                    for t in ("T1", "T2")]
        leg = tx.legend(handles=handles, loc="lower left", fontsize=9, frameon=True,
                        facecolor="#555555", labelcolor="white", title="window W1500/L−600 HU",
                        title_fontsize=9)
        leg.get_title().set_color("white")
    return fig


def _voxel_contour(ax, mask2d: np.ndarray, cols_mm: np.ndarray, rows_mm: np.ndarray,
                   col_step: float, row_step: float, colour: str, factor: int = 4) -> None:
    """Outline of a 2-D mask along its voxel edges.

    A contour at level 0.5 through voxel centres would cut every boundary
    voxel in half and make the segmentation look half a voxel too small, so
    the mask is first repeated ``factor`` times per axis (nearest neighbour):
    the outline then lies within ``step / (2 factor)`` of the voxel edges.
    """
    big = np.kron(mask2d.astype(np.float32), np.ones((factor, factor), np.float32))
    sub = (np.arange(factor) + 0.5) / factor - 0.5
    xs = (cols_mm[:, None] + sub[None, :] * col_step).ravel()
    ys = (rows_mm[:, None] + sub[None, :] * row_step).ravel()
    ax.contour(xs, ys, big, levels=[0.5], colors=colour, linewidths=1.8)


def _mask_array(mask) -> np.ndarray:
    import SimpleITK as sitk
    return sitk.GetArrayFromImage(mask) > 0


def _check_text(info: Mapping[str, Any]) -> str:
    """Monospaced measurement block of the visual check."""
    lines = [f"{'':<21}{'T1':>9}{'T2':>9}"]
    for label, c, u, d in _NODULE_ROWS[:5]:
        a, b = info.get(f"t1_{c}"), info.get(f"t2_{c}")
        lines.append(f"{label + ' (' + u + ')':<21}{_fmt(a, d):>9}{_fmt(b, d):>9}")
    lines.append("")
    for label, key, unit, d in (("interval", "interval_days", "days", 0),
                                ("diam. change", "diameter_change_mm", "mm", 2),
                                ("volume change", "volume_change_pct", "%", 1),
                                ("VDT", "vdt_days", "days", 0),
                                ("propagation err", "propagation_error_mm", "mm", 2)):
        lines.append(f"{label:<16}{_fmt(info.get(key), d, unit)}")
    growth = _text(info.get("growth")) or "–"
    crit = _text(info.get("growth_criterion"))
    lines.append(f"{'growth':<16}{growth}" + (f" ({crit})" if crit else ""))
    for key in ("nodule_type", "location"):
        if _text(info.get(key)):
            lines.append(f"{key.replace('_', ' '):<16}{_text(info[key])}")
    flags = _flags(info.get("qc_flags", ""))
    lines.append("")
    lines.append("QC flags: " + ("none" if not flags else ""))
    for f in flags:
        lines.extend("  " + ln for ln in _wrap(f, 30))
    if _text(info.get("error")):
        lines.append("error:")
        lines.extend("  " + ln for ln in _wrap(_text(info["error"]), 30))
    return "\n".join(lines)
