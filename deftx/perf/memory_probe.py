"""Peak-memory probes of benchmark cases, on CPU in a fresh worker subprocess (see :mod:`deftx.perf.memory`).

Each measurement starts a new worker (``python -m deftx.perf.memory_probe``): a long-lived
process would serve later allocations from heap memory freed by earlier cases, which
glibc keeps in its free lists whatever the mmap threshold, and under-report them. The
worker reads one JSON request on stdin (``{"spec": CaseSpec JSON, "impl": name,
"threads": n}``), runs the implementation once on a tiny warm-up case (loads libraries,
starts thread pools), builds the case's inputs, measures ``bind`` + one call, and answers
one line ``DEFTX-PROBE {"peak_extra_bytes": ..., "method": ...}`` (or ``{"error": ...}``).
Other lines on its stdout are ignored.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from typing import Any

import torch

from deftx.perf.cases import CaseSpec, op_module
from deftx.perf.memory import MemoryResult, peak_extra_cpu, peak_extra_cuda
from deftx.perf.shapes import ShapeSet, TensorShape

REPLY_PREFIX = "DEFTX-PROBE "
WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def warmup_spec(spec: CaseSpec) -> CaseSpec:
    """The same op, implementation settings and K on one small matrix."""
    q = spec.rank + spec.oversample
    shape = TensorShape("warmup.weight", (max(160, 2 * q + 1), max(96, q + 1)))
    return dataclasses.replace(spec, shapes=ShapeSet("warmup", (shape,)))


def measure_in_process(spec: CaseSpec, impl: str, inputs: Any) -> MemoryResult:
    """Peak extra memory of ``bind(impl)`` + one call on already-built ``inputs``."""
    module = op_module(spec.op)

    def call() -> object:
        return module.bind(impl, inputs)()

    if spec.torch_device.type == "cuda":
        return peak_extra_cuda(call, spec.torch_device)
    return peak_extra_cpu(call)


def handle_request(request: dict) -> dict:
    """Warm up, build the inputs, measure: the worker's answer to one request."""
    spec = CaseSpec.from_json(request["spec"])
    impl = request["impl"]
    torch.set_num_threads(int(request.get("threads", torch.get_num_threads())))
    module = op_module(spec.op)
    module.bind(impl, module.make_inputs(warmup_spec(spec)))()
    result = measure_in_process(spec, impl, module.make_inputs(spec))
    return {"peak_extra_bytes": result.peak_extra_bytes, "method": result.method}


def worker_main() -> int:
    """Answer the one request on stdin."""
    try:
        reply = handle_request(json.loads(sys.stdin.readline()))
    except Exception as err:  # reported to the parent, which records it per case
        reply = {"error": f"{type(err).__name__}: {err}"}
    sys.stdout.write(REPLY_PREFIX + json.dumps(reply) + "\n")
    sys.stdout.flush()
    return 0


class MemoryProber:
    """Measures peak extra memory of CPU cases, each in a fresh worker subprocess.

    (CUDA cases are measured in process, on the inputs already built:
    :func:`measure_in_process`.)
    """

    def measure(self, spec: CaseSpec, impl: str) -> MemoryResult:
        """Peak extra bytes of ``impl`` on the CPU case ``spec``.

        Raises:
            ValueError: ``spec`` is not a CPU case.
            RuntimeError: the worker failed on this case or died.
        """
        if spec.torch_device.type != "cpu":
            raise ValueError(f"the probe worker measures CPU cases; {spec.device} cases are measured in process")
        request = {"spec": spec.to_json(), "impl": impl, "threads": torch.get_num_threads()}
        done = subprocess.run(
            [sys.executable, "-m", "deftx.perf.memory_probe"],
            input=json.dumps(request) + "\n",
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **WORKER_ENV},
            check=False,
        )
        for line in done.stdout.splitlines():
            if line.startswith(REPLY_PREFIX):
                reply = json.loads(line[len(REPLY_PREFIX) :])
                if "error" in reply:
                    raise RuntimeError(f"memory probe of {spec.op}/{impl}: {reply['error']}")
                return MemoryResult(int(reply["peak_extra_bytes"]), reply["method"])
        raise RuntimeError(f"memory probe worker exited with status {done.returncode} while measuring {spec.op}/{impl}")


if __name__ == "__main__":
    sys.exit(worker_main())
