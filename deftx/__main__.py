"""``python -m deftx``: the ``deftx`` command (see :mod:`deftx.cli`)."""

import sys

from deftx.cli import main

sys.exit(main())
