"""GSAOI facts as data: arrays, read modes, filters, zero points, DQ bits, static distortion."""
