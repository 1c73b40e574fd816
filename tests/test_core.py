"""The reduction core: pure (no files, database, config or process pools) and one combiner."""

import ast
import importlib
import pkgutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.stats import sigma_clip

import gsaoi_watch.reduction
from gsaoi_watch.reduction import combine
from gsaoi_watch.reduction.container import Array
from gsaoi_watch.reduction.source import MemorySource

CORE = Path(gsaoi_watch.reduction.__file__).parent
#: Modules the core must not import (nor any module below them).
FORBIDDEN = ("astropy.io.fits", "peewee", "gsaoi_watch.config", "gsaoi_watch.data.fitsio",
             "gsaoi_watch.calibration", "concurrent.futures", "multiprocessing", "subprocess")
#: Calls that do I/O or fork.
FORBIDDEN_CALLS = ("open", "os.fork", "os.system", "fits.open", "Path.open")


def _core_files():
    files = sorted(CORE.rglob("*.py"))
    assert len(files) >= 15  # the core's modules, stack/ included
    return files


def _imported(tree):
    """Every module name an AST imports (``from a import b`` gives 'a' and 'a.b')."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names]
    return names


def _call_name(node):
    f = node.func
    if isinstance(f, ast.Name):
        return f.id
    if isinstance(f, ast.Attribute):
        parts = [f.attr]
        value = f.value
        while isinstance(value, ast.Attribute):
            parts.append(value.attr)
            value = value.value
        if isinstance(value, ast.Name):
            parts.append(value.id)
        return ".".join(reversed(parts))
    return ""


def _forbidden(name):
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN) or name in (
        "os.fork", "astropy.io")


@pytest.mark.parametrize("path", _core_files(), ids=lambda p: str(p.relative_to(CORE)))
def test_core_module_does_no_io(path):
    """No forbidden import (at any level of the module) and no call of open() or fork."""
    tree = ast.parse(path.read_text(), filename=str(path))
    bad = [n for n in _imported(tree) if _forbidden(n)]
    assert not bad, f"{path.name} imports {bad}"
    calls = [_call_name(n) for n in ast.walk(tree) if isinstance(n, ast.Call)]
    bad_calls = [c for c in calls if c in FORBIDDEN_CALLS or c.endswith(".fork")]
    assert not bad_calls, f"{path.name} calls {bad_calls}"


def test_the_checker_sees_what_it_forbids(tmp_path):
    """The inspection catches each kind of violation (so the test above can fail)."""
    for source in ("from astropy.io import fits", "import astropy.io.fits as f",
                   "from gsaoi_watch.data.fitsio import load_frame",
                   "def f():\n    from concurrent.futures import ThreadPoolExecutor",
                   "import multiprocessing", "from peewee import Model",
                   "from gsaoi_watch import config"):
        tree = ast.parse(source)
        assert any(_forbidden(n) for n in _imported(tree)), source
    for source in ("open('x')", "os.fork()", "with open(p) as fh: pass"):
        tree = ast.parse(source)
        calls = [_call_name(n) for n in ast.walk(tree) if isinstance(n, ast.Call)]
        assert any(c in FORBIDDEN_CALLS for c in calls), source


def test_every_core_module_imports():
    """The modules inspected are the package's modules, and each imports."""
    names = [m.name for m in pkgutil.walk_packages(gsaoi_watch.reduction.__path__,
                                                   "gsaoi_watch.reduction.")]
    assert "gsaoi_watch.reduction.stack.resample" in names
    assert len(names) == len(_core_files()) - 1  # the package's __init__ is not listed
    for name in names:
        importlib.import_module(name)


# --- the one combiner ----------------------------------------------------------------------
def _stack_with_outliers(seed, n=9, shape=(120, 150)):
    rng = np.random.default_rng(seed)
    data = rng.normal(100.0, 5.0, (n, *shape)).astype(np.float32)
    hot = rng.random(data.shape) < 0.03
    data[hot] += rng.uniform(30, 3000, hot.sum()).astype(np.float32)   # cosmic rays
    cold = rng.random(data.shape) < 0.01
    data[cold] -= rng.uniform(30, 300, cold.sum()).astype(np.float32)
    var = rng.uniform(20.0, 30.0, data.shape).astype(np.float32)
    flagged = rng.random(data.shape) < 0.08  # DQ-flagged pixels
    flagged[:, :5, :5] = True               # a corner where nothing is good
    flagged[:-2, 5:10, :5] = True           # and one where two values are left
    flagged[-2:, 5:10, :5] = False
    return data, var, flagged


