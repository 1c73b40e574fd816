"""QA of product files and the night summary page (``index.html``) with pictures."""

from __future__ import annotations

import datetime
import html
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any

from astropy.io import fits

from gsaoi_watch.data.fitsio import atomic_output, load_frame, read_catalogs, safe_output_path
from gsaoi_watch.instrument.standards import find_standard
from gsaoi_watch.logs import log_name
from gsaoi_watch.quicklook.pictures import picture_path
from gsaoi_watch.quicklook.qaformat import qa_log_line
from gsaoi_watch.reduction import qa
from gsaoi_watch.reduction.requirements import requirement_warnings

__all__ = ['qa_for_product', 'write_summary']

log = logging.getLogger(__name__)

def _read_catalogs(path, n):
    """The OBJCAT table of each array (None where there is none or it cannot be used)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(path, memmap=False) as hdul:
            return read_catalogs(hdul, path, n)


def _skip_reason(phu, name):
    if "FLAT" in str(phu.get("OBSTYPE", "")).upper() or name.endswith("_flat.fits"):
        return "a flat field: no image quality or background to measure"
    if "STACKFRM" in phu or "PROCSCI" in phu:  # a stack keeps its first input's stamps
        return "a stack: the QA measures the frames it was made of"
    # DETECSRC: DRAGONS' detectSources stamp (a quick-look _sourcesDetected frame may have
    # no flat, hence no FLATCORR)
    if not any(k in phu for k in ("SUBSKY", "FLATCORR", "DETECSRC")):
        return "not a reduced object frame (no flatCorrect, skyCorrect or detectSources stamp)"
    return None


def qa_for_product(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Measure the QA of one reduced product file (a ``_skyCorrected`` frame).

    Image quality, background and, when OBJECT or the pointing names a known standard,
    its zero points and cloud cover (:func:`gsaoi_watch.reduction.qa.frame_qa`).  Module
    level and returning plain data, so it can run in a process pool.

    Parameters
    ----------
    path : str or os.PathLike
        The product.

    Returns
    -------
    dict
        ``file``, ``path``, ``log`` (the one-line message), ``warnings`` (requirements not
        met, DRAGONS' IQ warnings) and the fields of
        :class:`~gsaoi_watch.reduction.qa.FrameQA` (``requirements``: the verdicts); or
        ``file``, ``path`` and ``skipped`` (the reason) for a product without QA, such as a
        flat.
    """
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        phu = fits.getheader(path)
    reason = _skip_reason(phu, path.name)
    if reason:
        return {"file": path.name, "path": str(path), "skipped": reason}
    frame = load_frame(path)
    frame.meta["catalogs"] = _read_catalogs(path, len(frame.arrays))
    if all(c is None for c in frame.meta["catalogs"]):
        frame.meta.pop("catalogs")  # detected afresh by the QA
    standard = find_standard(phu.get("OBJECT"), phu.get("RA"), phu.get("DEC"))
    result = qa.frame_qa(frame, standard=standard)
    out = result.to_dict()
    out.update(file=path.name, path=str(path), log=qa_log_line(result),
               warnings=requirement_warnings(log_name(path.name), result.requirements))
    return out


# --- the summary page -------------------------------------------------------------------------
_CSS = """
body { font-family: sans-serif; background: #111; color: #ddd; margin: 1em 2em; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
table { border-collapse: collapse; } td, th { border: 1px solid #444; padding: 3px 8px; }
th { background: #222; } td.num { text-align: right; font-family: monospace; }
img { width: 160px; height: 160px; } a { color: #8cf; } .note { color: #fa6; }
.met { color: #8e8; } .notmet { color: #f66; font-weight: bold; } .undetermined { color: #aaa; }
"""


_COLUMNS = ("product", "picture", "FWHM\"", "ellip", "Strehl", "IQ", "BG e-/s/pix",
            "BG mag/\"²", "BG", "ZP", "cloud mag", "CC", "notes")


def _num(value, spec):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return format(value, spec)


def _href(target, outdir):
    target = Path(target)
    try:
        return target.resolve().relative_to(outdir.resolve()).as_posix()
    except ValueError:
        return target.resolve().as_uri()


