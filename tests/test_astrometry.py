"""Absolute astrometry: the solver on planted geometry, proper motions, catalogue files."""

import math

import numpy as np
import pytest
from astropy.table import Table

from gsaoi_watch.data.refcat import read_reference_catalog
from gsaoi_watch.errors import ReductionError
from gsaoi_watch.instrument import distortion
from gsaoi_watch.reduction.stack.align import frame_catalog
from gsaoi_watch.reduction.stack.astrometry import (
    PM_PRIOR,
    _array_centers,
    _relative_departures,
    reference_on_plane,
    solve_astrometry,
)
from gsaoi_watch.reduction.stack.geometry import (
    CORRECTION_SCALE,
    ArrayCorrection,
    FrameGeometry,
    apply_affine,
    plane_to_sky,
    sky_to_plane,
)

RA0, DEC0 = 201.365063, -43.019112
SIZE = 2048
PIXEL = 0.0197  # arcsec, the static model's scale near the centre


def _departures(shifts_px, rotations_deg):
    """ArrayCorrections for array shifts (pixels) and rotations (degrees)."""
    out = []
    for a, ((dx, dy), rot) in enumerate(zip(shifts_px, rotations_deg)):
        th = math.radians(rot)
        out.append(ArrayCorrection(_array_centers(SIZE)[a],
                                   ((dx * PIXEL, 0.0, -th * CORRECTION_SCALE),
                                    (dy * PIXEL, th * CORRECTION_SCALE, 0.0)), "rotation"))
    return tuple(out)


def _geometry(name, ra, dec, pa=0.0, corrections=None):
    return FrameGeometry(name, SIZE, ((0, 0),) * 4, ((SIZE, SIZE),) * 4, ra, dec, pa, 60.0,
                         RA0, DEC0, epoch=2026.9, corrections=corrections)


def _night(rng, truth, *, n_frames=9, n_stars=160, centroid_px=0.05, wcs_error=(0.3, -0.2),
           pa_error=0.02, extra_sources=0):
    """Per frame (key, header geometry, catalogue) and the stars' (east, north)."""
    east = rng.uniform(-50, 50, n_stars)
    north = rng.uniform(-50, 50, n_stars)
    ra, dec = plane_to_sky(east, north, RA0, DEC0)
    cats, true_geoms = [], []
    cosd = math.cos(math.radians(DEC0))
    for f in range(n_frames):
        d_e, d_n = rng.uniform(-1.5, 1.5, 2)
        g_true = _geometry(f"f{f}", RA0 + d_e / 3600 / cosd, DEC0 + d_n / 3600,
                           corrections=truth)
        g_hdr = _geometry(f"f{f}", g_true.ra + wcs_error[0] / 3600 / cosd,
                          g_true.dec + wcs_error[1] / 3600, pa=pa_error)
        per_array = []
        for a in range(4):
            e, n = sky_to_plane(ra, dec, RA0, DEC0)
            x, y = g_true.from_plane(a, e, n, (RA0, DEC0))
            on = (x > 1) & (x < SIZE) & (y > 1) & (y < SIZE)
            x = x[on] + rng.normal(0, centroid_px, on.sum())
            y = y[on] + rng.normal(0, centroid_px, on.sum())
            if extra_sources:  # galaxy knots and faint stars the catalogue does not have
                x = np.concatenate([x, rng.uniform(1, SIZE, extra_sources)])
                y = np.concatenate([y, rng.uniform(1, SIZE, extra_sources)])
            per_array.append(Table({"X_IMAGE": x, "Y_IMAGE": y,
                                    "FLUX_AUTO": np.full(len(x), 1e4),
                                    "FWHM_IMAGE": np.full(len(x), 4.0)}))
        cats.append((f, g_hdr, frame_catalog(per_array, g_hdr, (RA0, DEC0))))
        true_geoms.append(g_true)
    return cats, true_geoms, east, north


def _map_errors(solution, cats, true_geoms):
    """Solved minus true stack-plane position over a grid of every array (arcsec)."""
    errs = []
    gx, gy = np.meshgrid(np.linspace(20, SIZE - 20, 9), np.linspace(20, SIZE - 20, 9))
    for (k, g), m in zip(solution.used, solution.transforms):
        for a in range(4):
            e, n = g.to_plane(a, gx.ravel(), gy.ravel(), (RA0, DEC0))
            p = apply_affine(m, np.column_stack([e, n]))
            et, nt = true_geoms[k].to_plane(a, gx.ravel(), gy.ravel(), (RA0, DEC0))
            errs.append(np.hypot(p[:, 0] - et, p[:, 1] - nt))
    return np.concatenate(errs)


