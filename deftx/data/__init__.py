"""Readers for the data sets deftx trains and evaluates on.

All readers take a ``data_dir``: the data root that holds ``nusax/``, ``americasnli/`` and
``americasnlp2021/`` exactly as their authors published them (see ``default_data_dir``).

- ``deftx.data.nusax``: NusaX sentiment (labelled) and NusaX MT text (unlabelled, train/valid only).
- ``deftx.data.americasnli``: AmericasNLI dev/test (labelled NLI pairs).
- ``deftx.data.americasnlp``: AmericasNLP 2021 indigenous-side text (unlabelled, train/dev only).
- ``deftx.data.hub``: the same labelled sets through ``datasets.load_dataset`` (needs a network).
- ``deftx.data.generic``: any text / text-classification set through ``datasets`` (a local
  CSV/TSV/JSON/parquet file, a folder or a Hub name), with the columns named by the caller.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "DEFTX_DATA_DIR"
_REPO_ROOT = Path(__file__).resolve().parents[2]


def default_data_dir() -> Path:
    """The data root: ``$DEFTX_DATA_DIR``, else the first existing of ``./../shared/data`` and
    ``<repo>/../shared/data``.

    Raises:
        FileNotFoundError: ``$DEFTX_DATA_DIR`` is set but is not a directory, or no candidate
            exists; the message names every path tried.
    """
    from_env = os.environ.get(DATA_DIR_ENV)
    if from_env:
        path = Path(from_env).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"${DATA_DIR_ENV} is set to {str(path)!r}, which is not a directory")
        return path
    candidates = [Path.cwd() / ".." / "shared" / "data", _REPO_ROOT / ".." / "shared" / "data"]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"no deftx data directory found: ${DATA_DIR_ENV} is not set and none of [{tried}] exists; "
        f"set ${DATA_DIR_ENV} to the folder holding nusax/, americasnli/ and americasnlp2021/"
    )
