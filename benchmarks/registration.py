"""Benchmark of registration + propagation + re-identification on phantom pairs.

Run by hand (it is long: the baseline takes minutes per full-size pair)::

    python benchmarks/registration.py                      # 8 full-size pairs + baseline
    python benchmarks/registration.py --no-baseline
    python benchmarks/registration.py --pairs 2 --preset small   # quick check

For every pair (cached as .mha under ``--cache``), each method runs in its own
subprocess so that its peak resident memory (``ru_maxrss``) and wall time are
its own. Timed: reading both images from disk, lung masks, registration, and
per nodule the T1 segmentation (reference centre, volume, density),
propagation and re-identification (with the T2 segmentation) -- everything
the pipeline does for registration and matching; report rendering is not
part of it. The one-off cost of loading itk's elastix classes (~10-30 s,
paid once per process) is measured separately and reported on its own line.

Methods
-------
``ours``
    :func:`nodulegrowth.register.register_pair` (coarse lung-masked global
    stage), :func:`nodulegrowth.propagate.propagate_point` (local refinement)
    and :func:`nodulegrowth.propagate.reidentify`.
``baseline``
    elastix's default rigid + affine + B-spline parameter maps
    (``GetDefaultParameterMap``) on the full-resolution images, points mapped
    through the resulting transform; the same re-identification is then run
    from its mapped point, so both the mapped-point error and the
    re-identified error are reported.

Figures
-------
Localisation error = distance (mm) from the reported T2 centre to the true T2
centre (phantom truth). Re-identified = ``found`` and the reported centre lies
inside the true T2 nodule; the truth gives no voxel mask, so "inside" is
approximated conservatively as an error below half the true T2 short axis.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KINDS = ("solid", "part_solid", "ground_glass")
LOCATIONS = ("isolated", "juxtavascular", "juxtapleural")
SHAPES = ("sphere", "ellipsoid", "lobulated")


def pair_overrides(i: int) -> dict:
    """Deterministic spec of pair ``i``: repositioning, breathing, nodules.

    Repositioning and breathing sweep their whole range (+-20 mm, +-5 deg,
    breathing up to 8 % craniocaudal) with alternating signs; the nodules
    cycle through every kind x location x shape so 8 pairs of 3 nodules cover
    each kind/location combination at least twice.
    """
    from nodulegrowth.phantom import NoduleSpec

    frac = (i % 4 + 1) / 4.0  # 0.25, 0.5, 0.75, 1.0 of the range
    sgn = 1.0 if i % 2 == 0 else -1.0
    nods = []
    for j in range(3):
        n = 3 * i + j
        nods.append(NoduleSpec(kind=KINDS[n % 3], location=LOCATIONS[(n // 3) % 3],
                               shape=SHAPES[(n + i) % 3]))
    return dict(
        translation_mm=(sgn * 20.0 * frac, -sgn * 15.0 * frac, 20.0 * frac * (1 if i % 3 else -1)),
        rotation_deg=(sgn * 5.0 * frac, 4.0 * frac * (-sgn), 5.0 * frac * (1 if i % 3 else -1)),
        breathing_cc=sgn * 0.08 * frac,
        breathing_ap=-sgn * 0.04 * frac,
        nodules=tuple(nods),
    )


def ensure_pair(cache: Path, preset: str, i: int) -> Path:
    """Write pair ``i`` (T1.mha, T2.mha, truth.csv) once; return its folder."""
    d = cache / f"{preset}_{i:02d}"
    if (d / "truth.csv").exists():
        return d
    import SimpleITK as sitk

    from nodulegrowth.phantom import make_pair

    d.mkdir(parents=True, exist_ok=True)
    pair = make_pair(1000 + i, preset=preset, **pair_overrides(i))
    sitk.WriteImage(pair.t1, str(d / "T1.mha"), useCompression=False)
    sitk.WriteImage(pair.t2, str(d / "T2.mha"), useCompression=False)
    pair.truth.to_csv(d / "truth.csv.tmp", index=False)
    os.replace(d / "truth.csv.tmp", d / "truth.csv")
    return d


# ---------------------------------------------------------------------------
# worker (one method on one pair, in its own process)
# ---------------------------------------------------------------------------
def _t1_reference(t1, m1, p):
    """T1 segmentation at the radiologist's point: centroid, volume, mean HU."""
    import SimpleITK as sitk

    from nodulegrowth.propagate import _crop_array
    from nodulegrowth.segment import segment_nodule

    roi, lo = _crop_array(t1, p, 40.0)
    vol = sitk.GetArrayFromImage(roi)
    sp = roi.GetSpacing()[::-1]
    lung = sitk.GetArrayFromImage(sitk.RegionOfInterest(m1, roi.GetSize(), [int(v) for v in lo])) > 0
    seed = np.array(roi.TransformPhysicalPointToContinuousIndex([float(v) for v in p]))[::-1]
    seg = segment_nodule(vol, sp, seed, lung_mask=lung)
    c = np.argwhere(seg.mask).mean(0)[::-1]
    center = np.array(roi.TransformContinuousIndexToPhysicalPoint([float(v) for v in c]))
    return center, float(seg.mask.sum() * np.prod(sp)), float(vol[seg.mask].mean())


