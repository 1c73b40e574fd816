"""Absolute astrometry end to end: a full-size night whose arrays have moved off the static
distortion model, a Gaia-like catalogue of its field, and the stack measured against the
planted stars."""

import math

import numpy as np
import pytest
from astropy.io import fits
from test_stack import _measure, _star_stats

from gsaoi_watch.data.fitsio import load_bpm, load_frame, write_frame
from gsaoi_watch.pipeline.recipes import reduce_images
from gsaoi_watch.pipeline.stack_files import stack_files
from gsaoi_watch.reduction import stack
from gsaoi_watch.reduction.stack.astrometry import _array_centers, _relative_departures
from gsaoi_watch.reduction.stack.geometry import CORRECTION_SCALE, ArrayCorrection
from gsaoi_watch.sim import BPM_NAME, simulate_night
from gsaoi_watch.sim.geometry import GeometryPerturbation

pytestmark = pytest.mark.slow

SIZE = 2048
SEED = 41
#: Frames stacked (of the nine on-target frames): enough for the test, and faster.
N_FRAMES = 3


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """Science frames of a full-size night, the arrays 5-10 px and 0.15-0.3 degree off the
    static model; the science field's Gaia-like catalogue at epoch 2016.0."""
    out = tmp_path_factory.mktemp("moved_night")
    geometry = GeometryPerturbation.random(SEED, max_shift=10.0, max_rotation=0.3)
    truth = simulate_night(out, seed=SEED, size=SIZE, workers=2, only=["science", "bpm"],
                           geometry=geometry, refcat="gaia_dr3.fits",
                           max_frames=2 * N_FRAMES)
    # the first on-target frames and the skies between them (objects and skies alternate)
    sci = sorted(str(out / f["filename"]) for f in truth["frames"] if f["kind"] == "science")
    assert len(sci) == 2 * N_FRAMES
    red = out / "red"
    res = reduce_images(sci, flat=None, bpm=load_bpm(out / BPM_NAME), bpm_name=BPM_NAME,
                        params={"skyCorrect": {"offset_sky": False}},
                        on_product=lambda f: str(write_frame(f, red)))
    paths = sorted(res["sky_corrected"])
    assert len(paths) == N_FRAMES
    return out, truth, geometry, paths


@pytest.fixture(scope="module")
def stacks(night):
    out, truth, _, paths = night
    result = {}
    for label, ref in (("relative", None), ("absolute", out / "gaia_dr3.fits")):
        path, res = stack_files(paths, out / f"{label}.fits", reference_catalog=ref)
        result[label] = (path, res, _measure(path, truth))
    return result


def _residuals(m):
    """Bright, found stars: (dx, dy) stack minus truth (output pixels) and first-frame array."""
    sel = (m["snr"] > 30) & (np.hypot(m["x"] - m["tx"], m["y"] - m["ty"]) < 3.0)
    return m["x"][sel] - m["tx"][sel], m["y"][sel] - m["ty"][sel], m["array0"][sel]


def _peak_fwhm(sci, var, dq, *, min_snr=50.0):
    """Median FWHM (pixels) of the bright isolated stars of an image, found as its peaks."""
    from scipy import ndimage

    good = np.where(dq == 0, np.nan_to_num(sci), 0.0) if dq is not None else np.nan_to_num(sci)
    noise = float(np.sqrt(np.nanmedian(var))) if var is not None else float(np.std(good))
    peaks = (good == ndimage.maximum_filter(good, size=25)) & (good > 20 * noise)
    ys, xs = np.nonzero(peaks)
    ny, nx = sci.shape
    widths = []
    for y, x in zip(ys + 1.0, xs + 1.0):
        if 40 < x < nx - 40 and 40 < y < ny - 40 and not dq[int(y) - 33:int(y) + 32,
                                                         int(x) - 33:int(x) + 32].any():
            xc, yc, snr, fwhm = _star_stats(sci, var, x, y)
            if snr > min_snr:
                widths.append(fwhm)
    return float(np.nanmedian(widths)), len(widths)


