"""The simulator's array departures from the static model and its Gaia-like reference catalogue."""

import hashlib
import json
import math

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time

from gsaoi_watch.cli.main import main
from gsaoi_watch.instrument import distortion
from gsaoi_watch.sim import GeometryPerturbation, scene, simulate_night
from gsaoi_watch.sim.refcat import (
    GAIA_REF_EPOCH,
    SOURCE_ID_BASE,
    gaia_errors,
    night_epoch,
    reference_catalogue,
    true_star_positions,
    write_reference_catalogue,
)
from gsaoi_watch.sim.render import make_catalogue

SIZE = 256
GEOMETRY = GeometryPerturbation(dx=(8.0, -6.5, 3.0, -9.0), dy=(-4.0, 7.5, 9.5, 2.0),
                                rotation=(0.25, -0.3, 0.12, -0.2))
MAS = 3.6e6  # mas per degree


@pytest.fixture(scope="module")
def nights(tmp_path_factory):
    """The same night (standard + science) unperturbed and with GEOMETRY."""
    base = tmp_path_factory.mktemp("static")
    moved = tmp_path_factory.mktemp("moved")
    only = ["standard", "science"]
    a = simulate_night(base, seed=11, size=SIZE, workers=1, only=only)
    b = simulate_night(moved, seed=11, size=SIZE, workers=1, only=only, geometry=GEOMETRY,
                       refcat="ref/gaia.vot")
    return (base, a), (moved, b)


def _pairs(truth_a, truth_b):
    """Per array: matched (static x, y) and (moved x, y) in array pixels (ROI undone)."""
    out = {i: ([], []) for i in range(4)}
    for fa, fb in zip(truth_a["frames"], truth_b["frames"]):
        assert fa["filename"] == fb["filename"]
        x0, y0 = truth_a["conventions"]["roi_origin"] if fa["roi"] else (0, 0)
        for aa, ab in zip(fa["arrays"], fb["arrays"]):
            shift = aa["roi_row_shift"]
            sa = {s[0]: (s[1] + x0, s[2] + y0 + shift) for s in aa["stars"]}
            sb = {s[0]: (s[1] + x0, s[2] + y0 + shift) for s in ab["stars"]}
            for k in sorted(set(sa) & set(sb)):
                out[aa["index"]][0].append(sa[k])
                out[aa["index"]][1].append(sb[k])
    return {i: (np.array(p), np.array(q)) for i, (p, q) in out.items()}


def test_perturbation_moves_stars_by_the_documented_transform(nights):
    (_, a), (_, b) = nights
    pairs = _pairs(a, b)
    c = (SIZE + 1) / 2
    f = 2048 / SIZE
    for i, (static, moved) in pairs.items():
        assert len(static) >= 20, f"array {i}: too few stars to test ({len(static)})"
        # the documented inverse: p = c + R(-theta) (p' - c - s)
        t = math.radians(GEOMETRY.rotation[i])
        d = static - c - np.array([GEOMETRY.dx[i], GEOMETRY.dy[i]]) / f
        expect = c + np.stack([math.cos(t) * d[:, 0] + math.sin(t) * d[:, 1],
                               -math.sin(t) * d[:, 0] + math.cos(t) * d[:, 1]], -1)
        assert np.max(np.abs(moved - expect)) < 1.1e-3  # truth positions are rounded to 1e-3
        # a shift + rotation fitted from the star pairs alone gives the planted one back
        # (moved -> static: p' - c = R(theta)(p - c) + s)
        u, v = moved[:, 0] - c, moved[:, 1] - c
        ones, zeros = np.ones_like(u), np.zeros_like(u)
        design = np.concatenate([np.stack([u, -v, ones, zeros], -1),
                                 np.stack([v, u, zeros, ones], -1)])
        rhs = np.concatenate([static[:, 0] - c, static[:, 1] - c])
        (ca, sa, sx, sy), *_ = np.linalg.lstsq(design, rhs, rcond=None)
        assert math.degrees(math.atan2(sa, ca)) == pytest.approx(GEOMETRY.rotation[i], abs=1e-4)
        assert math.hypot(ca, sa) == pytest.approx(1.0, abs=1e-6)
        assert sx * f == pytest.approx(GEOMETRY.dx[i], abs=4e-3)
        assert sy * f == pytest.approx(GEOMETRY.dy[i], abs=4e-3)
        residual = design @ np.array([ca, sa, sx, sy]) - rhs
        assert np.sqrt(np.mean(residual**2)) < 1e-3


