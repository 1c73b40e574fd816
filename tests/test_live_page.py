"""The live page in a real headless browser, served by a real daemon reducing a simulated night.

Chromium is Debian's (``apt-get install -y chromium``; ``.ci/run`` installs it), driven by
Playwright through its pip wheel's driver (no browser download).  The science frames'
OBJECT is ``<script>alert(1)</script>``: it must show as text, never run.

``GSAOI_LIVE_PAGE_SIZE`` (default 64) sets the simulated array size and
``GSAOI_LIVE_PAGE_SCREENSHOT`` a path where the final screenshot is also written (the
README's ``docs/live_page.png`` is made with 256 and that path).
"""

import json
import os
import re
import shutil
import socket
import sqlite3
import time

import pytest
from astropy.io import fits
from test_daemon import Daemon, drop

from gsaoi_watch.sim import simulate_night

pytestmark = pytest.mark.slow

SCRIPT = "<script>alert(1)</script>"
SCIENCE = [f"S20170505S{n:04d}.fits" for n in range(95, 111)]
FLAT = "S20170505S0030_flat.fits"
TIMEOUT_MS = 120_000


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not on PATH: the live page's browser test needs Debian's "
                    "chromium (apt-get install -y chromium; .ci/run installs it)")
    return path


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    out = tmp_path_factory.mktemp("live_stage")
    simulate_night(out, seed=12, size=int(os.environ.get("GSAOI_LIVE_PAGE_SIZE", "64")),
                   workers=2)
    for name in SCIENCE:  # before they land: the daemon only ever sees this OBJECT
        with fits.open(out / name, mode="update") as hdul:
            hdul[0].header["OBJECT"] = SCRIPT
    return out


def page_url(daemon, after=0):
    """The URL of the daemon's log line ``live page at http://HOST:PORT/`` (after offset)."""
    found = []

    def logged():
        text = daemon.log.read_text()[after:] if daemon.log.exists() else ""
        found[:] = re.findall(r"live page at (http://127\.0\.0\.1:\d+/)", text)
        return bool(found)

    daemon.wait_for(logged, timeout=30, what="the live page's log line")
    return found[-1]


def start_daemon(daemon):
    after = daemon.log.stat().st_size if daemon.log.exists() else 0
    daemon.start()
    return page_url(daemon, after)


def iq_points(page):
    return page.eval_on_selector_all("#plot-iq [data-frame]",
                                     "els => els.map(e => e.getAttribute('data-frame'))")


def until(page, js, arg=None, what=""):
    """Poll a JavaScript condition in the page until it holds (the page's CSP forbids the
    string evaluation Playwright's wait_for_function uses)."""
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while not page.evaluate(js, arg):
        if time.monotonic() > deadline:
            pytest.fail(f"the page never showed {what or js}")
        page.wait_for_timeout(100)


def wait_points(page, n):
    until(page, "n => document.querySelectorAll('#plot-iq [data-frame]').length === n", n,
          what=f"{n} points on the IQ plot")


def api(page, path):
    return page.evaluate("p => fetch(p).then(r => r.json())", path)


def refused(url):
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return False
    except OSError:
        return True


