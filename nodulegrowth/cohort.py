"""Cohort manifest and runner: the map over image pairs.

The runner reads the manifest (``docs/CONTRACT.md`` section 1), groups its rows
by image pair so that each pair is loaded and registered once, maps
:func:`process_pair` over the pairs (serially or in worker processes), writes
each pair's result as soon as it is finished, and finally assembles
``measurements.csv`` in manifest order and renders the report.

Design for scale and resilience:

* a pair is the unit of work: :func:`process_pair` is a pure function of a
  :class:`PairTask` and a :class:`PipelineConfig` that returns plain dicts,
  so it can be shipped to a process pool or a Dask cluster unchanged;
* per-pair results are written atomically to ``OUTDIR/.rows/<key>.json``
  where ``key`` hashes the pair's manifest rows and the pipeline version, so
  an interrupted run is resumed with ``resume=True`` without redoing pairs;
* every error of a row or of a pair is caught here, turned into
  ``status=failed`` with a one-line ``error`` for the rows concerned, and the
  cohort goes on;
* nothing here reads DICOM headers: :mod:`nodulegrowth.io` returns technical
  metadata only.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import math
import os
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .errors import ManifestError, NoduleGrowthError

log = logging.getLogger(__name__)

#: Columns of ``measurements.csv`` fixed by the contract, in order.
CONTRACT_COLUMNS: tuple[str, ...] = (
    "patient_id", "nodule_id", "diagnosis", "status", "error",
    "t2_propagated_x", "t2_propagated_y", "t2_propagated_z",
    "t1_center_x", "t1_center_y", "t1_center_z",
    "t2_center_x", "t2_center_y", "t2_center_z",
    "propagation_error_mm",
    "t1_long_axis_mm", "t2_long_axis_mm",
    "t1_short_axis_mm", "t2_short_axis_mm",
    "t1_mean_diameter_mm", "t2_mean_diameter_mm",
    "t1_max_3d_diameter_mm", "t2_max_3d_diameter_mm",
    "t1_volume_mm3", "t2_volume_mm3",
    "interval_days", "diameter_change_mm", "volume_change_pct", "vdt_days",
    "growth", "qc_flags",
)

#: Optional columns written after the contract's (the contract allows extension).
EXTRA_COLUMNS: tuple[str, ...] = (
    "nodule_type", "location", "t2_nodule_type", "t2_location",
    "growth_criterion", "growth_lung_rads_2022", "growth_fleischner_2017", "growth_nelson",
    "nelson_vdt_category",
    "volume_change_pct_lo95", "volume_change_pct_hi95", "vdt_days_lo95", "vdt_days_hi95",
    "change_exceeds_measurement_error",
    "t1_volume_pv_mm3", "t2_volume_pv_mm3",
    "t1_solid_mean_diameter_mm", "t2_solid_mean_diameter_mm",
    "t1_solid_volume_mm3", "t2_solid_volume_mm3",
    "t1_voxel_size_mm", "t2_voxel_size_mm",
    "t1_diameter_mm", "t2_diameter_mm",
    "t1_manufacturer", "t1_model", "t1_kvp", "t1_slice_thickness_mm",
    "t2_manufacturer", "t2_model", "t2_kvp", "t2_slice_thickness_mm",
    "runtime_s",
)

MEASUREMENT_COLUMNS: tuple[str, ...] = CONTRACT_COLUMNS + EXTRA_COLUMNS

_REQUIRED = ("patient_id", "t1_image", "t2_image")
_XYZ = ("x", "y", "z")
_IJK = ("i", "j", "k")

#: Bumped whenever a change of the pipeline changes its numbers; part of the
#: resume key, so results of an older pipeline are never reused.
PIPELINE_VERSION = "27"


# --------------------------------------------------------------------------
# manifest
# --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ManifestRow:
    """One validated manifest row (one radiologist-matched nodule pair).

    Attributes
    ----------
    position : int
        0-based position of the row among the manifest's data rows (the output
        order).
    line : int
        Line number of the row in the CSV file (the header is line 1).
    patient_id, nodule_id, diagnosis : str
        Copied from the manifest (``nodule_id`` defaults to ``"1"``).
    t1_image, t2_image : str
        Absolute paths (relative ones are resolved against the manifest's
        folder).
    t1_date, t2_date : datetime.date or None
        Dates given in the manifest; ``None`` means "take it from the DICOM".
    t1_point, t2_point : tuple of 3 float or None
        World LPS ``(x, y, z)`` in mm.
    t1_index, t2_index : tuple of 3 float or None
        Voxel index ``(i, j, k)`` (column, row, slice; 0-based) of the file as
        stored, the alternative to the world point.
    t1_diameter_mm, t2_diameter_mm : float or None
        Radiologists' diameters, for agreement statistics.
    error : str or None
        Why the row is invalid; such a row is reported as failed and never
        processed.
    """

    position: int
    line: int
    patient_id: str
    nodule_id: str = "1"
    diagnosis: str = ""
    t1_image: str = ""
    t2_image: str = ""
    t1_date: _dt.date | None = None
    t2_date: _dt.date | None = None
    t1_point: tuple[float, float, float] | None = None
    t1_index: tuple[float, float, float] | None = None
    t2_point: tuple[float, float, float] | None = None
    t2_index: tuple[float, float, float] | None = None
    t1_diameter_mm: float | None = None
    t2_diameter_mm: float | None = None
    error: str | None = None

    @property
    def label(self) -> str:
        """How error messages name this row: ``row 3 (line 4, patient P1, nodule 2)``."""
        return (f"manifest row {self.position + 1} (line {self.line}, "
                f"patient {self.patient_id or '?'}, nodule {self.nodule_id})")


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A read manifest: its path and its rows (valid and invalid) in order."""

    path: Path
    rows: tuple[ManifestRow, ...]

    @property
    def valid_rows(self) -> tuple[ManifestRow, ...]:
        return tuple(r for r in self.rows if r.error is None)


