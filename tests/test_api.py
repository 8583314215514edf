"""The top-level API (issue #19): ``from deftx import ...``, a light ``import deftx``, py.typed, ``deftx doctor``."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import deftx
from deftx.cli import main
from deftx.info import RUN_LIBRARIES, environment_record

ROOT = Path(__file__).resolve().parents[1]
HOMES = {"deftx.sft": ("SparseDiff", "apply_diffs", "applied", "compose", "RevertReport", "InexactRevertWarning",
                       "SparseDiffFormatError", "ForeignFormatError", "BaseModelMismatchError"),
         "deftx.train": ("SparseFineTuner", "SparseFineTuningConfig", "PhaseConfig", "task_sft_config",
                         "IdentityMismatchError", "TrainerOverrideWarning"),
         "deftx.ops": ("topk_mask", "lowrank_denoise", "scatter_add_", "scatter_restore_", "masked_adamw_step_")}
LIBRARIES = ("torch", "triton", "transformers", "tokenizers", "numpy", "datasets", "accelerate", "peft", "safetensors",
             "kernels")


def test_the_public_names_come_from_their_subpackages():
    from deftx import SparseDiff, SparseFineTuner, apply_diffs, topk_mask  # noqa: F401  (the issue's import)

    for module, names in HOMES.items():
        home = importlib.import_module(module)
        for name in names:
            assert getattr(deftx, name) is getattr(home, name), name
    assert set(deftx.__all__) >= {name for names in HOMES.values() for name in names}
    for name in deftx.__all__:
        assert getattr(deftx, name) is not None, name
    assert set(deftx.__all__) <= set(dir(deftx))
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        deftx.nothing_here  # noqa: B018


def test_import_deftx_stays_light_and_never_imports_the_root_kernels_folder():
    code = ("import json, sys; import deftx; heavy = [m for m in ('torch', 'transformers', 'kernels', 'triton') "
            "if m in sys.modules]; print(json.dumps(heavy))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_the_package_is_marked_typed():
    assert (Path(deftx.__file__).parent / "py.typed").is_file()


def test_doctor_prints_the_version_of_every_library_deftx_works_with(capsys):
    assert main(["doctor"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in LIBRARIES:
        try:
            expected = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            expected = "not installed"
        line = next((line for line in lines if line.startswith(f"{name}: ")), None)
        assert line is not None, f"no {name} line in:\n" + "\n".join(lines)
        assert line.split(": ", 1)[1].startswith(expected), line


def test_a_runs_environment_record_names_the_installed_releases():
    record = environment_record()
    assert record["deftx"] == deftx.__version__ and record["threads"] == str(torch.get_num_threads())
    assert record["torch"] == torch.__version__, "the build's own version (+cpu, +cu130)"
    assert record["transformers"] == importlib.metadata.version("transformers")
    assert set(RUN_LIBRARIES) <= set(record) and json.loads(json.dumps(record)) == record


def test_the_record_names_the_gpu_only_where_torch_has_a_usable_cuda_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert "gpu" not in environment_record(), "a test that pretends CUDA is there must not reach the driver"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: f"NVIDIA H100 80GB HBM3 #{index}")
    record = environment_record()
    assert record["gpu"] == "NVIDIA H100 80GB HBM3 #0" and list(record)[-1] == "gpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "gpu" not in environment_record(), "a driver torch cannot use names no GPU"


@pytest.mark.parametrize("module", ["deftx.sft", "deftx.train", "deftx.ops"])
def test_every_public_name_of_a_subpackage_is_importable_from_deftx(module):
    """README: "Everything public is importable from deftx (deftx.__all__ lists them)": the ops table's
    prepare_scatter / prepare_masked_step and lowrank_factors_batched's LowRankFactors too."""
    home = importlib.import_module(module)
    missing = sorted(set(home.__all__) - set(deftx.__all__))
    assert not missing, f"public in {module} but not in deftx.__all__: {missing}"
    for name in home.__all__:
        assert getattr(deftx, name) is getattr(home, name), name
