"""``gsaoi-watch simulate``: write a simulated raw night."""

from __future__ import annotations

import argparse
import logging
import sys

from gsaoi_watch.sim import BPM_NAME, simulate_night

__all__ = ['run_simulate']

log = logging.getLogger(__name__)

def run_simulate(args: argparse.Namespace) -> int:
    """Entry point of ``gsaoi-watch simulate``."""
    only = args.only.split(",") if args.only else None
    try:
        truth = simulate_night(args.outdir, seed=args.seed, size=args.size,
                               workers=args.workers, only=only)
    except ValueError as exc:
        print(f"gsaoi-watch simulate: {exc}", file=sys.stderr)
        return 2
    n = len(truth["frames"])
    print(f"wrote {n} raw frames, {BPM_NAME} and truth.json to {args.outdir} "
          f"in {truth['elapsed_seconds']:.1f} s")
    return 0