def _parse_float(value: str, column: str, where: str) -> float | None:
    value = value.strip()
    if value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        raise ManifestError(f"{where}: column {column!r}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise ManifestError(f"{where}: column {column!r}: {value!r} is not a finite number")
    return number


def _parse_date(value: str, column: str, where: str) -> _dt.date | None:
    value = value.strip()
    if value == "":
        return None
    try:
        return _dt.date.fromisoformat(value)
    except ValueError:
        raise ManifestError(
            f"{where}: column {column!r}: {value!r} is not an ISO date (YYYY-MM-DD)") from None


def _parse_triplet(record: Mapping[str, str], prefix: str, axes: Sequence[str],
                   where: str) -> tuple[float, float, float] | None:
    cols = [f"{prefix}_{a}" for a in axes]
    values = [_parse_float(record.get(c, ""), c, where) for c in cols]
    given = [v is not None for v in values]
    if all(given):
        return tuple(values)  # type: ignore[return-value]
    if any(given):
        missing = [c for c, g in zip(cols, given) if not g]
        raise ManifestError(f"{where}: incomplete coordinates, {', '.join(missing)} empty "
                            f"(give all of {', '.join(cols)})")
    return None


def _resolve(path: str, base: Path) -> str:
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = base / p
    return str(p)


def _validate_row(record: Mapping[str, str], position: int, base: Path) -> ManifestRow:
    line = position + 2
    patient_id = record.get("patient_id", "").strip()
    nodule_id = record.get("nodule_id", "").strip() or "1"
    row = ManifestRow(position=position, line=line, patient_id=patient_id, nodule_id=nodule_id,
                      diagnosis=record.get("diagnosis", "").strip())
    where = row.label
    try:
        for col in _REQUIRED:
            if not record.get(col, "").strip():
                raise ManifestError(f"{where}: required column {col!r} is empty")
        t1_point = _parse_triplet(record, "t1", _XYZ, where)
        t1_index = _parse_triplet(record, "t1", _IJK, where)
        if t1_point is None and t1_index is None:
            raise ManifestError(f"{where}: no T1 location: give t1_x, t1_y, t1_z (world mm, LPS) "
                                "or t1_i, t1_j, t1_k (voxel index)")
        if t1_point is not None and t1_index is not None:
            raise ManifestError(f"{where}: both t1_x/y/z and t1_i/j/k given; give one form only")
        t2_point = _parse_triplet(record, "t2", _XYZ, where)
        t2_index = _parse_triplet(record, "t2", _IJK, where)
        if t2_point is not None and t2_index is not None:
            raise ManifestError(f"{where}: both t2_x/y/z and t2_i/j/k given; give one form only")
        if t1_index is not None and any(v < 0 for v in t1_index):
            raise ManifestError(f"{where}: negative voxel index t1_i/j/k = {t1_index}")
        d1 = _parse_float(record.get("t1_diameter_mm", ""), "t1_diameter_mm", where)
        d2 = _parse_float(record.get("t2_diameter_mm", ""), "t2_diameter_mm", where)
        for col, d in (("t1_diameter_mm", d1), ("t2_diameter_mm", d2)):
            if d is not None and d <= 0:
                raise ManifestError(f"{where}: column {col!r}: {d} must be positive")
        t1_date = _parse_date(record.get("t1_date", ""), "t1_date", where)
        t2_date = _parse_date(record.get("t2_date", ""), "t2_date", where)
        return dataclasses.replace(
            row,
            t1_image=_resolve(record["t1_image"].strip(), base),
            t2_image=_resolve(record["t2_image"].strip(), base),
            t1_date=t1_date, t2_date=t2_date,
            t1_point=t1_point, t1_index=t1_index, t2_point=t2_point, t2_index=t2_index,
            t1_diameter_mm=d1, t2_diameter_mm=d2)
    except ManifestError as exc:
        return dataclasses.replace(row, error=str(exc))


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read and validate a cohort manifest (``docs/CONTRACT.md`` section 1).

    Problems of a single row do not raise: the row is kept with its
    ``error`` set, reported as failed, and the other rows go on. Problems of the
    manifest as a whole raise.

    Parameters
    ----------
    path : path-like
        The manifest CSV. Relative image paths in it are resolved against its
        folder.

    Returns
    -------
    Manifest
        All data rows in file order, each validated.

    Raises
    ------
    ManifestError
        The file is missing or not a CSV, it has no data row, or a required
        column (``patient_id``, ``t1_image``, ``t2_image``, and one of the T1
        coordinate forms) is absent from the header.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "m.csv").write_text(
    ...     "patient_id,t1_image,t2_image,t1_x,t1_y,t1_z,t1_date\\n"
    ...     "P1,a.nii.gz,b.nii.gz,1,2,3,2020-01-01\\n"
    ...     "P2,a.nii.gz,b.nii.gz,x,2,3,\\n")
    >>> m = read_manifest(d / "m.csv")
    >>> m.rows[0].t1_point, m.rows[0].error
    ((1.0, 2.0, 3.0), None)
    >>> m.rows[1].error
    "manifest row 2 (line 3, patient P2, nodule 1): column 't1_x': 'x' is not a number"
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path}: no such file")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True,
                            encoding="utf-8-sig")
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ManifestError(f"manifest {path}: cannot be read as CSV ({first})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in _REQUIRED if c not in frame.columns]
    has_world = all(f"t1_{a}" in frame.columns for a in _XYZ)
    has_index = all(f"t1_{a}" in frame.columns for a in _IJK)
    if not has_world and not has_index:
        missing.append("t1_x/t1_y/t1_z (or t1_i/t1_j/t1_k)")
    if missing:
        raise ManifestError(f"manifest {path}: missing required column(s): {', '.join(missing)}; "
                            f"columns found: {', '.join(frame.columns) or 'none'}")
    if len(frame) == 0:
        raise ManifestError(f"manifest {path}: no data rows")
    base = path.resolve().parent
    rows = [_validate_row(rec, pos, base) for pos, rec in enumerate(frame.to_dict("records"))]
    # Two rows with the same patient and nodule would write the same nodule image
    # and could not be told apart in the results.
    seen: dict[tuple[str, str], ManifestRow] = {}
    for k, row in enumerate(rows):
        key = (row.patient_id, row.nodule_id)
        if row.error is None and key in seen:
            rows[k] = dataclasses.replace(
                row, error=f"{row.label}: duplicate patient_id/nodule_id, already used by "
                           f"manifest row {seen[key].position + 1}; give each nodule its own nodule_id")
        elif row.error is None:
            seen[key] = row
    return Manifest(path=path, rows=tuple(rows))


# --------------------------------------------------------------------------
# the unit of work
# --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Settings of one cohort run (all have validated defaults).

    Attributes
    ----------
    voi_half_size_mm : float
        Half the edge of the cube cropped around a nodule for segmentation
        (mm). 40 mm holds a 30 mm nodule with a margin for its surroundings.
    growth_criterion : str
        The criterion behind the contract's ``growth`` column (see
        :mod:`nodulegrowth.growth`).
    threads : int or None
        Threads per worker for ITK and elastix; ``None`` lets them use all cores.
    write_registration : bool
        Write the elastix parameter maps and logs of each pair under
        ``OUTDIR/registration/``.
    render_nodules : bool
        Write ``nodules/<patient_id>_<nodule_id>.png`` for every nodule.
    """

    voi_half_size_mm: float = 40.0
    growth_criterion: str = "lung_rads_2022"
    threads: int | None = None
    write_registration: bool = True
    render_nodules: bool = True


@dataclasses.dataclass(frozen=True)
class PairTask:
    """One image pair and the manifest rows (nodules) that use it."""

    t1_image: str
    t2_image: str
    rows: tuple[ManifestRow, ...]

    @property
    def key(self) -> str:
        """Stable hash of the rows and the pipeline version (the resume key)."""
        payload = json.dumps([PIPELINE_VERSION, self.t1_image, self.t2_image,
                              [dataclasses.asdict(r) for r in self.rows]],
                             default=str, sort_keys=True)
        return hashlib.sha1(payload.encode()).hexdigest()[:16]


def make_tasks(manifest: Manifest) -> list[PairTask]:
    """Group the valid rows by image pair, in order of first appearance."""
    groups: dict[tuple[str, str], list[ManifestRow]] = {}
    for row in manifest.valid_rows:
        groups.setdefault((row.t1_image, row.t2_image), []).append(row)
    return [PairTask(t1, t2, tuple(rows)) for (t1, t2), rows in groups.items()]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, NoduleGrowthError):
        return text or type(exc).__name__
    # Not one of ours: a bug or an unexpected library error. Say so plainly.
    return f"internal error ({type(exc).__name__}: {text})" if text else f"internal error ({type(exc).__name__})"


def failed_result(row: ManifestRow, error: str) -> dict[str, Any]:
    """The output record of a row that could not be processed."""
    return {"patient_id": row.patient_id, "nodule_id": row.nodule_id, "diagnosis": row.diagnosis,
            "status": "failed", "error": error,
            "t1_diameter_mm": row.t1_diameter_mm, "t2_diameter_mm": row.t2_diameter_mm}


def _scan_columns(info: Any, prefix: str) -> dict[str, Any]:
    return {f"{prefix}manufacturer": info.manufacturer, f"{prefix}model": info.model,
            f"{prefix}kvp": info.kvp, f"{prefix}slice_thickness_mm": info.slice_thickness_mm}


def _interval_days(row: ManifestRow, t1_info: Any, t2_info: Any) -> float | None:
    d1 = row.t1_date or t1_info.acquisition_date
    d2 = row.t2_date or t2_info.acquisition_date
    if d1 is None or d2 is None:
        return None
    return float((d2 - d1).days)


def process_pair(task: PairTask, config: PipelineConfig, out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Run the whole chain for one image pair and all its nodules.

    Loads both scans once, extracts the lung masks, registers T2 (moving) onto
    T1 (fixed) once, then for every nodule row: segments and measures it at T1,
    propagates its centroid into T2, re-identifies and segments it there,
    measures it, assesses growth and renders the check image. When one time
    point is part-solid and the other is not, the other is segmented as
    part-solid as well (:func:`nodulegrowth.segment.joint_nodule_type`; flag
    ``nodule_type_from_both_time_points``) unless that leaks; then the smaller
    of the two is segmented again at the larger one's tissue level
    (:func:`share_tissue_level`; flag ``tissue_level_changed`` when the two
    levels differ by more than half the contrast and each keeps its own).

    Never raises for bad data: an error of the pair fails all its rows, an
    error of one nodule fails that row only; each failed row carries a
    one-line reason.

    Parameters
    ----------
    task : PairTask
        The image pair and its rows.
    config : PipelineConfig
        Run settings.
    out_dir : path-like
        The run's output folder (for nodule images and registration files).

    Returns
    -------
    list of dict
        One record per row of ``task``, in the task's order, with the columns
        of :data:`MEASUREMENT_COLUMNS` (missing keys mean empty).
    """
    from . import io, lung, register

    out_dir = Path(out_dir)
    started = time.perf_counter()
    if config.threads:
        _limit_threads(config.threads)
    try:
        t1 = io.load_scan(task.t1_image)
        t2 = io.load_scan(task.t2_image)
        for scan in (t1, t2):
            for note in scan.info.notes:
                log.warning("%s: %s", scan.info.source, note)
        loaded = time.perf_counter()
        mask1, mask2 = lung.lung_masks([t1.image, t2.image], max_workers=config.threads or 2)
        masked = time.perf_counter()
        workdir = out_dir / "registration" / task.key if config.write_registration else None
        reg = register.register_pair(t1.image, t2.image, fixed_mask=mask1, moving_mask=mask2,
                                     workdir=workdir, number_of_threads=config.threads)
        log.info("pair %s (%s -> %s): read %.1f s, lung masks %.1f s, registration %.1f s",
                 task.key, task.t1_image, task.t2_image, loaded - started, masked - loaded,
                 time.perf_counter() - masked)
    except Exception as exc:  # noqa: BLE001 -- a failed pair must not stop the cohort
        where = f"pair {Path(task.t1_image).name} -> {Path(task.t2_image).name}"
        log.error("%s: %s", where, _one_line(exc))
        log.debug("%s", traceback.format_exc())
        return [failed_result(row, _one_line(exc)) for row in task.rows]
    pair_time = time.perf_counter() - started

    results = []
    for row in task.rows:
        row_started = time.perf_counter()
        try:
            record = _process_nodule(row, t1, t2, mask1, mask2, reg, config, out_dir)
        except Exception as exc:  # noqa: BLE001 -- one failed row never stops the cohort
            log.error("%s: %s", row.label, _one_line(exc))
            log.debug("%s", traceback.format_exc())
            record = failed_result(row, _one_line(exc))
        record["runtime_s"] = round(pair_time / len(task.rows) + time.perf_counter() - row_started, 2)
        results.append(record)
    return results


