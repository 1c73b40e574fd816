"""Raw GSAOI headers for simulated frames, modelled on real archive headers."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
from astropy.io import fits

from gsaoi_watch.instrument import distortion
from gsaoi_watch.sim.conditions import band_text

__all__ = ["extension_header", "primary_header", "roi_origin"]


def roi_origin(size):
    """0-based (x, y) origin of the central ROI (a quarter of the array area) in an array."""
    return size // 4, size // 4


def _hms(t: dt.datetime) -> str:
    return f"{t:%H:%M:%S}.{t.microsecond // 100000:d}"


def _mjd(t: dt.datetime) -> float:
    return (t - dt.datetime(1858, 11, 17)).total_seconds() / 86400.0


def primary_header(plan, *, size) -> fits.Header:
    """Build the primary header of a raw frame from its plan.

    Every keyword DRAGONS reads is present (gsaoi_facts.md, "Minimum header set"), with the
    values a real frame of that kind carries; guiding keywords distinguish on-target (GeMS
    guided) from offset-sky (unguided) frames.  REQIQ, REQCC, REQBG and REQWV are the plan's
    requested bands (dayCal flats: Any, as real ones); RAWIQ, RAWCC, RAWBG, RAWWV and
    RAWPIREQ follow the conditions delivered to an on-sky frame (flats: the nominal night's).
    """
    cond = plan.conditions
    req = cond.get("requested", {})
    raw = cond.get("raw", {"iq": 70, "cc": 50, "bg": 100, "wv": 100})
    pi_met = cond.get("pi_requirements_met", True)
    start = dt.datetime.fromisoformat(plan.ut_start)
    utstart = start + dt.timedelta(seconds=1.2)
    utend = utstart + dt.timedelta(seconds=plan.exptime + plan.lnrs * 0.66 * 2 + 1.0)
    is_flat = plan.kind.startswith("flat")
    pa = plan.pa
    t = math.radians(pa)
    raoff = plan.poff * math.cos(t) + plan.qoff * math.sin(t)
    decoff = -plan.poff * math.sin(t) + plan.qoff * math.cos(t)
    h = fits.Header()
    cards = [
        ("INSTRUME", "GSAOI", "Instrument used to acquire data"),
        ("OBJECT", plan.object, "Object Name"),
        ("OBSTYPE", "OBJECT", "Observation type"),
        ("OBSCLASS", plan.obsclass, "Observe class"),
        ("GEMPRGID", plan.program, "Gemini programme ID"),
        ("OBSID", plan.obsid, "Gemini Observation ID"),
        ("DATALAB", f"{plan.obsid}-{plan.number:03d}", "Gemini Datalabel"),
        ("OBSERVER", "gsaoi_watch simulator", "Observer"),
        ("OBSERVAT", "Gemini-South", "Observatory (Gemini-North|Gemini-South)"),
        ("TELESCOP", "Gemini-South", "Name of telescope (Gemini-North|Gemini-South)"),
        ("EPOCH", 2000.0, "Target Coordinate Epoch"),
        ("EQUINOX", 0.0 if is_flat else 2000.0, "Equinox of coordinate system"),
        ("TRKEQUIN", 2000.0, "Tracking equinox"),
        ("RA", plan.target_ra, "Target Right Ascension"),
        ("DEC", plan.target_dec, "Target Declination"),
        ("ELEVATIO", round(math.degrees(math.asin(min(1.0, 1.0 / plan.airmass))), 4),
         "Telescope Elevation at the start of exposure"),
        ("AZIMUTH", 30.0, "Telescope Azimuth at the start of exposure"),
        ("CRPA", 0.0, "Cass Rotator Position Angle at start"),
        ("LT", _hms(start - dt.timedelta(hours=4)), "Local time at start of exposure"),
        ("TRKFRAME", "FK5", "Tracking co-ordinate"),
        ("DECTRACK", -0.013373047918 if is_flat else 0.0, "Differential tracking rate Dec"),
        ("TRKEPOCH", round(_mjd(start), 6), "Differential tracking reference epoch"),
        ("RATRACK", 1.00236954218 if is_flat else 0.0, "Differential tracking rate RA"),
        ("FRAME", "AZEL_TOPO" if is_flat else "FK5", "Target coordinate system"),
        ("PMDEC", 0.0, "Target proper motion in Declination"),
        ("PMRA", 0.0, "Target proper motion in RA"),
        ("WAVELENG", 21500.0, "Effective Target Wavelength (A)"),
        ("RAWIQ", band_text(raw["iq"]), "Raw Image Quality"),
        ("RAWCC", band_text(raw["cc"]), "Raw Cloud Cover"),
        ("RAWWV", band_text(raw["wv"]), "Raw Water Vapour/Transparency"),
        ("RAWBG", band_text(raw["bg"]), "Raw Background"),
        ("RAWPIREQ", "YES" if pi_met else "NO", "PI Requirements Met"),
        ("RAWGEMQA", "USABLE", "Gemini Quality Assessment"),
        ("UT", _hms(start), "UTC at start of exposure"),
        ("DATE", f"{start:%Y-%m-%d}", "UTC Date of observation (YYYY-MM-DD)"),
        ("XOFFSET", plan.poff, "Telescope offset in x in arcsec"),
        ("YOFFSET", plan.qoff, "Telescope offset in y in arcsec"),
        ("POFFSET", plan.poff, "Telescope offset in p in arcsec"),
        ("QOFFSET", plan.qoff, "Telescope offset in q in arcsec"),
        ("RAOFFSET", raoff, "Telescope offset in RA in arcsec"),
        ("DECOFFSE", decoff, "Telescope offset in DEC in arcsec"),
        ("RATRGOFF", 0.0, "Target offset in RA in arcsec"),
        ("DECTRGOF", 0.0, "Target offset in DEC in arcsec"),
        ("PA", pa, "Instrument Position Angle at start (degrees)"),
        ("IAA", 1.061, "Instrument Alignment Angle"),
        ("AOFOLD", "IN", "AO Pick-Off Mirror Position"),
        ("PWFS1_ST", "parked", "PWFS1 probe state (frozen,guiding,parked)"),
        ("PWFS2_ST", "parked", "PWFS2 probe state (frozen,guiding,parked)"),
        ("OIWFS_ST", "parked", "OIWFS probe state (frozen,guiding,parked)"),
        ("AOWFS_ST", "parked", "AOWFS probe state (frozen,guiding,parked)"),
        ("REQIQ", band_text(req.get("iq", 100)), "Requested Image Quality"),
        ("REQCC", band_text(req.get("cc", 100)), "Requested Cloud Cover"),
        ("REQBG", band_text(req.get("bg", 100)), "Requested Background"),
        ("REQWV", band_text(req.get("wv", 100)), "Requested Water Vapour"),
    ]
    if plan.guided:
        for k, (dra, ddec) in enumerate(((0.006, -0.014), (0.0045, 0.015), (-0.012, 0.0013))):
            n = k + 1
            cards += [
                (f"GWFS{n}CFG", f"TTGS{n}", f"WFS Guide star {n} configuration"),
                (f"GWFS{n}OBJ", f"sim-tt{n}", f"WFS{n} guide star object name"),
                (f"GWFS{n}RA", plan.target_ra + dra, f"WFS{n} guide star RA"),
                (f"GWFS{n}DEC", plan.target_dec + ddec, f"WFS{n} guide star DEC"),
            ]
    cards += [
        ("INPORT", 1, "Number of ISS port where instrument is located"),
        ("FILTER1", "Kshort_G1105", "Upper filter wheel component in beam"),
        ("FILTER2", "Clear", "Lower filter wheel component in beam"),
        ("UTLWHEEL", "Clear", "Utility wheel component in beam"),
        ("COVER", "OPEN", "Cover status"),
        ("DATE-OBS", f"{start:%Y-%m-%d}", "UT Date of observation (YYYY-MM-DD)"),
        ("TIME-OBS", _hms(start), "UT Time of observation"),
        ("MJD-OBS", round(_mjd(start), 6), "MJD of start of observation"),
        ("SAMPMODE", "FOWLER", "Read method"),
        ("EXPMODE", "NONDESTRUCTIVE", "Read mode"),
        ("NRESETS", 1, "Number of resets btw each exposure"),
        ("READTIME", 5.3, "Read time"),
        ("BUNIT", "ADU", "Units of quantity read from detector array"),
        ("DCNAME", "GSAOI DC", "Detector controller name"),
        ("DETSIZE", f"[1:{2 * size},1:{2 * size}]", "Detector size"),
        ("DETECTOR", "GSAOI", "Detector"),
        ("NCCDS", 4, "Number of CCD chips"),
        ("NAMPS", 16 if not plan.roi else 8, "Number of Amplifiers in this image"),
        ("NEXTEND", 4, "Number of standard extensions"),
        ("READMODE", "FOWLER", "Detector Readout mode"),
        ("RDTIME", round(plan.lnrs * 0.66, 4), "integration time (seconds)"),
        ("COADDS", plan.coadds, "Number of coadds"),
        ("LNRS", plan.lnrs, "Number of Non-destructive reads"),
        ("EXPTIME", plan.exptime, "Exposure time requested (seconds)"),
        ("UTSTART", _hms(utstart), "UT at observation start"),
        ("UTEND", _hms(utend), "UT at observation end"),
        ("ELAPSED", round(plan.exptime + plan.lnrs * 0.66, 2), "Time from reset to final NDR"),
        ("GEMSSADC", "OFF", "GeMS Science ADC"),
        ("GEMSDICH", 1.0, "GeMS dichroic beamspliter (microns)"),
        ("LGSLOOP", "CLOSED" if plan.guided else "OPEN", "Status of the LGS loop"),
        ("TTLOOP", "CLOSED" if plan.guided else "OPEN", "Status of the tip-tilt loop"),
        ("FOCLOOP", "CLOSED" if plan.guided else "OPEN", "Status of the Slow Focus loop"),
        ("RZEROVAL", 12.0, "r0 value at 500nm in cm"),
        ("AIRMASS", plan.airmass, "Mean airmass for the exposure"),
        ("AMSTART", plan.airmass, "Airmass at start of exposure"),
        ("AMEND", plan.airmass, "Airmass at end of exposure"),
        ("RELEASE", f"{start.year + 1}-{start:%m-%d}", "End of proprietary period YYYY-MM-DD"),
    ]
    for key, value, comment in cards:
        h[key] = (value, comment)
    return h


def _pointing(plan):
    dec = plan.target_dec
    t = math.radians(plan.pa)
    raoff = plan.poff * math.cos(t) + plan.qoff * math.sin(t)
    decoff = -plan.poff * math.sin(t) + plan.qoff * math.cos(t)
    return (plan.target_ra + raoff / 3600.0 / math.cos(math.radians(dec)),
            dec + decoff / 3600.0)


def extension_header(plan, spec, *, size) -> fits.Header:
    """Build the header of one array extension (sections, amplifiers, nominal TAN WCS).

    The WCS is what the telescope writes: linear, no distortion, reference pixel at the
    pointing (the mosaic centre), CD from the local scale and rotation of the array.
    """
    h = fits.Header()
    x0, y0 = roi_origin(size) if plan.roi else (0, 0)
    n = size // 2 if plan.roi else size
    ox, oy = spec.detsec_origin(size)
    ccdsec = f"[{x0 + 1}:{x0 + n},{y0 + 1}:{y0 + n}]"
    detsec = f"[{ox + x0 + 1}:{ox + x0 + n},{oy + y0 + 1}:{oy + y0 + n}]"
    fp0 = distortion.focal_plane_center()
    cx, cy = distortion.inverse(spec.index, fp0[0], fp0[1], size=size)
    jac = distortion.jacobian(spec.index, size / 2 + 0.5, size / 2 + 0.5, size=size)
    t = math.radians(plan.pa)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    cd = rot @ jac / 3600.0
    ra, dec = _pointing(plan)
    amp_w = n // 4 if not plan.roi else n // 2
    cards = [
        ("INHERIT", False, "inherit the primary header"),
        ("CCDNAME", spec.ccdname, "Array name"),
        ("CCDSIZE", f"[1:{size},1:{size}]", "Array dimensions"),
        ("CCDSUM", "1 1", "Array binning"),
        ("CCDSEC", ccdsec, "Array section"),
    ]
    for a in range(4 if not plan.roi else 2):
        lo, hi = a * amp_w + 1, (a + 1) * amp_w
        sec = f"[{lo}:{hi},1:{n}]" if a % 2 == 0 else f"[{hi}:{lo},1:{n}]"
        cards += [(f"AMPNAME{a + 1}", "ABCD"[a], f"Amplifier {a + 1} name"),
                  (f"AMPSEC{a + 1}", sec, f"Amplifier {a + 1} section")]
    cards += [
        ("DETSEC", detsec, "Detector section (wrt mosaic)"),
        ("DATASEC", f"[1:{n},1:{n}]", "Current datasection of the frame"),
        ("CTYPE1", "RA---TAN", "R.A. in tangent plane projection"),
        ("CTYPE2", "DEC--TAN", "DEC. in tangent plane projection"),
        ("CRPIX1", float(cx) - x0, "Ref pix of axis 1"),
        ("CRPIX2", float(cy) - y0, "Ref pix of axis 2"),
        ("CRVAL1", ra, "RA at Ref pix in decimal degrees"),
        ("CRVAL2", dec, "DEC. at Ref pix in decimal degrees"),
        ("CD1_1", float(cd[0, 0]), "partial of first axis coord w.r.t. x"),
        ("CD1_2", float(cd[0, 1]), "partial of first axis coord w.r.t. y"),
        ("CD2_1", float(cd[1, 0]), "partial of second axis coord w.r.t. x"),
        ("CD2_2", float(cd[1, 1]), "partial of second axis coord w.r.t. y"),
        ("RADECSYS", "FK5", "R.A./DEC. coordinate system reference"),
        ("XSCALE", float(3600 * abs(cd[0, 0])), "Pixel scale in X (in arcsec)"),
        ("YSCALE", float(3600 * abs(cd[1, 1])), "Pixel scale in Y (in arcsec)"),
        ("ARRAYID", spec.array_id, "Array serial number"),
        ("FRMNAME", f"GSAOI_Frame{spec.index + 1}", "Name assigned to a data frame"),
        ("FRAMEID", spec.frameid, "GSAOI Frame identifier"),
        ("DATATYP", "Intensity", "Type of data frame"),
        ("GAIN", spec.gain, "Gain (e-/ADU)"),
        ("RDNOISE", spec.read_noise[plan.lnrs], "Read noise (e-)"),
    ]
    for key, value, comment in cards:
        h[key] = (value, comment)
    return h