def test_perturbed_night_keeps_the_headers_and_records_the_geometry(nights):
    (base, a), (moved, b) = nights
    assert GeometryPerturbation.from_dict(b["geometry"]) == GEOMETRY
    assert GeometryPerturbation.from_dict(a["geometry"]).is_identity
    on_disk = json.loads((moved / "truth.json").read_text())
    assert GeometryPerturbation.from_dict(on_disk["geometry"]) == GEOMETRY
    changed = 0
    for f in a["frames"]:
        with fits.open(base / f["filename"]) as ha, fits.open(moved / f["filename"]) as hb:
            for ea, eb in zip(ha, hb):
                assert ea.header == eb.header  # the WCS does not know about the departure
            changed += not np.array_equal(ha[1].data, hb[1].data)
    assert changed == len(a["frames"])


def test_galaxy_and_stars_share_the_perturbed_mapping():
    # the galaxy goes pixel -> sky, the stars sky -> pixel: one must invert the other
    rng = np.random.default_rng(1)
    kw = dict(size=SIZE, pa=0.0, rot=0.001, scale=1.00001, fp0=distortion.focal_plane_center(),
              geometry=GEOMETRY)
    for i in range(4):
        x, y = rng.uniform(1, SIZE, 50), rng.uniform(1, SIZE, 50)
        east, north = scene.pixel_to_tangent(i, x, y, **kw)
        x2, y2 = scene.tangent_to_pixel(i, east, north, **kw)
        assert np.max(np.hypot(x2 - x, y2 - y)) < 1e-6
        e0, n0 = scene.pixel_to_tangent(i, x, y, **{**kw, "geometry": None})
        # a real pixel sees the sky of the static pixel p' = to_static(p)
        xs, ys = GEOMETRY.to_static(i, x, y, size=SIZE)
        e1, n1 = scene.pixel_to_tangent(i, xs, ys, **{**kw, "geometry": None})
        assert np.max(np.hypot(east - e1, north - n1)) < 1e-9
        assert np.min(np.hypot(east - e0, north - n0)) > 0.01  # it did move (> 0.5 px)


def test_sign_conventions_as_documented():
    c = (SIZE + 1) / 2
    f = 2048 / SIZE
    g = GeometryPerturbation(dx=(16.0, 0, 0, 0), dy=(0, -8.0, 0, 0), rotation=(0, 0, 1.0, 0),
                             scale=(0, 0, 0, 0.01))
    x, y = g.from_static(0, c + 10, c + 10, size=SIZE)  # +dx: stars move by -dx
    assert (x, y) == pytest.approx((c + 10 - 16 / f, c + 10))
    x, y = g.from_static(1, c, c, size=SIZE)
    assert (x, y) == pytest.approx((c, c + 8 / f))
    x, y = g.from_static(2, c + 100, c, size=SIZE)  # +rotation: stars turn clockwise
    assert x == pytest.approx(c + 100 * math.cos(math.radians(1)))
    assert y == pytest.approx(c - 100 * math.sin(math.radians(1)))
    x, y = g.from_static(3, c + 101, c, size=SIZE)  # +scale: larger pixels, stars closer in
    assert (x, y) == pytest.approx((c + 100, c))
    xs, ys = g.to_static(2, *g.from_static(2, 10.0, 250.0, size=SIZE), size=SIZE)
    assert (xs, ys) == pytest.approx((10.0, 250.0), abs=1e-10)
    # full-size shift is dx pixels; size-64 pixels dx * 64 / 2048
    assert g.from_static(0, 1024.5, 1024.5)[0] == pytest.approx(1024.5 - 16)
    assert g.from_static(0, 32.5, 32.5, size=64)[0] == pytest.approx(32.5 - 0.5)


def test_random_respects_the_amplitudes():
    shifts, rotations = [], []
    for seed in range(200):
        g = GeometryPerturbation.random(seed, max_shift=6.0, max_rotation=0.2, max_scale=1e-4)
        shifts += list(np.hypot(g.dx, g.dy))
        rotations += list(g.rotation)
        assert max(abs(s) for s in g.scale) <= 1e-4
    shifts, rotations = np.array(shifts), np.array(rotations)
    assert shifts.max() <= 6.0 and shifts.min() >= 3.0
    assert np.abs(rotations).max() <= 0.2 and np.abs(rotations).min() >= 0.1
    assert 0.4 < np.mean(rotations > 0) < 0.6
    assert shifts.max() > 5.9 and np.abs(rotations).max() > 0.199  # the range is used
    g = GeometryPerturbation.random(4)
    assert g == GeometryPerturbation.random(4) != GeometryPerturbation.random(5)
    assert np.hypot(g.dx, g.dy).max() <= 10.0 and np.abs(g.rotation).max() <= 0.3
    assert g.scale == (0.0,) * 4
    assert GeometryPerturbation.from_dict(json.loads(json.dumps(g.to_dict()))) == g
    with pytest.raises(ValueError, match="rotation"):
        GeometryPerturbation(rotation=(0.1, 0.2))
    with pytest.raises(ValueError, match="max_shift"):
        GeometryPerturbation.random(1, max_shift=-1.0)


