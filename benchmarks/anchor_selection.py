"""The anchor table: LT-SFT's selection from (θ1, θ0), each method's first call in a fresh process.

``python benchmarks/anchor_selection.py --shapes e5-small --k-fraction 0.01 --out results/anchor``;
the methods and the measures are described in :mod:`deftx.perf.anchor`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deftx.perf.anchor import main

if __name__ == "__main__":
    sys.exit(main())
