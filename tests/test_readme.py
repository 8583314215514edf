"""Every README block marked ``<!-- runnable … -->`` runs: the marker's setup, then the block, in a fresh folder.

Python blocks run as one script (setup + block); bash blocks run after the setup, with a
``deftx`` on PATH that runs this checkout. ``HF_HUB_OFFLINE=1``: nothing may download.
A block importing peft is skipped only when peft is not installed.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNNABLE = re.compile(r"<!-- runnable\n(?P<setup>.*?)-->\n```(?P<language>python|bash)\n(?P<code>.*?)```", re.DOTALL)
SNIPPETS = [(m["setup"], m["language"], m["code"]) for m in RUNNABLE.finditer((ROOT / "README.md").read_text())]


def snippet_id(snippet: tuple[str, str, str]) -> str:
    _, language, code = snippet
    return f"{language}:{code.strip().splitlines()[0][:40]}"


def environment(tmp_path: Path) -> dict[str, str]:
    shims = tmp_path / ".bin"
    shims.mkdir()
    (shims / "deftx").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m deftx.cli "$@"\n')
    (shims / "deftx").chmod(0o755)
    path = os.pathsep.join([str(shims), str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "OMP_NUM_THREADS": "1", "PATH": path}


def run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{command[:2]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_every_ecosystem_section_has_a_runnable_snippet():
    text = "".join(code for _, _, code in SNIPPETS)
    for needle in ("save_pretrained", "to_peft", "from_composable_sft", "deftx compose", "torchrun",
                   "accelerate launch"):
        assert needle in text


def test_the_trainer_contract_block_is_the_example_ci_runs():
    """README's "Your Trainer, sparse fine-tuned" code is examples/sparse_finetune_your_trainer.py (run above)."""
    example = (ROOT / "examples" / "sparse_finetune_your_trainer.py").read_text()
    code = example[example.index("import warnings"):]
    assert f"```python\n{code}```" in (ROOT / "README.md").read_text()
    assert any("python examples/sparse_finetune_your_trainer.py" in code for _, _, code in SNIPPETS)


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[snippet_id(s) for s in SNIPPETS])
def test_readme_snippet_runs(snippet, tmp_path):
    setup, language, code = snippet
    if ("import peft" in code or "from peft" in code) and importlib.util.find_spec("peft") is None:
        pytest.skip("peft is not installed (pip install -e '.[peft]')")
    work = tmp_path / "work"
    work.mkdir()
    env = environment(tmp_path)
    if language == "python":
        run([sys.executable, "-c", setup + "\n" + code], work, env)
    else:
        run([sys.executable, "-c", setup], work, env)
        run(["bash", "-euo", "pipefail", "-c", code], work, env)
