"""``gsaoi-watch run`` and ``demo``: the daemon (``status`` and ``close``: cli/status.py)."""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import sys
from pathlib import Path

from gsaoi_watch.cli.options import config_from_args
from gsaoi_watch.daemon.demo import demo_summary, run_demo
from gsaoi_watch.daemon.service import run_service
from gsaoi_watch.errors import GsaoiWatchError
from gsaoi_watch.logs import default_log_file, setup_logging

__all__ = ['config_from_args', 'run_cli', 'run_demo_cli']

log = logging.getLogger(__name__)


def run_cli(args: argparse.Namespace) -> int:
    """Entry point of ``gsaoi-watch run``."""
    try:
        config = config_from_args(args)
    except GsaoiWatchError as exc:
        print(f"gsaoi-watch run: {exc}", file=sys.stderr)
        return 2
    log_file = default_log_file(config.paths.log_file, config.paths.output_dir)
    try:
        setup_logging(config.service.log_level, log_file)
    except OSError as exc:
        print(f"gsaoi-watch run: cannot write the log file {log_file}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        return run_service(config)
    except GsaoiWatchError as exc:
        log.error("%s", exc)
        return 2


def run_demo_cli(args: argparse.Namespace) -> int:
    """Entry point of ``gsaoi-watch demo``."""
    workdir = Path(args.workdir)
    setup_logging("INFO", "")
    try:
        result = run_demo(workdir, size=args.size, seed=args.seed, cadence=args.cadence,
                          timeout=args.timeout, workers=args.workers)
    except (FileExistsError, ValueError) as exc:
        print(f"gsaoi-watch demo: {exc}", file=sys.stderr)
        return 2
    print()
    for line in demo_summary(result["config"]):
        print(line)
    if "error" in result:
        print(f"gsaoi-watch demo: {result['error']}", file=sys.stderr)
        return 1
    print(f"The night was reduced {result['elapsed']:.0f} s after its first frame landed "
          f"(last frame at {result['last_frame']:.0f} s).  Products and pictures: "
          f"{result['config'].paths.output_dir}; night summary: "
          f"{Path(result['config'].paths.output_dir) / 'index.html'}; "
          f"log: {result['config'].paths.log_file}")
    return int(result["status"])