def test_absolute_stack_matches_the_planted_stars_on_every_array(stacks):
    """< 0.2 output pixel (0.004") rms from the true positions, with no fit at all, on every
    array, while the relative stack of the same frames misses most stars by pixels."""
    m = stacks["absolute"][2]
    dx, dy, arrays = _residuals(m)
    assert len(dx) >= 0.9 * np.sum(m["snr"] > 30) and len(dx) >= 60
    # a centroid pulled by an unresolved neighbour or a knot of the galaxy is not an
    # astrometric error: residuals beyond 5 times the median (at most 5 % of the stars)
    # are left out of the rms
    r = np.hypot(dx, dy)
    typical = r <= 5.0 * np.median(r)
    assert typical.sum() >= 0.95 * len(r)
    for a in range(4):
        s = (arrays == a) & typical
        assert s.sum() >= 8, f"array {a + 1} has {s.sum()} stars"
        rms = float(np.sqrt(np.mean(dx[s] ** 2 + dy[s] ** 2)))
        mean = math.hypot(float(np.mean(dx[s])), float(np.mean(dy[s])))
        print(f"array {a + 1}: {s.sum()} stars, rms {rms:.3f} px, mean offset {mean:.3f} px")
        assert rms < 0.2, f"array {a + 1}: {rms:.3f} output pixels rms from the truth"
        assert mean < 0.1
    # the departures the catalogue removed: through the static model the same stars are
    # pixels away from the truth (the windowed centroid started at the truth loses them)
    rel = stacks["relative"][2]
    found = np.sum(np.isfinite(rel["x"]) & (np.hypot(rel["x"] - rel["tx"],
                                                     rel["y"] - rel["ty"]) < 1.0))
    assert found < 0.2 * len(dx), f"relative stack: {found} stars within 1 px of the truth"


def test_header_and_solution_give_the_astrometry(stacks, night):
    """The header says the catalogue, stars, rms and epoch, and the arrays' departures (less
    what the four share) as planted: shifts within 5 mas, rotations within 0.01 degree."""
    _, truth, geometry, _ = night
    path, res, _ = stacks["absolute"]
    phu = fits.getheader(path, 0)
    assert phu["ASTROMET"] == "ABSOLUTE" and phu["ASTREFCT"] == "gaia_dr3.fits"
    assert phu["ASTNSTAR"] >= 80 and 0 < phu["ASTRMS"] < 0.01
    assert phu["ASTEPOCH"] == pytest.approx(truth["refcat"]["night_epoch"], abs=0.01)
    # a real pixel p sees the static model's pixel c + R(theta)(p - c) + s: on the focal
    # plane, a shift of s pixels and a rotation by theta
    pixel = math.sqrt(stack.mosaic_pixel_area(SIZE))
    planted = []
    for a in range(4):
        th = math.radians(geometry.rotation[a])
        planted.append(ArrayCorrection(
            _array_centers(SIZE)[a],
            ((geometry.dx[a] * pixel, 0.0, -th * CORRECTION_SCALE),
             (geometry.dy[a] * pixel, th * CORRECTION_SCALE, 0.0)), "rotation"))
    want = _relative_departures(planted, _array_centers(SIZE))
    for a in range(4):
        n = a + 1
        print(n, phu[f"ASTDX{n}"], phu[f"ASTDY{n}"], phu[f"ASTROT{n}"], want[a])
        assert phu[f"ASTROT{n}"] == pytest.approx(want[a]["rotation_deg"], abs=0.01)
        assert phu[f"ASTDX{n}"] == pytest.approx(want[a]["shift_arcsec"][0], abs=0.005)
        assert phu[f"ASTDY{n}"] == pytest.approx(want[a]["shift_arcsec"][1], abs=0.005)
    rel = fits.getheader(stacks["relative"][0], 0)
    assert rel["ASTROMET"] == "RELATIVE" and "ASTRMS" not in rel
    assert res.meta["astrometry"]["kind"] == "absolute"


def test_relative_alignment_keeps_the_image_quality(stacks, night):
    """Without a catalogue the relative alignment is as before: the stack FWHM within 5 %
    of the single frames' (bright isolated stars, the same measurement, arcsec); the
    absolute stack's is as good."""
    _, _, _, paths = night
    fwhm = {}
    for label in ("relative", "absolute"):
        with fits.open(stacks[label][0]) as hdul:
            px, n = _peak_fwhm(hdul["SCI"].data, hdul["VAR"].data, hdul["DQ"].data)
            fwhm[label] = px * hdul["SCI"].header["PIXSCALE"]
        assert n >= 20
    p_in = math.sqrt(stack.mosaic_pixel_area(SIZE))
    singles = []
    for p in paths:
        frame = load_frame(p)
        widths = [_peak_fwhm(a.sci, a.var, a.dq)[0] for a in frame.arrays]
        singles.append(float(np.nanmedian(widths)) * p_in)
    single = float(np.median(singles))
    print(f"FWHM relative {fwhm['relative']:.4f}\" absolute {fwhm['absolute']:.4f}\" "
          f"single {single:.4f}\"")
    assert abs(fwhm["relative"] / single - 1.0) < 0.05
    assert abs(fwhm["absolute"] / single - 1.0) < 0.05
