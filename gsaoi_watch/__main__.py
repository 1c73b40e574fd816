"""Run the ``gsaoi-watch`` command line as ``python -m gsaoi_watch``."""

import sys

from gsaoi_watch.cli.main import main

sys.exit(main())
