"""detect.py's fast paths compute what the library calls they replace compute.

The vectorised source table measures what photutils' SourceCatalog measures; the block
background is photutils' Background2D, the strip-wise smoothing scipy's gaussian_filter,
the sorted sigma clipping astropy's sigma_clipped_stats, the segment finder photutils'
detect_sources, the disc dilation scipy's binary_dilation; and detect_array as a whole
gives the object mask and catalogue of the library pipeline it replaced.
"""

import math
import warnings

import numpy as np
import pytest
from astropy.stats import sigma_clipped_stats
from photutils.background import Background2D, BkgZoomInterpolator, MedianBackground
from photutils.segmentation import SegmentationImage, SourceCatalog, detect_sources
from scipy import ndimage

from gsaoi_watch.data.headers import Header
from gsaoi_watch.instrument.dq import DQ, FAIL_BITS
from gsaoi_watch.reduction.container import Array
from gsaoi_watch.reduction.detect import (
    block_background,
    clipped_median,
    clipped_stats,
    detect_array,
    find_segments,
    smooth_gaussian,
    source_table,
)
from gsaoi_watch.reduction.sky import (
    dilate_mask,
    mask_sky,
    measure_background,
    sky_level,
    subtract_sky,
)

#: tolerance of the fast paths against the libraries (they agree to float32 rounding)
RTOL = 1e-6


def _scene(seed=4, n=60, shape=(300, 400)):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    data = rng.normal(0.0, 1.0, shape)
    truth = []
    for _ in range(n):
        x, y = rng.uniform(10, shape[1] - 10), rng.uniform(10, shape[0] - 10)
        sx, sy = rng.uniform(1.0, 3.0), rng.uniform(1.0, 3.0)
        flux = rng.uniform(50, 3000)
        data += flux / (2 * np.pi * sx * sy) * np.exp(-0.5 * (((xx - x) / sx) ** 2
                                                             + ((yy - y) / sy) ** 2))
        truth.append((x, y, sx, sy))
    data[5:8, 40:60] = 0.0  # a thin, flat segment edge case
    smooth = ndimage.gaussian_filter(data, 3.0 / 2.3548)
    return data, smooth


def test_source_table_matches_photutils():
    data, smooth = _scene()
    error = np.full(data.shape, 1.0)
    segm = detect_sources(smooth, 1.5 * smooth[:50, :].std(), 5)
    table = source_table(data, smooth, segm.data, error)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cat = SourceCatalog(data, SegmentationImage(segm.data), convolved_data=smooth,
                            error=error)
        ellipticity = np.asarray(getattr(cat.ellipticity, "value", cat.ellipticity))
        area = np.asarray(getattr(cat.area, "value", cat.area))
        new = hasattr(SourceCatalog, "x_centroid")  # photutils >= 3 names
        xc = np.asarray(cat.x_centroid if new else cat.xcentroid)
        yc = np.asarray(cat.y_centroid if new else cat.ycentroid)
    assert len(table) == len(cat.label) > 20
    np.testing.assert_array_equal(table["NUMBER"], cat.label)
    np.testing.assert_allclose(table["X_IMAGE"], xc + 1.0, atol=1e-8)
    np.testing.assert_allclose(table["Y_IMAGE"], yc + 1.0, atol=1e-8)
    np.testing.assert_allclose(table["FLUX_AUTO"], cat.segment_flux, rtol=1e-10, atol=1e-8)
    np.testing.assert_allclose(table["FLUXERR_AUTO"], cat.segment_flux_err, rtol=1e-6)
    np.testing.assert_allclose(table["ELLIPTICITY"], ellipticity, atol=1e-8)
    np.testing.assert_allclose(table["FLUX_MAX"], cat.max_value, rtol=1e-12)
    np.testing.assert_array_equal(table["ISOAREA_IMAGE"], area)


def test_half_maximum_fwhm_of_a_gaussian():
    yy, xx = np.mgrid[:101, :101]
    sigma = 3.0
    data = 1000.0 * np.exp(-0.5 * ((xx - 50.3) ** 2 + (yy - 49.8) ** 2) / sigma**2)
    labels = (data > 1.0).astype(int)
    table = source_table(data, data, labels)
    assert abs(table["FWHM_IMAGE"][0] / (2.3548 * sigma) - 1) < 0.03
    assert abs(table["X_IMAGE"][0] - 51.3) < 1e-3 and abs(table["Y_IMAGE"][0] - 50.8) < 1e-3
    assert table["ELLIPTICITY"][0] < 1e-3