def _reference(rng, east, north, sigma=0.0005, keep=1.0, spurious=0):
    n = len(east)
    sel = rng.random(n) < keep
    e = east[sel] + rng.normal(0, sigma, sel.sum())
    nn = north[sel] + rng.normal(0, sigma, sel.sum())
    if spurious:
        e = np.concatenate([e, rng.uniform(-50, 50, spurious)])
        nn = np.concatenate([nn, rng.uniform(-50, 50, spurious)])
    return Table({"east": e, "north": nn, "sigma": np.full(len(e), sigma),
                  "row": np.arange(len(e))})


@pytest.mark.parametrize("seed", [1, 2])
def test_solver_recovers_array_departures_at_the_limits(seed):
    """Arrays 10 px and 0.3 degree off the static model (the most the solver must take),
    a telescope WCS 0.36" and 0.02 degree off: the solved mapping is within 1 mas rms of
    the truth everywhere on every array, and the arrays' departures are recovered."""
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=(4, 3))
    truth = _departures([(10 * s[0], 10 * s[1]) for s in signs], [0.3 * s[2] for s in signs])
    cats, true_geoms, east, north = _night(rng, truth)
    sol = solve_astrometry(cats, _reference(rng, east, north), (RA0, DEC0))
    assert len(sol.used) == 9 and not sol.skipped
    err = _map_errors(sol, cats, true_geoms)
    rms = float(np.sqrt(np.mean(err**2)))
    print(f"map error rms {1000 * rms:.3f} mas, max {1000 * err.max():.3f} mas")
    assert rms < 0.001 and err.max() < 0.003
    want = _relative_departures(truth, _array_centers(SIZE))
    for a in range(4):
        got = sol.info["arrays"][a]["relative"]
        assert got["rotation_deg"] == pytest.approx(want[a]["rotation_deg"], abs=0.005)
        assert np.allclose(got["shift_arcsec"], want[a]["shift_arcsec"], atol=0.002)
    assert sol.info["rms"] < 0.003 and sol.info["n_stars"] >= 100


def test_solver_is_robust_to_missing_and_spurious_sources():
    """A catalogue with 30 % of the stars missing and 40 that the frames do not see, frames
    with 60 sources per array that the catalogue does not have, a 2" pointing error."""
    rng = np.random.default_rng(7)
    truth = _departures([(6, -9), (-10, 4), (3, 10), (-7, -2)], [0.25, -0.3, 0.1, -0.2])
    cats, true_geoms, east, north = _night(rng, truth, wcs_error=(1.6, -1.2),
                                           extra_sources=60)
    ref = _reference(rng, east, north, keep=0.7, spurious=40)
    sol = solve_astrometry(cats, ref, (RA0, DEC0))
    assert len(sol.used) == 9
    err = _map_errors(sol, cats, true_geoms)
    assert float(np.sqrt(np.mean(err**2))) < 0.0015


def test_solver_leaves_out_a_frame_it_cannot_match():
    rng = np.random.default_rng(3)
    truth = _departures([(0, 0)] * 4, [0.0] * 4)
    cats, _, east, north = _night(rng, truth, n_frames=3)
    k, g, cat = cats[1]
    junk = cat.copy()
    junk["east"] = rng.uniform(-50, 50, len(junk))
    junk["north"] = rng.uniform(-50, 50, len(junk))
    junk["x"] = rng.uniform(1, SIZE, len(junk))
    junk["y"] = rng.uniform(1, SIZE, len(junk))
    sol = solve_astrometry([cats[0], (k, g, junk), cats[2]], _reference(rng, east, north),
                           (RA0, DEC0))
    assert [key for key, _ in sol.used] == [0, 2]
    assert sol.skipped and sol.skipped[0][0] == "f1" and "reference catalogue" in \
        sol.skipped[0][1]


