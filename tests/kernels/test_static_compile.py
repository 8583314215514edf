"""CI gate: every kernel x every declared specialisation compiles for sm_80 and sm_90, with
no local-memory spill, shared memory within the per-block limit, and its design promises
holding in the SASS (see :mod:`deftx.perf.static.checks`). No GPU is needed.

``bad_kernels.py`` proves each check bites: every deliberately bad kernel is flagged by the
check it is built to fail, and the good controls pass every check.

Compiled results are kept for the session (and on disk by Triton and deftx), so the report
test in ``tests/perf/static`` reuses them.
"""

from __future__ import annotations

import pytest

from deftx.perf.static.checks import check_build
from deftx.perf.static.compile import BuildFailure, compile_all, compile_spec, declared_specializations
from deftx.perf.targets import get_target
from tests.kernels.bad_kernels import BAD, GOOD

ARCHS = ("sm_80", "sm_90")
REGISTRY = declared_specializations()
SPEC_NAMES = [d.spec.name for d in REGISTRY.specs]


@pytest.fixture(scope="module", params=ARCHS)
def builds(request):
    """Name -> KernelBuild | BuildFailure of every declared specialisation for one arch."""
    results = compile_all(REGISTRY.specs, request.param)
    return request.param, {r.name: r for r in results}


def test_kernel_modules_import_and_declare_specializations():
    assert not REGISTRY.broken, f"kernel modules that do not import: {REGISTRY.broken}"
    assert not REGISTRY.without_specs, f"kernel modules without SPECIALIZATIONS: {REGISTRY.without_specs}"
    assert REGISTRY.specs, "no kernel specialisation declared"


def test_specialization_names_are_unique():
    duplicates = sorted({n for n in SPEC_NAMES if SPEC_NAMES.count(n) > 1})
    assert not duplicates, f"duplicate KernelSpec names: {duplicates}"


def test_every_specialization_compiles_cleanly(builds):
    arch, by_name = builds
    problems = []
    for name in SPEC_NAMES:
        result = by_name[name]
        if isinstance(result, BuildFailure):
            problems.append(f"{name}: does not compile for {arch}: {result.error.splitlines()[0]}")
            continue
        problems += [f"{name} ({arch}) {v}" for v in check_build(result)]
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("spec", "check"), BAD, ids=[spec.name for spec, _ in BAD])
def test_bad_kernel_is_flagged(spec, check, arch):
    violations = check_build(compile_spec(spec, get_target(arch), module="bad_kernels"))
    assert check in {v.check for v in violations}, f"{spec.name} on {arch} not flagged by {check}: {violations}"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("spec", GOOD, ids=[spec.name for spec in GOOD])
def test_good_control_passes(spec, arch):
    violations = check_build(compile_spec(spec, get_target(arch), module="bad_kernels"))
    assert violations == [], f"{spec.name} on {arch}: {[str(v) for v in violations]}"
