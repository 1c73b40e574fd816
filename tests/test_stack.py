"""Distortion correction and stacking, scored against the simulator's truth."""

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.stats import sigma_clipped_stats
from astropy.table import Table
from astropy.wcs import WCS

from gsaoi_watch.data.fitsio import load_bpm, load_frame, read_catalogs, write_frame
from gsaoi_watch.errors import ReductionError
from gsaoi_watch.instrument import distortion
from gsaoi_watch.instrument.dq import DQ
from gsaoi_watch.pipeline.pools import fork_mapper
from gsaoi_watch.pipeline.recipes import make_processed_flat, reduce_images
from gsaoi_watch.pipeline.stack_files import run_stack_job, stack_files
from gsaoi_watch.reduction import stack
from gsaoi_watch.sim import BPM_NAME, simulate_night
from gsaoi_watch.sim.scene import MOFFAT_BETA, sky_to_tangent

SIZE = 512


@pytest.fixture(scope="module")
def reduced(tmp_path_factory):
    """A small simulated night, its science reduced to _skyCorrected files."""
    out = tmp_path_factory.mktemp("stack_night")
    truth = simulate_night(out, seed=33, size=SIZE, workers=2)
    paths = sorted(str(p) for p in out.glob("S20170505S00[3-7]*.fits"))
    master = make_processed_flat(paths, bpm=load_bpm(out / BPM_NAME), bpm_name=BPM_NAME)
    sci = sorted(str(out / f["filename"]) for f in truth["frames"] if f["kind"] == "science")
    red = out / "red"
    res = reduce_images(sci, flat=master, flat_name="flat", bpm=load_bpm(out / BPM_NAME),
                        params={"skyCorrect": {"offset_sky": False}},
                        on_product=lambda f: str(write_frame(f, red)))
    return out, truth, sorted(res["sky_corrected"])


@pytest.fixture(scope="module")
def stacked(reduced):
    out, truth, paths = reduced
    path, result = stack_files(paths, out / "disco_stack.fits")
    return path, result


# --- measuring a stack against the truth ----------------------------------------------------
def _moffat_ee(radius, fwhm):
    """Fraction of a Moffat (beta = MOFFAT_BETA) star's flux within ``radius``."""
    alpha = fwhm / (2.0 * math.sqrt(2 ** (1.0 / MOFFAT_BETA) - 1.0))
    return 1.0 - (1.0 + (radius / alpha) ** 2) ** (1.0 - MOFFAT_BETA)


def _truth_stars(truth, used):
    """Per catalogue star: (ra, dec, mean flux x exptime over the used frames, n frames,
    array index in the first used frame, list of (flux e-, fwhm px) per frame)."""
    frames = {f["filename"]: f for f in truth["frames"]}
    per_star = {}
    for k, name in enumerate(used):
        f = frames[name.replace("_skyCorrected", "")]
        for arr in f["arrays"]:
            for sid, _, _, flux in arr["stars"]:
                entry = per_star.setdefault(sid, {"frames": [], "array0": None})
                entry["frames"].append((flux * f["exptime"], f["fwhm_px"]))
                if k == 0:
                    entry["array0"] = arr["index"]
    cat = truth["catalogue"]
    ids = np.array(sorted(per_star))
    return {"id": ids, "ra": np.array(cat["ra"])[ids], "dec": np.array(cat["dec"])[ids],
            "n": np.array([len(per_star[i]["frames"]) for i in ids]),
            "array0": np.array([-1 if per_star[i]["array0"] is None else per_star[i]["array0"]
                                for i in ids]),
            "frames": [per_star[i]["frames"] for i in ids]}


