"""Compare pipeline results with phantom truth.

The accuracy figures of nodulegrowth come from here: the measurements the
pipeline writes (``measurements.csv``) joined with the truth the phantom
generator writes (``truth.csv``, computed from the continuous shapes), row by
row on ``(patient_id, nodule_id)``.

All distances are in mm, volumes in mm³; errors are *measured minus true*.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import NoduleGrowthError

#: Size columns compared at each time point: (measurement column stem, truth column stem).
SIZE_COLUMNS = ("long_axis_mm", "short_axis_mm", "mean_diameter_mm", "max_3d_diameter_mm")


def compare_with_truth(measurements: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Per-nodule errors of the pipeline against phantom truth.

    Parameters
    ----------
    measurements : pandas.DataFrame
        The pipeline's ``measurements.csv`` (contract columns).
    truth : pandas.DataFrame
        The phantom's ``truth.csv`` (``patient_id, nodule_id, t1_x … t2_z``,
        ``t{1,2}_volume_mm3``, ``t{1,2}_long_axis_mm`` …).

    Returns
    -------
    pandas.DataFrame
        One row per measured nodule with ``status == "ok"``: identifiers,
        ``t1_center_error_mm`` and ``t2_center_error_mm`` (Euclidean distance
        between the segmented centroid and the true centre),
        ``t2_propagated_error_mm`` (registration alone),
        ``t{1,2}_volume_error_pct`` :math:`= 100 (V - V_\\text{true}) / V_\\text{true}`,
        ``t{1,2}_<size>_error_mm`` for the long, short, mean and max 3-D
        diameters, ``growth_true`` and ``growth`` (category from the true and
        the measured mean diameters by the same criterion) when available.

    Raises
    ------
    NoduleGrowthError
        When a measured nodule has no truth row (the two files do not belong
        together).

    Examples
    --------
    >>> m = pd.DataFrame({"patient_id": ["P"], "nodule_id": ["1"], "status": ["ok"],
    ...                   "t1_center_x": [1.0], "t1_center_y": [0.0], "t1_center_z": [0.0],
    ...                   "t1_volume_mm3": [110.0]})
    >>> t = pd.DataFrame({"patient_id": ["P"], "nodule_id": [1], "t1_x": [0.0], "t1_y": [0.0],
    ...                   "t1_z": [0.0], "t1_volume_mm3": [100.0]})
    >>> e = compare_with_truth(m, t)
    >>> float(e.loc[0, "t1_center_error_mm"]), float(e.loc[0, "t1_volume_error_pct"])
    (1.0, 10.0)
    """
    m = measurements.copy()
    t = truth.copy()
    for frame in (m, t):
        frame["patient_id"] = frame["patient_id"].astype(str)
        frame["nodule_id"] = frame["nodule_id"].astype(str)
    if "status" in m:
        m = m[m["status"] == "ok"]
    joined = m.merge(t, on=["patient_id", "nodule_id"], how="left", suffixes=("", "_true"),
                     indicator=True)
    orphans = joined[joined["_merge"] != "both"]
    if len(orphans):
        first = orphans.iloc[0]
        raise NoduleGrowthError(
            f"no truth for patient {first['patient_id']}, nodule {first['nodule_id']}: "
            "are the measurements and the truth from the same cohort?")
    out = joined[["patient_id", "nodule_id"]].copy()
    for extra in ("kind", "shape", "location"):
        if extra in joined:
            out[extra] = joined[extra]
    for tp in ("t1", "t2"):
        centre = [f"{tp}_center_{a}" for a in "xyz"]
        true = [f"{tp}_{a}" for a in "xyz"]
        if all(c in joined for c in centre + true):
            out[f"{tp}_center_error_mm"] = np.linalg.norm(
                joined[centre].to_numpy(float) - joined[true].to_numpy(float), axis=1)
        vol, vol_true = f"{tp}_volume_mm3", f"{tp}_volume_mm3_true"
        if vol in joined and vol_true in joined:
            out[f"{tp}_volume_error_pct"] = 100.0 * (joined[vol].astype(float) - joined[vol_true])\
                / joined[vol_true]
        for stem in SIZE_COLUMNS:
            col, col_true = f"{tp}_{stem}", f"{tp}_{stem}_true"
            if col in joined and col_true in joined:
                out[f"{tp}_{stem.replace('_mm', '')}_error_mm"] = joined[col].astype(float) - joined[col_true]
    prop = [f"t2_propagated_{a}" for a in "xyz"]
    if all(c in joined for c in prop + ["t2_x", "t2_y", "t2_z"]):
        out["t2_propagated_error_mm"] = np.linalg.norm(
            joined[prop].to_numpy(float) - joined[["t2_x", "t2_y", "t2_z"]].to_numpy(float), axis=1)
    if "growth_criterion" in joined and "interval_days" in joined:
        out["growth"] = joined["growth"].to_numpy()
        out["growth_true"] = [true_growth(row, row["growth_criterion"]) for _, row in joined.iterrows()]
    return out.reset_index(drop=True)


def true_growth(row, criterion: str) -> str | None:
    """Growth category of the *true* sizes of a joined row by a named criterion.

    Uses the same rule as the pipeline (:mod:`nodulegrowth.growth`) on the
    phantom's true mean diameters (Lung-RADS 2022, Fleischner 2017) or true
    volumes (NELSON), so that a disagreement is a measurement error only.
    Returns ``None`` when the criterion is unknown or the row lacks a value.
    """
    from . import growth

    interval = row.get("interval_days")
    if interval is None or not np.isfinite(float(interval)):
        return None
    if criterion == "nelson":
        return growth.nelson(row["t1_volume_mm3_true"], row["t2_volume_mm3_true"], float(interval))
    rule = {"lung_rads_2022": growth.lung_rads_2022, "fleischner_2017": growth.fleischner_2017}.get(criterion)
    if rule is None:
        return None
    return rule(row["t1_mean_diameter_mm_true"], row["t2_mean_diameter_mm_true"], float(interval))


def summarise_errors(errors: pd.DataFrame) -> pd.DataFrame:
    """Median, 90th percentile, maximum and mean absolute value of each error column.

    Parameters
    ----------
    errors : pandas.DataFrame
        Output of :func:`compare_with_truth`.

    Returns
    -------
    pandas.DataFrame
        Index: error column; columns ``n, median_abs, p90_abs, max_abs,
        mean_abs, mean`` (signed mean = bias).
    """
    rows = {}
    for col in errors.columns:
        if not (col.endswith("_error_mm") or col.endswith("_error_pct")):
            continue
        v = errors[col].astype(float).dropna().to_numpy()
        if v.size == 0:
            continue
        a = np.abs(v)
        rows[col] = {"n": v.size, "median_abs": np.median(a), "p90_abs": np.percentile(a, 90),
                     "max_abs": a.max(), "mean_abs": a.mean(), "mean": v.mean()}
    return pd.DataFrame.from_dict(rows, orient="index")
