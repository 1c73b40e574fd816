"""Frames as files and headers: descriptors and tags, dataselect, and the FITS I/O edge."""
