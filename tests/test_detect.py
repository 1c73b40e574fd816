"""The vectorised source table measures what photutils' SourceCatalog measures."""

import warnings

import numpy as np
from photutils.segmentation import SegmentationImage, SourceCatalog, detect_sources
from scipy import ndimage

from gsaoi_watch.reduction.detect import source_table


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
    np.testing.assert_array_equal(table["number"], cat.label)
    np.testing.assert_allclose(table["x"], xc + 1.0, atol=1e-8)
    np.testing.assert_allclose(table["y"], yc + 1.0, atol=1e-8)
    np.testing.assert_allclose(table["flux"], cat.segment_flux, rtol=1e-10, atol=1e-8)
    np.testing.assert_allclose(table["flux_err"], cat.segment_flux_err, rtol=1e-6)
    np.testing.assert_allclose(table["ellipticity"], ellipticity, atol=1e-8)
    np.testing.assert_allclose(table["peak"], cat.max_value, rtol=1e-12)
    np.testing.assert_array_equal(table["area"], area)


def test_half_maximum_fwhm_of_a_gaussian():
    yy, xx = np.mgrid[:101, :101]
    sigma = 3.0
    data = 1000.0 * np.exp(-0.5 * ((xx - 50.3) ** 2 + (yy - 49.8) ** 2) / sigma**2)
    labels = (data > 1.0).astype(int)
    table = source_table(data, data, labels)
    assert abs(table["fwhm"][0] / (2.3548 * sigma) - 1) < 0.03
    assert abs(table["x"][0] - 51.3) < 1e-3 and abs(table["y"][0] - 50.8) < 1e-3
    assert table["ellipticity"][0] < 1e-3
