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