def _process_nodule(row: ManifestRow, t1: Any, t2: Any, mask1: Any, mask2: Any, reg: Any,
                    config: PipelineConfig, out_dir: Path) -> dict[str, Any]:
    """Chain of one nodule (see :func:`process_pair`); raises on failure."""
    import numpy as np

    from . import growth, io, propagate

    flags: list[str] = list(getattr(reg, "flags", ()))
    p1 = row.t1_point if row.t1_point is not None else tuple(io.native_index_to_world(t1.info, row.t1_index))
    ref2 = None
    if row.t2_point is not None:
        ref2 = np.asarray(row.t2_point, float)
    elif row.t2_index is not None:
        ref2 = np.asarray(io.native_index_to_world(t2.info, row.t2_index), float)

    def segment_t1(nodule_type=None, tissue_hu=None):
        return _segment_and_measure(t1.image, mask1, p1, config, row, "T1",
                                    expected_diameter_mm=row.t1_diameter_mm, nodule_type=nodule_type,
                                    tissue_hu=tissue_hu)

    seg1, m1, voi1 = segment_t1()
    prop = propagate.propagate_point(reg, t1.image, t2.image, m1.center_xyz)
    flags += list(prop.flags)
    import SimpleITK as sitk

    # The T1 nodule's mean density guides the choice among T2 candidates
    # (ground-glass nodules would otherwise be judged from T2 alone).
    t1_hu = float(np.mean(sitk.GetArrayViewFromImage(voi1)[seg1.mask]))
    reid = propagate.reidentify(t2.image, prop.point_xyz, reference=m1, reference_hu=t1_hu,
                                lung_mask=mask2)
    flags += list(reid.flags)

    seg2 = m2 = voi2 = None
    if reid.found:
        # sized from the T1 volume, as reidentify sized its own segmentation
        d1 = 2.0 * (3.0 * m1.volume_mm3 / (4.0 * math.pi)) ** (1.0 / 3.0)

        def segment_t2(nodule_type=None, tissue_hu=None):
            return _segment_and_measure(t2.image, mask2, tuple(reid.seed_xyz), config, row, "T2",
                                        expected_diameter_mm=d1, nodule_type=nodule_type, tissue_hu=tissue_hu)

        seg2, m2, voi2 = segment_t2()
        redo = {"T1": segment_t1, "T2": segment_t2}
        (seg1, m1, voi1), (seg2, m2, voi2), more = harmonise_types((seg1, m1, voi1), (seg2, m2, voi2), redo)
        if "nodule_type_from_both_time_points" in more:
            flags.append("nodule_type_from_both_time_points")
        (seg1, m1, voi1), (seg2, m2, voi2), more = share_tissue_level((seg1, m1, voi1), (seg2, m2, voi2), redo)
        flags += [f for f in more if f not in flags]
    # the flags of the segmentations finally used (not of one replaced above)
    flags += [f for f in seg1.flags if f not in flags]
    if seg2 is not None:
        flags += [f for f in seg2.flags if f not in flags]

    record: dict[str, Any] = {
        "patient_id": row.patient_id, "nodule_id": row.nodule_id, "diagnosis": row.diagnosis,
        "status": "ok", "error": "",
        "nodule_type": seg1.nodule_type, "location": seg1.location,
        "t1_diameter_mm": row.t1_diameter_mm, "t2_diameter_mm": row.t2_diameter_mm,
    }
    record.update({f"t2_propagated_{a}": float(v) for a, v in zip(_XYZ, prop.point_xyz)})
    record.update(m1.as_dict("t1_"))
    record.update(_scan_columns(t1.info, "t1_"))
    record.update(_scan_columns(t2.info, "t2_"))
    interval = _interval_days(row, t1.info, t2.info)
    if interval is None:
        flags.append("no_scan_dates")
    record["interval_days"] = interval

    if seg2 is not None:
        record["t2_nodule_type"], record["t2_location"] = seg2.nodule_type, seg2.location
        if seg2.nodule_type != seg1.nodule_type:
            # a real change (ground glass developing a solid component) or a
            # misclassification at one time point: either way worth a look,
            # and the growth criteria were applied with the T1 type
            flags.append("nodule_type_changed")
        record.update(m2.as_dict("t2_"))
        if ref2 is not None:
            record["propagation_error_mm"] = float(np.linalg.norm(np.asarray(m2.center_xyz) - ref2))
        if interval is not None:
            result = growth.assess_growth(m1, m2, interval, criterion=config.growth_criterion,
                                          nodule_type=seg1.nodule_type)
            record.update(result.as_dict())
            flags += [f for f in result.flags if f not in flags]
        else:
            record["diameter_change_mm"] = m2.mean_diameter_mm - m1.mean_diameter_mm
            record["volume_change_pct"] = 100.0 * (m2.volume_mm3 - m1.volume_mm3) / m1.volume_mm3
    record["qc_flags"] = ";".join(dict.fromkeys(flags))

    if voi2 is None:
        # Not found at T2: still show where the registration says it should be.
        voi2 = io.crop(t2.image, prop.point_xyz, config.voi_half_size_mm)
    if config.render_nodules:
        try:
            _render(row, record, voi1, seg1, voi2, seg2, m1, m2, prop, ref2, out_dir)
        except Exception as exc:  # noqa: BLE001 -- a picture must not cost the measurements
            log.error("%s: nodule image not written: %s", row.label, _one_line(exc))
            log.debug("%s", traceback.format_exc())
            record["qc_flags"] = ";".join(filter(None, [record["qc_flags"], "nodule_image_failed"]))
    return record