def _baseline_register(t1, t2, threads):
    import itk

    from nodulegrowth.register import sitk_to_itk

    po = itk.ParameterObject.New()
    for name in ("rigid", "affine", "bspline"):
        pm = po.GetDefaultParameterMap(name)
        pm["RandomSeed"] = ["20261125"]
        if threads:
            pm["MaximumNumberOfThreads"] = [str(threads)]
        po.AddParameterMap(pm)
    f = sitk_to_itk(t1)
    m = sitk_to_itk(t2)
    method = itk.ElastixRegistrationMethod.New(f, m)
    method.SetParameterObject(po)
    method.SetLogToConsole(False)
    method.Update()
    tr = method.GetCombinationTransform()

    def mp(p):
        return np.array(tr.TransformPoint([float(v) for v in p]))

    return mp


def worker(method: str, pair_dir: Path, threads: int | None) -> dict:
    import pandas as pd

    t_warm = time.perf_counter()
    import itk  # noqa: F401

    itk.ElastixRegistrationMethod  # force the lazy load of elastix's classes
    itk.ParameterObject.New()
    warmup = time.perf_counter() - t_warm
    ru = resource.getrusage(resource.RUSAGE_SELF)
    cpu_warm = ru.ru_utime + ru.ru_stime

    import SimpleITK as sitk

    from nodulegrowth.lung import lung_masks
    from nodulegrowth.propagate import propagate_point, reidentify
    from nodulegrowth.register import register_pair

    truth = pd.read_csv(pair_dir / "truth.csv")
    t0 = time.perf_counter()
    t1 = sitk.ReadImage(str(pair_dir / "T1.mha"), sitk.sitkFloat32)
    t2 = sitk.ReadImage(str(pair_dir / "T2.mha"), sitk.sitkFloat32)
    t_read = time.perf_counter() - t0
    m1, m2 = lung_masks([t1, t2], max_workers=threads or 2)  # as the pipeline does
    t_mask = time.perf_counter() - t0 - t_read
    qc = {}
    if method == "ours":
        reg = register_pair(t1, t2, fixed_mask=m1, moving_mask=m2, number_of_threads=threads)
        qc = {k: v for k, v in reg.qc.items() if isinstance(v, float)}
        qc["flags"] = list(reg.flags)
    else:
        mapper = _baseline_register(t1, t2, threads)
    t_reg = time.perf_counter() - t0 - t_read - t_mask
    rows = []
    for _, r in truth.iterrows():
        p = np.array([r.t1_x, r.t1_y, r.t1_z])
        q = np.array([r.t2_x, r.t2_y, r.t2_z])
        try:
            c1, v1, h1 = _t1_reference(t1, m1, p)
        except Exception as exc:  # noqa: BLE001 - recorded, not fatal
            rows.append(dict(nodule_id=int(r.nodule_id), error=f"T1 segmentation: {exc}"))
            continue
        if method == "ours":
            pp = propagate_point(reg, t1, t2, c1)
            mapped, flags = pp.point_xyz, list(pp.flags)
            glob = pp.global_xyz
        else:
            mapped = glob = mapper(c1)
            flags = []
        ri = reidentify(t2, mapped, reference_volume_mm3=v1, reference_hu=h1, lung_mask=m2)
        center = ri.center_xyz if ri.found else mapped
        err = float(np.linalg.norm(center - q))
        rows.append(dict(
            nodule_id=int(r.nodule_id), kind=r.kind, location=r.location, shape=r["shape"],
            d_mm=float((6 * r.t2_volume_mm3 / np.pi) ** (1 / 3)),
            t1_center_err=float(np.linalg.norm(c1 - p)),
            global_err=float(np.linalg.norm(glob - q)),
            mapped_err=float(np.linalg.norm(mapped - q)),
            err=err, found=bool(ri.found),
            inside=bool(ri.found and err < 0.5 * float(r.t2_short_axis_mm)),
            flags=flags + list(ri.flags),
        ))
    total = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return dict(method=method, pair=pair_dir.name, warmup_s=warmup, read_s=t_read, masks_s=t_mask,
                register_s=t_reg, total_s=total, cpu_s=ru.ru_utime + ru.ru_stime - cpu_warm,
                maxrss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
                qc=qc, nodules=rows)


