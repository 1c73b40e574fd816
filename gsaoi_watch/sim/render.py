"""Render one simulated raw frame: photons -> detector -> Fowler readout -> FITS HDUs."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from astropy.io import fits
from scipy import ndimage

from gsaoi_watch.instrument import distortion
from gsaoi_watch.instrument.tables import ARRAYS, FULL_SIZE, NOMINAL_ZEROPOINTS, ROI_FIX_DATE
from gsaoi_watch.sim import scene
from gsaoi_watch.sim.detector import invert_nonlinearity, make_detector, read_out
from gsaoi_watch.sim.headers import extension_header, primary_header, roi_origin
from gsaoi_watch.sim.persistence import latent_pixels
from gsaoi_watch.sim.plan import NGC5128, plan_night

__all__ = ["make_catalogue", "render_frame", "roi_row_shift", "star_flux"]


@lru_cache(maxsize=2)
def make_catalogue(seed: int, size: int) -> dict:
    """Star catalogue of the night (science field, offset-sky field, standard field).

    Returns a dict of numpy arrays ``id, ra, dec, mag`` and ``field`` (0 science, 1 sky,
    2 standard); the first entry of field 2 is the standard star itself.
    """
    params = plan_night(seed, size).params
    rng = np.random.default_rng([seed, 2])
    scale = (size / FULL_SIZE) ** 2
    ra_l, dec_l, mag_l, field_l = [], [], [], []
    n_sci = max(int(params["n_field_stars_full"] * scale), 160)
    ra, dec, mag = scene.make_star_field(rng, ra0=NGC5128[0], dec0=NGC5128[1],
                                         half_width=58.0, n_stars=n_sci,
                                         mag_range=params["field_mag_range"])
    ra_l.append(ra)
    dec_l.append(dec)
    mag_l.append(mag)
    field_l.append(np.zeros(n_sci, int))
    bright = np.array(params["bright_stars"])
    bra, bdec = scene.tangent_to_sky(bright[:, 0], bright[:, 1], *NGC5128)
    ra_l.append(np.atleast_1d(bra))
    dec_l.append(np.atleast_1d(bdec))
    mag_l.append(bright[:, 2])
    field_l.append(np.zeros(len(bright), int))
    # Offset-sky field around (-200", +260") from the target.
    sra, sdec = scene.tangent_to_sky(-200.0, 260.0, *NGC5128)
    n_sky = max(int(params["n_sky_stars_full"] * scale), 40)
    ra, dec, mag = scene.make_star_field(rng, ra0=float(sra), dec0=float(sdec), half_width=60.0,
                                         n_stars=n_sky, mag_range=params["field_mag_range"])
    ra_l.append(ra)
    dec_l.append(dec)
    mag_l.append(mag)
    field_l.append(np.ones(n_sky, int))
    std = params["standard"]
    n_std = max(int(params["n_standard_field_stars_full"] * scale), 10)
    ra, dec, mag = scene.make_star_field(rng, ra0=std["ra"], dec0=std["dec"], half_width=60.0,
                                         n_stars=n_std, mag_range=(16.0, 22.0))
    ra_l.append(np.concatenate([[std["ra"]], ra]))
    dec_l.append(np.concatenate([[std["dec"]], dec]))
    mag_l.append(np.concatenate([[std["mag"]], mag]))
    field_l.append(np.full(n_std + 1, 2))
    out = {"ra": np.concatenate(ra_l), "dec": np.concatenate(dec_l),
           "mag": np.concatenate(mag_l), "field": np.concatenate(field_l)}
    out["id"] = np.arange(len(out["ra"]))
    return out


def star_flux(mag, array_index, airmass, extinction):
    """Electrons per second after flat-fielding for a Kshort magnitude on an array.

    Uses DRAGONS' nominal zero point of that array (magnitude giving 1 e-/s at airmass 1)
    and the extinction coefficient: ``10**(0.4 * (ZP - mag - k * (airmass - 1)))``.
    """
    zp = NOMINAL_ZEROPOINTS["Kshort"][array_index]
    return 10 ** (0.4 * (zp - np.asarray(mag) - extinction * (airmass - 1.0)))


def roi_row_shift(plan, index):
    """Row offset between where a central-ROI readout really comes from and its CCDSEC.

    GSAOI central-ROI data taken on or after 2013-05-13 come from one row higher (arrays
    0 and 1) or lower (arrays 2 and 3) than CCDSEC/DETSEC say; DRAGONS' prepare corrects
    the sections (gsaoi_facts.md 1.4).  The simulator reproduces the instrument, bug included.
    """
    if not plan.roi or plan.ut_start[:10] < ROI_FIX_DATE:
        return 0
    return 1 if index in (0, 1) else -1


def _pointing(plan):
    t = math.radians(plan.pa)
    raoff = plan.poff * math.cos(t) + plan.qoff * math.sin(t)
    decoff = -plan.poff * math.sin(t) + plan.qoff * math.cos(t)
    ra = plan.target_ra + raoff / 3600.0 / math.cos(math.radians(plan.target_dec))
    return ra, plan.target_dec + decoff / 3600.0, raoff, decoff


def _galaxy(plan, spec, params, *, size, x0, y0, n, fp0, geometry=None):
    step = max(n // 32, 4)
    gx = np.arange(0, n + step, step, dtype=float) + 1 + x0
    gy = np.arange(0, n + step, step, dtype=float) + 1 + y0
    mx, my = np.meshgrid(gx, gy)
    east, north = scene.pixel_to_tangent(spec.index, mx, my, size=size, pa=plan.pa,
                                         rot=plan.rotation_deg, scale=plan.plate_scale, fp0=fp0,
                                         geometry=geometry)
    _, _, raoff, decoff = _pointing(plan)
    sb = scene.galaxy_surface_brightness(east + raoff, north + decoff, params["galaxy"])
    if sb.max() < 1e-3:
        return None
    coords = np.mgrid[0:n, 0:n].astype(np.float32) / step
    return ndimage.map_coordinates(sb, coords, order=1, mode="nearest").astype(np.float32)


def _cosmic_rays(rng, image, exptime, params, array_index, size):
    ny, nx = image.shape
    per_pixel_per_s = params["cosmic_rate_per_cm2_per_min"] / 60.0 * (
        params["pixel_pitch_um"] * 1e-4) ** 2
    n = rng.poisson(per_pixel_per_s * exptime * nx * ny)
    hits = []
    for _ in range(n):
        x, y = int(rng.integers(0, nx)), int(rng.integers(0, ny))
        energy = float(np.exp(rng.normal(math.log(2500.0), 0.8)))
        length = int(rng.integers(1, 5))
        ang = rng.uniform(0, math.pi)
        for s in range(length):
            xx = min(max(int(round(x + s * math.cos(ang))), 0), nx - 1)
            yy = min(max(int(round(y + s * math.sin(ang))), 0), ny - 1)
            image[yy, xx] += energy / length
        hits.append([array_index, x, y, round(energy, 1)])
    return hits


def render_frame(plan, night_seed: int, size: int, params: dict, *, geometry=None):
    """Render one raw frame.

    Parameters
    ----------
    plan : gsaoi_watch.sim.plan.FramePlan
        The frame.
    night_seed, size : int
        Night seed and array size (select the planted detector and catalogue).
    params : dict
        Night parameters (``Night.params``).
    geometry : gsaoi_watch.sim.geometry.GeometryPerturbation, optional
        The arrays' departure from the static distortion model, applied to the stars and
        the galaxy (not to the headers' WCS).  Default: none.

    Returns
    -------
    hdul : astropy.io.fits.HDUList
        The raw frame (data-less primary + 4 float32 image extensions, ADU).
    truth : dict
        What was planted in this frame (pointing, sky, stars, saturation, cosmic rays).
    latent : list of dict
        Per array, flat indices into the array as written: ``latent`` (the pixels that
        leave persistence, see :func:`gsaoi_watch.sim.persistence.latent_pixels`) with
        ``fill`` (their raw charge over the well, at most 1) and ``saturated`` (the pixels
        that reached the well).  Persistence from earlier frames is not in this frame yet
        (simulate_night adds it afterwards).
    """
    det = make_detector(night_seed, size)
    rng = np.random.default_rng(plan.seed)
    fp0 = distortion.focal_plane_center()
    phu = primary_header(plan, size=size)
    hdus = [fits.PrimaryHDU(header=phu)]
    ra_p, dec_p, _, _ = _pointing(plan)
    truth = {"pointing_ra": ra_p, "pointing_dec": dec_p, "arrays": []}
    cat = None
    if plan.kind in ("standard", "science"):
        cat = make_catalogue(night_seed, size)
    x0, y_nominal = roi_origin(size) if plan.roi else (0, 0)
    n = size // 2 if plan.roi else size
    cr_hits = []
    latent = []
    # grey cloud: every astronomical source dimmed, the (thermal, airglow) sky not
    transmission = plan.conditions.get("transmission", 1.0)
    for spec in ARRAYS:
        y0 = y_nominal + roi_row_shift(plan, spec.index)
        sl = (slice(y0, y0 + n), slice(x0, x0 + n))
        flat = det.flat[spec.index][sl]
        response = det.response[spec.index][sl]
        galaxy_max = 0.0
        if plan.kind == "flat_on":
            rate = (params["lamp_on_rate"] * plan.lamp_scale + params["lamp_off_rate"]) * flat
        elif plan.kind == "flat_off":
            rate = params["lamp_off_rate"] * flat
        else:
            rate = plan.sky_rate * flat
            # the galaxy is NGC 5128, around the science target only (the standard field,
            # 10 degrees away, has none; its offsets alone would put the halo in it)
            gal = _galaxy(plan, spec, params, size=size, x0=x0, y0=y0, n=n, fp0=fp0,
                          geometry=geometry) \
                if plan.kind == "science" else None
            if gal is not None:
                if transmission != 1.0:
                    gal = gal * np.float32(transmission)
                rate = rate + gal * flat
                galaxy_max = float(gal.max())
        rate = rate.astype(np.float32)
        array_truth = {"index": spec.index, "stars": [], "roi_row_shift": y0 - y_nominal,
                       "galaxy_max_rate": galaxy_max}
        if cat is not None:
            stars = np.zeros((n, n), dtype=np.float32)
            k, xs, ys = scene.star_pixels(
                spec.index, cat["ra"], cat["dec"], ra0=ra_p, dec0=dec_p, size=size,
                pa=plan.pa, rot=plan.rotation_deg, scale=plan.plate_scale, fp0=fp0, margin=40,
                geometry=geometry)
            flux = star_flux(cat["mag"][k], spec.index, plan.airmass,
                             params["extinction_mag_per_airmass"])
            if transmission != 1.0:
                flux = flux * transmission
            scene.add_stars(stars, xs, ys, flux, plan.fwhm_px, x0=x0, y0=y0)
            rate += stars * response
            inside = (xs > x0 + 0.5) & (xs < x0 + n + 0.5) & (ys > y0 + 0.5) & (ys < y0 + n + 0.5)
            array_truth["stars"] = [
                [int(i), round(float(x) - x0, 3), round(float(y) - y0, 3), round(float(f), 3)]
                for i, x, y, f, ins in zip(k, xs, ys, flux, inside) if ins]
        rate += det.dark[spec.index][sl]
        expected = rate * np.float32(plan.exptime)
        electrons = expected + np.sqrt(np.maximum(expected, 0.0)) * rng.standard_normal(
            expected.shape, dtype=np.float32)
        cr_hits += _cosmic_rays(rng, electrons, plan.exptime, params, spec.index, size)
        adu, saturated, low = read_out(electrons, rate, spec=spec, lnrs=plan.lnrs, rng=rng,
                                       coadds=plan.coadds)
        array_truth["n_saturated"] = int(saturated.sum())
        array_truth["n_reads_low"] = int(low.sum())
        lat = np.flatnonzero(latent_pixels(adu, spec.non_linear_level))
        raw_e = invert_nonlinearity(np.maximum(electrons.reshape(-1)[lat], 0.0),
                                    spec.coeffs[plan.lnrs])
        fill = np.minimum(raw_e / (spec.well * spec.gain), 1.0)
        fill[saturated.reshape(-1)[lat]] = 1.0
        latent.append({"latent": lat.astype(np.int32), "fill": fill.astype(np.float32),
                       "saturated": np.flatnonzero(saturated).astype(np.int32)})
        truth["arrays"].append(array_truth)
        hdus.append(fits.ImageHDU(data=adu, header=extension_header(plan, spec, size=size)))
    truth["cosmic_rays"] = cr_hits
    return fits.HDUList(hdus), truth, latent