def _digest(directory):
    return {p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != "truth.json"}


def test_no_perturbation_leaves_the_night_unchanged(tmp_path):
    plain = simulate_night(tmp_path / "plain", seed=3, size=64, workers=1)
    zero = simulate_night(tmp_path / "zero", seed=3, size=64, workers=1,
                          geometry=GeometryPerturbation())
    tiny = simulate_night(tmp_path / "tiny", seed=3, size=64, workers=1, only=["science"],
                          geometry=GeometryPerturbation(dx=(0.1, 0, 0, 0)))
    digest = _digest(tmp_path / "plain")
    assert len(digest) == 53  # 50 frames, the BPM, truth/flat.npz, truth/persistence.npz
    assert _digest(tmp_path / "zero") == digest
    for p, z in zip(plain["frames"], zero["frames"]):
        assert p["arrays"] == z["arrays"]
    # a tenth of a full-size pixel on one array is already seen (the test can fail)
    sci = {f["filename"]: f for f in plain["frames"] if f["kind"] == "science"}
    moved = [f for f in tiny["frames"] if f["arrays"][0]["stars"] != sci[f["filename"]][
        "arrays"][0]["stars"]]
    assert len(moved) == len(sci)
    assert all(f["arrays"][1:] == sci[f["filename"]]["arrays"][1:] for f in tiny["frames"])


# ---------------------------------------------------------------- reference catalogue

SEEDS = range(100, 124)


@pytest.fixture(scope="module")
def catalogues():
    """Full-size catalogues (cheap: no pixels) of several nights, with their truth."""
    out = []
    for seed in SEEDS:
        cat = reference_catalogue(seed, 2048)
        truth = true_star_positions(seed, 2048, field=0)
        row = {sid: k for k, sid in enumerate(truth["source_id"])}
        out.append((cat, truth[[row[s] for s in cat["source_id"]]]))
    return out


def test_catalogue_columns_and_cuts(catalogues):
    cat, truth = catalogues[0]
    assert cat.colnames == ["source_id", "ref_epoch", "ra", "ra_error", "dec", "dec_error",
                            "pmra", "pmra_error", "pmdec", "pmdec_error", "phot_g_mean_mag"]
    assert {c: str(cat[c].unit) for c in ("ra", "ra_error", "pmra", "ref_epoch")} == {
        "ra": "deg", "ra_error": "mas", "pmra": "mas / yr", "ref_epoch": "yr"}
    assert cat["source_id"].dtype == np.int64 and np.all(cat["ref_epoch"] == GAIA_REF_EPOCH)
    n_total = n_nan = 0
    for cat, truth in catalogues:
        assert np.all(cat["phot_g_mean_mag"] <= 21.0)
        assert np.allclose(cat["phot_g_mean_mag"], truth["phot_g_mean_mag"], atol=1e-5)
        colour = truth["phot_g_mean_mag"] - truth["mag"]
        assert colour.min() >= 1.0 and colour.max() <= 3.0
        assert np.all(truth["field"] == 0)
        nan = np.isnan(cat["pmra"])
        assert np.array_equal(nan, np.isnan(cat["pmdec"]))
        assert np.array_equal(nan, np.isnan(cat["pmra_error"]))
        assert nan.sum() == round(0.03 * len(cat))
        pos, _ = gaia_errors(cat["phot_g_mean_mag"])
        assert np.allclose(cat["ra_error"], np.where(nan, 5 * pos, pos), rtol=1e-6)
        n_total += len(cat)
        n_nan += nan.sum()
    assert 0.02 < n_nan / n_total < 0.04
    assert n_total > len(SEEDS) * 150
    # completeness: every field-0 star with G <= 21 is in the catalogue of its night
    seed = SEEDS[0]
    truth = true_star_positions(seed, 2048, field=0)
    assert set(catalogues[0][0]["source_id"]) == set(
        truth["source_id"][truth["phot_g_mean_mag"] <= 21.0])
    sky = reference_catalogue(seed, 2048, field=1)
    std = reference_catalogue(seed, 2048, field=2)
    cat = make_catalogue(seed, 2048)
    assert np.all(cat["field"][sky["source_id"] - SOURCE_ID_BASE] == 1)
    first_std = int(np.nonzero(cat["field"] == 2)[0][0])
    assert std["source_id"][0] == SOURCE_ID_BASE + first_std  # the standard star itself


