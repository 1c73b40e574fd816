"""Benchmark: the science steps one at a time, on one full-size array of a simulated night.

Run:  python benchmarks/bench_steps.py [--data DIR] [--repeat N] [--array I]

Object frame S20170505S0097 and its six skies are prepared and flat-corrected; each sky
gets its object mask as in the first sky pass (the other skies combined, subtracted,
detected).  Then, on array I (default 0), each step of the second pass is timed ``--repeat``
times (the best and the median wall times and the best CPU time are printed, in
seconds, single-threaded; on a machine shared with other jobs the CPU time is the steadier
number):
``mask_sky`` (dilation + level), ``dilate_mask`` (radius 6), ``sky_level``, ``combine_skies``
of the six masked skies, ``subtract_sky`` and ``detect_array`` (with and without the
catalogue), and, for comparison, the library calls the fast paths replace
(``photutils.background.Background2D`` and ``scipy.ndimage.binary_dilation``) where the
module still has them.  DIR (default /work/cache/night2048) is simulated first if it holds
no night.
"""

import argparse
import json
import math
import statistics
import time
import warnings

import numpy as np
from night_cache import bpm_file, ensure_flat, ensure_night, science_files

OBJECT = "S20170505S0097.fits"


def _timeit(fn, repeat):
    times, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"best": round(min(times), 4), "median": round(statistics.median(times), 4),
            "cpu_best": round(min(cpu), 4)}


def prepare(data, index):
    """(object array, [six sky arrays with object masks]) for array ``index``."""
    from gsaoi_watch.data.fitsio import load_bpm, load_frame, read_frame_info
    from gsaoi_watch.reduction import recipes
    from gsaoi_watch.reduction.detect import detect_array
    from gsaoi_watch.reduction.sky import combine_skies, mask_sky, subtract_sky
    files = science_files(data)
    plan = recipes.plan_sky([read_frame_info(f) for f in files], recipes.merge_parameters())
    by_name = {f.name: f for f in files}
    flat_path = ensure_flat(data)
    flat, bpm = load_frame(flat_path), load_bpm(bpm_file(data))

    def load(name):
        frame = recipes.preprocess(load_frame(by_name[name]), bpm=bpm)
        return recipes.flat_correct(frame, flat, flat_name=flat_path.name).arrays[index]

    sky_names = plan["obj_skies"][OBJECT]
    skies = {n: load(n) for n in sky_names}
    unmasked = {n: mask_sky(a, mask_objects=False) for n, a in skies.items()}
    for n in sky_names:
        others = [unmasked[k] for k in sky_names if k != n]
        sky, _ = combine_skies(others)
        sub, _ = subtract_sky(skies[n], sky)
        skies[n] = skies[n].with_(objmask=detect_array(sub, catalog=False)[0].objmask)
    return load(OBJECT), [skies[n] for n in sky_names]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/work/cache/night2048")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--array", type=int, default=0)
    args = parser.parse_args()
    from gsaoi_watch.reduction import detect, sky
    data = ensure_night(args.data)
    obj, skies = prepare(data, args.array)
    r = args.repeat
    masked = [sky.mask_sky(s) for s in skies]
    stacked, _ = sky.combine_skies(masked)
    sub, _ = sky.subtract_sky(obj, stacked)
    det, cat = detect.detect_array(sub)
    mask = skies[0].objmask.astype(bool)
    with_mask = obj.with_(objmask=det.objmask)
    result = {"shape": list(obj.shape), "skies": len(skies), "sources": len(cat),
              "objmask_fraction": round(float(det.objmask.mean()), 4), "steps_s": {}}
    steps = result["steps_s"]
    steps["mask_sky"] = _timeit(lambda: sky.mask_sky(skies[0]), r)
    steps["dilate_mask_r6"] = _timeit(lambda: sky.dilate_mask(mask, 6.0), r)
    steps["sky_level"] = _timeit(lambda: sky.sky_level(with_mask), r)
    steps["combine_skies_6"] = _timeit(lambda: sky.combine_skies(masked), r)
    steps["subtract_sky"] = _timeit(lambda: sky.subtract_sky(obj, stacked), r)
    steps["detect_array"] = _timeit(lambda: detect.detect_array(sub), r)
    steps["detect_array_no_catalog"] = _timeit(lambda: detect.detect_array(sub, catalog=False),
                                               r)
    # the library calls, for comparison
    from photutils.background import Background2D, BkgZoomInterpolator, MedianBackground
    from scipy import ndimage

    from gsaoi_watch.instrument.dq import DQ, FAIL_BITS
    sci = sub.sci
    bad = ((sub.dq & (FAIL_BITS | DQ["unilluminated"])) != 0) | ~np.isfinite(sci)

    def library_background():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Background2D(sci, 256, mask=bad, filter_size=5,
                                bkg_estimator=MedianBackground(),
                                interpolator=BkgZoomInterpolator(order=1)).background

    steps["library_Background2D"] = _timeit(library_background, r)
    rr = 6
    yy, xx = np.mgrid[-rr:rr + 1, -rr:rr + 1]
    disc = (xx**2 + yy**2) <= 36
    steps["library_binary_dilation_r6"] = _timeit(
        lambda: ndimage.binary_dilation(mask, structure=disc), r)
    steps["library_gaussian_filter"] = _timeit(
        lambda: ndimage.gaussian_filter(sci, 3.0 / 2.3548), r)
    if hasattr(detect, "block_background"):
        steps["block_background"] = _timeit(
            lambda: detect.block_background(sci, bad, 256, filter_size=5), r)
        steps["smooth_gaussian"] = _timeit(lambda: detect.smooth_gaussian(sci, 3.0 / 2.3548), r)
    result["dilation_check"] = bool(np.array_equal(
        sky.dilate_mask(mask, 6.0), ndimage.binary_dilation(mask, structure=disc)))
    result["note"] = f"objmask area of the sky: {math.fsum(mask.ravel()):.0f} px"
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
