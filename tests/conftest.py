"""Shared fixtures: real GSAOI header dumps and small simulated nights."""

import re
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REAL_HEADERS = SHARED / "reference" / "real_headers"


def load_header_dump(path):
    """Parse a header dump (``--- HDU n ---`` blocks of 80-character cards) into Headers."""
    text = Path(path).read_text()
    blocks = re.split(r"^--- HDU \d+ ---\n", text, flags=re.M)[1:]
    headers = []
    for block in blocks:
        cards = [line[:80] for line in block.split("\n") if line.strip()]
        cards = [c for c in cards if not c.startswith("END")]
        headers.append(fits.Header.fromstring("\n".join(cards), sep="\n"))
    return headers


def write_fits_from_dump(dump, out_path):
    """Write a FITS file with the dump's headers and zero arrays of the declared shapes."""
    phu, *exts = load_header_dump(dump)
    hdus = [fits.PrimaryHDU(header=phu)]
    for h in exts:
        shape = (h["NAXIS2"], h["NAXIS1"])
        hdus.append(fits.ImageHDU(data=np.zeros(shape, dtype=np.float32), header=h))
    fits.HDUList(hdus).writeto(out_path, overwrite=True, output_verify="silentfix")
    return out_path


@pytest.fixture(scope="session")
def real_header_dir():
    if not REAL_HEADERS.is_dir():
        pytest.fail(f"real GSAOI headers not found at {REAL_HEADERS}")
    return REAL_HEADERS


# --- the database on both backends ---------------------------------------------------------
#: The PostgreSQL server the database tests use: a libpq URL of a database on it whose user
#: may create databases (.ci/run starts one and sets it).
POSTGRES_ENV = "GSAOI_TEST_POSTGRES"


def postgres_server():
    """The admin URL of the test server; without one, fail under CI and skip elsewhere."""
    import os

    url = os.environ.get(POSTGRES_ENV)
    if url:
        return url
    message = (f"{POSTGRES_ENV} is not set: the PostgreSQL cases need a server "
               "(.ci/run starts one: initdb + pg_ctl)")
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


def _admin(url):
    import psycopg

    return psycopg.connect("postgresql://" + url.split("://", 1)[1], autocommit=True)


def _with_database(url, name):
    """The server URL with its database (the URL's path) replaced by ``name``."""
    from urllib.parse import urlsplit, urlunsplit

    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@pytest.fixture
def fresh_postgres():
    """A new, empty database on the test server (dropped afterwards); yields its URL."""
    import uuid

    server = postgres_server()
    name = f"gsaoi_t_{uuid.uuid4().hex[:12]}"
    with _admin(server) as con:
        con.execute(f'CREATE DATABASE "{name}"')
    yield _with_database(server, name)
    from gsaoi_watch.calibration import db

    db.close_database()
    with _admin(server) as con:
        con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """Where a test's calibration database is: a SQLite file, or a fresh PostgreSQL database.

    Not opened: a path (SQLite, not created yet) or a ``postgresql://`` URL (empty).
    """
    if request.param == "sqlite":
        yield str(tmp_path / "cal_manager.db")
    else:
        yield request.getfixturevalue("fresh_postgres")
