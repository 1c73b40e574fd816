"""Options shared by verbs: the configuration file with command-line overrides."""

from __future__ import annotations

import argparse

from gsaoi_watch.config import Config, load_config

__all__ = ["config_from_args"]


def config_from_args(args: argparse.Namespace) -> Config:
    """The configuration file (``-c``) with command-line overrides applied.

    Raises
    ------
    ConfigError
        An invalid file or override (one line naming section and key).
    """
    config = load_config(getattr(args, "config", None))
    paths = {}
    if getattr(args, "raw_dir", None):
        paths["raw_dir"] = args.raw_dir
    if getattr(args, "output_dir", None):
        paths["output_dir"] = args.output_dir
    if getattr(args, "log", None):
        paths["log_file"] = args.log
    if paths:
        config = config.replace("paths", **paths)
    if getattr(args, "database", None):
        config = config.replace("database", url=args.database)
    if getattr(args, "http", None):
        config = config.replace("http", enabled=True, address=args.http)
    return config
