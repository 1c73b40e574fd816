"""mask_sky, subtract_sky and detect_array without their full-size copies: the same results
as before, bit for bit, and temporaries bounded (numpy's buffers traced by tracemalloc)."""

import tracemalloc
import warnings

import numpy as np
import pytest
from astropy.stats import sigma_clipped_stats
from photutils.background import Background2D, BkgZoomInterpolator, MedianBackground
from photutils.segmentation import detect_sources
from scipy import ndimage

from gsaoi_watch.instrument.dq import DQ, FAIL_BITS
from gsaoi_watch.reduction import detect, sky
from gsaoi_watch.reduction.container import Array
from gsaoi_watch.reduction.detect import source_table


# --- the steps as they were (the reference) -----------------------------------------------------
def reference_mask_sky(a, *, mask_objects=True, dilation=6.0):
    dq = a.need("dq").copy()
    if mask_objects and a.objmask is not None:
        dq[sky.dilate_mask(a.objmask.astype(bool), dilation)] |= DQ["cosmic_ray"]
    out = a.with_(dq=dq, objmask=None)
    return out, sky.measure_background(out.sci, sky._usable(out))


def reference_subtract_sky(obj, sk, *, offset_sky=True):
    good = sky._usable(obj) & ((sk.dq & FAIL_BITS) == 0)
    diff = obj.sci - sk.sci
    var = obj.var + sk.var
    factor = 0.0
    if offset_sky:
        factor = sky.measure_background(diff, good)
        diff = diff - np.float32(factor)
    return obj.with_(sci=diff.astype(np.float32), var=var.astype(np.float32),
                     dq=obj.dq | (sk.dq & DQ["no_data"])), float(factor)


def reference_detect_array(arr, *, detect_thresh=1.5, detect_minarea=20, back_size=256,
                           back_filtersize=5, smooth_fwhm=3.0):
    sci = arr.sci.astype(np.float32)
    mask = (arr.dq & (FAIL_BITS | DQ["unilluminated"])) != 0
    ny, nx = sci.shape
    box = int(max(16, min(back_size, ny // 4, nx // 4)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        background = Background2D(sci, box, mask=mask | ~np.isfinite(sci),
                                  filter_size=back_filtersize,
                                  bkg_estimator=MedianBackground(),
                                  interpolator=BkgZoomInterpolator(order=1)).background
    data = sci - np.asarray(background, dtype=np.float32)
    data[mask] = 0.0
    smooth = ndimage.gaussian_filter(data, smooth_fwhm / 2.3548)
    _, _, noise = sigma_clipped_stats(smooth[~mask][::7], sigma=3.0, maxiters=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        segm = detect_sources(smooth, detect_thresh * noise, detect_minarea, mask=mask)
    error = np.sqrt(np.maximum(arr.var, 0))
    return (arr.with_(objmask=(segm.data > 0).astype(np.uint8)),
            source_table(data, smooth, segm.data, error,
                         background=np.asarray(background, dtype=np.float32), dq=arr.dq))


# --- a scene -------------------------------------------------------------------------------------
def scene(size=256, seed=7, level=3000.0):
    """Stars on a sky with noise, bad pixels and a NaN; and a second sky frame."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    truth = np.zeros((size, size), np.float32)
    for x, y, f in zip(rng.uniform(10, size - 10, 40), rng.uniform(10, size - 10, 40),
                       rng.uniform(2e3, 5e4, 40)):
        truth += (f / (2 * np.pi * 2.0**2) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2)
                                                     / (2 * 2.0**2))).astype(np.float32)

    def frame(k):
        sci = (level + 5 * k + truth + rng.normal(0, 30, (size, size))).astype(np.float32)
        var = np.full((size, size), 900.0, np.float32) + np.maximum(truth, 0) / 10
        var[3, 4] = -1.0  # a negative variance: no error there
        dq = np.zeros((size, size), np.uint16)
        dq[rng.random((size, size)) < 0.01] = DQ["bad_pixel"]
        dq[:, :6] |= DQ["unilluminated"]
        sci[5, 5] = np.nan
        dq[5, 5] |= DQ["bad_pixel"]
        return Array(sci, var, dq, {"EXTVER": 1})

    return frame(0), frame(1), truth


def assert_same_array(got, want):
    for plane in ("sci", "var", "dq", "objmask"):
        x, y = getattr(got, plane), getattr(want, plane)
        assert (x is None) == (y is None), plane
        if y is not None:
            assert x.dtype == y.dtype and np.array_equal(x.view(np.uint8), y.view(np.uint8)), \
                plane


def read_only(a):
    for plane in ("sci", "var", "dq", "objmask"):
        value = getattr(a, plane)
        if value is not None:
            value.flags.writeable = False
    return a


def test_detect_array_gives_the_same_mask_and_catalogue():
    obj, _, truth = scene()
    got, table = detect.detect_array(read_only(obj))
    want, ref = reference_detect_array(obj)
    assert_same_array(got, want)
    assert len(ref) >= 30 and table.colnames == ref.colnames
    for c in ref.colnames:
        assert np.array_equal(table[c], ref[c], equal_nan=True), c
    assert np.isfinite(table["FLUXERR_AUTO"]).all()


@pytest.mark.parametrize("mask_objects", [True, False])
def test_mask_sky_gives_the_same_dq_and_level(mask_objects):
    a, _, truth = scene()
    a = read_only(a.with_(objmask=(truth > 50).astype(np.uint8)))
    got, level = sky.mask_sky(a, mask_objects=mask_objects, dilation=3.0)
    want, ref_level = reference_mask_sky(a, mask_objects=mask_objects, dilation=3.0)
    assert_same_array(got, want)
    assert level == ref_level
    assert (got.dq is a.dq) == (not mask_objects)  # nothing to flag: the DQ plane is shared
    assert ((got.dq & DQ["cosmic_ray"]) != 0).sum() > (truth > 50).sum() or not mask_objects


@pytest.mark.parametrize("offset_sky", [True, False])
def test_subtract_sky_gives_the_same_result(offset_sky):
    obj, other, _ = scene()
    got, factor = sky.subtract_sky(read_only(obj), read_only(other), offset_sky=offset_sky)
    want, ref_factor = reference_subtract_sky(obj, other, offset_sky=offset_sky)
    assert_same_array(got, want)
    assert factor == ref_factor


def _traced_peak(fn):
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_subtract_sky_and_mask_sky_make_no_extra_full_size_copies():
    """subtract_sky's peak is its result (sci, var: 4 bytes each; dq: 2) and the pixels
    used (1 byte), with the measurement's sample; mask_sky without objects copies nothing
    but the pixels used for the level."""
    obj, other, truth = scene(size=512)
    pixel = obj.sci.size
    peak = _traced_peak(lambda: sky.subtract_sky(obj, other))
    assert peak < 14.5 * pixel, peak / pixel  # was 22 bytes a pixel (two copies)
    peak = _traced_peak(lambda: sky.mask_sky(obj, mask_objects=False))
    assert peak < 4.5 * pixel, peak / pixel  # was 6.3 (a copy of DQ)
