"""Read a GSAOI file's headers: validation, DRAGONS descriptors and tags (no pixel data)."""

from __future__ import annotations

import datetime as _dt
import math
import os
import re
from collections.abc import Iterable
from functools import cached_property
from typing import Any

from gsaoi_watch.data.names import ROOT_NAME_LENGTH, safe_name
from gsaoi_watch.data.sections import parse_section
from gsaoi_watch.data.tags import compute_tags
from gsaoi_watch.instrument import tables as instrument

__all__ = ['DESCRIPTORS', 'N_ARRAYS', 'N_MOSAIC_ARRAYS', 'FrameInfo', 'cd_pixel_scale',
           'product_status', 'remove_component_id']

#: Arrays of a GSAOI frame (raw, or processed array by array).
N_ARRAYS = 4
#: Arrays of a mosaicked product (a stack: DRAGONS' resampleToCommonFrame + stackFrames).
N_MOSAIC_ARRAYS = 1


def remove_component_id(name: Any) -> str | None:
    """Strip a Gemini component ID: 'Kshort_G1105' -> 'Kshort' (None stays None)."""
    if not isinstance(name, str):
        return None
    m = re.match(r"(?P<filt>.*?)_G(.*?)", name)
    return m.group("filt") if m else name


def header_text(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def product_status(tags: Iterable[str]) -> str | None:
    """'PROCESSED' or 'PREPARED' for a file gsaoi_watch or DRAGONS processed, None if raw.

    From the DRAGONS tags (:func:`~gsaoi_watch.data.tags.compute_tags`): PROCESSED for a
    processed calibration or processed science (a stack), PREPARED for an intermediate
    product (``_skyCorrected``, ``_flatCorrected``).
    """
    tags = set(tags)
    if "PROCESSED" in tags:
        return "PROCESSED"
    if "PREPARED" in tags:
        return "PREPARED"
    return None


def cd_pixel_scale(header, *, zero=False):
    """Pixel scale (arcsec) of a header's CD matrix: the square root of the pixel area.

    ``3600 sqrt(proj_plane_pixel_area)`` (astropy.wcs.utils), i.e. 3600 sqrt|det CD|, the
    scale of a square pixel of the same area.  (The geometric mean of
    ``proj_plane_pixel_scales``, the lengths of the CD columns, would ignore the skew of the
    axes: 1e-5 larger on the simulated GSAOI headers, enough to change PIXSCALE.)

    Returns
    -------
    float or None
        None without a complete CD matrix, and for a singular one unless ``zero``.
    """
    from astropy.wcs import WCS
    from astropy.wcs.utils import proj_plane_pixel_area

    try:
        cd = [[float(header["CD1_1"]), float(header["CD1_2"])],
              [float(header["CD2_1"]), float(header["CD2_2"])]]
    except (KeyError, TypeError, ValueError):
        return None
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.cd = cd
    try:
        area = proj_plane_pixel_area(wcs)
    except Exception:  # noqa: BLE001 - wcslib refuses a singular matrix
        area = 0.0
    if area == 0 and not zero:
        return None
    return 3600.0 * math.sqrt(area)


_TIME_RE = re.compile(r"^(\d{1,2}):(\d{2}):(\d{2}(?:\.\d*)?)$")


_DATE_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")


def _parse_time(text):
    m = _TIME_RE.match(text.strip()) if isinstance(text, str) else None
    if not m:
        return None
    h, mi, s = int(m.group(1)), int(m.group(2)), float(m.group(3))
    sec = int(s)
    micro = int(round((s - sec) * 1e6))
    if micro >= 1_000_000:
        sec, micro = sec + 1, micro - 1_000_000
    if sec >= 60:  # a leap second or rounding: keep within range
        sec, micro = 59, 999_999
    return _dt.time(h, mi, sec, micro)


class FrameInfo:
    """Header view of one GSAOI file: DRAGONS descriptors (as methods) and tags.

    Descriptors that DRAGONS evaluates per extension (``gain``, ``array_name``, sections,
    ...) return one value per array in extension order: four for a frame, one (a list of
    one) for a mosaicked product such as a stack, as DRAGONS' descriptors of a
    one-extension file do.  A descriptor whose keyword is
    missing returns None rather than raising, so dataselect expressions simply fail to match.

    Parameters
    ----------
    phu : astropy.io.fits.Header
        The primary header.
    ext_headers : list of astropy.io.fits.Header
        Headers of the four array extensions, in file order.
    path : str, optional
        The file the headers came from.
    """

    def __init__(self, phu: Any, ext_headers: Iterable[Any],
                 path: str | os.PathLike[str] | None = None):
        self.phu = phu
        self.ext_headers = list(ext_headers)
        self.path = None if path is None else str(path)

    def __repr__(self):
        return f"FrameInfo({self.filename!r}, tags={sorted(self.tags)})"

    # --- identity -------------------------------------------------------------------------
    @property
    def filename(self) -> str | None:
        """The frame's name: the file's base name made safe, or None for headers in memory.

        :func:`gsaoi_watch.data.names.safe_name` of the base name (unchanged for a name such
        as ``S20170505S0095.fits``), the same name :func:`gsaoi_watch.data.fitsio.load_frame`
        gives the frame, so it can go into a header (SKYIM, IMCMB) and name products.
        """
        if self.path is None:
            return None
        return safe_name(os.path.basename(self.path), limit=ROOT_NAME_LENGTH)

    @cached_property
    def tags(self) -> frozenset:
        """DRAGONS tags (see :func:`gsaoi_watch.data.tags.compute_tags`)."""
        return compute_tags(self.phu)

    def _phu(self, key, default=None):
        return header_text(self.phu.get(key, default))

    def _ext(self, key):
        return [header_text(h.get(key)) for h in self.ext_headers]

    def instrument(self) -> str | None:
        """PHU INSTRUME."""
        return self._phu("INSTRUME")

    def object(self) -> str | None:
        """PHU OBJECT."""
        return self._phu("OBJECT")

    def observation_type(self) -> str | None:
        """PHU OBSTYPE."""
        return self._phu("OBSTYPE")

    def observation_class(self) -> str | None:
        """PHU OBSCLASS ('science', 'partnerCal', 'dayCal', 'acq', ...)."""
        return self._phu("OBSCLASS")

    def observation_id(self) -> str | None:
        """PHU OBSID, e.g. 'GS-2017A-Q-29-13'."""
        return self._phu("OBSID")

    def data_label(self) -> str | None:
        """PHU DATALAB, e.g. 'GS-2017A-Q-29-13-001'."""
        return self._phu("DATALAB")

    def program_id(self) -> str | None:
        """PHU GEMPRGID."""
        return self._phu("GEMPRGID")

    def telescope(self) -> str | None:
        """PHU TELESCOP."""
        return self._phu("TELESCOP")

    def detector_name(self, pretty: bool = False) -> str | None:
        """PHU DETECTOR."""
        return self._phu("DETECTOR")

    def camera(self, pretty: bool = False) -> str | None:
        """PHU DETECTOR (GSAOI's camera keyword)."""
        return self._phu("DETECTOR")

    # --- filter and wavelength --------------------------------------------------------------
    def filter_name(self, stripID: bool = False, pretty: bool = False) -> str | None:  # noqa: N803 (DRAGONS' name)
        """Filter combination: raw 'Kshort_G1105&Clear', or pretty 'Kshort'.

        Both FILTER1 and FILTER2 are required; None if either is missing.
        """
        f1, f2 = self._phu("FILTER1"), self._phu("FILTER2")
        if f1 is None or f2 is None:
            return None
        f1, f2 = str(f1), str(f2)
        if stripID or pretty:
            f1, f2 = remove_component_id(f1), remove_component_id(f2)
        if not pretty:
            return f"{f1}&{f2}"
        comps = [fn for fn in (f1, f2)
                 if not ("open" in fn.lower() or "Clear" in fn or fn.lower().startswith("nd"))]
        if not comps:
            comps.append("open")
        for cal, name in (("Block", "blank"), ("Dark", "blank"), ("DK", "dark")):
            if cal in f1 or cal in f2:
                comps.append(name)
        return "&".join(comps[:2])

    def effective_wavelength(self, output_units: str = "micrometers") -> float | None:
        """Effective wavelength of the filter (from the lookup table), default micrometres."""
        wave = instrument.effective_wavelength(self.filter_name(pretty=True))
        if wave is None:
            return None
        factor = {"micrometers": 1.0, "nanometers": 1e3, "angstroms": 1e4, "meters": 1e-6}
        return wave * factor[output_units]

    def central_wavelength(self, asMicrometers: bool = False) -> float | None:  # noqa: N803 (DRAGONS' name)
        """PHU WAVELENG (Angstrom) in metres, or micrometres; None if missing or negative."""
        wave = self.phu.get("WAVELENG", -1)
        if not isinstance(wave, int | float) or wave < 0:
            return None
        return wave * 1e-4 if asMicrometers else wave * 1e-10

    # --- exposure and readout ----------------------------------------------------------------
    def exposure_time(self) -> float | None:
        """PHU EXPTIME in seconds (GSAOI averages coadds, so never multiplied)."""
        value = self.phu.get("EXPTIME")
        if not isinstance(value, int | float) or value < 0:
            return None
        return float(value)

    def coadds(self) -> int:
        """PHU COADDS, default 1."""
        try:
            return int(self.phu.get("COADDS", 1))
        except (TypeError, ValueError):
            return 1

    def read_mode(self) -> str | None:
        """PHU READMODE, e.g. 'FOWLER'."""
        return self._phu("READMODE")

    def read_speed_setting(self) -> str:
        """'Bright Objects', 'Faint Objects' or 'Very Faint Objects' from LNRS 2/8/16."""
        return instrument.read_speed_setting(self.phu.get("LNRS"))

    def lnrs(self) -> int | None:
        """PHU LNRS (number of non-destructive reads), or None."""
        value = self.phu.get("LNRS")
        return int(value) if isinstance(value, int | float) else None

    def is_coadds_summed(self) -> bool:
        """False: GSAOI averages coadds."""
        return False

    # --- times --------------------------------------------------------------------------------
    def ut_datetime(self) -> _dt.datetime | None:
        """UT start of the observation, from DATE-OBS and UT (fallbacks as in DRAGONS)."""
        date = None
        for key in ("DATE-OBS", "DATE", "UTDATE"):
            value = self._phu(key)
            if not isinstance(value, str):
                continue
            if "T" in value:
                try:
                    return _dt.datetime.fromisoformat(value)
                except ValueError:
                    pass
            m = _DATE_RE.match(value)
            if m:
                date = _dt.date(*(int(g) for g in m.groups()))
                break
        time = None
        for key in ("UT", "TIME-OBS", "STARTUT", "UTSTART"):
            time = _parse_time(self._phu(key))
            if time is not None:
                break
        if date is not None and time is not None:
            return _dt.datetime.combine(date, time)
        mjd = self.phu.get("MJD-OBS")
        if isinstance(mjd, int | float) and mjd > 0:
            return _dt.datetime(1858, 11, 17) + _dt.timedelta(days=float(mjd))
        if date is not None:
            return _dt.datetime.combine(date, _dt.time())
        return None

    def ut_date(self) -> _dt.date | None:
        """UT date of the observation."""
        dt = self.ut_datetime()
        return None if dt is None else dt.date()

    def ut_time(self) -> _dt.time | None:
        """UT time of the start of the observation."""
        dt = self.ut_datetime()
        return None if dt is None else dt.time()

    def local_time(self) -> _dt.time | None:
        """PHU LT as a time."""
        return _parse_time(self._phu("LT"))

    # --- pointing ------------------------------------------------------------------------------
    def pixel_scale(self) -> float | None:
        """Mean over arrays of the CD-matrix pixel scale (:func:`cd_pixel_scale`), arcsec."""
        scales = [s for s in (cd_pixel_scale(h, zero=True) for h in self.ext_headers)
                  if s is not None]
        return sum(scales) / len(scales) if scales else None

    def _offset(self, key):
        value = self.phu.get(key)
        return float(value) if isinstance(value, int | float) else None

    def detector_x_offset(self) -> float | None:
        """POFFSET in pixels, sign flipped on the bottom port (INPORT=1)."""
        poff, scale = self._offset("POFFSET"), self.pixel_scale()
        if poff is None or not scale:
            return None
        offset = poff / scale
        return -offset if self.phu.get("INPORT") == 1 else offset

    def detector_y_offset(self) -> float | None:
        """-QOFFSET in pixels (GSAOI negates the Gemini value)."""
        qoff, scale = self._offset("QOFFSET"), self.pixel_scale()
        if qoff is None or not scale:
            return None
        return -qoff / scale

    def telescope_x_offset(self) -> float | None:
        """PHU XOFFSET (arcsec)."""
        return self._offset("XOFFSET")

    def telescope_y_offset(self) -> float | None:
        """PHU YOFFSET (arcsec)."""
        return self._offset("YOFFSET")

    def _coord(self, key):
        value = self.phu.get(key)
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            from astropy.coordinates import Angle
            try:
                return float(value)
            except ValueError:
                try:
                    unit = "hourangle" if key == "RA" else "deg"
                    return Angle(value, unit=unit).degree
                except Exception:  # noqa: BLE001 (any unparsable string gives None)
                    return None
        return None

    def target_ra(self, offset: bool = False) -> float | None:
        """PHU RA in degrees; with ``offset`` plus RAOFFSET (/cos dec) and RATRGOFF."""
        ra = self._coord("RA")
        if ra is None or not offset:
            return ra
        dec = self._coord("DEC") or 0.0
        extra = (self._offset("RAOFFSET") or 0.0) + (self._offset("RATRGOFF") or 0.0)
        return ra + extra / 3600.0 / math.cos(math.radians(dec))

    def target_dec(self, offset: bool = False) -> float | None:
        """PHU DEC in degrees; with ``offset`` plus DECOFFSE and DECTRGOF."""
        dec = self._coord("DEC")
        if dec is None or not offset:
            return dec
        extra = (self._offset("DECOFFSE") or 0.0) + (self._offset("DECTRGOF") or 0.0)
        return dec + extra / 3600.0

    def wcs_ra(self) -> float | None:
        """CRVAL1 of the first array if CTYPE1 is 'RA---TAN'."""
        h = self.ext_headers[0] if self.ext_headers else {}
        return h.get("CRVAL1") if header_text(h.get("CTYPE1")) == "RA---TAN" else None

    def wcs_dec(self) -> float | None:
        """CRVAL2 of the first array if CTYPE2 is 'DEC--TAN'."""
        h = self.ext_headers[0] if self.ext_headers else {}
        return h.get("CRVAL2") if header_text(h.get("CTYPE2")) == "DEC--TAN" else None

    def ra(self) -> float | None:
        """Field RA: the WCS value, else the target RA keyword."""
        value = self.wcs_ra()
        return self.target_ra() if value is None else value

    def dec(self) -> float | None:
        """Field Dec: the WCS value, else the target DEC keyword."""
        value = self.wcs_dec()
        return self.target_dec() if value is None else value

    def position_angle(self) -> float | None:
        """PHU PA in degrees."""
        return self._offset("PA")

    def airmass(self) -> float | None:
        """PHU AIRMASS if >= 1, else None."""
        am = self.phu.get("AIRMASS", -1)
        return float(am) if isinstance(am, int | float) and am >= 1 else None

    def elevation(self) -> float | None:
        """PHU ELEVATIO (degrees)."""
        return self._offset("ELEVATIO")

    def azimuth(self) -> float | None:
        """PHU AZIMUTH (degrees)."""
        return self._offset("AZIMUTH")

    def is_ao(self) -> bool:
        """True if the AO fold is in the beam (AOFOLD == 'IN')."""
        return self._phu("AOFOLD") == "IN"

    # --- per-array descriptors ----------------------------------------------------------------
    def array_name(self) -> list[Any]:
        """ARRAYID of each array; PHU DETECTOR for mosaicked data (no ARRAYID), as DRAGONS.

        DRAGONS' resampleToCommonFrame removes ARRAYID from a mosaic of several arrays, and
        its GSAOI ``array_name`` then gives the detector name; here that name is given once
        per array of the product, so the result is always one value per array.
        """
        names = self._ext("ARRAYID")
        if names and all(n is None for n in names):
            return [self._phu("DETECTOR")] * len(names)
        return names

    def _sections(self, key, pretty):
        raw = self._ext(key)
        return raw if pretty else [parse_section(v) for v in raw]

    def array_section(self, pretty: bool = False) -> list[Any]:
        """CCDSEC of each array (Section, or the string with ``pretty``)."""
        return self._sections("CCDSEC", pretty)

    def detector_section(self, pretty: bool = False) -> list[Any]:
        """DETSEC of each array (Section, or the string with ``pretty``)."""
        return self._sections("DETSEC", pretty)

    def data_section(self, pretty: bool = False) -> list[Any]:
        """DATASEC of each array (Section, or the string with ``pretty``)."""
        return self._sections("DATASEC", pretty)

    def detector_x_bin(self) -> int:
        """PHU XBIN, default 1."""
        return int(self.phu.get("XBIN", 1))

    def detector_y_bin(self) -> int:
        """PHU YBIN, default 1."""
        return int(self.phu.get("YBIN", 1))

    def binning(self) -> str:
        """'XxY' binning string."""
        return f"{self.detector_x_bin()}x{self.detector_y_bin()}"

    def detector_roi_setting(self) -> str:
        """Always 'Fixed' for GSAOI."""
        return "Fixed"

    def _prepared(self):
        return "PREPARED" in self.tags

    def _array_specs(self):
        return [instrument.ARRAY_BY_ID.get(a) for a in self.array_name()]

    def gain(self) -> list[Any]:
        """Gain (e-/ADU) per array: the lookup on raw data, the GAIN keyword once prepared."""
        if self._prepared():
            return self._ext("GAIN")
        return [None if s is None else s.gain for s in self._array_specs()]

    def read_noise(self) -> list[Any]:
        """Read noise (e-) per array: lookup / sqrt(COADDS), RDNOISE once prepared."""
        if self._prepared():
            return self._ext("RDNOISE")
        lnrs = self.lnrs()
        out = []
        for spec in self._array_specs():
            rn = None if spec is None else spec.read_noise.get(lnrs)
            out.append(None if rn is None else round(rn / math.sqrt(self.coadds()), 2))
        return out

    def saturation_level(self) -> list[Any]:
        """Saturation (ADU) per array: the well depth, SATLEVEL once prepared."""
        if self._prepared():
            return self._ext("SATLEVEL")
        if self.read_speed_setting() == "Unknown":
            return [None] * len(self.ext_headers)
        return [None if s is None else s.well for s in self._array_specs()]

    def non_linear_level(self) -> list[Any]:
        """Non-linear threshold (ADU) per array: linlimit x saturation, NONLINEA once prepared."""
        if self._prepared():
            return self._ext("NONLINEA")
        out = []
        for spec, sat in zip(self._array_specs(), self.saturation_level()):
            out.append(None if spec is None or sat is None else spec.linlimit * sat)
        return out

    def nonlinearity_coeffs(self) -> list[Any]:
        """(a0, a1, a2) per array for the read mode, or None."""
        lnrs = self.lnrs()
        return [None if s is None else s.coeffs.get(lnrs) for s in self._array_specs()]

    def nominal_photometric_zeropoint(self) -> list[Any]:
        """Nominal zero point (mag for 1 e-/s) per array, or None for an unknown filter."""
        name = self.filter_name(pretty=True)
        zps = None if name is None else instrument.NOMINAL_ZEROPOINTS.get(name)
        if zps is None:
            return [None] * len(self.ext_headers)
        return [None if s is None else zps[s.index] for s in self._array_specs()]

    # --- guiding, quality, grouping ----------------------------------------------------------
    def wavefront_sensor(self) -> str | None:
        """Guiding sensors joined with '&' (AOWFS, GEMS, OIWFS, PWFS1, PWFS2), or None."""
        sensors = [name for name, key in (("AOWFS", "AOWFS_ST"), ("OIWFS", "OIWFS_ST"),
                                          ("PWFS1", "PWFS1_ST"), ("PWFS2", "PWFS2_ST"))
                   if self._phu(key) == "guiding"]
        if "GWFS1CFG" in self.phu:
            sensors.append("GEMS")
        return "&".join(sorted(sensors)) if sensors else None

    def qa_state(self) -> str:
        """'Pass', 'Usable', 'Fail', 'CHECK' or 'Undefined' from RAWPIREQ and RAWGEMQA."""
        pireq = self._phu("RAWPIREQ")
        gemqa = self._phu("RAWGEMQA")
        pireq = pireq.upper() if isinstance(pireq, str) else "UNKNOWN"
        gemqa = gemqa.upper() if isinstance(gemqa, str) else "UNKNOWN"
        if gemqa == "BAD":
            return "Fail"
        if "CHECK" in (pireq, gemqa):
            return "CHECK"
        if "UNKNOWN" in (pireq, gemqa):
            return "Undefined"
        if gemqa == "USABLE":
            return "Pass" if pireq == "YES" else "Usable" if pireq == "NO" else "Undefined"
        return "Undefined"

    def group_id(self) -> str:
        """DRAGONS' GSAOI group id: flats by filter/exptime/program, others by observation."""
        parts: list[Any]
        if "FLAT" in self.tags:
            parts = [self.filter_name(pretty=True), self.exposure_time(), self.program_id()]
        else:
            parts = [self.observation_id(), self.filter_name(pretty=True), self.exposure_time()]
        parts += [self.read_mode(), tuple(self.detector_section(pretty=True))]
        return "_".join(str(p) for p in parts)

    # --- derived helpers used by the pipeline --------------------------------------------------
    def is_roi(self) -> bool:
        """True if the arrays are read out as a sub-array smaller than CCDSIZE."""
        for h in self.ext_headers:
            full = parse_section(header_text(h.get("CCDSIZE")))
            sec = parse_section(header_text(h.get("CCDSEC")))
            if full is not None and sec is not None and sec.shape != full.shape:
                return True
        return False


#: Descriptor names callable on a FrameInfo (what dataselect and showd accept).
DESCRIPTORS = tuple(sorted(
    name for name, value in vars(FrameInfo).items()
    if not name.startswith("_") and callable(value)
    and name not in {"is_roi"}
))

