"""The edge between files and the pure reduction core: Reduce, stacking of files."""