@pytest.mark.parametrize("maxiters", [3, None])
def test_sigma_clipped_mean_agrees_with_astropy_sigma_clip(maxiters):
    """Same sigma (3), maxiters, cenfunc (median) and stdfunc (std) as astropy's
    sigma_clip on a masked array: the kept values are the same everywhere, and the mean
    and its variance equal the plain mean of those values to 1e-6 relative."""
    data, var, flagged = _stack_with_outliers(1)
    mean, mvar, n_used = combine.sigma_clipped_mean(np.where(flagged, np.nan, data), var,
                                                    sigma_lower=3.0, sigma_upper=3.0,
                                                    maxiters=maxiters)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = sigma_clip(np.ma.masked_array(data, mask=flagged), sigma=3.0, maxiters=maxiters,
                         cenfunc="median", stdfunc="std", axis=0)
    kept = ~np.ma.getmaskarray(ref)
    assert np.array_equal(n_used, kept.sum(axis=0))
    assert (kept.sum(axis=0) < (~flagged).sum(axis=0)).mean() > 0.1  # clipping happened
    assert (n_used[:5, :5] == 0).all() and (mean[:5, :5] == 0).all()
    assert (n_used[5:10, :5] == 2).all()
    some = n_used > 0
    ref_mean = np.ma.masked_array(data.astype(np.float64), ~kept).mean(axis=0).filled(0)
    ref_var = (np.where(kept, var, 0).sum(axis=0, dtype=np.float64)
               / np.maximum(n_used, 1) ** 2)
    assert np.allclose(mean[some], ref_mean[some], rtol=1e-6, atol=0)
    assert np.allclose(mvar[some], ref_var[some], rtol=1e-6, atol=0)
    assert mean.dtype == np.float32 and mvar.dtype == np.float32


def test_stack_arrays_uses_the_clipped_mean_and_dq():
    """stack_arrays (flats) is the clipped mean of the unflagged values; flags rule DQ."""
    data, var, flagged = _stack_with_outliers(2, n=7, shape=(40, 50))
    dq = np.where(flagged, np.uint16(1), np.uint16(0))
    arrays = [Array(d.copy(), v, q, {}) for d, v, q in zip(data, var, dq)]
    out = combine.stack_arrays(arrays)
    mean, mvar, n_used = combine.sigma_clipped_mean(np.where(flagged, np.nan, data), var)
    every = flagged.all(axis=0)
    assert np.array_equal(out.sci[~every], mean[~every])
    assert np.array_equal(out.var[~every], mvar[~every])
    assert (out.dq[~every] == 0).all() and (out.dq[every] == 1).all()
    assert np.allclose(out.sci[every], data[:, every].mean(axis=0), rtol=1e-6)


def test_sorted_combine_median_minmax_matches_numpy():
    """The sky combination (min/max rejection, median) by the sorting network equals
    numpy's median of the values left after dropping the lowest and highest."""
    data, var, flagged = _stack_with_outliers(3, n=6, shape=(30, 40))
    data = np.where(flagged, np.nan, data)
    med, _, m = combine.sorted_combine(data, var, operation="median", nlow=1, nhigh=1)
    s = np.sort(data, axis=0)  # NaN last
    n_good = (~np.isnan(data)).sum(axis=0)
    for (y, x), k in np.ndenumerate(n_good):
        vals = s[:k, y, x]
        lo = min(1, max(k - 1, 0))
        hi = min(1, max(k - 1 - lo, 0))
        vals = vals[lo:k - hi]
        assert m[y, x] == len(vals)
        if len(vals):
            assert med[y, x] == pytest.approx(np.median(vals), rel=1e-6)


def test_memory_source_serves_arrays_without_sharing_headers():
    phu = {"INSTRUME": "GSAOI"}
    from astropy.io import fits  # test side: headers for the container

    arrays = tuple(Array(np.full((2, 2), i, np.float32), None, None, fits.Header({"A": i}))
                   for i in range(4))
    from gsaoi_watch.reduction.container import Frame

    frame = Frame(phu=fits.Header(phu), arrays=arrays, filename="f.fits")
    src = MemorySource([frame])
    assert len(src) == 1 and src.info(0).filename == "f.fits"
    one = src.load(0, (2,))
    assert one.arrays[0].sci[0, 0] == 2 and one.meta["indices"] == (2,)
    whole = src.load(0)
    whole.meta["x"] = 1
    whole.phu["NEW"] = 1
    assert "x" not in frame.meta and "NEW" not in frame.phu


# --- the pipeline's pools ---------------------------------------------------------------------
def test_fork_mapper_runs_closures_in_other_processes_in_order():
    """The stack's work runs through a mapper; the forked one inherits unpicklable
    closures, returns results in order, and runs in other processes."""
    import os

    from gsaoi_watch.pipeline.pools import can_fork, fork_mapper

    if not can_fork(2, 2):
        pytest.skip("no fork start method here")
    offset = np.arange(3)  # captured by the closure, never pickled
    results = list(fork_mapper(2)(lambda i: (i, int(offset.sum()) + i, os.getpid()),
                                  range(8)))
    assert [r[0] for r in results] == list(range(8))
    assert [r[1] for r in results] == [3 + i for i in range(8)]
    assert os.getpid() not in {r[2] for r in results}
    assert fork_mapper(1) is map
