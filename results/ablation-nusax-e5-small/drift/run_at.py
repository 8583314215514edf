"""``python run_at.py TREE SCRIPT ARGS...``: run SCRIPT with deftx imported from the worktree TREE.

The editable install's finder is dropped so that TREE wins, and transformers is told that the Hub
``kernels`` package is absent (older trees have a root ``kernels/`` package of their own, which
would shadow it; run with ``USE_HUB_KERNELS=0``).
"""

import runpy
import sys


def main() -> None:
    tree, script = sys.argv[1], sys.argv[2]
    sys.meta_path[:] = [finder for finder in sys.meta_path if "editable" not in repr(finder).lower()]
    sys.path.insert(0, tree)
    sys.argv = sys.argv[2:]
    import transformers.utils as utils
    import transformers.utils.import_utils as import_utils

    import_utils.is_kernels_available = utils.is_kernels_available = lambda *args, **kwargs: False
    import deftx

    print("deftx from", deftx.__file__, file=sys.stderr)
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