def _star_stats(sci, var, x, y, *, radius=6.0, sigma_w=2.0):
    """Windowed centroid, S/N within ``radius``, half-maximum FWHM of a star near (x, y)."""
    x0, y0 = int(round(x)) - 20, int(round(y)) - 20
    cut = sci[y0 - 1:y0 + 40, x0 - 1:x0 + 40].astype(float)
    vcut = var[y0 - 1:y0 + 40, x0 - 1:x0 + 40].astype(float)
    yy, xx = np.mgrid[y0:y0 + 41, x0:x0 + 41].astype(float)
    r = np.hypot(xx - x, yy - y)
    # background: a plane fitted to the pixels beyond 14 px (the galaxy has a gradient)
    ring = (r > 14) & np.isfinite(cut)
    design = np.column_stack([np.ones(ring.sum()), xx[ring] - x, yy[ring] - y])
    keep = np.ones(ring.sum(), bool)
    for _ in range(3):
        coef, *_ = np.linalg.lstsq(design[keep], cut[ring][keep], rcond=None)
        res = cut[ring] - design @ coef
        keep = np.abs(res) < 3 * 1.4826 * np.median(np.abs(res[keep]))
    data = cut - (coef[0] + coef[1] * (xx - x) + coef[2] * (yy - y))
    xc, yc = x, y
    for _ in range(10):  # Gaussian-windowed centroid, iterated (SExtractor XWIN-like)
        w = np.exp(-((xx - xc) ** 2 + (yy - yc) ** 2) / (2 * sigma_w**2))
        w[np.hypot(xx - xc, yy - yc) > 4 * sigma_w] = 0.0
        norm = np.sum(w * data)
        if not norm > 0:
            return np.nan, np.nan, 0.0, np.nan
        dx = 2.0 * np.sum(w * data * (xx - xc)) / norm
        dy = 2.0 * np.sum(w * data * (yy - yc)) / norm
        xc, yc = xc + dx, yc + dy
        if math.hypot(dx, dy) < 1e-4:
            break
        if math.hypot(xc - x, yc - y) > 3.0:  # ran off to a neighbour
            return np.nan, np.nan, 0.0, np.nan
    ap = np.hypot(xx - xc, yy - yc) <= radius
    snr = np.sum(data[ap]) / math.sqrt(max(np.sum(vcut[ap]), 1e-9))
    peak = np.max(data[np.hypot(xx - xc, yy - yc) <= 3])
    fwhm = 2.0 * math.sqrt(np.count_nonzero(data[r < 15] >= 0.5 * peak) / math.pi)
    return xc, yc, snr, fwhm


def _measure(path, truth):
    """Measure the truth stars in the stack file (isolated, fully covered, unflagged)."""
    with fits.open(path) as hdul:
        sci, var, dq = hdul["SCI"].data, hdul["VAR"].data, hdul["DQ"].data
        wcs = WCS(hdul["SCI"].header)
        phu = hdul[0].header
        scale = hdul["SCI"].header["PIXSCALE"]
    used = [phu[f"IMCMB{k:03d}"] for k in range(1, phu["NCOMBINE"] + 1)]
    stars = _truth_stars(truth, used)
    tx, ty = wcs.all_world2pix(stars["ra"], stars["dec"], 1)
    # isolated: no other truth star brighter than 1 % of it within 12 output pixels
    mean_flux = np.array([np.mean([f for f, _ in fr]) for fr in stars["frames"]])
    sep = np.hypot(tx[:, None] - tx[None, :], ty[:, None] - ty[None, :])
    np.fill_diagonal(sep, np.inf)
    isolated = ~np.any((sep < 12.0) & (mean_flux[None, :] > 0.01 * mean_flux[:, None]), axis=1)
    # covered by every frame and no flagged stack pixel within 32 output pixels
    ny, nx = sci.shape
    clean = np.zeros(len(tx), bool)
    for k in range(len(tx)):
        x, y = int(round(tx[k])) - 1, int(round(ty[k])) - 1
        if 32 <= x < nx - 32 and 32 <= y < ny - 32:
            clean[k] = not dq[y - 32:y + 33, x - 32:x + 33].any()
    sel = np.nonzero(isolated & clean & (stars["n"] == len(used)))[0]
    stats = np.array([_star_stats(sci, var, tx[k], ty[k]) for k in sel]).reshape(-1, 4)
    return {"sci": sci, "scale": scale, "used": used, "tx": tx[sel], "ty": ty[sel],
            "x": stats[:, 0], "y": stats[:, 1], "snr": stats[:, 2], "fwhm": stats[:, 3],
            "array0": stars["array0"][sel], "frames": [stars["frames"][k] for k in sel],
            "ids": stars["id"][sel]}