# ---------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------
def run_worker(method: str, pair_dir: Path, threads: int | None) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, "--pair-dir", str(pair_dir)]
    if threads:
        cmd += ["--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return dict(method=method, pair=pair_dir.name, failed=out.stderr.strip().splitlines()[-1:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarize(results: list[dict], method: str) -> dict | None:
    rs = [r for r in results if r["method"] == method and "failed" not in r]
    if not rs:
        return None
    nods = [n for r in rs for n in r["nodules"] if "err" in n]
    errs = np.array([n["err"] for n in nods])
    mapped = np.array([n["mapped_err"] for n in nods])
    return dict(
        n_pairs=len(rs), n_nodules=len(nods),
        n_failed_t1=sum(1 for r in rs for n in r["nodules"] if "err" not in n),
        median=float(np.median(errs)), p90=float(np.percentile(errs, 90)), max=float(errs.max()),
        mapped_median=float(np.median(mapped)), mapped_p90=float(np.percentile(mapped, 90)),
        mapped_max=float(mapped.max()),
        reid_rate=float(np.mean([n["inside"] for n in nods])),
        found_rate=float(np.mean([n["found"] for n in nods])),
        time_mean=float(np.mean([r["total_s"] for r in rs])),
        time_max=float(np.max([r["total_s"] for r in rs])),
        cpu_mean=float(np.mean([r["cpu_s"] for r in rs])),
        warmup_mean=float(np.mean([r["warmup_s"] for r in rs])),
        maxrss_max=float(np.max([r["maxrss_gib"] for r in rs])),
    )


def print_pair(r: dict) -> None:
    if "failed" in r:
        print(f"{r['pair']:10s} {r['method']:8s} FAILED: {r['failed']}", flush=True)
        return
    nods = [n for n in r["nodules"] if "err" in n]
    e = np.array([n["err"] for n in nods]) if nods else np.array([np.nan])
    print(f"{r['pair']:10s} {r['method']:8s} time {r['total_s']:6.1f} s (read {r['read_s']:.1f}, masks "
          f"{r['masks_s']:.1f}, reg {r['register_s']:.1f}; itk warm-up {r['warmup_s']:.1f} s not incl.; "
          f"CPU {r['cpu_s']:.0f} s) "
          f"peak {r['maxrss_gib']:.2f} GiB | err median {np.median(e):.2f} max {np.max(e):.2f} mm | "
          f"re-id {sum(n['inside'] for n in nods)}/{len(r['nodules'])} {r.get('qc', {})}", flush=True)
    for n in r["nodules"]:
        if "err" not in n:
            print(f"    nodule {n['nodule_id']}: {n['error']}")
            continue
        print(f"    {n['kind']:12s} {n['location']:13s} {n['shape']:9s} d2={n['d_mm']:5.1f} "
              f"t1c {n['t1_center_err']:.2f} global {n['global_err']:.2f} mapped {n['mapped_err']:.2f} "
              f"final {n['err']:.2f} mm found={n['found']} inside={n['inside']} {';'.join(n['flags'])}",
              flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=8, help="number of phantom pairs (default 8)")
    ap.add_argument("--preset", default="full", choices=("full", "small"))
    ap.add_argument("--no-baseline", action="store_true", help="skip elastix's default maps")
    ap.add_argument("--baseline-pairs", type=int, default=None,
                    help="run the baseline on the first N pairs only (default: all)")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/nodulegrowth_regbench"),
                    help="folder for the generated pairs (reused between runs)")
    ap.add_argument("--threads", type=int, default=None, help="elastix thread cap")
    ap.add_argument("--json", type=Path, default=None, help="also write all results to this file")
    ap.add_argument("--worker", choices=("ours", "baseline"), help=argparse.SUPPRESS)
    ap.add_argument("--pair-dir", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.worker, a.pair_dir, a.threads)))
        return 0
    methods = ["ours"] + ([] if a.no_baseline else ["baseline"])
    n_base = a.pairs if a.baseline_pairs is None else min(a.baseline_pairs, a.pairs)
    results = []
    dirs = []
    for i in range(a.pairs):
        t = time.perf_counter()
        dirs.append(ensure_pair(a.cache, a.preset, i))
        print(f"pair {dirs[-1].name} ready ({time.perf_counter() - t:.0f} s)", flush=True)
    # our method on every pair first, then the (slow) baseline, so that a
    # run cut short still has our figures on all pairs
    jobs = [("ours", d) for d in dirs] + ([("baseline", d) for d in dirs[:n_base]]
                                          if "baseline" in methods else [])
    for m, d in jobs:
        r = run_worker(m, d, a.threads)
        results.append(r)
        print_pair(r)
        if a.json:
            a.json.write_text(json.dumps(results, indent=1))
    print("\n== totals ==")
    sums = {m: summarize(results, m) for m in methods}
    for m, s in sums.items():
        if s is None:
            print(f"{m}: no successful run")
            continue
        print(f"{m}: {s['n_pairs']} pairs, {s['n_nodules']} nodules ({s['n_failed_t1']} T1 segmentation failures)\n"
              f"  T2 centre error median {s['median']:.2f} / p90 {s['p90']:.2f} / max {s['max']:.2f} mm "
              f"(mapped point before re-identification: {s['mapped_median']:.2f} / {s['mapped_p90']:.2f} / "
              f"{s['mapped_max']:.2f} mm)\n"
              f"  re-identified {100 * s['reid_rate']:.1f} % (found {100 * s['found_rate']:.1f} %)\n"
              f"  time per pair mean {s['time_mean']:.1f} s, max {s['time_max']:.1f} s, CPU {s['cpu_mean']:.0f} s "
              f"(+ itk warm-up {s['warmup_mean']:.1f} s once per process); peak memory {s['maxrss_max']:.2f} GiB")
    if sums.get("ours") and sums.get("baseline"):
        # ratio on the pairs both methods ran on
        done = {r["pair"] for r in results if r["method"] == "baseline" and "failed" not in r}
        common = [r for r in results if r["pair"] in done and "failed" not in r]
        so = summarize([r for r in common if r["method"] == "ours"], "ours")
        sb = summarize([r for r in common if r["method"] == "baseline"], "baseline")
        if so and sb:
            print(f"on the {len(done)} pairs run by both: speed-up ours vs baseline {sb['time_mean'] / so['time_mean']:.1f}x "
                  f"wall ({sb['cpu_mean'] / so['cpu_mean']:.1f}x CPU); peak memory {so['maxrss_max']:.2f} vs "
                  f"{sb['maxrss_max']:.2f} GiB; error median {so['median']:.2f} vs {sb['median']:.2f} mm")
    if a.json:
        a.json.write_text(json.dumps(dict(results=results, summary=sums), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