def test_correction_inverts_exactly():
    corr = _departures([(10, -10)] * 4, [0.3] * 4)[2]
    u = np.linspace(-60, 10, 15)
    v = np.linspace(-10, 60, 15)
    back = corr.invert(*corr.apply(u, v))
    assert np.allclose(back, (u, v), atol=1e-10, rtol=0)
    du, dv, rot = corr.shift_rotation()
    assert (du, dv) == pytest.approx((10 * PIXEL, -10 * PIXEL)) and rot == pytest.approx(0.3)


def test_geometry_with_corrections_round_trips():
    truth = _departures([(8, -3), (-5, 9), (2, 2), (-9, -9)], [0.2, -0.1, 0.3, -0.3])
    g = _geometry("g", RA0, DEC0, pa=12.0, corrections=truth)
    x = np.linspace(1, SIZE, 7)
    for a in range(4):
        e, n = g.to_plane(a, x, x[::-1], (RA0, DEC0))
        bx, by = g.from_plane(a, e, n, (RA0, DEC0))
        assert np.allclose(bx, x, atol=1e-6) and np.allclose(by, x[::-1], atol=1e-6)
    # a 10-pixel shift of an array moves its stars by 10 pixels on the sky
    static = _geometry("s", RA0, DEC0)
    moved = _geometry("m", RA0, DEC0, corrections=_departures([(10, 0)] * 4, [0.0] * 4))
    c = 0.5 * (SIZE + 1)
    e0, n0 = static.to_plane(0, c, c, (RA0, DEC0))
    e1, n1 = moved.to_plane(0, c, c, (RA0, DEC0))
    assert math.hypot(e1 - e0, n1 - n0) == pytest.approx(10 * PIXEL, rel=1e-6)


# --- the catalogue at the epoch of the observation -----------------------------------------
def _catalogue(**columns):
    base = {"ra": [RA0], "dec": [DEC0], "ra_error": [0.1], "dec_error": [0.1],
            "pmra": [60.0], "pmdec": [-80.0], "pmra_error": [0.05], "pmdec_error": [0.05],
            "epoch": [2016.0]}
    base.update(columns)
    return Table(base)


def test_proper_motion_brings_positions_to_the_epoch():
    """100 mas/yr over 10 years: the star has moved 1" (0.6" east, 0.8" south)."""
    ref = reference_on_plane(_catalogue(), (RA0, DEC0), 2026.0)
    assert ref["east"][0] == pytest.approx(0.6, abs=1e-6)
    assert ref["north"][0] == pytest.approx(-0.8, abs=1e-6)
    # errors: position 0.1 mas and 0.05 mas/yr x 10 yr
    assert ref["sigma"][0] == pytest.approx(math.hypot(0.1, 0.5) / 1000, rel=1e-6)


def test_a_source_without_proper_motion_gets_the_prior():
    ref = reference_on_plane(_catalogue(pmra=[np.nan], pmdec=[np.nan]), (RA0, DEC0), 2026.0)
    assert ref["east"][0] == pytest.approx(0.0, abs=1e-9)
    assert ref["sigma"][0] == pytest.approx(math.hypot(0.1, 10 * PM_PRIOR) / 1000, rel=1e-6)


def test_positions_without_epoch_are_taken_as_they_are():
    t = Table({"ra": [RA0], "dec": [DEC0 + 1 / 3600]})
    ref = reference_on_plane(t, (RA0, DEC0), 2026.0)
    assert ref["north"][0] == pytest.approx(1.0, abs=1e-6)


# --- catalogue files --------------------------------------------------------------------------
def _gaia_table(n=5):
    rng = np.random.default_rng(0)
    t = Table({"source_id": np.arange(n, dtype=np.int64) + 5000,
               "ra": RA0 + rng.uniform(-0.01, 0.01, n), "dec": DEC0 + rng.uniform(-0.01, 0.01, n),
               "ra_error": rng.uniform(0.02, 1, n), "dec_error": rng.uniform(0.02, 1, n),
               "pmra": rng.normal(0, 5, n), "pmdec": rng.normal(0, 5, n),
               "pmra_error": rng.uniform(0.02, 1, n), "pmdec_error": rng.uniform(0.02, 1, n),
               "ref_epoch": np.full(n, 2016.0), "phot_g_mean_mag": rng.uniform(14, 21, n)})
    t["ra"].unit = t["dec"].unit = "deg"
    for c in ("ra_error", "dec_error"):
        t[c].unit = "mas"
    for c in ("pmra", "pmdec", "pmra_error", "pmdec_error"):
        t[c].unit = "mas / yr"
    t["pmra"][1] = np.nan
    return t