def _aperture_flux(sci, x, y, radius):
    """Sum within ``radius`` of (x, y) (1-based) minus a clipped-median annulus background."""
    ny, nx = sci.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    out = []
    for xc, yc in zip(x, y):
        x0, x1 = int(xc - radius - 16), int(xc + radius + 17)
        y0, y1 = int(yc - radius - 16), int(yc + radius + 17)
        cut = sci[y0:y1, x0:x1]
        r = np.hypot(xx[y0:y1, x0:x1] + 1 - xc, yy[y0:y1, x0:x1] + 1 - yc)
        _, bg, _ = sigma_clipped_stats(cut[(r > radius + 4) & (r < radius + 14)])
        # sub-pixel sampling of the aperture edge (5 x 5 per pixel)
        sub = (np.arange(5) - 2) / 5.0
        w = np.zeros_like(cut, dtype=float)
        for oy in sub:
            for ox in sub:
                w += (np.hypot(xx[y0:y1, x0:x1] + 1 + ox - xc,
                               yy[y0:y1, x0:x1] + 1 + oy - yc) <= radius)
        w /= 25.0
        out.append(float(np.sum((cut - bg) * w)))
    return np.array(out)


@pytest.fixture(scope="module")
def measured(stacked, reduced):
    _, truth, _ = reduced
    return _measure(stacked[0], truth)


# --- accuracy -----------------------------------------------------------------------------
def test_positions_match_truth(measured):
    """Star positions through the output WCS: rms < 0.2 output pixel after a global shift,
    and no offset between stars from different arrays (> 0.05 pixel)."""
    m = measured
    bright = m["snr"] > 30
    # a centroid more than 1.5 px off is another star caught by the window (a blend with a
    # star below the isolation cut), not an alignment error; at most 10 % may be lost so
    found = np.hypot(m["x"] - m["tx"], m["y"] - m["ty"]) < 1.5
    assert (bright & found).sum() >= 0.9 * bright.sum()
    bright &= found
    assert bright.sum() >= 10, f"only {bright.sum()} clean bright stars to test positions"
    dx = m["x"][bright] - m["tx"][bright]
    dy = m["y"][bright] - m["ty"][bright]
    dx, dy = dx - np.median(dx), dy - np.median(dy)
    r = np.hypot(dx, dy)
    rms = float(np.sqrt(np.mean(r**2)))
    print(f"position rms {rms:.3f} px over {bright.sum()} stars")
    assert rms < 0.2, f"position rms {rms:.3f} output pixels (limit 0.2)"
    arrays = m["array0"][bright]
    means = {}
    for a in np.unique(arrays):
        sel = arrays == a
        if sel.sum() >= 2:
            means[int(a)] = (float(np.mean(dx[sel])), float(np.mean(dy[sel])))
    assert len(means) >= 3, f"too few arrays with stars: {means}"
    for a, (mx, my) in means.items():
        assert math.hypot(mx, my) < 0.05, f"array {a}: mean residual ({mx:.3f}, {my:.3f}) px"


def test_fluxes_match_truth(measured):
    """Median stack/truth flux ratio within 1 % for stars with S/N > 100."""
    m = measured
    bright = m["snr"] > 100
    assert bright.sum() >= 5, f"only {bright.sum()} stars with S/N > 100"
    radius = 18.0  # output pixels, ~4 FWHM
    flux = _aperture_flux(m["sci"], m["tx"][bright], m["ty"][bright], radius)
    # planted flux inside the aperture, per frame (the stack is the mean over frames);
    # the aperture radius in input pixels uses the mosaic's mean pixel scale
    p_in = math.sqrt(stack.mosaic_pixel_area(SIZE))
    r_in = radius * m["scale"] / p_in
    expected = np.array([np.mean([f * _moffat_ee(r_in, w) for f, w in frames])
                         for frames, b in zip(m["frames"], bright) if b])
    ratio = flux / expected
    med = float(np.median(ratio))
    print(f"flux ratio median {med:.4f} over {bright.sum()} stars")
    assert abs(med - 1.0) < 0.01, f"median flux ratio {med:.4f} (limit 1 %)"