def test_the_live_page_follows_the_night_in_a_browser(stage, tmp_path):
    from playwright.sync_api import sync_playwright

    daemon = Daemon(tmp_path)
    daemon.cfg.write_text(daemon.cfg.read_text()
                          + '[http]\nenabled = true\naddress = "127.0.0.1:0"\n')
    t0 = time.monotonic()
    try:
        url = start_daemon(daemon)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium())
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.set_default_timeout(TIMEOUT_MS)
            dialogs, errors = [], []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("response", lambda r: errors.append(f"{r.status} {r.url}")
                    if r.status >= 400 else None)
            page.goto(url)
            until(page, "() => Number(document.body.dataset.updates) >= 1", what="an update")
            assert iq_points(page) == []
            page.evaluate("window.sameDocument = true")  # gone if the page ever reloads

            # the night lands (and a file that is not FITS) while the page is open
            for f in sorted(stage.glob("*.fits")):
                drop(f, daemon.raw)
            (daemon.raw / "S20170505S0200.fits").write_text("garbage\n" * 500)
            daemon.wait_for(lambda: daemon.settled(4) and (daemon.out / "S20170505S0095_stack"
                                                           ".fits").exists(),
                            timeout=600, what="the night to be reduced")
            reduced = sorted(n for (n,) in daemon.query(
                "select filename from product where kind='sky_corrected'"))
            assert len(reduced) == 13

            # one point per reduced frame on the IQ plot, the same frames as /api/frames
            wait_points(page, len(reduced))
            frames = api(page, "/api/frames")
            assert sorted(f["file"] for f in frames) == reduced
            assert sorted(iq_points(page)) == reduced
            for plot in ("fwhm", "strehl", "cc", "zp", "bg"):
                assert page.locator(f"#plot-{plot} [data-frame]").count() == len(reduced)
            assert page.evaluate("window.sameDocument") is True  # redrawn, not reloaded
            # bands are drawn from the limits
            for plot, names in (("iq", {"IQ20", "IQ70", "IQ85", "IQAny"}),
                                ("cc", {"CC50", "CC70", "CC80", "CCAny"})):
                drawn = page.eval_on_selector_all(
                    f"#plot-{plot} rect[data-band]", "els => els.map(e => e.dataset.band)")
                assert drawn and set(drawn) <= names, (plot, drawn)

            # the OBJECT is text; no script of it exists or ran
            until(page, "s => document.body.textContent.includes(s)", SCRIPT)
            assert page.locator("td.object", has_text=SCRIPT).count() == 1
            tip = page.locator('#plot-iq [data-frame="S20170505S0095_skyCorrected.fits"] '
                               'title').text_content()
            assert SCRIPT in tip
            assert page.evaluate("[...document.scripts].map(s => s.src)") == [
                url + "static/live.js"]
            assert dialogs == []

            # the flat's picture (written beside the flat, registered as its copy) loads
            flat = page.locator(f'#pictures img[alt="{FLAT}"]')
            flat.wait_for()
            until(page, "alt => [...document.querySelectorAll('#pictures img')].some("
                  "i => i.alt === alt && i.complete && i.naturalWidth > 0)", FLAT,
                  what="the flat's picture loaded")
            # the file that is not FITS is listed with its reason
            until(page, "() => document.querySelector('#problem-files').textContent"
                  ".includes('S20170505S0200.fits')", what="the file that is not FITS")
            assert "not a FITS file" in page.locator("#problem-files").text_content()

            # a frame failing its requirement is marked (the QA's requirements record)
            target = "S20170505S0097_skyCorrected.fits"
            qa = json.loads(daemon.query("select qa from product where filename=?",
                                         target)[0][0])
            qa["requirements"] = {"iq": {
                "value": 0.9, "error": 0.05, "unit": "arcsec", "band": "IQ85",
                "requested": "IQ20", "met": False, "probability": 0.01, "reason": None,
                "limits": {"20": 0.45, "70": 0.8, "85": 1.2}}}
            with sqlite3.connect(daemon.db, timeout=10) as con:
                con.execute("update product set qa=? where filename=?",
                            (json.dumps(qa), target))
            until(page, "f => document.querySelector(`#plot-iq .pt.fail[data-frame=\"${f}\"]`)"
                  " !== null", target, what="the failing point")
            assert page.locator("#plot-iq .pt.fail").count() == 1
            assert page.locator('#plot-iq rect.requested[data-requested="IQ20"]').count() == 1
            assert "NOT MET" in page.locator(
                f'#plot-iq [data-frame="{target}"] title').text_content()

            page.screenshot(path=str(tmp_path / "live_page.png"), full_page=True)
            if os.environ.get("GSAOI_LIVE_PAGE_SCREENSHOT"):
                shutil.copyfile(tmp_path / "live_page.png",
                                os.environ["GSAOI_LIVE_PAGE_SCREENSHOT"])

            assert errors == []  # no failed request, no CSP violation, no script error

            # the daemon stops: the page says it cannot update, the port is closed
            assert daemon.stop() == 0
            until(page, "() => document.getElementById('status').textContent"
                  ".startsWith('Cannot update')", what="that it cannot update")
            assert refused(url)

            # a restarted daemon shows the whole night from the database (in a new tab: the
            # old one logs the failed fetches of the stopped daemon)
            url2 = start_daemon(daemon)
            page.close()
            fresh, fresh_errors = browser.new_page(), []
            fresh.on("pageerror", lambda e: fresh_errors.append(str(e)))
            fresh.on("console", lambda m: fresh_errors.append(m.text)
                     if m.type == "error" else None)
            fresh.on("response", lambda r: fresh_errors.append(f"{r.status} {r.url}")
                     if r.status >= 400 else None)
            fresh.goto(url2)
            wait_points(fresh, len(reduced))
            assert sorted(iq_points(fresh)) == reduced
            assert fresh.locator("#plot-iq .pt.fail").count() == 1
            assert fresh_errors == [] and dialogs == []
            browser.close()
        assert daemon.stop() == 0
    finally:
        daemon.close()
    print(f"browser test: {time.monotonic() - t0:.0f} s")
