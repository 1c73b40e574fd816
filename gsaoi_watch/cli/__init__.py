"""The ``gsaoi-watch`` command line: one module per verb group; the only code that prints."""