def test_fwhm_preserved(measured, reduced):
    """Stack FWHM within 10 % of the single frames' FWHM (same stars, same method, arcsec)."""
    _, truth, paths = reduced
    m = measured
    bright = m["snr"] > 50
    assert bright.sum() >= 5
    stack_fwhm = float(np.nanmedian(m["fwhm"][bright])) * m["scale"]
    p_in = math.sqrt(stack.mosaic_pixel_area(SIZE))
    frames = {f["filename"]: f for f in truth["frames"]}
    wanted = set(m["ids"][bright].tolist())
    singles = []
    for p in paths:
        f = frames[Path(p).name.replace("_skyCorrected", "")]
        frame = load_frame(p)
        widths = []
        for arr in f["arrays"]:
            a = frame.arrays[arr["index"]]
            for sid, x, y, _ in arr["stars"]:
                if sid in wanted and 22 < x < SIZE - 22 and 22 < y < SIZE - 22:
                    widths.append(_star_stats(a.sci, a.var, x, y)[3])
        singles.append(np.nanmedian(widths) * p_in)
    single = float(np.median(singles))
    print(f"FWHM stack {stack_fwhm:.4f}\" single {single:.4f}\" ratio {stack_fwhm / single:.3f}")
    assert abs(stack_fwhm / single - 1.0) < 0.10


# --- product ---------------------------------------------------------------------------------
def test_output_file_structure(stacked, reduced):
    path, result = stacked
    _, _, paths = reduced
    with fits.open(path) as hdul:
        names = [h.name for h in hdul]
        assert names == ["PRIMARY", "SCI", "VAR", "DQ"]
        phu, sci = hdul[0].header, hdul["SCI"].header
        assert phu["NCOMBINE"] == len(paths) == 9
        assert [phu[f"IMCMB{k:03d}"] for k in range(1, 10)] == [Path(p).name for p in paths]
        assert sci["BUNIT"] == "electron" and "BUNIT" not in phu  # as every electron product
        assert phu["EXPTIME"] == 60.0
        w = WCS(sci)
        assert w.wcs.ctype[0] == "RA---TAN" and w.wcs.ctype[1] == "DEC--TAN"
        cd = w.wcs.cd
        expect = 0.02 * 2048 / SIZE / 3600.0
        assert cd[0, 0] == pytest.approx(-expect) and cd[1, 1] == pytest.approx(expect)
        assert cd[0, 1] == 0 and cd[1, 0] == 0  # north up, east left
        dq = hdul["DQ"].data
        var = hdul["VAR"].data
        assert dq.dtype.kind == "u" and dq.dtype.itemsize == 2
        assert hdul["SCI"].data.dtype.kind == "f" and hdul["SCI"].data.dtype.itemsize == 4
        # corners are outside every frame: no_data; the middle of an array is good
        assert dq[0, 0] == DQ["no_data"] and dq[-1, -1] == DQ["no_data"]
        good = dq == 0
        assert good.mean() > 0.7
        assert np.all(var[good] > 0)
        # the no_data region is not in the gaps only: the stack covers the whole mosaic
        assert ((dq & DQ["no_data"]) != 0).mean() < 0.1


def test_variance_matches_noise(stacked):
    """The VAR plane predicts the pixel scatter of the sky: clipped scatter about the local
    median in 32 x 32 boxes, against sqrt(VAR) there (0.5-1.3: resampling correlates
    neighbouring pixels, which lowers the per-pixel scatter)."""
    path, _ = stacked
    with fits.open(path) as hdul:
        sci, var, dq = hdul["SCI"].data, hdul["VAR"].data, hdul["DQ"].data
    ratios = []
    for y in range(0, sci.shape[0] - 32, 32):
        for x in range(0, sci.shape[1] - 32, 32):
            box = (slice(y, y + 32), slice(x, x + 32))
            if dq[box].any():
                continue
            _, _, std = sigma_clipped_stats(sci[box], sigma=3.0)
            ratios.append(std / math.sqrt(np.median(var[box])))
    assert len(ratios) > 50
    ratio = float(np.median(ratios))
    print(f"sky scatter / sqrt(VAR) = {ratio:.3f}")
    assert 0.5 < ratio < 1.3


def test_inputs_not_modified(reduced):
    out, truth, paths = reduced
    frames = [load_frame(p) for p in paths[:3]]
    with fits.open(paths[0]) as hdul:
        frames[0].meta["catalogs"] = read_catalogs(hdul, paths[0])
    snap = [a.sci.copy() for a in frames[0].arrays]
    res = stack.stack_frames(frames)
    assert all(np.array_equal(a.sci, s) for a, s in zip(frames[0].arrays, snap))
    assert res.meta["used"] == [Path(p).name for p in paths[:3]]


def test_strips_and_workers_do_not_change_the_result(reduced):
    """Strip height and forked workers only bound memory and time: same pixels."""
    _, _, paths = reduced
    frames = []
    for p in paths[:3]:
        f = load_frame(p)
        with fits.open(p) as hdul:
            f.meta["catalogs"] = read_catalogs(hdul, p)
        frames.append(f)
    a = stack.stack_frames(frames, strip_rows=1000).arrays[0]
    b = stack.stack_frames(frames, strip_rows=97, mapper=fork_mapper(2)).arrays[0]
    assert np.array_equal(a.sci, b.sci) and np.array_equal(a.var, b.var)
    assert np.array_equal(a.dq, b.dq)


def test_jacobian_flux_mode_differs_by_the_pixel_area(reduced):
    """flux_mode='jacobian' scales by the local pixel area instead of the mosaic mean: the
    two stacks differ by the ratio of the two areas, within a few per cent, varying over
    the field (which is why 'surface' is right for flat-fielded frames)."""
    _, _, paths = reduced
    frames = [load_frame(p) for p in paths[:2]]
    for f, p in zip(frames, paths[:2]):
        with fits.open(p) as hdul:
            f.meta["catalogs"] = read_catalogs(hdul, p)
    a = stack.stack_frames(frames).arrays[0]
    b = stack.stack_frames(frames, flux_mode="jacobian").arrays[0]
    sel = (a.dq == 0) & (a.sci > 50 * np.sqrt(a.var))
    ratio = b.sci[sel] / a.sci[sel]
    assert 0.95 < np.percentile(ratio, 1) < np.percentile(ratio, 99) < 1.05
    assert np.percentile(ratio, 99) - np.percentile(ratio, 1) > 0.005
    with pytest.raises(ValueError):
        stack.stack_frames(frames, flux_mode="counts")


# --- alignment -----------------------------------------------------------------------------
def test_align_recovers_planted_transform():
    """A catalogue shifted, rotated and scaled is aligned back to better than 1 mas."""
    rng = np.random.default_rng(5)
    ref = Table({"east": rng.uniform(-40, 40, 120), "north": rng.uniform(-40, 40, 120)})
    t = math.radians(0.01)
    a = 1.0001 * np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    pts = np.column_stack([ref["east"], ref["north"]])
    src_pts = (pts - [0.8, -1.3]) @ np.linalg.inv(a).T
    src_pts += rng.normal(0, 0.002, src_pts.shape)
    keep = rng.random(120) < 0.8  # some sources missing, and spurious ones added
    extra = rng.uniform(-40, 40, (30, 2))
    src_pts = np.vstack([src_pts[keep], extra])
    src = Table({"east": src_pts[:, 0], "north": src_pts[:, 1]})
    m, info = stack.align_catalogs(src, ref, match_radius=0.1, bin_size=0.05)
    assert m is not None and info["n_match"] >= 0.9 * keep.sum()
    back = src_pts[: keep.sum()] @ m[:, :2].T + m[:, 2]
    assert np.sqrt(np.mean((back - pts[keep]) ** 2)) < 0.003


def test_align_refuses_unrelated_catalogues():
    rng = np.random.default_rng(6)
    ref = Table({"east": rng.uniform(-40, 40, 60), "north": rng.uniform(-40, 40, 60)})
    src = Table({"east": rng.uniform(-40, 40, 60), "north": rng.uniform(-40, 40, 60)})
    m, info = stack.align_catalogs(src, ref, match_radius=0.05, bin_size=0.02)
    assert m is None and info["n_match"] < 6


