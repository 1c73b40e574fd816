"""``gsaoi-watch simulate``: write a simulated raw night."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import sys

from gsaoi_watch.sim import BPM_NAME, Conditions, Delivered, GeometryPerturbation, simulate_night
from gsaoi_watch.sim.conditions import parse_profile

__all__ = ["conditions_from_args", "geometry_from_args", "run_simulate"]

log = logging.getLogger(__name__)

_DEGRADATIONS = ("iq_factor", "extinction", "sky_factor")
_GEOMETRY_DEFAULTS = {"shift": 10.0, "rotation": 0.3, "scale": 0.0}


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


def geometry_from_args(args: argparse.Namespace) -> GeometryPerturbation | None:
    """The :class:`GeometryPerturbation` of ``--perturb-geometry`` (None without it).

    The seed defaults to the night's and the amplitudes to 10 full-size pixels, 0.3 deg
    and no scale change (:meth:`GeometryPerturbation.random`).

    Raises
    ------
    ValueError
        If a value is not valid or an amplitude is given without ``--perturb-geometry``,
        with the flag named.
    """
    seed = getattr(args, "perturb_geometry", None)
    amplitudes = {}
    for name, default in _GEOMETRY_DEFAULTS.items():
        value = getattr(args, f"geometry_{name}", None)
        if value is None:
            value = default
        elif seed is None:
            raise ValueError(f"--geometry-{name} needs --perturb-geometry")
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"--geometry-{name}: must be >= 0, not {value}")
        amplitudes[f"max_{name}"] = value
    if seed is None:
        return None
    if seed is True:  # the flag without a value
        seed = args.seed
    if seed < 0:
        raise ValueError(f"--perturb-geometry: the seed must be >= 0, not {seed}")
    return GeometryPerturbation.random(seed, **amplitudes)


def run_simulate(args: argparse.Namespace) -> int:
    """Entry point of ``gsaoi-watch simulate``."""
    only = args.only.split(",") if args.only else None
    try:
        conditions = conditions_from_args(args)
        geometry = geometry_from_args(args)
        truth = simulate_night(args.outdir, seed=args.seed, size=args.size,
                               workers=args.workers, only=only, conditions=conditions,
                               geometry=geometry, refcat=getattr(args, "refcat", None))
    except ValueError as exc:
        print(f"gsaoi-watch simulate: {exc}", file=sys.stderr)
        return 2
    n = len(truth["frames"])
    print(f"wrote {n} raw frames, {BPM_NAME} and truth.json to {args.outdir} "
          f"in {truth['elapsed_seconds']:.1f} s")
    if "refcat" in truth:
        print(f"wrote the reference catalogue {truth['refcat']['path']} "
              f"({truth['refcat']['n_sources']} sources, epoch 2016.0)")
    return 0
