"""Digest of the tutorial night's products: pixels and headers, time stamps left out.

Run it before and after a change that must not alter products::

    python benchmarks/product_digest.py WORKDIR [--size 256] > digest.txt

It simulates the night, reduces the flat, the standard and the science sequence and stacks the
science frames with the command line (as a user would), then prints one SHA-256 per product
extension (header cards without time stamps, software version or paths, then the data bytes).
Two runs of the same code print the same lines; any difference in a product changes its line.
"""

import argparse
import datetime
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
from astropy.io import fits

_VOLATILE = ("DATE", "IRAF-TLM", "GSWVERS", "PROCSOFT", "PROCSVER")
_NOW = datetime.datetime.now(datetime.UTC)
#: time stamps of processing (today or yesterday, UTC) are left out of the digest
_STAMPS = tuple((_NOW - datetime.timedelta(days=d)).strftime("%Y-%m-%dT") for d in (0, 1))


def _run(*args: str, cwd: Path) -> None:
    subprocess.run([sys.executable, "-m", "gsaoi_watch", *args], cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL)


def _digest(path: Path) -> list[str]:
    lines = []
    with fits.open(path) as hdul:
        for i, hdu in enumerate(hdul):
            h = hashlib.sha256()
            for card in hdu.header.cards:
                key = card.keyword
                if key.startswith(_VOLATILE) or key.endswith(("TLM", "_TIME")) or "/" in str(
                        card.value) or str(card.value).startswith(_STAMPS):
                    continue
                h.update(f"{key}={card.value!r}".encode())
            if hdu.data is not None:
                data = hdu.data
                h.update(data.tobytes() if isinstance(data, np.ndarray) else bytes(data))
            lines.append(f"{path.name}[{i}:{hdu.name}] {h.hexdigest()[:16]}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    _run("simulate", "night", "--size", str(args.size), "--seed", "7", cwd=work)
    night = sorted((work / "night").glob("S2017*.fits"))
    flats = [str(p) for p in night if 30 <= int(p.stem[-4:]) <= 74]
    std = [str(p) for p in night if p.stem.startswith("S20170504")]
    sci = [str(p) for p in night if 95 <= int(p.stem[-4:]) <= 110 and "0505" in p.stem]
    _run("caldb", "init", "--wipe", cwd=work)
    _run("reduce", *flats, cwd=work)
    _run("reduce", *std, cwd=work)
    _run("reduce", *sci, "-p", "skyCorrect:offset_sky=False", cwd=work)
    sky = sorted(str(p) for p in work.glob("*_skyCorrected.fits") if "0504" not in p.name)
    _run("stack", *sky, "-o", "stack.fits", cwd=work)
    for path in sorted(work.glob("*.fits")):
        print("\n".join(_digest(path)))


if __name__ == "__main__":
    main()
