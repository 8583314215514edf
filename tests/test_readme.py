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


def test_the_americasnli_paragraph_quotes_the_committed_results():
    """The README's AmericasNLI differences, recomputed from results/americasnli-e5-small/results.csv: per seed
    the mean macro-F1 over the test languages, DeFT-X − LT-SFT, and each method's gain from the language SFT."""
    import csv

    with (ROOT / "results/americasnli-e5-small/results.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    seeds = sorted({row["seed"] for row in rows})

    def mean(method: str, seed: str) -> float:
        scores = [100 * float(r["macro_f1"]) for r in rows if r["method"] == method and r["seed"] == seed]
        return sum(scores) / len(scores)

    by_seed = ", ".join(f"{mean('deft-x', s) - mean('lt-sft', s):+.1f}".replace("-", "−") for s in seeds[:-1])
    last = f"{mean('deft-x', seeds[-1]) - mean('lt-sft', seeds[-1]):+.1f}".replace("-", "−")
    gain = {method: sum(mean(method, s) - mean(f"{method} (no lang SFT)", s) for s in seeds) / len(seeds)
            for method in ("lt-sft", "deft-x")}
    text = " ".join((ROOT / "README.md").read_text().split())
    assert f"DeFT-X − LT-SFT {by_seed} and {last} by seed (level)" in text
    assert f"(+{gain['lt-sft']:.1f} for LT-SFT, +{gain['deft-x']:.1f} for DeFT-X, mean over the three seeds" in text