def test_proper_motions_are_realistic(catalogues):
    pm = np.concatenate([np.concatenate([t["pmra"], t["pmdec"]]) for _, t in catalogues])
    core = 1.4826 * np.median(np.abs(pm - np.median(pm)))
    assert 3.5 < core < 4.6
    assert 0.01 < np.mean(np.abs(pm) > 15.0) < 0.06
    assert np.abs(pm).max() < 150.0


def test_planted_errors_match_the_quoted_ones_per_g_bin(catalogues):
    epoch = night_epoch(SEEDS[0], 2048)
    span = epoch - GAIA_REF_EPOCH
    chi = {k: [] for k in ("ra", "dec", "pmra", "pmdec")}
    g_all = []
    for cat, truth in catalogues:
        assert truth.meta["epoch"] == epoch
        ok = ~np.isnan(cat["pmra"])
        dec0 = truth["dec"] - truth["pmdec"] * span / MAS
        ra0 = truth["ra"] - truth["pmra"] * span / MAS / np.cos(np.radians(truth["dec"]))
        d_ra = (cat["ra"] - ra0) * np.cos(np.radians(cat["dec"])) * MAS
        chi["ra"].append(d_ra / cat["ra_error"])
        chi["dec"].append((cat["dec"] - dec0) * MAS / cat["dec_error"])
        chi["pmra"].append(np.where(ok, (cat["pmra"] - truth["pmra"]) / cat["pmra_error"],
                                    np.nan))
        chi["pmdec"].append(np.where(ok, (cat["pmdec"] - truth["pmdec"]) / cat["pmdec_error"],
                                     np.nan))
        g_all.append(np.asarray(cat["phot_g_mean_mag"]))
    g = np.concatenate(g_all)
    for name, values in chi.items():
        values = np.concatenate(values)
        for lo, hi in ((0, 17), (17, 19), (19, 20), (20, 21.01)):
            sel = (g >= lo) & (g < hi) & np.isfinite(values)
            n = sel.sum()
            assert n >= 250, (name, lo, n)
            rms = np.sqrt(np.mean(values[sel] ** 2))
            # chi2 per degree of freedom: 1 within 4 sigma of its scatter sqrt(2 / n)
            assert abs(rms**2 - 1) < 4 * math.sqrt(2 / n), (name, lo, rms, n)
            assert abs(np.mean(values[sel])) < 4 / math.sqrt(n), (name, lo)


def test_catalogue_propagated_to_the_night_recovers_the_truth(catalogues):
    epoch = night_epoch(SEEDS[0], 2048)
    assert epoch == pytest.approx(Time("2017-05-05T23:05:31", scale="utc").decimalyear)
    span = epoch - GAIA_REF_EPOCH
    chis = []
    for cat, truth in catalogues:
        ok = ~np.isnan(cat["pmra"])
        dec = cat["dec"] + cat["pmdec"] * span / MAS
        ra = cat["ra"] + cat["pmra"] * span / MAS / np.cos(np.radians(cat["dec"]))
        sigma = np.hypot(cat["ra_error"], cat["pmra_error"] * span)
        d_ra = (ra - truth["ra"]) * np.cos(np.radians(truth["dec"])) * MAS
        d_dec = (dec - truth["dec"]) * MAS
        chis.append(np.concatenate([d_ra[ok] / sigma[ok], d_dec[ok] / sigma[ok]]))
        # without the propagation the fast stars are off by far more than their errors
        stale = np.hypot((cat["ra"] - truth["ra"]) * np.cos(np.radians(truth["dec"])),
                         cat["dec"] - truth["dec"]) * MAS
        assert np.max(stale[ok] / sigma[ok]) > 20
        # and the two-parameter sources are where they were in 2016 (within 5 sigma + pm)
        pm = np.hypot(truth["pmra"], truth["pmdec"]) * span
        assert np.all(stale[~ok] < pm[~ok] + 6 * cat["ra_error"][~ok])
    chi = np.concatenate(chis)
    assert abs(np.sqrt(np.mean(chi**2)) - 1) < 0.06
    assert np.max(np.abs(chi)) < 5.5


