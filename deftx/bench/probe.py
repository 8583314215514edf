"""Peak-memory probes of benchmark cases, on CPU in a worker subprocess (see :mod:`deftx.bench.memory`).

The worker (``python -m deftx.bench.probe``) reads one JSON request per line on stdin
(``{"spec": CaseSpec JSON, "impl": name, "threads": n}``), builds the case's inputs
(kept for the next request with the same spec), runs the implementation once on a tiny
warm-up case (loads libraries, starts thread pools), then measures ``bind`` + one call,
and answers one line ``DEFTX-PROBE {"peak_extra_bytes": ..., "method": ...}`` (or
``{"error": ...}``). Other lines on its stdout are ignored.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from typing import Any

import torch

from deftx.bench.cases import CaseSpec, op_module
from deftx.bench.memory import MemoryResult, peak_extra_cpu, peak_extra_cuda
from deftx.bench.shapes import ShapeSet, TensorShape

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


class _Worker:
    """The worker's state: the inputs of the last spec, and which (op, impl) are warm."""

    def __init__(self) -> None:
        self.key: str | None = None
        self.inputs: Any = None
        self.warm: set[tuple[str, str, str]] = set()

    def handle(self, request: dict) -> dict:
        spec = CaseSpec.from_json(request["spec"])
        impl = request["impl"]
        torch.set_num_threads(int(request.get("threads", torch.get_num_threads())))
        module = op_module(spec.op)
        warm_key = (spec.op, impl, spec.dtype)
        if warm_key not in self.warm:
            tiny = warmup_spec(spec)
            module.bind(impl, module.make_inputs(tiny))()
            self.warm.add(warm_key)
        key = json.dumps(request["spec"], sort_keys=True)
        if key != self.key:
            self.key, self.inputs = None, None
            self.inputs = module.make_inputs(spec)
            self.key = key
        result = measure_in_process(spec, impl, self.inputs)
        return {"peak_extra_bytes": result.peak_extra_bytes, "method": result.method}


def worker_main() -> int:
    """Serve probe requests until stdin closes."""
    worker = _Worker()
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            reply = worker.handle(json.loads(line))
        except Exception as err:  # reported to the parent, which records it per case
            reply = {"error": f"{type(err).__name__}: {err}"}
        sys.stdout.write(REPLY_PREFIX + json.dumps(reply) + "\n")
        sys.stdout.flush()
    return 0


class MemoryProber:
    """Measures peak extra memory of CPU cases in a worker subprocess that builds its own inputs.

    Use as a context manager; the worker starts on the first request. (CUDA cases are
    measured in process, on the inputs already built: :func:`measure_in_process`.)
    """

    def __init__(self) -> None:
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> MemoryProber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._process is not None:
            self._process.stdin.close()
            self._process.wait(timeout=60)
            self._process = None

    def _start(self) -> subprocess.Popen:
        env = {**os.environ, **WORKER_ENV}
        return subprocess.Popen(
            [sys.executable, "-m", "deftx.bench.probe"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def measure(self, spec: CaseSpec, impl: str) -> MemoryResult:
        """Peak extra bytes of ``impl`` on the CPU case ``spec``.

        Raises:
            ValueError: ``spec`` is not a CPU case.
            RuntimeError: the worker failed on this case or died.
        """
        if spec.torch_device.type != "cpu":
            raise ValueError(f"the probe worker measures CPU cases; {spec.device} cases are measured in process")
        if self._process is None:
            self._process = self._start()
        request = {"spec": spec.to_json(), "impl": impl, "threads": torch.get_num_threads()}
        self._process.stdin.write(json.dumps(request) + "\n")
        self._process.stdin.flush()
        for line in self._process.stdout:
            if line.startswith(REPLY_PREFIX):
                reply = json.loads(line[len(REPLY_PREFIX) :])
                if "error" in reply:
                    raise RuntimeError(f"memory probe of {spec.op}/{impl}: {reply['error']}")
                return MemoryResult(int(reply["peak_extra_bytes"]), reply["method"])
        self._process = None
        raise RuntimeError(f"memory probe worker exited while measuring {spec.op}/{impl}")


if __name__ == "__main__":
    sys.exit(worker_main())
