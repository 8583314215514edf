"""``python -m deftx.gpucheck``: see :mod:`deftx.gpucheck.cli`."""

import sys

from deftx.gpucheck.cli import main

sys.exit(main())