@pytest.mark.parametrize("suffix", [".fits", ".csv", ".vot", ".xml"])
def test_formats_round_trip(tmp_path, catalogues, suffix):
    cat = catalogues[1][0]
    path = write_reference_catalogue(tmp_path / f"gaia{suffix}", cat)
    back = Table.read(path)
    assert back.colnames == cat.colnames and len(back) == len(cat)
    assert not list(tmp_path.glob(".*"))  # no temporary left
    for name in cat.colnames:
        got = back[name]
        values = got.filled(np.nan) if hasattr(got, "filled") and got.dtype.kind == "f" \
            else np.asarray(got)
        assert np.array_equal(np.asarray(values, dtype=cat[name].dtype), np.asarray(cat[name]),
                              equal_nan=True), name
    if suffix != ".csv":
        assert str(back["pmra"].unit) == "mas / yr" and str(back["ra_error"].unit) == "mas"
    else:  # missing proper motions are empty fields, as the Gaia archive writes them
        text = path.read_text().splitlines()
        assert sum(",," in line for line in text[1:]) == int(np.isnan(cat["pmra"]).sum())


def test_unknown_format_is_a_one_line_error(tmp_path, catalogues):
    with pytest.raises(ValueError, match=r"gaia\.txt: unknown catalogue format '\.txt'"):
        write_reference_catalogue(tmp_path / "gaia.txt", catalogues[0][0])
    with pytest.raises(ValueError, match=r"unknown catalogue format"):
        simulate_night(tmp_path / "night", size=64, refcat="gaia.dat")
    assert not (tmp_path / "night").exists()


def test_night_with_refcat_records_it(nights):
    (_, _), (moved, b) = nights
    ref = b["refcat"]
    assert ref["path"] == "ref/gaia.vot" and ref["field"] == 0
    assert ref["ref_epoch"] == GAIA_REF_EPOCH and ref["night_epoch"] == night_epoch(11, SIZE)
    back = Table.read(moved / "ref" / "gaia.vot")
    assert len(back) == ref["n_sources"] == len(reference_catalogue(11, SIZE))
    assert int(np.sum(back["pmra"].mask)) == ref["n_without_pm"] >= 1
    # every star the on-target frames show with G <= 21 is in it, and most of it is seen
    seen = {s[0] for f in b["frames"] if f["kind"] == "science" and not f["is_sky"]
            for a in f["arrays"] for s in a["stars"]}
    truth = true_star_positions(11, SIZE)
    bright = set(truth["id"][truth["phot_g_mean_mag"] <= 21.0].tolist())
    ids = set((back["source_id"] - SOURCE_ID_BASE).tolist())
    assert seen & bright <= ids
    assert len(ids & seen) >= 0.6 * len(ids) >= 15


def test_cli_perturb_geometry_and_refcat(tmp_path, capsys):
    out = tmp_path / "night"
    status = main(["simulate", str(out), "--size", "64", "--only", "standard", "--seed", "3",
                   "--workers", "1", "--perturb-geometry", "--geometry-shift", "4",
                   "--refcat", "gaia.csv"])
    assert status == 0
    truth = json.loads((out / "truth.json").read_text())
    assert GeometryPerturbation.from_dict(truth["geometry"]) == GeometryPerturbation.random(
        3, max_shift=4.0)
    assert truth["refcat"]["path"] == "gaia.csv"
    assert len(Table.read(out / "gaia.csv")) == truth["refcat"]["n_sources"] > 0
    assert "reference catalogue gaia.csv" in capsys.readouterr().out
    status = main(["simulate", str(out), "--size", "64", "--only", "bpm", "--perturb-geometry",
                   "9", "--geometry-rotation", "0.1"])
    assert status == 0
    truth = json.loads((out / "truth.json").read_text())
    assert GeometryPerturbation.from_dict(truth["geometry"]) == GeometryPerturbation.random(
        9, max_rotation=0.1)
    assert main(["simulate", str(out), "--size", "64", "--geometry-shift", "3"]) == 2
    assert "--geometry-shift needs --perturb-geometry" in capsys.readouterr().err
    assert main(["simulate", str(out), "--size", "64", "--perturb-geometry", "1",
                 "--geometry-rotation", "-1"]) == 2
    assert "--geometry-rotation: must be >= 0" in capsys.readouterr().err
