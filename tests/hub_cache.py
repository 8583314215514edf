"""Place files into a Hugging Face Hub cache laid out as ``huggingface_hub`` writes it (no network).

``<cache>/models--<org>--<name>/blobs/<sha256>``, ``snapshots/<commit>/<file>`` (a symlink to
its blob) and ``refs/main`` (the commit): what a download leaves behind, so that loading
by repository id with ``HF_HUB_OFFLINE=1`` or ``local_files_only=True`` finds it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def place_in_hub_cache(cache: Path, repo_id: str, folder: Path, commit: str = COMMIT) -> Path:
    """Put every file of ``folder`` into ``cache`` as the ``main`` snapshot of ``repo_id``; returns it."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        blob = repo / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, blob)
        link = snapshot / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot
