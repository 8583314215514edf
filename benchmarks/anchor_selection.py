"""The anchor table: LT-SFT's selection from (θ1, θ0), each method's first call in a fresh process.

``python benchmarks/anchor_selection.py --shapes e5-small --k-fraction 0.01 --out results/anchor``;
the methods and the measures are described in :mod:`deftx.perf.anchor`. With ``--streamed``
(``--shapes llama-7b --scratch DIR``): the streamed row, from two sharded checkpoints on disk
(:mod:`deftx.perf.anchor_streamed`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deftx.perf import anchor, anchor_streamed

if __name__ == "__main__":
    arguments = sys.argv[1:]
    if "--streamed" in arguments:
        sys.exit(anchor_streamed.main([a for a in arguments if a != "--streamed"]))
    sys.exit(anchor.main(arguments))