def _verdict_cell(verdict, band):
    """The achieved band, the requested one and the verdict (met, NOT MET, ?)."""
    if not verdict:
        return html.escape(str(band or ""))
    text = verdict.get("band") or "?"
    if verdict.get("requested"):
        mark = {True: "met", False: "NOT MET"}.get(verdict.get("met"), "undetermined")
        text += f" (req. {verdict['requested']}: {mark})"
    cls = {True: "met", False: "notmet"}.get(verdict.get("met"), "undetermined")
    title = html.escape(verdict.get("reason") or "", quote=True)
    return f'<span class="{cls}" title="{title}">{html.escape(text)}</span>'


def _product_row(product, outdir):
    name = product.get("file") or Path(product.get("path", "?")).name
    path = product.get("path")
    picture = product.get("picture")
    if picture is None and path is not None and picture_path(path).exists():
        picture = picture_path(path)
    data = product.get("qa") or {}
    iq, bg, cc = data.get("iq") or {}, data.get("bg") or {}, data.get("cc") or {}
    zps = data.get("zeropoints") or []
    cells = [html.escape(name)]
    if picture is not None:
        href = html.escape(_href(picture, outdir))
        cells.append(f'<a href="{href}"><img src="{href}" alt="{html.escape(name)}"></a>')
    else:
        cells.append("")
    req = data.get("requirements") or {}
    cells += [_num(iq.get("fwhm"), ".3f"), _num(iq.get("ellipticity"), ".3f"),
              _num(iq.get("strehl"), ".3f"), _verdict_cell(req.get("iq"), iq.get("band")),
              _num(bg.get("rate"), ".2f"), _num(bg.get("mag"), ".2f"),
              _verdict_cell(req.get("bg"), bg.get("band")),
              "<br>".join(f"{z['zp']:.3f} (array {z['array'] + 1})" for z in zps
                          if z.get("zp") is not None),
              _num(cc.get("extinction"), ".3f"),
              _verdict_cell(req.get("cc") if cc else None, cc.get("band"))]
    notes = list(data.get("notes") or [])
    if data.get("skipped"):
        notes.append(data["skipped"])
    cells.append(f'<span class="note">{html.escape("; ".join(notes))}</span>')
    out = []
    for k, cell in enumerate(cells):
        cls = ' class="num"' if 2 <= k <= 10 and k not in (5, 8) else ""
        out.append(f"<td{cls}>{cell}</td>")
    return "<tr>" + "".join(out) + "</tr>"


def write_summary(outdir: str | os.PathLike[str], sequences: list[dict[str, Any]], *,
                  title: str = "GSAOI night summary") -> Path:
    """Write the night summary page ``outdir/index.html`` atomically.

    Parameters
    ----------
    outdir : str or os.PathLike
        Output directory (pictures inside it are linked relatively).
    sequences : list of dict
        One dict per sequence: ``name``, optionally ``kind``, ``state``, ``frames`` (count
        or list of names) and ``products``: a list of dicts with ``path`` (or ``file``),
        optionally ``picture`` (default: the product's PNG if it exists) and ``qa`` (a dict
        as :func:`qa_for_product` returns).
    title : str
        Page title.

    Returns
    -------
    pathlib.Path
        The page written.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html.escape(title)}</title>", f"<style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>", f"<p>Updated {now}; "
             f"{len(sequences)} sequence(s).</p>"]
    for seq in sequences:
        frames = seq.get("frames")
        n_frames = len(frames) if isinstance(frames, list | tuple) else frames
        bits = [str(seq.get(k)) for k in ("kind", "state") if seq.get(k)]
        if n_frames is not None:
            bits.append(f"{n_frames} frames")
        parts.append(f"<h2>{html.escape(str(seq.get('name', '?')))}"
                     + (f" <small>({html.escape(', '.join(bits))})</small>" if bits else "")
                     + "</h2>")
        products = seq.get("products") or []
        if not products:
            parts.append("<p>No products yet.</p>")
            continue
        parts.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in _COLUMNS)
                     + "</tr>")
        parts += [_product_row(p, outdir) for p in products]
        parts.append("</table>")
    parts.append("</body></html>\n")
    target = safe_output_path(outdir, "index.html")
    with atomic_output(target) as fh:
        fh.write("\n".join(parts).encode("utf-8"))
    return target

