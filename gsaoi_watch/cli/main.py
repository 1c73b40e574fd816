"""The ``gsaoi-watch`` command line: one verb per DRAGONS tool the tutorial uses."""

from __future__ import annotations

import argparse
import logging
import sys

from gsaoi_watch import __version__
from gsaoi_watch.malloc import limit_arenas

__all__ = ["build_parser", "main"]


def _add_typewalk(sub):
    p = sub.add_parser("typewalk", help="list GSAOI files and their tags (recursively)")
    p.add_argument("-d", "--dir", dest="directories", action="append", default=None,
                   metavar="DIR", help="directory to walk (default: current; repeatable)")
    p.add_argument("--tags", default=None,
                   help="only list files having all these comma-separated tags")
    p.add_argument("-n", "--no-recursion", action="store_true",
                   help="do not descend into sub-directories")
    p.add_argument("-o", "--out", default=None,
                   help="also write the matching file names to this list file")
    p.set_defaults(func=_run("typewalk"))


def _add_showd(sub):
    p = sub.add_parser("showd", help="show descriptor values of files as a table")
    p.add_argument("files", nargs="*", help="files (read from standard input when piped)")
    p.add_argument("-d", "--descriptors", required=True,
                   help="comma-separated descriptor names, e.g. object,exposure_time")
    p.add_argument("--csv", action="store_true", help="write comma-separated values")
    p.set_defaults(func=_run("showd"))


def _add_dataselect(sub):
    p = sub.add_parser("dataselect", help="select files by tags and a descriptor expression")
    p.add_argument("files", nargs="+", help="input files (globs are expanded)")
    p.add_argument("--tags", default=None, help="required tags, comma-separated")
    p.add_argument("--xtags", default=None, help="excluded tags, comma-separated")
    p.add_argument("--expr", default="True", help="descriptor expression, e.g. "
                   "\"filter_name=='Kshort' and exposure_time==60.\"")
    p.add_argument("--strict", action="store_true",
                   help="compare exactly (raw filter names, exact exposure times)")
    p.add_argument("-o", "--output", default=None, help="write the selection to this list file")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="print the selection even when writing it to a file")
    p.set_defaults(func=_run("dataselect"))


def _add_simulate(sub):
    p = sub.add_parser("simulate", help="write a simulated GSAOI night (raw frames + truth)")
    p.add_argument("outdir", help="directory to write the raw frames into")
    p.add_argument("--seed", type=int, default=20170505, help="random seed (default 20170505)")
    p.add_argument("--size", type=int, default=2048,
                   help="array size in pixels (default 2048, full size; e.g. 256 for tests)")
    p.add_argument("--workers", type=int, default=None,
                   help="processes to use (default: number of CPUs)")
    p.add_argument("--only", default=None,
                   help="comma-separated subset of flats,standard,science,bpm")
    g = p.add_argument_group(
        "observing conditions",
        "The programme's request (REQIQ, REQCC, REQBG, REQWV on the standard and science "
        "frames) and what the sky delivers.  A degradation is a number, or numbers separated "
        "by ':' spread evenly over the sequence's frames, linear in between (--extinction "
        "0:0.8:0 is a cloud passing).  The plain flags set both sequences; --standard-* and "
        "--science-* set one.  The defaults are the nominal night (its files unchanged).")
    for band, default, values in (("iq", "70", "20, 70, 85 or any"),
                                  ("cc", "50", "50, 70, 80 or any"),
                                  ("bg", "any", "20, 50, 80 or any"),
                                  ("wv", "any", "20, 50, 80 or any")):
        g.add_argument(f"--req-{band}", default=default, metavar="BAND",
                       help=f"requested {band.upper()} percentile: {values} (default {default})")
    for name, what in (("iq-factor", "multiply the AO-guided frames' PSF FWHM (default 1; "
                                     "the Strehl falls as its inverse square)"),
                       ("extinction", "grey cloud in mag on stars, standard and galaxy, "
                                      "not on the thermal sky (default 0)"),
                       ("sky-factor", "multiply the sky rate (default 1; < 1 a darker sky)")):
        g.add_argument(f"--{name}", default=None, metavar="X[:X...]", help=what)
        for seq in ("standard", "science"):
            g.add_argument(f"--{seq}-{name}", default=None, metavar="X[:X...]",
                           help=f"--{name} for the {seq} sequence only")
    g = p.add_argument_group(
        "astrometry",
        "Departures of the arrays from DRAGONS' static distortion model (the headers' WCS "
        "does not know them) and a Gaia-DR3-like reference catalogue of the science field.")
    g.add_argument("--perturb-geometry", nargs="?", type=int, const=True, default=None,
                   metavar="SEED",
                   help="shift and rotate each array at random about its centre (seed "
                        "default: the night's); the truth.json entry 'geometry' records it")
    g.add_argument("--geometry-shift", type=float, default=None, metavar="PX",
                   help="largest shift per array, full-size pixels (default 10)")
    g.add_argument("--geometry-rotation", type=float, default=None, metavar="DEG",
                   help="largest rotation per array, degrees (default 0.3)")
    g.add_argument("--geometry-scale", type=float, default=None, metavar="X",
                   help="largest relative scale change per array (default 0)")
    g.add_argument("--refcat", default=None, metavar="PATH",
                   help="write the science field's reference catalogue (Gaia DR3 columns, "
                        "epoch 2016.0) to PATH, relative to OUTDIR unless absolute; "
                        ".fits, .csv, .vot or .xml")
    p.set_defaults(func=_run("simulate"))