def harmonise_types(result1, result2, redo):
    """Segment both time points with one type when one of them is part-solid.

    Parameters
    ----------
    result1, result2 : tuple
        ``(Segmentation, NoduleMeasurement, voi)`` at T1 and T2.
    redo : mapping
        ``{"T1": f, "T2": f}``, ``f(nodule_type)`` segmenting and measuring
        that time point again with the type forced.

    Returns
    -------
    tuple
        ``(result1, result2, flags)``: the results to use and the QC flags of
        the one redone plus ``nodule_type_from_both_time_points``, or the
        inputs and no flags when the types agree, no rule applies
        (:func:`nodulegrowth.segment.joint_nodule_type`) or the forced
        segmentation leaks (then the two types stay different and
        ``nodule_type_changed`` reports it).
    """
    from . import segment

    joint = segment.joint_nodule_type(result1[0].nodule_type, result2[0].nodule_type)
    if joint is None:
        return result1, result2, []
    which = "T1" if result1[0].nodule_type != joint else "T2"
    alt = redo[which](joint)
    if "segmentation_leak" in alt[0].flags:
        return result1, result2, []
    flags = [*alt[0].flags, "nodule_type_from_both_time_points"]
    return (alt, result2, flags) if which == "T1" else (result1, alt, flags)