def test_geometry_round_trip(reduced):
    _, _, paths = reduced
    frame = load_frame(paths[1])
    geom = stack.frame_geometry(frame)
    center = (geom.target_ra, geom.target_dec)
    x = np.array([10.0, 128.0, 250.0])
    y = np.array([5.0, 200.0, 128.0])
    for i in range(4):
        e, n = geom.to_plane(i, x, y, center)
        bx, by = geom.from_plane(i, e, n, center)
        assert np.allclose(bx, x, atol=1e-5) and np.allclose(by, y, atol=1e-5)


def test_geometry_matches_simulated_star_positions(reduced):
    """The chain pixel -> sky puts the planted stars at their catalogue RA/Dec (< 1 mas)."""
    _, truth, paths = reduced
    frame = load_frame(paths[2])
    geom = stack.frame_geometry(frame)
    f = next(t for t in truth["frames"] if t["filename"] + "" ==
             Path(paths[2]).name.replace("_skyCorrected", ""))
    cat = truth["catalogue"]
    center = (geom.target_ra, geom.target_dec)
    for arr in f["arrays"]:
        s = np.array(arr["stars"])
        e, n = geom.to_plane(arr["index"], s[:, 1], s[:, 2], center)
        te, tn = sky_to_tangent(np.array(cat["ra"])[s[:, 0].astype(int)],
                                np.array(cat["dec"])[s[:, 0].astype(int)], *center)
        # the simulator adds an unmodelled rotation (~0.002 deg) and scale (~2e-5)
        assert np.max(np.hypot(e - te, n - tn)) < 0.01


def test_pixel_area_is_the_distortion_mean():
    area = stack.mosaic_pixel_area(2048)
    assert 0.0193**2 < area < 0.0200**2
    assert stack.mosaic_pixel_area(256) == pytest.approx(area * 64, rel=1e-3)
    jac = distortion.jacobian(0, 1024.0, 1024.0)
    assert abs(np.linalg.det(jac)) == pytest.approx(area, rel=0.03)


# --- bad input -----------------------------------------------------------------------------
def _without_sources(src, dst, keep=1):
    """Copy a product keeping only ``keep`` rows of each OBJCAT and noise-only pixels."""
    with fits.open(src) as hdul:
        for h in hdul:
            if h.name == "OBJCAT":
                h.data = h.data[:keep]
        hdul.writeto(dst, overwrite=True)
    return dst


def test_frame_without_matches_is_left_out(reduced, tmp_path, caplog):
    _, _, paths = reduced
    bad = _without_sources(paths[3], tmp_path / Path(paths[3]).name)
    inputs = paths[:3] + [str(bad)]
    with caplog.at_level(logging.WARNING):
        path, result = stack_files(inputs, tmp_path / "s.fits")
    assert result.meta["used"] == [Path(p).name for p in paths[:3]]
    assert [s[0] for s in result.meta["skipped"]] == [bad.name]
    lines = [r.getMessage() for r in caplog.records if bad.name in r.getMessage()]
    assert len(lines) == 1 and "too few sources" in lines[0]
    with fits.open(path) as hdul:
        assert hdul[0].header["NCOMBINE"] == 3
        assert hdul[0].header["IMSKP001"] == bad.name


def test_first_frame_without_sources_gives_way(reduced, tmp_path):
    _, _, paths = reduced
    bad = _without_sources(paths[0], tmp_path / Path(paths[0]).name)
    _, result = stack_files([str(bad)] + paths[1:3], tmp_path / "s.fits")
    assert result.meta["used"] == [Path(p).name for p in paths[1:3]]
    assert result.meta["reference"] == Path(paths[1]).name


def test_all_frames_failing_is_an_error(reduced, tmp_path):
    _, _, paths = reduced
    bads = [str(_without_sources(p, tmp_path / Path(p).name)) for p in paths[:3]]
    not_fits = tmp_path / "junk.fits"
    not_fits.write_text("not a FITS file")
    with pytest.raises(ReductionError) as err:
        stack_files(bads + [str(not_fits)], tmp_path / "s.fits")
    assert Path(bads[0]).name in str(err.value) and "junk.fits" in str(err.value)
    assert not (tmp_path / "s.fits").exists()