def _add_reduce(sub):
    p = sub.add_parser("reduce", help="reduce flats, standards or science (DRAGONS reduce)")
    p.add_argument("inputs", nargs="*", help="files and @lists")
    p.add_argument("-r", "--recipe", default=None,
                   help="makeProcessedFlat, reduce or reduce_nostack (default: from the tags)")
    p.add_argument("-p", "--param", nargs="+", action="append", default=None,
                   metavar="PRIMITIVE:PARAM=VALUE", help="set a primitive parameter")
    p.add_argument("--flat", default=None, help="processed flat to use (default: look it up)")
    p.add_argument("--bpm", default=None, help="static bad-pixel mask (default: look it up)")
    p.add_argument("-o", "--output-dir", default=".", help="where to write the products")
    _add_db_options(p)
    p.set_defaults(func=_run("reduce"))


def _add_db_options(p):
    p.add_argument("-d", "--database", default=None,
                   help="calibration database path or URL (default: the config file's, "
                        "else ./cal_manager.db)")
    p.add_argument("-c", "--config", default=None, help="configuration file (TOML)")


def _add_caldb(sub):
    p = sub.add_parser("caldb", help="manage the calibration database (DRAGONS caldb)")
    verbs = p.add_subparsers(dest="caldb_verb", metavar="VERB")
    verbs.required = True
    v = verbs.add_parser("init", help="create the database")
    v.add_argument("-w", "--wipe", action="store_true", help="delete an existing one first")
    _add_db_options(v)
    v = verbs.add_parser("add", help="register processed calibrations (files or directories)")
    v.add_argument("files", nargs="+")
    v.add_argument("-k", "--walk", action="store_true", help="descend into sub-directories")
    _add_db_options(v)
    v = verbs.add_parser("list", help="list the registered calibrations")
    _add_db_options(v)
    v = verbs.add_parser("remove", help="forget calibrations (files stay on disk)")
    v.add_argument("files", nargs="+")
    _add_db_options(v)
    for name, text in (("bad", "never serve these calibrations"),
                       ("good", "serve these calibrations again")):
        v = verbs.add_parser(name, help=text)
        v.add_argument("files", nargs="+")
        _add_db_options(v)
    v = verbs.add_parser("config", help="show where the database is")
    _add_db_options(v)
    p.set_defaults(func=_run("caldb"))


def _add_daemon(sub):
    p = sub.add_parser("run", help="the daemon: watch the raw directory and reduce")
    p.add_argument("--raw-dir", default=None, help="directory where raw frames arrive")
    p.add_argument("--output-dir", default=None, help="directory for products")
    p.add_argument("--log", default=None,
                   help="log file, also logged to standard error (default: the config "
                        "file's, else <output_dir>/gsaoi-watch.log)")
    p.add_argument("--http", default=None, metavar="HOST:PORT",
                   help="serve the live night page at this address (port 0: any free "
                        "port; see [http] in the config file)")
    _add_db_options(p)
    p.set_defaults(func=_run("run"))
    p = sub.add_parser("status", help="sequences, jobs and products of the daemon")
    _add_db_options(p)
    p.set_defaults(func=_run("status"))
    p = sub.add_parser("close", help="ask the daemon to close a sequence now")
    p.add_argument("sequence", nargs="?", help="observation id or sequence key")
    p.add_argument("--all", action="store_true", help="close every open sequence")
    _add_db_options(p)
    p.set_defaults(func=_run("close"))


