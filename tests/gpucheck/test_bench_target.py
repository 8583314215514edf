"""The bench stages predict for the GPU they ran on; the H200's figures only where it has no target."""

import pytest

from deftx.gpucheck.stages.bench import FALLBACK_TARGET, prediction_target


def document(device: str, gpu: str | None) -> dict:
    return {"device": device, "machine": {"gpu": gpu}}


@pytest.mark.parametrize(("device", "gpu", "predicted_for"), [
    ("cuda", "NVIDIA H100 80GB HBM3", "NVIDIA H100 SXM"),
    ("cuda", "NVIDIA H200", "NVIDIA H200 SXM"),
    ("cuda:0", "NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB SXM"),
    ("cuda", "NVIDIA L40S", "NVIDIA H200 SXM"),
    ("cpu", None, "NVIDIA H200 SXM"),
])
def test_the_prediction_is_for_the_gpu_measured_on(device, gpu, predicted_for):
    target, choice = prediction_target(document(device, gpu))
    assert target is not None and target.gpu == predicted_for
    assert ("detected from the GPU name" in choice) == (predicted_for != "NVIDIA H200 SXM" or gpu == "NVIDIA H200")


def test_a_gpu_without_a_target_falls_back_to_the_h200():
    assert FALLBACK_TARGET == "h200"
    assert prediction_target(document("cuda", "NVIDIA L40S"))[1].startswith(f"--predict-target {FALLBACK_TARGET}:")
    assert prediction_target(document("cuda", "NVIDIA H100 80GB HBM3"))[1].startswith("detected from the GPU name")


def _row(role: str, **fields) -> dict:
    return {"op": "compose", "k_fraction": 0.01, "name": "x", "role": role, **fields}


def test_a_wrong_output_fails_the_stage_even_on_a_prepared_path_listed_with_the_baselines():
    from deftx.gpucheck.stages.bench import headline, stage_status

    timed = _row("deftx", time_s=1.0)
    prepared_wrong = _row("baseline", error="wrong output: tensor 0: 3 of 9 entries differ", wrong_output=True)
    baseline_failed = _row("baseline", error="OutOfMemoryError")
    assert stage_status({"results": [timed, baseline_failed]}) == "ok"
    assert stage_status({"results": [timed, _row("deftx", error="RuntimeError")]}) == "failed"
    doc = {"results": [timed, prepared_wrong, baseline_failed], "comparisons": []}
    assert stage_status(doc) == "failed"
    assert headline(doc) == "1 rows measured, 2 failed (1 of them a wrong output), 0 skipped"