#: Largest difference between the tissue levels read at T1 and T2, as a
#: fraction of the nodule's contrast, that :func:`share_tissue_level` takes
#: for one tissue read twice.
TISSUE_LEVEL_TOLERANCE = 0.5

#: Largest factor between the volume :func:`share_tissue_level` gets when it
#: segments a nodule again at the other time point's level and the first
#: volume rescaled to that level, :math:`V (G - P) / (G' - P)`, for the
#: redone segmentation to count as the same object measured at another
#: level.
LEVEL_RESCALE_TOLERANCE = 1.5


def share_tissue_level(result1, result2, redo, tolerance: float = TISSUE_LEVEL_TOLERANCE):
    r"""Measure both time points of a nodule at one tissue level.

    The partial-volume step of the segmentation (step 9 of
    :mod:`nodulegrowth.segment`) sizes each mask so that its volume is

    .. math:: V = v \sum_i \frac{I_i - P}{G - P}

    with :math:`G` the nodule's tissue level read on the scan. Read
    separately at T1 and T2, :math:`G` varies with the noise and, for a
    small nodule, with how far blur reaches into its centre; the volume
    ratio :math:`V_2 / V_1` then carries both errors. When the two levels
    agree within ``tolerance`` of the contrast, one tissue is assumed (as
    the type harmonisation before this assumes one type) and the smaller
    nodule is segmented again with the larger one's level, read deeper
    inside it and farther from the blur. The ratio is then that of the
    integrated excess attenuation, :math:`\sum (I - P)`, which no level
    and no blur changes.

    Not when a level is that of the deepest voxels of a nodule whose sum
    was kept narrow beside a vessel (``tissue_level_source`` of
    ``deepest_narrow``: ground glass beside a vessel, for which no
    blurred-ball fit is made): there the level, lowered by the same blur,
    offsets the edge's tail the sum misses, and the other time point's
    level does not (benchmark, ground-glass nodules of 4-6 mm beside a
    vessel: -9 and -11 % at T1 went to -17 % with T2's level).

    A new level only rescales the sum, so the redone volume should be
    about :math:`V (G - P) / (G' - P)`, the first volume :math:`V` at
    level :math:`G` rescaled to the new level :math:`G'`; the redone
    segmentation is kept only within a factor
    :data:`LEVEL_RESCALE_TOLERANCE` of that. Beyond it, the level changed
    what was segmented, not its size. In the benchmark's four samples
    (1019 pairs redone, slices 1-5 mm) the redone volume was 0.74-1.37 times
    the rescaled one (1-99 % range 0.91-1.14) but once: a 5.7 mm part-solid
    nodule typed solid at both time points and measured as its core at each
    (-65 and -51 %), shrinking to 0.70 of its volume; at T1's higher level
    the segmentation of T2 started again from the click and grew into the
    ground-glass rim (2.6 times the rescaled volume, -8 %), and the volume
    ratio read 1.85 (0.99 with the first T2 kept). With this rule the four
    samples rerun give that pair as the only one changed.

    A nodule whose attenuation really changed by less than ``tolerance``
    of its contrast (a ground-glass nodule turning denser) is so measured
    at its denser level at both time points, and its growth in mass reads
    as growth in volume (an argument for mass, de Hoop et al. [1]_). A
    larger difference is left alone and flagged ``tissue_level_changed``.

    Parameters
    ----------
    result1, result2 : tuple
        ``(Segmentation, NoduleMeasurement, voi)`` at T1 and T2, of one type
        (after :func:`harmonise_types`).
    redo : mapping
        ``{"T1": f, "T2": f}``, ``f(nodule_type, tissue_hu)`` segmenting
        and measuring that time point again with the type and tissue level
        (HU) forced.
    tolerance : float
        Largest :math:`|G_1 - G_2|` taken for one tissue, as a fraction of
        the mean contrast :math:`((G_1 - P_1) + (G_2 - P_2)) / 2`.

    Returns
    -------
    tuple
        ``(result1, result2, flags)``: the results to use (one of them
        redone) and the flags to add (``tissue_level_changed``), or the
        inputs and no flags when the types differ, a level is missing or
        read on a narrow sum, the redone segmentation leaks where the first
        did not or is not the first one rescaled (see above), or the levels
        are equal.

    References
    ----------
    .. [1] de Hoop B, Gietema H, van de Vorst S, et al. Pulmonary ground-glass
       nodules: increase in mass as an early indicator of growth. Radiology
       2010;255(1):199-206.

    Examples
    --------
    A ground-glass nodule read at -640 HU at T1 (100 mm³) and -610 HU at T2
    (150 mm³) in lung of -850 HU: T1 is segmented again at -610 HU (here a
    stand-in that returns 95 mm³):

    >>> import numpy as np
    >>> from types import SimpleNamespace
    >>> from nodulegrowth.segment import Segmentation
    >>> def result(volume, level):
    ...     seg = Segmentation(mask=np.ones((1, 1, 1), bool), nodule_type="ground_glass",
    ...                        location="isolated", solid_mask=None, threshold_hu=-730.0,
    ...                        parenchyma_hu=-850.0, tissue_hu=level)
    ...     return seg, SimpleNamespace(volume_mm3=volume), None
    >>> redo = {"T1": lambda nodule_type, level: result(95.0, level), "T2": None}
    >>> r1, r2, flags = share_tissue_level(result(100.0, -640.0), result(150.0, -610.0), redo)
    >>> r1[0].tissue_hu, r1[1].volume_mm3, flags
    (-610.0, 95.0, [])
    """
    s1, s2 = result1[0], result2[0]
    g1, g2 = float(s1.tissue_hu), float(s2.tissue_hu)
    if s1.nodule_type != s2.nodule_type or not (math.isfinite(g1) and math.isfinite(g2)) or g1 == g2 \
            or "deepest_narrow" in (s1.tissue_level_source, s2.tissue_level_source):
        return result1, result2, []
    contrast = 0.5 * ((g1 - s1.parenchyma_hu) + (g2 - s2.parenchyma_hu))
    if not (math.isfinite(contrast) and contrast > 0) or abs(g1 - g2) > tolerance * contrast:
        return result1, result2, ["tissue_level_changed"]
    # the larger nodule's level: read deeper, less lowered by blur
    t2_larger = result2[1].volume_mm3 > result1[1].volume_mm3
    which, level, first = ("T1", g2, s1) if t2_larger else ("T2", g1, s2)
    alt = redo[which](first.nodule_type, level)
    if "segmentation_leak" in alt[0].flags and "segmentation_leak" not in first.flags:
        return result1, result2, []
    v_first = (result1 if which == "T1" else result2)[1].volume_mm3
    own, new = float(first.tissue_hu) - first.parenchyma_hu, level - first.parenchyma_hu
    rescaled = v_first * own / new if new > 0 else math.nan
    if not (rescaled > 0 and 1.0 / LEVEL_RESCALE_TOLERANCE <= alt[1].volume_mm3 / rescaled
            <= LEVEL_RESCALE_TOLERANCE):
        return result1, result2, []
    # a forced type raises no tissue_level_uncertain (see segment_nodule):
    # the first segmentation's doubt about its own level stays on record
    kept = tuple(f for f in first.flags if f == "tissue_level_uncertain" and f not in alt[0].flags)
    if kept:
        alt = (dataclasses.replace(alt[0], flags=alt[0].flags + kept), *alt[1:])
    return (alt, result2, []) if which == "T1" else (result1, alt, [])


