"""The checkout never shadows a third-party module, and a built deftx carries its kernels.

The repository root is on ``sys.path`` whenever Python starts there (``python -m pytest``,
``python -c``, scripts of the checkout). A regular package at the root named like a
third-party distribution (once: ``kernels/``, which hid Hugging Face's ``kernels`` that
``transformers`` imports) would be imported instead of it. These tests start Python in a
subprocess from the root, as a user would, and look where the names resolve.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OWN_TOP_LEVEL = {"deftx", "tests", "setup"}


def run_python(code: str, *, cwd: Path, env: dict[str, str] | None = None) -> dict:
    """Run ``code`` in a fresh interpreter started in ``cwd``; it prints one JSON object."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"subprocess failed:\n{result.stderr[-4000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def importable_from_root() -> set[str]:
    """Top-level module names that the checkout's root provides as regular modules or packages."""
    names = {p.stem for p in ROOT.glob("*.py")}
    names |= {p.parent.name for p in ROOT.glob("*/__init__.py")}
    return names


def test_root_provides_only_deftx_own_top_level_names() -> None:
    provided = importable_from_root()
    assert provided == OWN_TOP_LEVEL, f"the checkout's root provides {sorted(provided - OWN_TOP_LEVEL)} as well"
    installed_by_others = {
        name: dists
        for name, dists in importlib.metadata.packages_distributions().items()
        if name in provided and set(dists) - {"deftx"}
    }
    assert installed_by_others == {}, f"names also installed by other distributions: {installed_by_others}"


def test_kernels_from_root_is_the_installed_distribution_or_not_the_checkout() -> None:
    found = run_python(
        """
        import importlib.util, json
        spec = importlib.util.find_spec("kernels")
        print(json.dumps({"origin": spec and spec.origin}))
        """,
        cwd=ROOT,
    )
    try:
        dist = importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        # Only the checkout's folder can be found, and then only as a namespace package.
        assert found["origin"] in (None, "namespace"), found
        return
    site = Path(dist.locate_file("kernels")).resolve()
    assert found["origin"] is not None and Path(found["origin"]).resolve() == site / "__init__.py", found


def test_transformers_trainer_imports_from_root() -> None:
    found = run_python(
        """
        import json
        import transformers
        from transformers import Trainer
        print(json.dumps({"trainer": Trainer.__module__}))
        """,
        cwd=ROOT,
    )
    assert found["trainer"] == "transformers.trainer"


def test_deftx_kernels_come_from_the_checkout_kernels_folder() -> None:
    found = run_python(
        """
        import json
        import deftx.kernels as kernels
        from deftx.ops.registry import TRITON_OPS, kernel_specializations
        files = {name: kernels.kernel_module(name, interpret=False).__file__ for name in TRITON_OPS}
        print(json.dumps({"files": files, "specs": len(kernel_specializations())}))
        """,
        cwd=ROOT,
    )
    assert found["files"] == {name: str(ROOT / "kernels" / f"{name}.py") for name in found["files"]}
    assert set(found["files"]) == {p.stem for p in (ROOT / "kernels").glob("[!_]*.py")}, "op modules, not helpers"
    assert found["specs"] > 0


def test_built_package_carries_the_kernels_inside_deftx(tmp_path: Path) -> None:
    build_lib = tmp_path / "lib"
    result = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(build_lib)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert not (build_lib / "kernels").exists()
    assert (build_lib / "deftx" / "py.typed").is_file(), "PEP 561 marker shipped"
    shipped = sorted(p.name for p in (ROOT / "deftx" / "pipeline" / "heads").glob("*.safetensors"))
    assert shipped and sorted(p.name for p in (build_lib / "deftx" / "pipeline" / "heads").iterdir()) == shipped
    assert {p.name for p in (build_lib / "deftx" / "kernels").glob("*.py")} == {
        "__init__.py",
        *(p.name for p in (ROOT / "kernels").glob("*.py")),
    }
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    found = run_python(
        """
        import json
        import deftx.kernels as kernels
        from deftx.kernels import topk
        print(json.dumps({"path": list(kernels.__path__), "topk": topk.__file__}))
        """,
        cwd=elsewhere,
        env={**os.environ, "PYTHONPATH": str(build_lib)},
    )
    assert found == {
        "path": [str(build_lib / "deftx" / "kernels")],
        "topk": str(build_lib / "deftx" / "kernels" / "topk.py"),
    }


def test_python_dash_m_deftx_is_the_deftx_command() -> None:
    """``make run`` calls ``$(PYTHON) -m deftx``: the interpreter it installed into, not a ``deftx``
    script that happens to be first on PATH."""
    import deftx

    result = subprocess.run(
        [sys.executable, "-m", "deftx", "--version"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert deftx.__version__ in result.stdout + result.stderr