def _add_demo(sub):
    p = sub.add_parser("demo", help="simulate the tutorial night arriving and reduce it live")
    p.add_argument("--workdir", default="gsaoi_watch_demo",
                   help="demo directory (replaced if it holds an earlier demo; "
                        "default ./gsaoi_watch_demo)")
    p.add_argument("--size", type=int, default=256,
                   help="detector size in pixels (default 256; 2048 is full size)")
    p.add_argument("--seed", type=int, default=20170505, help="simulation seed")
    p.add_argument("--cadence", type=float, default=0.3,
                   help="seconds between frames landing (default 0.3)")
    p.add_argument("--workers", type=int, default=None, help="reduction worker processes")
    p.add_argument("--timeout", type=float, default=1800.0,
                   help="seconds allowed after the last frame for the reductions (default 1800)")
    p.set_defaults(func=_run("demo"))


def _add_qa(sub):
    p = sub.add_parser("qa", help="image quality, background and standard-star zero points "
                                  "of reduced frames (measureIQ/measureBG/measureCC) and "
                                  "whether the requested conditions (REQIQ/REQCC/REQBG) "
                                  "were met")
    p.add_argument("files", nargs="+", help="reduced products (_skyCorrected.fits)")
    p.add_argument("--png", action="store_true",
                   help="also write a PNG quick-look beside each file (flats too)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per file (values, bands, verdicts)")
    p.set_defaults(func=_run("qa"))


def _add_stack(sub):
    p = sub.add_parser("stack", help="correct distortion, align and stack _skyCorrected "
                                     "frames (disco_stu)")
    p.add_argument("inputs", nargs="+", help="_skyCorrected files and @lists")
    p.add_argument("-o", "--output", default="disco_stack.fits",
                   help="output file (default disco_stack.fits)")
    p.add_argument("--refcat", default=None, metavar="CAT",
                   help="reference catalogue (FITS, VOTable or CSV: ra, dec and optionally "
                        "their errors, proper motions, epoch, magnitude, as a Gaia DR3 "
                        "extract has them) for absolute astrometry, with every array's "
                        "departure from the static distortion model solved; default: "
                        "frames aligned on each other (relative astrometry)")
    p.set_defaults(func=_run("stack"))


def _add_reprocess(sub):
    from gsaoi_watch.cli.reprocess import add_reprocess
    add_reprocess(sub)
    sub.choices["reprocess"].set_defaults(func=_run("reprocess"))


def _run(verb):
    def run(args):
        if verb == "qa":
            from gsaoi_watch.cli.reduce import run_qa
            return run_qa(args)
        if verb == "simulate":
            from gsaoi_watch.cli.simulate import run_simulate
            return run_simulate(args)
        if verb == "reduce":
            from gsaoi_watch.cli.reduce import run_reduce
            return run_reduce(args)
        if verb == "stack":
            from gsaoi_watch.cli.reduce import run_stack
            return run_stack(args)
        if verb == "caldb":
            from gsaoi_watch.cli.caldb import run_caldb
            return run_caldb(args)
        if verb == "run":
            from gsaoi_watch.cli.daemon import run_cli
            return run_cli(args)
        if verb == "reprocess":
            from gsaoi_watch.cli.reprocess import run_reprocess
            return run_reprocess(args)
        if verb == "demo":
            from gsaoi_watch.cli.daemon import run_demo_cli
            return run_demo_cli(args)
        if verb in ("status", "close"):
            from gsaoi_watch.cli import status
            return getattr(status, f"run_{verb}")(args)
        from gsaoi_watch.cli import files
        return getattr(files, f"run_{verb}")(args)
    return run


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every verb."""
    parser = argparse.ArgumentParser(
        prog="gsaoi-watch",
        description="Watch a GSAOI raw directory and reduce frames as the night goes on.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="logging level")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for add in (_add_typewalk, _add_showd, _add_dataselect, _add_simulate, _add_reduce,
                _add_caldb, _add_daemon, _add_demo, _add_qa, _add_stack, _add_reprocess):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    limit_arenas()  # before any thread starts: see gsaoi_watch.malloc
    logging.basicConfig(level=getattr(logging, args.log_level),
                        format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    from peewee import PeeweeException

    try:
        status = args.func(args)
    except BrokenPipeError:  # e.g. piped into head
        return 0
    except KeyboardInterrupt:
        return 130
    except PeeweeException as exc:  # the database failed mid-command (e.g. a server gone)
        text = str(exc).strip().splitlines()
        print(f"gsaoi-watch {args.verb}: database error: "
              f"{text[0] if text else type(exc).__name__}", file=sys.stderr)
        return 2
    return int(status or 0)
