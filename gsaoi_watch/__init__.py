"""gsaoi_watch: automatic, live reduction of GSAOI imaging data."""

__version__ = "0.1.0"