def _segment_and_measure(image: Any, lung_mask: Any, point_xyz: Sequence[float],
                         config: PipelineConfig, row: ManifestRow, when: str,
                         expected_diameter_mm: float | None = None, nodule_type: str | None = None,
                         tissue_hu: float | None = None):
    """Crop a VOI around ``point_xyz`` (LPS mm), segment and measure the nodule.

    The VOI is sized for the expected diameter (:func:`segment.voi_half_size_mm`,
    at most ``config.voi_half_size_mm``) and enlarged to that maximum when the
    mask reaches its border. ``nodule_type`` forces the type and ``tissue_hu``
    (HU) the tissue level (see :func:`nodulegrowth.segment.segment_nodule`).
    """
    import numpy as np
    import SimpleITK as sitk

    from . import io, measure, segment

    largest = config.voi_half_size_mm
    first = segment.voi_half_size_mm(expected_diameter_mm, inplane_voxel_mm=min(image.GetSpacing()[:2]))
    for half in dict.fromkeys((min(first, largest), largest)):
        voi = io.crop(image, point_xyz, half)
        lung_voi = sitk.Resample(lung_mask, voi, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        hu = sitk.GetArrayFromImage(voi)
        spacing_zyx = tuple(voi.GetSpacing()[::-1])
        seed_ijk = io.world_to_index(voi, point_xyz)
        seed_zyx = tuple(float(v) for v in np.asarray(seed_ijk)[::-1])
        seg = segment.segment_nodule(hu, spacing_zyx, seed_zyx,
                                     lung_mask=sitk.GetArrayFromImage(lung_voi).astype(bool),
                                     nodule_type=nodule_type, tissue_hu=tissue_hu)
        if "touches_roi_border" not in seg.flags:
            break
    m = measure.measure_nodule(seg.mask, spacing_zyx, origin_xyz=voi.GetOrigin(),
                               direction=voi.GetDirection(), hu=hu, solid_mask=seg.solid_mask,
                               threshold_hu=seg.threshold_hu)
    return seg, m, voi


def _render(row, record, voi1, seg1, voi2, seg2, m1, m2, prop, ref2, out_dir: Path) -> None:
    import numpy as np
    import SimpleITK as sitk

    from . import report

    def as_mask(seg, voi):
        if seg is None:
            return None
        img = sitk.GetImageFromArray(np.asarray(seg.mask, dtype=np.uint8))
        img.CopyInformation(voi)
        return img

    nodule_dir = out_dir / "nodules"
    nodule_dir.mkdir(parents=True, exist_ok=True)
    report.render_nodule_check(
        nodule_dir / report.nodule_png_name(row.patient_id, row.nodule_id),
        t1_image=voi1, t1_mask=as_mask(seg1, voi1),
        t2_image=voi2, t2_mask=as_mask(seg2, voi2) if voi2 is not None else None,
        t1_center_xyz=m1.center_xyz, t2_center_xyz=m2.center_xyz if m2 is not None else None,
        t2_propagated_xyz=tuple(prop.point_xyz),
        t2_reference_xyz=tuple(ref2) if ref2 is not None else None,
        info=record, title=f"patient {row.patient_id}, nodule {row.nodule_id}")


def _limit_threads(n: int) -> None:
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(n))
    os.environ["OMP_NUM_THREADS"] = str(n)