@pytest.mark.parametrize("suffix,fmt", [(".fits", "fits"), (".vot", "votable"),
                                         (".csv", "ascii.csv")])
def test_reads_a_gaia_extract(tmp_path, suffix, fmt):
    t = _gaia_table()
    path = tmp_path / f"gaia{suffix}"
    t.write(path, format=fmt)
    got = read_reference_catalog(path)
    assert got.meta["name"] == path.name and len(got) == len(t)
    for col in ("ra", "dec", "ra_error", "dec_error", "pmdec", "pmra_error", "pmdec_error"):
        assert np.allclose(got[col], t[col], rtol=1e-12, atol=0), col
    assert np.isnan(got["pmra"][1]) and np.allclose(got["pmra"][[0, 2, 3, 4]],
                                                     t["pmra"][[0, 2, 3, 4]])
    assert np.all(got["epoch"] == 2016.0)
    assert np.allclose(got["mag"], t["phot_g_mean_mag"])


def test_reads_vizier_names_units_and_sexagesimal(tmp_path):
    path = tmp_path / "vizier.csv"
    path.write_text("RA_ICRS,DE_ICRS,e_RA_ICRS,pmRA,pmDE,Epoch,Gmag\n"
                    "13:25:27.615,-43:01:08.80,0.3,1.5,-2.0,J2016.0,18.2\n"
                    "201.4,-43.02,,,,J2016.0,19.0\n")
    got = read_reference_catalog(path)
    assert got["ra"][0] == pytest.approx(15 * (13 + 25 / 60 + 27.615 / 3600))
    assert got["dec"][0] == pytest.approx(-(43 + 1 / 60 + 8.8 / 3600))
    assert got["pmra"][0] == 1.5 and np.isnan(got["pmra"][1])
    assert list(got["epoch"]) == [2016.0, 2016.0]


def test_arcsec_units_are_converted(tmp_path):
    t = Table({"RAJ2000": [10.0], "DEJ2000": [-20.0], "e_RAJ2000": [0.001],
               "pmRA": [0.01]})
    t["e_RAJ2000"].unit = "arcsec"
    t["pmRA"].unit = "arcsec / yr"
    path = tmp_path / "cat.fits"
    t.write(path)
    got = read_reference_catalog(path)
    assert got["ra_error"][0] == pytest.approx(1.0) and got["pmra"][0] == pytest.approx(10.0)


@pytest.mark.parametrize("name,content,problem", [
    ("bad.fits", b"SIMPLE  = this is not a table\x00\x01", "not a readable"),
    ("bad.csv", b"this is one column of text\n", "right ascension and declination"),
    ("bad.csv", b"a,b\n1,2\n", "right ascension and declination"),
    ("bad.csv", b"ra,dec\nx,y\n", "not an angle"),
    ("bad.csv", b"ra,dec\n", "no rows with a position"),
])
def test_bad_catalogue_is_a_one_line_error(tmp_path, name, content, problem):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ReductionError) as err:
        read_reference_catalog(path)
    text = str(err.value)
    assert name in text and problem in text and "\n" not in text


def test_missing_catalogue_is_a_one_line_error(tmp_path):
    with pytest.raises(ReductionError, match="gone.fits: reference catalogue not found"):
        read_reference_catalog(tmp_path / "gone.fits")


def test_focal_plane_centre_is_between_the_arrays():
    """The array centres the corrections are expressed about lie on their arrays."""
    centers = _array_centers(SIZE)
    fu, fv = distortion.focal_plane_center()
    quadrants = {(np.sign(u - fu), np.sign(v - fv)) for u, v in centers}
    assert len(quadrants) == 4


def test_cli_stack_with_a_bad_catalogue_is_a_one_line_error(tmp_path, capsys):
    from gsaoi_watch.cli.main import main

    bad = tmp_path / "cat.vot"
    bad.write_text("<VOTABLE>broken")
    assert main(["stack", str(tmp_path / "a_skyCorrected.fits"), "-o",
                 str(tmp_path / "s.fits"), "--refcat", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("gsaoi-watch stack: cat.vot: not a readable") and "\n" not in err
    assert not (tmp_path / "s.fits").exists()