def _sky_array(seed=7, shape=(512, 512), n=80, masked=True):
    """A sky-subtracted-looking array: noise, a gradient, sources, bad pixels, a NaN."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    yy, xx = np.mgrid[:ny, :nx]
    sci = rng.normal(0.0, 30.0, shape) + 5.0 * (xx / nx) - 3.0 * (yy / ny) ** 2
    for _ in range(n):
        x, y = rng.uniform(0, nx), rng.uniform(0, ny)
        s = rng.uniform(1.0, 4.0)
        sci += rng.uniform(200, 2e5) / (2 * np.pi * s * s) * np.exp(
            -0.5 * ((xx - x) ** 2 + (yy - y) ** 2) / s**2)
    dq = np.zeros(shape, np.uint16)
    if masked:
        dq[rng.random(shape) < 0.01] = DQ["bad_pixel"]
        dq[: ny // 5, : nx // 5] = DQ["unilluminated"]  # a box with too few pixels
        dq[ny // 2, :] |= DQ["saturated"]
    sci = sci.astype(np.float32)
    sci[3, 5] = np.nan
    var = np.full(shape, 900.0, np.float32)
    return Array(sci, var, dq, Header())


def _library_background(sci, bad, box, filter_size=5):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Background2D(sci, box, mask=bad, filter_size=filter_size,
                            bkg_estimator=MedianBackground(),
                            interpolator=BkgZoomInterpolator(order=1)).background


@pytest.mark.parametrize("shape, box", [((512, 512), 128), ((256, 384), 64), ((128, 128), 32)])
def test_block_background_is_background2d(shape, box):
    arr = _sky_array(shape=shape)
    bad = ((arr.dq & (FAIL_BITS | DQ["unilluminated"])) != 0) | ~np.isfinite(arr.sci)
    ours = block_background(arr.sci, bad, box)
    ref = _library_background(arr.sci, bad, box)
    assert ours.dtype == np.float32 and ours.shape == shape
    np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=RTOL * np.abs(ref).max())


def test_block_background_edge_cases():
    arr = _sky_array(shape=(256, 256), masked=False)
    bad = ~np.isfinite(arr.sci)
    assert block_background(arr.sci, bad, 100) is None  # partial boxes: Background2D's job
    flat = np.full((128, 128), 3.5, np.float32)  # one value: photutils returns it as is
    np.testing.assert_array_equal(block_background(flat, np.zeros(flat.shape, bool), 32),
                                  _library_background(flat, np.zeros(flat.shape, bool), 32))
    with pytest.raises(ValueError):
        block_background(arr.sci, np.ones(arr.shape, bool), 64)
    for data, box in ((arr.sci.copy(), 64), (arr.sci[:64].copy(), 64), (flat[:32, :32], 32)):
        before = data.copy()  # one row or one box of boxes: the input is never changed
        block_background(data, ~np.isfinite(data), box)
        np.testing.assert_array_equal(data, before)
    sci = arr.sci.copy()
    sci[10, 20], sci[200, 7] = np.inf, -np.inf  # not in the mask: ignored, as photutils does
    np.testing.assert_allclose(block_background(sci, bad, 64), _library_background(sci, bad, 64),
                               rtol=RTOL, atol=RTOL * 40)
    no_filter = block_background(arr.sci, bad, 64, filter_size=1)
    np.testing.assert_allclose(no_filter, _library_background(arr.sci, bad, 64, 1),
                               rtol=RTOL, atol=RTOL * np.abs(no_filter).max())


@pytest.mark.parametrize("shape, sigma", [((200, 300), 3.0 / 2.3548), ((67, 45), 2.0),
                                          ((40, 512), 0.8)])
def test_smooth_gaussian_is_gaussian_filter(shape, sigma):
    data = _sky_array(shape=shape, n=10, masked=False).sci
    data[3, 5] = 0.0
    ref = ndimage.gaussian_filter(data, sigma)
    ours = smooth_gaussian(data, sigma)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=RTOL * np.abs(ref).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("maxiters", [5, 10])
def test_clipped_stats_is_sigma_clipped_stats(dtype, maxiters):
    rng = np.random.default_rng(11)
    for values in (rng.normal(100.0, 5.0, 20001),
                   np.concatenate([rng.normal(0.0, 1.0, 5000), rng.uniform(3, 400, 300)]),
                   rng.standard_cauchy(4000) + 1e4,  # heavy tails far from zero
                   np.array([1.0, 2.0, 2.0, 2.0, 50.0]),
                   np.full(10, 7.25)):
        values = values.astype(dtype)
        values[::97] = np.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = sigma_clipped_stats(values, sigma=3.0, maxiters=maxiters)
        ours = clipped_stats(values, sigma=3.0, maxiters=maxiters)
        np.testing.assert_allclose(ours, np.asarray(ref, float), rtol=RTOL, atol=1e-12)
        assert clipped_median(values, maxiters=maxiters) == ours[1]
    assert all(math.isnan(v) for v in clipped_stats(np.full(5, np.nan, np.float32)))
    assert math.isnan(clipped_median(np.array([np.inf, np.nan])))


def test_find_segments_is_detect_sources():
    data, smooth = _scene()
    mask = np.zeros(data.shape, bool)
    mask[100:140, 50:300] = True
    threshold = 1.5 * smooth[:50, :].std()
    for m in (None, mask):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = detect_sources(smooth, threshold, 20, mask=m)
        np.testing.assert_array_equal(find_segments(smooth, threshold, 20, mask=m), ref.data)
    assert find_segments(smooth, smooth.max() + 1, 20) is None
    assert find_segments(smooth, threshold, data.size) is None


def _library_detect(arr, detect_thresh=1.5, detect_minarea=20, box=256, smooth_fwhm=3.0):
    """detect_array as it was written with the library calls (Background2D etc.)."""
    sci = arr.sci.astype(np.float32)
    mask = (arr.dq & (FAIL_BITS | DQ["unilluminated"])) != 0
    ny, nx = sci.shape
    box = int(max(16, min(box, ny // 4, nx // 4)))
    background = _library_background(sci, mask | ~np.isfinite(sci), box)
    data = sci - background
    data[mask] = 0.0
    smooth = ndimage.gaussian_filter(data, smooth_fwhm / 2.3548)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, _, noise = sigma_clipped_stats(smooth[~mask][::7], sigma=3.0, maxiters=5)
        segm = detect_sources(smooth, detect_thresh * noise, detect_minarea, mask=mask)
    table = source_table(data, smooth, segm.data, np.sqrt(arr.var), background=background,
                         dq=arr.dq)
    return (segm.data > 0).astype(np.uint8), table


@pytest.mark.parametrize("shape", [(512, 512), (300, 260)])  # boxes tile / do not tile
def test_detect_array_matches_the_library_pipeline(shape):
    arr = _sky_array(seed=3, shape=shape)
    objmask, table = _library_detect(arr)
    ours, cat = detect_array(arr)
    assert len(cat) == len(table) > 10
    # the same pixels above the same threshold: only a pixel within float32 rounding of
    # it could differ
    assert np.count_nonzero(ours.objmask != objmask) <= 2
    for name in table.colnames:
        np.testing.assert_allclose(cat[name], table[name], rtol=1e-5, atol=1e-6)
    masked, none = detect_array(arr, catalog=False)
    np.testing.assert_array_equal(masked.objmask, ours.objmask)
    assert none is None


def _disc(radius):
    r = int(math.ceil(radius))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return (xx**2 + yy**2) <= radius**2


@pytest.mark.parametrize("radius", [0.5, 1.0, 1.5, 2.5, 6.0, 7.3])
def test_dilate_mask_is_binary_dilation(radius):
    rng = np.random.default_rng(5)
    for shape in ((64, 90), (13, 9), (4, 40), (2, 2)):
        mask = rng.random(shape) < 0.03
        mask[0, 0] = mask[-1, -1] = True
        np.testing.assert_array_equal(
            dilate_mask(mask, radius), ndimage.binary_dilation(mask, structure=_disc(radius)))
    assert dilate_mask(None, 6.0) is None
    assert dilate_mask(mask, 0.0) is mask


def test_sky_levels_are_clipped_medians():
    arr = _sky_array(seed=9, shape=(256, 256))
    sci = arr.sci + np.float32(1000.0)
    objmask = (sci > 1100).astype(np.uint8)
    sky = arr.with_(sci=sci, objmask=objmask)
    good = ((arr.dq & FAIL_BITS) == 0) & (objmask == 0)

    def reference(values, good):
        values = values.ravel()[::10][good.ravel()[::10]]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(sigma_clipped_stats(values, sigma=3.0, maxiters=10)[1])

    assert measure_background(sci, good) == pytest.approx(reference(sci, good), rel=RTOL)
    assert sky_level(sky) == pytest.approx(reference(sci, good), rel=RTOL)
    masked, level = mask_sky(sky, dilation=2.0)
    grown = ndimage.binary_dilation(objmask.astype(bool), structure=_disc(2.0))
    np.testing.assert_array_equal(masked.dq, arr.dq | np.where(grown, DQ["cosmic_ray"], 0))
    assert masked.objmask is None
    assert level == pytest.approx(reference(sci, (masked.dq & FAIL_BITS) == 0), rel=RTOL)
    other = _sky_array(seed=10, shape=(256, 256))
    other = other.with_(sci=other.sci + np.float32(990.0))
    sub, offset = subtract_sky(sky, other)
    both = good & ((other.dq & FAIL_BITS) == 0)
    assert offset == pytest.approx(reference(sci - other.sci, both), rel=RTOL)
    np.testing.assert_array_equal(sub.sci, (sci - other.sci) - np.float32(offset))
    np.testing.assert_array_equal(sub.var, arr.var + other.var)
    np.testing.assert_array_equal(sub.dq, arr.dq | (other.dq & DQ["no_data"]))
    assert sub.sci.dtype == sub.var.dtype == np.float32