# --------------------------------------------------------------------------
# writing results
# --------------------------------------------------------------------------
def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader never sees a partial file.

    The text goes to a temporary file in the same folder, which is then renamed
    over ``path`` (atomic on POSIX and Windows).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, (_dt.date, Path)):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _clean(value: Any) -> Any:
    """NaN, inf and None become empty cells; numpy scalars become Python."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if value is None:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def measurements_frame(manifest: Manifest, results: Mapping[int, Mapping[str, Any]]):
    """Assemble the output table: one row per manifest row, in manifest order.

    Parameters
    ----------
    manifest : Manifest
        The manifest that was run.
    results : mapping of int to dict
        Output records keyed by the row's ``position``; rows without a record
        are reported as failed ("not processed").

    Returns
    -------
    pandas.DataFrame
        Columns :data:`MEASUREMENT_COLUMNS`.
    """
    import pandas as pd

    records = []
    for row in manifest.rows:
        if row.error is not None:
            rec = failed_result(row, row.error)
        else:
            rec = results.get(row.position) or failed_result(row, f"{row.label}: not processed")
        records.append({c: _clean(rec.get(c)) for c in MEASUREMENT_COLUMNS})
    frame = pd.DataFrame.from_records(records, columns=list(MEASUREMENT_COLUMNS))
    return frame


def write_measurements(frame, path: str | os.PathLike) -> Path:
    """Write ``measurements.csv`` atomically (empty cells for missing values)."""
    path = Path(path)
    atomic_write_text(path, frame.to_csv(index=False, float_format="%.6g"))
    return path


# --------------------------------------------------------------------------
# the runner
# --------------------------------------------------------------------------
def _setup_logging(out_dir: Path) -> logging.Handler:
    # Append mode: worker processes add their lines to the same file (each record
    # is one write to an O_APPEND file, so lines do not interleave mid-line).
    handler = logging.FileHandler(out_dir / "run.log", mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger("nodulegrowth")
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    return handler


def _map_tasks(tasks: Sequence[PairTask], config: PipelineConfig, out_dir: Path,
               jobs: int) -> Iterable[tuple[PairTask, list[dict[str, Any]]]]:
    """Yield ``(task, results)`` as each pair finishes (any order)."""
    if jobs <= 1 or len(tasks) <= 1:
        for task in tasks:
            try:
                records = process_pair(task, config, out_dir)
            except Exception as exc:  # noqa: BLE001 -- same isolation as in the pool below
                records = [failed_result(r, _one_line(exc)) for r in task.rows]
            yield task, records
        return
    import multiprocessing

    # spawn, not fork: ITK and elastix hold thread pools that do not survive a fork.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_setup_logging,
                             initargs=(out_dir,)) as pool:
        futures = {pool.submit(process_pair, task, config, out_dir): task for task in tasks}
        for future in as_completed(futures):
            task = futures[future]
            try:
                yield task, future.result()
            except Exception as exc:  # noqa: BLE001 -- a crashed worker fails its pair only
                yield task, [failed_result(r, _one_line(exc)) for r in task.rows]


def run_cohort(manifest_path: str | os.PathLike, out_dir: str | os.PathLike, *, jobs: int = 1,
               resume: bool = False, report: bool = True, config: PipelineConfig | None = None,
               progress: bool = True):
    """Run the pipeline on a cohort manifest and write its results.

    Writes ``OUTDIR/measurements.csv`` (one row per manifest row, in manifest
    order; ``docs/CONTRACT.md`` section 3), ``OUTDIR/nodules/*.png``,
    ``OUTDIR/run.log`` and, unless ``report=False``, ``OUTDIR/report.pdf``,
    ``OUTDIR/figures/*.png`` and ``OUTDIR/cohort_summary.csv``. Inputs are
    never modified.

    Parameters
    ----------
    manifest_path : path-like
        The cohort manifest CSV.
    out_dir : path-like
        Output folder, created if needed.
    jobs : int
        Number of image pairs processed at once in worker processes. ITK and
        elastix threads are shared out among them.
    resume : bool
        Reuse per-pair results of an earlier, interrupted run of the same
        manifest rows in ``OUTDIR/.rows/`` instead of recomputing them.
    report : bool
        Render the cohort report after the measurements.
    config : PipelineConfig, optional
        Run settings.
    progress : bool
        Show a progress bar on standard error.

    Returns
    -------
    pandas.DataFrame
        The measurements table as written.

    Raises
    ------
    ManifestError
        The manifest itself cannot be read.
    OSError
        The output folder cannot be written.
    """
    manifest = read_manifest(manifest_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows_dir = out_dir / ".rows"
    rows_dir.mkdir(exist_ok=True)
    handler = _setup_logging(out_dir)
    try:
        from . import __version__

        log.info("nodulegrowth %s: run of %s into %s (resume=%s)", __version__, manifest.path,
                 out_dir, resume)
        config = config or PipelineConfig()
        jobs = max(1, int(jobs))
        if jobs > 1 and config.threads is None:
            config = dataclasses.replace(config, threads=max(1, (os.cpu_count() or 1) // jobs))
        for row in manifest.rows:
            if row.error:
                log.error("%s", row.error)
        tasks = make_tasks(manifest)
        results: dict[int, dict[str, Any]] = {}
        todo = []
        for task in tasks:
            done = rows_dir / f"{task.key}.json"
            if resume and done.is_file():
                for pos, rec in json.loads(done.read_text()).items():
                    results[int(pos)] = rec
                log.info("resumed pair %s from %s", task.key, done.name)
            else:
                todo.append(task)
        log.info("%d manifest rows, %d image pairs (%d to run) with %d job(s)",
                 len(manifest.rows), len(tasks), len(todo), jobs)
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="pair", desc="nodulegrowth", disable=not progress)
        for task, records in _map_tasks(todo, config, out_dir, jobs):
            by_pos = {row.position: rec for row, rec in zip(task.rows, records)}
            results.update(by_pos)
            atomic_write_text(rows_dir / f"{task.key}.json", json.dumps(by_pos, default=_json_default))
            bar.update(1)
        bar.close()
        frame = measurements_frame(manifest, results)
        write_measurements(frame, out_dir / "measurements.csv")
        n_failed = int((frame["status"] == "failed").sum())
        log.info("measurements.csv written: %d ok, %d failed", len(frame) - n_failed, n_failed)
        if report:
            from . import report as report_mod

            report_mod.make_report(frame, out_dir, nodule_dir=out_dir / "nodules")
        return frame
    finally:
        logging.getLogger("nodulegrowth").removeHandler(handler)
        handler.close()