def test_reference_catalogue_gives_absolute_astrometry(reduced, tmp_path):
    """With a reference catalogue, a pointing error common to all frames is removed."""
    out, truth, paths = reduced
    # shift every frame's WCS by 0.15" east: relative alignment keeps the error, a
    # reference catalogue removes it
    moved = []
    for p in paths[:3]:
        dst = tmp_path / Path(p).name
        with fits.open(p) as hdul:
            for h in hdul:
                if h.name == "SCI":
                    h.header["CRVAL1"] += 0.15 / 3600.0 / math.cos(math.radians(
                        h.header["CRVAL2"]))
            hdul.writeto(dst)
        moved.append(str(dst))
    cat = truth["catalogue"]
    field = np.array(cat["field"]) == 0
    refcat = Table({"ra": np.array(cat["ra"])[field], "dec": np.array(cat["dec"])[field]})
    ref_path = tmp_path / "ref.fits"
    refcat.write(ref_path)
    results = {}
    for label, ref in (("relative", None), ("absolute", ref_path)):
        path, _ = stack_files(moved, tmp_path / f"{label}.fits", reference_catalog=ref)
        m = _measure(path, truth)
        sel = m["snr"] > 30
        assert sel.sum() >= 10
        results[label] = float(np.median(m["x"][sel] - m["tx"][sel])) * m["scale"]
    print(f"offset from truth: relative {results['relative']:.4f}\", absolute "
          f"{results['absolute']:.4f}\"")
    # the WCS error puts every star 0.15" east of where it is: -x on the north-up grid
    assert results["relative"] == pytest.approx(-0.15, abs=0.02)
    assert abs(results["absolute"]) < 0.01


def test_run_stack_job(reduced, tmp_path):
    _, _, paths = reduced
    res = run_stack_job({"paths": paths[:2], "output_dir": str(tmp_path),
                         "output_name": "job_stack.fits"})
    assert res["products"] == [(str(tmp_path / "job_stack.fits"), "stack")]
    assert res["skipped"] == [] and res["seconds"] >= 0 and "2 frames" in res["note"]
    assert json.dumps(res)  # plain data for the engine


def test_cli_stack(reduced, tmp_path, monkeypatch):
    from gsaoi_watch.cli.main import main

    _, _, paths = reduced
    lst = tmp_path / "sci.list"
    lst.write_text("\n".join(paths[:2]) + "\n")
    monkeypatch.chdir(tmp_path)
    assert main(["stack", f"@{lst}", "-o", "my_Kshort_stack.fits"]) == 0
    assert (tmp_path / "my_Kshort_stack.fits").is_file()
    assert main(["stack", paths[2], paths[3]]) == 0
    assert (tmp_path / "disco_stack.fits").is_file()


def test_stack_job_with_an_unusable_catalogue_is_relative(reduced, tmp_path):
    """The daemon's stack job: a catalogue that cannot be read, or that matches no frame,
    is one warning line, and the stack is made on relative astrometry."""
    _, truth, paths = reduced
    res = run_stack_job({"paths": paths[:2], "output_dir": str(tmp_path),
                         "output_name": "gone.fits",
                         "reference_catalog": str(tmp_path / "no_such_gaia.fits")})
    assert res["astrometry"]["kind"] == "relative" and "relative astrometry" in res["note"]
    assert len(res["warnings"]) == 1 and "no_such_gaia.fits" in res["warnings"][0]
    assert fits.getheader(tmp_path / "gone.fits", 0)["ASTROMET"] == "RELATIVE"
    cat = truth["catalogue"]
    elsewhere = Table({"ra": np.array(cat["ra"]) + 0.5, "dec": np.array(cat["dec"])})
    elsewhere.write(tmp_path / "other_field.fits")
    res = run_stack_job({"paths": paths[:2], "output_dir": str(tmp_path),
                         "output_name": "other.fits",
                         "reference_catalog": str(tmp_path / "other_field.fits")})
    assert res["astrometry"]["kind"] == "relative"
    assert "other_field.fits matched no frame" in res["warnings"][0]
    assert res["products"] and not res["skipped"]
