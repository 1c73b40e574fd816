"""``gsaoi-watch simulate``: write a simulated raw night."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from gsaoi_watch.sim import BPM_NAME, Conditions, Delivered, simulate_night
from gsaoi_watch.sim.conditions import parse_profile

__all__ = ["conditions_from_args", "run_simulate"]

log = logging.getLogger(__name__)

_DEGRADATIONS = ("iq_factor", "extinction", "sky_factor")


def conditions_from_args(args: argparse.Namespace) -> Conditions:
    """The :class:`Conditions` of the ``--req-*`` and degradation flags.

    Raises
    ------
    ValueError
        If a value is not valid, with the flag named.
    """
    sequences: dict[str, Delivered] = {}
    for seq in ("standard", "science"):
        values = {}
        for name in _DEGRADATIONS:
            flag = getattr(args, f"{seq}_{name}", None)
            text = flag if flag is not None else getattr(args, name, None)
            if text is None:
                continue
            option = f"--{seq}-{name}" if flag is not None else f"--{name}"
            option = option.replace("_", "-")
            try:
                values[name] = parse_profile(text)
                Delivered(**{name: values[name]})
            except ValueError as exc:
                raise ValueError(f"{option}: {exc}") from None
        sequences[seq] = Delivered(**values)
    conditions = Conditions(standard=sequences["standard"], science=sequences["science"])
    for band in ("iq", "cc", "bg", "wv"):
        value = getattr(args, f"req_{band}", None)
        if value is None:
            continue
        try:
            conditions = dataclasses.replace(conditions, **{band: value})
        except ValueError as exc:
            raise ValueError(f"--req-{band}: {exc}") from None
    return conditions


def run_simulate(args: argparse.Namespace) -> int:
    """Entry point of ``gsaoi-watch simulate``."""
    only = args.only.split(",") if args.only else None
    try:
        conditions = conditions_from_args(args)
        truth = simulate_night(args.outdir, seed=args.seed, size=args.size,
                               workers=args.workers, only=only, conditions=conditions)
    except ValueError as exc:
        print(f"gsaoi-watch simulate: {exc}", file=sys.stderr)
        return 2
    n = len(truth["frames"])
    print(f"wrote {n} raw frames, {BPM_NAME} and truth.json to {args.outdir} "
          f"in {truth['elapsed_seconds']:.1f} s")
    return 0
